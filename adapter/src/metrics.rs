//! The counters of the adapter's broker traffic ([`AdapterMetrics`]).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

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
    /// Received messages ignored because they are our own (not counted: our own heartbeats,
    /// which come back by design), or callbacks for another host.
    pub ignored: u64,
    /// Received messages for a namespace that does not exist here.
    pub unroutable: u64,
    /// Local sockets that a remote broadcast found already closed.
    pub delivery_closed: u64,
    /// Local sockets that missed a remote broadcast because their buffer was full.
    pub delivery_full: u64,
    /// Peer servers taken for dead (no heartbeat within the timeout), see
    /// [`PeerEvent::Lost`](crate::PeerEvent::Lost).
    pub peers_lost: u64,
    /// Lost peers' queues deleted by this server.
    pub peer_queues_deleted: u64,
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
    pub(crate) peers_lost: AtomicU64,
    pub(crate) peer_queues_deleted: AtomicU64,
    /// The warnings about dropped invalid messages: one line per interval, not one per message.
    pub(crate) invalid_log: LogGate,
    /// The warnings about local sockets whose buffer was full for a remote emit.
    pub(crate) full_log: LogGate,
}

/// At most one log line per [`LogGate::INTERVAL`] for a kind of message that may arrive by the
/// thousand (junk on the exchange): the first occurrence is logged at once, the next ones are
/// counted into the first line due after the interval.
#[derive(Debug, Default)]
pub(crate) struct LogGate {
    /// When the last line was logged, and how many occurrences were not logged since.
    state: Mutex<Option<(Instant, u64)>>,
}

impl LogGate {
    /// The interval between two lines.
    pub(crate) const INTERVAL: Duration = Duration::from_secs(10);

    /// One occurrence: `Some(skipped)` when a line is due (`skipped` occurrences were not logged
    /// since the previous line), `None` when it stays quiet.
    pub(crate) fn hit(&self) -> Option<u64> {
        self.hit_at(Instant::now())
    }

    fn hit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut *state {
            Some((last, skipped)) if now.saturating_duration_since(*last) < Self::INTERVAL => {
                *skipped += 1;
                None
            }
            Some((last, skipped)) => {
                let n = *skipped;
                *last = now;
                *skipped = 0;
                Some(n)
            }
            None => {
                *state = Some((now, 0));
                Some(0)
            }
        }
    }
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
            peers_lost: self.peers_lost.load(Ordering::Relaxed),
            peer_queues_deleted: self.peer_queues_deleted.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_gate_logs_the_first_then_one_line_per_interval() {
        let gate = LogGate::default();
        let t0 = Instant::now();
        assert_eq!(gate.hit_at(t0), Some(0));
        for i in 1..1000 {
            assert_eq!(gate.hit_at(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(gate.hit_at(t0 + LogGate::INTERVAL), Some(999));
        assert_eq!(gate.hit_at(t0 + LogGate::INTERVAL * 2), Some(0));
    }
}
