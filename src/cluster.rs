//! What the instances of a cluster do for one that died.
//!
//! A SIGKILLed (or crashed, or cut-off) instance runs no `on_disconnect`:
//! its nodes' and users' rows would stay `online` and nobody would announce
//! `node-offline` for them. The design:
//!
//! 1. **Instances publish which clients they hold.** Every
//!    [`ANNOUNCE_INTERVAL`] each instance sets the `authenticatable` ids of
//!    the nodes and users with a session on it as the adapter's announced
//!    state of `/tasks` (`{"clients": [..]}`); the adapter sends it with its
//!    heartbeats, at once when it changed.
//! 2. **A peer whose heartbeats stop is lost.** The adapter declares it lost
//!    after the heartbeat timeout (15 s) when our own broker connection was
//!    up all that time, deletes its queue, and hands us its last announced
//!    state ([`PeerEvent::Lost`]).
//! 3. **One survivor acts**: the one with the smallest server id among the
//!    live ones (an instance's own view; two that disagree both act, which
//!    is harmless, see below). It waits [`RELEASE_GRACE`], so that the
//!    clients that reconnected to other instances meanwhile are in their
//!    announced states, and releases every client of the lost instance that
//!    no live instance holds: [`tasks_ns::release_lost_client`] marks it
//!    offline *if it is online* (one instance wins that update), and only
//!    then tells its rooms that it left and, for a node, announces
//!    `node-offline` and deletes its configuration, as `on_disconnect` would
//!    have.
//!
//! Bound: a killed instance's clients that did not come back are offline
//! and announced within heartbeat timeout + heartbeat interval +
//! [`RELEASE_GRACE`] (15 + 5 + 2 = 22 s with the defaults; 17–19 s
//! measured, `clients/tests/test_instance_kill.py`).
//!
//! Not covered: Flask-SocketIO instances of a mixed fleet announce nothing
//! (python-socketio ignores our `x_heartbeat`), so their clients are left
//! to vantage6's own handling; an instance that is declared lost while
//! alive (cut off from the broker for longer than the timeout while its
//! clients stay connected to it) gets its clients marked offline; a node's
//! next `ping` marks it online again (4.x sets the status, 5.x replays the
//! connect sequence).

use std::{collections::BTreeSet, time::Duration};

use serde_json::{json, Value};
use socketioxide::{adapter::Adapter, SocketIo};
use socketioxide_amqp::{broker::Driver, AmqpAdapterCtr, PeerEvent};
use tokio::sync::broadcast::error::RecvError;
use tracing::{info, warn};

use crate::{
    metrics::Metrics,
    tasks_ns::{self, TasksContext, NAMESPACE},
};

/// How often an instance checks whether the clients it holds changed (and
/// announces them when they did).
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);

/// How long the acting instance waits after a peer was declared lost
/// before it releases the peer's clients: the ones that reconnected to
/// another instance are in that one's announced state by then.
pub const RELEASE_GRACE: Duration = Duration::from_secs(2);

/// The announced state of `/tasks`: the held clients' ids.
pub fn held_state(clients: &[i64]) -> Value {
    json!({ "clients": clients })
}

/// The client ids of an announced state; none for a state that is not ours
/// (another version's, or junk).
pub fn clients_of(state: Option<&Value>) -> Vec<i64> {
    state
        .and_then(|s| s.get("clients"))
        .and_then(Value::as_array)
        .map(|ids| ids.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default()
}

/// Starts announcing this instance's clients and acting for lost peers; the
/// tasks end with the runtime (or when aborted).
pub fn spawn<A: Adapter, D: Driver>(
    ctr: AmqpAdapterCtr<D>,
    io: SocketIo<A>,
    ctx: TasksContext,
    metrics: Metrics,
) -> [tokio::task::JoinHandle<()>; 2] {
    let announcer = {
        let (ctr, ctx) = (ctr.clone(), ctx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ANNOUNCE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                ctr.set_local_state(NAMESPACE, held_state(&ctx.held_client_ids()));
            }
        })
    };
    let mut events = ctr.peer_events();
    let releaser = tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(PeerEvent::Lost {
                    namespace,
                    uid,
                    state,
                    acting,
                    ..
                }) if namespace == NAMESPACE => {
                    let lost = clients_of(state.as_ref());
                    if !acting {
                        info!(peer = %uid, clients = lost.len(),
                            "instance lost; another instance releases its clients");
                        continue;
                    }
                    let (ctr, io, ctx, metrics) =
                        (ctr.clone(), io.clone(), ctx.clone(), metrics.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(RELEASE_GRACE).await;
                        release(&ctr, &io, &ctx, &metrics, &uid.to_string(), lost).await;
                    });
                }
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => {
                    warn!(missed = n, "missed lost-instance events (too many at once)");
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    [announcer, releaser]
}

/// Releases the clients of a lost instance that no live instance holds now.
async fn release<A: Adapter, D: Driver>(
    ctr: &AmqpAdapterCtr<D>,
    io: &SocketIo<A>,
    ctx: &TasksContext,
    metrics: &Metrics,
    peer: &str,
    lost: Vec<i64>,
) {
    let mut held: BTreeSet<i64> = ctx.held_client_ids().into_iter().collect();
    for (_, state) in ctr.peer_states(NAMESPACE) {
        held.extend(clients_of(state.as_ref()));
    }
    let (mut released, mut back, mut not_online) = (0u64, 0usize, 0usize);
    for id in lost {
        if held.contains(&id) {
            back += 1;
        } else if tasks_ns::release_lost_client(io, ctx, id).await {
            released += 1;
        } else {
            not_online += 1;
        }
    }
    metrics.lost_instance_clients_released(released);
    info!(
        peer,
        released,
        reconnected_elsewhere = back,
        not_online,
        "released the clients of a lost instance: marked offline, departures announced"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_clients_round_trip_and_junk_states_hold_none() {
        assert_eq!(clients_of(Some(&held_state(&[3, 5]))), vec![3, 5]);
        assert_eq!(clients_of(None), Vec::<i64>::new());
        assert_eq!(clients_of(Some(&json!("x"))), Vec::<i64>::new());
        assert_eq!(
            clients_of(Some(&json!({"clients": [1, "2", null, 4]}))),
            vec![1, 4]
        );
    }
}
