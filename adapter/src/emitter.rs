//! A publish-only client: emit to the clients of the servers on the exchange, from any process
//! (a REST API, a worker, a CLI), without running a Socket.IO server.
//!
//! It is the counterpart of python-socketio's write-only `KombuManager` and publishes the same
//! messages, so both socketioxide servers using [`AmqpAdapter`](crate::AmqpAdapter) and python
//! servers receive them.
//!
//! ```no_run
//! use socketioxide_amqp::{AmqpConfig, AmqpEmitter};
//!
//! # async fn doc() -> Result<(), Box<dyn std::error::Error>> {
//! let emitter = AmqpEmitter::connect(AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/".parse()?)).await?;
//! // To every client of `/tasks` in room `collaboration_7`.
//! emitter
//!     .of("/tasks")
//!     .to("collaboration_7")
//!     .emit("algorithm_status_change", &serde_json::json!({"run_id": 3}))
//!     .await?;
//! // A one-shot publisher closes the connection before exiting.
//! emitter.close().await;
//! # Ok(()) }
//! ```

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use serde::Serialize;
use serde_json::Value as Json;

#[cfg(feature = "amqp")]
use crate::broker::{AmqpConfig, AmqpDriver};
use crate::{
    broker::Driver,
    error::Error,
    wire::{self, CloseRoom, DataFormat, Disconnect, Emit, Message, RoomList, RoomMembership},
};

struct Inner<D> {
    driver: D,
    format: DataFormat,
    host_id: String,
    publish_errors: AtomicU64,
}

/// A publish-only emitter. Cheap to clone; [`of`](Self::of), [`to`](Self::to) and
/// [`skip_sid`](Self::skip_sid) return adjusted copies.
pub struct AmqpEmitter<D> {
    inner: Arc<Inner<D>>,
    ns: String,
    rooms: Vec<String>,
    skip: Vec<String>,
}

impl<D> Clone for AmqpEmitter<D> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            ns: self.ns.clone(),
            rooms: self.rooms.clone(),
            skip: self.skip.clone(),
        }
    }
}

impl<D> std::fmt::Debug for AmqpEmitter<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpEmitter")
            .field("host_id", &self.inner.host_id)
            .field("ns", &self.ns)
            .field("rooms", &self.rooms)
            .field("skip", &self.skip)
            .finish()
    }
}

#[cfg(feature = "amqp")]
impl AmqpEmitter<AmqpDriver> {
    /// Connects to RabbitMQ and declares the exchange (no queue: nothing is consumed).
    pub async fn connect(config: AmqpConfig) -> Result<Self, Error> {
        Ok(Self::new(AmqpDriver::connect_publisher(config).await?))
    }
}

impl<D: Driver> AmqpEmitter<D> {
    /// An emitter over any driver, for namespace `/` and every client.
    pub fn new(driver: D) -> Self {
        Self {
            inner: Arc::new(Inner {
                driver,
                format: DataFormat::Args,
                host_id: wire::new_host_id(),
                publish_errors: AtomicU64::new(0),
            }),
            ns: "/".to_owned(),
            rooms: Vec::new(),
            skip: Vec::new(),
        }
    }

    /// An emitter over any driver that writes `data` in the given format: use
    /// [`DataFormat::Legacy`] when the receiving python servers run python-socketio up to
    /// 5.15.0. It is laid out as the adapter lays out its broadcasts ([`wire::args_fields`]):
    /// in [`DataFormat::Legacy`], messages carry `x_nargs`, with which socketioxide servers read
    /// the exact arguments whatever their
    /// [`AdapterConfig::python_data_format`](crate::AdapterConfig::python_data_format).
    pub fn with_data_format(driver: D, format: DataFormat) -> Self {
        let mut e = Self::new(driver);
        if let Some(inner) = Arc::get_mut(&mut e.inner) {
            inner.format = format;
        }
        e
    }

    /// The same emitter for namespace `ns` (rooms and skipped sids are kept).
    pub fn of(&self, ns: impl Into<String>) -> Self {
        let mut e = self.clone();
        e.ns = ns.into();
        e
    }

    /// Adds a room (or a client sid) to reach; without any room every client is reached.
    pub fn to(&self, room: impl Into<String>) -> Self {
        let mut e = self.clone();
        e.rooms.push(room.into());
        e
    }

    /// Excludes a client.
    pub fn skip_sid(&self, sid: impl Into<String>) -> Self {
        let mut e = self.clone();
        e.skip.push(sid.into());
        e
    }

    /// This emitter's python-socketio host id.
    pub fn host_id(&self) -> &str {
        &self.inner.host_id
    }

    /// How many publishes failed so far.
    pub fn publish_errors(&self) -> u64 {
        self.inner.publish_errors.load(Ordering::Relaxed)
    }

    /// Closes the broker connection and waits (boundedly) for the broker to acknowledge it. A
    /// one-shot publisher (a CLI) should call it before exiting, so that the broker does not log
    /// an unexpectedly closed connection. Later emits fail with
    /// [`AmqpError::Closed`](crate::broker::AmqpError::Closed) with RabbitMQ.
    pub async fn close(&self) {
        self.inner.driver.close().await;
    }

    /// Emits `event` with one argument.
    ///
    /// A single `null` argument reaches python servers' clients as no argument (python-socketio's
    /// rule); in [`DataFormat::Args`], socketioxide servers' clients too.
    pub async fn emit<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<(), Error> {
        let arg =
            serde_json::to_value(data).map_err(|e| Error::Wire(wire::WireError::Encode(e)))?;
        self.emit_args(event, vec![arg]).await
    }

    /// Emits `event` with any number of arguments.
    ///
    /// In [`DataFormat::Legacy`] several arguments are sent as one list, which python-socketio
    /// 5.15.0 servers hand their clients as one list argument (it cannot express more than one);
    /// socketioxide servers deliver them as separate arguments.
    pub async fn emit_args(&self, event: &str, args: Vec<Json>) -> Result<(), Error> {
        let fields = wire::args_fields(event.to_owned(), args, self.inner.format);
        let msg = Message::Emit(Emit {
            event: fields.event,
            data: fields.data,
            binary: fields.binary,
            namespace: self.ns.clone(),
            room: RoomList::from_list(self.rooms.clone()),
            skip_sid: RoomList::from_list(self.skip.clone()),
            callback: None,
            host_id: self.inner.host_id.clone(),
            // duplicates: deliberate — an `Emit` literal names every wire field
            x_uid: None,
            x_opts: None,
            x_req: None,
            x_reply_to: None,
            x_timeout_ms: None,
            x_value: None,
            x_nargs: fields.nargs,
        });
        self.publish(&msg).await
    }

    /// Removes every client of the namespace from `room`, on every server.
    // duplicates: deliberate — one publisher per python-socketio message kind
    pub async fn close_room(&self, room: &str) -> Result<(), Error> {
        self.publish(&Message::CloseRoom(CloseRoom {
            room: room.to_owned(),
            namespace: self.ns.clone(),
            host_id: self.inner.host_id.clone(),
        }))
        .await
    }

    /// Adds the client `sid` to `room`, on the server it is connected to.
    pub async fn enter_room(&self, sid: &str, room: &str) -> Result<(), Error> {
        self.publish(&Message::EnterRoom(self.membership(sid, room)))
            .await
    }

    /// Removes the client `sid` from `room`, on the server it is connected to.
    pub async fn leave_room(&self, sid: &str, room: &str) -> Result<(), Error> {
        self.publish(&Message::LeaveRoom(self.membership(sid, room)))
            .await
    }

    /// Disconnects the client `sid`, on the server it is connected to.
    pub async fn disconnect(&self, sid: &str) -> Result<(), Error> {
        self.publish(&Message::Disconnect(Disconnect {
            sid: sid.to_owned(),
            namespace: self.ns.clone(),
            host_id: self.inner.host_id.clone(),
        }))
        .await
    }

    fn membership(&self, sid: &str, room: &str) -> RoomMembership {
        RoomMembership {
            sid: sid.to_owned(),
            room: room.to_owned(),
            namespace: self.ns.clone(),
            host_id: self.inner.host_id.clone(),
        }
    }

    async fn publish(&self, msg: &Message) -> Result<(), Error> {
        let body = wire::encode(msg)?;
        self.inner.driver.publish(body).await.map_err(|e| {
            self.inner.publish_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, method = msg.method(), "emitter publish failed");
            Error::broker(e)
        })
    }
}
