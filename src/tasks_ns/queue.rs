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
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use serde_json::Value;
use socketioxide::{
    adapter::Adapter,
    extract::{Event, State, TryData},
    handler::{FromConnectParts, FromDisconnectParts, FromMessageParts},
    socket::{DisconnectReason, Socket},
};
use tokio::sync::mpsc;
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

/// The receiving side, owned by the session task.
pub struct JobReceiver {
    rx: mpsc::UnboundedReceiver<Job>,
    queued: Arc<AtomicUsize>,
}

impl JobReceiver {
    /// The next job, in arrival order.
    pub async fn next(&mut self) -> Option<Job> {
        let job = self.rx.recv().await?;
        if matches!(job, Job::Event(..)) {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        Some(job)
    }
}

/// The sending side, kept in the socket's extensions.
#[derive(Clone)]
struct JobSender {
    tx: mpsc::UnboundedSender<Job>,
    queued: Arc<AtomicUsize>,
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
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        // The receiver is alive: it is returned below.
        let _ = tx.send(Job::Connect);
        s.extensions.insert(JobSender {
            tx,
            queued: queued.clone(),
        });
        s.on_fallback(async |_: Enqueued| {});
        s.on_disconnect(async |_: Disconnected| {});
        Ok(SessionStart(JobReceiver { rx, queued }))
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
        if sender.queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED_EVENTS {
            sender.queued.fetch_sub(1, Ordering::Relaxed);
            // A flooding client would otherwise get one line per event.
            if let Some(State(ctx)) = ctx {
                ctx.metrics().ignored_event("queue_full");
                if let Some(n) = ctx.log_due("queue_full", 1) {
                    warn!(sid = %s.id, %event, dropped = n, "session queue full, event dropped");
                }
            }
            return Ok(Enqueued);
        }
        // Fails only after the session task ended, i.e. after the disconnect.
        let _ = sender.tx.send(Job::Event(event, data.ok()));
        Ok(Enqueued)
    }
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
            let _ = sender.tx.send(Job::Disconnect(reason));
        }
        Ok(Disconnected)
    }
}
