//! What could not be published: counted per event name, logged once per outage.
//!
//! A publish fails while the broker is down (or the driver reconnects), when the broker refuses
//! it, or when it is not confirmed in time. The other servers' clients then miss that event;
//! local delivery is not affected. Every such `emit` is counted under its event name
//! ([`AmqpAdapterCtr::lost_events`](crate::AmqpAdapterCtr::lost_events), exported by the
//! server as a Prometheus counter); other messages (heartbeats, requests, replies) are counted
//! together.
//!
//! Logging does not follow the events: the first failure of an outage logs one warning, the
//! first publish that works again logs one summary line with the outage's counts per event and
//! how long publishing failed. Between the two nothing is logged.

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::ctr::lock;

/// Most distinct event names counted; further names count under [`OTHER_EVENTS`] (the names
/// come from the application, a bound keeps a runaway one from growing the table).
pub(crate) const MAX_EVENT_NAMES: usize = 64;
/// The name under which events beyond [`MAX_EVENT_NAMES`] count.
pub const OTHER_EVENTS: &str = "(other)";
/// The name under which binary (`x_value`) emits count, which carry no event name.
pub const BINARY_EVENTS: &str = "(binary)";

/// The lost publishes since start-up and those of the current outage.
#[derive(Default)]
pub(crate) struct Lost {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Lost `emit`s per event name since start-up.
    total: BTreeMap<String, u64>,
    /// Lost other messages since start-up.
    total_other: u64,
    /// The outage in progress: from the first failure to the next publish that works.
    outage: Option<Outage>,
}

struct Outage {
    since: Instant,
    events: BTreeMap<String, u64>,
    other: u64,
}

/// The summary of an outage that ended, for its log line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct OutageSummary {
    pub(crate) lasted: Duration,
    pub(crate) events: BTreeMap<String, u64>,
    pub(crate) other: u64,
}

impl OutageSummary {
    /// `new_task=3,algorithm_status_change=5` (empty when no event was lost).
    pub(crate) fn per_event(&self) -> String {
        self.events
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
    pub(crate) fn lost_events(&self) -> u64 {
        self.events.values().sum()
    }
}

fn bump(map: &mut BTreeMap<String, u64>, event: &str) {
    let key = if map.contains_key(event) || map.len() < MAX_EVENT_NAMES {
        event
    } else {
        OTHER_EVENTS
    };
    *map.entry(key.to_owned()).or_default() += 1;
}

impl Lost {
    /// Counts a publish that failed: an `emit` of `event`, or another message (`None`).
    /// Returns true for the first failure of an outage (to be logged).
    pub(crate) fn failed(&self, event: Option<&str>, now: Instant) -> bool {
        let mut st = lock(&self.state);
        match event {
            Some(e) => bump(&mut st.total, e),
            None => st.total_other += 1,
        }
        let first = st.outage.is_none();
        let outage = st.outage.get_or_insert_with(|| Outage {
            since: now,
            events: BTreeMap::new(),
            other: 0,
        });
        match event {
            Some(e) => bump(&mut outage.events, e),
            None => outage.other += 1,
        }
        first
    }

    /// A publish worked: ends the outage in progress, if any, and returns its summary.
    pub(crate) fn worked(&self, now: Instant) -> Option<OutageSummary> {
        let mut st = lock(&self.state);
        let outage = st.outage.take()?;
        Some(OutageSummary {
            lasted: now.saturating_duration_since(outage.since),
            events: outage.events,
            other: outage.other,
        })
    }

    /// The lost `emit`s per event name since start-up.
    pub(crate) fn events(&self) -> Vec<(String, u64)> {
        lock(&self.state)
            .total
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// The lost other messages (heartbeats, requests, replies) since start-up.
    pub(crate) fn other(&self) -> u64 {
        lock(&self.state).total_other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_outage_is_summed_per_event_and_ends_with_the_first_success() {
        let lost = Lost::default();
        let t0 = Instant::now();
        assert_eq!(lost.worked(t0), None, "no outage, no summary");
        assert!(
            lost.failed(Some("new_task"), t0),
            "the first failure opens it"
        );
        assert!(!lost.failed(Some("new_task"), t0));
        assert!(!lost.failed(Some("algorithm_status_change"), t0));
        assert!(!lost.failed(None, t0));
        let s = lost.worked(t0 + Duration::from_secs(3)).unwrap();
        assert_eq!(s.lasted, Duration::from_secs(3));
        assert_eq!(s.per_event(), "algorithm_status_change=1,new_task=2");
        assert_eq!((s.lost_events(), s.other), (3, 1));
        assert_eq!(lost.worked(t0), None, "summarised once");
        // A second outage starts from zero; the totals go on.
        assert!(lost.failed(Some("new_task"), t0));
        let s = lost.worked(t0).unwrap();
        assert_eq!(s.per_event(), "new_task=1");
        assert_eq!(
            lost.events(),
            vec![
                ("algorithm_status_change".to_owned(), 1),
                ("new_task".to_owned(), 3)
            ]
        );
        assert_eq!(lost.other(), 1);
    }

    #[test]
    fn event_names_are_bounded() {
        let lost = Lost::default();
        let now = Instant::now();
        for i in 0..MAX_EVENT_NAMES + 10 {
            lost.failed(Some(&format!("e{i}")), now);
        }
        lost.failed(Some("e0"), now);
        let events = lost.events();
        assert_eq!(events.len(), MAX_EVENT_NAMES + 1);
        let count = |name: &str| events.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
        assert_eq!(count(OTHER_EVENTS), Some(10));
        assert_eq!(count("e0"), Some(2), "a known name still counts as itself");
    }
}
