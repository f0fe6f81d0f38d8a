//! `capacity`: C idle node connections; how fast they connect, failures, and the servers'
//! marginal resident memory per connection, on a fresh server ("fresh") and after every client
//! disconnected and reconnected at once ("after_storm").

use std::{collections::BTreeMap, sync::atomic::Ordering, time::Duration};

use super::{finish_errors, Setup};
use crate::{
    fleet::Fleet,
    receiver::{RelaySchedule, Shared},
    report::round3,
    sysstat::rss_sum_kib,
};

pub(super) async fn run(setup: &Setup, connections: usize, settle: f64) -> anyhow::Result<()> {
    let c = &setup.common;
    let settle = Duration::from_secs_f64(settle);
    let plan = setup.plan(connections);
    let baseline = rss_sum_kib(&c.server_pids);
    let mut disconnected = None;
    for phase in ["fresh", "after_storm"] {
        let mut errors = BTreeMap::new();
        let t = std::time::Instant::now();
        let fleet = Fleet::start(
            &setup.ctx,
            plan.clone(),
            Shared::new(RelaySchedule::default()),
            &setup.fleet_options(),
        );
        let synced = setup.wait_all_synced(&fleet, &mut errors).await;
        let connect_s = t.elapsed().as_secs_f64();
        tokio::time::sleep(settle).await;
        let after = rss_sum_kib(&c.server_pids);
        let mut line = setup.line("capacity", &plan);
        line.phase = Some(phase);
        line.connections = Some(connections as u64);
        line.connected = Some(fleet.state.connected_total.load(Ordering::Acquire));
        line.synced = Some(synced);
        line.failed = Some(fleet.state.failed.load(Ordering::Acquire));
        line.attempts = Some(fleet.state.attempts.load(Ordering::Acquire));
        line.connect_s = Some(round3(connect_s));
        line.connect_per_s = Some(round3(synced as f64 / connect_s.max(1e-9)));
        line.rss_before_kib = baseline;
        line.rss_disconnected_kib = disconnected;
        line.rss_after_kib = after;
        line.kib_per_connection = match (baseline, after) {
            (Some(b), Some(a)) if synced > 0 => Some(round3((a as f64 - b as f64) / synced as f64)),
            _ => None,
        };
        finish_errors(&mut line, &fleet, errors);
        line.print();
        fleet.close().await;
        tokio::time::sleep(settle).await;
        disconnected = rss_sum_kib(&c.server_pids);
    }
    Ok(())
}
