//! A cluster of socketioxide servers in separate processes over the real RabbitMQ, and a small
//! Socket.IO client (Engine.IO 4 over websocket) to drive it.
//!
//! Each node is the test binary itself, re-run with `--ignored --exact cluster_node` and the
//! exchange in its environment (see [`node`]); it prints one [`READY_PREFIX`] line with its port
//! and queue and serves until its stdin closes. [`Cluster`] starts the nodes and, when dropped,
//! stops them (stdin closed, then killed after a grace period) and deletes the exchange and the
//! queues.
#![allow(dead_code)]

pub mod node;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use lapin::{options::QueueDeclareOptions, types::FieldTable, Connection};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;

pub use crate::common::eventually;
use crate::rabbit::{self, BrokerCleanup};

/// The namespace the nodes serve.
pub const NS: &str = "/cluster";
/// The line a node prints once it listens: the prefix, then `{"port", "queue", "host_id"}`.
pub const READY_PREFIX: &str = "CLUSTER_NODE_READY ";
/// Environment variable with the exchange (its presence makes `cluster_node` serve).
pub const NODE_ENV_EXCHANGE: &str = "SIO_AMQP_NODE_EXCHANGE";
/// Environment variable with the broker URI.
pub const NODE_ENV_URI: &str = "SIO_AMQP_NODE_URI";
/// The bound of every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// One server process.
pub struct Node {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
    /// Its own queue.
    pub queue: String,
    /// Its python-socketio host id.
    pub host_id: String,
}

impl Node {
    /// Starts a node on `exchange`; returns once it listens.
    async fn start(exchange: &str) -> Node {
        let exe = std::env::current_exe().expect("test binary");
        let mut child = Command::new(exe)
            .args([
                "cluster_node",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(NODE_ENV_EXCHANGE, exchange)
            .env(NODE_ENV_URI, rabbit::uri())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a cluster node");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = oneshot::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest prints `test cluster_node ... ` first, on the same line.
                if let Some(at) = line.find(READY_PREFIX) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line[at + READY_PREFIX.len()..].to_owned());
                    }
                }
            }
        });
        let stdin = child.stdin.take();
        let mut node = Node {
            child,
            stdin,
            port: 0,
            queue: String::new(),
            host_id: String::new(),
        };
        let ready = tokio::time::timeout(WAIT, rx)
            .await
            .expect("node did not start in time")
            .expect("node exited before listening");
        let ready: Value = serde_json::from_str(&ready).expect("ready json");
        node.port = ready["port"].as_u64().expect("port") as u16;
        node.queue = ready["queue"].as_str().expect("queue").to_owned();
        node.host_id = ready["host_id"].as_str().expect("host_id").to_owned();
        node
    }

    /// Kills the process at once (a crash: no goodbye, the queue stays until deleted).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Closing stdin asks for a graceful stop (which deletes the node's queue).
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Server processes on one unique exchange.
pub struct Cluster {
    /// The nodes, in start order.
    pub nodes: Vec<Node>,
    fence: AtomicU64,
    // Dropped after the nodes: the exchange and the queues go once the processes are gone.
    cleanup: BrokerCleanup,
}

impl Cluster {
    /// Starts `n` nodes on a new exchange `socketioxide-amqp-test-<what>-<uuid>`.
    pub async fn start(what: &str, n: usize) -> Cluster {
        let cleanup = BrokerCleanup::new(&rabbit::unique_exchange(what));
        let starts = (0..n).map(|_| Node::start(cleanup.exchange()));
        let nodes = futures_util::future::join_all(starts).await;
        for node in &nodes {
            cleanup.queue(node.queue.clone());
        }
        Cluster {
            nodes,
            fence: AtomicU64::new(0),
            cleanup,
        }
    }

    /// The number of the last [`fence`](Self::fence) (for [`Tap::until_fence`]).
    pub fn last_fence(&self) -> u64 {
        self.fence.load(Ordering::Relaxed) - 1
    }

    /// The exchange.
    pub fn exchange(&self) -> &str {
        self.cleanup.exchange()
    }

    /// Connects `n` clients round-robin over the nodes: client `i` is on node `i % nodes`,
    /// labelled `c<i>`.
    pub async fn clients(&self, n: usize) -> Vec<SioClient> {
        let mut out = Vec::new();
        for i in 0..n {
            let node = i % self.nodes.len();
            out.push(SioClient::connect(self.nodes[node].port, &format!("c{i}"), node).await);
        }
        out
    }

    /// Waits until every node counts `n` servers and sees `sockets` sockets through
    /// `fetch_sockets`, i.e. the heartbeats made the nodes know each other.
    pub async fn wait_formed(&self, clients: &[SioClient], sockets: usize) {
        let n = self.nodes.len();
        for node in 0..n {
            let client = clients
                .iter()
                .find(|c| c.node == node)
                .expect("a client on every node");
            eventually(&format!("node {node} sees the cluster"), || async {
                client.ok(json!({"op": "server_count"})).await == json!(n)
                    && client
                        .ok(json!({"op": "fetch_sockets"}))
                        .await
                        .as_array()
                        .map(Vec::len)
                        == Some(sockets)
            })
            .await;
        }
    }

    /// A fence: the node of client `via` broadcasts a `fence` event with a new number to the
    /// whole namespace, then every client's events are read up to that fence. Returns, per
    /// client, what it received before the fence, rendered by [`Received::render`]; a client
    /// that got disconnected stops at its `disconnect`.
    ///
    /// Within one node, messages reach every other node in publish order, so everything `via`'s
    /// node did before the fence is visible once it arrives; no sleep needed. (Volatile packets
    /// are the exception: engine.io sends them outside the ordered buffer.)
    pub async fn fence(&self, via: usize, clients: &mut [SioClient]) -> Vec<Vec<String>> {
        let n = self.fence.fetch_add(1, Ordering::Relaxed);
        clients[via]
            .ok(json!({"op": "emit", "event": "fence", "data": n}))
            .await;
        let mut out = Vec::new();
        for c in clients.iter_mut() {
            out.push(c.until_fence(n).await);
        }
        out
    }

    /// Client `via` emits `event` with `data` to the whole namespace, then a [`fence`](Self::fence)
    /// from the same client: what each client received up to it.
    pub async fn emit_and_fence(
        &self,
        via: usize,
        clients: &mut [SioClient],
        event: &str,
        data: Value,
    ) -> Vec<Vec<String>> {
        clients[via]
            .ok(json!({"op": "emit", "event": event, "data": data}))
            .await;
        self.fence(via, clients).await
    }
}

/// What a client received.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// An event: name and arguments.
    Event(String, Vec<Value>),
    /// The server disconnected the client from the namespace.
    Disconnect,
}

impl Received {
    /// `name args-json`, or `disconnect`.
    pub fn render(&self) -> String {
        match self {
            Received::Event(name, args) => format!("{name} {}", Value::Array(args.clone())),
            Received::Disconnect => "disconnect".to_owned(),
        }
    }
}

type Calls = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A Socket.IO client connected to [`NS`] over a websocket. Events with an ack id are acked
/// at once with the client's label, unless [`set_auto_ack`](Self::set_auto_ack) turned it off.
pub struct SioClient {
    /// `c<i>`.
    pub label: String,
    /// The index of its node in the cluster.
    pub node: usize,
    /// Its socket id in the namespace.
    pub sid: String,
    out: mpsc::UnboundedSender<String>,
    events: mpsc::UnboundedReceiver<Received>,
    calls: Calls,
    next_id: AtomicU64,
    auto_ack: Arc<std::sync::atomic::AtomicBool>,
    reader: tokio::task::AbortHandle,
}

impl Drop for SioClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl SioClient {
    /// Connects to the node on `port`.
    pub async fn connect(port: u16, label: &str, node: usize) -> SioClient {
        let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket");
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("websocket connect in time")
            .expect("websocket connect");
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
        let (ev_tx, events) = mpsc::unbounded_channel();
        let calls: Calls = Arc::default();
        let auto_ack = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (sid_tx, sid_rx) = oneshot::channel();
        tokio::spawn(async move {
            while let Some(text) = out_rx.recv().await {
                if sink.send(WsMessage::text(text)).await.is_err() {
                    return;
                }
            }
        });
        let reader = {
            let out = out.clone();
            let calls = calls.clone();
            let auto_ack = auto_ack.clone();
            let label = label.to_owned();
            tokio::spawn(async move {
                let mut sid_tx = Some(sid_tx);
                while let Some(Ok(msg)) = stream.next().await {
                    let WsMessage::Text(text) = msg else { continue };
                    let text = text.as_str();
                    if text == "2" {
                        let _ = out.send("3".to_owned());
                        continue;
                    }
                    if text.starts_with('0') {
                        let _ = out.send(format!("40{NS},"));
                        continue;
                    }
                    let Some((kind, rest)) = parse_sio(text) else {
                        continue;
                    };
                    match kind {
                        '0' => {
                            let v: Value = serde_json::from_str(rest).unwrap_or_default();
                            if let (Some(tx), Some(sid)) = (sid_tx.take(), v["sid"].as_str()) {
                                let _ = tx.send(sid.to_owned());
                            }
                        }
                        '1' => {
                            let _ = ev_tx.send(Received::Disconnect);
                        }
                        '2' => {
                            let (id, json) = split_id(rest);
                            let Ok(Value::Array(mut args)) = serde_json::from_str(json) else {
                                continue;
                            };
                            if args.is_empty() {
                                continue;
                            }
                            let name = args.remove(0).as_str().unwrap_or_default().to_owned();
                            if let Some(id) = id {
                                if auto_ack.load(Ordering::Relaxed) {
                                    let _ = out.send(format!("43{NS},{id}{}", json!([label])));
                                }
                            }
                            let _ = ev_tx.send(Received::Event(name, args));
                        }
                        '3' => {
                            let (id, json) = split_id(rest);
                            let v: Value = serde_json::from_str(json).unwrap_or_default();
                            let first = v.get(0).cloned().unwrap_or(Value::Null);
                            if let Some(tx) = id.and_then(|id| {
                                calls
                                    .lock()
                                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                                    .remove(&id)
                            }) {
                                let _ = tx.send(first);
                            }
                        }
                        _ => {}
                    }
                }
            })
            .abort_handle()
        };
        let sid = tokio::time::timeout(WAIT, sid_rx)
            .await
            .expect("namespace connect in time")
            .expect("namespace connect");
        SioClient {
            label: label.to_owned(),
            node,
            sid,
            out,
            events,
            calls,
            next_id: AtomicU64::new(1),
            auto_ack,
            reader,
        }
    }

    /// Turns the automatic acks on or off.
    pub fn set_auto_ack(&self, on: bool) {
        self.auto_ack.store(on, Ordering::Relaxed);
    }

    /// Runs an `op` on the client's node and returns the ack: `Ok(result)` or `Err(message)`.
    pub async fn call(&self, req: Value) -> Result<Value, Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, tx);
        self.out
            .send(format!("42{NS},{id}{}", json!(["op", req])))
            .expect("client writer alive");
        let res = tokio::time::timeout(WAIT, rx)
            .await
            .unwrap_or_else(|_| panic!("{}: no answer to {req} within {WAIT:?}", self.label))
            .expect("client reader alive");
        match res.get("ok") {
            Some(v) => Ok(v.clone()),
            None => Err(res),
        }
    }

    /// [`call`](Self::call), which must succeed.
    pub async fn ok(&self, req: Value) -> Value {
        match self.call(req.clone()).await {
            Ok(v) => v,
            Err(e) => panic!("{}: {req} failed: {e}", self.label),
        }
    }

    /// The next thing received, within [`WAIT`].
    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .unwrap_or_else(|_| panic!("{}: nothing received within {WAIT:?}", self.label))
            .expect("client reader alive")
    }

    /// Everything received before `fence n` (or up to and including a `disconnect`).
    async fn until_fence(&mut self, n: u64) -> Vec<String> {
        let mut got = Vec::new();
        loop {
            match self.next().await {
                Received::Event(name, args) if name == "fence" && args == [json!(n)] => return got,
                Received::Disconnect => {
                    got.push("disconnect".to_owned());
                    return got;
                }
                r => got.push(r.render()),
            }
        }
    }
}

/// Parses `4<type><ns>,<rest>` for namespace [`NS`]: returns the Socket.IO packet type.
fn parse_sio(text: &str) -> Option<(char, &str)> {
    let rest = text.strip_prefix('4')?;
    let mut chars = rest.chars();
    let kind = chars.next()?;
    let rest = chars.as_str().strip_prefix(NS)?;
    Some((kind, rest.strip_prefix(',').unwrap_or(rest)))
}

/// Splits an optional ack id from the JSON that follows it.
fn split_id(rest: &str) -> (Option<u64>, &str) {
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    (rest[..digits].parse().ok(), &rest[digits..])
}

/// A consumer of every message published to an exchange (its own exclusive queue), to count
/// what goes through the broker.
pub struct Tap {
    consumer: lapin::Consumer,
    _conn: Connection,
}

impl Tap {
    /// Binds a new exclusive, auto-deleted queue to `exchange`.
    pub async fn new(exchange: &str) -> Tap {
        let (conn, channel) = rabbit::open_channel().await;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("tap queue");
        let consumer = rabbit::bind_and_consume(&channel, queue.name().as_str(), exchange, "tap")
            .await
            .expect("bind and consume the tap");
        Tap {
            consumer,
            _conn: conn,
        }
    }

    /// The JSON bodies published before the `emit` of event `fence` with data `n`.
    pub async fn until_fence(&mut self, n: u64) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let delivery = tokio::time::timeout(WAIT, self.consumer.next())
                .await
                .expect("tap: nothing within the wait")
                .expect("tap consumer ended")
                .expect("tap delivery");
            let v: Value = serde_json::from_slice(&delivery.data).unwrap_or_default();
            if v["method"] == "emit" && v["event"] == "fence" && v["data"] == json!([n]) {
                return out;
            }
            out.push(v);
        }
    }
}
