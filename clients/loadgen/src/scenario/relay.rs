//! `relay`: nodes emit `algorithm_status_change` for their own runs; the server looks up the
//! run's `job_id` and re-emits it to the collaboration (the sender included). The server
//! rebuilds the payload, so deliveries are keyed by `run_id`: event `j` of a step is the
//! `j / R`-th event of run `j % R`, scheduled at `t0 + j / rate`, and a client's `k`-th
//! delivery of a run is that run's `k`-th event (one sender per run, in order). Latency is
//! measured from the scheduled time (open loop: a late sender shows as latency too).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use super::{drain, finish_errors, start_soon, Setup, StepResult};
use crate::{
    client::Command,
    fleet::Fleet,
    publisher::pace,
    receiver::{RelaySchedule, Shared},
    stats::whole,
    sysstat::CpuWindow,
    wire,
};

/// One run the relay emits for.
struct RelayRun {
    /// Fleet member that owns it (its node).
    member: usize,
    /// Collaboration index.
    collab: u32,
    /// The `42/tasks,[…]` packet the node sends.
    packet: Arc<str>,
}

pub(super) async fn run(setup: &Setup, rates: &[f64], duration: f64) -> anyhow::Result<()> {
    let c = &setup.common;
    let plan = setup.plan(setup.fixture.nodes.len());
    // The first member of each node id owns that node's runs.
    let mut member_of: HashMap<u64, usize> = HashMap::new();
    for (i, (spec, _)) in plan.members.iter().enumerate() {
        member_of.entry(spec.node_id).or_insert(i);
    }
    let mut schedule = RelaySchedule::default();
    schedule.runs_per_collab = vec![0; plan.collabs.len()];
    let mut runs = Vec::new();
    for r in &setup.fixture.runs {
        let Some(&member) = member_of.get(&r.node_id) else {
            continue;
        };
        let collab = plan.members[member].1;
        let pos = schedule.runs_per_collab[collab as usize];
        schedule.runs_per_collab[collab as usize] += 1;
        schedule
            .runs
            .insert(r.id, (u32::try_from(runs.len())?, pos));
        let node = &setup.fixture.nodes.iter().find(|n| n.id == r.node_id);
        let payload = serde_json::json!({
            "run_id": r.id, "task_id": r.task_id, "collaboration_id": r.collaboration_id,
            "status": "active", "node_id": r.node_id,
            "organization_id": node.map_or(r.organization_id, |n| n.organization_id),
            "parent_id": null,
        });
        runs.push(RelayRun {
            member,
            collab,
            packet: wire::event_packet("algorithm_status_change", &payload.to_string()).into(),
        });
    }
    anyhow::ensure!(
        !runs.is_empty(),
        "the fixture has no runs of the nodes used"
    );
    schedule.total_runs = runs.len() as u64;
    let fleet = Fleet::start(
        &setup.ctx,
        plan.clone(),
        Shared::new(schedule),
        &setup.fleet_options(),
    );
    let mut errors = BTreeMap::new();
    setup.wait_all_synced(&fleet, &mut errors).await;
    let mean_room = runs
        .iter()
        .map(|r| fleet.collabs[r.collab as usize].members.len())
        .sum::<usize>() as f64
        / runs.len() as f64;
    for (i, &rate) in rates.iter().enumerate() {
        let step = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let events_per_s = rate / mean_room.max(1.0);
        let total = whole((events_per_s * duration).round());
        let recorder = &fleet.shared.recorder;
        recorder.begin(step);
        let (start, start_us) = start_soon();
        let period_ps = whole(1e12 / events_per_s.max(1e-9));
        fleet.shared.relay.set(start_us, period_ps, total);
        let cpu = CpuWindow::start(&c.server_pids);
        let mut expected = 0u64;
        let mut step_errors = errors.clone();
        let pacing = pace(start, events_per_s, total, |j| {
            let run = &runs[(j % runs.len() as u64) as usize];
            let member = &fleet.members[run.member];
            if fleet.state.member_synced[run.member].load(Ordering::Acquire) {
                match member
                    .commands
                    .try_send(Command::Send(run.packet.to_string()))
                {
                    Ok(()) => {
                        expected += fleet.state.synced_by_collab[run.collab as usize]
                            .load(Ordering::Acquire);
                    }
                    Err(_) => {
                        *step_errors
                            .entry("relay sender busy".to_owned())
                            .or_default() += 1;
                    }
                }
            } else {
                *step_errors
                    .entry("relay sender not connected".to_owned())
                    .or_default() += 1;
            }
            async {}
        })
        .await;
        drain(&fleet, expected, Duration::from_secs_f64(c.drain_timeout)).await;
        let cpu = cpu.finish();
        let tally = recorder.finish();
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
        let mut line = setup.line("relay", &plan);
        result.fill(&mut line, &mut step_errors);
        finish_errors(&mut line, &fleet, step_errors);
        line.print();
        tokio::time::sleep(Duration::from_secs_f64(c.pause)).await;
    }
    fleet.close().await;
    Ok(())
}
