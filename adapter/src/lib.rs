#![warn(missing_docs)]
//! A RabbitMQ (AMQP 0.9.1) adapter for [socketioxide](https://docs.rs/socketioxide), speaking
//! python-socketio's message-queue protocol.
//!
//! Several socketioxide servers, Flask-SocketIO / python-socketio servers and publish-only
//! emitters can share one fanout exchange: an event emitted on any of them reaches the clients of
//! all of them.
//!
//! * [`AmqpAdapter`] is the socketioxide adapter, built from an [`AmqpAdapterCtr`] (the broker
//!   connection shared by the namespaces of one `SocketIo`).
//! * [`AmqpEmitter`] publishes without a server (like python-socketio's write-only manager).
//! * [`wire`] holds the message types; [`broker`] the transport seam, the lapin driver and an
//!   in-memory broker for tests.
//!
//! # How a broadcast travels
//!
//! `io.to("room").emit(..)` on instance A calls [`CoreAdapter::broadcast`]: the local sockets
//! of A are served first, without waiting for the broker, then exactly **one** `emit` message is
//! published to the fanout exchange. It is python-socketio's `emit` (so Python servers on the same
//! exchange deliver it to their clients) plus `x_*` fields with the exact socketioxide options
//! (except-rooms, volatile flag, target server) for the other socketioxide instances.
//! Each instance's consumer decodes it ([`wire`]), ignores it if it comes from itself
//! (`host_id`), and applies it to its local sockets.
//!
//! In detail, on the receiving side: one dispatcher task per `SocketIo` reads the instance's
//! queue, drops oversized or undecodable bodies (counted as `invalid` in [`AdapterMetrics`]) and
//! its own messages, and hands each message to the task of its namespace. A socketioxide `emit`
//! carries `x_opts` and is applied with exactly those options; a python-socketio `emit` has none,
//! so its `room` (where every sid is also a room) and `skip_sid` are translated to local sockets.
//! The payload is rebuilt from `data` in the layout set by [`AdapterConfig::python_data_format`]
//! (`x_nargs`, when present, says how many arguments a socketioxide sender meant).
//!
//! # Requests between socketioxide instances
//!
//! `fetch_sockets`, `rooms`, and room-wide `join`/`leave`/`disconnect` are `x_request` messages;
//! replies (`x_response`) go straight to the requester's queue through the default exchange.
//! The number of replies to wait for comes from `x_heartbeat` messages (AMQP cannot count the
//! consumers of a fanout exchange): every namespace announces itself when it starts and then every
//! [`AdapterConfig::heartbeat_interval`]. Python servers do not answer these requests.
//!
//! # Acks
//!
//! `emit_with_ack` publishes an `emit` with python's `callback` field and our `x_req`. Socketioxide
//! peers answer with the number of sockets reached, then one reply per ack, so the ack stream ends
//! as soon as every expected ack is in (or at the timeout). Python servers answer with one
//! python `callback` message per client ack; those acks are yielded while the stream is open
//! (set [`AdapterConfig::wait_for_python_acks`] to keep it open until the timeout).
//!
//! # The parts of the crate
//!
//! * `config`, `metrics`, `error`: [`AdapterConfig`], [`AdapterMetrics`], [`Error`];
//! * `ctr`: [`AmqpAdapterCtr`], the state shared by the namespaces of one `SocketIo`;
//! * `dispatch`: the task reading the instance's queue and routing messages to namespaces;
//! * `adapter`: [`CustomAmqpAdapter`] and its `CoreAdapter` implementation;
//! * `publish` / `incoming`: what the adapter publishes, and how it applies what others publish;
//! * `python`: python-socketio's addressing (sids as rooms, `skip_sid`) on local sockets;
//! * `peers`, `requests`, `stream`: heartbeats, pending requests, the ack stream;
//! * [`wire`]: the messages; [`broker`]: the transport seam and its drivers; [`uri`]: kombu's
//!   reading of broker URIs; [`emitter`]: the publish-only client.
//!
//! socketioxide-core 0.20 ships helpers for remote adapters (`HeartbeatTracker`,
//! `RemoteRequestHandler`, `AckStream`, `DropStream`, `wait_responses`). They are built on core's
//! own request and response packets, with `Sid` request ids, which python-socketio's protocol
//! and this crate's wire format (numeric ids, python `emit`/`callback` messages) do not have;
//! the modules `peers`, `incoming`, `requests` and `stream` say, each for its helper, why this
//! crate keeps its own code.
//!
//! # Usage
//!
//! ```no_run
//! use socketioxide::{SocketIo, extract::SocketRef, adapter::Emitter};
//! use socketioxide_amqp::{AmqpAdapter, AmqpAdapterCtr};
//!
//! # async fn doc() -> Result<(), Box<dyn std::error::Error>> {
//! // Exchange `flask-socketio` (Flask-SocketIO's default), own queue, reconnect loop.
//! let ctr = AmqpAdapterCtr::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
//! let (layer, io) = SocketIo::builder()
//!     .with_adapter::<AmqpAdapter<_>>(ctr)
//!     .build_layer();
//! // With a remote adapter the namespace is registered when this future completes.
//! io.ns("/", async |s: SocketRef<AmqpAdapter<Emitter>>| {
//!     s.join("room1");
//! })
//! .await?;
//! // Local clients get it at once; one `emit` message goes to the exchange for the others.
//! io.to("room1").emit("hello", &"world").await?;
//! # let _ = layer;
//! # Ok(()) }
//! ```
//!
//! Broker URIs are read the way kombu (and so every Python process on the exchange) reads them,
//! not by the AMQP URI specification: `amqp://host:5672/` is the virtual host `/`, as for
//! Flask-SocketIO; see [`BrokerUri`] for the rules.
//!
//! Settings: [`AmqpConfig`] (URI, exchange, queue, reconnect, publisher confirms) and
//! [`AdapterConfig`] (timeouts, heartbeats, python data format), with
//! [`AmqpAdapterCtr::connect_with_config`].
//!
//! # Testing without a broker
//!
//! Any [`broker::Driver`] can carry the adapter; [`broker::MemoryBroker`] is an in-process fanout:
//!
//! ```
//! use socketioxide::{SocketIo, adapter::Emitter};
//! use socketioxide_amqp::{AdapterConfig, AmqpAdapterCtr, CustomAmqpAdapter, broker::MemoryBroker};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let broker = MemoryBroker::new();
//! let mut servers = Vec::new();
//! for _ in 0..2 {
//!     let ctr = AmqpAdapterCtr::new_with_driver(broker.driver(), AdapterConfig::default());
//!     let (_svc, io) = SocketIo::builder()
//!         .with_adapter::<CustomAmqpAdapter<_, _>>(ctr)
//!         .build_svc();
//!     io.ns("/", async || {}).await.unwrap();
//!     servers.push(io);
//! }
//! let mut exchange = broker.tap();
//! servers[0].emit("event", &1).await.unwrap();
//! // What went to the exchange is python-socketio's `emit`.
//! let body = exchange.recv().await.unwrap();
//! let text = String::from_utf8(body).unwrap();
//! assert!(text.starts_with(r#"{"method":"emit","event":"event","data":[1],"#));
//! # }
//! ```
//!
//! # Compatibility with python-socketio
//!
//! * By default messages follow python-socketio 5.15.1+ (`data` is the argument list; binary
//!   arguments as base64 attachments with `{"_placeholder": true, "num": N}`). Python servers on
//!   python-socketio up to 5.15.0 (e.g. vantage6 4.15.2) write and read `data` as the bare
//!   value: set [`AdapterConfig::python_data_format`] to [`DataFormat::Legacy`] to read *and*
//!   publish that layout. Such servers can only hand their clients one argument (several arrive
//!   as one list, a lone `null` as none); socketioxide servers still get the exact arguments
//!   through the `x_nargs` field. Upgrade all socketioxide servers of a `Legacy` fleet together:
//!   older ones do not read `x_nargs`.
//! * Python `emit` (rooms, sids as rooms, `skip_sid`, several args, binary, callbacks),
//!   `disconnect`, `enter_room`, `leave_room` and `close_room` act on the local sockets.
//! * What socketioxide does beyond python's protocol uses `x_*` methods and fields that python
//!   ignores: `fetch_sockets`, `rooms`, room-wide join/leave/disconnect and acks counts reach only
//!   socketioxide servers; except-rooms and volatile are ignored by python servers.
//! * The payload must come from socketioxide's default (JSON) parser to be readable by python;
//!   msgpack payloads travel as `x_emit` between socketioxide servers only.
//!
//! [`CoreAdapter::broadcast`]: socketioxide_core::adapter::CoreAdapter::broadcast

mod adapter;
pub mod broker;
mod config;
mod ctr;
mod dispatch;
pub mod emitter;
mod error;
mod incoming;
pub mod lost;
mod metrics;
mod peers;
mod publish;
mod python;
mod requests;
mod stream;
#[cfg(feature = "amqp")]
pub mod uri;
pub mod wire;

#[cfg(feature = "amqp")]
pub use adapter::AmqpAdapter;
pub use adapter::{CustomAmqpAdapter, InitRes};
#[cfg(feature = "amqp")]
pub use broker::{AmqpConfig, AmqpDriver};
pub use config::{AdapterConfig, DEFAULT_MAX_MESSAGE_SIZE};
pub use ctr::AmqpAdapterCtr;
pub use emitter::AmqpEmitter;
pub use error::{DriverError, Error};
pub use metrics::AdapterMetrics;
pub use peers::PeerEvent;
pub use stream::AckStream;
#[cfg(feature = "amqp")]
pub use uri::{BrokerUri, BrokerUris, UriError};
pub use wire::{DataFormat, UnknownDataFormat};
