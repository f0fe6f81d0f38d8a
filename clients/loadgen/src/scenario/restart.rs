//! `restart`: N nodes connected; `READY` on stderr; the caller stops and restarts the server;
//! the time from the server accepting connections again until every node has `sync` again,
//! reconnecting with python-socketio's backoff.

use std::{collections::BTreeMap, sync::atomic::Ordering, time::Duration};

use tokio::{net::TcpStream, time::Instant};

use super::{finish_errors, Setup};
use crate::{
    client::Backoff,
    fleet::Fleet,
    receiver::{RelaySchedule, Shared},
    report::round3,
};

pub(super) async fn run(
    setup: &Setup,
    connections: usize,
    backoff: Backoff,
    timeout: f64,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs_f64(timeout);
    let plan = setup.plan(connections);
    let mut opts = setup.fleet_options();
    opts.reconnect = Some(backoff);
    let fleet = Fleet::start(
        &setup.ctx,
        plan.clone(),
        Shared::new(RelaySchedule::default()),
        &opts,
    );
    let mut errors = BTreeMap::new();
    let n = fleet.members.len() as u64;
    let synced = setup.wait_all_synced(&fleet, &mut errors).await;
    let state = &fleet.state;
    eprintln!("READY");
    let mut line = setup.line("restart", &plan);
    line.connections = Some(n);
    // The server goes away: some session is lost.
    let deadline = Instant::now() + timeout;
    while state.synced() >= synced && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lost_at = Instant::now();
    if state.synced() >= synced {
        errors.insert("the server did not go away".to_owned(), 1);
    } else {
        // The server may serve on while it shuts down: wait until one URL refuses
        // connections (if none does within the timeout, the loss itself is the start).
        let deadline = Instant::now() + timeout;
        let mut gone = false;
        while Instant::now() < deadline && state.synced() < n {
            if !all_accepting(setup).await {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Until every server accepts connections again.
        while gone && !all_accepting(setup).await && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let back = Instant::now();
        let failed_before = state.failed.load(Ordering::Acquire);
        let attempts_before = state.attempts.load(Ordering::Acquire);
        let deadline = Instant::now() + timeout;
        while state.synced() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        line.down_s = Some(round3(back.duration_since(lost_at).as_secs_f64()));
        line.reconnect_s = Some(round3(back.elapsed().as_secs_f64()));
        line.failed = Some(state.failed.load(Ordering::Acquire) - failed_before);
        line.attempts = Some(state.attempts.load(Ordering::Acquire) - attempts_before);
        line.synced = Some(state.synced());
        if state.synced() < n {
            errors.insert(
                format!("only {} of {n} clients synced again", state.synced()),
                1,
            );
        }
    }
    line.connected = Some(state.synced());
    let _ = state.take_errors();
    state.lost.store(0, Ordering::Release);
    finish_errors(&mut line, &fleet, errors);
    line.print();
    fleet.close().await;
    Ok(())
}

async fn all_accepting(setup: &Setup) -> bool {
    for ep in &setup.ctx.endpoints {
        if TcpStream::connect(&ep.authority).await.is_err() {
            return false;
        }
    }
    true
}
