//! The RabbitMQ driver (lapin).
//!
//! ## Topology
//!
//! * Exchange: the configured name (default `flask-socketio`), `fanout`, durable=false,
//!   auto_delete=false, internal=false, no arguments: exactly what python-socketio's
//!   `KombuManager` and `AsyncAioPikaManager` declare. Any other flag makes RabbitMQ refuse the
//!   declaration (406 PRECONDITION_FAILED) when a Python server declared it first, or the reverse.
//! * Own queue: `socketioxide-amqp.<uuid4>` (or a configured name), **durable=true**,
//!   exclusive=false, auto_delete=false, `x-expires` = 5 minutes by default (like Python's queues),
//!   bound to the exchange with routing key `""`.
//!
//!   Why this combination:
//!   * not exclusive: an exclusive queue dies with its connection, so everything published during
//!     a client-side network blip would be lost. A named queue survives the blip; the reconnect
//!     loop redeclares it under the same name and the buffered messages are delivered;
//!   * durable: RabbitMQ 4.3 refuses non-durable, non-exclusive queues by default (deprecated
//!     feature `transient_nonexcl_queues`, error 541 `INTERNAL_ERROR`), and 4.x will remove them.
//!     Durable also keeps the queue and its messages (published persistent, `delivery_mode=2`)
//!     across a broker restart, so a restart loses no more than a blip does;
//!   * not auto-delete: an auto-delete queue is deleted when its last consumer goes, which a
//!     reconnect is, so it would lose what a blip buffered;
//!   * `x-expires`: a queue nobody consumes is deleted by the broker after the expiry, so a
//!     crashed instance's queue disappears by itself (a graceful stop deletes it at once).
//!
//!   A queue name given in the configuration must not have been declared with other flags
//!   (RabbitMQ answers 406 `PRECONDITION_FAILED`), e.g. by an older version of this crate.
//! * Direct messages (replies to one instance) go through the default exchange (`""`) with the
//!   destination queue name as routing key, so they reach that instance only.
//!
//! Messages are published with `content_type=text/plain`, `content_encoding=utf-8` and
//! `delivery_mode=2`, like kombu does; received bodies are parsed as JSON whatever their
//! properties. Deliveries are acknowledged once handed to the adapter (prefetch 256 by default),
//! several at a time: while more deliveries are already waiting, the consumer takes them first and
//! then acknowledges them all with one `basic.ack` (`multiple`), at the latest every
//! 32 deliveries (`ACK_BATCH`). Each acknowledgement is a round trip through lapin's I/O thread;
//! one per delivery made the thread switches cost more than the deliveries themselves when
//! many small messages arrive. Nothing waits longer for its acknowledgement than the handling
//! of the deliveries that arrived with it.
//!
//! ## Reconnection
//!
//! lapin 4 can recover a connection itself (`ConnectionProperties::enable_auto_recover`, which
//! replays the declared topology). We do not use it: its TCP retries are bounded (16 attempts by
//! default) after which the connection is dead for good, which does not fit a long broker outage.
//! Instead a supervisor task owns the connection; when the consumer stream ends or a publish fails
//! on a dead connection it reconnects and redeclares the exchange, the queue, the binding and the
//! consumer.
//!
//! * **Several URIs** ([`BrokerUris`](crate::BrokerUris), kombu's `;` list): at start-up they
//!   are tried in order and the first that answers is used (start-up fails only when none
//!   does); after a loss, the attempts go round-robin from the URI after the lost one, as
//!   kombu's default `round-robin` fail-over strategy does, so instances leave a dead node
//!   at once.
//! * **Backoff**: the first round over the URIs starts at once; after each round that found no
//!   broker the loop sleeps, 100 ms first, doubling up to [`AmqpConfig::reconnect_max`] (2 s by
//!   default), without limit in time. So the queue is consumed again at most `reconnect_max`
//!   (plus the connection's set-up, a few ms on a LAN) after the broker accepts connections.
//!   A round in which every URI refused the TCP connection (nothing listens: a broker that is
//!   restarting) costs a SYN and a reset per URI, so after such a round the pause is at most
//!   250 ms: the usual restart is noticed within a quarter of a second of the port opening.
//!   Attempt failures are logged once when the outage starts, then at most every 30 s; the
//!   reconnect line says how long it lasted and how many attempts it took.
//! * **Peers' queues**: the exchange is not durable (python-socketio's declaration), so a broker
//!   restart drops every binding to it, while the instances' durable queues survive. The first
//!   instance back would publish into an exchange bound to its own queue only, and the others
//!   would silently miss what it publishes until they are back too. After redeclaring its own
//!   topology, a consuming driver therefore binds the queues of the peers the adapter knew when
//!   the connection was lost or knows now
//!   (from their heartbeats, see [`Driver::set_peer_queues`]) before it publishes again: what it
//!   publishes waits in their queues until they consume again. A peer queue that no longer
//!   exists is skipped.
//!
//! While disconnected, publishing fails at once with [`AmqpError::NotConnected`]; local delivery
//! in the adapter is not affected (the adapter counts the lost events). A publish that times out
//! ([`AmqpConfig::publish_timeout`]) also makes the supervisor drop the connection and reconnect:
//! a connection that died without a TCP reset would otherwise look alive until the AMQP
//! heartbeats notice.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, RwLock, Weak,
    },
    time::{Duration, Instant},
};

use futures_util::{FutureExt as _, StreamExt};
use lapin::{
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
};
use tokio::sync::{mpsc, watch, Notify};

mod config;

pub use config::{AmqpConfig, DEFAULT_RECONNECT_MAX};

use crate::BrokerUri;

/// An error of the [`AmqpDriver`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpError {
    /// There is currently no connection to the broker (it is down or we are reconnecting).
    #[error("not connected to the broker")]
    NotConnected,
    /// The broker refused the message (publisher confirm `nack`).
    #[error("the broker rejected the message")]
    Nacked,
    /// The broker did not confirm the publish in time (see [`AmqpConfig::publish_timeout`]).
    #[error("the broker did not confirm the publish in time")]
    Timeout,
    /// Opening a connection took longer than [`AmqpConfig::connect_timeout`].
    #[error("the broker connection could not be opened in time")]
    ConnectTimeout,
    /// The driver was closed.
    #[error("the broker driver is closed")]
    Closed,
    /// An AMQP error from lapin.
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
}

use super::{Driver, MessageStream, PeerQueues};

/// The longest pause between two reconnect rounds whose every attempt was refused (nothing
/// listening: cheap to retry).
const REFUSED_PAUSE: Duration = Duration::from_millis(250);

/// At most one "still reconnecting" line per this interval during an outage.
const RECONNECT_LOG_INTERVAL: Duration = Duration::from_secs(30);

const NO_GEN: u64 = u64::MAX;

/// A RabbitMQ connection with python-socketio's topology, kept alive by a reconnect loop.
///
/// Cloning gives another handle to the same connection.
#[derive(Clone)]
pub struct AmqpDriver {
    inner: Arc<Inner>,
}

struct Inner {
    config: AmqpConfig,
    queue: String,
    /// The current connection and its publishing channel (`None` while reconnecting).
    live: RwLock<Option<Live>>,
    broken: Arc<Notify>,
    /// Incremented by the supervisor for each new connection.
    session_gen: AtomicU64,
    /// The generation of a connection on which a publish timed out ([`NO_GEN`] for none).
    stale_gen: AtomicU64,
    closed: AtomicBool,
    shutdown: watch::Sender<bool>,
    rx: Mutex<Option<MessageStream>>,
    supervisor: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The index in [`AmqpConfig::uris`] of the current (or last) connection.
    current: AtomicUsize,
    /// The adapter's peers' queues, bound to the exchange after a reconnect.
    peer_queues: RwLock<Option<PeerQueues>>,
    /// When the current connection was opened (`None` while reconnecting).
    connected_at: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for AmqpDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpDriver")
            .field("exchange", &self.inner.config.exchange)
            .field("queue", &self.inner.queue)
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// What publishers use of the current session: its channel, and its connection for requests
/// that need a channel of their own.
#[derive(Clone)]
struct Live {
    channel: Channel,
    conn: Arc<Connection>,
}

struct Session {
    conn: Arc<Connection>,
    channel: Channel,
    consumer: Option<Consumer>,
}

enum End {
    Stop,
    Lost,
}

impl AmqpDriver {
    /// Connects, declares the exchange and the own queue, and starts consuming.
    ///
    /// The first connection must succeed (so that a wrong URI or credentials are reported);
    /// later losses are handled by the reconnect loop. Must be called within a tokio runtime.
    pub async fn connect(config: AmqpConfig) -> Result<Self, AmqpError> {
        Self::start(config, true).await
    }

    /// Connects and declares the exchange, without a queue: the driver can only publish.
    /// Used by the [`AmqpEmitter`](crate::AmqpEmitter).
    pub async fn connect_publisher(config: AmqpConfig) -> Result<Self, AmqpError> {
        Self::start(config, false).await
    }

    async fn start(config: AmqpConfig, consume: bool) -> Result<Self, AmqpError> {
        let queue = config
            .queue_name
            .clone()
            .unwrap_or_else(|| format!("socketioxide-amqp.{}", uuid::Uuid::new_v4()));
        let (session, current) = open_first(&config, &queue, consume).await?;
        let (tx, rx) = mpsc::channel(config.buffer.max(1));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            config,
            queue,
            live: RwLock::new(Some(session.live())),
            broken: Arc::new(Notify::new()),
            session_gen: AtomicU64::new(0),
            stale_gen: AtomicU64::new(NO_GEN),
            closed: AtomicBool::new(false),
            shutdown,
            rx: Mutex::new(consume.then(|| MessageStream::new(rx))),
            supervisor: tokio::sync::Mutex::new(None),
            current: AtomicUsize::new(current),
            peer_queues: RwLock::new(None),
            connected_at: Mutex::new(Some(Instant::now())),
        });
        tracing::info!(
            exchange = %inner.config.exchange,
            queue = %inner.queue,
            uri = %inner.config.uris[current],
            "connected to the AMQP broker"
        );
        let supervisor = tokio::spawn(supervise(
            Arc::downgrade(&inner),
            inner.queue.clone(),
            inner.broken.clone(),
            shutdown_rx,
            tx,
            session,
        ));
        *inner.supervisor.lock().await = Some(supervisor);
        Ok(Self { inner })
    }

    /// Whether a broker connection is currently up.
    pub fn is_connected(&self) -> bool {
        read(&self.inner.live)
            .as_ref()
            .is_some_and(|l| l.channel.status().connected())
    }

    /// The URI of the current connection (of the last one while disconnected), password hidden.
    pub fn current_uri(&self) -> &BrokerUri {
        let i = self.inner.current.load(Ordering::Relaxed);
        &self.inner.config.uris[i.min(self.inner.config.uris.len() - 1)]
    }

    /// The exchange name.
    pub fn exchange(&self) -> &str {
        &self.inner.config.exchange
    }

    async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
    ) -> Result<(), AmqpError> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(AmqpError::Closed);
        }
        let gen = self.inner.session_gen.load(Ordering::Acquire);
        let Some(channel) = read(&self.inner.live).as_ref().map(|l| l.channel.clone()) else {
            return Err(AmqpError::NotConnected);
        };
        let props = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_content_encoding("utf-8".into())
            .with_delivery_mode(2);
        let publish = async {
            channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    body,
                    props,
                )
                .await?
                .await
        };
        let res = tokio::time::timeout(self.inner.config.publish_timeout, publish).await;
        match res {
            Ok(Ok(Confirmation::Nack(_))) => Err(AmqpError::Nacked),
            Ok(Ok(_)) => Ok(()),
            Err(_) => {
                // No answer in time: the connection may be silently dead (its heartbeats would
                // notice only much later). The supervisor drops it and reconnects.
                self.inner.stale_gen.store(gen, Ordering::Release);
                self.inner.broken.notify_one();
                Err(AmqpError::Timeout)
            }
            Ok(Err(e)) => {
                // Let the supervisor check the connection and reconnect if it is dead.
                self.inner.broken.notify_one();
                Err(e.into())
            }
        }
    }
}

impl Driver for AmqpDriver {
    type Error = AmqpError;

    async fn publish(&self, body: Vec<u8>) -> Result<(), AmqpError> {
        self.publish_raw(&self.inner.config.exchange, "", &body)
            .await
    }

    async fn send_to(&self, queue: &str, body: Vec<u8>) -> Result<(), AmqpError> {
        self.publish_raw("", queue, &body).await
    }

    fn queue_name(&self) -> &str {
        &self.inner.queue
    }

    fn set_peer_queues(&self, source: PeerQueues) {
        *write(&self.inner.peer_queues) = Some(source);
    }

    fn connected_for(&self) -> Option<Duration> {
        if !self.is_connected() {
            return None;
        }
        lock(&self.inner.connected_at).map(|at| at.elapsed())
    }

    /// `queue.delete` with `if-unused`, on a channel of its own: a queue with a consumer (its
    /// server is back) is kept, and RabbitMQ answers that by closing the channel, which must
    /// not be the publishing one. A queue that does not exist counts as deleted. Bounded by
    /// [`AmqpConfig::publish_timeout`].
    async fn delete_queue(&self, queue: &str) -> Result<bool, AmqpError> {
        let Some(conn) = read(&self.inner.live).as_ref().map(|l| l.conn.clone()) else {
            return Err(AmqpError::NotConnected);
        };
        let delete = async {
            let channel = conn.create_channel().await?;
            let options = QueueDeleteOptions {
                if_unused: true,
                ..QueueDeleteOptions::default()
            };
            match channel.queue_delete(queue.into(), options).await {
                Ok(_) => {
                    let _ = channel.close(200, "deleted".into()).await;
                    Ok(true)
                }
                Err(e) if precondition_failed(&e) => Ok(false),
                Err(e) => Err(e.into()),
            }
        };
        match tokio::time::timeout(self.inner.config.publish_timeout, delete).await {
            Ok(result) => result,
            Err(_) => Err(AmqpError::Timeout),
        }
    }

    fn subscribe(&self) -> Option<MessageStream> {
        self.inner
            .rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Stops the reconnect loop, deletes the own queue (a consuming driver) and closes the
    /// connection, waiting for the broker's answer at most [`AmqpConfig::publish_timeout`].
    async fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        self.inner.shutdown.send_replace(true);
        write(&self.inner.live).take();
        let supervisor = self.inner.supervisor.lock().await.take();
        if let Some(handle) = supervisor {
            if tokio::time::timeout(self.inner.config.publish_timeout, handle)
                .await
                .is_err()
            {
                tracing::debug!("the AMQP connection did not close in time");
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The first of the URIs that answers, in order, and its index; the last error when none does.
async fn open_first(
    config: &AmqpConfig,
    queue: &str,
    consume: bool,
) -> Result<(Session, usize), AmqpError> {
    let mut last = None;
    for (i, uri) in config.uris.iter().enumerate() {
        match open_session(config, uri, queue, consume).await {
            Ok(s) => return Ok((s, i)),
            Err(e) => {
                if config.uris.len() > 1 {
                    tracing::warn!(uri = %uri, error = %e, "cannot connect to this AMQP broker");
                }
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or(AmqpError::NotConnected))
}

/// [`try_open_session`], at most the URI's `connect_timeout` option, else
/// [`AmqpConfig::connect_timeout`].
async fn open_session(
    config: &AmqpConfig,
    uri: &BrokerUri,
    queue: &str,
    consume: bool,
) -> Result<Session, AmqpError> {
    let bound = uri.connect_timeout().unwrap_or(config.connect_timeout);
    tokio::time::timeout(bound, try_open_session(config, uri, queue, consume))
        .await
        .map_err(|_| AmqpError::ConnectTimeout)?
}

async fn try_open_session(
    config: &AmqpConfig,
    uri: &BrokerUri,
    queue: &str,
    consume: bool,
) -> Result<Session, AmqpError> {
    let props = ConnectionProperties::default().with_connection_name(
        format!(
            "socketioxide-amqp {}",
            if consume { queue } else { "publisher" }
        )
        .into(),
    );
    let conn = Connection::connect_uri_with_config(
        uri.amqp().clone(),
        props,
        uri.tls_config().clone(),
        lapin::runtime::default_runtime()?,
    )
    .await?;
    let channel = conn.create_channel().await?;
    if config.publisher_confirms {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
    }
    channel
        .exchange_declare(
            config.exchange.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                passive: false,
                durable: false,
                auto_delete: false,
                internal: false,
                nowait: false,
            },
            FieldTable::default(),
        )
        .await?;
    let consumer = if consume {
        let mut args = FieldTable::default();
        if let Some(expires) = config.queue_expires {
            let ms = i32::try_from(expires.as_millis())
                .unwrap_or(i32::MAX)
                .max(1);
            args.insert("x-expires".into(), AMQPValue::LongInt(ms));
        }
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: false,
                    durable: true,
                    exclusive: false,
                    auto_delete: false,
                    nowait: false,
                },
                args,
            )
            .await?;
        channel
            .queue_bind(
                queue.into(),
                config.exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await?;
        Some(
            channel
                .basic_consume(
                    queue.into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?,
        )
    } else {
        None
    };
    Ok(Session {
        conn: Arc::new(conn),
        channel,
        consumer,
    })
}

impl Session {
    fn live(&self) -> Live {
        Live {
            channel: self.channel.clone(),
            conn: self.conn.clone(),
        }
    }
}

/// Whether the broker refused a request with 406 PRECONDITION_FAILED (closing the channel).
fn precondition_failed(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(
                amqp.kind(),
                lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::PRECONDITIONFAILED)
            )
    )
}

/// Owns the connection: forwards deliveries, and reconnects when the connection is lost.
async fn supervise(
    inner: Weak<Inner>,
    queue: String,
    broken: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
    tx: mpsc::Sender<Vec<u8>>,
    mut session: Session,
) {
    let mut gen = 0;
    loop {
        let stale = || {
            inner
                .upgrade()
                .is_some_and(|i| i.stale_gen.load(Ordering::Acquire) == gen)
        };
        let end = run_session(&broken, &stale, &mut shutdown, &tx, &mut session).await;
        // Talking to a broker that is going away may never get an answer: bounded.
        let bound = inner
            .upgrade()
            .map_or(Duration::from_secs(5), |i| i.config.publish_timeout);
        if matches!(end, End::Stop) && session.consumer.is_some() {
            // A graceful close: nobody will read this queue again (a crash leaves it to
            // `x-expires`).
            let delete = session
                .channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default());
            let _ = tokio::time::timeout(bound, delete).await;
        }
        let _ = tokio::time::timeout(bound, session.conn.close(200, "bye".into())).await;
        if matches!(end, End::Stop) {
            return;
        }
        let Some(config) = inner.upgrade().map(|i| i.config.clone()) else {
            return;
        };
        if let Some(i) = inner.upgrade() {
            write(&i.live).take();
            *lock(&i.connected_at) = None;
        }
        let lost_at = Instant::now();
        // The peers known now, while their heartbeats are fresh: a long outage may make the
        // adapter forget them before we are back.
        let known_at_loss = inner.upgrade().map(|i| peer_queues(&i)).unwrap_or_default();
        let n = config.uris.len();
        let lost = inner
            .upgrade()
            .map_or(0, |i| i.current.load(Ordering::Relaxed))
            % n;
        tracing::warn!(
            exchange = %config.exchange,
            uri = %config.uris[lost],
            "lost the AMQP connection; reconnecting"
        );
        let consume = session.consumer.is_some();
        let mut delay = config.reconnect_min;
        let mut next = (lost + 1) % n;
        let mut attempts: u64 = 0;
        let mut last_line: Option<Instant> = None;
        session = 'reconnect: loop {
            let mut all_refused = true;
            for _ in 0..n {
                if inner.strong_count() == 0 || *shutdown.borrow() {
                    return;
                }
                let uri = &config.uris[next];
                attempts += 1;
                match open_session(&config, uri, &queue, consume).await {
                    Ok(s) => break 'reconnect s,
                    Err(e) => {
                        all_refused &= is_refused(&e);
                        if last_line.is_none_or(|t| t.elapsed() >= RECONNECT_LOG_INTERVAL) {
                            last_line = Some(Instant::now());
                            tracing::warn!(
                                uri = %uri,
                                error = %e,
                                attempts,
                                down_for = ?lost_at.elapsed(),
                                "AMQP reconnect failed; retrying (next line in 30 s at most)"
                            );
                        }
                    }
                }
                next = (next + 1) % n;
            }
            // Nothing listens at any URI (a broker restarting): retrying costs a SYN and a
            // reset, so the pause stays short and the queue is consumed again soon after the
            // broker opens its port. Other failures back off up to `reconnect_max`.
            let pause = if all_refused {
                delay.min(REFUSED_PAUSE)
            } else {
                delay
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => return,
            }
            delay = (delay * 2).min(config.reconnect_max);
        };
        let Some(i) = inner.upgrade() else {
            return;
        };
        if consume {
            let mut peers = peer_queues(&i);
            peers.extend(known_at_loss);
            peers.sort_unstable();
            peers.dedup();
            peers.retain(|q| *q != queue);
            if !peers.is_empty() {
                let wanted = peers.len();
                let rebind = rebind_peers(&session.conn, &config.exchange, peers);
                if let Ok(bound) = tokio::time::timeout(config.publish_timeout, rebind).await {
                    tracing::info!(
                        bound,
                        wanted,
                        "bound the known peers' queues to the exchange again"
                    );
                } else {
                    tracing::warn!(wanted, "binding the peers' queues took too long");
                }
            }
        }
        gen += 1;
        i.session_gen.store(gen, Ordering::Release);
        i.current.store(next, Ordering::Relaxed);
        *write(&i.live) = Some(session.live());
        *lock(&i.connected_at) = Some(Instant::now());
        tracing::info!(
            exchange = %config.exchange,
            queue = %i.queue,
            uri = %config.uris[next],
            down_for = ?lost_at.elapsed(),
            attempts,
            "reconnected to the AMQP broker"
        );
    }
}

/// Whether an attempt failed because nothing accepted the TCP connection.
fn is_refused(e: &AmqpError) -> bool {
    match e {
        AmqpError::Amqp(e) => match e.kind() {
            lapin::ErrorKind::IOError(io) => io.kind() == std::io::ErrorKind::ConnectionRefused,
            _ => false,
        },
        _ => false,
    }
}

/// The adapter's peers' queues, as [`Driver::set_peer_queues`] gave the source.
fn peer_queues(inner: &Inner) -> Vec<String> {
    let source = read(&inner.peer_queues).clone();
    source.map(|f| f()).unwrap_or_default()
}

/// Binds each queue to `exchange` on a channel of its own; a queue that does not exist (a peer
/// that stopped, or one on another broker) closes that channel and is skipped. Returns how many
/// were bound.
async fn rebind_peers(conn: &Connection, exchange: &str, queues: Vec<String>) -> usize {
    let mut bound = 0;
    let mut channel: Option<Channel> = None;
    for queue in queues {
        if !channel.as_ref().is_some_and(|c| c.status().connected()) {
            channel = conn.create_channel().await.ok();
        }
        let Some(ch) = &channel else {
            break;
        };
        let res = ch
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await;
        match res {
            Ok(()) => bound += 1,
            Err(e) => {
                tracing::debug!(queue = %queue, error = %e, "cannot bind a peer's queue");
                channel = None;
            }
        }
    }
    if let Some(ch) = channel {
        let _ = ch.close(200, "bound".into()).await;
    }
    bound
}

/// Most deliveries handled before they are acknowledged (together, with `multiple`); well
/// below the prefetch, so that the broker keeps sending meanwhile.
const ACK_BATCH: u32 = 32;

/// The deliveries handed to the adapter and not acknowledged yet: the last one's acker, which
/// acknowledges it and every earlier one of the channel.
#[derive(Default)]
struct Unacked {
    last: Option<lapin::Acker>,
    count: u32,
}

impl Unacked {
    fn add(&mut self, acker: lapin::Acker) {
        self.last = Some(acker);
        self.count += 1;
    }

    async fn ack(&mut self) {
        self.count = 0;
        if let Some(acker) = self.last.take() {
            let multiple = BasicAckOptions { multiple: true };
            if let Err(e) = acker.ack(multiple).await {
                tracing::debug!(error = %e, "cannot ack deliveries");
            }
        }
    }
}

/// What to do with what the consumer stream gave.
enum Next {
    Handled,
    End(End),
}

/// Hands one delivery to the adapter.
async fn forward(
    delivery: Option<lapin::Result<lapin::message::Delivery>>,
    tx: &mpsc::Sender<Vec<u8>>,
    unacked: &mut Unacked,
) -> Next {
    match delivery {
        Some(Ok(delivery)) => {
            if tx.send(delivery.data).await.is_err() {
                // Nobody reads anymore.
                return Next::End(End::Stop);
            }
            unacked.add(delivery.acker);
            if unacked.count >= ACK_BATCH {
                unacked.ack().await;
            }
            Next::Handled
        }
        Some(Err(e)) => {
            tracing::warn!(error = %e, "AMQP consumer error");
            Next::End(End::Lost)
        }
        None => Next::End(End::Lost),
    }
}

async fn run_session(
    broken: &Notify,
    stale: &(dyn Fn() -> bool + Sync),
    shutdown: &mut watch::Receiver<bool>,
    tx: &mpsc::Sender<Vec<u8>>,
    session: &mut Session,
) -> End {
    let mut unacked = Unacked::default();
    loop {
        if *shutdown.borrow() {
            return End::Stop;
        }
        // Deliveries that are already here first, acknowledged together afterwards.
        if let Some(ready) = session
            .consumer
            .as_mut()
            .and_then(|c| c.next().now_or_never())
        {
            match forward(ready, tx, &mut unacked).await {
                Next::Handled => continue,
                Next::End(end) => return end,
            }
        }
        unacked.ack().await;
        let next = async {
            match session.consumer.as_mut() {
                Some(c) => c.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            delivery = next => {
                if let Next::End(end) = forward(delivery, tx, &mut unacked).await {
                    return end;
                }
            }
            () = broken.notified() => {
                if !session.conn.status().connected() || !session.channel.status().connected() {
                    return End::Lost;
                }
                if stale() {
                    tracing::warn!("a publish got no answer in time: dropping the connection");
                    return End::Lost;
                }
            }
            res = shutdown.changed() => {
                if res.is_err() || *shutdown.borrow() {
                    return End::Stop;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing listens: the attempt fails at once and is recognised as refused (the short
    /// pause); a silent peer's timeout is not.
    #[tokio::test]
    async fn a_closed_port_is_refused() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let config = AmqpConfig::new(
            format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
                .parse()
                .unwrap(),
        );
        let res = open_session(&config, config.uris.first(), "q", true).await;
        let err = res.err().expect("nothing listens");
        assert!(is_refused(&err), "{err:?}");
        assert!(!is_refused(&AmqpError::ConnectTimeout));
    }

    /// A peer that accepts TCP connections and never speaks AMQP, like a broker caught while
    /// shutting down: connecting must give up instead of waiting forever.
    #[tokio::test]
    async fn connecting_to_a_silent_peer_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                held.push(sock);
            }
        });
        let config = AmqpConfig::new(
            format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
                .parse()
                .unwrap(),
        )
        .with_connect_timeout(Duration::from_millis(200));
        let started = std::time::Instant::now();
        let res = AmqpDriver::connect(config.clone()).await;
        assert!(matches!(res, Err(AmqpError::ConnectTimeout)), "{res:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // The reconnect loop uses the same bounded attempt.
        let res = open_session(&config, config.uris.first(), "q", true).await;
        assert!(matches!(res, Err(AmqpError::ConnectTimeout)));
        accept.abort();
    }
}
