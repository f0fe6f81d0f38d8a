//! The other socketioxide servers of a namespace, as known from their `x_heartbeat`s.
//!
//! Our own code rather than socketioxide-core's `HeartbeatTracker`: a peer here also carries the
//! queue its direct messages go to (AMQP has no per-node channel), and a `bye` heartbeat forgets
//! it at once, which the core tracker (liveness only, no removal) cannot express.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use socketioxide_core::{Sid, Uid};

use crate::ctr::lock;

/// The other socketioxide servers of a namespace, as known from their heartbeats.
pub(crate) struct Peers {
    pub(crate) timeout: Duration,
    pub(crate) map: Mutex<HashMap<Sid, (String, Instant)>>,
}

impl Peers {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            map: Mutex::new(HashMap::new()),
        }
    }
    /// Records a heartbeat; returns true for a server not known before.
    pub(crate) fn seen(&self, uid: Uid, queue: &str, now: Instant) -> bool {
        lock(&self.map)
            .insert(*uid, (queue.to_owned(), now))
            .is_none()
    }
    pub(crate) fn forget(&self, uid: Uid) {
        lock(&self.map).remove(&*uid);
    }
    pub(crate) fn queue(&self, uid: Uid) -> Option<String> {
        lock(&self.map).get(&*uid).map(|(q, _)| q.clone())
    }
    /// The number of servers heard from within the timeout (older ones are forgotten).
    pub(crate) fn live(&self, now: Instant) -> usize {
        let mut map = lock(&self.map);
        map.retain(|_, (_, seen)| now.saturating_duration_since(*seen) <= self.timeout);
        map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // duplicates: deliberate — like log_limit's test, a clock-driven scenario spelled out.
    #[test]
    fn peers_count_live_servers_only() {
        let peers = Peers::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let (a, b) = (Uid::new(), Uid::new());
        assert!(peers.seen(a, "qa", t0));
        assert!(peers.seen(b, "qb", t0));
        assert!(!peers.seen(a, "qa", t0 + Duration::from_secs(8)));
        assert_eq!(peers.live(t0 + Duration::from_secs(9)), 2);
        assert_eq!(peers.queue(b).as_deref(), Some("qb"));
        // b stopped beating: gone after the timeout, a is still there.
        assert_eq!(peers.live(t0 + Duration::from_secs(15)), 1);
        assert_eq!(peers.queue(b), None);
        peers.forget(a);
        assert_eq!(peers.live(t0 + Duration::from_secs(15)), 0);
    }
}
