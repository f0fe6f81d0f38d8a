//! Handling of the messages of other servers, python-socketio's and ours, on a namespace's
//! local sockets (the counterpart of core's `RemoteRequestHandler`).
//!
//! Our own code rather than socketioxide-core's `RemoteRequestHandler`: it dispatches core's
//! `RequestIn` (`Sid` request ids, core's request types), while here broadcasts arrive as python
//! `emit` messages (with python's addressing and callbacks), request ids are the numbers on the
//! wire, delivery failures are counted, and room changes for a socket that is not here are
//! skipped.

use std::{
    borrow::Cow,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use serde_json::Value as Json;
use socketioxide_core::{
    adapter::{errors::SocketError, BroadcastFlags, BroadcastOptions, SocketEmitter},
    packet::Packet,
};

use crate::{
    adapter::CustomAmqpAdapter,
    broker::Driver,
    metrics::inc,
    python::Recipients,
    requests::Incoming,
    wire::{
        self, DataFormat, Emit, Heartbeat, HeartbeatKind, Message, Reply, Request, RequestOp,
        WireValue,
    },
};

impl<E: SocketEmitter, D: Driver> CustomAmqpAdapter<E, D> {
    /// Options that target one socket that is not here would create ghost room entries.
    pub(crate) fn targets_missing_socket(&self, opts: &BroadcastOptions) -> bool {
        match opts.sid {
            Some(sid) if opts.rooms.is_empty() && !opts.has_flag(BroadcastFlags::Broadcast) => {
                !self.is_local(sid)
            }
            _ => false,
        }
    }

    pub(crate) async fn handle(self: &Arc<Self>, msg: Message) {
        match msg {
            Message::Emit(e) | Message::RawEmit(e) => self.on_emit(e).await,
            Message::Callback(c) => {
                if let Ok(id) = u64::try_from(c.id) {
                    self.deliver(id, Incoming::PyCallback(c));
                } else {
                    tracing::debug!(id = c.id, "callback with a negative id");
                }
            }
            Message::Disconnect(d) => {
                if let Some(sid) = self.local_sid(&d.sid) {
                    if let Err(e) = self.local.disconnect_socket(BroadcastOptions::new(sid)) {
                        tracing::debug!(?e, %sid, "remote disconnect failed");
                    }
                }
            }
            Message::EnterRoom(r) => {
                if let Some(sid) = self.local_sid(&r.sid) {
                    self.local.add_sockets(BroadcastOptions::new(sid), r.room);
                }
            }
            Message::LeaveRoom(r) => {
                if let Some(sid) = self.local_sid(&r.sid) {
                    self.local.del_sockets(BroadcastOptions::new(sid), r.room);
                }
            }
            Message::CloseRoom(c) => {
                let mut opts = BroadcastOptions::default();
                opts.rooms.push(Cow::Owned(c.room.clone()));
                self.local.del_sockets(opts, c.room);
            }
            Message::Request(r) => self.on_request(r).await,
            Message::Response(r) => self.deliver(r.req_id, Incoming::Reply(r.reply)),
            Message::Heartbeat(h) => self.on_heartbeat(h).await,
        }
    }

    pub(crate) async fn on_emit(self: &Arc<Self>, e: Emit) {
        let from_python = e.x_opts.is_none();
        // A message with `x_nargs` (a socketioxide sender in the `Legacy` layout) is read exactly
        // whatever `format` says; other socketioxide messages carry the exact argument list.
        let format = if from_python {
            self.shared.config.python_data_format
        } else {
            DataFormat::Args
        };
        let value = match wire::event_value(&e, format, !from_python) {
            Ok(v) => v,
            Err(err) => {
                let c = &self.shared.counters;
                inc(&c.invalid);
                if let Some(skipped) = c.invalid_log.hit() {
                    tracing::warn!(error = %err, event = %e.event, skipped,
                        "dropping an emit with a bad payload (skipped: invalid messages not logged since the last line)");
                }
                return;
            }
        };
        let target = match &e.x_opts {
            Some(opts) if opts.server_id.is_some_and(|s| s != self.uid) => return,
            Some(opts) => Recipients::Opts(opts.clone()),
            None => self.python_recipients(&e),
        };
        let packet = Packet::event(self.ns.clone(), value);
        if let (Some(req_id), Some(reply_to)) = (e.x_req, e.x_reply_to.clone()) {
            // An ack request from a socketioxide server: count, then one reply per ack.
            let timeout = e.x_timeout_ms.map(Duration::from_millis);
            let (mut acks, count) = self.local_broadcast_with_ack(packet, target, timeout);
            self.reply(&reply_to, req_id, Reply::AckCount { count })
                .await;
            let this = self.clone();
            tokio::spawn(async move {
                while let Some((sid, res)) = acks.next().await {
                    let reply = match res {
                        Ok(v) => Reply::Ack {
                            sid,
                            value: Some(WireValue::from_value(&v)),
                            error: None,
                        },
                        Err(err) => Reply::Ack {
                            sid,
                            value: None,
                            error: Some(serde_json::to_value(&err).unwrap_or(Json::Null)),
                        },
                    };
                    this.reply(&reply_to, req_id, reply).await;
                }
            });
        } else if let Some(cb) = e.callback.clone() {
            // An ack request from a python server: one python `callback` per client ack.
            let (mut acks, _) = self.local_broadcast_with_ack(packet, target, None);
            let shared = self.shared.clone();
            let origin = e.host_id.clone();
            tokio::spawn(async move {
                while let Some((sid, res)) = acks.next().await {
                    let Ok(value) = res else {
                        tracing::debug!(%sid, "no ack for a python callback");
                        continue;
                    };
                    let msg = Message::Callback(wire::Callback {
                        host_id: origin.clone(),
                        sid: cb.room.clone(),
                        namespace: cb.namespace.clone(),
                        id: cb.id,
                        args: wire::callback_args(&value),
                    });
                    if let Err(e) = shared.send(&msg, None).await {
                        tracing::warn!(error = %e, "cannot send a python callback");
                    }
                }
            });
        } else if let Err(errs) = self.local_broadcast(packet, target) {
            // Counted, not listed: after a mass disconnect every remote emit meets many
            // closed sockets, and a list per emit would grow with their square.
            let closed = errs
                .iter()
                .filter(|e| matches!(e, SocketError::Closed))
                .count() as u64;
            let full = errs.len() as u64 - closed;
            let c = &self.shared.counters;
            c.delivery_closed.fetch_add(closed, Ordering::Relaxed);
            c.delivery_full.fetch_add(full, Ordering::Relaxed);
            tracing::debug!(closed, full, "some local sockets did not get a remote emit");
            if full > 0 {
                if let Some(skipped) = c.full_log.hit() {
                    tracing::warn!(
                        sockets = full,
                        not_logged_before = skipped,
                        "remote emits skipped local sockets whose buffer was full (clients not \
                         reading); one line per 10 s at most"
                    );
                }
            }
        }
    }

    pub(crate) async fn on_request(&self, r: Request) {
        if r.target.is_some_and(|t| t != self.uid) {
            return;
        }
        let opts = r.opts;
        match (r.op, r.req_id) {
            (RequestOp::FetchSockets, Some(req_id)) => {
                let sockets = self.local.fetch_sockets(opts);
                self.reply(&r.reply_to, req_id, Reply::Sockets { sockets })
                    .await;
            }
            (RequestOp::Rooms, Some(req_id)) => {
                let rooms = self
                    .local
                    .rooms(opts)
                    .into_iter()
                    .map(Cow::into_owned)
                    .collect();
                self.reply(&r.reply_to, req_id, Reply::Rooms { rooms })
                    .await;
            }
            (RequestOp::FetchSockets | RequestOp::Rooms, None) => {
                inc(&self.shared.counters.invalid);
                tracing::debug!(op = ?r.op, "a request for a reply without a request id");
            }
            (RequestOp::AddSockets, _) if !self.targets_missing_socket(&opts) => {
                self.local.add_sockets(opts, r.rooms);
            }
            (RequestOp::DelSockets, _) if !self.targets_missing_socket(&opts) => {
                self.local.del_sockets(opts, r.rooms);
            }
            (RequestOp::DisconnectSockets, _) => {
                if let Err(e) = self.local.disconnect_socket(opts) {
                    tracing::debug!(?e, "remote disconnect failed for some sockets");
                }
            }
            (RequestOp::AddSockets | RequestOp::DelSockets, _) => {}
        }
    }

    pub(crate) async fn on_heartbeat(&self, h: Heartbeat) {
        let uid = h.uid;
        if uid == self.uid {
            return;
        }
        match h.kind {
            HeartbeatKind::Bye => {
                self.peers.forget(uid);
            }
            HeartbeatKind::Init | HeartbeatKind::Beat => {
                self.peers.seen(uid, &h.reply_to, h.state, Instant::now());
                if h.kind == HeartbeatKind::Init {
                    self.heartbeat(HeartbeatKind::Beat, Some(&h.reply_to)).await;
                }
            }
        }
    }
}
