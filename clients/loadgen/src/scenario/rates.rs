//! The rate-sweep scenarios, `fanout` and `relay`: one step per offered rate, each measured by
//! every process over its own clients and merged by the parent into one line.
//!
//! `fanout` publishes `new_task` through RabbitMQ (the parent only). `relay` has nodes emit
//! `algorithm_status_change` for their own runs; the server looks up the run's `job_id` and
//! re-emits the rebuilt payload to the collaboration (the sender included), so deliveries are
//! keyed by `run_id`: event `j` of a step is the `j / R`-th event of run `j % R`, scheduled at
//! `t0 + j / rate`, and a client's `k`-th delivery of a run is that run's `k`-th event (one
//! sender per run, in order). Relay latency is measured from the scheduled time (open loop).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use socketioxide_amqp::DataFormat;
use tokio::time::Instant;

use super::{
    drain, finish_errors,
    peers::{Parent, Part, Peers, ToWorker},
    Setup, StepResult,
};
use crate::{
    cli::Topology,
    client::Command,
    fleet::{Fleet, Plan},
    publisher::{pace, Pacing, Publisher},
    receiver::{RelaySchedule, Shared},
    stats::{now_us, whole, Tally},
    sysstat::CpuWindow,
    wire,
};

/// Which rate scenario.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// `new_task` through RabbitMQ.
    Fanout(Option<Topology>),
    /// `algorithm_status_change` from the nodes.
    Relay,
}

/// One run the relay emits for (global order: the same in every process).
struct RelayRun {
    /// Local fleet member owning it, if its node is served by this process.
    member: Option<usize>,
    /// Collaboration id.
    collab_id: u64,
    /// The `42/tasks,[…]` packet the node sends.
    packet: Arc<str>,
}

/// This process's role.
enum Role {
    /// Prints the lines; with workers when `--processes` > 1.
    Parent(Peers),
    /// Worker `k`.
    Worker(Parent),
}

/// Runs `fanout` or `relay` (as the parent, or as worker `--worker k`).
pub(super) async fn run(
    setup: &Setup,
    kind: Kind,
    rates: &[f64],
    duration: f64,
) -> anyhow::Result<()> {
    let c = &setup.common;
    let processes = setup.processes();
    let full = setup.plan(setup.fixture.nodes.len());
    let local = setup.local_plan(setup.fixture.nodes.len());
    let mut role = match c.worker {
        Some(_) => Role::Worker(Parent::new()),
        None if processes > 1 => Role::Parent(Peers::spawn(processes)?),
        None => Role::Parent(Peers::none()),
    };
    let publisher = match (kind, &role) {
        (Kind::Fanout(_), Role::Parent(_)) => {
            let format: DataFormat = c
                .message_queue_format
                .parse()
                .map_err(|e| anyhow::anyhow!("--message-queue-format: {e}"))?;
            Some(Publisher::connect(&c.amqp_uri, &c.exchange, format).await?)
        }
        _ => None,
    };
    let full_size: HashMap<u64, usize> = full
        .collabs
        .iter()
        .map(|col| (col.id, col.members.len()))
        .collect();

    // The relay's runs, and the schedule the receivers read.
    let mut schedule = RelaySchedule::default();
    let mut runs = Vec::new();
    if matches!(kind, Kind::Relay) {
        runs = relay_runs(setup, &full, &local, &mut schedule)?;
    }
    let fleet = Fleet::start(
        &setup.ctx,
        local.clone(),
        Shared::new(schedule),
        &setup.fleet_options(),
    );
    let mut errors = BTreeMap::new();
    let synced_here = setup.wait_all_synced(&fleet, &mut errors).await;
    fleet
        .wait_quiet(
            Duration::from_secs_f64(c.quiet_period),
            Duration::from_secs_f64(c.sync_timeout),
        )
        .await;

    // What a step is made of.
    let topology = match kind {
        Kind::Fanout(t) => Some(t.unwrap_or(if full.collabs.len() > 1 {
            Topology::Collabs
        } else {
            Topology::One
        })),
        Kind::Relay => None,
    };
    let targets: Vec<u64> = match topology {
        Some(Topology::One) => full
            .collabs
            .iter()
            .max_by_key(|col| col.members.len())
            .map(|col| col.id)
            .into_iter()
            .collect(),
        Some(Topology::Collabs) => full.collabs.iter().map(|col| col.id).collect(),
        None => Vec::new(),
    };
    let sizes: Vec<usize> = match kind {
        Kind::Fanout(_) => targets.iter().map(|id| full_size[id]).collect(),
        Kind::Relay => runs.iter().map(|r| full_size[&r.collab_id]).collect(),
    };
    let mean_room = sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64;
    let local_index: HashMap<u64, usize> = fleet
        .collabs
        .iter()
        .enumerate()
        .map(|(i, col)| (col.id, i))
        .collect();
    let synced_in = |collab_id: u64| -> u64 {
        local_index.get(&collab_id).map_or(0, |&i| {
            fleet.state.synced_by_collab[i].load(Ordering::Acquire)
        })
    };

    match &mut role {
        Role::Worker(parent) => {
            parent.answer(&super::peers::FromWorker::Ready {
                synced: synced_here,
            });
            loop {
                let ToWorker::Begin {
                    step,
                    start_us,
                    period_ps,
                    total,
                } = parent.next().await
                else {
                    break;
                };
                fleet.shared.recorder.begin(step);
                fleet.shared.relay.set(start_us, period_ps, total);
                let cpu = CpuWindow::start(&[]);
                let mut step_errors = BTreeMap::new();
                let mut skipped = 0;
                if matches!(kind, Kind::Relay) {
                    let per_s = 1e12 / period_ps.max(1) as f64;
                    let start = instant_of(start_us);
                    relay_pace(
                        &fleet,
                        &runs,
                        start,
                        per_s,
                        total,
                        &mut step_errors,
                        &mut skipped,
                        &synced_in,
                    )
                    .await;
                }
                let ToWorker::Finish { events_by_collab } = parent.next().await else {
                    break;
                };
                let expected = expected_for(kind, &runs, total, &events_by_collab, &synced_in)
                    .saturating_sub(skipped);
                drain(&fleet, expected, Duration::from_secs_f64(c.drain_timeout)).await;
                let own = cpu.finish().own_pct;
                let tally = fleet.shared.recorder.finish();
                for (k, n) in fleet.state.take_errors() {
                    *step_errors.entry(k).or_default() += n;
                }
                let lost = fleet.state.lost.swap(0, Ordering::AcqRel);
                if lost > 0 {
                    *step_errors.entry("sessions lost".to_owned()).or_default() += lost;
                }
                parent.answer(&super::peers::FromWorker::Part(Part::new(
                    &tally,
                    expected,
                    own,
                    step_errors,
                )));
            }
            fleet.close().await;
            return Ok(());
        }
        Role::Parent(peers) => {
            let synced_all = synced_here + peers.ready().await?;
            let n = full.members.len() as u64;
            if processes > 1 && synced_all < n {
                errors.insert(format!("only {synced_all} of {n} clients synced"), 1);
            }
        }
    }
    let Role::Parent(mut peers) = role else {
        unreachable!("workers returned above")
    };

    for (i, &rate) in rates.iter().enumerate() {
        let step = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let events_per_s = rate / mean_room.max(1.0);
        let total = whole((events_per_s * duration).round());
        let period_ps = whole(1e12 / events_per_s.max(1e-9));
        // A start a little ahead, so that the workers are told before it.
        let lead = Duration::from_millis(if processes > 1 { 50 } else { 20 });
        let start = Instant::now() + lead;
        let start_us = now_us() + whole(lead.as_secs_f64() * 1e6);
        peers
            .send(&ToWorker::Begin {
                step,
                start_us,
                period_ps,
                total,
            })
            .await?;
        let recorder = &fleet.shared.recorder;
        recorder.begin(step);
        fleet.shared.relay.set(start_us, period_ps, total);
        let cpu = CpuWindow::start(&c.server_pids);
        let mut step_errors = errors.clone();
        let mut skipped = 0;
        let mut events_by_collab: BTreeMap<u64, u64> = BTreeMap::new();
        let pacing = match (&publisher, kind) {
            (Some(publisher), _) => {
                let mut seqs = vec![0u64; targets.len()];
                let p = pace(start, events_per_s, total, |j| {
                    let t = (j % targets.len() as u64) as usize;
                    let seq = seqs[t];
                    seqs[t] += 1;
                    let p = publisher.clone();
                    let id = targets[t];
                    async move { p.new_task(id, step, seq).await }
                })
                .await;
                let failures = publisher.flush().await;
                if failures > 0 {
                    *step_errors.entry("publish failed".to_owned()).or_default() += failures;
                }
                for (t, &id) in targets.iter().enumerate() {
                    events_by_collab.insert(id, seqs[t]);
                }
                p
            }
            (None, _) => {
                relay_pace(
                    &fleet,
                    &runs,
                    start,
                    events_per_s,
                    total,
                    &mut step_errors,
                    &mut skipped,
                    &synced_in,
                )
                .await
            }
        };
        let events_by_collab: Vec<(u64, u64)> = events_by_collab.into_iter().collect();
        peers
            .send(&ToWorker::Finish {
                events_by_collab: events_by_collab.clone(),
            })
            .await?;
        let expected_here =
            expected_for(kind, &runs, total, &events_by_collab, &synced_in).saturating_sub(skipped);
        drain(
            &fleet,
            expected_here,
            Duration::from_secs_f64(c.drain_timeout),
        )
        .await;
        let mut tally = recorder.finish();
        let parts = peers.parts().await?;
        let mut cpu = cpu.finish();
        let mut expected = expected_here;
        merge_parts(
            parts,
            &mut tally,
            &mut expected,
            &mut cpu.own_pct,
            &mut step_errors,
        );
        let result = StepResult {
            offered: rate,
            duration,
            events: total,
            expected,
            tally,
            start_us,
            cpu,
            pacing,
        };
        let mut line = setup.line(
            match kind {
                Kind::Fanout(_) => "fanout",
                Kind::Relay => "relay",
            },
            &full,
        );
        line.topology = topology.map(Topology::name);
        line.processes = (processes > 1).then_some(processes as u64);
        result.fill(&mut line, &mut step_errors);
        finish_errors(&mut line, &fleet, step_errors);
        line.print();
        tokio::time::sleep(Duration::from_secs_f64(c.pause)).await;
    }
    peers.quit().await;
    fleet.close().await;
    if let Some(p) = publisher {
        p.close().await;
    }
    Ok(())
}

/// The workers' parts merged into the parent's figures.
fn merge_parts(
    parts: Vec<Part>,
    tally: &mut Tally,
    expected: &mut u64,
    cpu_pct: &mut Option<f64>,
    errors: &mut BTreeMap<String, u64>,
) {
    for mut part in parts {
        tally.merge(&part.tally());
        *expected += part.expected;
        if let (Some(a), Some(b)) = (cpu_pct.as_mut(), part.cpu_pct) {
            *a += b;
        }
        for (k, n) in part.errors {
            *errors.entry(k).or_default() += n;
        }
    }
}

/// The deliveries this process's clients should receive in a step: per published event, the
/// clients of its room synced here (read at the end of the step).
fn expected_for(
    kind: Kind,
    runs: &[RelayRun],
    total: u64,
    events_by_collab: &[(u64, u64)],
    synced_in: &dyn Fn(u64) -> u64,
) -> u64 {
    match kind {
        Kind::Fanout(_) => events_by_collab
            .iter()
            .map(|&(id, events)| events * synced_in(id))
            .sum(),
        Kind::Relay => {
            let r = runs.len() as u64;
            runs.iter()
                .enumerate()
                .map(|(i, run)| {
                    let events = total / r + u64::from((i as u64) < total % r);
                    events * synced_in(run.collab_id)
                })
                .sum()
        }
    }
}

/// Sends this process's share of a relay step: event `j` by the node of run `j % R` if it is
/// served here. Events whose node is not synced (or whose queue is full) are not sent: counted
/// in `errors`, and their room's clients here in `skipped`.
#[allow(clippy::too_many_arguments)]
async fn relay_pace(
    fleet: &Fleet,
    runs: &[RelayRun],
    start: Instant,
    per_s: f64,
    total: u64,
    errors: &mut BTreeMap<String, u64>,
    skipped: &mut u64,
    synced_in: &dyn Fn(u64) -> u64,
) -> Pacing {
    pace(start, per_s, total, |j| {
        let run = &runs[(j % runs.len() as u64) as usize];
        if let Some(member) = run.member {
            let sent = fleet.state.member_synced[member].load(Ordering::Acquire)
                && fleet.members[member]
                    .commands
                    .try_send(Command::Send(run.packet.to_string()))
                    .is_ok();
            if !sent {
                *errors
                    .entry("relay sender not ready".to_owned())
                    .or_default() += 1;
                *skipped += synced_in(run.collab_id);
            }
        }
        async {}
    })
    .await
}

/// The `Instant` of a time in µs since the epoch.
fn instant_of(us: u64) -> Instant {
    let now_i = Instant::now();
    let now = now_us();
    if us >= now {
        now_i + Duration::from_micros(us - now)
    } else {
        now_i
            .checked_sub(Duration::from_micros(now - us))
            .unwrap_or(now_i)
    }
}

/// The runs the relay emits for, in the same order in every process, and the receivers' table.
fn relay_runs(
    setup: &Setup,
    full: &Plan,
    local: &Plan,
    schedule: &mut RelaySchedule,
) -> anyhow::Result<Vec<RelayRun>> {
    let used: std::collections::HashSet<u64> =
        full.members.iter().map(|(s, _)| s.node_id).collect();
    let mut owner: HashMap<u64, usize> = HashMap::new();
    for (i, (spec, _)) in local.members.iter().enumerate() {
        owner.entry(spec.node_id).or_insert(i);
    }
    let local_index: HashMap<u64, usize> = local
        .collabs
        .iter()
        .enumerate()
        .map(|(i, col)| (col.id, i))
        .collect();
    let org_of: HashMap<u64, u64> = setup
        .fixture
        .nodes
        .iter()
        .map(|n| (n.id, n.organization_id))
        .collect();
    schedule.runs_per_collab = vec![0; local.collabs.len()];
    let mut pos_in: HashMap<u64, u32> = HashMap::new();
    let mut runs = Vec::new();
    for r in setup
        .fixture
        .runs
        .iter()
        .filter(|r| used.contains(&r.node_id))
    {
        let pos = pos_in.entry(r.collaboration_id).or_default();
        let index = u32::try_from(runs.len())?;
        schedule.runs.insert(r.id, (index, *pos));
        *pos += 1;
        if let Some(&i) = local_index.get(&r.collaboration_id) {
            schedule.runs_per_collab[i] = schedule.runs_per_collab[i].max(*pos);
        }
        let payload = serde_json::json!({
            "run_id": r.id, "task_id": r.task_id, "collaboration_id": r.collaboration_id,
            "status": "active", "node_id": r.node_id,
            "organization_id": org_of.get(&r.node_id).copied().unwrap_or(r.organization_id),
            "parent_id": null,
        });
        runs.push(RelayRun {
            member: owner.get(&r.node_id).copied(),
            collab_id: r.collaboration_id,
            packet: wire::event_packet("algorithm_status_change", &payload.to_string()).into(),
        });
    }
    anyhow::ensure!(
        !runs.is_empty(),
        "the fixture has no runs of the nodes used"
    );
    schedule.total_runs = runs.len() as u64;
    Ok(runs)
}
