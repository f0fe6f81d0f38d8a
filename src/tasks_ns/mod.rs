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

use std::{sync::Arc, time::Duration};

use serde_json::{json, Map, Value};
use socketioxide::{
    adapter::Adapter,
    extract::{SocketRef, State},
    operators::BroadcastOperators,
    socket::DisconnectReason,
    BroadcastError, SocketError, SocketIo,
};
use socketioxide_core::adapter::DefinedAdapter;

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

mod queue;
mod v5;

pub use queue::{EventBudget, FLOOD_WINDOW};
use queue::{Job, JobReceiver, SessionStart};

use crate::{
    auth::Verifier,
    config::DEFAULT_FIRST_EVENT_DELAY,
    generation::Vantage6Generation,
    identity::{Identity, NodeIdentity},
    log_limit::LogLimiter,
    metrics::{Metrics, NodeLabels},
    node_config,
    rooms::{self, is_announced},
    store::{AuthStatus, RunOwner, Store, StoreError, Unknown},
};

/// The namespace vantage6 nodes and users connect to.
pub const NAMESPACE: &str = "/tasks";

/// What the `/tasks` handlers share. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TasksContext {
    inner: Arc<ContextInner>,
    first_event_delay: Duration,
    generation: Vantage6Generation,
    event_budget: EventBudget,
    ping_write_interval: Duration,
}

/// Default [`EventBudget`]: `client_event_rate`, `client_event_burst`,
/// `client_flood_disconnect`.
pub const DEFAULT_EVENT_BUDGET: EventBudget = EventBudget {
    rate: 200.0,
    burst: crate::config::DEFAULT_CLIENT_EVENT_BURST as f64,
    disconnect_after: 10_000,
};

/// Default shortest pause between two `ping`s of a client that are written
/// to the database (`ping_write_interval`): none, every `ping` is written,
/// as vantage6 does (a 5.x `ping` of a node marked offline replays the
/// connect sequence, which a skipped one would delay). A flood of pings is
/// bounded by the event budget first; operators who want fewer writes set
/// an interval below the nodes' ping period (vantage6 nodes ping once a
/// minute, the offline sweep looks for a minute and more of silence).
pub const DEFAULT_PING_WRITE_INTERVAL: Duration = Duration::ZERO;

#[derive(Debug)]
struct ContextInner {
    store: Store,
    verifier: Verifier,
    metrics: Metrics,
    log_limit: LogLimiter,
    /// Sessions running now (see [`TasksContext::sessions_ended`]).
    sessions: watch::Sender<usize>,
    /// A graceful stop has begun: new connections get no session.
    closing: std::sync::atomic::AtomicBool,
    /// The clients identified on this instance, by `authenticatable.id`,
    /// with their number of sessions (a node reconnecting may briefly have
    /// two, a user has one per browser tab).
    held: std::sync::Mutex<std::collections::BTreeMap<i64, usize>>,
}

impl TasksContext {
    /// Bundles what the handlers need.
    pub fn new(store: Store, verifier: impl Into<Verifier>, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(ContextInner {
                store,
                verifier: verifier.into(),
                metrics,
                log_limit: LogLimiter::default(),
                sessions: watch::Sender::new(0),
                closing: std::sync::atomic::AtomicBool::new(false),
                held: std::sync::Mutex::default(),
            }),
            first_event_delay: DEFAULT_FIRST_EVENT_DELAY,
            generation: Vantage6Generation::V4,
            event_budget: DEFAULT_EVENT_BUDGET,
            ping_write_interval: DEFAULT_PING_WRITE_INTERVAL,
        }
    }

    /// Sets each client's event budget (see [`EventBudget`]).
    #[must_use]
    pub fn with_event_budget(mut self, budget: EventBudget) -> Self {
        self.event_budget = budget;
        self
    }

    /// Sets the shortest pause between two `ping`s of a client that are
    /// written to the database; the ones in between change nothing.
    #[must_use]
    pub fn with_ping_write_interval(mut self, interval: Duration) -> Self {
        self.ping_write_interval = interval;
        self
    }

    fn event_budget(&self) -> EventBudget {
        self.event_budget
    }

    /// Sets the vantage6 generation whose behaviour the handlers follow
    /// (default 4.x).
    #[must_use]
    pub fn with_generation(mut self, generation: Vantage6Generation) -> Self {
        self.generation = generation;
        self
    }

    fn is_v5(&self) -> bool {
        self.generation == Vantage6Generation::V5
    }

    /// Sets how long a connection's first server-initiated event waits
    /// after the CONNECT acknowledgement (see [`FirstEventHold`]).
    #[must_use]
    pub fn with_first_event_delay(mut self, delay: Duration) -> Self {
        self.first_event_delay = delay;
        self
    }

    /// Resolves once no session is running: every connected socket's
    /// disconnect has been handled (a graceful stop waits on it after
    /// disconnecting everyone).
    pub async fn sessions_ended(&self) {
        let mut sessions = self.inner.sessions.subscribe();
        // Cannot fail: the sender lives in `self`.
        let _ = sessions.wait_for(|&running| running == 0).await;
    }

    /// The first step of a graceful stop: every `/tasks` session of this
    /// instance handles its disconnect now (see [`queue::end_session`]),
    /// and sockets that connect from now on get no session (their
    /// transport is closed with the others). Returns the sessions told.
    pub fn end_sessions<A: Adapter>(&self, io: &SocketIo<A>) -> usize {
        self.inner
            .closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let Some(ns) = io.of(NAMESPACE) else {
            return 0;
        };
        ns.sockets()
            .iter()
            .filter(|s| queue::end_session(s, DisconnectReason::ClosingServer))
            .count()
    }

    /// The ids (`authenticatable.id`) of the nodes and users with a session
    /// on this instance, ascending (what it announces to the other
    /// instances, see [`crate::cluster`]).
    pub fn held_client_ids(&self) -> Vec<i64> {
        self.inner
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }

    fn hold_client(&self, id: i64) -> ClientHold {
        *self
            .inner
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(id)
            .or_default() += 1;
        ClientHold {
            inner: self.inner.clone(),
            id,
        }
    }

    fn is_closing(&self) -> bool {
        self.inner.closing.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Sessions running now: sockets whose disconnect is not handled yet.
    pub fn running_sessions(&self) -> usize {
        *self.inner.sessions.borrow()
    }

    fn store(&self) -> &Store {
        &self.inner.store
    }

    fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// `Some(occurrences)` when a summary line of `kind` is due (see [`LogLimiter`]).
    fn log_due(&self, kind: &'static str, n: u64) -> Option<u64> {
        self.inner.log_limit.hit(kind, n)
    }

    /// `Some(not_logged_before)` when a per-client lifecycle line of `kind`
    /// is to be logged: the first [`LIFECYCLE_LINES`] of each interval are,
    /// so a fleet reconnecting at once writes a few lines, not one per client
    /// (the counts are on `/metrics`).
    fn lifecycle_line(&self, kind: &'static str) -> Option<u64> {
        self.inner.log_limit.burst(kind, LIFECYCLE_LINES)
    }

    /// Counts a failed database operation and logs it, at most once per
    /// operation and interval (an unreachable or saturated database fails
    /// every event's operation).
    fn db_failed(&self, what: &'static str, e: &StoreError) {
        self.metrics().database_error();
        if let Some(n) = self.log_due(what, 1) {
            error!(error = %e, failures = n, "database operation failed: {what}");
        }
    }
}

/// A client's session on this instance, counted in
/// [`TasksContext::held_client_ids`] until it is dropped with the session.
#[derive(Debug)]
struct ClientHold {
    inner: Arc<ContextInner>,
    id: i64,
}

impl Drop for ClientHold {
    fn drop(&mut self) {
        let mut held = self
            .inner
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.id);
            }
        }
    }
}

/// Per-client info lines (connected, identified, disconnected) logged one by
/// one in each 10 s interval, for each kind; the rest are counted into the
/// next line (`not_logged_before=`).
pub const LIFECYCLE_LINES: u32 = 20;

/// What a socket's client is, once the connect has been handled.
#[derive(Debug)]
enum Session {
    /// The token or its subject was not accepted; events are ignored.
    Unidentified,
    /// A known node or user, in these rooms.
    Identified {
        identity: Identity,
        rooms: Vec<String>,
        /// When a `ping` of this client was last written to the database.
        ping_written: Option<tokio::time::Instant>,
        /// Counts it among the clients this instance holds.
        _held: ClientHold,
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
    if ctx.is_closing() {
        debug!(sid = %s.id, "connected during a graceful stop: no session");
        return;
    }
    let _running = RunningSession::start(&ctx);
    run_session(s, ctx.clone(), jobs).await;
}

/// Counts a session while it runs, in `v6_socketio_connected_sockets` and
/// for [`TasksContext::sessions_ended`]; dropped when the session ends.
struct RunningSession<'a>(&'a TasksContext);

impl<'a> RunningSession<'a> {
    fn start(ctx: &'a TasksContext) -> Self {
        ctx.metrics().socket_connected(1);
        ctx.inner.sessions.send_modify(|running| *running += 1);
        Self(ctx)
    }
}

impl Drop for RunningSession<'_> {
    fn drop(&mut self) {
        self.0.metrics().socket_connected(-1);
        self.0
            .inner
            .sessions
            .send_modify(|running| *running = running.saturating_sub(1));
    }
}

/// A socket's session: handles its jobs in order until the disconnect.
///
/// The task waits for its next job most of its life; each job's future
/// (database calls, emits) is boxed, so it takes memory while it runs, not
/// in the task all along (docs/memory.md).
async fn run_session<A: Adapter>(s: SocketRef<A>, ctx: TasksContext, mut jobs: JobReceiver) {
    let mut session = Session::Unidentified;
    loop {
        match jobs.next().await {
            Job::Connect => session = Box::pin(connect(&s, &ctx)).await,
            Job::Event(event, data) => {
                Box::pin(handle_event(&s, &ctx, &mut session, &event, data)).await;
            }
            Job::Disconnect(reason) => {
                Box::pin(disconnect(&s, &ctx, session, reason)).await;
                break;
            }
        }
    }
}

/// Dispatches one client event to vantage6's `on_<event>` counterpart.
async fn handle_event<A: Adapter>(
    s: &SocketRef<A>,
    ctx: &TasksContext,
    session: &mut Session,
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
        "message" => {
            if let Some(skipped) = ctx.lifecycle_line("received_message") {
                info!(sid = %s.id, message = %head_of(data), not_logged_before = skipped,
                    "received message");
            }
            return;
        }
        "error" => {
            if let Some(skipped) = ctx.lifecycle_line("client_error") {
                error!(sid = %s.id, error = %head_of(data), not_logged_before = skipped,
                    "client reported an error");
            }
            return;
        }
        "ping" => {}
        e if NODE_EVENTS.contains(&e) => {}
        "dataframe_deleted" if ctx.is_v5() => {}
        _ => {
            debug!(sid = %s.id, event, "event without handler");
            return ctx.metrics().ignored_event("unknown_event");
        }
    }
    ctx.metrics().event_received(event);
    let Session::Identified {
        identity,
        rooms,
        ping_written,
        ..
    } = session
    else {
        debug!(sid = %s.id, event, "event from an unidentified client ignored");
        return ctx.metrics().ignored_event("unidentified");
    };
    if event == "ping" {
        let now = tokio::time::Instant::now();
        if ping_written.is_some_and(|at| now.duration_since(at) < ctx.ping_write_interval) {
            return ctx.metrics().ignored_event("ping_within_interval");
        }
        *ping_written = Some(now);
        return if ctx.is_v5() {
            v5::on_ping(s, ctx, identity, rooms).await;
        } else {
            on_ping(ctx, identity).await;
        };
    }
    let Some((node, data)) = node_payload(ctx, identity, event, data) else {
        return;
    };
    match event {
        "algorithm_status_change" => on_algorithm_status_change(s, ctx, node, data).await,
        "node_info_update" => on_node_info_update(ctx, node, data).await,
        "algorithm_log" => on_algorithm_log(s, ctx, node, data).await,
        "dataframe_deleted" => v5::on_dataframe_deleted(ctx, node, data).await,
        _ => on_node_metrics_update(ctx, node, data),
    }
}

/// `on_connect`: verify the handshake's token, mark the client online,
/// send a node its `sync`, announce it and join its rooms; in 5.x, then
/// send the node its pending dataframe deletions.
async fn connect<A: Adapter>(s: &SocketRef<A>, ctx: &TasksContext) -> Session {
    if let Some(skipped) = ctx.lifecycle_line("client_connected") {
        info!(sid = %s.id, not_logged_before = skipped, "client connected");
    }
    let hold = FirstEventHold::from_now(ctx.first_event_delay);
    let Some(identity) = identify_until_decided(s, ctx, &hold).await else {
        return Session::Unidentified;
    };
    if let Some(skipped) = ctx.lifecycle_line("client_identified") {
        info!(sid = %s.id, kind = identity.kind(), name = identity.name(),
            not_logged_before = skipped, "client identified");
    }

    let rooms = rooms::rooms_for(&identity);
    // Before the first event and before joining any room, so that neither
    // `sync` nor a room's event reaches the client during the hold.
    hold.wait().await;
    if let Identity::Node(node) = &identity {
        emit_to_socket(s, "sync");
        announce_node(s, ctx, node, &rooms, "node-online").await;
    }
    join_rooms_and_notify(s, ctx, &identity, &rooms).await;
    if let (Identity::Node(node), true) = (&identity, ctx.is_v5()) {
        v5::send_dataframe_deletion_instructions(s, ctx, node).await;
    }
    let client_hold = ctx.hold_client(identity.id());
    Session::Identified {
        identity,
        rooms,
        ping_written: None,
        _held: client_hold,
    }
}

/// Joins each room and tells each announced one (the joiner included).
/// Joining a room the socket is already in changes nothing.
async fn join_rooms_and_notify<A: Adapter>(
    s: &SocketRef<A>,
    ctx: &TasksContext,
    identity: &Identity,
    rooms: &[String],
) {
    for room in rooms {
        s.join(room.clone());
        tell_room(s, ctx, room, || rooms::join_message(identity, room)).await;
        // A user may join hundreds of rooms: let the transport drain meanwhile.
        tokio::task::yield_now().await;
    }
}

/// Pause after the first identification attempt that failed on the database.
const RETRY_DELAY_MIN: Duration = Duration::from_millis(250);
/// Longest pause between two identification attempts.
const RETRY_DELAY_MAX: Duration = Duration::from_secs(2);
/// How long one identification attempt may wait for the database (the
/// pool's own acquire timeout is 10 s): while the database is unreachable
/// sqlx keeps trying to connect within an attempt, and a new attempt starts
/// at most [`RETRY_DELAY_MAX`] after a hung one was given up.
const IDENTIFY_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// What one identification attempt decided.
enum Identification {
    /// A node or user, marked online.
    Identified(Identity),
    /// Not a client we accept; it has been told what vantage6 tells it and
    /// the reason counted.
    Rejected,
    /// The database did not answer (or the driver failed): nothing is
    /// decided yet.
    Undecided(Undecided),
}

/// Why an identification attempt decided nothing.
#[derive(Debug, thiserror::Error)]
enum Undecided {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no answer from the database within {0:?}")]
    TimedOut(Duration),
}

/// Identification that waits out a database outage.
///
/// A client whose identification failed on the database used to be
/// counted unidentified and kept: no `sync`, no rooms, its pings ignored,
/// for good. Now the socket is kept and the attempt repeated, with a pause
/// growing from [`RETRY_DELAY_MIN`] to [`RETRY_DELAY_MAX`], until the
/// database answers; then the client gets the normal connect sequence
/// (`sync`, announcements, rooms), and the events it sent meanwhile, which
/// waited in its queue, are handled after it. Each attempt verifies the
/// token again (it may expire during a long outage); the retries stop when
/// the client disconnects. Counted in
/// `v6_socketio_identification_retries_total`; the sockets waiting right
/// now in `v6_socketio_identifications_waiting`.
///
/// Why not disconnect it instead: vantage6-node 4.15.2 (python-socketio
/// 5.15) does not come back from a server-initiated disconnect. After a
/// namespace DISCONNECT, `Client._handle_disconnect` closes the Engine.IO
/// connection itself, so `_handle_eio_disconnect` starts no reconnection;
/// an Engine.IO CLOSE packet makes `engineio.Client` disconnect as if asked
/// to, with the same result; `NodeTaskNamespace.on_disconnect` only logs.
/// Only a transport dropped without a CLOSE makes it reconnect, after
/// python-socketio's randomised 0.5–1.5 s delay (0.6–1.4 s measured) and
/// then a new identification; socketioxide has no way to drop it so, and it
/// would be slower: retried here, the node is back in its rooms 0.1–0.3 s
/// after the database (`clients/e2e/test_database_outage.py`).
async fn identify_until_decided<A: Adapter>(
    s: &SocketRef<A>,
    ctx: &TasksContext,
    hold: &FirstEventHold,
) -> Option<Identity> {
    let mut delay = RETRY_DELAY_MIN;
    let mut failed_attempts = 0u32;
    let decided = loop {
        let why = match identify(s, ctx, hold).await {
            Identification::Identified(identity) => break Some(identity),
            Identification::Rejected => break None,
            Identification::Undecided(why) => why,
        };
        ctx.metrics().database_error();
        ctx.metrics().identification_retry();
        failed_attempts += 1;
        if failed_attempts == 1 {
            ctx.metrics().identification_waiting(1);
            if let Some(n) = ctx.log_due("identification_waiting", 1) {
                warn!(sid = %s.id, error = %why, clients = n,
                    "database unavailable: identification is retried until it answers");
            }
        } else {
            debug!(sid = %s.id, error = %why, failed_attempts, "identification retried");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_DELAY_MAX);
        if !s.connected() {
            if let Some(n) = ctx.log_due("identification_abandoned", 1) {
                warn!(sid = %s.id, failed_attempts, clients = n,
                    "client left before the database answered its identification");
            }
            ctx.metrics().unidentified("database_error");
            break None;
        }
    };
    if failed_attempts > 0 {
        ctx.metrics().identification_waiting(-1);
        if decided.is_some() {
            if let Some(skipped) = ctx.lifecycle_line("identification_completed") {
                info!(sid = %s.id, failed_attempts, not_logged_before = skipped,
                    "database answered: identification completed");
            }
        }
    }
    decided
}

/// Verifies the token, looks up its subject and marks it online; a
/// rejected client is told what vantage6 tells it and the reason counted.
async fn identify<A: Adapter>(
    s: &SocketRef<A>,
    ctx: &TasksContext,
    hold: &FirstEventHold,
) -> Identification {
    let auth_id = match ctx
        .inner
        .verifier
        .verify_headers(&s.req_parts().headers)
        .await
    {
        Ok(id) => id,
        Err(e) => {
            if let Some(n) = ctx.log_due("rejected_token", 1) {
                warn!(sid = %s.id, reason = %e, clients = n, "could not identify client");
            }
            ctx.metrics()
                .unidentified(e.client_event().unwrap_or("rejected_token"));
            if let Some(event) = e.client_event() {
                hold.wait().await;
                emit_to_socket(s, event);
            }
            return Identification::Rejected;
        }
    };
    let identity = match within_attempt_timeout(ctx.store().identify(auth_id.clone())).await {
        Ok(Ok(identity)) => identity,
        Ok(Err(unknown)) => {
            let reason = match unknown {
                Unknown::NoSuchId => "unknown_subject",
                Unknown::OtherType(_) => "unsupported_subject_type",
                Unknown::MissingRow => "missing_row",
            };
            if let Some(n) = ctx.log_due("unknown_subject", 1) {
                warn!(sid = %s.id, %auth_id, ?unknown, clients = n,
                    "token subject is not a node or user");
            }
            ctx.metrics().unidentified(reason);
            return Identification::Rejected;
        }
        // rows vantage6 never leaves so: no retry will change that
        Err(Undecided::Store(e @ StoreError::Inconsistent(_))) => {
            ctx.db_failed("identify client", &e);
            ctx.metrics().unidentified("inconsistent_database");
            return Identification::Rejected;
        }
        Err(why) => return Identification::Undecided(why),
    };
    // vantage6 marks the client online before anything else; a node told
    // `sync` while its status write was lost would look offline.
    match within_attempt_timeout(ctx.store().set_status(identity.id(), AuthStatus::Online)).await {
        Ok(()) => Identification::Identified(identity),
        Err(why) => Identification::Undecided(why),
    }
}

/// A store call of the identification, bounded by [`IDENTIFY_ATTEMPT_TIMEOUT`].
async fn within_attempt_timeout<T>(
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, Undecided> {
    match tokio::time::timeout(IDENTIFY_ATTEMPT_TIMEOUT, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Undecided::TimedOut(IDENTIFY_ATTEMPT_TIMEOUT)),
    }
}

/// Holds a connection's first server-initiated event until `delay` after
/// the CONNECT acknowledgement. python-socketio's client (5.15 and 5.18, on
/// python-engineio 4) handles every packet in a thread of its own and
/// finishes its `connect()` after the server has answered: an event sent
/// right behind the acknowledgement may be handled before the namespace is
/// registered (`BadNamespaceError` when the handler emits, as vantage6's
/// `on_sync` does) or before `connect()` stored its read loop (its
/// `disconnect()`, called by `on_expired_token`, then fails). The wait
/// overlaps the token check and the database work of the connect.
struct FirstEventHold {
    until: tokio::time::Instant,
}

impl FirstEventHold {
    fn from_now(delay: Duration) -> Self {
        Self {
            until: tokio::time::Instant::now() + delay,
        }
    }

    async fn wait(&self) {
        tokio::time::sleep_until(self.until).await;
    }
}

/// `on_disconnect`: leave the rooms with a message, mark offline, and for a
/// node announce `node-offline` and delete its configuration rows. The
/// departing socket leaves each room before the room is told, so it gets
/// none of its own departure events. The reason is logged (as 5.x does).
async fn disconnect<A: Adapter>(
    s: &SocketRef<A>,
    ctx: &TasksContext,
    session: Session,
    reason: DisconnectReason,
) {
    let Session::Identified {
        identity, rooms, ..
    } = session
    else {
        debug!(sid = %s.id, %reason, "client disconnected before identification");
        return;
    };
    for room in &rooms {
        s.leave(room.clone());
        tell_room(s, ctx, room, || rooms::leave_message(&identity, room)).await;
    }
    if let Err(e) = ctx
        .store()
        .set_status(identity.id(), AuthStatus::Offline)
        .await
    {
        ctx.db_failed("set status offline", &e);
    }
    if let Identity::Node(node) = &identity {
        announce_node(s, ctx, node, &rooms, "node-offline").await;
        if let Err(e) = ctx.store().delete_node_config(node.id).await {
            ctx.db_failed("delete node configuration", &e);
        }
    }
    if let Some(skipped) = ctx.lifecycle_line("client_disconnected") {
        info!(sid = %s.id, name = identity.name(), %reason, not_logged_before = skipped,
            "client disconnected");
    }
}

/// What [`disconnect`] does, done for a client whose instance died without
/// it (see [`crate::cluster`]): if the node or user `auth_id` is still
/// marked online, it is marked offline and its announced rooms are told
/// that it left; for a node, they also get `node-offline` and its
/// configuration rows are deleted. Returns whether it was released
/// (`false`: not online any more, e.g. released by another instance).
pub async fn release_lost_client<A: Adapter>(
    io: &SocketIo<A>,
    ctx: &TasksContext,
    auth_id: i64,
) -> bool {
    match ctx.store().set_offline_if_online(auth_id).await {
        Ok(true) => {}
        Ok(false) => return false,
        Err(e) => {
            ctx.db_failed("set a lost instance's client offline", &e);
            return false;
        }
    }
    let identity = match ctx.store().identify(auth_id).await {
        Ok(Ok(identity)) => identity,
        // Its rows are gone or not a client's: nobody to announce.
        Ok(Err(_)) | Err(StoreError::Inconsistent(_)) => return true,
        Err(e) => {
            ctx.db_failed("read a lost instance's client", &e);
            return true;
        }
    };
    let Some(ns) = io.of(NAMESPACE) else {
        return true;
    };
    let rooms = rooms::rooms_for(&identity);
    for room in rooms.iter().filter(|r| is_announced(r)) {
        let text = rooms::leave_message(&identity, room);
        emit_within(ns.clone().within(room.clone()), ctx, room, "message", &text).await;
    }
    if let Identity::Node(node) = &identity {
        let payload = node_status_payload(node);
        for room in rooms.iter().filter(|r| is_announced(r)) {
            emit_within(
                ns.clone().within(room.clone()),
                ctx,
                room,
                "node-offline",
                &payload,
            )
            .await;
        }
        if let Err(e) = ctx.store().delete_node_config(node.id).await {
            ctx.db_failed("delete node configuration", &e);
        }
    }
    true
}

/// `on_ping` (4.x): any identified client; status online and `last_seen`
/// now. 5.x: [`v5::on_ping`].
async fn on_ping(ctx: &TasksContext, identity: &Identity) {
    let now = chrono::Utc::now().naive_utc();
    if let Err(e) = ctx.store().record_ping(identity.id(), now).await {
        ctx.db_failed("record ping", &e);
    }
}

/// `on_algorithm_status_change`: for a run of the node's own, re-emitted to
/// the collaboration with the run's `job_id` (the sender receives it too).
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
    let Some(RunOwner {
        job_id, task_id, ..
    }) = own_run(ctx, node, run_id, EVENT).await
    else {
        return;
    };
    let field = |k: &str| data.get(k).cloned().unwrap_or(Value::Null);
    let status = field("status");
    info!(node = %node.name, run_id, ?job_id, %status, "algorithm status change");
    // 5.x: the tasks waiting on this one hear of it first, as in HQ.
    if ctx.is_v5() && status.as_str() == Some("completed") {
        v5::notify_dependent_tasks(s, ctx, task_id).await;
    }
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
    emit_to_collaboration(s, ctx, collaboration_id, EVENT, &payload).await;
}

/// `on_node_info_update`: replaces the node's `nodeconfig` rows.
async fn on_node_info_update(ctx: &TasksContext, node: &NodeIdentity, data: Map<String, Value>) {
    let rows = node_config::flatten(&data);
    if let Err(e) = ctx.store().replace_node_config(node.id, &rows).await {
        ctx.db_failed("store node configuration", &e);
    }
}

/// `on_algorithm_log`: for a run of the node's own, appends to `run.log` and
/// re-emits to the collaboration.
// duplicates: deliberate — the node events' handlers open alike (vantage6's arguments, then the
// collaboration check), each spelled out as its `on_*` method in vantage6.
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
    // One statement appends only to a run of the node's own; the look-up
    // runs only when nothing was appended, to say why.
    let appended = ctx
        .store()
        .append_run_log(run_id, node.organization_id, node.collaboration_id, line)
        .await;
    match appended {
        Ok(true) => {}
        Ok(false) => {
            if own_run(ctx, node, run_id, EVENT).await.is_some() {
                // It became the node's own run after the append.
                refused_unknown_run(ctx, node, run_id, EVENT);
            }
            return;
        }
        Err(e) => return ctx.db_failed("append run log", &e),
    }
    let payload = json!({
        "run_id": run_id,
        "task_id": data.get("task_id").cloned().unwrap_or(Value::Null),
        "log": line,
    });
    emit_to_collaboration(s, ctx, collaboration_id, EVENT, &payload).await;
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
            if let Some(n) = ctx.log_due("invalid_metric", 1) {
                warn!(node = %node.name, entries = n, "invalid metric data: {e}");
            }
        }
    }
    debug!(node = %node.name, "updated node metrics");
}

/// Longest part of a client's `message` or `error` text that is logged.
pub const LOGGED_TEXT_CHARS: usize = 200;

/// The first [`LOGGED_TEXT_CHARS`] characters of a client's text, with the
/// length of the whole when it was cut: a client's payload is never logged
/// in full (a 5 MB `message` would be a 5 MB line).
fn head_of(data: Option<Value>) -> String {
    let text = match data {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => return "<undecodable>".to_owned(),
    };
    match text.char_indices().nth(LOGGED_TEXT_CHARS) {
        None => text,
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
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
        if let Some(n) = refuse(ctx, event, "not_a_node") {
            warn!(
                refused = n,
                "Only nodes can send {event}! {} {} is not allowed.",
                identity.kind(),
                identity.id()
            );
        }
        return None;
    };
    match data {
        Some(Value::Object(map)) => Some((node, map)),
        other => {
            if let Some(n) = refuse(ctx, event, "malformed_payload") {
                let head: String = format!("{other:?}").chars().take(200).collect();
                warn!(node = %node.name, refused = n, "{event} payload is not an object: {head}");
            }
            None
        }
    }
}

/// The payload's `collaboration_id` if it is the node's own collaboration.
/// vantage6 trusts the node here; we do not let a node emit into another
/// collaboration's room, nor reroute what names one: such an event is
/// refused even when its run is the node's own.
fn own_collaboration(
    ctx: &TasksContext,
    node: &NodeIdentity,
    data: &Map<String, Value>,
    event: &str,
) -> Option<i64> {
    match data.get("collaboration_id").and_then(Value::as_i64) {
        Some(c) if c == node.collaboration_id => Some(c),
        other => {
            if let Some(n) = refuse(ctx, event, "foreign_collaboration") {
                warn!(node = %node.name, claimed = ?other, own = node.collaboration_id, refused = n,
                    "{event} names a collaboration that is not the node's own");
            }
            None
        }
    }
}

/// The run `run_id` if it is the node's own, as the database says (not the
/// payload): the run is of the node's organisation and its task of the
/// node's collaboration. vantage6 lets any node report on, and append to
/// the log of, any run. Otherwise `None` (logged, counted).
async fn own_run(
    ctx: &TasksContext,
    node: &NodeIdentity,
    run_id: i64,
    event: &str,
) -> Option<RunOwner> {
    let run = match ctx.store().run_owner(run_id).await {
        Ok(Some(run)) => run,
        Ok(None) => {
            refused_unknown_run(ctx, node, run_id, event);
            return None;
        }
        Err(e) => {
            ctx.db_failed("look up run", &e);
            return None;
        }
    };
    if run.organization_id == Some(node.organization_id)
        && run.collaboration_id == Some(node.collaboration_id)
    {
        return Some(run);
    }
    if let Some(n) = refuse(ctx, event, "foreign_run") {
        warn!(node = %node.name, run_id, run_organization = ?run.organization_id,
            run_collaboration = ?run.collaboration_id, organization = node.organization_id,
            collaboration = node.collaboration_id, refused = n,
            "{event} for a run of another organisation or collaboration");
    }
    None
}

fn refused_unknown_run(ctx: &TasksContext, node: &NodeIdentity, run_id: i64, event: &str) {
    if let Some(n) = refuse(ctx, event, "unknown_run") {
        warn!(node = %node.name, run_id, refused = n, "{event} for an unknown run");
    }
}

fn ignore(ctx: &TasksContext, event: &str, reason: &str) {
    debug!(event, reason, "event ignored");
    ctx.metrics().ignored_event(reason);
}

/// [`ignore`], for refusals worth a warning: `Some(refused)` when a line is
/// due (at most one per reason and interval, a client may send thousands).
fn refuse(ctx: &TasksContext, event: &str, reason: &'static str) -> Option<u64> {
    ignore(ctx, event, reason);
    ctx.log_due(reason, 1)
}

/// `node-online` / `node-offline` to each announced room of the node, one
/// emit per room as vantage6 does (a member of two of them gets it twice).
async fn announce_node<A: Adapter>(
    s: &SocketRef<A>,
    ctx: &TasksContext,
    node: &NodeIdentity,
    rooms: &[String],
    event: &str,
) {
    let payload = node_status_payload(node);
    for room in rooms.iter().filter(|r| is_announced(r)) {
        emit_to_room(s, ctx, room, event, &payload).await;
    }
}

/// The argument of `node-online` / `node-offline`.
fn node_status_payload(node: &NodeIdentity) -> Value {
    json!({"id": node.id, "name": node.name, "org_id": node.organization_id})
}

/// A `message` (`text`: a join or leave message) to `room` if vantage6
/// announces arrivals and departures there.
async fn tell_room<A: Adapter>(
    s: &SocketRef<A>,
    ctx: &TasksContext,
    room: &str,
    text: impl FnOnce() -> String,
) {
    if is_announced(room) {
        emit_to_room(s, ctx, room, "message", &text()).await;
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
    ctx: &TasksContext,
    room: &str,
    event: &str,
    data: &T,
) {
    emit_within(s.within(room.to_owned()), ctx, room, event, data).await;
}

/// An event to the sockets `to` addresses (the members of `room`, on every
/// instance); a failure is counted and summarised by [`broadcast_failed`].
async fn emit_within<A: Adapter, T: serde::Serialize + ?Sized>(
    to: BroadcastOperators<A>,
    ctx: &TasksContext,
    room: &str,
    event: &str,
    data: &T,
) {
    if let Err(e) = to.emit(event, data).await {
        broadcast_failed(ctx, room, event, &e);
    }
}

/// An event to the room of collaboration `collaboration_id`.
async fn emit_to_collaboration<A: Adapter, T: serde::Serialize + ?Sized>(
    s: &SocketRef<A>,
    ctx: &TasksContext,
    collaboration_id: i64,
    event: &str,
    data: &T,
) {
    emit_to_room(
        s,
        ctx,
        &rooms::collaboration_room(collaboration_id),
        event,
        data,
    )
    .await;
}

/// Whether the adapter failed because the broker did not take the message.
fn is_broker_error(e: &socketioxide::AdapterError) -> bool {
    e.0.downcast_ref::<socketioxide_amqp::Error>()
        .is_some_and(|e| matches!(e, socketioxide_amqp::Error::Broker(_)))
}

/// Counts the sockets a broadcast missed and logs a rate-limited summary:
/// when many clients leave at once every departure's broadcasts meet the
/// others' closed sockets, so one line per broadcast (or per socket) would
/// grow with the square of the clients.
fn broadcast_failed(ctx: &TasksContext, room: &str, event: &str, e: &BroadcastError) {
    let errors = match e {
        BroadcastError::Socket(errors) => errors,
        BroadcastError::Adapter(a) if is_broker_error(a) => {
            // Counted per event and summarised once per outage by the adapter
            // (`v6_socketio_broker_publish_lost_total`): no line per event here.
            return;
        }
        other => {
            if let Some(n) = ctx.log_due("broadcast_failed", 1) {
                warn!(room, event, error = %other, failures = n, "broadcast failed");
            }
            return;
        }
    };
    let closed = errors
        .iter()
        .filter(|e| matches!(e, SocketError::Closed))
        .count() as u64;
    let full = errors.len() as u64 - closed;
    ctx.metrics().broadcast_missed(closed, full);
    if let Some(n) = ctx.log_due("broadcast_closed", closed) {
        debug!(
            room,
            event,
            sockets = n,
            "broadcasts met sockets that were already closed"
        );
    }
    // duplicates: deliberate — two summaries at two levels (tracing's level is fixed per macro).
    if let Some(n) = ctx.log_due("broadcast_full", full) {
        warn!(
            room,
            event,
            sockets = n,
            "broadcasts skipped sockets whose buffer was full (max_buffer_size)"
        );
    }
}
