//! `fanout`: `new_task` published through RabbitMQ to collaboration rooms at offered rates.

use std::{collections::BTreeMap, sync::atomic::Ordering, time::Duration};

use socketioxide_amqp::DataFormat;

use super::{drain, finish_errors, start_soon, Setup, StepResult};
use crate::{
    cli::Topology,
    fleet::Fleet,
    publisher::{pace, Publisher},
    receiver::{RelaySchedule, Shared},
    stats::whole,
    sysstat::CpuWindow,
};

pub(super) async fn run(
    setup: &Setup,
    rates: &[f64],
    duration: f64,
    topology: Option<Topology>,
) -> anyhow::Result<()> {
    let c = &setup.common;
    let format: DataFormat = c
        .message_queue_format
        .parse()
        .map_err(|e| anyhow::anyhow!("--message-queue-format: {e}"))?;
    let publisher = Publisher::connect(&c.amqp_uri, &c.exchange, format).await?;
    let plan = setup.plan(setup.fixture.nodes.len());
    let topology = topology.unwrap_or(if plan.collabs.len() > 1 {
        Topology::Collabs
    } else {
        Topology::One
    });
    let fleet = Fleet::start(
        &setup.ctx,
        plan.clone(),
        Shared::new(RelaySchedule::default()),
        &setup.fleet_options(),
    );
    let mut errors = BTreeMap::new();
    setup.wait_all_synced(&fleet, &mut errors).await;
    // The rooms published to (collaboration indexes).
    let targets: Vec<usize> = match topology {
        Topology::One => (0..fleet.collabs.len())
            .max_by_key(|&i| fleet.collabs[i].members.len())
            .into_iter()
            .collect(),
        Topology::Collabs => (0..fleet.collabs.len()).collect(),
    };
    let mean_room = targets
        .iter()
        .map(|&i| fleet.collabs[i].members.len())
        .sum::<usize>() as f64
        / targets.len().max(1) as f64;
    for (i, &rate) in rates.iter().enumerate() {
        let step = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let events_per_s = rate / mean_room.max(1.0);
        let total = whole((events_per_s * duration).round());
        let recorder = &fleet.shared.recorder;
        recorder.begin(step);
        let cpu = CpuWindow::start(&c.server_pids);
        let (start, start_us) = start_soon();
        let mut seqs = vec![0u64; targets.len()];
        let mut expected = 0u64;
        let pacing = pace(start, events_per_s, total, |j| {
            let t = (j % targets.len() as u64) as usize;
            let collab = targets[t];
            let seq = seqs[t];
            seqs[t] += 1;
            expected += fleet.state.synced_by_collab[collab].load(Ordering::Acquire);
            let p = publisher.clone();
            let id = fleet.collabs[collab].id;
            async move { p.new_task(id, step, seq).await }
        })
        .await;
        let failures = publisher.flush().await;
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
        let mut line = setup.line("fanout", &plan);
        line.topology = Some(topology.name());
        let mut step_errors = errors.clone();
        if failures > 0 {
            *step_errors.entry("publish failed".to_owned()).or_default() += failures;
        }
        result.fill(&mut line, &mut step_errors);
        finish_errors(&mut line, &fleet, step_errors);
        line.print();
        tokio::time::sleep(Duration::from_secs_f64(c.pause)).await;
    }
    fleet.close().await;
    publisher.close().await;
    Ok(())
}
