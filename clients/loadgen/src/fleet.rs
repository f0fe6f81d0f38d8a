//! The node clients of this process: one task each, connecting with bounded concurrency, and
//! the shared counters the scenarios read (who is synced, per collaboration; failures).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use tokio::{
    sync::{mpsc, OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
};

use crate::{
    client::{self, Backoff, ClientCtx, Command, Ended, NodeSpec, Outcome, Rng},
    fixture::Fixture,
    receiver::{NodeHandler, Shared},
    report::TransportCounts,
};

/// Capacity of a client's command channel (relay emits queue here).
const COMMANDS: usize = 16;

/// Counters shared by every client of the process.
#[derive(Debug, Default)]
pub struct FleetState {
    /// Clients synced right now.
    pub synced_now: AtomicU64,
    /// `sync`s received (every session).
    pub sync_total: AtomicU64,
    /// Connection attempts.
    pub attempts: AtomicU64,
    /// Namespace CONNECT acknowledgements received (every session).
    pub connected_total: AtomicU64,
    /// Attempts that did not reach `sync`.
    pub failed: AtomicU64,
    /// Sessions that ended after `sync` without being told to.
    pub lost: AtomicU64,
    /// Clients that stopped for good (closed, or failed without reconnection).
    pub stopped: AtomicU64,
    /// Synced clients per collaboration index.
    pub synced_by_collab: Vec<AtomicU64>,
    /// Whether each member is synced.
    pub member_synced: Vec<AtomicBool>,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl FleetState {
    /// Counts one error of `kind`.
    pub fn error(&self, kind: impl Into<String>) {
        *self
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(kind.into())
            .or_default() += 1;
    }

    /// The errors counted so far, and resets them.
    pub fn take_errors(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.errors.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Synced clients now.
    pub fn synced(&self) -> u64 {
        self.synced_now.load(Ordering::Acquire)
    }
}

/// One client of the fleet.
#[derive(Debug)]
pub struct Member {
    /// Its command channel.
    pub commands: mpsc::Sender<Command>,
}

/// A collaboration as this process sees it.
#[derive(Debug, Clone)]
pub struct Collab {
    /// Collaboration id.
    pub id: u64,
    /// Indexes into [`Fleet::members`].
    pub members: Vec<usize>,
}

/// How clients connect.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// Reconnect after a lost session (restart scenario), with this backoff.
    pub reconnect: Option<Backoff>,
}

/// The clients of this process.
#[derive(Debug)]
pub struct Fleet {
    /// Clients, in fixture order.
    pub members: Vec<Member>,
    /// Collaborations of the clients.
    pub collabs: Vec<Collab>,
    /// Shared counters.
    pub state: Arc<FleetState>,
    /// What receivers share.
    pub shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

/// Whether client `i` is one of the long-polling share (spread evenly).
pub fn is_polling(i: usize, share: f64) -> bool {
    let share = share.clamp(0.0, 1.0);
    ((i + 1) as f64 * share).floor() > (i as f64 * share).floor()
}

/// The plan of a fleet before it starts: which fixture nodes, how, in which collaboration.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Specs and collaboration indexes.
    pub members: Vec<(NodeSpec, u32)>,
    /// Collaborations.
    pub collabs: Vec<Collab>,
}

impl Plan {
    /// `count` clients over the fixture's nodes (cycling when there are fewer nodes), spread
    /// round-robin over `endpoints`; `shard` keeps every `n`-th client starting at `k`.
    pub fn new(
        fixture: &Fixture,
        count: usize,
        endpoints: usize,
        polling_share: f64,
        shard: (usize, usize),
    ) -> Self {
        let mut collab_index: HashMap<u64, u32> = HashMap::new();
        let mut collabs: Vec<Collab> = Vec::new();
        let mut members = Vec::new();
        for i in 0..count {
            if i % shard.1 != shard.0 {
                continue;
            }
            let node = &fixture.nodes[i % fixture.nodes.len()];
            let c = *collab_index
                .entry(node.collaboration_id)
                .or_insert_with(|| {
                    collabs.push(Collab {
                        id: node.collaboration_id,
                        members: Vec::new(),
                    });
                    (collabs.len() - 1) as u32
                });
            collabs[c as usize].members.push(members.len());
            members.push((
                NodeSpec {
                    node_id: node.id,
                    endpoint: i % endpoints.max(1),
                    polling: is_polling(i, polling_share),
                },
                c,
            ));
        }
        Self { members, collabs }
    }

    /// Clients per transport.
    pub fn transports(&self) -> TransportCounts {
        let polling = self.members.iter().filter(|(s, _)| s.polling).count() as u64;
        TransportCounts {
            websocket: self.members.len() as u64 - polling,
            polling,
        }
    }
}

impl Fleet {
    /// Starts every client of `plan` (they connect in the background).
    pub fn start(ctx: &ClientCtx, plan: Plan, shared: Arc<Shared>, opts: &FleetOptions) -> Self {
        let state = Arc::new(FleetState {
            synced_by_collab: plan.collabs.iter().map(|_| AtomicU64::new(0)).collect(),
            member_synced: plan
                .members
                .iter()
                .map(|_| AtomicBool::new(false))
                .collect(),
            ..FleetState::default()
        });
        let _ = shared.fleet.set(state.clone());
        let gate = Arc::new(Semaphore::new(opts.concurrency.max(1)));
        let mut members = Vec::with_capacity(plan.members.len());
        let mut tasks = Vec::with_capacity(plan.members.len());
        for (index, (spec, collab)) in plan.members.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel(COMMANDS);
            let handler = NodeHandler::new(shared.clone(), collab, index);
            tasks.push(tokio::spawn(client_task(
                ctx.clone(),
                spec,
                handler,
                rx,
                state.clone(),
                gate.clone(),
                opts.reconnect,
            )));
            members.push(Member { commands: tx });
        }
        Self {
            members,
            collabs: plan.collabs,
            state,
            shared,
            tasks,
        }
    }

    /// Waits until `target` clients are synced or every client that will not be has stopped,
    /// or `timeout`; returns whether the target was reached.
    pub async fn wait_synced(&self, target: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = &self.state;
            if s.synced() >= target {
                return true;
            }
            let stopped = s.stopped.load(Ordering::Acquire);
            if s.synced() + stopped >= self.members.len() as u64
                || tokio::time::Instant::now() >= deadline
            {
                return s.synced() >= target;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Tells every client to disconnect and waits for their tasks.
    pub async fn close(self) {
        for m in &self.members {
            let _ = m.commands.send(Command::Close).await;
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Lets the connection gate go once the client is synced.
pub struct Permit(Option<OwnedSemaphorePermit>);

async fn client_task(
    ctx: ClientCtx,
    spec: NodeSpec,
    mut handler: NodeHandler,
    mut rx: mpsc::Receiver<Command>,
    state: Arc<FleetState>,
    gate: Arc<Semaphore>,
    reconnect: Option<Backoff>,
) {
    let mut rng = Rng::new();
    let mut attempt = 0u32;
    loop {
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        handler.set_permit(Permit(Some(permit)));
        state.attempts.fetch_add(1, Ordering::Relaxed);
        let outcome = client::run_once(&ctx, spec, &mut handler, &mut rx).await;
        handler.set_permit(Permit(None));
        let was_synced = handler.unsync();
        match outcome {
            Outcome::Failed(e) => {
                state.failed.fetch_add(1, Ordering::Relaxed);
                state.error(format!("connect: {}", e.kind()));
                tracing::debug!(node = spec.node_id, error = %e, "connection attempt failed");
                attempt += 1;
            }
            Outcome::Ended(Ended::Closed) => break,
            Outcome::Ended(Ended::Lost(why)) => {
                debug_assert!(was_synced);
                state.lost.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(node = spec.node_id, why, "session lost");
                attempt = 1;
            }
        }
        let Some(backoff) = reconnect else { break };
        let pause = backoff.delay(attempt.max(1), rng.unit());
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            c = rx.recv() => if matches!(c, Some(Command::Close) | None) { break },
        }
    }
    state.stopped.fetch_add(1, Ordering::AcqRel);
}

impl Permit {
    /// No permit held.
    pub fn none() -> Self {
        Self(None)
    }

    /// Releases the gate.
    pub fn release(&mut self) {
        self.0 = None;
    }
}
