//! Shared helpers: socketioxide servers over any driver, and dummy clients.
#![allow(dead_code)]

use std::{str::FromStr, time::Duration};

use engineioxide::Packet as EioPacket;
use socketioxide::{adapter::Emitter, SocketIo};
use socketioxide_amqp::{broker::Driver, AdapterConfig, AmqpAdapterCtr, CustomAmqpAdapter};
use socketioxide_core::Sid;
use tokio::sync::mpsc;

pub type Io<D> = SocketIo<CustomAmqpAdapter<Emitter, D>>;

pub const WAIT: Duration = Duration::from_secs(10);

pub fn config() -> AdapterConfig {
    AdapterConfig::default()
        .with_request_timeout(Duration::from_secs(3))
        .with_heartbeat(Duration::from_millis(500), Duration::from_secs(10))
}

/// A server with the `/` namespace over `driver`.
pub async fn server<D: Driver>(driver: D) -> (Io<D>, AmqpAdapterCtr<D>) {
    server_with(driver, config()).await
}

/// A server with the `/` namespace over `driver`, with the given settings.
pub async fn server_with<D: Driver>(
    driver: D,
    config: AdapterConfig,
) -> (Io<D>, AmqpAdapterCtr<D>) {
    let ctr = AmqpAdapterCtr::new_with_driver(driver, config);
    let (_svc, io) = SocketIo::builder()
        .with_adapter::<CustomAmqpAdapter<_, D>>(ctr.clone())
        .build_svc();
    io.ns("/", async || {}).await.expect("namespace init");
    (io, ctr)
}

/// Waits until every server sees `total` sockets through `fetch_sockets` (so that the
/// heartbeats made the servers know each other).
pub async fn wait_for_cluster<D: Driver>(ios: &[&Io<D>], total: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    for io in ios {
        loop {
            let n = io.fetch_sockets().await.expect("fetch_sockets").len();
            if n == total {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cluster never formed: {n}/{total} sockets"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A dummy client connected to `/`.
pub struct Client {
    pub sid: Sid,
    tx: mpsc::Sender<EioPacket>,
    rx: mpsc::Receiver<EioPacket>,
}

impl Client {
    pub async fn connect<D: Driver>(io: &Io<D>) -> Client {
        let (tx, mut rx) = io.new_dummy_sock("/", ()).await;
        let first = recv_text(&mut rx).await;
        let json = first.strip_prefix('0').expect("connect packet");
        let v: serde_json::Value = serde_json::from_str(json).expect("connect json");
        let sid = Sid::from_str(v["sid"].as_str().expect("sid")).expect("valid sid");
        Client { sid, tx, rx }
    }

    /// The next socket.io text frame (binary attachments are skipped).
    pub async fn next(&mut self) -> String {
        recv_text(&mut self.rx).await
    }

    /// The next frame and the binary attachments that follow it.
    pub async fn next_with_bins(&mut self, n: usize) -> (String, Vec<Vec<u8>>) {
        let text = recv_text(&mut self.rx).await;
        let mut bins = Vec::new();
        while bins.len() < n {
            match tokio::time::timeout(WAIT, self.rx.recv()).await {
                Ok(Some(EioPacket::Binary(b))) => bins.push(b.to_vec()),
                Ok(Some(_)) => {}
                other => panic!("expected a binary attachment, got {other:?}"),
            }
        }
        (text, bins)
    }

    /// Answers an event frame `2<id>[...]` with `3<id><args>`.
    pub async fn ack(&self, frame: &str, args: &str) {
        let id: String = frame[1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        assert!(!id.is_empty(), "frame has no ack id: {frame}");
        self.tx
            .send(EioPacket::Message(format!("3{id}{args}").into()))
            .await
            .expect("send ack");
    }

    /// Whether the client was disconnected by the server (a `1` frame).
    pub async fn expect_disconnect(&mut self) {
        let frame = self.next().await;
        assert_eq!(frame, "1", "expected a disconnect packet");
    }
}

async fn recv_text(rx: &mut mpsc::Receiver<EioPacket>) -> String {
    loop {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(EioPacket::Message(m))) => return m.to_string(),
            Ok(Some(_)) => {}
            Ok(None) => panic!("client channel closed"),
            Err(e) => panic!("no frame within {WAIT:?}: {e}"),
        }
    }
}

/// A python-socketio style `emit` body.
pub fn py_emit(event: &str, data: serde_json::Value, room: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "method": "emit", "event": event, "data": data, "binary": false, "namespace": "/",
        "room": room, "skip_sid": null, "callback": null,
        "host_id": "29359f22c4e0480e8f2718beb2381ea7"
    }))
    .expect("json")
}

/// Polls `check` until it is true (remote room and disconnect operations are fire-and-forget,
/// so their effect is observed eventually).
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, WAIT, check).await;
}

/// [`eventually`] with a deadline of its own.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub async fn eventually_within<F, Fut>(what: &str, wait: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + wait;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Closes the broker side of the connection whose name contains `needle`, with `rabbitmqctl`.
/// Returns false when `rabbitmqctl` is not usable here; the callers assert it (no silent pass).
pub fn kill_connection(needle: &str) -> bool {
    use std::process::Command;
    let Ok(out) = Command::new("rabbitmqctl")
        .args(["list_connections", "-q", "pid", "client_properties"])
        .output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut killed = false;
    for line in text.lines().filter(|l| l.contains(needle)) {
        let Some(name) = line.split('\t').next() else {
            continue;
        };
        killed |= Command::new("rabbitmqctl")
            .args(["close_connection", name, "test: simulated connection loss"])
            .output()
            .is_ok_and(|o| o.status.success());
    }
    killed
}
