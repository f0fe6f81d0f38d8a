//! vantage6's `/tasks` namespace. Each handler reads like the reference's
//! `DefaultSocketNamespace.on_*` method: identify the client, act on the
//! [`Store`], emit to rooms. No SQL here, and no knowledge of how rooms reach
//! other instances (that is the adapter's business).
//!
//! Each socket is served by one task of its own (see [`run_session`]): the
//! connect, every event and the disconnect are queued to it in the order the
//! client sent them and handled one after the other, like a python-socketio
//! session. So an event that arrives while the client is still being
//! identified waits for the identification, two `algorithm_log` lines are
//! appended in order, and a disconnect never races the connect.

use std::sync::Arc;

use serde_json::{json, Map, Value};
use socketioxide::{
    adapter::Adapter,
    extract::{SocketRef, State},
    SocketIo,
};
use socketioxide_core::adapter::DefinedAdapter;

use tracing::{debug, error, info, warn};

mod queue;

use queue::{Job, JobReceiver, SessionStart};

use crate::{
    auth::Verifier,
    identity::{Identity, NodeIdentity},
    metrics::{Metrics, NodeLabels},
    node_config,
    rooms::{self, is_announced},
    store::{AuthStatus, Store, StoreError, Unknown},
};

/// The namespace vantage6 nodes and users connect to.
pub const NAMESPACE: &str = "/tasks";

/// What the `/tasks` handlers share. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TasksContext {
    inner: Arc<ContextInner>,
}

#[derive(Debug)]
struct ContextInner {
    store: Store,
    verifier: Verifier,
    metrics: Metrics,
}

impl TasksContext {
    /// Bundles what the handlers need.
    pub fn new(store: Store, verifier: impl Into<Verifier>, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(ContextInner {
                store,
                verifier: verifier.into(),
                metrics,
            }),
        }
    }

    fn store(&self) -> &Store {
        &self.inner.store
    }

    fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Logs and counts a failed database operation.
    fn db_failed(&self, what: &str, e: &StoreError) {
        self.metrics().database_error();
        error!(error = %e, "database operation failed: {what}");
    }
}

/// What a socket's client is, once the connect has been handled.
#[derive(Debug)]
enum Session {
    /// The token or its subject was not accepted; events are ignored.
    Unidentified,
    /// A known node or user, in these rooms.
    Identified {
        identity: Identity,
        rooms: Vec<String>,
    },
}

/// Registers the `/tasks` namespace on `io`.
pub fn register<A: Adapter + DefinedAdapter>(io: &SocketIo<A>) -> A::InitRes {
    io.ns(NAMESPACE, on_connect::<A>)
}

/// Runs after the CONNECT ack (vantage6's `always_connect=True`: nobody is
/// refused). [`SessionStart`] already queued the connect and routed the
/// client's events and disconnect to the same queue; this serves it.
async fn on_connect<A: Adapter>(
    s: SocketRef<A>,
    State(ctx): State<TasksContext>,
    SessionStart(jobs): SessionStart,
) {
    ctx.metrics().socket_connected(1);
    run_session(s, ctx, jobs).await;
}

/// A socket's session: handles its jobs in order until the disconnect.
async fn run_session<A: Adapter>(s: SocketRef<A>, ctx: TasksContext, mut jobs: JobReceiver) {
    let mut session = Session::Unidentified;
    while let Some(job) = jobs.next().await {
        match job {
            Job::Connect => session = connect(&s, &ctx).await,
            Job::Event(event, data) => handle_event(&s, &ctx, &session, &event, data).await,
            Job::Disconnect => {
                disconnect(&s, &ctx, session).await;
                break;
            }
        }
    }
    ctx.metrics().socket_connected(-1);
}

/// Dispatches one client event to vantage6's `on_<event>` counterpart.
async fn handle_event<A: Adapter>(
    s: &SocketRef<A>,
    ctx: &TasksContext,
    session: &Session,
    event: &str,
    data: Option<Value>,
) {
    const NODE_EVENTS: [&str; 4] = [
        "algorithm_status_change",
        "node_info_update",
        "algorithm_log",
        "node_metrics_update",
    ];
    match event {
        "message" => return info!(sid = %s.id, message = %text_of(data), "received message"),
        "error" => return error!(sid = %s.id, error = %text_of(data), "client reported an error"),
        "ping" => {}
        e if NODE_EVENTS.contains(&e) => {}
        _ => {
            debug!(sid = %s.id, event, "event without handler");
            return ctx.metrics().ignored_event("unknown_event");
        }
    }
    ctx.metrics().event_received(event);
    let Session::Identified { identity, .. } = session else {
        debug!(sid = %s.id, event, "event from an unidentified client ignored");
        return ctx.metrics().ignored_event("unidentified");
    };
    if event == "ping" {
        return on_ping(ctx, identity).await;
    }
    let Some((node, data)) = node_payload(ctx, identity, event, data) else {
        return;
    };
    match event {
        "algorithm_status_change" => on_algorithm_status_change(s, ctx, node, data).await,
        "node_info_update" => on_node_info_update(ctx, node, data).await,
        "algorithm_log" => on_algorithm_log(s, ctx, node, data).await,
        _ => on_node_metrics_update(ctx, node, data),
    }
}

/// `on_connect`: verify the handshake's token, mark the client online,
/// send a node its `sync`, announce it and join its rooms.
async fn connect<A: Adapter>(s: &SocketRef<A>, ctx: &TasksContext) -> Session {
    info!(sid = %s.id, "client connected");
    let Some(identity) = identify(s, ctx).await else {
        return Session::Unidentified;
    };
    if let Err(e) = ctx
        .store()
        .set_status(identity.id(), AuthStatus::Online)
        .await
    {
        ctx.db_failed("set status online", &e);
    }
    info!(sid = %s.id, kind = identity.kind(), name = identity.name(), "client identified");

    let rooms = rooms::rooms_for(&identity);
    if let Identity::Node(node) = &identity {
        emit_to_socket(s, "sync");
        announce_node(s, node, &rooms, "node-online").await;
    }
    for room in &rooms {
        s.join(room.clone());
        if is_announced(room) {
            emit_to_room(s, room, "message", &rooms::join_message(&identity, room)).await;
        }
        // A user may join hundreds of rooms: let the transport drain meanwhile.
        tokio::task::yield_now().await;
    }
    Session::Identified { identity, rooms }
}

/// Verifies the token and looks up its subject; on failure tells the client
/// what vantage6 tells it and counts the reason.
async fn identify<A: Adapter>(s: &SocketRef<A>, ctx: &TasksContext) -> Option<Identity> {
    let auth_id = match ctx
        .inner
        .verifier
        .verify_headers(&s.req_parts().headers)
        .await
    {
        Ok(id) => id,
        Err(e) => {
            warn!(sid = %s.id, reason = %e, "could not identify client");
            ctx.metrics()
                .unidentified(e.client_event().unwrap_or("rejected_token"));
            if let Some(event) = e.client_event() {
                emit_to_socket(s, event);
            }
            return None;
        }
    };
    match ctx.store().identify(auth_id.clone()).await {
        Ok(Ok(identity)) => Some(identity),
        Ok(Err(unknown)) => {
            let reason = match unknown {
                Unknown::NoSuchId => "unknown_subject",
                Unknown::OtherType(_) => "unsupported_subject_type",
            };
            warn!(sid = %s.id, %auth_id, ?unknown, "token subject is not a node or user");
            ctx.metrics().unidentified(reason);
            None
        }
        Err(e) => {
            ctx.db_failed("identify client", &e);
            ctx.metrics().unidentified("database_error");
            None
        }
    }
}

/// `on_disconnect`: leave the rooms with a message, mark offline, and for a
/// node announce `node-offline` and delete its configuration rows. The
/// departing socket leaves each room before the room is told, so it gets
/// none of its own departure events.
async fn disconnect<A: Adapter>(s: &SocketRef<A>, ctx: &TasksContext, session: Session) {
    let Session::Identified { identity, rooms } = session else {
        debug!(sid = %s.id, "client disconnected before identification");
        return;
    };
    for room in &rooms {
        s.leave(room.clone());
        if is_announced(room) {
            emit_to_room(s, room, "message", &rooms::leave_message(&identity, room)).await;
        }
    }
    if let Err(e) = ctx
        .store()
        .set_status(identity.id(), AuthStatus::Offline)
        .await
    {
        ctx.db_failed("set status offline", &e);
    }
    if let Identity::Node(node) = &identity {
        announce_node(s, node, &rooms, "node-offline").await;
        if let Err(e) = ctx.store().delete_node_config(node.id).await {
            ctx.db_failed("delete node configuration", &e);
        }
    }
    info!(sid = %s.id, name = identity.name(), "client disconnected");
}

/// `on_ping`: any identified client; status online and `last_seen` now.
async fn on_ping(ctx: &TasksContext, identity: &Identity) {
    let now = chrono::Utc::now().naive_utc();
    if let Err(e) = ctx.store().record_ping(identity.id(), now).await {
        ctx.db_failed("record ping", &e);
    }
}

/// `on_algorithm_status_change`: re-emitted to the collaboration with the
/// run's `job_id` (the sender receives it too).
async fn on_algorithm_status_change<A: Adapter>(
    s: &SocketRef<A>,
    ctx: &TasksContext,
    node: &NodeIdentity,
    data: Map<String, Value>,
) {
    const EVENT: &str = "algorithm_status_change";
    let Some(collaboration_id) = own_collaboration(ctx, node, &data, EVENT) else {
        return;
    };
    let Some(run_id) = data.get("run_id").and_then(Value::as_i64) else {
        return ignore(ctx, EVENT, "missing_run_id");
    };
    let job_id = match ctx.store().job_id_of_run(run_id).await {
        Ok(Some(job_id)) => job_id,
        Ok(None) => {
            warn!(node = %node.name, run_id, "{EVENT} for an unknown run");
            return ignore(ctx, EVENT, "unknown_run");
        }
        Err(e) => return ctx.db_failed("look up job id", &e),
    };
    let field = |k: &str| data.get(k).cloned().unwrap_or(Value::Null);
    let status = field("status");
    info!(node = %node.name, run_id, ?job_id, %status, "algorithm status change");
    let payload = json!({
        "status": status,
        "run_id": run_id,
        "task_id": field("task_id"),
        "job_id": job_id,
        "collaboration_id": collaboration_id,
        "node_id": field("node_id"),
        "organization_id": field("organization_id"),
        "parent_id": field("parent_id"),
    });
    emit_to_room(
        s,
        &rooms::collaboration_room(collaboration_id),
        EVENT,
        &payload,
    )
    .await;
}

/// `on_node_info_update`: replaces the node's `nodeconfig` rows.
async fn on_node_info_update(ctx: &TasksContext, node: &NodeIdentity, data: Map<String, Value>) {
    let rows = node_config::flatten(&data);
    if let Err(e) = ctx.store().replace_node_config(node.id, &rows).await {
        ctx.db_failed("store node configuration", &e);
    }
}

/// `on_algorithm_log`: appends to `run.log` and re-emits to the collaboration.
async fn on_algorithm_log<A: Adapter>(
    s: &SocketRef<A>,
    ctx: &TasksContext,
    node: &NodeIdentity,
    data: Map<String, Value>,
) {
    const EVENT: &str = "algorithm_log";
    let Some(collaboration_id) = own_collaboration(ctx, node, &data, EVENT) else {
        return;
    };
    let (Some(run_id), Some(line)) = (
        data.get("run_id").and_then(Value::as_i64),
        data.get("log").and_then(Value::as_str),
    ) else {
        return ignore(ctx, EVENT, "missing_run_id_or_log");
    };
    match ctx.store().append_run_log(run_id, line).await {
        Ok(true) => {}
        Ok(false) => {
            warn!(node = %node.name, run_id, "{EVENT} for an unknown run");
            return ignore(ctx, EVENT, "unknown_run");
        }
        Err(e) => return ctx.db_failed("append run log", &e),
    }
    let payload = json!({
        "run_id": run_id,
        "task_id": data.get("task_id").cloned().unwrap_or(Value::Null),
        "log": line,
    });
    emit_to_room(
        s,
        &rooms::collaboration_room(collaboration_id),
        EVENT,
        &payload,
    )
    .await;
}

/// `on_node_metrics_update`: Prometheus gauges labelled by node, `os` and
/// `platform` (taken out of the payload).
fn on_node_metrics_update(ctx: &TasksContext, node: &NodeIdentity, mut data: Map<String, Value>) {
    let mut label = |key: &str| match data.shift_remove(key) {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => "unknown".to_owned(),
    };
    let labels = NodeLabels {
        node_id: node.id.to_string(),
        os: label("os"),
        platform: label("platform"),
    };
    for (name, value) in &data {
        if let Err(e) = ctx.metrics().set_node_metric(&labels, name, value) {
            warn!(node = %node.name, "invalid metric data: {e}");
        }
    }
    debug!(node = %node.name, "updated node metrics");
}

fn text_of(data: Option<Value>) -> String {
    match data {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => "<undecodable>".to_owned(),
    }
}

/// The checks of node-only events: the sender must be a node and the
/// payload an object; otherwise `None` (logged, counted).
fn node_payload<'a>(
    ctx: &TasksContext,
    identity: &'a Identity,
    event: &str,
    data: Option<Value>,
) -> Option<(&'a NodeIdentity, Map<String, Value>)> {
    let Identity::Node(node) = identity else {
        warn!(
            "Only nodes can send {event}! {} {} is not allowed.",
            identity.kind(),
            identity.id()
        );
        ctx.metrics().ignored_event("not_a_node");
        return None;
    };
    match data {
        Some(Value::Object(map)) => Some((node, map)),
        other => {
            warn!(node = %node.name, "{event} payload is not an object: {other:?}");
            ctx.metrics().ignored_event("malformed_payload");
            None
        }
    }
}

/// The payload's `collaboration_id` if it is the node's own collaboration.
/// vantage6 trusts the node here; we do not let a node emit into another
/// collaboration's room.
fn own_collaboration(
    ctx: &TasksContext,
    node: &NodeIdentity,
    data: &Map<String, Value>,
    event: &str,
) -> Option<i64> {
    match data.get("collaboration_id").and_then(Value::as_i64) {
        Some(c) if c == node.collaboration_id => Some(c),
        other => {
            warn!(node = %node.name, claimed = ?other, own = node.collaboration_id,
                "{event} names a collaboration that is not the node's own");
            ignore(ctx, event, "foreign_collaboration");
            None
        }
    }
}

fn ignore(ctx: &TasksContext, event: &str, reason: &str) {
    debug!(event, reason, "event ignored");
    ctx.metrics().ignored_event(reason);
}

/// `node-online` / `node-offline` to each announced room of the node, one
/// emit per room as vantage6 does (a member of two of them gets it twice).
async fn announce_node<A: Adapter>(
    s: &SocketRef<A>,
    node: &NodeIdentity,
    rooms: &[String],
    event: &str,
) {
    let payload = json!({"id": node.id, "name": node.name, "org_id": node.organization_id});
    for room in rooms.iter().filter(|r| is_announced(r)) {
        emit_to_room(s, room, event, &payload).await;
    }
}

/// Serialises as no arguments at all (`["sync"]`), where `()` would send a `null`.
const NO_ARGUMENTS: [(); 0] = [];

/// An event without arguments to this socket only (`sync`, `expired_token`, …).
fn emit_to_socket<A: Adapter>(s: &SocketRef<A>, event: &str) {
    if let Err(e) = s.emit(event, &NO_ARGUMENTS) {
        debug!(sid = %s.id, event, error = %e, "could not emit to socket");
    }
}

/// An event to every socket in `room`, this one included when it is a member.
async fn emit_to_room<A: Adapter, T: serde::Serialize + ?Sized>(
    s: &SocketRef<A>,
    room: &str,
    event: &str,
    data: &T,
) {
    if let Err(e) = s.within(room.to_owned()).emit(event, data).await {
        warn!(room, event, error = %e, "broadcast failed");
    }
}
