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
    /// `Event` jobs in `jobs` (bounded by [`MAX_QUEUED_EVENTS`]).
    events: usize,
    /// The receiver is gone: nothing is queued any more.
    closed: bool,
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
        {
            let mut pending = self.shared.pending();
            if pending.closed {
                return Err(Refused::Closed);
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
        match sender.send(Job::Event(event, data.ok())) {
            Ok(()) => {}
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
