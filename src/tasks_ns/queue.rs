//! One ordered job queue per socket.
//!
//! socketioxide 0.18 spawns every async handler as its own task, so two
//! events of one client may be handled in either order. vantage6's
//! semantics need them in order (a connect before the client's first
//! event, `algorithm_log` lines appended as sent, a disconnect after all
//! of them). The extractors below run synchronously in socketioxide's
//! receive path, in the order of the packets, and only *enqueue*; the
//! socket's session task (in the parent module) handles the jobs one by one.

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use serde_json::Value;
use socketioxide::{
    adapter::Adapter,
    extract::{Event, State, TryData},
    handler::{FromConnectParts, FromDisconnectParts, FromMessageParts},
    socket::{DisconnectReason, Socket},
};
use tokio::sync::Notify;
use tracing::warn;

use super::TasksContext;

/// Events a session may have queued before new ones are dropped (a client
/// that floods faster than the database keeps up is not served forever).
pub const MAX_QUEUED_EVENTS: usize = 1024;

/// Work for a socket's session task.
#[derive(Debug)]
pub enum Job {
    /// The namespace CONNECT was acknowledged.
    Connect,
    /// A client event: its name and its first argument (`None` when there
    /// was none or it could not be decoded).
    Event(String, Option<Value>),
    /// The socket disconnected, for this reason; the last job.
    Disconnect(DisconnectReason),
}

/// A socket's queue, shared by its [`JobSender`] (in the socket's
/// extensions) and its [`JobReceiver`] (in the session task).
///
/// Not a tokio channel: an `mpsc` channel allocates its first block of 32
/// slots when it is created, about 2 KiB per connection that an idle
/// client never uses; this deque allocates when jobs wait and gives the
/// room back once they are done (docs/memory.md).
#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    ready: Notify,
}

#[derive(Default)]
struct Pending {
    jobs: VecDeque<Job>,
    /// The client's event budget (see [`EventBudget`]).
    bucket: Bucket,
    /// `Event` jobs in `jobs` (bounded by [`MAX_QUEUED_EVENTS`]).
    events: usize,
    /// The receiver is gone: nothing is queued any more.
    closed: bool,
}

/// How many events a client may send: `rate` per second on average, up to
/// `burst` at once; beyond that its events are dropped (and counted), and
/// once `disconnect_after` of them were dropped within
/// [`FLOOD_WINDOW`] the client is disconnected. vantage6 nodes send a
/// handful of events per task and a `ping` a minute; the defaults
/// (`client_event_rate`, `client_event_burst`, `client_flood_disconnect`)
/// leave them far from the limit and stop one client from taking the
/// instance's database and log for itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventBudget {
    /// Events per second, on average.
    pub rate: f64,
    /// Events at once (the bucket's size).
    pub burst: f64,
    /// Dropped events within [`FLOOD_WINDOW`] after which the client is
    /// disconnected (0: never).
    pub disconnect_after: u64,
}

/// The window over which a client's dropped events are counted for
/// [`EventBudget::disconnect_after`].
pub const FLOOD_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// A token bucket, filled lazily when an event arrives.
#[derive(Debug, Default)]
struct Bucket {
    tokens: f64,
    refilled: Option<std::time::Instant>,
    window_started: Option<std::time::Instant>,
    dropped_in_window: u64,
}

/// What the budget says of one event.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Allowed,
    /// Dropped; `flooding` once the window's drops reached the threshold.
    Dropped {
        flooding: bool,
    },
}

impl Bucket {
    fn take(&mut self, budget: &EventBudget, now: std::time::Instant) -> Verdict {
        let refilled = *self.refilled.get_or_insert_with(|| {
            self.tokens = budget.burst;
            now
        });
        let elapsed = now.saturating_duration_since(refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * budget.rate).min(budget.burst);
        self.refilled = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allowed;
        }
        let started = *self.window_started.get_or_insert(now);
        if now.saturating_duration_since(started) > FLOOD_WINDOW {
            self.window_started = Some(now);
            self.dropped_in_window = 0;
        }
        self.dropped_in_window += 1;
        Verdict::Dropped {
            flooding: budget.disconnect_after > 0
                && self.dropped_in_window >= budget.disconnect_after,
        }
    }
}

/// Slots an empty queue keeps; a larger one (after a burst) is freed.
const KEPT_CAPACITY: usize = 4;

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        // Never held across a panic that matters: the deque stays consistent.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why a job was not queued; holds the job.
enum Refused {
    /// [`MAX_QUEUED_EVENTS`] events are waiting already.
    Full(Job),
    /// Over the client's [`EventBudget`]; `flooding`: disconnect it.
    RateLimited { flooding: bool },
    /// The session has ended.
    Closed,
}

/// The receiving side, owned by the session task.
pub struct JobReceiver {
    shared: Arc<Shared>,
}

impl JobReceiver {
    /// The next job, in arrival order; waits for one.
    pub async fn next(&mut self) -> Job {
        loop {
            {
                let mut pending = self.shared.pending();
                if let Some(job) = pending.jobs.pop_front() {
                    if matches!(job, Job::Event(..)) {
                        pending.events -= 1;
                    }
                    if pending.jobs.is_empty() && pending.jobs.capacity() > KEPT_CAPACITY {
                        pending.jobs.shrink_to(KEPT_CAPACITY);
                    }
                    return job;
                }
            }
            // `notify_one` keeps a permit when nobody waits, so a job queued
            // between the check above and this wait is not missed.
            self.shared.ready.notified().await;
        }
    }
}

impl Drop for JobReceiver {
    fn drop(&mut self) {
        let mut pending = self.shared.pending();
        pending.closed = true;
        pending.jobs = VecDeque::new();
        pending.events = 0;
    }
}

/// The sending side, kept in the socket's extensions.
#[derive(Clone)]
struct JobSender {
    shared: Arc<Shared>,
}

impl JobSender {
    fn send(&self, job: Job) -> Result<(), Refused> {
        self.send_within(job, None)
    }

    /// Queues `job`; an event only within `budget`, when given.
    fn send_within(&self, job: Job, budget: Option<&EventBudget>) -> Result<(), Refused> {
        {
            let mut pending = self.shared.pending();
            if pending.closed {
                return Err(Refused::Closed);
            }
            if let (Job::Event(..), Some(budget)) = (&job, budget) {
                if let Verdict::Dropped { flooding } =
                    pending.bucket.take(budget, std::time::Instant::now())
                {
                    return Err(Refused::RateLimited { flooding });
                }
            }
            if matches!(job, Job::Event(..)) {
                if pending.events >= MAX_QUEUED_EVENTS {
                    return Err(Refused::Full(job));
                }
                pending.events += 1;
            }
            pending.jobs.push_back(job);
        }
        self.shared.ready.notify_one();
        Ok(())
    }
}

/// Connect-handler extractor: creates the socket's queue with a `Connect`
/// job first, routes every event ([`Enqueued`]) and the disconnect
/// ([`Disconnected`]) of the socket to it, and hands over the receiver for
/// the session task. It runs before socketioxide reads any packet of the
/// client, so nothing can arrive before the routes exist.
pub struct SessionStart(pub JobReceiver);

impl<A: Adapter> FromConnectParts<A> for SessionStart {
    type Error = Infallible;
    fn from_connect_parts(
        s: &Arc<Socket<A>>,
        _: &Option<socketioxide_core::Value>,
    ) -> Result<Self, Infallible> {
        let shared = Arc::new(Shared::default());
        let sender = JobSender {
            shared: shared.clone(),
        };
        // The receiver is alive: it is returned below.
        let _ = sender.send(Job::Connect);
        s.extensions.insert(sender);
        s.on_fallback(async |_: Enqueued| {});
        s.on_disconnect(async |_: Disconnected| {});
        Ok(SessionStart(JobReceiver { shared }))
    }
}

/// Message-handler extractor: enqueues the event (name and first argument).
pub struct Enqueued;

impl<A: Adapter> FromMessageParts<A> for Enqueued {
    type Error = Infallible;
    fn from_message_parts(
        s: &Arc<Socket<A>>,
        v: &mut socketioxide_core::Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        let ctx = State::<TasksContext>::from_message_parts(s, v, ack_id).ok();
        let event = match Event::from_message_parts(s, v, ack_id) {
            Ok(Event(event)) => event,
            Err(e) => {
                if let Some(State(ctx)) = ctx {
                    ctx.metrics().ignored_event("undecodable");
                    if let Some(n) = ctx.log_due("undecodable", 1) {
                        warn!(sid = %s.id, error = %e, dropped = n, "undecodable event dropped");
                    }
                }
                return Ok(Enqueued);
            }
        };
        let Ok(TryData(data)) = TryData::<Value>::from_message_parts(s, v, ack_id);
        let Some(sender) = s.extensions.get::<JobSender>() else {
            return Ok(Enqueued);
        };
        let budget = ctx.as_ref().map(|State(ctx)| ctx.event_budget());
        match sender.send_within(Job::Event(event, data.ok()), budget.as_ref()) {
            Ok(()) => {}
            Err(Refused::RateLimited { flooding }) => {
                if let Some(State(ctx)) = ctx {
                    ctx.metrics().ignored_event("rate_limited");
                    if let Some(n) = ctx.log_due("rate_limited", 1) {
                        warn!(sid = %s.id, dropped = n,
                            "client over its event rate (client_event_rate), events dropped");
                    }
                    if flooding {
                        ctx.metrics().ignored_event("flood_disconnect");
                        if let Some(n) = ctx.log_due("flood_disconnect", 1) {
                            warn!(sid = %s.id, clients = n,
                                "client disconnected: too many events dropped (client_flood_disconnect)");
                        }
                        let socket = s.clone();
                        tokio::spawn(async move {
                            // Already gone when it left meanwhile: nothing to do.
                            let _ = socket.disconnect();
                        });
                    }
                }
            }
            Err(Refused::Full(job)) => {
                // A flooding client would otherwise get one line per event.
                if let (Some(State(ctx)), Job::Event(event, _)) = (ctx, job) {
                    ctx.metrics().ignored_event("queue_full");
                    if let Some(n) = ctx.log_due("queue_full", 1) {
                        warn!(sid = %s.id, %event, dropped = n, "session queue full, event dropped");
                    }
                }
            }
            // Only after the session task ended, i.e. after the disconnect.
            Err(Refused::Closed) => {}
        }
        Ok(Enqueued)
    }
}

/// Ends `s`'s session as if it had disconnected (`reason`), without
/// touching its transport: the session handles its disconnect (rooms left,
/// offline, `node-offline`) while the namespace and the adapter still work.
/// A graceful stop does this before it closes the transports: socketioxide
/// removes the namespaces before it closes them, so their disconnect
/// handlers would find no namespace. The socket's later disconnect finds
/// the queue closed and changes nothing. Returns whether a session was
/// told.
pub fn end_session<A: Adapter>(s: &Socket<A>, reason: DisconnectReason) -> bool {
    s.extensions
        .get::<JobSender>()
        .is_some_and(|sender| sender.send(Job::Disconnect(reason)).is_ok())
}

/// Disconnect-handler extractor: enqueues the final `Disconnect` job.
pub struct Disconnected;

impl<A: Adapter> FromDisconnectParts<A> for Disconnected {
    type Error = Infallible;
    fn from_disconnect_parts(
        s: &Arc<Socket<A>>,
        reason: DisconnectReason,
    ) -> Result<Self, Infallible> {
        if let Some(sender) = s.extensions.get::<JobSender>() {
            let _ = sender.send(Job::Disconnect(reason));
        }
        Ok(Disconnected)
    }
}

#[cfg(test)]
mod budget_tests {
    use std::time::{Duration, Instant};

    use super::{Bucket, EventBudget, Verdict};

    const BUDGET: EventBudget = EventBudget {
        rate: 10.0,
        burst: 5.0,
        disconnect_after: 20,
    };

    #[test]
    fn a_burst_is_allowed_then_the_rate_and_a_flood_is_flagged() {
        let mut b = Bucket::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(b.take(&BUDGET, t0), Verdict::Allowed);
        }
        assert_eq!(b.take(&BUDGET, t0), Verdict::Dropped { flooding: false });
        // 0.1 s later one more token
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(b.take(&BUDGET, t1), Verdict::Allowed);
        assert_eq!(b.take(&BUDGET, t1), Verdict::Dropped { flooding: false });
        let mut last = Verdict::Allowed;
        for _ in 0..18 {
            last = b.take(&BUDGET, t1);
        }
        assert_eq!(last, Verdict::Dropped { flooding: true });
    }

    #[test]
    fn drops_are_counted_per_window() {
        let mut b = Bucket::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            b.take(&BUDGET, t0);
        }
        for _ in 0..19 {
            assert_eq!(b.take(&BUDGET, t0), Verdict::Dropped { flooding: false });
        }
        // a new window after FLOOD_WINDOW: the count starts again
        let later = t0 + super::FLOOD_WINDOW + Duration::from_secs(1);
        for _ in 0..5 {
            assert_eq!(b.take(&BUDGET, later), Verdict::Allowed);
        }
        assert_eq!(b.take(&BUDGET, later), Verdict::Dropped { flooding: false });
    }
}
