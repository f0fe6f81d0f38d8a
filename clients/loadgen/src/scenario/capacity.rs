//! `capacity`: C idle node connections; how fast they connect, failures, and the servers'
//! marginal resident memory per connection, on a fresh server ("fresh") and after every client
//! disconnected and reconnected at once ("after_storm").
//!
//! With `--processes P` every worker says `Ready` once started; then every process connects its
//! share of the clients (client `i`: process `i mod P`) when the parent says `Connect`, waits for
//! them, lets the servers settle and answers with its counters; the parent adds them up, reads
//! the servers' memory once and prints the line. `Disconnect` closes every process's clients
//! before the next phase.

use std::{collections::BTreeMap, sync::atomic::Ordering, time::Duration};

use super::{
    add_errors, finish_errors, note_shortfall,
    peers::{ConnectPart, FromWorker, Parent, ToWorker},
    take_fleet_errors, Setup,
};
use crate::{
    fleet::{Fleet, Plan},
    receiver::{RelaySchedule, Shared},
    report::round3,
    stats::now_us,
    sysstat::rss_sum_kib,
};

pub(super) async fn run(setup: &Setup, connections: usize, settle: f64) -> anyhow::Result<()> {
    let settle = Duration::from_secs_f64(settle);
    let local = setup.local_plan(connections);
    if setup.common.worker.is_some() {
        worker(setup, &local, settle).await;
        return Ok(());
    }
    let c = &setup.common;
    let full = setup.plan(connections);
    let processes = setup.processes();
    let mut peers = setup.spawn_workers(connections)?;
    // the workers have read the fixture: their start-up is not part of the connect time
    peers.ready().await?;
    let baseline = rss_sum_kib(&c.server_pids);
    let mut disconnected = None;
    for phase in ["fresh", "after_storm"] {
        let start_us = now_us();
        peers.send(&ToWorker::Connect).await?;
        let (fleet, own) = connect(setup, local.clone(), settle).await;
        let mut parts = vec![own];
        parts.extend(peers.connected().await?);
        let merged = merge_connect(&parts, start_us);
        // every process waited `settle` after its clients were synced
        let after = rss_sum_kib(&c.server_pids);
        let mut line = setup.line("capacity", &full);
        line.processes = (processes > 1).then_some(processes as u64);
        line.phase = Some(phase);
        line.connections = Some(connections as u64);
        line.connected = Some(merged.connected);
        line.synced = Some(merged.synced);
        line.failed = Some(merged.failed);
        line.attempts = Some(merged.attempts);
        line.connect_s = Some(round3(merged.connect_s));
        line.connect_per_s = Some(round3(merged.synced as f64 / merged.connect_s.max(1e-9)));
        line.rss_before_kib = baseline;
        line.rss_disconnected_kib = disconnected;
        line.rss_after_kib = after;
        line.kib_per_connection = match (baseline, after) {
            (Some(b), Some(a)) if merged.synced > 0 => {
                Some(round3((a as f64 - b as f64) / merged.synced as f64))
            }
            _ => None,
        };
        finish_errors(&mut line, &fleet, merged.errors);
        line.print();
        peers.send(&ToWorker::Disconnect).await?;
        fleet.close().await;
        peers.closed().await?;
        tokio::time::sleep(settle).await;
        disconnected = rss_sum_kib(&c.server_pids);
    }
    peers.quit().await;
    Ok(())
}

/// Worker `k`: connects its clients on `Connect`, closes them on `Disconnect`.
async fn worker(setup: &Setup, local: &Plan, settle: Duration) {
    let mut parent = Parent::new();
    parent.answer(&FromWorker::Ready { synced: 0 });
    let mut fleet: Option<Fleet> = None;
    loop {
        match parent.next().await {
            ToWorker::Connect => {
                if let Some(f) = fleet.take() {
                    f.close().await;
                }
                let (f, part) = connect(setup, local.clone(), settle).await;
                fleet = Some(f);
                parent.answer(&FromWorker::Connected(part));
            }
            ToWorker::Disconnect => {
                if let Some(f) = fleet.take() {
                    f.close().await;
                }
                parent.answer(&FromWorker::Closed);
            }
            _ => break,
        }
    }
    if let Some(f) = fleet {
        f.close().await;
    }
}

/// Connects this process's clients, waits until they are synced (or `--sync-timeout`), then
/// `settle`; the fleet (still connected) and its counters.
async fn connect(setup: &Setup, plan: Plan, settle: Duration) -> (Fleet, ConnectPart) {
    let fleet = Fleet::start(
        &setup.ctx,
        plan,
        Shared::new(RelaySchedule::default()),
        &setup.fleet_options(),
    );
    let synced = setup.wait_synced(&fleet).await;
    let done_us = now_us();
    tokio::time::sleep(settle).await;
    let s = &fleet.state;
    let part = ConnectPart {
        clients: fleet.members.len() as u64,
        connected: s.connected_total.load(Ordering::Acquire),
        synced,
        failed: s.failed.load(Ordering::Acquire),
        attempts: s.attempts.load(Ordering::Acquire),
        done_us,
        errors: take_fleet_errors(&fleet),
    };
    (fleet, part)
}

/// Every process's connect phase added up.
#[derive(Debug, Clone, PartialEq)]
struct Merged {
    connected: u64,
    synced: u64,
    failed: u64,
    attempts: u64,
    /// From the parent's start to the last process's end of the wait.
    connect_s: f64,
    /// Every process's errors, and a shortfall over all of them.
    errors: BTreeMap<String, u64>,
}

/// Adds up the processes' parts of a phase that the parent started at `start_us`.
fn merge_connect(parts: &[ConnectPart], start_us: u64) -> Merged {
    let mut m = Merged {
        connected: 0,
        synced: 0,
        failed: 0,
        attempts: 0,
        connect_s: 0.0,
        errors: BTreeMap::new(),
    };
    let mut clients = 0;
    let mut done_us = start_us;
    for p in parts {
        clients += p.clients;
        m.connected += p.connected;
        m.synced += p.synced;
        m.failed += p.failed;
        m.attempts += p.attempts;
        done_us = done_us.max(p.done_us);
        add_errors(&mut m.errors, p.errors.clone());
    }
    m.connect_s = (done_us - start_us) as f64 / 1e6;
    note_shortfall(&mut m.errors, m.synced, clients);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(clients: u64, synced: u64, done_us: u64, errors: &[(&str, u64)]) -> ConnectPart {
        ConnectPart {
            clients,
            connected: synced + 1,
            synced,
            failed: clients - synced,
            attempts: clients + 1,
            done_us,
            errors: errors.iter().map(|&(k, n)| (k.to_owned(), n)).collect(),
        }
    }

    #[test]
    fn parts_add_up_and_the_last_process_ends_the_connect_time() {
        let start = 1_000_000;
        let parts = [
            part(5, 5, start + 2_000_000, &[("connect: timeout", 1)]),
            part(
                5,
                5,
                start + 3_500_000,
                &[("connect: timeout", 2), ("sessions lost", 1)],
            ),
            part(4, 4, start + 500_000, &[]),
        ];
        let m = merge_connect(&parts, start);
        assert_eq!(
            (m.connected, m.synced, m.failed, m.attempts),
            (17, 14, 0, 17)
        );
        assert!((m.connect_s - 3.5).abs() < 1e-9, "{m:?}");
        let errors: Vec<_> = m.errors.into_iter().collect();
        assert_eq!(
            errors,
            [
                ("connect: timeout".to_owned(), 3),
                ("sessions lost".to_owned(), 1)
            ]
        );
    }

    #[test]
    fn a_shortfall_is_counted_over_every_process() {
        let m = merge_connect(&[part(5, 5, 10, &[]), part(5, 3, 20, &[])], 0);
        assert_eq!((m.synced, m.failed), (8, 2));
        assert_eq!(
            m.errors.keys().collect::<Vec<_>>(),
            ["only 8 of 10 clients synced"]
        );
        // one process: the line it always had
        let one = merge_connect(&[part(3, 3, 7, &[])], 5);
        assert!(one.errors.is_empty());
        assert!((one.connect_s - 2e-6).abs() < 1e-12);
    }

    #[test]
    fn parts_cross_the_pipe() {
        let p = part(5, 4, 99, &[("connect: refused", 1)]);
        let line = serde_json::to_string(&FromWorker::Connected(p.clone())).expect("json");
        match serde_json::from_str(&line).expect("answer") {
            FromWorker::Connected(q) => assert_eq!(q, p),
            other => panic!("{other:?}"),
        }
    }
}
