//! [`AmqpAdapterCtr`]: the state shared by every namespace of one `SocketIo` (the broker
//! driver, the host id, the routes of the dispatcher, the counters).

use std::{
    collections::HashMap,
    sync::{atomic::AtomicU64, Arc, Mutex, MutexGuard, RwLock, Weak},
    time::Instant,
};

use serde_json::Value;
use socketioxide_core::Uid;
use tokio::sync::{broadcast, mpsc, Notify};

use crate::{
    broker::Driver,
    config::AdapterConfig,
    dispatch::dispatch,
    error::Error,
    lost::{Lost, BINARY_EVENTS},
    metrics::{inc, AdapterMetrics, Counters},
    peers::{PeerEvent, Peers},
    wire::{self, Message},
};
#[cfg(feature = "amqp")]
use crate::{
    broker::{AmqpConfig, AmqpDriver},
    uri::BrokerUris,
};

pub(crate) struct Shared<D> {
    pub(crate) driver: D,
    pub(crate) config: AdapterConfig,
    pub(crate) host_id: String,
    pub(crate) routes: RwLock<HashMap<String, mpsc::Sender<Message>>>,
    /// The peer tables of the namespaces, for [`AmqpAdapterCtr::server_count`].
    pub(crate) peers: RwLock<HashMap<String, Weak<Peers>>>,
    pub(crate) next_req: AtomicU64,
    pub(crate) counters: Counters,
    /// What could not be published, see [`crate::lost`].
    pub(crate) lost: Lost,
    /// What this server announces in each namespace's heartbeats.
    pub(crate) local_states: RwLock<HashMap<String, Arc<LocalState>>>,
    /// See [`AmqpAdapterCtr::peer_events`].
    pub(crate) peer_events: broadcast::Sender<PeerEvent>,
}

/// The state a namespace announces in its heartbeats, and a wake-up for its heartbeat task when
/// it changes (the peers learn it at once, not at the next periodic beat).
#[derive(Default)]
pub(crate) struct LocalState {
    pub(crate) value: Mutex<Option<Value>>,
    pub(crate) changed: Notify,
}

/// Room for this many [`PeerEvent`]s not yet read; a receiver that lags further loses the
/// oldest (and is told so by `broadcast`).
const PEER_EVENTS_BUFFER: usize = 64;

impl<D: Driver> Shared<D> {
    pub(crate) async fn send(&self, msg: &Message, queue: Option<&str>) -> Result<(), Error> {
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
                if let Some(s) = self.lost.worked(Instant::now()) {
                    tracing::warn!(
                        lost_events = s.lost_events(),
                        per_event = %s.per_event(),
                        lost_other = s.other,
                        failed_for = ?s.lasted,
                        "publishing to the broker works again; lost while it failed"
                    );
                }
                Ok(())
            }
            Err(e) => {
                inc(&self.counters.publish_errors);
                let event = match msg {
                    Message::Emit(emit) => Some(emit.event.as_str()),
                    Message::RawEmit(_) => Some(BINARY_EVENTS),
                    _ => None,
                };
                if self.lost.failed(event, Instant::now()) {
                    tracing::warn!(
                        error = %e,
                        "publishing to the broker fails: other servers miss these events; \
                         counting them until it works again (one summary line then)"
                    );
                }
                Err(Error::broker(e))
            }
        }
    }
}

impl<D> Shared<D> {
    /// The announced state of namespace `ns`, created empty on first use.
    pub(crate) fn local_state(&self, ns: &str) -> Arc<LocalState> {
        if let Some(state) = self
            .local_states
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(ns)
        {
            return state.clone();
        }
        self.local_states
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(ns.to_owned())
            .or_default()
            .clone()
    }

    fn namespace_peers(&self, ns: &str) -> Option<Arc<Peers>> {
        self.peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(ns)
            .and_then(Weak::upgrade)
    }

    /// The queues of the peers of every namespace, as their heartbeats gave them.
    fn peer_queues(&self) -> Vec<String> {
        let tables: Vec<_> = self
            .peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        let mut queues: Vec<String> = tables
            .iter()
            .flat_map(|p| {
                lock(&p.map)
                    .values()
                    .map(|peer| peer.queue.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        queues.sort_unstable();
        queues.dedup();
        queues
    }
}

impl<D: Driver> Shared<D> {
    /// Starts the dispatcher of this `SocketIo`, once: the driver hands its stream out only
    /// once, so later calls (the other namespaces' start-ups) do nothing. The task is shared by
    /// every namespace and ends with the driver, not with a namespace.
    ///
    /// Started by the first namespace's start-up rather than by
    /// [`AmqpAdapterCtr::new_with_driver`], which is synchronous and may run outside a runtime.
    pub(crate) fn start_dispatcher(self: &Arc<Self>) {
        if let Some(stream) = self.driver.subscribe() {
            tokio::spawn(dispatch(Arc::downgrade(self), stream));
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The state shared by every namespace of one `SocketIo`: the broker connection, the host id
/// and the counters. This is what [`SocketIoBuilder::with_adapter`] takes.
///
/// Cloning gives another handle, e.g. to read [`metrics`](Self::metrics) after handing a clone
/// to the builder.
///
/// [`SocketIoBuilder::with_adapter`]: https://docs.rs/socketioxide/latest/socketioxide/struct.SocketIoBuilder.html#method.with_adapter
pub struct AmqpAdapterCtr<D> {
    pub(crate) shared: Arc<Shared<D>>,
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

#[cfg(feature = "amqp")]
impl AmqpAdapterCtr<AmqpDriver> {
    /// Connects to RabbitMQ at `uri` (read with kombu's rules, `;`-separated fail-over list
    /// included, see [`BrokerUris`]) with the
    /// default settings (exchange `flask-socketio`).
    pub async fn connect(uri: &str) -> Result<Self, Error> {
        let uris = BrokerUris::parse(uri)?;
        Self::connect_with_config(AmqpConfig::new(uris), AdapterConfig::default()).await
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
        let shared = Arc::new(Shared {
            driver,
            config,
            host_id: wire::new_host_id(),
            routes: RwLock::new(HashMap::new()),
            peers: RwLock::new(HashMap::new()),
            next_req: AtomicU64::new(1),
            counters: Counters::default(),
            lost: Lost::default(),
            local_states: RwLock::new(HashMap::new()),
            peer_events: broadcast::channel(PEER_EVENTS_BUFFER).0,
        });
        let weak = Arc::downgrade(&shared);
        shared.driver.set_peer_queues(Arc::new(move || {
            weak.upgrade().map(|s| s.peer_queues()).unwrap_or_default()
        }));
        Self { shared }
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
        let peers = self.shared.namespace_peers(ns)?;
        Some(u16::try_from(peers.live(Instant::now()) + 1).unwrap_or(u16::MAX))
    }

    /// Sets what this server announces to its peers in namespace `ns`: it travels in every
    /// heartbeat of the namespace (`x_heartbeat`'s `state`), and a change is sent at once. The
    /// peers read it with [`peer_states`](Self::peer_states), and get the last one of a server
    /// that died in [`PeerEvent::Lost`]. Keep it small: it goes to every peer at every beat.
    ///
    /// ```
    /// # use socketioxide_amqp::{AdapterConfig, AmqpAdapterCtr, broker::MemoryBroker};
    /// let ctr = AmqpAdapterCtr::new_with_driver(MemoryBroker::new().driver(), AdapterConfig::default());
    /// ctr.set_local_state("/tasks", serde_json::json!({"clients": [3, 5]}));
    /// ```
    pub fn set_local_state(&self, ns: &str, state: Value) {
        let local = self.shared.local_state(ns);
        let mut value = lock(&local.value);
        if value.as_ref() != Some(&state) {
            *value = Some(state);
            local.changed.notify_one();
        }
    }

    /// The live peers of namespace `ns` (other servers heard from within the heartbeat
    /// timeout) and the state each announced last; empty when `ns` is not initialised here.
    pub fn peer_states(&self, ns: &str) -> Vec<(Uid, Option<Value>)> {
        self.shared
            .namespace_peers(ns)
            .map(|p| p.states(Instant::now()))
            .unwrap_or_default()
    }

    /// The peers lost from now on, in every namespace (see [`PeerEvent`]).
    pub fn peer_events(&self) -> broadcast::Receiver<PeerEvent> {
        self.shared.peer_events.subscribe()
    }

    /// A snapshot of the traffic counters.
    pub fn metrics(&self) -> AdapterMetrics {
        self.shared.counters.snapshot()
    }

    /// The `emit`s that could not be published since start-up, per event name (see
    /// [`crate::lost`]): the other servers' clients missed them.
    pub fn lost_events(&self) -> Vec<(String, u64)> {
        self.shared.lost.events()
    }

    /// The other messages (heartbeats, requests, replies) that could not be published since
    /// start-up.
    pub fn lost_other(&self) -> u64 {
        self.shared.lost.other()
    }
}
