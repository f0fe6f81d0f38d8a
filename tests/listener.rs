//! The accept loop (`listener::serve`) in process, with a small router: the
//! header read timeout (silent, partial and idle kept-alive connections
//! closed; a slow response not), the connection cap (503 beyond it, the
//! permit back when a connection closes) and the stop order (listener closed
//! before the drain, requests in flight finished during it).

use std::{net::SocketAddr, time::Duration};

use axum::{routing::get, Router};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    time::Instant,
};
use v6_socketio::{
    listener::{self, Limits, REFUSAL_BODY},
    metrics::Metrics,
};

/// A running accept loop.
struct Server {
    addr: SocketAddr,
    metrics: Metrics,
    stop: Option<oneshot::Sender<()>>,
    drain_started: Option<oneshot::Receiver<()>>,
    done: tokio::task::JoinHandle<()>,
}

fn router() -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                "slow"
            }),
        )
}

/// Serves [`router`] with `limits`; the drain takes `drain`.
async fn start(limits: Limits, drain: Duration) -> Server {
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let metrics = Metrics::new();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (drain_tx, drain_rx) = oneshot::channel::<()>();
    let m = metrics.clone();
    let done = tokio::spawn(async move {
        listener::serve(
            tcp,
            router(),
            limits,
            m,
            async {
                let _ = stop_rx.await;
            },
            async move {
                let _ = drain_tx.send(());
                tokio::time::sleep(drain).await;
            },
        )
        .await;
    });
    Server {
        addr,
        metrics,
        stop: Some(stop_tx),
        drain_started: Some(drain_rx),
        done,
    }
}

/// Reads until the server closes the connection; what it sent.
async fn read_to_close(tcp: &mut TcpStream, within: Duration) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(within, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&out).into_owned())
}

const GET_HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n";

#[tokio::test]
async fn header_read_timeout_closes_silent_partial_and_idle_connections() {
    let timeout = Duration::from_millis(400);
    let server = start(
        Limits {
            header_read_timeout: timeout,
            max_connections: 100,
            tcp_user_timeout: None,
        },
        Duration::ZERO,
    )
    .await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut partial = TcpStream::connect(server.addr).await.unwrap();
    partial
        .write_all(b"GET /health HTTP/1.1\r\nhost:")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(GET_HEALTH).await.unwrap();
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();

    let bound = timeout * 3;
    read_to_close(&mut silent, bound)
        .await
        .expect("silent closed");
    read_to_close(&mut partial, bound)
        .await
        .expect("partial closed");
    let answered = read_to_close(&mut idle, bound).await.expect("idle closed");
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    let took = started.elapsed();
    assert!(took >= timeout, "closed after {took:?}, before the timeout");
    // The slow response (1.5 s, longer than the timeout) is not cut.
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf))
        .await
        .expect("slow answered")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("slow"),
        "{text}"
    );
}

#[tokio::test]
async fn connections_beyond_the_cap_get_503_until_one_closes() {
    let server = start(
        Limits {
            header_read_timeout: Duration::from_secs(30),
            max_connections: 2,
            tcp_user_timeout: None,
        },
        Duration::ZERO,
    )
    .await;
    let first = TcpStream::connect(server.addr).await.unwrap();
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    second.write_all(GET_HEALTH).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = second.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert_eq!(server.metrics.http_connections(), 2);

    let mut third = TcpStream::connect(server.addr).await.unwrap();
    third.write_all(GET_HEALTH).await.unwrap();
    let refused = read_to_close(&mut third, Duration::from_secs(3))
        .await
        .expect("refused and closed");
    assert!(
        refused.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{refused}"
    );
    assert!(refused.ends_with(REFUSAL_BODY), "{refused}");
    assert!(server
        .metrics
        .render()
        .contains("v6_socketio_connections_refused_total 1"));

    drop(first);
    let deadline = Instant::now() + Duration::from_secs(3);
    while server.metrics.http_connections() > 1 {
        assert!(Instant::now() < deadline, "the closed connection's permit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut fourth = TcpStream::connect(server.addr).await.unwrap();
    fourth.write_all(GET_HEALTH).await.unwrap();
    let n = fourth.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn stop_closes_the_listener_before_the_drain_and_finishes_requests_in_flight() {
    let mut server = start(
        Limits {
            header_read_timeout: Duration::from_secs(30),
            max_connections: 100,
            tcp_user_timeout: None,
        },
        Duration::from_millis(800),
    )
    .await;
    let mut in_flight = TcpStream::connect(server.addr).await.unwrap();
    in_flight
        .write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopped = Instant::now();
    let _ = server.stop.take().expect("stop").send(());
    server
        .drain_started
        .take()
        .expect("drain")
        .await
        .expect("the drain started");
    let refused = TcpStream::connect(server.addr).await;
    assert!(refused.is_err(), "connects are refused during the drain");
    let answered = read_to_close(&mut in_flight, Duration::from_secs(5))
        .await
        .expect("in-flight request answered, then closed");
    assert!(
        answered.starts_with("HTTP/1.1 200") && answered.ends_with("slow"),
        "{answered}"
    );
    tokio::time::timeout(Duration::from_secs(10), server.done)
        .await
        .expect("serve returned")
        .expect("no panic");
    assert!(stopped.elapsed() >= Duration::from_millis(800));
}
