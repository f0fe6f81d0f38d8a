//! The Socket.IO server run in each child process: namespace [`NS`] on the RabbitMQ adapter,
//! with one `op` event whose handler runs an adapter operation and acks its result.
//!
//! Every `op` call is `["op", {"op": NAME, ...}]` with an ack id; the ack is `[{"ok": RESULT}]`
//! or `[{"err": MESSAGE, "elapsed_ms": N}]`. See [`run_op`] for the operations.

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use serde_json::{json, Value};
use socketioxide::{
    adapter::Emitter,
    extract::{AckSender, Data, SocketRef},
    operators::BroadcastOperators,
    SocketIo,
};
use socketioxide_amqp::{
    AdapterConfig, AmqpAdapter, AmqpAdapterCtr, AmqpConfig, AmqpDriver, DataFormat,
};
use std::io::Write;

use tokio::io::AsyncBufReadExt;

use super::{NODE_ENV_EXCHANGE, NODE_ENV_URI, NS, READY_PREFIX};

/// Environment variable: `legacy` or `args`, the node's [`AdapterConfig::python_data_format`].
pub const NODE_ENV_PY_FORMAT: &str = "SIO_AMQP_NODE_PY_FORMAT";
/// Environment variable: `1` sets [`AdapterConfig::wait_for_python_acks`].
pub const NODE_ENV_WAIT_PY_ACKS: &str = "SIO_AMQP_NODE_WAIT_PY_ACKS";

type A = AmqpAdapter<Emitter>;
type Io = SocketIo<A>;

static CTR: OnceLock<AmqpAdapterCtr<AmqpDriver>> = OnceLock::new();

/// Runs a node until its stdin closes (the test process dropped it or died) or it is killed.
pub fn main() {
    let Ok(exchange) = std::env::var(NODE_ENV_EXCHANGE) else {
        // Run by hand with `--ignored`: nothing to serve.
        return;
    };
    let uri = std::env::var(NODE_ENV_URI).expect("the test passes the broker URI");
    // lapin logs the expected connection losses of the broker-restart test as errors.
    let filter =
        std::env::var("SIO_AMQP_NODE_LOG").unwrap_or_else(|_| "error,lapin=off".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(serve(uri, exchange));
}

async fn serve(uri: String, exchange: String) {
    let amqp = AmqpConfig::new(uri.parse().expect("broker URI"))
        .with_exchange(exchange)
        .with_queue_expires(Some(Duration::from_secs(60)))
        .with_publish_timeout(Duration::from_secs(2))
        .with_connect_timeout(Duration::from_secs(2))
        .with_reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500));
    let mut config = AdapterConfig::default()
        .with_request_timeout(Duration::from_secs(2))
        .with_heartbeat(Duration::from_millis(300), Duration::from_secs(3));
    // Switches of the mixed-fleet tests (clients/tests/test_mixed_fleet.py).
    if let Ok(name) = std::env::var(NODE_ENV_PY_FORMAT) {
        match name.parse::<DataFormat>() {
            Ok(format) => config = config.with_python_data_format(format),
            Err(e) => panic!("{NODE_ENV_PY_FORMAT}: {e}"),
        }
    }
    if std::env::var(NODE_ENV_WAIT_PY_ACKS).is_ok_and(|v| v == "1") {
        config = config.with_wait_for_python_acks(true);
    }
    let ctr = AmqpAdapterCtr::connect_with_config(amqp, config)
        .await
        .expect("connect to RabbitMQ");
    CTR.set(ctr.clone()).expect("one node per process");
    let (layer, io) = SocketIo::builder()
        .with_adapter::<A>(ctr.clone())
        .build_layer();
    io.ns(NS, on_connect).await.expect("namespace init");
    let app = axum::Router::<()>::new().layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let ready = json!({"port": port, "queue": socketioxide_amqp::broker::Driver::queue_name(ctr.driver()), "host_id": ctr.host_id()});
    let mut out = std::io::stdout();
    if writeln!(out, "{READY_PREFIX}{ready}")
        .and_then(|()| out.flush())
        .is_err()
    {
        // The test process is gone: leave nothing behind.
        ctr.close().await;
        std::process::exit(1);
    }
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    // The parent holds our stdin: EOF means it is gone, so no node outlives its test.
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    while stdin.read_line(&mut line).await.is_ok_and(|n| n > 0) {
        line.clear();
    }
    io.close().await;
    ctr.close().await;
    std::process::exit(0);
}

async fn on_connect(socket: SocketRef<A>) {
    socket.on(
        "op",
        async |socket: SocketRef<A>, io: Io, Data(req): Data<Value>, ack: AckSender<A>| {
            let start = Instant::now();
            let res = match run_op(&socket, &io, &req).await {
                Ok(v) => json!({"ok": v}),
                Err(e) => json!({"err": e, "elapsed_ms": start.elapsed().as_millis() as u64}),
            };
            let _ = ack.send(&res);
        },
    );
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// The broadcast operators described by `req`: `from_socket` (exclude the caller, as
/// `socket.broadcast()`), `to`, `except`, `local`, `volatile`, `timeout_ms`.
fn operators(socket: &SocketRef<A>, io: &Io, req: &Value) -> BroadcastOperators<A> {
    let mut ops = if req["from_socket"].as_bool() == Some(true) {
        socket.broadcast()
    } else {
        io.of(NS).expect("namespace")
    };
    let to = strings(&req["to"]);
    if !to.is_empty() {
        ops = ops.to(to);
    }
    let except = strings(&req["except"]);
    if !except.is_empty() {
        ops = ops.except(except);
    }
    if req["local"].as_bool() == Some(true) {
        ops = ops.local();
    }
    if req["volatile"].as_bool() == Some(true) {
        ops = ops.volatile();
    }
    if let Some(ms) = req["timeout_ms"].as_u64() {
        ops = ops.timeout(Duration::from_millis(ms));
    }
    ops
}

/// One argument of an emit: JSON, or binary data that socketioxide sends as an attachment.
enum Arg {
    Json(Value),
    Bin(Vec<u8>),
}

/// The arguments of an emit, serialized as a tuple so that socketioxide sends each element as an
/// argument of its own (a JSON array would be one list argument).
struct Args(Vec<Arg>);

impl serde::Serialize for Args {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        struct One<'a>(&'a Arg);
        impl serde::Serialize for One<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                match self.0 {
                    Arg::Json(v) => v.serialize(serializer),
                    Arg::Bin(b) => serializer.serialize_bytes(b),
                }
            }
        }
        let mut tuple = serializer.serialize_tuple(self.0.len())?;
        for arg in &self.0 {
            tuple.serialize_element(&One(arg))?;
        }
        tuple.end()
    }
}

/// The arguments `req` describes: `args` (a list, each element an argument; without it, `data`
/// is the one argument), then one binary argument per base64 string of `bin`.
fn emit_args(req: &Value) -> Result<Args, String> {
    use base64::Engine as _;
    let mut args: Vec<Arg> = match &req["args"] {
        Value::Array(a) => a.iter().cloned().map(Arg::Json).collect(),
        Value::Null => vec![Arg::Json(req["data"].clone())],
        other => return Err(format!("args must be a list, not {other}")),
    };
    if let Some(bins) = req["bin"].as_array() {
        for b in bins {
            let text = b.as_str().ok_or("bin holds base64 strings")?;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| format!("bin {text:?}: {e}"))?;
            args.push(Arg::Bin(raw));
        }
    }
    Ok(Args(args))
}

/// Every argument of an ack, as a list (socketioxide hands a non-tuple type the first only).
struct AckArgs(Vec<Value>);

impl<'de> serde::Deserialize<'de> for AckArgs {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AckArgs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("the ack arguments")
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(
                self,
                mut seq: S,
            ) -> Result<AckArgs, S::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<Value>()? {
                    out.push(v);
                }
                Ok(AckArgs(out))
            }
        }
        deserializer.deserialize_tuple(usize::MAX, V)
    }
}

/// A client's ack value: one argument is the value itself.
fn ack_value(v: Value) -> Value {
    match v {
        Value::Array(mut a) if a.len() == 1 => a.remove(0),
        v => v,
    }
}

async fn collect_acks<T>(
    stream: impl futures_util::Stream<
        Item = (socketioxide::socket::Sid, Result<T, socketioxide::AckError>),
    >,
    start: Instant,
    value: impl Fn(T) -> Value,
) -> Value {
    let items: Vec<_> = stream.collect().await;
    let acks: Vec<Value> = items
        .into_iter()
        .map(|(sid, res)| match res {
            Ok(v) => json!({"sid": sid.to_string(), "value": value(v)}),
            Err(e) => json!({"sid": sid.to_string(), "error": e.to_string()}),
        })
        .collect();
    json!({"acks": acks, "elapsed_ms": start.elapsed().as_millis() as u64})
}

/// Runs one operation:
///
/// * `emit` {event, data | args, bin, to, except, local, volatile, from_socket}: a broadcast
///   (arguments: see [`emit_args`]);
/// * `emit_with_ack` {event, data | args, bin, to, timeout_ms, ack_args}: acks as
///   `{acks: [{sid, value|error}], elapsed_ms}`; `value` is the first ack argument, or the
///   list of all of them with `ack_args: true`;
/// * `fetch_sockets` {to, local}: `[{sid, rooms}]`, sorted by sid;
/// * `rooms` {local}: sorted room names;
/// * `room_op` {to, action: join|leave|disconnect, rooms}: room-wide operations;
/// * `remote` {sid, action: emit|emit_with_ack|join|leave|disconnect|rooms, event,
///   data | args, bin, ack_args, rooms}: on the socket `sid` found through `fetch_sockets`;
/// * `join` / `leave` {rooms}: the calling socket, locally;
/// * `server_count`, `metrics`.
async fn run_op(socket: &SocketRef<A>, io: &Io, req: &Value) -> Result<Value, String> {
    let ctr = CTR.get().expect("started");
    let start = Instant::now();
    let event = req["event"].as_str().unwrap_or("event").to_owned();
    let args = emit_args(req)?;
    let all_ack_args = req["ack_args"].as_bool() == Some(true);
    match req["op"].as_str().unwrap_or_default() {
        "join" => {
            socket.join(strings(&req["rooms"]));
            Ok(Value::Null)
        }
        "leave" => {
            socket.leave(strings(&req["rooms"]));
            Ok(Value::Null)
        }
        "emit" => operators(socket, io, req)
            .emit(&event, &args)
            .await
            .map(|()| Value::Null)
            .map_err(|e| e.to_string()),
        "emit_with_ack" if all_ack_args => {
            let stream = operators(socket, io, req)
                .emit_with_ack::<_, AckArgs>(&event, &args)
                .await
                .map_err(|e| e.to_string())?;
            Ok(collect_acks(stream, start, |a| json!(a.0)).await)
        }
        "emit_with_ack" => {
            let stream = operators(socket, io, req)
                .emit_with_ack::<_, Value>(&event, &args)
                .await
                .map_err(|e| e.to_string())?;
            Ok(collect_acks(stream, start, ack_value).await)
        }
        "fetch_sockets" => {
            let sockets = operators(socket, io, req)
                .fetch_sockets()
                .await
                .map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            for s in sockets {
                let rooms = sorted_rooms(s.rooms().await.map_err(|e| e.to_string())?);
                out.push(json!({"sid": s.data().id.to_string(), "rooms": rooms}));
            }
            out.sort_by_key(|v| v["sid"].as_str().unwrap_or_default().to_owned());
            Ok(Value::Array(out))
        }
        "rooms" => {
            let rooms = sorted_rooms(
                operators(socket, io, req)
                    .rooms()
                    .await
                    .map_err(|e| e.to_string())?,
            );
            Ok(json!(rooms))
        }
        "room_op" => {
            let ops = operators(socket, io, req);
            let rooms = strings(&req["rooms"]);
            match req["action"].as_str().unwrap_or_default() {
                "join" => ops.join(rooms).await.map_err(|e| e.to_string())?,
                "leave" => ops.leave(rooms).await.map_err(|e| e.to_string())?,
                "disconnect" => ops.disconnect().await.map_err(|e| e.to_string())?,
                other => return Err(format!("unknown room_op action {other:?}")),
            }
            Ok(Value::Null)
        }
        "remote" => {
            let sid = req["sid"].as_str().unwrap_or_default();
            let remote = io
                .of(NS)
                .expect("namespace")
                .fetch_sockets()
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .find(|s| s.data().id.to_string() == sid)
                .ok_or_else(|| format!("no socket {sid} in the cluster"))?;
            let rooms = strings(&req["rooms"]);
            match req["action"].as_str().unwrap_or_default() {
                "emit" => remote
                    .emit(&event, &args)
                    .await
                    .map_err(|e| e.to_string())?,
                "emit_with_ack" if all_ack_args => {
                    let stream = remote
                        .emit_with_ack::<_, AckArgs>(&event, &args)
                        .await
                        .map_err(|e| e.to_string())?;
                    return Ok(collect_acks(stream, start, |a| json!(a.0)).await);
                }
                "emit_with_ack" => {
                    let stream = remote
                        .emit_with_ack::<_, Value>(&event, &args)
                        .await
                        .map_err(|e| e.to_string())?;
                    return Ok(collect_acks(stream, start, ack_value).await);
                }
                "join" => remote.join(rooms).await.map_err(|e| e.to_string())?,
                "leave" => remote.leave(rooms).await.map_err(|e| e.to_string())?,
                "disconnect" => remote.disconnect().await.map_err(|e| e.to_string())?,
                "rooms" => {
                    let rooms = sorted_rooms(remote.rooms().await.map_err(|e| e.to_string())?);
                    return Ok(json!(rooms));
                }
                other => return Err(format!("unknown remote action {other:?}")),
            }
            Ok(Value::Null)
        }
        "server_count" => Ok(json!(ctr.server_count(NS))),
        "metrics" => {
            let m = ctr.metrics();
            Ok(json!({
                "published": m.published, "emits": m.emits, "publish_errors": m.publish_errors,
                "received": m.received, "invalid": m.invalid,
                "connected": ctr.driver().is_connected(),
            }))
        }
        other => Err(format!("unknown op {other:?}")),
    }
}

/// Room names, sorted, as the tests compare them.
fn sorted_rooms(rooms: impl IntoIterator<Item = impl ToString>) -> Vec<String> {
    let mut rooms: Vec<String> = rooms.into_iter().map(|r| r.to_string()).collect();
    rooms.sort();
    rooms
}
