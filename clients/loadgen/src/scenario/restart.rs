//! `restart`: N nodes connected; `READY` on stderr; the caller stops and restarts the server;
//! the time from the server accepting connections again until every node has `sync` again,
//! reconnecting with python-socketio's backoff.
//!
//! With `--processes P` every process connects its share of the nodes (node `i`: process
//! `i mod P`) and answers `Ready` once they are synced; the parent prints `READY` when every
//! process is. Each process then watches its own clients through the restart and answers with
//! its times (µs since the epoch, one clock); the parent merges them: the first lost session,
//! the first time every server accepted connections again, the last client synced again.

use std::{collections::BTreeMap, sync::atomic::Ordering, time::Duration};

use tokio::{net::TcpStream, time::Instant};

use super::{
    add_errors, note_shortfall,
    peers::{FromWorker, Parent, RestartPart},
    Setup,
};
use crate::{
    client::Backoff,
    fleet::Fleet,
    receiver::{RelaySchedule, Shared},
    report::{error_list, round3, Line},
    stats::now_us,
};

pub(super) async fn run(
    setup: &Setup,
    connections: usize,
    backoff: Backoff,
    timeout: f64,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs_f64(timeout);
    let full = setup.plan(connections);
    let processes = setup.processes();
    let peers = match setup.common.worker {
        Some(_) => None,
        None => Some(setup.spawn_workers(connections)?),
    };
    let mut opts = setup.fleet_options();
    opts.reconnect = Some(backoff);
    let fleet = Fleet::start(
        &setup.ctx,
        setup.local_plan(connections),
        Shared::new(RelaySchedule::default()),
        &opts,
    );
    let synced = setup.wait_synced(&fleet).await;
    let Some(mut peers) = peers else {
        let mut parent = Parent::new();
        parent.answer(&FromWorker::Ready { synced });
        let part = watch(setup, &fleet, synced, timeout).await;
        parent.answer(&FromWorker::Restarted(part));
        let _ = parent.next().await; // Quit, or the parent is gone
        fleet.close().await;
        return Ok(());
    };
    let synced_all = synced + peers.ready().await?;
    let mut errors = BTreeMap::new();
    note_shortfall(&mut errors, synced_all, full.members.len() as u64);
    eprintln!("READY");
    let mut parts = vec![watch(setup, &fleet, synced, timeout).await];
    parts.extend(peers.restarted().await?);
    let mut line = setup.line("restart", &full);
    line.processes = (processes > 1).then_some(processes as u64);
    merge_restart(&parts, &mut line, &mut errors);
    line.errors = error_list(&errors);
    line.print();
    peers.quit().await;
    fleet.close().await;
    Ok(())
}

/// Watches this process's clients (`synced` of them synced) through the restart.
async fn watch(setup: &Setup, fleet: &Fleet, synced: u64, timeout: Duration) -> RestartPart {
    let state = &fleet.state;
    let n = fleet.members.len() as u64;
    let mut part = RestartPart {
        clients: n,
        ..RestartPart::default()
    };
    // The server goes away: some session is lost.
    let deadline = Instant::now() + timeout;
    while state.synced() >= synced && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    part.lost_us = now_us();
    // Every client lost its session after this instant, so each makes at least one attempt
    // from here on, however quickly the server was back.
    let attempts_at_loss = state.attempts.load(Ordering::Acquire);
    let failed_at_loss = state.failed.load(Ordering::Acquire);
    if state.synced() >= synced {
        part.errors
            .insert("the server did not go away".to_owned(), 1);
    } else {
        part.went_away = true;
        // The server may serve on while it shuts down: wait until one URL refuses
        // connections. If none does (it was back before this process looked), the loss
        // itself is "back".
        let deadline = Instant::now() + timeout;
        let mut gone = false;
        while Instant::now() < deadline && state.synced() < n {
            if !all_accepting(setup).await {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let failed_before = if gone {
            // Until every server accepts connections again.
            while !all_accepting(setup).await && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            part.back_us = now_us();
            state.failed.load(Ordering::Acquire)
        } else {
            part.back_us = part.lost_us;
            failed_at_loss
        };
        let deadline = Instant::now() + timeout;
        while state.synced() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        part.done_us = now_us();
        part.failed = state.failed.load(Ordering::Acquire) - failed_before;
        part.attempts = state.attempts.load(Ordering::Acquire) - attempts_at_loss;
    }
    part.synced = state.synced();
    // connection failures and lost sessions while the server was down are expected
    let _ = state.take_errors();
    state.lost.store(0, Ordering::Release);
    part
}

/// The processes' views merged into the line: `down_s` from the first lost session to the
/// first time every server accepted connections again (`back`), `reconnect_s` from `back` to
/// the last process's last client synced again; counts added up.
fn merge_restart(parts: &[RestartPart], line: &mut Line, errors: &mut BTreeMap<String, u64>) {
    let n: u64 = parts.iter().map(|p| p.clients).sum();
    let synced: u64 = parts.iter().map(|p| p.synced).sum();
    line.connections = Some(n);
    for p in parts {
        add_errors(errors, p.errors.clone());
    }
    let away: Vec<&RestartPart> = parts.iter().filter(|p| p.went_away).collect();
    if let (Some(lost), Some(back), Some(done)) = (
        away.iter().map(|p| p.lost_us).min(),
        away.iter().map(|p| p.back_us).min(),
        away.iter().map(|p| p.done_us).max(),
    ) {
        line.down_s = Some(round3(back.saturating_sub(lost) as f64 / 1e6));
        line.reconnect_s = Some(round3(done.saturating_sub(back) as f64 / 1e6));
        line.failed = Some(away.iter().map(|p| p.failed).sum());
        line.attempts = Some(away.iter().map(|p| p.attempts).sum());
        line.synced = Some(synced);
        if synced < n {
            errors.insert(format!("only {synced} of {n} clients synced again"), 1);
        }
    }
    line.connected = Some(synced);
}

async fn all_accepting(setup: &Setup) -> bool {
    for ep in &setup.ctx.endpoints {
        if TcpStream::connect(&ep.authority).await.is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(clients: u64, synced: u64, times: (u64, u64, u64)) -> RestartPart {
        RestartPart {
            clients,
            went_away: true,
            lost_us: times.0,
            back_us: times.1,
            done_us: times.2,
            synced,
            failed: 2,
            attempts: clients + 2,
            errors: BTreeMap::new(),
        }
    }

    #[test]
    fn times_run_from_the_first_loss_and_return_to_the_last_resync() {
        let parts = [
            part(5, 5, (1_000_000, 3_000_000, 4_000_000)),
            part(5, 5, (1_200_000, 2_980_000, 5_500_000)),
        ];
        let mut line = Line::default();
        let mut errors = BTreeMap::new();
        merge_restart(&parts, &mut line, &mut errors);
        assert_eq!(line.down_s, Some(1.98));
        assert_eq!(line.reconnect_s, Some(2.52));
        assert_eq!(
            (line.connections, line.synced, line.connected),
            (Some(10), Some(10), Some(10))
        );
        assert_eq!((line.failed, line.attempts), (Some(4), Some(14)));
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn clients_not_back_are_counted_over_every_process() {
        let mut stuck = part(5, 3, (0, 10, 20));
        stuck
            .errors
            .insert("the server did not go away".to_owned(), 1);
        stuck.went_away = false;
        let parts = [part(5, 5, (0, 10, 20)), part(4, 2, (0, 10, 30)), stuck];
        let mut line = Line::default();
        let mut errors = BTreeMap::new();
        merge_restart(&parts, &mut line, &mut errors);
        assert_eq!((line.synced, line.connections), (Some(10), Some(14)));
        // the process that saw nothing adds no attempts
        assert_eq!(line.attempts, Some(13));
        assert_eq!(
            errors.keys().collect::<Vec<_>>(),
            [
                "only 10 of 14 clients synced again",
                "the server did not go away"
            ]
        );
    }

    #[test]
    fn no_loss_anywhere_has_no_times() {
        let mut p = part(5, 5, (0, 0, 0));
        p.went_away = false;
        p.errors.insert("the server did not go away".to_owned(), 1);
        let mut line = Line::default();
        let mut errors = BTreeMap::new();
        merge_restart(&[p.clone(), p], &mut line, &mut errors);
        assert_eq!(
            (line.down_s, line.reconnect_s, line.synced),
            (None, None, None)
        );
        assert_eq!(line.connected, Some(10));
        assert_eq!(errors.get("the server did not go away"), Some(&2));
        let back: RestartPart =
            serde_json::from_str(&serde_json::to_string(&part(1, 1, (1, 2, 3))).expect("json"))
                .expect("part");
        assert_eq!(back, part(1, 1, (1, 2, 3)));
    }
}
