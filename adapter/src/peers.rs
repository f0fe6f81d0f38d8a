//! The other socketioxide servers of a namespace, as known from their `x_heartbeat`s.
//!
//! Our own code rather than socketioxide-core's `HeartbeatTracker`: a peer here also carries the
//! queue its direct messages go to (AMQP has no per-node channel) and the state it announces (see
//! [`AmqpAdapterCtr::set_local_state`](crate::AmqpAdapterCtr::set_local_state)), a `bye`
//! heartbeat forgets it at once, and a peer whose heartbeats stop is handed back by
//! [`Peers::expire`], so that the survivors can act for it ([`PeerEvent::Lost`]).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::Value;
use socketioxide_core::{Sid, Uid};

use crate::ctr::lock;

/// What happened to a peer server, see [`AmqpAdapterCtr::peer_events`](crate::AmqpAdapterCtr::peer_events).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PeerEvent {
    /// No heartbeat of a peer within the heartbeat timeout, while this server's own broker
    /// connection was up all that time: the peer is taken for dead (a crash, a kill, a network
    /// partition from the broker). Its queue has been deleted by the adapter; a peer whose queue
    /// still has a consumer is not lost (it is heard again with its next heartbeat).
    Lost {
        /// The namespace.
        namespace: String,
        /// The peer's server id.
        uid: Uid,
        /// The state it announced last.
        state: Option<Value>,
        /// Whether this server is the one to act for it: the smallest id among the live ones.
        acting: bool,
    },
}

/// One peer server of a namespace.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) uid: Uid,
    pub(crate) queue: String,
    pub(crate) seen: Instant,
    /// The last state it announced.
    pub(crate) state: Option<Value>,
}

/// The other socketioxide servers of a namespace, as known from their heartbeats.
pub(crate) struct Peers {
    pub(crate) timeout: Duration,
    pub(crate) map: Mutex<HashMap<Sid, Peer>>,
}

impl Peers {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Records a heartbeat; returns true for a server not known before. A heartbeat without a
    /// state keeps the one announced before (an `init` reply carries none).
    pub(crate) fn seen(&self, uid: Uid, queue: &str, state: Option<Value>, now: Instant) -> bool {
        let mut map = lock(&self.map);
        if let Some(peer) = map.get_mut(&*uid) {
            peer.seen = now;
            queue.clone_into(&mut peer.queue);
            if state.is_some() {
                peer.state = state;
            }
            return false;
        }
        map.insert(
            *uid,
            Peer {
                uid,
                queue: queue.to_owned(),
                seen: now,
                state,
            },
        );
        true
    }

    pub(crate) fn forget(&self, uid: Uid) {
        lock(&self.map).remove(&*uid);
    }

    pub(crate) fn queue(&self, uid: Uid) -> Option<String> {
        lock(&self.map).get(&*uid).map(|p| p.queue.clone())
    }

    fn is_live(&self, peer: &Peer, now: Instant) -> bool {
        now.saturating_duration_since(peer.seen) <= self.timeout
    }

    /// The number of servers heard from within the timeout.
    pub(crate) fn live(&self, now: Instant) -> usize {
        lock(&self.map)
            .values()
            .filter(|p| self.is_live(p, now))
            .count()
    }

    /// The live servers' ids and announced states.
    pub(crate) fn states(&self, now: Instant) -> Vec<(Uid, Option<Value>)> {
        lock(&self.map)
            .values()
            .filter(|p| self.is_live(p, now))
            .map(|p| (p.uid, p.state.clone()))
            .collect()
    }

    /// Removes the servers not heard from within the timeout and returns them.
    pub(crate) fn expire(&self, now: Instant) -> Vec<Peer> {
        let mut map = lock(&self.map);
        let gone: Vec<Sid> = map
            .iter()
            .filter(|(_, p)| !self.is_live(p, now))
            .map(|(sid, _)| *sid)
            .collect();
        gone.iter().filter_map(|sid| map.remove(sid)).collect()
    }

    /// Whether `own` is the server that acts for a lost peer: the smallest id among the live
    /// servers and itself. Each server decides from its own view; two that disagree both act,
    /// so what they do must be idempotent.
    pub(crate) fn is_acting(&self, own: Uid, now: Instant) -> bool {
        let own = own.to_string();
        lock(&self.map)
            .values()
            .filter(|p| self.is_live(p, now))
            .all(|p| p.uid.to_string() > own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // duplicates: deliberate — like log_limit's test, a clock-driven scenario spelled out.
    #[test]
    fn peers_count_live_servers_and_expire_silent_ones() {
        let peers = Peers::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let (a, b) = (Uid::new(), Uid::new());
        assert!(peers.seen(a, "qa", None, t0));
        assert!(peers.seen(b, "qb", Some(Value::from(1)), t0));
        assert!(!peers.seen(a, "qa", None, t0 + Duration::from_secs(8)));
        assert!(!peers.seen(b, "qb", None, t0 + Duration::from_secs(1)));
        assert_eq!(peers.live(t0 + Duration::from_secs(9)), 2);
        assert_eq!(peers.queue(b).as_deref(), Some("qb"));
        // b stopped beating: not live after the timeout, handed back once by `expire`, with the
        // state it announced last (a heartbeat without one kept it).
        let t1 = t0 + Duration::from_secs(15);
        assert_eq!(peers.live(t1), 1);
        let gone = peers.expire(t1);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].uid, b);
        assert_eq!(gone[0].state, Some(Value::from(1)));
        assert!(peers.expire(t1).is_empty());
        assert_eq!(peers.queue(b), None);
        peers.forget(a);
        assert_eq!(peers.live(t1), 0);
    }

    #[test]
    fn the_smallest_live_id_acts() {
        let peers = Peers::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let mut ids = [Uid::new(), Uid::new(), Uid::new()];
        ids.sort_by_key(ToString::to_string);
        let [low, mid, high] = ids;
        peers.seen(low, "q", None, t0);
        peers.seen(high, "q", None, t0 + Duration::from_secs(6));
        assert!(!peers.is_acting(mid, t0));
        // `low` went silent: `mid` is now the smallest live id.
        assert!(peers.is_acting(mid, t0 + Duration::from_secs(12)));
        assert!(!peers.is_acting(high, t0));
    }
}
