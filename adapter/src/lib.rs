#![warn(missing_docs)]
//! RabbitMQ (AMQP 0.9.1) adapter for [socketioxide](https://docs.rs/socketioxide), wire-compatible
//! with python-socketio's message queue (work in progress, see issue 3).

pub mod adapter;
pub mod broker;
pub mod emitter;
pub mod wire;

pub use adapter::{AdapterConfig, AmqpAdapter, AmqpAdapterCtr, CustomAmqpAdapter, Error, Metrics};
pub use broker::{AmqpConfig, AmqpDriver};
pub use emitter::Emitter;
pub use wire::DataFormat;
