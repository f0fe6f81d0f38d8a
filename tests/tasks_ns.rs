//! The `/tasks` handlers in-process, without Python: a socketioxide server
//! with the local adapter on 127.0.0.1:0 over the demo SQLite databases
//! (4.x and 5.x layouts), and clients speaking raw Engine.IO 4 / Socket.IO 5
//! text packets over a websocket. Each test checks what each client
//! receives, in order, which rooms its socket is in, and what each event
//! wrote to the database.
//!
//! Where a test must know that the server has handled an event that sends
//! nothing back (a refusal, a database write), the node sends a valid
//! `algorithm_status_change` behind it and waits for its relay: a socket's
//! events are handled one after the other, so the relay arrives only after
//! everything the node sent before it was handled.

use std::{net::SocketAddr, str::FromStr, sync::Arc, sync::OnceLock, time::Duration};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use socketioxide::{socket::Sid, SocketIo};
use sqlx::{Connection, SqliteConnection};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, Message},
    MaybeTlsStream, WebSocketStream,
};
use v6_socketio::{
    auth::{
        generate_rsa_key_pair, mint_access_token, mint_keycloak_token, KeycloakVerifier,
        TokenVerifier, Verifier, DEFAULT_DECODE_ALGORITHMS,
    },
    database_url::DatabaseUrl,
    generation::Vantage6Generation,
    http::{router, Readiness},
    keycloak::{KeySource, RealmKey, StartupRetry},
    metrics::Metrics,
    store::{create_demo_database, create_demo_database_v5, Store},
    tasks_ns::{self, TasksContext, NAMESPACE},
};

/// How long a test waits for one packet or one database change.
const WAIT: Duration = Duration::from_secs(10);
const SECRET: &str = "tasks-namespace-test-secret";
const LIFETIME: Duration = Duration::from_secs(3600);

/// The demo fixture: nodes 1 (organisation 1) and 2 (organisation 2) of
/// collaboration 1, user 3 receiving every event of collaboration 1; task 1
/// (job 1) with run 1 of organisation 1 and run 2 of organisation 2.
const NODE_A: usize = 0;
const NODE_B: usize = 1;
const USER: usize = 2;

/// A server on an ephemeral port, a reader of its database, and a token per
/// demo account (node a, node b, user). The server task ends with the test.
struct TestServer {
    addr: SocketAddr,
    io: SocketIo,
    ctx: TasksContext,
    metrics: Metrics,
    db: SqliteConnection,
    tokens: Vec<String>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// An RSA realm key pair, generated once for the 5.x tests.
fn realm_key() -> &'static (String, String) {
    static KEY: OnceLock<(String, String)> = OnceLock::new();
    KEY.get_or_init(|| generate_rsa_key_pair().expect("RSA key"))
}

impl TestServer {
    async fn start(generation: Vantage6Generation) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("demo.sqlite");
        let (verifier, tokens): (Verifier, Vec<String>) = match generation {
            Vantage6Generation::V4 => {
                create_demo_database(&path).await.expect("demo database");
                let tokens = [(1, "node"), (2, "node"), (3, "user")]
                    .iter()
                    .map(|&(id, kind)| {
                        mint_access_token(SECRET, id, kind, LIFETIME).expect("token")
                    })
                    .collect();
                (TokenVerifier::new(SECRET).into(), tokens)
            }
            Vantage6Generation::V5 => {
                let (fixture, _) = create_demo_database_v5(&path).await.expect("demo database");
                let (private, public) = realm_key();
                let pem = dir.path().join("realm.pem");
                std::fs::write(&pem, public).expect("realm key file");
                let source = KeySource::File(pem);
                let key = RealmKey::load(
                    &source,
                    source.clone(),
                    Duration::from_secs(60),
                    StartupRetry::default(),
                )
                .await
                .expect("realm key");
                let verifier = KeycloakVerifier::new(
                    Arc::new(key),
                    DEFAULT_DECODE_ALGORITHMS.to_vec(),
                    Duration::from_secs(10),
                );
                let accounts = [
                    ("node", "demo-node-a"),
                    ("node", "demo-node-b"),
                    ("user", "demo-user"),
                ];
                let tokens = accounts
                    .iter()
                    .zip(&fixture.keycloak_ids)
                    .map(|(&(kind, name), subject)| {
                        mint_keycloak_token(
                            private,
                            "https://keycloak.test.invalid/realms/vantage6",
                            subject,
                            kind,
                            name,
                            LIFETIME,
                        )
                        .expect("token")
                    })
                    .collect();
                (verifier.into(), tokens)
            }
        };
        let store = Store::connect(&DatabaseUrl::Sqlite(path.clone()))
            .await
            .expect("store");
        let metrics = Metrics::new();
        let ctx = TasksContext::new(store.clone(), verifier, metrics.clone())
            .with_generation(generation)
            .with_first_event_delay(Duration::ZERO);
        let (layer, io) = SocketIo::builder().with_state(ctx.clone()).build_layer();
        tasks_ns::register(&io);
        let readiness = Readiness {
            store,
            broker_connected: None,
        };
        let app = router(metrics.clone(), readiness).layer(layer);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        let db = SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .expect("database reader");
        TestServer {
            addr,
            io,
            ctx,
            metrics,
            db,
            tokens,
            server,
            _dir: dir,
        }
    }

    /// Connects demo account `who` (NODE_A, NODE_B, USER).
    async fn connect(&self, who: usize) -> Client {
        Client::connect(self.addr, &self.tokens[who]).await
    }

    /// Connects the user, then node a, and reads what each receives on the
    /// way: the user's join message, the node's connect sequence and its
    /// announcement to the user.
    async fn connect_user_and_node_a(&self) -> (Client, Client) {
        let mut user = self.connect(USER).await;
        assert_eq!(
            user.next_event().await,
            message("User <demo-user> joined room <collaboration_1>")
        );
        let mut node = self.connect(NODE_A).await;
        assert_eq!(node.next_events(3).await, node_a_connect_sequence());
        assert_eq!(
            user.next_events(2).await,
            [
                node_online(1, "demo-node-a", 1),
                message("Node <demo-node-a> joined room <collaboration_1>"),
            ]
        );
        (user, node)
    }

    /// The rooms the socket `sid` is in, sorted.
    fn rooms_of(&self, sid: Sid) -> Vec<String> {
        let socket = self
            .io
            .of(NAMESPACE)
            .expect("namespace")
            .get_socket(sid)
            .expect("socket");
        let mut rooms: Vec<String> = socket.rooms().into_iter().map(|r| r.to_string()).collect();
        rooms.sort();
        rooms
    }

    /// `(status, last_seen is set)` of an `authenticatable` row.
    async fn status(&mut self, id: i64) -> (Option<String>, bool) {
        let (status, last_seen): (Option<String>, Option<String>) =
            sqlx::query_as("SELECT status, last_seen FROM authenticatable WHERE id = ?")
                .bind(id)
                .fetch_one(&mut self.db)
                .await
                .expect("authenticatable row");
        (status, last_seen.is_some())
    }

    async fn node_config(&mut self, node_id: i64) -> Vec<(String, Option<String>)> {
        sqlx::query_as("SELECT \"key\", value FROM nodeconfig WHERE node_id = ? ORDER BY id")
            .bind(node_id)
            .fetch_all(&mut self.db)
            .await
            .expect("nodeconfig rows")
    }

    async fn run_log(&mut self, run_id: i64) -> Option<String> {
        sqlx::query_scalar("SELECT log FROM run WHERE id = ?")
            .bind(run_id)
            .fetch_one(&mut self.db)
            .await
            .expect("run row")
    }

    async fn execute(&mut self, sql: &str) {
        sqlx::raw_sql(sql)
            .execute(&mut self.db)
            .await
            .expect("fixture statement");
    }

    /// The value of a counter sample line of `/metrics`, e.g.
    /// `v6_socketio_ignored_events_total{reason="foreign_run"}`; 0 when absent.
    fn counter(&self, sample: &str) -> u64 {
        let text = self.metrics.render();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(sample)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// Waits until `check` holds for the database (a write after the last
    /// event a client can observe, e.g. the disconnect's).
    async fn eventually<F>(&mut self, what: &str, mut check: F)
    where
        F: for<'a> FnMut(&'a mut TestServer) -> futures_util::future::BoxFuture<'a, bool>,
    {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !check(&mut *self).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not within {WAIT:?}: {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A Socket.IO client of `/tasks`, reading packets only when asked to.
struct Client {
    ws: Ws,
    sid: Sid,
}

/// An event as received: its name and its arguments.
type Received = (String, Vec<Value>);

fn event(name: &str, args: &[Value]) -> Received {
    (name.to_owned(), args.to_vec())
}

fn message(text: &str) -> Received {
    event("message", &[json!(text)])
}

fn node_online(id: i64, name: &str, org_id: i64) -> Received {
    event(
        "node-online",
        &[json!({"id": id, "name": name, "org_id": org_id})],
    )
}

/// What node a (`demo-node-a`, organisation 1) receives when it connects
/// with no pending dataframe deletions: `sync` first, then the join
/// message of each announced room it joined (`all_nodes` has none).
fn node_a_connect_sequence() -> Vec<Received> {
    vec![
        event("sync", &[]),
        message("Node <demo-node-a> joined room <collaboration_1>"),
        message("Node <demo-node-a> joined room <collaboration_1_organization_1>"),
    ]
}

/// A 5.x `delete_dataframe` instruction for dataframe `df_name` of session 1.
fn delete_dataframe(df_name: &str) -> Received {
    event(
        "delete_dataframe",
        &[json!({"df_name": df_name, "session_id": 1})],
    )
}

/// An `algorithm_status_change` a node sends for `run_id` of task 1.
fn status_change(run_id: i64, organization_id: i64, status: &str) -> Value {
    json!({
        "status": status, "run_id": run_id, "task_id": 1, "collaboration_id": 1,
        "node_id": organization_id, "organization_id": organization_id, "parent_id": null,
    })
}

/// Its relay to `collaboration_1`: the job id comes from the database.
fn status_relayed(run_id: i64, organization_id: i64, status: &str) -> Received {
    event(
        "algorithm_status_change",
        &[json!({
            "status": status, "run_id": run_id, "task_id": 1, "job_id": 1,
            "collaboration_id": 1, "node_id": organization_id,
            "organization_id": organization_id, "parent_id": null,
        })],
    )
}

impl Client {
    /// Opens the websocket with `Authorization: Bearer <token>` and
    /// connects to `/tasks`.
    async fn connect(addr: SocketAddr, token: &str) -> Client {
        let mut request = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket")
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("header value"),
        );
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("websocket within the wait")
            .expect("websocket");
        let mut client = Client { ws, sid: Sid::ZERO };
        let open = client.next_packet().await;
        assert!(open.starts_with('0'), "Engine.IO OPEN expected: {open}");
        client.send(format!("40{NAMESPACE},")).await;
        let ack = client.next_packet().await;
        let body = ack
            .strip_prefix(&format!("40{NAMESPACE},"))
            .unwrap_or_else(|| panic!("CONNECT acknowledgement expected: {ack}"));
        let body: Value = serde_json::from_str(body).expect("CONNECT body");
        client.sid = Sid::from_str(body["sid"].as_str().expect("sid")).expect("a sid");
        client
    }

    /// The next Engine.IO text packet; a server PING is answered on the way.
    // duplicates: deliberate — the adapter's process-cluster client reads its frames alike; the
    // two crates' tests share no code.
    async fn next_packet(&mut self) -> String {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a packet within the wait")
                .expect("connection open")
                .expect("websocket frame");
            match msg {
                Message::Text(t) if t.as_str() == "2" => self.send("3".to_owned()).await,
                Message::Text(t) => return t.as_str().to_owned(),
                _ => {}
            }
        }
    }

    async fn send(&mut self, packet: String) {
        self.ws.send(Message::text(packet)).await.expect("send");
    }

    /// The next Socket.IO event of `/tasks`.
    async fn next_event(&mut self) -> Received {
        let packet = self.next_packet().await;
        let body = packet
            .strip_prefix(&format!("42{NAMESPACE},"))
            .unwrap_or_else(|| panic!("an EVENT packet expected: {packet}"));
        let Ok(Value::Array(mut items)) = serde_json::from_str::<Value>(body) else {
            panic!("EVENT arguments are not an array: {packet}")
        };
        assert!(!items.is_empty(), "EVENT without a name: {packet}");
        let name = items.remove(0);
        (name.as_str().expect("event name").to_owned(), items)
    }

    /// The next `n` events.
    async fn next_events(&mut self, n: usize) -> Vec<Received> {
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            events.push(self.next_event().await);
        }
        events
    }

    async fn emit(&mut self, name: &str, data: Value) {
        self.send(format!("42{NAMESPACE},{}", json!([name, data])))
            .await;
    }

    async fn emit_without_argument(&mut self, name: &str) {
        self.send(format!("42{NAMESPACE},{}", json!([name]))).await;
    }

    /// Sends the barrier (see the module docs) and expects its relay as the
    /// next event of each of `observers` and of this node (node a, run 1).
    async fn barrier(&mut self, observers: &mut [&mut Client]) {
        self.emit("algorithm_status_change", status_change(1, 1, "barrier"))
            .await;
        let relayed = status_relayed(1, 1, "barrier");
        assert_eq!(self.next_event().await, relayed, "the sender's next event");
        for observer in observers {
            assert_eq!(
                observer.next_event().await,
                relayed,
                "an observer's next event"
            );
        }
    }

    /// Closes the websocket (a transport close, as when a node stops).
    async fn close(mut self) {
        self.ws.close(None).await.expect("close");
    }
}

#[tokio::test]
async fn node_gets_sync_before_its_rooms_and_is_announced_to_them() {
    let mut server = TestServer::start(Vantage6Generation::V4).await;
    let mut user = server.connect(USER).await;
    assert_eq!(
        user.next_event().await,
        message("User <demo-user> joined room <collaboration_1>")
    );
    assert_eq!(server.rooms_of(user.sid), ["collaboration_1"]);

    let mut node = server.connect(NODE_A).await;
    assert_eq!(node.next_events(3).await, node_a_connect_sequence());
    assert_eq!(
        server.rooms_of(node.sid),
        [
            "all_nodes",
            "collaboration_1",
            "collaboration_1_organization_1"
        ]
    );
    // The user is in collaboration_1 only: the announcement to it, then the
    // node's join message there (none of the organisation room's).
    assert_eq!(
        user.next_events(2).await,
        [
            node_online(1, "demo-node-a", 1),
            message("Node <demo-node-a> joined room <collaboration_1>"),
        ]
    );
    assert_eq!(server.status(1).await.0.as_deref(), Some("online"));
    assert_eq!(server.status(3).await.0.as_deref(), Some("online"));

    // Node b, in its own organisation room: node a hears of it in the
    // collaboration room only.
    let mut node_b = server.connect(NODE_B).await;
    assert_eq!(
        node_b.next_events(3).await,
        [
            event("sync", &[]),
            message("Node <demo-node-b> joined room <collaboration_1>"),
            message("Node <demo-node-b> joined room <collaboration_1_organization_2>"),
        ]
    );
    let announced = [
        node_online(2, "demo-node-b", 2),
        message("Node <demo-node-b> joined room <collaboration_1>"),
    ];
    assert_eq!(node.next_events(2).await, announced);
    assert_eq!(user.next_events(2).await, announced);
    node.barrier(&mut [&mut user, &mut node_b]).await;
}

#[tokio::test]
async fn node_events_write_the_database_and_reach_the_collaboration() {
    let mut server = TestServer::start(Vantage6Generation::V4).await;
    let (mut user, mut node) = server.connect_user_and_node_a().await;

    // node_info_update: one row per value, lists and dicts flattened.
    let info = json!({
        "name": "demo-node-a",
        "databases": [{"label": "default", "type": "csv"}, {"label": "extra", "type": "sql"}],
        "encryption": {"enabled": false, "tags": ["x", "y"]},
        "allowed_algorithms": ["harbor2.vantage6.ai/*", "local/*"],
        "port": 5070,
    });
    node.emit("node_info_update", info).await;
    node.barrier(&mut [&mut user]).await;
    let text = |k: &str, v: &str| (k.to_owned(), Some(v.to_owned()));
    assert_eq!(
        server.node_config(1).await,
        [
            text("name", "demo-node-a"),
            text("databases", r#"{"label":"default","type":"csv"}"#),
            text("databases", r#"{"label":"extra","type":"sql"}"#),
            text("enabled", "0"),
            text("tags", "x"),
            text("tags", "y"),
            text("allowed_algorithms", "harbor2.vantage6.ai/*"),
            text("allowed_algorithms", "local/*"),
            text("port", "5070"),
        ]
    );
    // A second update replaces the rows.
    node.emit("node_info_update", json!({"name": "renamed"}))
        .await;
    node.barrier(&mut [&mut user]).await;
    assert_eq!(server.node_config(1).await, [text("name", "renamed")]);

    // algorithm_log: appended line by line, relayed without the collaboration.
    for line in ["first line", "second line"] {
        node.emit(
            "algorithm_log",
            json!({"run_id": 1, "task_id": 1, "collaboration_id": 1, "log": line}),
        )
        .await;
        let relayed = event(
            "algorithm_log",
            &[json!({"run_id": 1, "task_id": 1, "log": line})],
        );
        assert_eq!(node.next_event().await, relayed);
        assert_eq!(user.next_event().await, relayed);
    }
    assert_eq!(
        server.run_log(1).await.as_deref(),
        Some("first line\nsecond line")
    );

    // algorithm_status_change: relayed with the run's job id.
    node.emit("algorithm_status_change", status_change(1, 1, "active"))
        .await;
    assert_eq!(node.next_event().await, status_relayed(1, 1, "active"));
    assert_eq!(user.next_event().await, status_relayed(1, 1, "active"));

    // ping: online again and last_seen set.
    server
        .execute("UPDATE authenticatable SET status = 'offline', last_seen = NULL WHERE id = 1")
        .await;
    node.emit_without_argument("ping").await;
    node.barrier(&mut [&mut user]).await;
    assert_eq!(server.status(1).await, (Some("online".to_owned()), true));

    // node_metrics_update: gauges labelled by node, os and platform.
    node.emit(
        "node_metrics_update",
        json!({"os": "linux", "platform": "x86_64", "cpu_percent": 12.5}),
    )
    .await;
    node.barrier(&mut [&mut user]).await;
    assert!(
        server
            .metrics
            .render()
            .lines()
            .any(|l| l.contains("cpu_percent")
                && l.contains(r#"node_id="1""#)
                && l.contains(r#"os="linux""#)
                && l.ends_with(" 12.5")),
        "{}",
        server.metrics.render()
    );

    // The disconnect: leave messages, then offline, node-offline, and the
    // node's configuration rows deleted.
    node.close().await;
    assert_eq!(
        user.next_events(2).await,
        [
            message("demo-node-a left room collaboration_1"),
            event(
                "node-offline",
                &[json!({"id": 1, "name": "demo-node-a", "org_id": 1})]
            ),
        ]
    );
    server
        .eventually("node a offline without configuration rows", |s| {
            Box::pin(async move {
                s.status(1).await.0.as_deref() == Some("offline")
                    && s.node_config(1).await.is_empty()
            })
        })
        .await;
    assert_eq!(server.status(3).await.0.as_deref(), Some("online"));
}

#[tokio::test]
async fn events_about_other_collaborations_runs_or_from_users_are_refused() {
    let mut server = TestServer::start(Vantage6Generation::V4).await;
    let (mut user, mut node) = server.connect_user_and_node_a().await;

    // Another collaboration named, for a run of the node's own.
    node.emit(
        "algorithm_log",
        json!({"run_id": 1, "task_id": 1, "collaboration_id": 2, "log": "elsewhere"}),
    )
    .await;
    let mut foreign_collaboration = status_change(1, 1, "active");
    foreign_collaboration["collaboration_id"] = json!(2);
    node.emit("algorithm_status_change", foreign_collaboration)
        .await;
    // Run 2 is organisation 2's.
    node.emit(
        "algorithm_log",
        json!({"run_id": 2, "task_id": 1, "collaboration_id": 1, "log": "not mine"}),
    )
    .await;
    node.emit("algorithm_status_change", status_change(2, 2, "failed"))
        .await;
    // No such run.
    node.emit(
        "algorithm_log",
        json!({"run_id": 99, "task_id": 1, "collaboration_id": 1, "log": "nobody's"}),
    )
    .await;
    // Node-only events from a user.
    user.emit("node_info_update", json!({"name": "user-config"}))
        .await;
    user.emit(
        "algorithm_log",
        json!({"run_id": 1, "task_id": 1, "collaboration_id": 1, "log": "from a user"}),
    )
    .await;
    // Not an object.
    node.emit("node_info_update", json!("not an object")).await;

    // The node's refusals are handled once its barrier is relayed; the
    // user's, in the user's own session, are awaited through their count.
    node.barrier(&mut [&mut user]).await;
    server
        .eventually("the user's refused events counted", |s| {
            Box::pin(async move {
                s.counter(r#"v6_socketio_ignored_events_total{reason="not_a_node"}"#) == 2
            })
        })
        .await;
    for (reason, n) in [
        ("foreign_collaboration", 2),
        ("foreign_run", 2),
        ("unknown_run", 1),
        ("malformed_payload", 1),
    ] {
        assert_eq!(
            server.counter(&format!(
                r#"v6_socketio_ignored_events_total{{reason="{reason}"}}"#
            )),
            n,
            "refused for {reason}"
        );
    }
    assert_eq!(server.run_log(1).await, None);
    assert_eq!(server.run_log(2).await, None);
    assert!(server.node_config(1).await.is_empty());
    assert!(server.node_config(3).await.is_empty());
}

#[tokio::test]
async fn unidentified_clients_get_no_sync_no_rooms_and_their_events_are_ignored() {
    let mut server = TestServer::start(Vantage6Generation::V4).await;
    let forged = mint_access_token("another-secret", 1, "node", LIFETIME).expect("token");
    let unknown = mint_access_token(SECRET, 99, "node", LIFETIME).expect("token");
    let mut strangers = [
        Client::connect(server.addr, &forged).await,
        Client::connect(server.addr, &unknown).await,
    ];
    for stranger in &mut strangers {
        stranger
            .emit("node_info_update", json!({"name": "forged"}))
            .await;
        stranger.emit_without_argument("ping").await;
    }
    server
        .eventually("the strangers' events ignored", |s| {
            Box::pin(async move {
                s.counter(r#"v6_socketio_ignored_events_total{reason="unidentified"}"#) == 4
            })
        })
        .await;
    for stranger in &strangers {
        assert!(server.rooms_of(stranger.sid).is_empty());
    }
    assert!(server.node_config(1).await.is_empty());
    assert_eq!(server.status(1).await, (Some("offline".to_owned()), false));
    for reason in ["invalid_token", "unknown_subject"] {
        assert_eq!(
            server.counter(&format!(
                r#"v6_socketio_unidentified_connections_total{{reason="{reason}"}}"#
            )),
            1,
            "{reason}"
        );
    }
    // A forged signature is told `invalid_token`, as vantage6 does; an
    // unknown subject nothing. Then each gets only what is sent to every
    // socket of the namespace.
    server
        .io
        .of(NAMESPACE)
        .expect("namespace")
        .emit("probe", &json!(1))
        .await
        .expect("broadcast");
    let [forged, unknown] = &mut strangers;
    assert_eq!(
        forged.next_events(2).await,
        [event("invalid_token", &[]), event("probe", &[json!(1)])]
    );
    assert_eq!(unknown.next_event().await, event("probe", &[json!(1)]));
}

#[tokio::test]
async fn v5_pending_dataframe_deletions_follow_the_rooms_and_are_acknowledged() {
    let mut server = TestServer::start(Vantage6Generation::V5).await;
    server
        .execute(
            "INSERT INTO session (id, name, user_id, collaboration_id) VALUES (1, 'analysis', 3, 1);
             INSERT INTO dataframetobedeletedatnode (id, dataframe_name, session_id, node_id) VALUES
                 (1, 'df_one', 1, 1), (2, 'df_two', 1, 1), (3, 'df_b', 1, 2);",
        )
        .await;
    let mut node = server.connect(NODE_A).await;
    let mut expected = node_a_connect_sequence();
    expected.extend([delete_dataframe("df_one"), delete_dataframe("df_two")]);
    assert_eq!(node.next_events(5).await, expected);

    node.emit(
        "dataframe_deleted",
        json!({"df_name": "df_one", "session_id": 1, "node_id": 1}),
    )
    .await;
    // Another node's row, and a dataframe never asked for.
    node.emit(
        "dataframe_deleted",
        json!({"df_name": "df_b", "session_id": 1, "node_id": 2}),
    )
    .await;
    node.emit(
        "dataframe_deleted",
        json!({"df_name": "df_unknown", "session_id": 1, "node_id": 1}),
    )
    .await;
    node.barrier(&mut []).await;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT dataframe_name, node_id FROM dataframetobedeletedatnode ORDER BY id",
    )
    .fetch_all(&mut server.db)
    .await
    .expect("rows");
    assert_eq!(rows, [("df_two".to_owned(), 1), ("df_b".to_owned(), 2)]);
    assert_eq!(
        server.counter(r#"v6_socketio_ignored_events_total{reason="foreign_node"}"#),
        1
    );
    assert_eq!(
        server.counter(r#"v6_socketio_ignored_events_total{reason="unknown_dataframe"}"#),
        1
    );

    // The next connect is told only what is still pending.
    node.close().await;
    server
        .eventually("node a offline", |s| {
            Box::pin(async move { s.status(1).await.0.as_deref() == Some("offline") })
        })
        .await;
    let mut node = server.connect(NODE_A).await;
    let mut expected = node_a_connect_sequence();
    expected.push(delete_dataframe("df_two"));
    assert_eq!(node.next_events(4).await, expected);
}

#[tokio::test]
async fn v5_ping_of_a_node_marked_offline_replays_the_connect_sequence() {
    let mut server = TestServer::start(Vantage6Generation::V5).await;
    let (mut user, mut node) = server.connect_user_and_node_a().await;

    // Still online: the ping only records last_seen.
    node.emit_without_argument("ping").await;
    node.barrier(&mut [&mut user]).await;
    assert_eq!(server.status(1).await, (Some("online".to_owned()), true));
    assert_eq!(server.counter("v6_socketio_ping_recoveries_total"), 0);

    // The offline sweep caught it late: the ping recovers the session. The
    // node is in its rooms already, so it hears its own announcements.
    server
        .execute("UPDATE authenticatable SET status = 'offline' WHERE id = 1")
        .await;
    node.emit_without_argument("ping").await;
    assert_eq!(
        node.next_events(5).await,
        [
            event("sync", &[]),
            node_online(1, "demo-node-a", 1),
            node_online(1, "demo-node-a", 1),
            message("Node <demo-node-a> joined room <collaboration_1>"),
            message("Node <demo-node-a> joined room <collaboration_1_organization_1>"),
        ]
    );
    assert_eq!(
        user.next_events(2).await,
        [
            node_online(1, "demo-node-a", 1),
            message("Node <demo-node-a> joined room <collaboration_1>"),
        ]
    );
    assert_eq!(server.status(1).await.0.as_deref(), Some("online"));
    assert_eq!(server.counter("v6_socketio_ping_recoveries_total"), 1);
    assert_eq!(
        server.rooms_of(node.sid),
        [
            "all_nodes",
            "collaboration_1",
            "collaboration_1_organization_1"
        ]
    );
    // Announced once per room: the next event of each is the barrier.
    node.barrier(&mut [&mut user]).await;

    // A user's ping records it, with no recovery.
    server
        .execute("UPDATE authenticatable SET status = 'offline', last_seen = NULL WHERE id = 3")
        .await;
    user.emit_without_argument("ping").await;
    server
        .eventually("the user's ping recorded", |s| {
            Box::pin(async move { s.status(3).await == (Some("online".to_owned()), true) })
        })
        .await;
    node.barrier(&mut [&mut user]).await;
    assert_eq!(server.counter("v6_socketio_ping_recoveries_total"), 1);
}

#[tokio::test]
async fn v5_completed_run_announces_its_dependent_tasks_first() {
    let mut server = TestServer::start(Vantage6Generation::V5).await;
    server
        .execute(
            "INSERT INTO task (id, name, collaboration_id, job_id, parent_id, init_org_id) VALUES
                 (2, 'dependent', 1, 2, NULL, 1), (3, 'another', 1, 3, 1, 1), (4, 'unrelated', 1, 4, NULL, 1);
             INSERT INTO task_depends_on (task_id, depends_on_id) VALUES (2, 1), (3, 1), (4, 3);",
        )
        .await;
    let (mut user, mut node) = server.connect_user_and_node_a().await;

    node.emit("algorithm_status_change", status_change(1, 1, "active"))
        .await;
    assert_eq!(node.next_event().await, status_relayed(1, 1, "active"));
    assert_eq!(user.next_event().await, status_relayed(1, 1, "active"));

    node.emit("algorithm_status_change", status_change(1, 1, "completed"))
        .await;
    let expected = [
        event("new_task_update", &[json!({"id": 2, "parent_id": null})]),
        event("new_task_update", &[json!({"id": 3, "parent_id": 1})]),
        status_relayed(1, 1, "completed"),
    ];
    assert_eq!(node.next_events(3).await, expected);
    assert_eq!(user.next_events(3).await, expected);
}

#[tokio::test]
async fn v4_has_no_dataframe_events_and_no_dependent_task_updates() {
    let mut server = TestServer::start(Vantage6Generation::V4).await;
    let mut node = server.connect(NODE_A).await;
    assert_eq!(node.next_events(3).await, node_a_connect_sequence());
    node.emit(
        "dataframe_deleted",
        json!({"df_name": "df", "session_id": 1, "node_id": 1}),
    )
    .await;
    node.emit("algorithm_status_change", status_change(1, 1, "completed"))
        .await;
    assert_eq!(node.next_event().await, status_relayed(1, 1, "completed"));
    assert_eq!(
        server.counter(r#"v6_socketio_ignored_events_total{reason="unknown_event"}"#),
        1
    );
    server
        .execute("UPDATE authenticatable SET status = 'offline' WHERE id = 1")
        .await;
    // 4.x ping: no recovery sequence, only the write.
    node.emit_without_argument("ping").await;
    node.barrier(&mut []).await;
    assert_eq!(server.status(1).await.0.as_deref(), Some("online"));
}

#[tokio::test]
async fn sessions_end_once_every_disconnect_is_handled() {
    let mut server = TestServer::start(Vantage6Generation::V4).await;
    let mut node = server.connect(NODE_A).await;
    node.next_events(3).await;
    node.emit("node_info_update", json!({"name": "demo-node-a"}))
        .await;
    let mut user = server.connect(USER).await;
    let joined = message("User <demo-user> joined room <collaboration_1>");
    assert_eq!(user.next_event().await, joined);
    assert_eq!(node.next_event().await, joined, "the node shares the room");
    node.barrier(&mut [&mut user]).await;
    assert_eq!(server.ctx.running_sessions(), 2);
    assert_eq!(server.node_config(1).await.len(), 1);

    // The clients leave: the notification comes once both disconnects are
    // handled. (Not `io.close()`: socketioxide 0.18.9 removes the
    // namespaces before closing the transports, so no disconnect handler
    // runs then.)
    node.close().await;
    user.close().await;
    tokio::time::timeout(WAIT, server.ctx.sessions_ended())
        .await
        .expect("sessions ended within the wait");
    assert_eq!(server.ctx.running_sessions(), 0);
    assert_eq!(server.metrics.connected_sockets(), 0);
    // The disconnects' writes are done when it resolves.
    assert_eq!(server.status(1).await.0.as_deref(), Some("offline"));
    assert_eq!(server.status(3).await.0.as_deref(), Some("offline"));
    assert!(server.node_config(1).await.is_empty());
}

/// Reads `client`'s events until the relay of the barrier with `status`; returns how many other
/// events came before it (relays of fuzzed events that passed every check).
async fn until_relay(client: &mut Client, status: &str) -> usize {
    let relayed = status_relayed(1, 1, status);
    let mut others = 0;
    loop {
        if client.next_event().await == relayed {
            return others;
        }
        others += 1;
    }
}

/// The `/tasks` payload fuzz target (proptest on stable Rust): the committed corpus
/// `tests/corpus/tasks_payloads/` (payloads of vantage6-node 4.15.2 and wrong variants of them),
/// then generated events — each node event, `ping`, `message`, `error` and unknown names, with
/// arbitrary JSON or objects of the handlers' keys with arbitrary values — sent by a node and by a
/// user. Then a barrier: both still get the next relay, so the server handled everything and
/// kept serving. `V6_FUZZ_CASES` sets the number of generated events (default 3000).
#[tokio::test]
async fn fuzzed_event_payloads_never_break_the_session() {
    use proptest::{
        collection::{btree_map, vec},
        prelude::*,
        strategy::ValueTree,
        test_runner::{Config, TestRunner},
    };
    let mut server = TestServer::start(Vantage6Generation::V4).await;
    let (mut user, mut node) = server.connect_user_and_node_a().await;

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/tasks_payloads");
    let mut seeds: Vec<_> = std::fs::read_dir(dir)
        .expect("corpus directory")
        .map(|e| e.expect("corpus entry").path())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 10, "payload corpus has too few seeds");
    for path in &seeds {
        let seed: Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("seed")).expect("seed JSON");
        let name = seed["event"].as_str().expect("seed event");
        node.emit(name, seed["data"].clone()).await;
        user.emit(name, seed["data"].clone()).await;
    }
    node.emit(
        "algorithm_status_change",
        status_change(1, 1, "after-corpus"),
    )
    .await;
    let node_others = until_relay(&mut node, "after-corpus").await;
    let user_others = until_relay(&mut user, "after-corpus").await;
    // The seeds' own relays: the status change and the log line of run 1.
    assert_eq!((node_others, user_others), (2, 2));
    assert!(!server.node_config(1).await.is_empty());

    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        ".{0,16}".prop_map(Value::String),
        (0i64..4).prop_map(Value::from),
    ];
    let any_json = leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            btree_map("[a-z_]{0,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    const KEYS: [&str; 12] = [
        "run_id",
        "collaboration_id",
        "status",
        "log",
        "task_id",
        "node_id",
        "organization_id",
        "parent_id",
        "os",
        "platform",
        "cpu_percent",
        "num_algorithm_containers",
    ];
    let handler_object = btree_map(
        (0..KEYS.len()).prop_map(|k| KEYS[k]),
        any_json.clone(),
        0..8,
    )
    .prop_map(|m| {
        let mut o: serde_json::Map<String, Value> =
            m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        // Most reach the run checks and the relays: the node's own collaboration and run.
        o.entry("collaboration_id").or_insert(json!(1));
        o.entry("run_id").or_insert(json!(1));
        Value::Object(o)
    });
    const EVENTS: [&str; 9] = [
        "algorithm_status_change",
        "node_info_update",
        "algorithm_log",
        "node_metrics_update",
        "ping",
        "message",
        "error",
        "dataframe_deleted",
        "x",
    ];
    let strategy = (
        0..EVENTS.len(),
        prop_oneof![any_json, handler_object],
        any::<bool>(),
    );
    let cases = std::env::var("V6_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    // In batches, each closed by a barrier: a client that sends faster than its session is
    // handled has events dropped (the session queue's bound), the barrier among them.
    const BATCH: u32 = 50;
    let (mut node_others, mut user_others) = (0, 0);
    for batch in 0..cases.div_ceil(BATCH) {
        for i in 0..BATCH.min(cases - batch * BATCH) {
            let (event, data, from_node) =
                strategy.new_tree(&mut runner).expect("a case").current();
            let sender = if from_node { &mut node } else { &mut user };
            if i % 7 == 0 {
                sender.emit_without_argument(EVENTS[event]).await;
            } else {
                sender.emit(EVENTS[event], data).await;
            }
        }
        let status = format!("after-batch-{batch}");
        node.emit("algorithm_status_change", status_change(1, 1, &status))
            .await;
        node_others += until_relay(&mut node, &status).await;
        user_others += until_relay(&mut user, &status).await;
    }
    println!(
        "fuzzed {cases} events: {node_others} other events to the node, {user_others} to the user"
    );
    assert!(server.counter("v6_socketio_ignored_events_total{reason=\"unknown_event\"}") > 0);
    // The session goes on as usual.
    node.barrier(&mut [&mut user]).await;
}

/// Malformed Engine.IO / Socket.IO packets over a websocket, each on a fresh connection of its
/// own (connected to `/tasks` without a token, or not connected to a namespace): the server
/// closes that connection or ignores the packet, and a node and a user connected beforehand are
/// not affected (they still get the next relay), and new clients still connect.
#[tokio::test]
async fn malformed_packets_close_or_are_ignored_and_others_are_unaffected() {
    let server = TestServer::start(Vantage6Generation::V4).await;
    let (mut user, mut node) = server.connect_user_and_node_a().await;
    let deep = format!(
        "42{NAMESPACE},[\"ping\",{}{}]",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let huge_text = format!("42{NAMESPACE},[\"message\",\"{}\"]", "x".repeat(2_000_000));
    let texts: Vec<String> = vec![
        "garbage".into(),
        String::new(),
        "4".into(),
        "42".into(),
        format!("42{NAMESPACE}"),
        format!("42{NAMESPACE},"),
        format!("42{NAMESPACE},["),
        format!("42{NAMESPACE},{{}}"),
        format!("42{NAMESPACE},[]"),
        format!("42{NAMESPACE},[1,2]"),
        format!("42{NAMESPACE},[null]"),
        format!("49{NAMESPACE},[\"x\"]"),
        "9".into(),
        "7xyz".into(),
        format!("451-{NAMESPACE},[\"ping\",{{\"_placeholder\":true,\"num\":0}}]"),
        format!("452-{NAMESPACE},[\"ping\",{{\"_placeholder\":true,\"num\":5}}]"),
        format!("45999999999999999999-{NAMESPACE},[\"ping\"]"),
        format!("42{NAMESPACE},99999999999999999999999[\"ping\"]"),
        format!("42{NAMESPACE},18446744073709551616[\"ping\"]"),
        "40/nope,".into(),
        "40/admin,{}".into(),
        "41/nope,".into(),
        deep,
        huge_text,
    ];
    let mut closed = 0;
    let mut frames: Vec<Message> = texts.into_iter().map(Message::text).collect();
    frames.push(Message::binary(vec![0xff, 0xfe, 0x00, 0x34, 0x32]));
    frames.push(Message::binary(Vec::new()));
    let total = frames.len();
    for (i, frame) in frames.into_iter().enumerate() {
        let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
        let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("websocket within the wait")
            .expect("websocket");
        let mut saw_open = false;
        // OPEN, then (on even cases) CONNECT to /tasks without a token.
        while let Some(Ok(msg)) = tokio::time::timeout(WAIT, ws.next()).await.expect("open") {
            if let Message::Text(t) = msg {
                saw_open = t.starts_with('0');
                break;
            }
        }
        assert!(saw_open, "case {i}: no Engine.IO OPEN");
        if i % 2 == 0 {
            ws.send(Message::text(format!("40{NAMESPACE},")))
                .await
                .expect("send");
            let ack = loop {
                match tokio::time::timeout(WAIT, ws.next()).await.expect("ack") {
                    Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                        ws.send(Message::text("3")).await.expect("pong");
                    }
                    Some(Ok(Message::Text(t))) => break t.as_str().to_owned(),
                    Some(Ok(_)) => {}
                    other => panic!("case {i}: no CONNECT ack: {other:?}"),
                }
            };
            assert!(
                ack.starts_with(&format!("40{NAMESPACE},")),
                "case {i}: {ack}"
            );
        }
        // The malformed packet; a send error means the server already closed.
        if ws.send(frame).await.is_err() {
            closed += 1;
            continue;
        }
        // Closed within a moment, or still open (the packet ignored).
        let end = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                match ws.next().await {
                    None | Some(Err(_) | Ok(Message::Close(_))) => return true,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        if end.is_ok() {
            closed += 1;
        }
    }
    println!("malformed packets: {total} sent, {closed} connections closed by the server");
    assert!(closed > 0, "no malformed packet closed its connection");
    node.barrier(&mut [&mut user]).await;
    let mut other = server.connect(NODE_B).await;
    assert_eq!(other.next_event().await, event("sync", &[]));
}
