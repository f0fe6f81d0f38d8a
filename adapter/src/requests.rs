//! Pending requests: the replies (`x_response`) and python callbacks routed to a waiting
//! `fetch_sockets`, `rooms` or ack stream by request id, and the collection of replies.
//!
//! Our own code rather than socketioxide-core's `ResponseHandlers`/`DropStream`/`wait_responses`:
//! those key requests by a `Sid` and carry core's `Response` type, while our request ids are the
//! numbers on the wire (`req_id`, `x_req`, python's callback `id`) and a request can also receive
//! python `callback` messages, which carry no response type.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc, Mutex},
};

use socketioxide_core::adapter::SocketEmitter;
use tokio::sync::mpsc;

use crate::{
    adapter::CustomAmqpAdapter,
    broker::Driver,
    ctr::lock,
    wire::{self, Reply},
};

pub(crate) enum Incoming {
    Reply(Reply),
    PyCallback(wire::Callback),
}

pub(crate) type Pending = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Incoming>>>>;

/// Removes a pending request when the waiting side is gone.
pub(crate) struct PendingGuard {
    pub(crate) pending: Pending,
    pub(crate) id: u64,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        lock(&self.pending).remove(&self.id);
    }
}

impl<E: SocketEmitter, D: Driver> CustomAmqpAdapter<E, D> {
    pub(crate) fn register(&self) -> (u64, mpsc::UnboundedReceiver<Incoming>, PendingGuard) {
        let id = self.shared.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.pending).insert(id, tx);
        let guard = PendingGuard {
            pending: self.pending.clone(),
            id,
        };
        (id, rx, guard)
    }

    pub(crate) fn deliver(&self, id: u64, item: Incoming) {
        let tx = lock(&self.pending).get(&id).cloned();
        if let Some(tx) = tx {
            let _ = tx.send(item);
        } else {
            tracing::debug!(req_id = id, "reply for an unknown or finished request");
        }
    }

    /// Waits for up to `expected` replies, at most `request_timeout`.
    pub(crate) async fn collect(
        &self,
        mut rx: mpsc::UnboundedReceiver<Incoming>,
        expected: usize,
        mut f: impl FnMut(Reply),
    ) {
        let wait = async {
            let mut n = 0;
            while n < expected {
                match rx.recv().await {
                    Some(Incoming::Reply(r)) => {
                        n += 1;
                        f(r);
                    }
                    Some(Incoming::PyCallback(_)) => {}
                    None => break,
                }
            }
        };
        if tokio::time::timeout(self.shared.config.request_timeout, wait)
            .await
            .is_err()
        {
            tracing::debug!(expected, "timed out waiting for replies");
        }
    }
}
