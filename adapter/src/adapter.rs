//! The socketioxide adapter: [`CustomAmqpAdapter`] (usually through the [`AmqpAdapter`] alias)
//! and its shared state, [`AmqpAdapterCtr`].
//!
//! ## How a broadcast travels
//!
//! `io.to("room").emit(..)` on instance A calls [`CoreAdapter::broadcast`]: the local sockets
//! of A are served first, without waiting for the broker, then exactly **one** `emit` message is
//! published to the fanout exchange. It is python-socketio's `emit` (so Python servers on the same
//! exchange deliver it to their clients) plus `x_*` fields with the exact socketioxide options
//! (except-rooms, volatile flag, target server) for the other socketioxide instances.
//! Each instance's consumer decodes it ([`crate::wire`]), ignores it if it comes from itself
//! (`host_id`), and applies it to its local sockets.
//!
//! ## Requests between socketioxide instances
//!
//! `fetch_sockets`, `rooms`, and room-wide `join`/`leave`/`disconnect` are `x_request` messages;
//! replies (`x_response`) go straight to the requester's queue through the default exchange.
//! The number of replies to wait for comes from `x_heartbeat` messages (AMQP cannot count the
//! consumers of a fanout exchange): every namespace announces itself when it starts and then every
//! [`AdapterConfig::heartbeat_interval`]. Python servers do not answer these requests.
//!
//! ## Acks
//!
//! `emit_with_ack` publishes an `emit` with python's `callback` field and our `x_req`. Socketioxide
//! peers answer with the number of sockets reached, then one reply per ack, so the ack stream ends
//! as soon as every expected ack is in (or at the timeout). Python servers answer with one
//! python `callback` message per client ack; those acks are yielded while the stream is open
//! (set [`AdapterConfig::wait_for_python_acks`] to keep it open until the timeout).

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    future::Future,
    pin::Pin,
    str::FromStr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, RwLock, Weak,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use base64::Engine as _;
use futures_core::{FusedStream, Stream};
use futures_util::{future::BoxFuture, stream::SelectAll, StreamExt};
use serde_json::Value as Json;
use socketioxide_core::{
    adapter::{
        errors::{AdapterError, BroadcastError, SocketError},
        AckStreamItem, BroadcastFlags, BroadcastOptions, CoreAdapter, CoreLocalAdapter,
        DefinedAdapter, RemoteSocketData, Room, RoomParam, SocketEmitter, Spawnable,
    },
    packet::{Packet, PacketData},
    Sid, Uid, Value,
};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::{
    broker::{AmqpConfig, AmqpDriver, BrokerError, Driver, MessageStream},
    uri::{BrokerUri, UriError},
    wire::{
        self, CallbackRef, DataFormat, Emit, Heartbeat, HeartbeatKind, Message, Reply, Request,
        RequestOp, Response, Targets, WireError, WireValue,
    },
};

/// An adapter error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker failed (not connected, publish refused, ...).
    #[error("broker error: {0}")]
    Broker(#[from] BrokerError),
    /// A message could not be encoded.
    #[error("wire error: {0}")]
    Wire(#[from] WireError),
    /// The broker URI cannot be used.
    #[error("invalid broker URI: {0}")]
    Uri(#[from] UriError),
    /// The packet cannot be sent to other servers.
    #[error("unsupported packet: {0}")]
    Unsupported(&'static str),
}

impl From<Error> for AdapterError {
    fn from(e: Error) -> Self {
        AdapterError(Box::new(e))
    }
}

/// Adapter settings (the broker settings are in [`AmqpConfig`]).
#[derive(Debug, Clone)]
pub struct AdapterConfig {
    /// How long `fetch_sockets` and `rooms` wait for replies from other servers, and the extra
    /// time an ack stream waits on top of the ack timeout (default 5 s).
    pub request_timeout: Duration,
    /// How often each namespace announces itself to the other servers (default 5 s).
    pub heartbeat_interval: Duration,
    /// After how long without a heartbeat a server is considered gone (default 15 s).
    pub heartbeat_timeout: Duration,
    /// Keep ack streams open until the timeout, to collect acks from Python servers, which do not
    /// say how many acks to expect (default false: the stream ends once the socketioxide servers'
    /// acks are in).
    pub wait_for_python_acks: bool,
    /// Capacity of each namespace's inbound message queue (default 1024).
    pub buffer: usize,
    /// The layout of the `data` of `emit` messages, both read from python servers and emitters
    /// and published (default [`DataFormat::Args`], python-socketio 5.15.1+). Use
    /// [`DataFormat::Value`] when the python side runs python-socketio 5.14.0 to 5.15.0 (e.g.
    /// vantage6 4.15, which pins 5.15.0): its servers then hand their clients the one argument of
    /// a broadcast as that argument (several arguments arrive there as one list, as from a
    /// 5.15.0 peer). Socketioxide servers get the exact arguments in either format (`x_nargs`).
    pub python_data_format: DataFormat,
    /// Largest broker message that is decoded (default 16 MiB, RabbitMQ 4's own limit); larger
    /// ones are logged, counted as invalid and dropped without being parsed.
    pub max_message_size: usize,
}

/// Default of [`AdapterConfig::max_message_size`].
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

impl Default for AdapterConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(15),
            wait_for_python_acks: false,
            buffer: 1024,
            python_data_format: DataFormat::Args,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

impl AdapterConfig {
    /// Sets the request timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
    /// Sets the heartbeat interval and timeout.
    pub fn with_heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat_interval = interval;
        self.heartbeat_timeout = timeout.max(interval);
        self
    }
    /// Sets the layout of the `data` of `emit` messages, read and published
    /// ([`python_data_format`](Self::python_data_format)).
    pub fn with_python_data_format(mut self, format: DataFormat) -> Self {
        self.python_data_format = format;
        self
    }
    /// Sets [`max_message_size`](Self::max_message_size).
    pub fn with_max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }
    /// Keeps ack streams open until the timeout (for acks from Python servers).
    pub fn with_wait_for_python_acks(mut self, wait: bool) -> Self {
        self.wait_for_python_acks = wait;
        self
    }
}

/// Counters of the adapter's broker traffic, see [`AmqpAdapterCtr::metrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Messages published (fanout or direct), heartbeats and replies included.
    pub published: u64,
    /// `emit` messages published: one per broadcast or remote-socket emit that leaves this
    /// server (a subset of [`published`](Self::published)).
    pub emits: u64,
    /// Publishes that failed (the caller got an error, or, for background messages such as
    /// heartbeats and replies, it was logged).
    pub publish_errors: u64,
    /// Messages received from the own queue.
    pub received: u64,
    /// Received messages dropped because they are not valid (junk, unknown method, bad payload).
    pub invalid: u64,
    /// Received messages ignored because they are our own, or callbacks for another host.
    pub ignored: u64,
    /// Received messages for a namespace that does not exist here.
    pub unroutable: u64,
    /// Local sockets that a remote broadcast found already closed.
    pub delivery_closed: u64,
    /// Local sockets that missed a remote broadcast because their buffer was full.
    pub delivery_full: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    emits: AtomicU64,
    publish_errors: AtomicU64,
    received: AtomicU64,
    invalid: AtomicU64,
    ignored: AtomicU64,
    unroutable: AtomicU64,
    delivery_closed: AtomicU64,
    delivery_full: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Shared<D> {
    driver: D,
    config: AdapterConfig,
    host_id: String,
    routes: RwLock<HashMap<String, mpsc::Sender<Message>>>,
    /// The peer tables of the namespaces, for [`AmqpAdapterCtr::server_count`].
    peers: RwLock<HashMap<String, Weak<Peers>>>,
    next_req: AtomicU64,
    counters: Counters,
}

impl<D: Driver> Shared<D> {
    async fn send(&self, msg: &Message, queue: Option<&str>) -> Result<(), Error> {
        let body = wire::encode(msg)?;
        let res = match queue {
            Some(q) => self.driver.send_to(q, body).await,
            None => self.driver.publish(body).await,
        };
        match res {
            Ok(()) => {
                inc(&self.counters.published);
                if matches!(msg, Message::Emit(_) | Message::RawEmit(_)) {
                    inc(&self.counters.emits);
                }
                Ok(())
            }
            Err(e) => {
                inc(&self.counters.publish_errors);
                Err(e.into())
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The state shared by every namespace of one `SocketIo`: the broker connection, the host id
/// and the counters. This is what [`SocketIoBuilder::with_adapter`] takes.
///
/// Cloning gives another handle, e.g. to read [`metrics`](Self::metrics) after handing a clone
/// to the builder.
///
/// [`SocketIoBuilder::with_adapter`]: https://docs.rs/socketioxide/latest/socketioxide/struct.SocketIoBuilder.html#method.with_adapter
pub struct AmqpAdapterCtr<D = AmqpDriver> {
    shared: Arc<Shared<D>>,
}

impl<D> Clone for AmqpAdapterCtr<D> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<D> std::fmt::Debug for AmqpAdapterCtr<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpAdapterCtr")
            .field("host_id", &self.shared.host_id)
            .finish_non_exhaustive()
    }
}

impl AmqpAdapterCtr<AmqpDriver> {
    /// Connects to RabbitMQ at `uri` (read with kombu's rules, see [`BrokerUri`]) with the
    /// default settings (exchange `flask-socketio`).
    pub async fn connect(uri: &str) -> Result<Self, Error> {
        let uri = BrokerUri::parse(uri)?;
        Self::connect_with_config(AmqpConfig::new(uri), AdapterConfig::default()).await
    }

    /// Connects to RabbitMQ with the given broker and adapter settings.
    pub async fn connect_with_config(
        amqp: AmqpConfig,
        config: AdapterConfig,
    ) -> Result<Self, Error> {
        let driver = AmqpDriver::connect(amqp).await?;
        Ok(Self::new_with_driver(driver, config))
    }
}

impl<D: Driver> AmqpAdapterCtr<D> {
    /// Builds the state over any [`Driver`], e.g. a [`MemoryDriver`](crate::broker::MemoryDriver)
    /// in tests.
    pub fn new_with_driver(driver: D, config: AdapterConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                driver,
                config,
                host_id: wire::new_host_id(),
                routes: RwLock::new(HashMap::new()),
                peers: RwLock::new(HashMap::new()),
                next_req: AtomicU64::new(1),
                counters: Counters::default(),
            }),
        }
    }

    /// This server's python-socketio host id (32 hex characters).
    pub fn host_id(&self) -> &str {
        &self.shared.host_id
    }

    /// The broker driver.
    pub fn driver(&self) -> &D {
        &self.shared.driver
    }

    /// Closes the broker connection (after the `SocketIo` is closed): the own queue is deleted
    /// and the connection closed, waiting for the broker at most
    /// [`AmqpConfig::publish_timeout`]. Publishing fails from now on.
    pub async fn close(&self) {
        self.shared.driver.close().await;
    }

    /// How many socketioxide servers (this one included) currently serve namespace `ns`, as
    /// known from their heartbeats; `None` when `ns` is not initialised here. This is what the
    /// adapter's `server_count` answers.
    pub fn server_count(&self, ns: &str) -> Option<u16> {
        let peers = self
            .shared
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(ns)
            .and_then(Weak::upgrade)?;
        Some(u16::try_from(peers.live(Instant::now()) + 1).unwrap_or(u16::MAX))
    }

    /// A snapshot of the traffic counters.
    pub fn metrics(&self) -> Metrics {
        let c = &self.shared.counters;
        Metrics {
            published: c.published.load(Ordering::Relaxed),
            emits: c.emits.load(Ordering::Relaxed),
            publish_errors: c.publish_errors.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            invalid: c.invalid.load(Ordering::Relaxed),
            ignored: c.ignored.load(Ordering::Relaxed),
            unroutable: c.unroutable.load(Ordering::Relaxed),
            delivery_closed: c.delivery_closed.load(Ordering::Relaxed),
            delivery_full: c.delivery_full.load(Ordering::Relaxed),
        }
    }
}

/// Reads the own queue and hands each valid message to its namespace.
async fn dispatch<D: Driver>(shared: Weak<Shared<D>>, mut stream: MessageStream) {
    while let Some(body) = stream.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let c = &shared.counters;
        inc(&c.received);
        if body.len() > shared.config.max_message_size {
            inc(&c.invalid);
            tracing::warn!(
                bytes = body.len(),
                limit = shared.config.max_message_size,
                "dropping an oversized broker message"
            );
            continue;
        }
        let msg = match wire::decode(&body) {
            Ok(msg) => msg,
            Err(e) => {
                inc(&c.invalid);
                let head = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                tracing::warn!(error = %e, body = %head, "dropping an invalid broker message");
                continue;
            }
        };
        tracing::trace!(
            method = msg.method(),
            ns = msg.namespace(),
            host = msg.host_id(),
            "broker message"
        );
        let own = msg.host_id() == shared.host_id;
        // A callback's host_id is its destination; every other message's is its sender.
        let for_us = match msg {
            Message::Callback(_) => own,
            _ => !own,
        };
        if !for_us {
            inc(&c.ignored);
            continue;
        }
        let route = shared
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(msg.namespace())
            .cloned();
        match route {
            Some(tx) => {
                if tx.send(msg).await.is_err() {
                    inc(&c.unroutable);
                }
            }
            None => {
                inc(&c.unroutable);
                tracing::debug!(
                    ns = msg.namespace(),
                    method = msg.method(),
                    "no such namespace here"
                );
            }
        }
    }
}

/// The other socketioxide servers of a namespace, as known from their heartbeats.
struct Peers {
    timeout: Duration,
    map: Mutex<HashMap<Sid, (String, Instant)>>,
}

impl Peers {
    fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            map: Mutex::new(HashMap::new()),
        }
    }
    /// Records a heartbeat; returns true for a server not known before.
    fn seen(&self, uid: Uid, queue: &str, now: Instant) -> bool {
        lock(&self.map)
            .insert(*uid, (queue.to_owned(), now))
            .is_none()
    }
    fn forget(&self, uid: Uid) {
        lock(&self.map).remove(&*uid);
    }
    fn queue(&self, uid: Uid) -> Option<String> {
        lock(&self.map).get(&*uid).map(|(q, _)| q.clone())
    }
    /// The number of servers heard from within the timeout (older ones are forgotten).
    fn live(&self, now: Instant) -> usize {
        let mut map = lock(&self.map);
        map.retain(|_, (_, seen)| now.saturating_duration_since(*seen) <= self.timeout);
        map.len()
    }
}

enum Incoming {
    Reply(Reply),
    PyCallback(wire::Callback),
}

type Pending = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Incoming>>>>;

/// Removes a pending request when the waiting side is gone.
struct PendingGuard {
    pending: Pending,
    id: u64,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        lock(&self.pending).remove(&self.id);
    }
}

/// The sockets an incoming emit is for.
// Built once per incoming message and consumed at once: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Target {
    Opts(BroadcastOptions),
    Sids(Vec<Sid>),
}

/// The socketioxide adapter over a [`Driver`]. Use the [`AmqpAdapter`] alias for RabbitMQ.
///
/// One instance exists per namespace; they share an [`AmqpAdapterCtr`].
pub struct CustomAmqpAdapter<E, D = AmqpDriver> {
    shared: Arc<Shared<D>>,
    local: CoreLocalAdapter<E>,
    ns: String,
    uid: Uid,
    peers: Arc<Peers>,
    pending: Pending,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

/// The RabbitMQ adapter: `SocketIo::builder().with_adapter::<AmqpAdapter<_>>(ctr)`.
pub type AmqpAdapter<E> = CustomAmqpAdapter<E, AmqpDriver>;

impl<E, D> DefinedAdapter for CustomAmqpAdapter<E, D> {}

/// The future returned by `io.ns(..)`: it registers the namespace on the broker side.
///
/// Await it (`io.ns("/", handler).await?`); for dynamic namespaces socketioxide spawns it.
pub struct InitRes(BoxFuture<'static, Result<(), Error>>);

impl Future for InitRes {
    type Output = Result<(), Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl Spawnable for InitRes {
    fn spawn(self) {
        tokio::spawn(async move {
            if let Err(e) = self.0.await {
                tracing::error!(error = %e, "cannot initialize the AMQP adapter");
            }
        });
    }
}

impl<E: SocketEmitter, D: Driver> CustomAmqpAdapter<E, D> {
    fn peer_queue(&self, uid: Uid) -> Option<String> {
        self.peers.queue(uid)
    }

    /// The number of other live socketioxide servers with this namespace.
    fn live_peers(&self) -> usize {
        self.peers.live(Instant::now())
    }

    fn target_of(&self, opts: &BroadcastOptions) -> Option<Uid> {
        opts.server_id.filter(|s| *s != self.uid)
    }

    /// Sends a message: directly to the target server's queue when known, else to the exchange.
    async fn send(&self, msg: &Message, target: Option<Uid>) -> Result<(), Error> {
        let queue = target.and_then(|t| self.peer_queue(t));
        self.shared.send(msg, queue.as_deref()).await
    }

    fn register(&self) -> (u64, mpsc::UnboundedReceiver<Incoming>, PendingGuard) {
        let id = self.shared.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.pending).insert(id, tx);
        let guard = PendingGuard {
            pending: self.pending.clone(),
            id,
        };
        (id, rx, guard)
    }

    fn deliver(&self, id: u64, item: Incoming) {
        let tx = lock(&self.pending).get(&id).cloned();
        match tx {
            Some(tx) => {
                let _ = tx.send(item);
            }
            None => tracing::debug!(req_id = id, "reply for an unknown or finished request"),
        }
    }

    /// A local socket with this sid, if any.
    fn local_sid(&self, sid: &str) -> Option<Sid> {
        let sid = Sid::from_str(sid).ok()?;
        let found = !self
            .local
            .fetch_sockets(BroadcastOptions::new(sid))
            .is_empty();
        found.then_some(sid)
    }

    /// Options that target one socket that is not here would create ghost room entries.
    fn targets_missing_socket(&self, opts: &BroadcastOptions) -> bool {
        match opts.sid {
            Some(sid) if opts.rooms.is_empty() && !opts.has_flag(BroadcastFlags::Broadcast) => {
                self.local_sid(&sid.to_string()).is_none()
            }
            _ => false,
        }
    }

    fn request(&self, op: RequestOp, opts: &BroadcastOptions, req_id: u64) -> Request {
        Request {
            host_id: self.shared.host_id.clone(),
            namespace: self.ns.clone(),
            uid: self.uid.to_string(),
            req_id,
            reply_to: self.shared.driver.queue_name().to_owned(),
            target: self.target_of(opts).map(|t| t.to_string()),
            op,
            opts: opts.clone(),
            rooms: Vec::new(),
        }
    }

    async fn reply(&self, queue: &str, req_id: u64, reply: Reply) {
        let msg = Message::Response(Response {
            host_id: self.shared.host_id.clone(),
            namespace: self.ns.clone(),
            uid: self.uid.to_string(),
            req_id,
            reply,
        });
        if let Err(e) = self.shared.send(&msg, Some(queue)).await {
            tracing::warn!(error = %e, req_id, "cannot send a reply");
        }
    }

    async fn heartbeat(&self, kind: HeartbeatKind, queue: Option<&str>) {
        let msg = Message::Heartbeat(Heartbeat {
            host_id: self.shared.host_id.clone(),
            namespace: self.ns.clone(),
            uid: self.uid.to_string(),
            reply_to: self.shared.driver.queue_name().to_owned(),
            kind,
        });
        if let Err(e) = self.shared.send(&msg, queue).await {
            tracing::debug!(error = %e, ?kind, "cannot send a heartbeat");
        }
    }

    /// Builds the `emit` for a broadcast, or `None` when the options reach nobody.
    fn emit_message(
        &self,
        packet: &Packet,
        opts: &BroadcastOptions,
        ack: Option<(u64, Duration)>,
    ) -> Result<Option<Message>, Error> {
        let is_broadcast = opts.has_flag(BroadcastFlags::Broadcast);
        if !is_broadcast && opts.rooms.is_empty() && opts.sid.is_none() {
            return Ok(None);
        }
        let value = match &packet.inner {
            PacketData::Event(v, _) | PacketData::BinaryEvent(v, _) => v,
            _ => return Err(Error::Unsupported("only events can be broadcast")),
        };
        let (fields, x_value) = match value {
            Value::Str(..) => (
                wire::event_fields(value, self.shared.config.python_data_format)?,
                None,
            ),
            Value::Bytes(b) => (
                wire::EventFields {
                    event: String::new(),
                    data: Json::Array(Vec::new()),
                    binary: false,
                    nargs: None,
                },
                Some(base64::engine::general_purpose::STANDARD.encode(b)),
            ),
        };
        let room = if !opts.rooms.is_empty() {
            Targets::from_list(opts.rooms.iter().map(|r| r.to_string()).collect())
        } else if !is_broadcast {
            opts.sid
                .map(|s| Targets::One(s.to_string()))
                .unwrap_or_default()
        } else {
            Targets::None
        };
        let skip_sid = match opts.sid {
            Some(sid) if is_broadcast => Targets::One(sid.to_string()),
            _ => Targets::None,
        };
        let callback = ack.map(|(id, _)| CallbackRef {
            room: room.to_vec().into_iter().next().unwrap_or_default(),
            namespace: self.ns.clone(),
            id: i64::try_from(id).unwrap_or(i64::MAX),
        });
        let emit = Emit {
            event: fields.event,
            data: fields.data,
            binary: fields.binary,
            namespace: self.ns.clone(),
            room,
            skip_sid,
            callback,
            host_id: self.shared.host_id.clone(),
            x_uid: Some(self.uid.to_string()),
            x_opts: Some(opts.clone()),
            x_req: ack.map(|(id, _)| id),
            x_reply_to: ack.map(|_| self.shared.driver.queue_name().to_owned()),
            x_timeout_ms: ack.map(|(_, t)| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            x_value: x_value.clone(),
            x_nargs: fields.nargs,
        };
        Ok(Some(if x_value.is_some() {
            Message::RawEmit(emit)
        } else {
            Message::Emit(emit)
        }))
    }

    /// Which local sockets a python `emit` is for.
    fn python_target(&self, e: &Emit) -> Target {
        let skip: Vec<Sid> = e
            .skip_sid
            .to_vec()
            .iter()
            .filter_map(|s| Sid::from_str(s).ok())
            .collect();
        let rooms = e.room.to_vec();
        let mut opts = BroadcastOptions::default();
        opts.add_flag(BroadcastFlags::Broadcast);
        if rooms.is_empty() {
            if skip.len() <= 1 {
                opts.sid = skip.first().copied();
                return Target::Opts(opts);
            }
            let mut sids = self.local.sockets(opts);
            sids.retain(|s| !skip.contains(s));
            return Target::Sids(sids);
        }
        // In python every sid is a room; socketioxide sockets are not in a room named after
        // their sid unless they joined it, so sids are matched directly too.
        let sid_rooms: Vec<Sid> = rooms.iter().filter_map(|r| self.local_sid(r)).collect();
        opts.rooms = rooms.into_iter().map(Cow::Owned).collect();
        if sid_rooms.is_empty() && skip.len() <= 1 {
            opts.sid = skip.first().copied();
            return Target::Opts(opts);
        }
        let mut sids = self.local.sockets(opts);
        for sid in sid_rooms {
            if !sids.contains(&sid) {
                sids.push(sid);
            }
        }
        sids.retain(|s| !skip.contains(s));
        Target::Sids(sids)
    }

    fn local_broadcast(&self, packet: Packet, target: Target) -> Result<(), Vec<SocketError>> {
        match target {
            Target::Opts(opts) => self.local.broadcast(packet, opts),
            Target::Sids(sids) => {
                let errs: Vec<SocketError> = sids
                    .into_iter()
                    .filter_map(|sid| {
                        self.local
                            .broadcast(packet.clone(), BroadcastOptions::new(sid))
                            .err()
                    })
                    .flatten()
                    .collect();
                if errs.is_empty() {
                    Ok(())
                } else {
                    Err(errs)
                }
            }
        }
    }

    fn local_broadcast_with_ack(
        &self,
        packet: Packet,
        target: Target,
        timeout: Option<Duration>,
    ) -> (LocalAcks<E>, u32) {
        let mut streams = SelectAll::new();
        let mut count = 0;
        let opts = match target {
            Target::Opts(opts) => vec![opts],
            Target::Sids(sids) => sids.into_iter().map(BroadcastOptions::new).collect(),
        };
        for opts in opts {
            let (s, n) = self.local.broadcast_with_ack(packet.clone(), opts, timeout);
            streams.push(Box::pin(s));
            count += n;
        }
        (streams, count)
    }

    async fn handle(self: &Arc<Self>, msg: Message) {
        match msg {
            Message::Emit(e) | Message::RawEmit(e) => self.on_emit(e).await,
            Message::Callback(c) => match u64::try_from(c.id) {
                Ok(id) => self.deliver(id, Incoming::PyCallback(c)),
                Err(_) => tracing::debug!(id = c.id, "callback with a negative id"),
            },
            Message::Disconnect(d) => {
                if let Some(sid) = self.local_sid(&d.sid) {
                    if let Err(e) = self.local.disconnect_socket(BroadcastOptions::new(sid)) {
                        tracing::debug!(?e, %sid, "remote disconnect failed");
                    }
                }
            }
            Message::EnterRoom(r) => {
                if let Some(sid) = self.local_sid(&r.sid) {
                    self.local.add_sockets(BroadcastOptions::new(sid), r.room);
                }
            }
            Message::LeaveRoom(r) => {
                if let Some(sid) = self.local_sid(&r.sid) {
                    self.local.del_sockets(BroadcastOptions::new(sid), r.room);
                }
            }
            Message::CloseRoom(c) => {
                let mut opts = BroadcastOptions::default();
                opts.rooms.push(Cow::Owned(c.room.clone()));
                self.local.del_sockets(opts, c.room);
            }
            Message::Request(r) => self.on_request(r).await,
            Message::Response(r) => self.deliver(r.req_id, Incoming::Reply(r.reply)),
            Message::Heartbeat(h) => self.on_heartbeat(h).await,
        }
    }

    async fn on_emit(self: &Arc<Self>, e: Emit) {
        let from_python = e.x_opts.is_none();
        // A message with `x_nargs` (a socketioxide sender in the `Value` layout) is read exactly
        // whatever `format` says; other socketioxide messages carry the exact argument list.
        let format = if from_python {
            self.shared.config.python_data_format
        } else {
            DataFormat::Args
        };
        let value = match wire::event_value(&e, format, !from_python) {
            Ok(v) => v,
            Err(err) => {
                inc(&self.shared.counters.invalid);
                tracing::warn!(error = %err, event = %e.event, "dropping an emit with a bad payload");
                return;
            }
        };
        let target = match &e.x_opts {
            Some(opts) if opts.server_id.is_some_and(|s| s != self.uid) => return,
            Some(opts) => Target::Opts(opts.clone()),
            None => self.python_target(&e),
        };
        let packet = Packet::event(self.ns.clone(), value);
        if let (Some(req_id), Some(reply_to)) = (e.x_req, e.x_reply_to.clone()) {
            // An ack request from a socketioxide server: count, then one reply per ack.
            let timeout = e.x_timeout_ms.map(Duration::from_millis);
            let (mut acks, count) = self.local_broadcast_with_ack(packet, target, timeout);
            self.reply(&reply_to, req_id, Reply::AckCount { count })
                .await;
            let this = self.clone();
            tokio::spawn(async move {
                while let Some((sid, res)) = acks.next().await {
                    let reply = match res {
                        Ok(v) => Reply::Ack {
                            sid: sid.to_string(),
                            value: Some(WireValue::from_value(&v)),
                            error: None,
                        },
                        Err(err) => Reply::Ack {
                            sid: sid.to_string(),
                            value: None,
                            error: Some(serde_json::to_value(&err).unwrap_or(Json::Null)),
                        },
                    };
                    this.reply(&reply_to, req_id, reply).await;
                }
            });
        } else if let Some(cb) = e.callback.clone() {
            // An ack request from a python server: one python `callback` per client ack.
            let (mut acks, _) = self.local_broadcast_with_ack(packet, target, None);
            let shared = self.shared.clone();
            let origin = e.host_id.clone();
            tokio::spawn(async move {
                while let Some((sid, res)) = acks.next().await {
                    let Ok(value) = res else {
                        tracing::debug!(%sid, "no ack for a python callback");
                        continue;
                    };
                    let msg = Message::Callback(wire::Callback {
                        host_id: origin.clone(),
                        sid: cb.room.clone(),
                        namespace: cb.namespace.clone(),
                        id: cb.id,
                        args: wire::callback_args(&value),
                    });
                    if let Err(e) = shared.send(&msg, None).await {
                        tracing::warn!(error = %e, "cannot send a python callback");
                    }
                }
            });
        } else if let Err(errs) = self.local_broadcast(packet, target) {
            // Counted, not listed: after a mass disconnect every remote emit meets many
            // closed sockets, and a list per emit would grow with their square.
            let closed = errs
                .iter()
                .filter(|e| matches!(e, SocketError::Closed))
                .count() as u64;
            let full = errs.len() as u64 - closed;
            let c = &self.shared.counters;
            c.delivery_closed.fetch_add(closed, Ordering::Relaxed);
            c.delivery_full.fetch_add(full, Ordering::Relaxed);
            tracing::debug!(closed, full, "some local sockets did not get a remote emit");
        }
    }

    async fn on_request(&self, r: Request) {
        if r.target
            .as_deref()
            .is_some_and(|t| t != self.uid.to_string())
        {
            return;
        }
        let opts = r.opts;
        match r.op {
            RequestOp::FetchSockets => {
                let sockets = self.local.fetch_sockets(opts);
                self.reply(&r.reply_to, r.req_id, Reply::Sockets { sockets })
                    .await;
            }
            RequestOp::Rooms => {
                let rooms = self
                    .local
                    .rooms(opts)
                    .into_iter()
                    .map(Cow::into_owned)
                    .collect();
                self.reply(&r.reply_to, r.req_id, Reply::Rooms { rooms })
                    .await;
            }
            RequestOp::AddSockets if !self.targets_missing_socket(&opts) => {
                self.local.add_sockets(opts, r.rooms);
            }
            RequestOp::DelSockets if !self.targets_missing_socket(&opts) => {
                self.local.del_sockets(opts, r.rooms);
            }
            RequestOp::DisconnectSockets => {
                if let Err(e) = self.local.disconnect_socket(opts) {
                    tracing::debug!(?e, "remote disconnect failed for some sockets");
                }
            }
            RequestOp::AddSockets | RequestOp::DelSockets => {}
        }
    }

    async fn on_heartbeat(&self, h: Heartbeat) {
        let Ok(uid) = Uid::from_str(&h.uid) else {
            inc(&self.shared.counters.invalid);
            return;
        };
        if uid == self.uid {
            return;
        }
        match h.kind {
            HeartbeatKind::Bye => {
                self.peers.forget(uid);
            }
            HeartbeatKind::Init | HeartbeatKind::Beat => {
                self.peers.seen(uid, &h.reply_to, Instant::now());
                if h.kind == HeartbeatKind::Init {
                    self.heartbeat(HeartbeatKind::Beat, Some(&h.reply_to)).await;
                }
            }
        }
    }

    /// Waits for up to `expected` replies, at most `request_timeout`.
    async fn collect(
        &self,
        mut rx: mpsc::UnboundedReceiver<Incoming>,
        expected: usize,
        mut f: impl FnMut(Reply),
    ) {
        let wait = async {
            let mut n = 0;
            while n < expected {
                match rx.recv().await {
                    Some(Incoming::Reply(r)) => {
                        n += 1;
                        f(r);
                    }
                    Some(Incoming::PyCallback(_)) => {}
                    None => break,
                }
            }
        };
        if tokio::time::timeout(self.shared.config.request_timeout, wait)
            .await
            .is_err()
        {
            tracing::debug!(expected, "timed out waiting for replies");
        }
    }

    async fn start(self: Arc<Self>) -> Result<(), Error> {
        let (tx, mut rx) = mpsc::channel(self.shared.config.buffer.max(1));
        self.shared
            .routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.ns.clone(), tx);
        self.shared
            .peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.ns.clone(), Arc::downgrade(&self.peers));
        let mut tasks = Vec::new();
        if let Some(stream) = self.shared.driver.subscribe() {
            // Shared by every namespace: it ends with the driver, not with this namespace.
            tokio::spawn(dispatch(Arc::downgrade(&self.shared), stream));
        }
        let weak = Arc::downgrade(&self);
        tasks.push(
            tokio::spawn(async move {
                while let Some(msg) = rx.recv().await {
                    let Some(this) = weak.upgrade() else {
                        return;
                    };
                    let span = tracing::debug_span!(
                        "broker_message",
                        method = msg.method(),
                        ns = msg.namespace(),
                        from = msg.host_id()
                    );
                    this.handle(msg).instrument(span).await;
                }
            })
            .abort_handle(),
        );
        let weak = Arc::downgrade(&self);
        let interval = self.shared.config.heartbeat_interval;
        tasks.push(
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(this) = weak.upgrade() else {
                        return;
                    };
                    this.heartbeat(HeartbeatKind::Beat, None).await;
                }
            })
            .abort_handle(),
        );
        lock(&self.tasks).extend(tasks);
        self.heartbeat(HeartbeatKind::Init, None).await;
        Ok(())
    }
}

impl<E: SocketEmitter, D: Driver> CoreAdapter<E> for CustomAmqpAdapter<E, D> {
    type Error = Error;
    type State = AmqpAdapterCtr<D>;
    type AckStream = AckStream<E>;
    type InitRes = InitRes;

    fn new(state: &Self::State, local: CoreLocalAdapter<E>) -> Self {
        Self {
            shared: state.shared.clone(),
            ns: local.path().to_string(),
            uid: local.server_id(),
            local,
            peers: Arc::new(Peers::new(state.shared.config.heartbeat_timeout)),
            pending: Arc::new(Mutex::new(HashMap::new())),
            tasks: Mutex::new(Vec::new()),
        }
    }

    fn init(self: Arc<Self>, on_success: impl FnOnce() + Send + 'static) -> Self::InitRes {
        InitRes(Box::pin(async move {
            self.start().await?;
            on_success();
            Ok(())
        }))
    }

    async fn close(&self) -> Result<(), Error> {
        // The local cleanup comes first and does not wait: socketioxide polls this future only
        // once when a namespace is deleted.
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        self.shared
            .routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.ns);
        self.shared
            .peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.ns);
        lock(&self.pending).clear();
        self.heartbeat(HeartbeatKind::Bye, None).await;
        Ok(())
    }

    async fn server_count(&self) -> Result<u16, Error> {
        Ok(u16::try_from(self.live_peers() + 1).unwrap_or(u16::MAX))
    }

    async fn broadcast(
        &self,
        packet: Packet,
        opts: BroadcastOptions,
    ) -> Result<(), BroadcastError> {
        if opts.is_local(self.uid) {
            return self
                .local
                .broadcast(packet, opts)
                .map_err(BroadcastError::Socket);
        }
        let msg = self
            .emit_message(&packet, &opts, None)
            .map_err(|e| BroadcastError::Adapter(e.into()))?;
        let target = self.target_of(&opts);
        let local = match target {
            None => self.local.broadcast(packet, opts),
            Some(_) => Ok(()),
        };
        let published = match msg {
            Some(msg) => self.send(&msg, target).await,
            None => Ok(()),
        };
        local.map_err(BroadcastError::Socket)?;
        published.map_err(|e| BroadcastError::Adapter(e.into()))
    }

    async fn broadcast_with_ack(
        &self,
        packet: Packet,
        opts: BroadcastOptions,
        timeout: Option<Duration>,
    ) -> Result<AckStream<E>, Error> {
        if opts.is_local(self.uid) {
            let (local, _) = self.local.broadcast_with_ack(packet, opts, timeout);
            return Ok(AckStream::local(local));
        }
        let ack_timeout = timeout.unwrap_or_else(|| self.local.ack_timeout());
        let target = self.target_of(&opts);
        let expected = if target.is_some() {
            1
        } else {
            self.live_peers()
        };
        let (req_id, rx, guard) = self.register();
        let msg = self.emit_message(&packet, &opts, Some((req_id, ack_timeout)))?;
        let local = match target {
            None => Some(self.local.broadcast_with_ack(packet, opts, timeout).0),
            Some(_) => None,
        }
        .map(one::<E>);
        let Some(msg) = msg else {
            return Ok(AckStream::local_opt(local));
        };
        self.send(&msg, target).await?;
        Ok(AckStream {
            local,
            remote: Some(RemoteAcks {
                rx,
                expected_servers: expected,
                counts: 0,
                acks_expected: 0,
                acks_received: 0,
                wait_python: self.shared.config.wait_for_python_acks,
                deadline: Box::pin(tokio::time::sleep(
                    self.shared.config.request_timeout + ack_timeout,
                )),
                _guard: guard,
            }),
            done: false,
        })
    }

    async fn add_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: impl RoomParam,
    ) -> Result<(), Error> {
        let rooms: Vec<Room> = rooms.into_room_iter().collect();
        if opts.is_local(self.uid) {
            self.local.add_sockets(opts, rooms);
            return Ok(());
        }
        self.room_request(RequestOp::AddSockets, opts, rooms).await
    }

    async fn del_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: impl RoomParam,
    ) -> Result<(), Error> {
        let rooms: Vec<Room> = rooms.into_room_iter().collect();
        if opts.is_local(self.uid) {
            self.local.del_sockets(opts, rooms);
            return Ok(());
        }
        self.room_request(RequestOp::DelSockets, opts, rooms).await
    }

    async fn disconnect_socket(&self, opts: BroadcastOptions) -> Result<(), BroadcastError> {
        if opts.is_local(self.uid) {
            return self
                .local
                .disconnect_socket(opts)
                .map_err(BroadcastError::Socket);
        }
        let target = self.target_of(&opts);
        let req = self.request(RequestOp::DisconnectSockets, &opts, 0);
        let local = match target {
            None => self.local.disconnect_socket(opts),
            Some(_) => Ok(()),
        };
        let sent = self.send(&Message::Request(req), target).await;
        local.map_err(BroadcastError::Socket)?;
        sent.map_err(|e| BroadcastError::Adapter(e.into()))
    }

    async fn rooms(&self, opts: BroadcastOptions) -> Result<Vec<Room>, Error> {
        if opts.is_local(self.uid) {
            return Ok(self.local.rooms(opts).into_iter().collect());
        }
        let target = self.target_of(&opts);
        let expected = if target.is_some() {
            1
        } else {
            self.live_peers()
        };
        let mut rooms: HashSet<Room> = match target {
            None => self.local.rooms(opts.clone()),
            Some(_) => HashSet::new(),
        };
        if expected > 0 {
            let (req_id, rx, _guard) = self.register();
            let req = self.request(RequestOp::Rooms, &opts, req_id);
            self.send(&Message::Request(req), target).await?;
            self.collect(rx, expected, |r| {
                if let Reply::Rooms { rooms: r } = r {
                    rooms.extend(r.into_iter().map(Cow::Owned));
                }
            })
            .await;
        }
        Ok(rooms.into_iter().collect())
    }

    async fn fetch_sockets(&self, opts: BroadcastOptions) -> Result<Vec<RemoteSocketData>, Error> {
        if opts.is_local(self.uid) {
            return Ok(self.local.fetch_sockets(opts));
        }
        let target = self.target_of(&opts);
        let expected = if target.is_some() {
            1
        } else {
            self.live_peers()
        };
        let mut sockets = match target {
            None => self.local.fetch_sockets(opts.clone()),
            Some(_) => Vec::new(),
        };
        if expected > 0 {
            let (req_id, rx, _guard) = self.register();
            let req = self.request(RequestOp::FetchSockets, &opts, req_id);
            self.send(&Message::Request(req), target).await?;
            self.collect(rx, expected, |r| {
                if let Reply::Sockets { sockets: s } = r {
                    sockets.extend(s);
                }
            })
            .await;
        }
        Ok(sockets)
    }

    fn get_local(&self) -> &CoreLocalAdapter<E> {
        &self.local
    }
}

impl<E: SocketEmitter, D: Driver> CustomAmqpAdapter<E, D> {
    async fn room_request(
        &self,
        op: RequestOp,
        opts: BroadcastOptions,
        rooms: Vec<Room>,
    ) -> Result<(), Error> {
        let target = self.target_of(&opts);
        let mut req = self.request(op, &opts, 0);
        req.rooms = rooms.iter().map(|r| r.to_string()).collect();
        if target.is_none() {
            match op {
                RequestOp::AddSockets => self.local.add_sockets(opts, rooms),
                _ => self.local.del_sockets(opts, rooms),
            }
        }
        self.send(&Message::Request(req), target).await
    }
}

struct RemoteAcks {
    rx: mpsc::UnboundedReceiver<Incoming>,
    expected_servers: usize,
    counts: usize,
    acks_expected: u64,
    acks_received: u64,
    wait_python: bool,
    deadline: Pin<Box<tokio::time::Sleep>>,
    _guard: PendingGuard,
}

impl RemoteAcks {
    fn complete(&self) -> bool {
        !self.wait_python
            && self.counts >= self.expected_servers
            && self.acks_received >= self.acks_expected
    }
}

/// The acks of a broadcast: local ones first, then those of the other servers.
///
/// It ends when every expected ack is in, or at the timeout (the ack timeout plus
/// [`AdapterConfig::request_timeout`]).
pub struct AckStream<E: SocketEmitter> {
    local: Option<LocalAcks<E>>,
    remote: Option<RemoteAcks>,
    done: bool,
}

/// The merged ack streams of local sockets.
type LocalAcks<E> = SelectAll<Pin<Box<<E as SocketEmitter>::AckStream>>>;

fn one<E: SocketEmitter>(stream: E::AckStream) -> LocalAcks<E> {
    let mut all = SelectAll::new();
    all.push(Box::pin(stream));
    all
}

impl<E: SocketEmitter> AckStream<E> {
    fn local(stream: E::AckStream) -> Self {
        Self::local_opt(Some(one::<E>(stream)))
    }
    fn local_opt(local: Option<LocalAcks<E>>) -> Self {
        Self {
            local,
            remote: None,
            done: false,
        }
    }
}

fn decode_ack<E: SocketEmitter>(
    sid: &str,
    value: Option<WireValue>,
    error: Option<Json>,
) -> Option<AckStreamItem<E::AckError>> {
    let sid = Sid::from_str(sid).ok()?;
    if let Some(v) = value {
        return match v.into_value() {
            Ok(v) => Some((sid, Ok(v))),
            Err(e) => {
                tracing::warn!(error = %e, "dropping an undecodable remote ack");
                None
            }
        };
    }
    match serde_json::from_value::<E::AckError>(error?) {
        Ok(e) => Some((sid, Err(e))),
        Err(e) => {
            tracing::warn!(error = %e, "dropping an undecodable remote ack error");
            None
        }
    }
}

impl<E: SocketEmitter> Stream for AckStream<E> {
    type Item = AckStreamItem<E::AckError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(remote) = &mut this.remote {
            if remote.deadline.as_mut().poll(cx).is_ready() {
                this.done = true;
                return Poll::Ready(None);
            }
        }
        if let Some(local) = &mut this.local {
            match local.poll_next_unpin(cx) {
                Poll::Ready(Some(item)) => return Poll::Ready(Some(item)),
                Poll::Ready(None) => this.local = None,
                Poll::Pending => {}
            }
        }
        if let Some(remote) = &mut this.remote {
            loop {
                match remote.rx.poll_recv(cx) {
                    Poll::Ready(Some(Incoming::Reply(Reply::AckCount { count }))) => {
                        remote.counts += 1;
                        remote.acks_expected += u64::from(count);
                    }
                    Poll::Ready(Some(Incoming::Reply(Reply::Ack { sid, value, error }))) => {
                        remote.acks_received += 1;
                        if let Some(item) = decode_ack::<E>(&sid, value, error) {
                            return Poll::Ready(Some(item));
                        }
                    }
                    Poll::Ready(Some(Incoming::PyCallback(cb))) => {
                        // Python sids are not socketioxide sids.
                        let sid = Sid::from_str(&cb.sid).unwrap_or(Sid::ZERO);
                        return Poll::Ready(Some((sid, Ok(wire::callback_value(&cb.args)))));
                    }
                    Poll::Ready(Some(Incoming::Reply(_))) => {}
                    Poll::Ready(None) => {
                        remote.wait_python = false;
                        remote.counts = remote.expected_servers;
                        remote.acks_expected = remote.acks_received;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        let remote_done = this.remote.as_ref().is_none_or(RemoteAcks::complete);
        if this.local.is_none() && remote_done {
            this.done = true;
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

impl<E: SocketEmitter> FusedStream for AckStream<E> {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

impl<E: SocketEmitter> std::fmt::Debug for AckStream<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckStream")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_count_live_servers_only() {
        let peers = Peers::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let (a, b) = (Uid::new(), Uid::new());
        assert!(peers.seen(a, "qa", t0));
        assert!(peers.seen(b, "qb", t0));
        assert!(!peers.seen(a, "qa", t0 + Duration::from_secs(8)));
        assert_eq!(peers.live(t0 + Duration::from_secs(9)), 2);
        assert_eq!(peers.queue(b).as_deref(), Some("qb"));
        // b stopped beating: gone after the timeout, a is still there.
        assert_eq!(peers.live(t0 + Duration::from_secs(15)), 1);
        assert_eq!(peers.queue(b), None);
        peers.forget(a);
        assert_eq!(peers.live(t0 + Duration::from_secs(15)), 0);
    }
}
