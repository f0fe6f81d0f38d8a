//! CPU time and resident memory of this process and of the servers, read from `/proc`.

use std::time::Instant;

/// Clock ticks per second of `/proc/*/stat` (Linux's `USER_HZ`, 100 on every mainstream
/// architecture; `getconf CLK_TCK`).
pub const CLOCK_TICKS_PER_S: f64 = 100.0;

/// `utime + stime` of `/proc/<pid>/stat` in ticks, or `None` when the process is gone or the
/// file is not understood. `pid` `None` is this process.
pub fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    parse_stat_ticks(&std::fs::read_to_string(path).ok()?)
}

/// `utime + stime` from the text of a `/proc/<pid>/stat` file.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is parenthesised and may hold spaces: count after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // after ')' come field 3 (state) onwards: utime is field 14, stime field 15
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` of `/proc/<pid>/status` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    parse_status_rss(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// `VmRSS` in KiB from the text of a `/proc/<pid>/status` file.
pub fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The summed `VmRSS` of several processes (KiB), `None` if any cannot be read.
pub fn rss_sum_kib(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| rss_kib(p)).sum()
}

/// CPU used by this process and by the servers over a window.
#[derive(Debug)]
pub struct CpuWindow {
    start: Instant,
    own: Option<u64>,
    servers: Vec<(u32, Option<u64>)>,
}

/// What a [`CpuWindow`] measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// This process's CPU, % of one core.
    pub own_pct: Option<f64>,
    /// The servers' CPU summed, % of one core (`None` without `--server-pid`).
    pub servers_pct: Option<f64>,
    /// The servers' CPU seconds summed.
    pub servers_cpu_s: Option<f64>,
}

impl CpuWindow {
    /// Starts a window now.
    pub fn start(servers: &[u32]) -> Self {
        Self {
            start: Instant::now(),
            own: cpu_ticks(None),
            servers: servers.iter().map(|&p| (p, cpu_ticks(Some(p)))).collect(),
        }
    }

    /// Ends the window.
    pub fn finish(&self) -> CpuUse {
        let wall_s = self.start.elapsed().as_secs_f64().max(1e-9);
        let pct = |ticks: u64| ticks as f64 / CLOCK_TICKS_PER_S / wall_s * 100.0;
        let own_pct = match (self.own, cpu_ticks(None)) {
            (Some(a), Some(b)) => Some(pct(b.saturating_sub(a))),
            _ => None,
        };
        let servers_ticks: Option<u64> = if self.servers.is_empty() {
            None
        } else {
            self.servers
                .iter()
                .map(|&(p, before)| Some(cpu_ticks(Some(p))?.saturating_sub(before?)))
                .sum()
        };
        CpuUse {
            own_pct,
            servers_pct: servers_ticks.map(pct),
            servers_cpu_s: servers_ticks.map(|t| t as f64 / CLOCK_TICKS_PER_S),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks() {
        let stat = "4242 (v6 socket (io)) S 1 4242 4242 0 -1 4194560 1503 0 0 0 157 42 0 0 20 0 5 0 9371 1056768000 3113 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat_ticks(stat), Some(199));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert!(cpu_ticks(None).is_some());
    }

    #[test]
    fn status_rss() {
        let status = "Name:\tv6-socketio\nVmPeak:\t  1000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss(status), Some(12345));
        assert_eq!(parse_status_rss("Name: x\n"), None);
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}
