//! What a node client does with the events it receives: `new_task` (fanout) and
//! `algorithm_status_change` (relay) are timed and checked for duplicates; everything else is
//! ignored.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use crate::{
    client::Handler,
    fleet::{FleetState, Permit},
    stats::{now_us, Recorder, Seen, SeenSet},
    wire::{json_u64_field, WireError},
};

/// The relay schedule of the current step, shared by senders and receivers: event `j` is the
/// `j / runs`-th event of run `j % runs`, scheduled at `t0 + j × period`.
#[derive(Debug, Default)]
pub struct RelaySchedule {
    /// Run id → (global run index, index of the run among its collaboration's runs).
    pub runs: HashMap<u64, (u32, u32)>,
    /// Runs of each collaboration index (sizes the per-client counters).
    pub runs_per_collab: Vec<u32>,
    /// Number of runs (`R`).
    pub total_runs: u64,
    t0_us: AtomicU64,
    period_ps: AtomicU64,
    events: AtomicU64,
}

impl RelaySchedule {
    /// Sets the current step's start, period (picoseconds per event) and event count.
    pub fn set(&self, t0_us: u64, period_ps: u64, events: u64) {
        self.t0_us.store(t0_us, Ordering::Release);
        self.period_ps.store(period_ps, Ordering::Release);
        self.events.store(events, Ordering::Release);
    }

    /// When event `j` is scheduled (µs since the epoch).
    pub fn scheduled_us(&self, j: u64) -> u64 {
        let period = u128::from(self.period_ps.load(Ordering::Acquire));
        let offset = u128::from(j) * period / 1_000_000;
        self.t0_us.load(Ordering::Acquire) + u64::try_from(offset).unwrap_or(u64::MAX / 2)
    }

    /// Events of the current step.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Acquire)
    }
}

/// What every receiver of the process shares.
#[derive(Debug)]
pub struct Shared {
    /// Latencies and counters.
    pub recorder: Recorder,
    /// The relay schedule (empty outside relay).
    pub relay: RelaySchedule,
    /// Fleet counters, set once the fleet exists.
    pub fleet: std::sync::OnceLock<Arc<FleetState>>,
}

impl Shared {
    /// Shared state; `relay` empty unless the scenario is relay.
    pub fn new(relay: RelaySchedule) -> Arc<Self> {
        Arc::new(Self {
            recorder: Recorder::new(),
            relay,
            fleet: std::sync::OnceLock::new(),
        })
    }
}

/// One client's receiving state.
pub struct NodeHandler {
    shared: Arc<Shared>,
    collab: u32,
    index: usize,
    seen: SeenSet,
    relay_step: u32,
    relay_counts: Vec<u32>,
    permit: Permit,
    synced: bool,
}

impl NodeHandler {
    /// The handler of fleet member `index` in collaboration index `collab`.
    pub fn new(shared: Arc<Shared>, collab: u32, index: usize) -> Self {
        Self {
            shared,
            collab,
            index,
            seen: SeenSet::default(),
            relay_step: 0,
            relay_counts: Vec::new(),
            permit: Permit::none(),
            synced: false,
        }
    }

    /// Holds the connection gate until `sync`.
    pub fn set_permit(&mut self, p: Permit) {
        self.permit = p;
    }

    /// The session ended: un-count it; returns whether it had been synced.
    pub fn unsync(&mut self) -> bool {
        let was = std::mem::replace(&mut self.synced, false);
        if was {
            if let Some(f) = self.shared.fleet.get() {
                f.synced_now.fetch_sub(1, Ordering::AcqRel);
                f.synced_by_collab[self.collab as usize].fetch_sub(1, Ordering::AcqRel);
                f.member_synced[self.index].store(false, Ordering::Release);
            }
        }
        was
    }

    fn new_task(&mut self, args: &str) {
        let r = &self.shared.recorder;
        let (Some(step), Some(seq), Some(sent)) = (
            json_u64_field(args, "step"),
            json_u64_field(args, "id"),
            json_u64_field(args, "sent_us"),
        ) else {
            // Not one of ours (a new_task from elsewhere): counted, not timed.
            return r.error();
        };
        let step = u32::try_from(step).unwrap_or(u32::MAX);
        let latency = now_us().saturating_sub(sent);
        match self.seen.insert(step, seq) {
            Seen::New => r.delivery(step, true, latency),
            Seen::Again => r.delivery(step, false, latency),
            Seen::OutOfRange => r.error(),
        }
    }

    fn status_change(&mut self, args: &str) {
        let r = &self.shared.recorder;
        let relay = &self.shared.relay;
        let Some(run_id) = json_u64_field(args, "run_id") else {
            return r.error();
        };
        let Some(&(run, pos)) = relay.runs.get(&run_id) else {
            return r.error();
        };
        let step = r.step();
        if step != self.relay_step {
            self.relay_step = step;
            self.relay_counts.clear();
        }
        if self.relay_counts.is_empty() {
            let n = relay
                .runs_per_collab
                .get(self.collab as usize)
                .copied()
                .unwrap_or(0);
            self.relay_counts = vec![0; n as usize];
        }
        let Some(count) = self.relay_counts.get_mut(pos as usize) else {
            // A run of another collaboration: the server sent it to the wrong room.
            return r.error();
        };
        let j = u64::from(*count) * relay.total_runs + u64::from(run);
        *count = count.saturating_add(1);
        let latency = now_us().saturating_sub(relay.scheduled_us(j));
        r.delivery(step, j < relay.events(), latency);
    }
}

impl Handler for NodeHandler {
    fn connected(&mut self) {
        if let Some(f) = self.shared.fleet.get() {
            f.connected_total.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn synced(&mut self) {
        self.permit.release();
        if self.synced {
            return;
        }
        self.synced = true;
        if let Some(f) = self.shared.fleet.get() {
            f.sync_total.fetch_add(1, Ordering::AcqRel);
            f.synced_by_collab[self.collab as usize].fetch_add(1, Ordering::AcqRel);
            f.member_synced[self.index].store(true, Ordering::Release);
            f.synced_now.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn event(&mut self, name: &str, args: &str) {
        match name {
            "new_task" => self.new_task(args),
            "algorithm_status_change" => self.status_change(args),
            _ => {}
        }
    }

    fn bad_packet(&mut self, error: &WireError) {
        tracing::debug!(%error, "bad packet");
        self.shared.recorder.error();
    }
}
