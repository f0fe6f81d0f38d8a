//! Delivery statistics: a latency histogram and counters per measurement step, recorded from
//! every receiving task with little contention (sharded by worker thread), plus the per-client
//! seen-set that tells duplicates apart.

use std::{
    cell::Cell,
    sync::{
        atomic::{AtomicU32, AtomicUsize, Ordering},
        Mutex, MutexGuard, PoisonError,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency the histogram holds (60 s, in µs); larger values count as this.
const MAX_LATENCY_US: u64 = 60_000_000;
/// Shards of the recorder; a worker thread always uses the same one.
const SHARDS: usize = 16;
/// Largest per-collaboration sequence number a seen-set accepts (16 Mi events per step).
pub const MAX_SEQ: u64 = 1 << 24;

/// Microseconds since the Unix epoch (the one clock: publisher and receivers share it, and so
/// do several processes of one machine).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A non-negative float's integer part (0 for negative or NaN, saturating when huge).
#[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
pub fn whole(x: f64) -> u64 {
    if x.is_nan() || x <= 0.0 {
        0
    } else {
        x as u64
    }
}

/// A fresh latency histogram (1 µs .. 60 s, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// What one step recorded.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Latencies in µs.
    pub hist: Histogram<u64>,
    /// First deliveries of an event to a client.
    pub delivered: u64,
    /// Repeated deliveries of an event to the same client.
    pub duplicated: u64,
    /// Deliveries of an earlier step's event (arrived after that step was closed).
    pub stale: u64,
    /// Packets that could not be understood.
    pub errors: u64,
    /// When the last delivery of the step arrived (µs since the epoch; 0: none).
    pub last_delivery_us: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            hist: new_histogram(),
            delivered: 0,
            duplicated: 0,
            stale: 0,
            errors: 0,
            last_delivery_us: 0,
        }
    }
}

impl Tally {
    /// Adds another tally (another shard or another process).
    pub fn merge(&mut self, other: &Tally) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
        self.delivered += other.delivered;
        self.duplicated += other.duplicated;
        self.stale += other.stale;
        self.errors += other.errors;
        self.last_delivery_us = self.last_delivery_us.max(other.last_delivery_us);
    }

    /// The latency percentiles in milliseconds, `None` without any delivery.
    pub fn latency_ms(&self) -> Option<LatencyMs> {
        if self.hist.is_empty() {
            return None;
        }
        let ms = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        Some(LatencyMs {
            p50: ms(0.50),
            p90: ms(0.90),
            p99: ms(0.99),
            p999: ms(0.999),
            max: self.hist.max() as f64 / 1000.0,
        })
    }
}

/// Latency percentiles (ms).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct LatencyMs {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// The step-tagged recorder shared by every receiving task.
#[derive(Debug)]
pub struct Recorder {
    step: AtomicU32,
    shards: Vec<Mutex<Tally>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

fn lock(m: &Mutex<Tally>) -> MutexGuard<'_, Tally> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Recorder {
    /// A recorder at step 0 (nothing is measured until [`begin`](Self::begin)).
    pub fn new() -> Self {
        Self {
            step: AtomicU32::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(Tally::default())).collect(),
        }
    }

    fn shard(&self) -> MutexGuard<'_, Tally> {
        let i = SHARD.with(|s| {
            if s.get() == usize::MAX {
                s.set(NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS);
            }
            s.get()
        });
        lock(&self.shards[i])
    }

    /// The step being measured.
    pub fn step(&self) -> u32 {
        self.step.load(Ordering::Acquire)
    }

    /// Starts measuring `step`: what earlier steps recorded is discarded.
    pub fn begin(&self, step: u32) {
        self.step.store(step, Ordering::Release);
        for s in &self.shards {
            *lock(s) = Tally::default();
        }
    }

    /// Closes the current step and returns what it recorded; later deliveries of it are stale.
    pub fn finish(&self) -> Tally {
        self.step.fetch_add(1, Ordering::AcqRel);
        let mut total = Tally::default();
        for s in &self.shards {
            total.merge(&std::mem::take(&mut *lock(s)));
        }
        total
    }

    /// Records one delivery of step `step` seen by a client for the first time (`first`) or
    /// again, `latency_us` after it was sent.
    pub fn delivery(&self, step: u32, first: bool, latency_us: u64) {
        if step != self.step() {
            self.shard().stale += 1;
            return;
        }
        let mut t = self.shard();
        if first {
            t.delivered += 1;
            t.hist
                .saturating_record(latency_us.clamp(1, MAX_LATENCY_US));
            t.last_delivery_us = t.last_delivery_us.max(now_us());
        } else {
            t.duplicated += 1;
        }
    }

    /// Counts a packet that could not be understood.
    pub fn error(&self) {
        self.shard().errors += 1;
    }

    /// The current step's deliveries so far (first and repeated).
    pub fn seen_so_far(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                let t = lock(s);
                t.delivered + t.duplicated
            })
            .sum()
    }
}

/// Which of a collaboration's sequence numbers of one step a client has seen: a bitset that
/// grows with the highest number seen (one bit per event).
#[derive(Debug, Default, Clone)]
pub struct SeenSet {
    step: u32,
    bits: Vec<u64>,
}

/// What [`SeenSet::insert`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time.
    New,
    /// Seen before in this step.
    Again,
    /// The number is beyond [`MAX_SEQ`]: not tracked.
    OutOfRange,
}

impl SeenSet {
    /// Marks `seq` of `step` seen. A newer step clears the set; an older one (a stale delivery,
    /// which the recorder discards anyway) is reported [`Seen::New`] without being stored.
    pub fn insert(&mut self, step: u32, seq: u64) -> Seen {
        if seq >= MAX_SEQ {
            return Seen::OutOfRange;
        }
        if step > self.step {
            self.step = step;
            self.bits.clear();
        } else if step < self.step {
            return Seen::New;
        }
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        let mask = 1u64 << bit;
        let again = self.bits[word] & mask != 0;
        self.bits[word] |= mask;
        if again {
            Seen::Again
        } else {
            Seen::New
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_set_tells_duplicates() {
        let mut s = SeenSet::default();
        assert_eq!(s.insert(1, 0), Seen::New);
        assert_eq!(s.insert(1, 200), Seen::New);
        assert_eq!(s.insert(1, 0), Seen::Again);
        assert_eq!(s.insert(1, 200), Seen::Again);
        assert_eq!(s.insert(2, 0), Seen::New, "a new step starts afresh");
        assert_eq!(s.insert(1, 0), Seen::New, "stale: not stored");
        assert_eq!(s.insert(2, 0), Seen::Again);
        assert_eq!(s.insert(2, MAX_SEQ), Seen::OutOfRange);
    }

    #[test]
    fn recorder_counts_per_step() {
        let r = Recorder::new();
        r.begin(1);
        r.delivery(1, true, 1000);
        r.delivery(1, true, 3000);
        r.delivery(1, false, 5000);
        r.delivery(0, true, 10);
        r.error();
        assert_eq!(r.seen_so_far(), 3);
        let t = r.finish();
        assert_eq!((t.delivered, t.duplicated, t.stale, t.errors), (2, 1, 1, 1));
        assert!(t.last_delivery_us > 0);
        let l = t.latency_ms().expect("latencies");
        assert!((l.p50 - 1.0).abs() < 0.01, "{l:?}");
        assert!((l.max - 3.0).abs() < 0.01, "{l:?}");
        // after finish, the step's late deliveries are stale
        r.delivery(1, true, 1000);
        let t = r.finish();
        assert_eq!((t.delivered, t.stale), (0, 1));
        assert!(t.latency_ms().is_none());
    }

    #[test]
    fn tallies_merge() {
        let mut a = Tally::default();
        let mut b = Tally::default();
        a.hist.record(1000).expect("in range");
        b.hist.record(9000).expect("in range");
        a.delivered = 1;
        b.delivered = 1;
        b.duplicated = 2;
        a.merge(&b);
        assert_eq!((a.delivered, a.duplicated, a.hist.len()), (2, 2, 2));
        assert!(a.latency_ms().is_some_and(|l| (l.max - 9.0).abs() < 0.01));
    }

    #[test]
    fn huge_latencies_saturate() {
        let r = Recorder::new();
        r.begin(1);
        r.delivery(1, true, u64::MAX);
        let t = r.finish();
        assert_eq!(t.delivered, 1);
        assert!(t.latency_ms().is_some_and(|l| l.max >= 59_000.0));
    }
}
