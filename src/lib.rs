//! # v6-socketio
//!
//! A Socket.IO server for vantage6's `/tasks` namespace, built on
//! socketioxide, axum and tokio. It reproduces the Flask-SocketIO layer of
//! vantage6 4.x (JWT from the handshake's `Authorization` header, rooms per
//! collaboration, every event) against the same vantage6 database, so that
//! existing Python nodes and the UI work unchanged.
//!
//! The path of one event: [`tasks_ns`] receives it, checks the client's
//! [`identity`], acts on the [`store`], and emits to [`rooms`]; the Socket.IO
//! adapter (local, or RabbitMQ across instances) delivers it.

#![warn(missing_docs)]

pub mod affinity;
pub mod auth;
pub mod broker_metrics;
pub mod cluster;
pub mod config;
pub mod database_url;
pub mod demo;
pub mod detached_head;
pub mod emit;
pub mod generation;
pub mod heap;
pub mod http;
pub mod identity;
pub mod keycloak;
pub mod listener;
pub mod log_limit;
pub mod metrics;
pub mod node_config;
pub mod rooms;
pub mod server;
pub mod store;
pub mod sweeper;
pub mod tasks_ns;
pub mod tcp_options;
