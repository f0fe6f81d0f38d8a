//! An in-process broker with one fanout exchange and named queues, for tests.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use tokio::sync::mpsc;

use super::{Driver, MessageStream};

/// The error of a [`MemoryDriver`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// The broker is down ([`MemoryBroker::set_down`]).
    #[error("not connected to the broker")]
    NotConnected,
}

#[derive(Default)]
struct Hub {
    queues: HashMap<String, mpsc::Sender<Vec<u8>>>,
    taps: Vec<mpsc::UnboundedSender<Vec<u8>>>,
}

#[derive(Default)]
struct State {
    hub: Mutex<Hub>,
    down: AtomicBool,
    /// When it came back from the last simulated outage (`None`: never down).
    up_since: Mutex<Option<std::time::Instant>>,
    next: AtomicU64,
    published: AtomicU64,
}

/// An in-process message broker: a fanout exchange plus one queue per [`MemoryDriver`].
///
/// Cloning gives another handle to the same broker.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    state: Arc<State>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("down", &self.state.down.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl MemoryBroker {
    /// A new, empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    fn hub(&self) -> MutexGuard<'_, Hub> {
        // The lock is never held across a panic-prone section; recover from poisoning anyway.
        self.state
            .hub
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new instance connection with its own queue, bound to the exchange.
    pub fn driver(&self) -> MemoryDriver {
        let n = self.state.next.fetch_add(1, Ordering::Relaxed);
        let queue = format!("memory.{n}");
        let (tx, rx) = mpsc::channel(1024);
        self.hub().queues.insert(queue.clone(), tx);
        MemoryDriver {
            broker: self.clone(),
            queue,
            rx: Arc::new(Mutex::new(Some(MessageStream::new(rx)))),
        }
    }

    /// A receiver of a copy of everything published to the fanout exchange from now on,
    /// like a python-socketio server listening on the exchange.
    pub fn tap(&self) -> mpsc::UnboundedReceiver<Vec<u8>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.hub().taps.push(tx);
        rx
    }

    /// Publishes a body to the fanout exchange, as a foreign (e.g. Python) publisher would.
    pub fn inject(&self, body: Vec<u8>) {
        self.fanout(body);
    }

    /// Simulates a broker outage: while down, publishing fails with
    /// [`MemoryError::NotConnected`] and nothing is delivered.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::Relaxed);
        if !down {
            *self
                .state
                .up_since
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(std::time::Instant::now());
        }
    }

    /// Whether queue `name` exists (a driver's own queue exists from its creation until it is
    /// closed or deleted).
    pub fn has_queue(&self, name: &str) -> bool {
        self.hub().queues.contains_key(name)
    }

    /// How many bodies were published to the fanout exchange (injected ones included).
    pub fn published(&self) -> u64 {
        self.state.published.load(Ordering::Relaxed)
    }

    fn fanout(&self, body: Vec<u8>) {
        self.state.published.fetch_add(1, Ordering::Relaxed);
        let mut hub = self.hub();
        hub.taps.retain(|t| t.send(body.clone()).is_ok());
        for tx in hub.queues.values() {
            // A full or closed queue drops the message, like an overflowing broker queue would.
            let _ = tx.try_send(body.clone());
        }
    }
}

/// One instance's connection to a [`MemoryBroker`].
#[derive(Clone)]
pub struct MemoryDriver {
    broker: MemoryBroker,
    queue: String,
    rx: Arc<Mutex<Option<MessageStream>>>,
}

impl std::fmt::Debug for MemoryDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryDriver")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl Driver for MemoryDriver {
    type Error = MemoryError;

    async fn publish(&self, body: Vec<u8>) -> Result<(), MemoryError> {
        if self.broker.state.down.load(Ordering::Relaxed) {
            return Err(MemoryError::NotConnected);
        }
        self.broker.fanout(body);
        Ok(())
    }

    async fn send_to(&self, queue: &str, body: Vec<u8>) -> Result<(), MemoryError> {
        if self.broker.state.down.load(Ordering::Relaxed) {
            return Err(MemoryError::NotConnected);
        }
        let tx = self.broker.hub().queues.get(queue).cloned();
        if let Some(tx) = tx {
            let _ = tx.try_send(body);
        }
        Ok(())
    }

    fn queue_name(&self) -> &str {
        &self.queue
    }

    fn connected_for(&self) -> Option<std::time::Duration> {
        if self.broker.state.down.load(Ordering::Relaxed) {
            return None;
        }
        let up_since = *self
            .broker
            .state
            .up_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(up_since.map_or(std::time::Duration::MAX, |t| t.elapsed()))
    }

    /// A queue is in use while its receiver lives (in its driver, or the stream taken from
    /// it), as a queue with a consumer: then it is kept.
    async fn delete_queue(&self, queue: &str) -> Result<bool, MemoryError> {
        if self.broker.state.down.load(Ordering::Relaxed) {
            return Err(MemoryError::NotConnected);
        }
        let mut hub = self.broker.hub();
        if hub.queues.get(queue).is_some_and(|tx| !tx.is_closed()) {
            return Ok(false);
        }
        hub.queues.remove(queue);
        Ok(true)
    }

    fn subscribe(&self) -> Option<MessageStream> {
        self.rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    async fn close(&self) {
        self.broker.hub().queues.remove(&self.queue);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fanout_and_direct() {
        let broker = MemoryBroker::new();
        let a = broker.driver();
        let b = broker.driver();
        let mut tap = broker.tap();
        let mut sa = a.subscribe().unwrap();
        let mut sb = b.subscribe().unwrap();
        assert!(a.subscribe().is_none());
        a.publish(b"x".to_vec()).await.unwrap();
        assert_eq!(sa.recv().await.unwrap(), b"x");
        assert_eq!(sb.recv().await.unwrap(), b"x");
        assert_eq!(tap.recv().await.unwrap(), b"x");
        a.send_to(b.queue_name(), b"y".to_vec()).await.unwrap();
        assert_eq!(sb.recv().await.unwrap(), b"y");
        broker.set_down(true);
        assert!(matches!(
            a.publish(b"z".to_vec()).await,
            Err(MemoryError::NotConnected)
        ));
        assert_eq!(broker.published(), 1);
    }
}
