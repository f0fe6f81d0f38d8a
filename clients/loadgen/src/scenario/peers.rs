//! `--processes P`: the parent re-executes itself as P-1 worker processes, each serving the
//! clients of one shard (client `i` belongs to shard `i mod P`; the parent serves shard 0 and
//! publishes). Workers talk JSON lines: commands on their stdin, answers on their stdout (their
//! logs go to stderr). Each process measures its own clients; the parent merges histograms
//! (hdrhistogram V2 serialization, base64) and counters into one line per step.

use std::{collections::BTreeMap, process::Stdio};

use anyhow::Context as _;
use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

use crate::stats::Tally;

/// What the parent tells a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToWorker {
    /// A step starts: its number, start (µs since the epoch), relay period (ps) and events.
    Begin {
        /// Step number.
        step: u32,
        /// Start, µs since the epoch.
        start_us: u64,
        /// Picoseconds between two events.
        period_ps: u64,
        /// Events of the step.
        total: u64,
    },
    /// The step's events were all issued; fanout: how many per collaboration id.
    Finish {
        /// `(collaboration id, events)`.
        events_by_collab: Vec<(u64, u64)>,
    },
    /// Capacity: start this process's clients and answer `Connected` once they are synced.
    Connect,
    /// Capacity: disconnect this process's clients and answer `Closed`.
    Disconnect,
    /// Disconnect every client and exit.
    Quit,
}

/// What a worker answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromWorker {
    /// Every client of the shard is synced (or the sync timeout passed).
    Ready {
        /// Synced clients.
        synced: u64,
    },
    /// A step's measurement.
    Part(Part),
    /// Capacity: this process's clients connected (or the sync timeout passed).
    Connected(ConnectPart),
    /// Capacity: this process's clients are disconnected.
    Closed,
    /// Restart: this process's clients after the servers' restart.
    Restarted(RestartPart),
}

/// One process's connect phase (capacity).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectPart {
    /// Clients of the process.
    pub clients: u64,
    /// Namespace CONNECT acknowledgements (every session).
    pub connected: u64,
    /// Clients synced when the wait ended.
    pub synced: u64,
    /// Attempts that did not reach `sync`.
    pub failed: u64,
    /// Connection attempts.
    pub attempts: u64,
    /// When the wait for `sync` ended (every client synced, or the timeout), µs since the epoch.
    pub done_us: u64,
    /// Errors counted by the process (a sync shortfall is the parent's, over all processes).
    pub errors: BTreeMap<String, u64>,
}

/// One process's view of a server restart (restart).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RestartPart {
    /// Clients of the process.
    pub clients: u64,
    /// Whether one of its sessions was lost (the server went away) within the timeout.
    pub went_away: bool,
    /// First lost session, µs since the epoch.
    pub lost_us: u64,
    /// Every server accepting connections again, µs since the epoch.
    pub back_us: u64,
    /// Every client synced again (or the timeout), µs since the epoch.
    pub done_us: u64,
    /// Clients synced at the end.
    pub synced: u64,
    /// Failed connection attempts after `back_us`.
    pub failed: u64,
    /// Connection attempts after `lost_us` (every client makes one at least).
    pub attempts: u64,
    /// Errors of the process (not the connection failures while the server was down).
    pub errors: BTreeMap<String, u64>,
}

/// One process's measurement of one step.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Part {
    /// Latency histogram, V2-serialized, base64.
    pub hist: String,
    /// First deliveries.
    pub delivered: u64,
    /// Repeated deliveries.
    pub duplicated: u64,
    /// Deliveries of an earlier step.
    pub stale: u64,
    /// Unparsed packets.
    pub unparsed: u64,
    /// Last delivery, µs since the epoch.
    pub last_delivery_us: u64,
    /// Deliveries this process's clients should have received.
    pub expected: u64,
    /// This process's CPU over the step, % of one core.
    pub cpu_pct: Option<f64>,
    /// Errors counted by this process.
    pub errors: BTreeMap<String, u64>,
}

impl Part {
    /// A part from a tally.
    pub fn new(
        tally: &Tally,
        expected: u64,
        cpu_pct: Option<f64>,
        errors: BTreeMap<String, u64>,
    ) -> Self {
        let mut bytes = Vec::new();
        if let Err(e) = V2Serializer::new().serialize(&tally.hist, &mut bytes) {
            tracing::error!(error = %e, "cannot serialize the histogram");
        }
        Self {
            hist: base64::engine::general_purpose::STANDARD.encode(bytes),
            delivered: tally.delivered,
            duplicated: tally.duplicated,
            stale: tally.stale,
            unparsed: tally.errors,
            last_delivery_us: tally.last_delivery_us,
            expected,
            cpu_pct,
            errors,
        }
    }

    /// The tally back (an unreadable histogram is an error string of the part).
    pub fn tally(&mut self) -> Tally {
        let mut t = Tally {
            delivered: self.delivered,
            duplicated: self.duplicated,
            stale: self.stale,
            errors: self.unparsed,
            last_delivery_us: self.last_delivery_us,
            ..Tally::default()
        };
        let hist = base64::engine::general_purpose::STANDARD
            .decode(&self.hist)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                Deserializer::new()
                    .deserialize::<u64, _>(&mut b.as_slice())
                    .map_err(|e| format!("{e:?}"))
            });
        match hist {
            Ok(h) => {
                let _ = t.hist.add(&h);
            }
            Err(e) => {
                *self
                    .errors
                    .entry(format!("unreadable worker histogram: {e}"))
                    .or_default() += 1;
            }
        }
        t
    }
}

/// The parent's handle on its workers.
pub struct Peers {
    workers: Vec<Worker>,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Peers {
    /// Starts `processes - 1` workers: this program with the same arguments plus `--worker k`.
    pub fn spawn(processes: usize) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("own executable")?;
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut workers = Vec::new();
        for k in 1..processes {
            let mut child = Command::new(&exe)
                .args(&args)
                .args(["--worker", &k.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("start a worker process")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
            workers.push(Worker {
                child,
                stdin,
                stdout,
            });
        }
        Ok(Self { workers })
    }

    /// No workers (one process).
    pub fn none() -> Self {
        Self {
            workers: Vec::new(),
        }
    }

    /// Sends a command to every worker.
    pub async fn send(&mut self, cmd: &ToWorker) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(cmd)?;
        line.push('\n');
        for w in &mut self.workers {
            w.stdin
                .write_all(line.as_bytes())
                .await
                .context("write to a worker")?;
            w.stdin.flush().await?;
        }
        Ok(())
    }

    /// One answer from every worker.
    pub async fn receive(&mut self) -> anyhow::Result<Vec<FromWorker>> {
        let mut out = Vec::new();
        for w in &mut self.workers {
            let line = w
                .stdout
                .next_line()
                .await?
                .context("a worker exited early")?;
            out.push(serde_json::from_str(&line).context("worker answer")?);
        }
        Ok(out)
    }

    /// Synced clients of every worker (waits for their `Ready`).
    pub async fn ready(&mut self) -> anyhow::Result<u64> {
        let mut synced = 0;
        for a in self.receive().await? {
            match a {
                FromWorker::Ready { synced: s } => synced += s,
                _ => anyhow::bail!("worker answered out of turn"),
            }
        }
        Ok(synced)
    }

    /// One answer of every worker, each of the kind `pick` takes.
    async fn answers<T>(&mut self, pick: fn(FromWorker) -> Option<T>) -> anyhow::Result<Vec<T>> {
        self.receive()
            .await?
            .into_iter()
            .map(|a| pick(a).context("worker answered out of turn"))
            .collect()
    }

    /// Every worker's part of the step.
    pub async fn parts(&mut self) -> anyhow::Result<Vec<Part>> {
        self.answers(|a| match a {
            FromWorker::Part(p) => Some(p),
            _ => None,
        })
        .await
    }

    /// Every worker's connect phase (capacity).
    pub async fn connected(&mut self) -> anyhow::Result<Vec<ConnectPart>> {
        self.answers(|a| match a {
            FromWorker::Connected(p) => Some(p),
            _ => None,
        })
        .await
    }

    /// Waits until every worker has disconnected its clients (capacity).
    pub async fn closed(&mut self) -> anyhow::Result<()> {
        for a in self.receive().await? {
            anyhow::ensure!(
                matches!(a, FromWorker::Closed),
                "worker answered out of turn"
            );
        }
        Ok(())
    }

    /// Every worker's view of the restart.
    pub async fn restarted(&mut self) -> anyhow::Result<Vec<RestartPart>> {
        self.answers(|a| match a {
            FromWorker::Restarted(p) => Some(p),
            _ => None,
        })
        .await
    }

    /// Tells the workers to quit and waits for them.
    pub async fn quit(mut self) {
        let _ = self.send(&ToWorker::Quit).await;
        for w in &mut self.workers {
            let _ = w.child.wait().await;
        }
    }
}

/// The worker side: reads commands from stdin, writes answers to stdout.
pub struct Parent {
    stdin: Lines<BufReader<tokio::io::Stdin>>,
    stdout: std::io::Stdout,
}

impl Parent {
    /// The parent on this process's stdin/stdout.
    pub fn new() -> Self {
        Self {
            stdin: BufReader::new(tokio::io::stdin()).lines(),
            stdout: std::io::stdout(),
        }
    }

    /// The next command (`Quit` when the parent is gone).
    pub async fn next(&mut self) -> ToWorker {
        match self.stdin.next_line().await {
            Ok(Some(line)) => serde_json::from_str(&line).unwrap_or_else(|e| {
                tracing::error!(error = %e, "bad command from the parent");
                ToWorker::Quit
            }),
            _ => ToWorker::Quit,
        }
    }

    /// Sends an answer.
    pub fn answer(&self, a: &FromWorker) {
        use std::io::Write as _;
        let written = serde_json::to_string(a)
            .map_err(std::io::Error::other)
            .and_then(|s| {
                let mut out = self.stdout.lock();
                writeln!(out, "{s}")?;
                out.flush()
            });
        if let Err(e) = written {
            tracing::error!(error = %e, "cannot answer the parent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_carry_histograms() {
        let mut t = Tally::default();
        t.hist.record(1500).expect("in range");
        t.hist.record(25_000).expect("in range");
        t.delivered = 2;
        t.duplicated = 1;
        let part = Part::new(&t, 3, Some(12.5), BTreeMap::new());
        let mut back: Part =
            serde_json::from_str(&serde_json::to_string(&part).expect("json")).expect("part");
        let u = back.tally();
        assert_eq!((u.delivered, u.duplicated, u.hist.len()), (2, 1, 2));
        assert_eq!(u.latency_ms(), t.latency_ms());
        assert!(back.errors.is_empty());
        back.hist = "not base64!".to_owned();
        let _ = back.tally();
        assert_eq!(back.errors.len(), 1);
    }
}
