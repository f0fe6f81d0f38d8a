//! The dispatcher: one task per `SocketIo` reads the instance's queue, drops what is invalid,
//! our own messages and callbacks for other hosts, and hands each message to its namespace.
//!
//! Our own code: core's remote adapters receive per-namespace channels from their driver, while
//! python-socketio publishes every namespace on one exchange and one queue.

use std::sync::Weak;

use crate::{
    broker::{Driver, MessageStream},
    ctr::Shared,
    metrics::inc,
    wire::{self, Message},
};

/// Reads the own queue and hands each valid message to its namespace.
pub(crate) async fn dispatch<D: Driver>(shared: Weak<Shared<D>>, mut stream: MessageStream) {
    while let Some(body) = stream.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let c = &shared.counters;
        inc(&c.received);
        if body.len() > shared.config.max_message_size {
            inc(&c.invalid);
            if let Some(skipped) = c.invalid_log.hit() {
                tracing::warn!(
                    bytes = body.len(),
                    limit = shared.config.max_message_size,
                    skipped,
                    "dropping an oversized broker message (skipped: invalid messages not logged since the last line)"
                );
            }
            continue;
        }
        let msg = match wire::decode(&body) {
            Ok(msg) => msg,
            Err(e) => {
                inc(&c.invalid);
                if let Some(skipped) = c.invalid_log.hit() {
                    let head = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                    tracing::warn!(error = %e, body = %head, skipped,
                        "dropping an invalid broker message (skipped: invalid messages not logged since the last line)");
                }
                continue;
            }
        };
        tracing::trace!(
            method = msg.method(),
            ns = msg.namespace(),
            host = msg.host_id(),
            "broker message"
        );
        let own = msg.host_id() == shared.host_id;
        // A callback's host_id is its destination; every other message's is its sender.
        let for_us = match msg {
            Message::Callback(_) => own,
            _ => !own,
        };
        if !for_us {
            // Our own heartbeats come back through the fanout exchange by design: only other
            // messages of our own (or callbacks for another host) are counted.
            if !(own && matches!(msg, Message::Heartbeat(_))) {
                inc(&c.ignored);
            }
            continue;
        }
        let route = shared
            .routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(msg.namespace())
            .cloned();
        if let Some(tx) = route {
            if tx.send(msg).await.is_err() {
                inc(&c.unroutable);
            }
        } else {
            inc(&c.unroutable);
            tracing::debug!(
                ns = msg.namespace(),
                method = msg.method(),
                "no such namespace here"
            );
        }
    }
}
