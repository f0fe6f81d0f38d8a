//! The counters of the adapter's broker traffic ([`AdapterMetrics`]).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the adapter's broker traffic, see [`AmqpAdapterCtr::metrics`](crate::AmqpAdapterCtr::metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdapterMetrics {
    /// Messages published (fanout or direct), heartbeats and replies included.
    pub published: u64,
    /// `emit` messages published: one per broadcast or remote-socket emit that leaves this
    /// server (a subset of [`published`](Self::published)).
    pub emits: u64,
    /// Publishes that failed (the caller got an error, or, for background messages such as
    /// heartbeats and replies, it was logged).
    pub publish_errors: u64,
    /// Messages received from the own queue.
    pub received: u64,
    /// Received messages dropped because they are not valid (junk, unknown method, bad payload).
    pub invalid: u64,
    /// Received messages ignored because they are our own, or callbacks for another host.
    pub ignored: u64,
    /// Received messages for a namespace that does not exist here.
    pub unroutable: u64,
    /// Local sockets that a remote broadcast found already closed.
    pub delivery_closed: u64,
    /// Local sockets that missed a remote broadcast because their buffer was full.
    pub delivery_full: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) published: AtomicU64,
    pub(crate) emits: AtomicU64,
    pub(crate) publish_errors: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) invalid: AtomicU64,
    pub(crate) ignored: AtomicU64,
    pub(crate) unroutable: AtomicU64,
    pub(crate) delivery_closed: AtomicU64,
    pub(crate) delivery_full: AtomicU64,
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// A snapshot of the counters.
    pub(crate) fn snapshot(&self) -> AdapterMetrics {
        AdapterMetrics {
            published: self.published.load(Ordering::Relaxed),
            emits: self.emits.load(Ordering::Relaxed),
            publish_errors: self.publish_errors.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            invalid: self.invalid.load(Ordering::Relaxed),
            ignored: self.ignored.load(Ordering::Relaxed),
            unroutable: self.unroutable.load(Ordering::Relaxed),
            delivery_closed: self.delivery_closed.load(Ordering::Relaxed),
            delivery_full: self.delivery_full.load(Ordering::Relaxed),
        }
    }
}
