//! Rate-limited log lines: at most one line per interval for each kind of
//! repeated event, carrying how many occurrences it stands for.
//!
//! For events that can happen once per socket or once per message (a
//! broadcast meeting closed sockets, a client flooding refused events):
//! the count goes to a metric every time, the log gets a summary now and
//! then. The first occurrence of a kind is logged at once; the occurrences
//! of the next `interval` are summed into the line of the first occurrence
//! after it. Occurrences after the last line are only in the metrics.
//!
//! Lines that are useful one by one in normal operation (a client connected
//! or left) but come by the thousand when a fleet reconnects use
//! [`LogLimiter::burst`]: the first few of each interval are logged as they
//! are, the rest are counted into the next line that is logged.
//!
//! ```
//! use std::time::Duration;
//! use v6_socketio::log_limit::LogLimiter;
//!
//! let limiter = LogLimiter::new(Duration::from_secs(10));
//! if let Some(n) = limiter.hit("queue_full", 1) {
//!     tracing::warn!(events = n, "session queues full, events dropped");
//! }
//! ```

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// The interval of the summary lines of this server's own warnings.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// Decides, per kind, whether a summary line is due.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    kinds: Mutex<HashMap<&'static str, Window>>,
    bursts: Mutex<HashMap<&'static str, Burst>>,
}

#[derive(Debug)]
struct Window {
    last_line: Instant,
    pending: u64,
}

#[derive(Debug)]
struct Burst {
    started: Instant,
    logged: u32,
    skipped: u64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(SUMMARY_INTERVAL)
    }
}

impl LogLimiter {
    /// At most one line per `interval` for each kind.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            kinds: Mutex::new(HashMap::new()),
            bursts: Mutex::new(HashMap::new()),
        }
    }

    /// One occurrence of `kind`, of which up to `per_interval` are logged
    /// one by one in each interval. Returns `Some(skipped)` when this one is
    /// to be logged, `skipped` being the occurrences not logged since the
    /// previous line of this kind; `None` when it is to stay quiet.
    pub fn burst(&self, kind: &'static str, per_interval: u32) -> Option<u64> {
        self.burst_at(kind, per_interval, Instant::now())
    }

    /// [`burst`](Self::burst) at a given time (for tests).
    pub fn burst_at(&self, kind: &'static str, per_interval: u32, now: Instant) -> Option<u64> {
        let mut bursts = self
            .bursts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let b = bursts.entry(kind).or_insert(Burst {
            started: now,
            logged: 0,
            skipped: 0,
        });
        if now.saturating_duration_since(b.started) >= self.interval {
            b.started = now;
            b.logged = 0;
        }
        if b.logged < per_interval {
            b.logged += 1;
            Some(std::mem::take(&mut b.skipped))
        } else {
            b.skipped += 1;
            None
        }
    }

    /// Records `n` occurrences of `kind`. Returns `Some(total)` when a line
    /// is due: the occurrences since the previous line, these included.
    pub fn hit(&self, kind: &'static str, n: u64) -> Option<u64> {
        self.hit_at(kind, n, Instant::now())
    }

    /// [`hit`](Self::hit) at a given time (for tests).
    pub fn hit_at(&self, kind: &'static str, n: u64, now: Instant) -> Option<u64> {
        if n == 0 {
            return None;
        }
        // A panic elsewhere while holding the lock leaves consistent counts.
        let mut kinds = self
            .kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match kinds.get_mut(kind) {
            None => {
                kinds.insert(
                    kind,
                    Window {
                        last_line: now,
                        pending: 0,
                    },
                );
                Some(n)
            }
            Some(w) if now.saturating_duration_since(w.last_line) >= self.interval => {
                let total = w.pending + n;
                w.last_line = now;
                w.pending = 0;
                Some(total)
            }
            Some(w) => {
                w.pending += n;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_hit_logs_then_one_line_per_interval_with_the_count() {
        let l = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(l.hit_at("closed", 3, at(0)), Some(3));
        assert_eq!(l.hit_at("closed", 5, at(1)), None);
        assert_eq!(l.hit_at("closed", 7, at(9)), None);
        // 5 + 7 suppressed, then these 2.
        assert_eq!(l.hit_at("closed", 2, at(10)), Some(14));
        assert_eq!(l.hit_at("closed", 1, at(11)), None);
        assert_eq!(l.hit_at("closed", 1, at(25)), Some(2));
    }

    #[test]
    fn kinds_are_independent_and_zero_is_nothing() {
        let l = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(l.hit_at("a", 0, t0), None);
        assert_eq!(l.hit_at("a", 1, t0), Some(1));
        assert_eq!(l.hit_at("b", 1, t0), Some(1));
        assert_eq!(l.hit_at("a", 1, t0), None);
        assert_eq!(l.hit_at("b", 0, t0 + Duration::from_secs(60)), None);
        assert_eq!(l.hit_at("b", 1, t0 + Duration::from_secs(60)), Some(1));
    }

    #[test]
    fn bursts_log_the_first_of_each_interval_and_count_the_rest() {
        let l = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let first: Vec<_> = (0..5).map(|_| l.burst_at("left", 3, at(0))).collect();
        assert_eq!(first, [Some(0), Some(0), Some(0), None, None]);
        assert_eq!(l.burst_at("left", 3, at(9)), None);
        // A new interval: the next line says how many were not logged.
        assert_eq!(l.burst_at("left", 3, at(10)), Some(3));
        assert_eq!(l.burst_at("left", 3, at(11)), Some(0));
        assert_eq!(l.burst_at("other", 3, at(11)), Some(0));
        // 2,000 in one second: 3 lines.
        let lines = (0..2_000)
            .filter(|i| {
                l.burst_at("storm", 3, at(30) + Duration::from_micros(*i))
                    .is_some()
            })
            .count();
        assert_eq!(lines, 3);
    }

    #[test]
    fn many_hits_give_few_lines() {
        let l = LogLimiter::new(Duration::from_millis(100));
        let t0 = Instant::now();
        // 10,000 hits over 1 s: one line at 0 and one per 100 ms after.
        let lines: Vec<u64> = (0..10_000u64)
            .filter_map(|i| l.hit_at("k", 1, t0 + Duration::from_micros(i * 100)))
            .collect();
        assert_eq!(lines.len(), 10);
        assert_eq!(lines.iter().sum::<u64>(), 10_000 - 999);
    }
}
