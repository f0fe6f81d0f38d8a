//! The socketioxide adapter: [`CustomAmqpAdapter`] (usually through the [`AmqpAdapter`] alias),
//! its start-up and its `CoreAdapter` implementation. How a broadcast travels is described in the
//! crate documentation.
//!
//! The other parts of the adapter are in their own modules: `publish` builds what it publishes,
//! `incoming` applies what others publish, `python` translates python-socketio's addressing,
//! `requests` routes replies, `stream` merges acks.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures_util::future::BoxFuture;
use socketioxide_core::{
    adapter::{
        errors::BroadcastError, BroadcastOptions, CoreAdapter, CoreLocalAdapter, DefinedAdapter,
        RemoteSocketData, Room, RoomParam, SocketEmitter, Spawnable,
    },
    packet::Packet,
    Uid,
};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::{
    broker::Driver,
    ctr::{lock, AmqpAdapterCtr, LocalState, Shared},
    error::Error,
    metrics::inc,
    peers::{PeerEvent, Peers},
    requests::Pending,
    stream::{one, AckStream, RemoteAcks},
    wire::{HeartbeatKind, Message, Reply, RequestOp},
};

/// The socketioxide adapter over a [`Driver`]. Use the [`AmqpAdapter`] alias for RabbitMQ.
///
/// One instance exists per namespace; they share an [`AmqpAdapterCtr`].
pub struct CustomAmqpAdapter<E, D> {
    pub(crate) shared: Arc<Shared<D>>,
    pub(crate) local: CoreLocalAdapter<E>,
    pub(crate) ns: String,
    pub(crate) uid: Uid,
    pub(crate) peers: Arc<Peers>,
    /// What this namespace announces in its heartbeats.
    pub(crate) announced: Arc<LocalState>,
    pub(crate) pending: Pending,
    pub(crate) tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

/// The RabbitMQ adapter: `SocketIo::builder().with_adapter::<AmqpAdapter<_>>(ctr)`.
#[cfg(feature = "amqp")]
pub type AmqpAdapter<E> = CustomAmqpAdapter<E, crate::broker::AmqpDriver>;

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
    pub(crate) fn peer_queue(&self, uid: Uid) -> Option<String> {
        self.peers.queue(uid)
    }

    /// The number of other live socketioxide servers with this namespace.
    pub(crate) fn live_peers(&self) -> usize {
        self.peers.live(Instant::now())
    }

    pub(crate) fn target_server(&self, opts: &BroadcastOptions) -> Option<Uid> {
        opts.server_id.filter(|s| *s != self.uid)
    }

    /// How many servers answer a request to `target`: that one, or every live peer.
    fn expected_replies(&self, target: Option<Uid>) -> usize {
        if target.is_some() {
            1
        } else {
            self.live_peers()
        }
    }

    /// Sends request `op` to `target`, or to every other server, and hands each reply to
    /// `on_reply` until all have answered or `request_timeout` passed. Sends nothing when no
    /// server would answer.
    async fn ask_others(
        &self,
        op: RequestOp,
        opts: &BroadcastOptions,
        target: Option<Uid>,
        on_reply: impl FnMut(Reply),
    ) -> Result<(), Error> {
        let expected = self.expected_replies(target);
        if expected > 0 {
            let (req_id, rx, _guard) = self.register();
            let req = self.request(op, opts, Some(req_id));
            self.send(&Message::Request(req), target).await?;
            self.collect(rx, expected, on_reply).await;
        }
        Ok(())
    }

    /// Sends a message: directly to the target server's queue when known, else to the exchange.
    pub(crate) async fn send(&self, msg: &Message, target: Option<Uid>) -> Result<(), Error> {
        let queue = target.and_then(|t| self.peer_queue(t));
        self.shared.send(msg, queue.as_deref()).await
    }

    pub(crate) async fn start(self: Arc<Self>) -> Result<(), Error> {
        let (tx, mut rx) = mpsc::channel(self.shared.config.buffer.max(1));
        self.shared
            .routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(self.ns.clone(), tx);
        self.shared
            .peers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(self.ns.clone(), Arc::downgrade(&self.peers));
        let mut tasks = Vec::new();
        self.shared.start_dispatcher();
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
        let announced = self.announced.clone();
        tasks.push(
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    let periodic = tokio::select! {
                        _ = tick.tick() => true,
                        () = announced.changed.notified() => false,
                    };
                    let Some(this) = weak.upgrade() else {
                        return;
                    };
                    this.heartbeat(HeartbeatKind::Beat, None).await;
                    if periodic {
                        this.expire_peers().await;
                    }
                }
            })
            .abort_handle(),
        );
        lock(&self.tasks).extend(tasks);
        // The first heartbeat is the start-up's only publish: if the broker does not take it,
        // the namespace is not registered and the caller of `io.ns(..)` gets the error.
        if let Err(e) = self.send_heartbeat(HeartbeatKind::Init, None).await {
            self.unregister();
            return Err(e);
        }
        Ok(())
    }

    /// Forgets the peers whose heartbeats stopped. When this server's own broker connection was
    /// up for the whole heartbeat timeout (so the silence is theirs), each is counted, its queue
    /// deleted (it would collect every message of the exchange until the broker expires it) and a
    /// [`PeerEvent::Lost`] sent, so that the application can act for it; otherwise (an outage of
    /// our own) they are forgotten quietly and come back with their next heartbeat.
    async fn expire_peers(&self) {
        let now = Instant::now();
        let lost = self.peers.expire(now);
        if lost.is_empty() {
            return;
        }
        let timeout = self.shared.config.heartbeat_timeout;
        let own_connection_up = self
            .shared
            .driver
            .connected_for()
            .is_some_and(|up| up >= timeout);
        if !own_connection_up {
            tracing::info!(
                ns = %self.ns,
                peers = lost.len(),
                "peers silent while our own broker connection was down or new: forgotten, not \
                 declared lost"
            );
            return;
        }
        let acting = self.peers.is_acting(self.uid, now);
        for peer in lost {
            let deleted = match self.shared.driver.delete_queue(&peer.queue).await {
                Ok(true) => {
                    inc(&self.shared.counters.peer_queues_deleted);
                    true
                }
                Ok(false) => {
                    // Something consumes from its queue: the server is alive (e.g. back after
                    // an outage of its own) and is heard again with its next heartbeat.
                    tracing::info!(
                        ns = %self.ns,
                        peer = %peer.uid,
                        queue = %peer.queue,
                        "peer server silent, but its queue has a consumer: not declared lost"
                    );
                    continue;
                }
                Err(e) => {
                    tracing::warn!(queue = %peer.queue, error = %e, "cannot delete a lost peer's queue");
                    false
                }
            };
            inc(&self.shared.counters.peers_lost);
            tracing::warn!(
                ns = %self.ns,
                peer = %peer.uid,
                queue = %peer.queue,
                silent_for = ?now.saturating_duration_since(peer.seen),
                queue_deleted = deleted,
                acting,
                "peer server lost: no heartbeat within {timeout:?}"
            );
            // No receiver (nobody subscribed) is not an error.
            let _ = self.shared.peer_events.send(PeerEvent::Lost {
                namespace: self.ns.clone(),
                uid: peer.uid,
                state: peer.state,
                acting,
            });
        }
    }

    /// Stops the namespace's tasks and removes it from the dispatcher's routes.
    fn unregister(&self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        self.shared
            .routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.ns);
        self.shared
            .peers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.ns);
        lock(&self.pending).clear();
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
            announced: state.shared.local_state(local.path()),
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
        self.unregister();
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
        let target = self.target_server(&opts);
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
        let target = self.target_server(&opts);
        let expected = self.expected_replies(target);
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

    // duplicates: deliberate — the trait's two room methods, alike but for their request.
    async fn add_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: impl RoomParam,
    ) -> Result<(), Error> {
        self.room_request(
            RequestOp::AddSockets,
            opts,
            rooms.into_room_iter().collect(),
        )
        .await
    }

    async fn del_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: impl RoomParam,
    ) -> Result<(), Error> {
        self.room_request(
            RequestOp::DelSockets,
            opts,
            rooms.into_room_iter().collect(),
        )
        .await
    }

    async fn disconnect_socket(&self, opts: BroadcastOptions) -> Result<(), BroadcastError> {
        if opts.is_local(self.uid) {
            return self
                .local
                .disconnect_socket(opts)
                .map_err(BroadcastError::Socket);
        }
        let target = self.target_server(&opts);
        let req = self.request(RequestOp::DisconnectSockets, &opts, None);
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
        let target = self.target_server(&opts);
        let mut rooms: HashSet<Room> = match target {
            None => self.local.rooms(opts.clone()),
            Some(_) => HashSet::new(),
        };
        self.ask_others(RequestOp::Rooms, &opts, target, |r| {
            if let Reply::Rooms { rooms: r } = r {
                rooms.extend(r.into_iter().map(Cow::Owned));
            }
        })
        .await?;
        Ok(rooms.into_iter().collect())
    }

    async fn fetch_sockets(&self, opts: BroadcastOptions) -> Result<Vec<RemoteSocketData>, Error> {
        if opts.is_local(self.uid) {
            return Ok(self.local.fetch_sockets(opts));
        }
        let target = self.target_server(&opts);
        let mut sockets = match target {
            None => self.local.fetch_sockets(opts.clone()),
            Some(_) => Vec::new(),
        };
        self.ask_others(RequestOp::FetchSockets, &opts, target, |r| {
            if let Reply::Sockets { sockets: s } = r {
                sockets.extend(s);
            }
        })
        .await?;
        Ok(sockets)
    }

    fn get_local(&self) -> &CoreLocalAdapter<E> {
        &self.local
    }
}

impl<E: SocketEmitter, D: Driver> CustomAmqpAdapter<E, D> {
    /// `add_sockets` / `del_sockets`: here only when the options are local; else requested from
    /// the target server, or from every server and applied here too.
    async fn room_request(
        &self,
        op: RequestOp,
        opts: BroadcastOptions,
        rooms: Vec<Room>,
    ) -> Result<(), Error> {
        if opts.is_local(self.uid) {
            self.local_room_change(op, opts, rooms);
            return Ok(());
        }
        let target = self.target_server(&opts);
        let mut req = self.request(op, &opts, None);
        req.rooms = rooms.iter().map(std::string::ToString::to_string).collect();
        if target.is_none() {
            self.local_room_change(op, opts, rooms);
        }
        self.send(&Message::Request(req), target).await
    }

    /// `add_sockets` (for [`RequestOp::AddSockets`]) or `del_sockets` on this server's sockets.
    fn local_room_change(&self, op: RequestOp, opts: BroadcastOptions, rooms: Vec<Room>) {
        match op {
            RequestOp::AddSockets => self.local.add_sockets(opts, rooms),
            _ => self.local.del_sockets(opts, rooms),
        }
    }
}
