//! The session-affinity cookie on a listening instance: the service
//! `server::app` builds around the Socket.IO layer of `server::socketio_builder`
//! and the `/tasks` namespace (no broker), spoken to over TCP with plain HTTP/1.1.

use std::{net::SocketAddr, time::Duration};

use socketioxide::adapter::LocalAdapter;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use v6_socketio::{
    auth::TokenVerifier,
    config::{Config, ServeOverrides},
    http::Readiness,
    metrics::Metrics,
    server,
    store::{create_demo_database, Store},
    tasks_ns::{self, TasksContext},
};

const COOKIE: &str = "v6_socketio_instance=v6-socketio-test.1:7602; Path=/; HttpOnly; SameSite=Lax";
const HANDSHAKE: &str = "/socket.io/?EIO=4&transport=polling&t=Pz1";

/// A running instance; the listener task ends with the test's runtime.
struct Instance {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start(own_section: &str) -> Instance {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("demo.sqlite");
    create_demo_database(&db).await.expect("demo db");
    let yaml = format!(
        "jwt_secret_key: affinity-test\nuri: sqlite:///{}\nv6_socketio: {own_section}\n",
        db.display()
    );
    let (config, _) = Config::from_yaml(&yaml, &ServeOverrides::default()).expect("config");
    let store = Store::connect(&config.database).await.expect("store");
    let metrics = Metrics::new();
    let (layer, io) = server::socketio_builder(
        &config,
        TasksContext::new(
            store.clone(),
            TokenVerifier::new(&config.jwt_secret_key),
            metrics.clone(),
        ),
    )
    .build_layer();
    tasks_ns::register::<LocalAdapter>(&io);
    let readiness = Readiness {
        store,
        broker_connected: None,
    };
    let app = server::app(&config, layer, metrics, readiness);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Instance { addr, _dir: dir }
}

/// A response's status line, headers (names lower-cased) and body as text.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn sid(&self) -> String {
        let start = self.body.find("\"sid\":\"").expect("sid in handshake body") + 7;
        let len = self.body[start..].find('"').expect("end of sid");
        self.body[start..start + len].to_owned()
    }
}

/// Sends `head` (request line and headers, without the final blank line)
/// and `body` on a new connection and reads the response: up to the end of
/// the headers for a 101, to the connection's close otherwise.
async fn send(addr: SocketAddr, head: &str, body: &str) -> Reply {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "{head}\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write request");
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.expect("read response");
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            if raw.starts_with(b"HTTP/1.1 101") && raw.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        String::from_utf8_lossy(&raw).into_owned()
    };
    let text = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("no response to {head:?} within 10 s"));
    let (head, body) = text.split_once("\r\n\r\n").expect("end of headers");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

async fn get(addr: SocketAddr, target: &str) -> Reply {
    send(addr, &format!("GET {target} HTTP/1.1"), "").await
}

#[tokio::test]
async fn handshakes_carry_the_instance_cookie_and_session_requests_do_not() {
    let instance = start("{instance_name: 'v6-socketio-test.1:7602'}").await;
    let addr = instance.addr;

    // Engine.IO polling handshake: a new session, pinned by the cookie.
    let handshake = get(addr, HANDSHAKE).await;
    assert_eq!(handshake.status, 200, "{handshake:?}");
    assert_eq!(handshake.all("set-cookie"), [COOKIE], "{handshake:?}");
    let sid = handshake.sid();

    // The session's own requests: Socket.IO CONNECT to /tasks, then a poll
    // that returns its answer at once. Neither sets the cookie again.
    let post = send(
        addr,
        &format!(
            "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\n\
             Content-Type: text/plain;charset=UTF-8"
        ),
        "40/tasks,",
    )
    .await;
    assert_eq!((post.status, post.body.as_str()), (200, "ok"), "{post:?}");
    assert!(post.all("set-cookie").is_empty(), "{post:?}");
    let poll = get(
        addr,
        &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
    )
    .await;
    assert_eq!(poll.status, 200, "{poll:?}");
    assert!(poll.body.contains("40/tasks,"), "{poll:?}");
    assert!(poll.all("set-cookie").is_empty(), "{poll:?}");

    // A websocket opened without a polling session is a handshake too.
    let ws = send(
        addr,
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13",
        "",
    )
    .await;
    assert_eq!(ws.status, 101, "{ws:?}");
    assert_eq!(ws.all("set-cookie"), [COOKIE], "{ws:?}");

    // Errors, unknown sessions and other paths get no cookie.
    for target in [
        "/socket.io/?EIO=9&transport=polling",
        "/socket.io/?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAHs",
        "/socket.io/?EIO=4&transport=polling&sid=",
        "/socket.io/?EIO=4&transport=polling&sid",
        "/health",
        "/nowhere",
    ] {
        let reply = get(addr, target).await;
        assert!(reply.all("set-cookie").is_empty(), "{target}: {reply:?}");
    }
    assert_eq!(get(addr, "/health").await.body, "ok");
}

#[tokio::test]
async fn no_cookie_when_switched_off() {
    let instance = start("{instance_name: n1, affinity_cookie: false}").await;
    let handshake = get(instance.addr, HANDSHAKE).await;
    assert_eq!(handshake.status, 200, "{handshake:?}");
    assert!(handshake.body.contains("\"sid\""), "{handshake:?}");
    assert!(handshake.all("set-cookie").is_empty(), "{handshake:?}");
}

#[test]
fn an_unusable_instance_name_is_a_config_error() {
    for name in ["''", "'a b'", "'n;1'", "'x=y'", "'ü'"] {
        let yaml = format!(
            "jwt_secret_key: k\nuri: sqlite:///x.sqlite\nv6_socketio: {{instance_name: {name}}}\n"
        );
        let err = Config::from_yaml(&yaml, &ServeOverrides::default())
            .expect_err(name)
            .to_string();
        assert!(err.contains("instance_name"), "{name}: {err}");
    }
}
