//! The transport seam between the adapter and the message broker.
//!
//! The adapter only needs four things from a broker, captured by the [`Driver`] trait:
//! publish to the shared fanout exchange, send to one instance's queue, know its own queue name
//! (the address peers reply to), and a stream of the bodies arriving in its queue.
//!
//! Two drivers are provided:
//! * [`AmqpDriver`]: RabbitMQ through lapin, with python-socketio's topology and a reconnect loop;
//! * [`MemoryBroker`] / [`MemoryDriver`]: an in-process fanout, for tests without a broker.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use futures_core::Stream;
use tokio::sync::mpsc;

mod amqp;
mod memory;

pub use amqp::{AmqpConfig, AmqpDriver};
pub use memory::{MemoryBroker, MemoryDriver};

/// A broker error.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
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

/// The bodies arriving in the instance's queue.
pub struct MessageStream {
    rx: mpsc::Receiver<Vec<u8>>,
}

impl MessageStream {
    /// Wraps a channel receiver.
    pub fn new(rx: mpsc::Receiver<Vec<u8>>) -> Self {
        Self { rx }
    }
    /// Receives the next body, or `None` when the driver is gone.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        self.rx.recv().await
    }
}

impl Stream for MessageStream {
    type Item = Vec<u8>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Vec<u8>>> {
        self.rx.poll_recv(cx)
    }
}

impl std::fmt::Debug for MessageStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageStream").finish_non_exhaustive()
    }
}

/// What the adapter needs from a message broker.
///
/// Implementations must be cheap to share (the adapter keeps one per `SocketIo` and calls it from
/// every namespace).
pub trait Driver: Send + Sync + 'static {
    /// Publishes a body to the shared fanout exchange: every instance, Python ones included,
    /// receives it (the sender too).
    fn publish(&self, body: Vec<u8>) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Sends a body to one instance's queue only.
    fn send_to(
        &self,
        queue: &str,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// The name of this instance's own queue, where direct messages for it arrive.
    fn queue_name(&self) -> &str;

    /// Takes the stream of bodies arriving in this instance's queue.
    ///
    /// It can be taken once; later calls return `None`.
    fn subscribe(&self) -> Option<MessageStream>;

    /// Closes the connection. Later publishes fail with [`BrokerError::Closed`].
    fn close(&self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}
