//! The transport seam between the adapter and the message broker.
//!
//! The adapter only needs four things from a broker, captured by the [`Driver`] trait:
//! publish to the shared fanout exchange, send to one instance's queue, know its own queue name
//! (the address peers reply to), and a stream of the bodies arriving in its queue.
//!
//! Two drivers are provided:
//! * [`AmqpDriver`]: RabbitMQ through lapin, with python-socketio's topology and a reconnect loop
//!   (feature `amqp`, on by default);
//! * [`MemoryBroker`] / [`MemoryDriver`]: an in-process fanout, for tests without a broker.
//!
//! Each driver has its own error type ([`Driver::Error`]): [`AmqpError`], [`MemoryError`].

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use std::sync::Arc;

use futures_core::Stream;
use tokio::sync::mpsc;

#[cfg(feature = "amqp")]
mod amqp;
mod memory;

#[cfg(feature = "amqp")]
pub use amqp::{AmqpConfig, AmqpDriver, AmqpError, DEFAULT_RECONNECT_MAX};
pub use memory::{MemoryBroker, MemoryDriver, MemoryError};

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

/// The queues of the other servers the adapter knows (from their heartbeats), asked by a driver
/// when it needs them, see [`Driver::set_peer_queues`].
pub type PeerQueues = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// What the adapter needs from a message broker.
///
/// Implementations must be cheap to share (the adapter keeps one per `SocketIo` and calls it from
/// every namespace).
pub trait Driver: Send + Sync + 'static {
    /// Why a publish failed (not connected, refused by the broker, ...).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Publishes a body to the shared fanout exchange: every instance, Python ones included,
    /// receives it (the sender too).
    fn publish(&self, body: Vec<u8>) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Sends a body to one instance's queue only.
    fn send_to(
        &self,
        queue: &str,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The name of this instance's own queue, where direct messages for it arrive.
    fn queue_name(&self) -> &str;

    /// Gives the driver the queues of the other servers the adapter knows. The AMQP driver binds
    /// them to the exchange again after a reconnect, since a broker restart drops the bindings
    /// of the non-durable exchange while their queues survive. The default ignores it.
    fn set_peer_queues(&self, source: PeerQueues) {
        let _ = source;
    }

    /// Takes the stream of bodies arriving in this instance's queue.
    ///
    /// It can be taken once; later calls return `None`.
    fn subscribe(&self) -> Option<MessageStream>;

    /// How long the current broker connection has been up; `None` while disconnected. The
    /// adapter declares a silent peer lost only after its own connection has been up for a whole
    /// heartbeat timeout (else the silence may be its own outage). The default: always up.
    fn connected_for(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::MAX)
    }

    /// Deletes a queue unless a consumer uses it: a lost peer's, which would otherwise collect
    /// every message of the exchange until the broker expires it. `Ok(true)`: deleted (or there
    /// was none); `Ok(false)`: kept, something consumes from it (its server is back). The
    /// default does nothing and answers `Ok(true)`.
    fn delete_queue(&self, queue: &str) -> impl Future<Output = Result<bool, Self::Error>> + Send {
        let _ = queue;
        std::future::ready(Ok(true))
    }

    /// Closes the connection; later publishes may fail (the AMQP driver's do, with
    /// [`AmqpError::Closed`]).
    fn close(&self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}
