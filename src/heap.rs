//! Gives freed heap memory back to the operating system.
//!
//! A burst (2,000 sockets of one node joining and leaving at once queue
//! n² announcements) allocates a few hundred MiB that are all freed once it
//! is over; glibc's allocator keeps them in its arenas, so the resident
//! memory stays at the burst's high-water mark for good. Every
//! [`CHECK_INTERVAL`], the trimmer reads how many bytes the arenas hold free
//! (`mallinfo2`); when that grew by `threshold` over its lowest value since
//! the last trim, `malloc_trim(0)` returns the free pages to the kernel. A
//! burst is freed over a few seconds, so after a trim one more follows once
//! the free bytes hold still (two readings within [`QUIET`]): the rest of
//! the burst, however small (glibc may have returned its heap's top itself,
//! so the free bytes need not have grown). With another allocator (musl, other
//! systems) there is nothing to do.
//!
//! ```
//! use v6_socketio::heap::Trim;
//!
//! const MIB: u64 = 1 << 20;
//! let mut trim = Trim::new(32 * MIB);
//! assert!(!trim.due(10 * MIB)); // the first reading sets the low mark
//! assert!(!trim.due(40 * MIB)); // grew by 30 MiB
//! assert!(trim.due(43 * MIB)); // by 33 MiB: trim (the low mark is now 43 MiB)
//! assert!(!trim.due(60 * MIB)); // the burst is still being freed
//! assert!(trim.due(60 * MIB)); // it holds still: the follow-up trim
//! assert!(!trim.due(60 * MIB)); // one follow-up per trim
//! assert!(!trim.due(5 * MIB));
//! assert!(trim.due(40 * MIB));
//! ```

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tracing::info;

use crate::metrics::Metrics;

/// How often the arenas' free bytes are read.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Free bytes that changed less than this between two readings hold still.
pub const QUIET: u64 = 1 << 20;

/// When a trim is due, from the arenas' free bytes read one after another.
#[derive(Debug, Clone)]
pub struct Trim {
    threshold: u64,
    /// The lowest reading since the last trim (trimmed pages stay counted as free).
    low: Option<u64>,
    /// The previous reading.
    last: u64,
    /// A trim ran and the follow-up is still to come.
    follow_up: bool,
}

impl Trim {
    /// A trim once the free bytes grew by `threshold` (bytes, non-zero).
    pub fn new(threshold: u64) -> Self {
        Self {
            threshold,
            low: None,
            last: 0,
            follow_up: false,
        }
    }

    /// Takes a reading; true when a trim is due.
    pub fn due(&mut self, free: u64) -> bool {
        let low = self.low.map_or(free, |low| low.min(free));
        let still = free.abs_diff(self.last) < QUIET;
        self.last = free;
        let grown = free - low;
        let due = if grown >= self.threshold {
            self.follow_up = true;
            true
        } else if self.follow_up && still {
            // What the first trim could not return was freed meanwhile; glibc may have shrunk
            // its heap top on its own, so the free bytes need not have grown: trim anyway.
            self.follow_up = false;
            true
        } else {
            false
        };
        self.low = Some(if due { free } else { low });
        due
    }
}

/// Starts the trimmer (`threshold` in bytes; `None`: none started, as when
/// the allocator is not glibc's).
pub fn spawn(threshold: Option<u64>, metrics: Metrics) -> Option<JoinHandle<()>> {
    let threshold = threshold.filter(|_| allocator::SUPPORTED)?;
    Some(tokio::spawn(async move {
        let mut trim = Trim::new(threshold);
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let usage = allocator::usage();
            if trim.due(usage.free) {
                let started = Instant::now();
                let before = allocator::resident_bytes();
                allocator::trim();
                let after = allocator::resident_bytes();
                metrics.heap_trimmed();
                info!(
                    free_mib = usage.free >> 20,
                    in_use_mib = usage.in_use >> 20,
                    resident_mib_before = before >> 20,
                    resident_mib_after = after >> 20,
                    took_ms = started.elapsed().as_millis(),
                    "returned free heap memory to the kernel"
                );
            }
        }
    }))
}

/// One reading of the allocator, in bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    free: u64,
    in_use: u64,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod allocator {
    use super::Usage;

    pub const SUPPORTED: bool = true;

    /// The arenas' free bytes (`fordblks`) and those in use (`uordblks` plus separately
    /// mapped blocks), every arena, from one `mallinfo2` call.
    pub fn usage() -> Usage {
        // SAFETY: mallinfo2 takes no argument, only reads the allocator's
        // state under its locks and returns a plain struct (glibc >= 2.33).
        let info = unsafe { libc::mallinfo2() };
        let bytes = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        Usage {
            free: bytes(info.fordblks),
            in_use: bytes(info.uordblks.saturating_add(info.hblkhd)),
        }
    }

    /// Returns every whole free page of every arena.
    pub fn trim() {
        // SAFETY: malloc_trim(0) only releases free memory, under the
        // allocator's own locks; no pointer is passed.
        unsafe { libc::malloc_trim(0) };
    }

    /// The process's resident memory in bytes (0 when /proc cannot be read).
    pub fn resident_bytes() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib << 10)
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod allocator {
    use super::Usage;

    pub const SUPPORTED: bool = false;

    pub fn usage() -> Usage {
        Usage::default()
    }

    pub fn trim() {}

    pub fn resident_bytes() -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_is_due_only_after_the_free_bytes_grew_by_the_threshold() {
        const MIB: u64 = 1 << 20;
        let mut t = Trim::new(100 * MIB);
        assert!(!t.due(1000 * MIB));
        assert!(!t.due(1099 * MIB));
        assert!(t.due(1100 * MIB));
        // the next reading holds still: the follow-up trim
        assert!(t.due(1100 * MIB));
        // trimmed pages stay counted as free: no trim again at the same level
        assert!(!t.due(1100 * MIB));
        assert!(!t.due(1199 * MIB));
        // reused memory lowers the mark, a new burst trims again
        assert!(!t.due(500 * MIB));
        assert!(!t.due(550 * MIB));
        assert!(t.due(600 * MIB));
        // freed on over three readings, then still: one follow-up trim
        assert!(!t.due(620 * MIB));
        assert!(!t.due(640 * MIB));
        assert!(t.due(640 * MIB));
        assert!(!t.due(640 * MIB));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_shows_as_free_bytes() {
        let before = allocator::usage().free;
        let blocks: Vec<Vec<u8>> = (0u8..=255)
            .cycle()
            .take(4096)
            .map(|b| vec![b; 4096])
            .collect();
        // a block kept at the end, so the others cannot go back by shrinking the top
        let keep = vec![1u8; 4096];
        drop(blocks);
        let after = allocator::usage().free;
        assert!(
            after >= before + (8 << 20),
            "16 MiB freed, free bytes {before} -> {after}"
        );
        drop(keep);
    }
}
