//! The scenarios, each printing one JSON line per measurement.

mod capacity;
mod peers;
mod rates;
mod restart;

use std::{collections::BTreeMap, sync::atomic::Ordering, time::Duration};

use anyhow::Context as _;

use self::peers::Peers;

use crate::{
    cli::{Args, Common, Scenario},
    client::ClientCtx,
    fixture::Fixture,
    fleet::{Fleet, FleetOptions, Plan},
    report::{error_list, round3, Line},
    stats::Tally,
    sysstat::CpuUse,
    token::Minter,
    transport::{polling, Endpoint},
};

/// What every scenario starts from.
pub struct Setup {
    /// The flags.
    pub common: Common,
    /// The fixture (nodes truncated to `--nodes`).
    pub fixture: Fixture,
    /// The clients' shared context.
    pub ctx: ClientCtx,
}

impl Setup {
    fn new(common: Common) -> anyhow::Result<Self> {
        let mut fixture = Fixture::load(&common.fixture)?;
        fixture.truncate_nodes(common.nodes);
        let minter = Minter::from_fixture(&fixture)?;
        let endpoints = common
            .urls
            .iter()
            .map(|u| Endpoint::parse(u, &common.path))
            .collect::<Result<Vec<_>, _>>()
            .context("--url")?;
        let ctx = ClientCtx {
            endpoints,
            http: polling::http_client()?,
            minter,
            connect_timeout: Duration::from_secs_f64(common.connect_timeout),
        };
        Ok(Self {
            common,
            fixture,
            ctx,
        })
    }

    /// Fleet options for this run.
    fn fleet_options(&self) -> FleetOptions {
        FleetOptions {
            concurrency: self.common.connect_concurrency,
            reconnect: None,
        }
    }

    /// A plan of `count` clients, or shard `(k, P)` of it.
    fn plan_shard(&self, count: usize, shard: (usize, usize)) -> Plan {
        Plan::new(
            &self.fixture,
            count,
            self.ctx.endpoints.len(),
            self.common.polling_share,
            shard,
        )
    }

    /// A plan of `count` clients.
    fn plan(&self, count: usize) -> Plan {
        self.plan_shard(count, (0, 1))
    }

    /// Processes of the run (`--processes`, at least 1).
    fn processes(&self) -> usize {
        self.common.processes.max(1)
    }

    /// This process's share of a plan of `count` clients (client `i` belongs to process
    /// `i mod P`; the parent is process 0).
    fn local_plan(&self, count: usize) -> Plan {
        self.plan_shard(count, (self.common.worker.unwrap_or(0), self.processes()))
    }

    /// The parent's handle on its workers (none with one process). Capacity and restart have
    /// fewer clients than the fixture may have nodes: every process must get one at least.
    fn spawn_workers(&self, clients: usize) -> anyhow::Result<Peers> {
        let processes = self.processes();
        anyhow::ensure!(
            processes <= clients.max(1),
            "--processes {processes} is more than the {clients} clients"
        );
        if processes > 1 {
            Peers::spawn(processes)
        } else {
            Ok(Peers::none())
        }
    }

    /// A line with the fields every scenario fills.
    fn line(&self, scenario: &'static str, plan: &Plan) -> Line {
        Line {
            scenario,
            label: self.common.label.clone(),
            urls: self.common.urls.clone(),
            nodes: plan.members.len() as u64,
            transport: plan.transports(),
            ..Line::default()
        }
    }

    /// Waits for the fleet to be synced; a shortfall becomes an error of the lines.
    async fn wait_all_synced(&self, fleet: &Fleet, errors: &mut BTreeMap<String, u64>) -> u64 {
        let synced = self.wait_synced(fleet).await;
        note_shortfall(errors, synced, fleet.members.len() as u64);
        synced
    }

    /// Waits for the fleet to be synced (at most `--sync-timeout`); the clients synced.
    async fn wait_synced(&self, fleet: &Fleet) -> u64 {
        let n = fleet.members.len() as u64;
        let t = std::time::Instant::now();
        fleet
            .wait_synced(n, Duration::from_secs_f64(self.common.sync_timeout))
            .await;
        let synced = fleet.state.synced();
        tracing::info!(
            synced,
            of = n,
            secs = t.elapsed().as_secs_f64(),
            "clients synced"
        );
        synced
    }
}

/// `only S of N clients synced` when S < N.
fn note_shortfall(errors: &mut BTreeMap<String, u64>, synced: u64, n: u64) {
    if synced < n {
        *errors
            .entry(format!("only {synced} of {n} clients synced"))
            .or_default() += 1;
    }
}

/// Runs the chosen scenario.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let setup = Setup::new(args.common)?;
    match args.scenario {
        Scenario::Fanout {
            rates,
            duration,
            topology,
        } => rates::run(&setup, rates::Kind::Fanout(topology), &rates, duration).await,
        Scenario::Relay { rates, duration } => {
            rates::run(&setup, rates::Kind::Relay, &rates, duration).await
        }
        Scenario::Capacity {
            connections,
            settle,
        } => capacity::run(&setup, connections, settle).await,
        Scenario::Restart {
            connections,
            reconnection_delay,
            reconnection_delay_max,
            randomization_factor,
            restart_timeout,
        } => {
            let backoff = crate::client::Backoff {
                delay: Duration::from_secs_f64(reconnection_delay),
                max: Duration::from_secs_f64(reconnection_delay_max),
                randomization: randomization_factor,
            };
            restart::run(&setup, connections, backoff, restart_timeout).await
        }
    }
}

/// Waits until `expected` deliveries were seen in the current step, or `timeout`.
async fn drain(fleet: &Fleet, expected: u64, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while fleet.shared.recorder.seen_so_far() < expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One rate step's measurement, filled into a line.
struct StepResult {
    offered: f64,
    duration: f64,
    events: u64,
    expected: u64,
    tally: Tally,
    start_us: u64,
    cpu: CpuUse,
    pacing: crate::publisher::Pacing,
}

impl StepResult {
    fn fill(&self, line: &mut Line, errors: &mut BTreeMap<String, u64>) {
        let t = &self.tally;
        line.offered_per_s = Some(self.offered);
        line.duration_s = Some(self.duration);
        line.events = Some(self.events);
        line.events_per_s = Some(round3(self.events as f64 / self.duration.max(1e-9)));
        line.expected = Some(self.expected);
        line.delivered = Some(t.delivered);
        line.lost = Some(self.expected.saturating_sub(t.delivered));
        line.duplicated = Some(t.duplicated);
        line.stale = Some(t.stale);
        let window_s = t.last_delivery_us.saturating_sub(self.start_us) as f64 / 1e6;
        line.deliveries_per_s = (t.delivered > 0 && window_s > 0.0)
            .then(|| round3(t.delivered as f64 / window_s.max(self.duration)));
        line.latency_ms = t.latency_ms();
        let planned = Duration::from_secs_f64(self.duration);
        line.publisher_lag_ms = Some(round3(self.pacing.max_lag.as_secs_f64() * 1000.0));
        line.publisher_behind = Some(self.pacing.behind(planned));
        if self.pacing.behind(planned) {
            *errors
                .entry(format!(
                    "publisher fell behind: {:.1} s for {:.1} s planned, max lag {:.0} ms",
                    self.pacing.elapsed.as_secs_f64(),
                    self.duration,
                    self.pacing.max_lag.as_secs_f64() * 1000.0
                ))
                .or_default() += 1;
        }
        line.loadgen_cpu_pct = self.cpu.own_pct.map(round3);
        line.loadgen_saturated = self.cpu.own_pct.map(|p| p > 90.0);
        line.server_cpu_pct = self.cpu.servers_pct.map(round3);
        line.server_cpu_us_per_delivery = self
            .cpu
            .servers_cpu_s
            .filter(|_| t.delivered > 0)
            .map(|s| round3(s * 1e6 / t.delivered as f64));
        if t.errors > 0 {
            *errors
                .entry("unparsed or foreign packets".to_owned())
                .or_default() += t.errors;
        }
    }
}

/// Adds the fleet's errors and lost sessions to `errors` and sets them on the line.
fn finish_errors(line: &mut Line, fleet: &Fleet, mut errors: BTreeMap<String, u64>) {
    add_errors(&mut errors, take_fleet_errors(fleet));
    line.errors = error_list(&errors);
}

/// The fleet's errors and lost sessions so far (both reset).
fn take_fleet_errors(fleet: &Fleet) -> BTreeMap<String, u64> {
    let mut errors = fleet.state.take_errors();
    let lost = fleet.state.lost.swap(0, Ordering::AcqRel);
    if lost > 0 {
        *errors.entry("sessions lost".to_owned()).or_default() += lost;
    }
    errors
}

/// Adds the counts of `more` to `errors`.
fn add_errors(errors: &mut BTreeMap<String, u64>, more: BTreeMap<String, u64>) {
    for (k, n) in more {
        *errors.entry(k).or_default() += n;
    }
}
