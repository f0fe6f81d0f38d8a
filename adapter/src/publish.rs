//! The messages this server publishes: python-socketio's `emit` for a broadcast (with our
//! `x_*` fields), and our requests, replies and heartbeats.

use std::time::Duration;

use base64::Engine as _;
use serde_json::Value as Json;
use socketioxide_core::{
    adapter::{BroadcastFlags, BroadcastOptions, SocketEmitter},
    packet::{Packet, PacketData},
    Value,
};

use crate::{
    adapter::CustomAmqpAdapter,
    broker::Driver,
    error::Error,
    wire::{
        self, CallbackRef, Emit, Heartbeat, HeartbeatKind, Message, Reply, Request, RequestOp,
        Response, RoomList,
    },
};

impl<E: SocketEmitter, D: Driver> CustomAmqpAdapter<E, D> {
    pub(crate) fn request(
        &self,
        op: RequestOp,
        opts: &BroadcastOptions,
        req_id: Option<u64>,
    ) -> Request {
        Request {
            host_id: self.shared.host_id.clone(),
            namespace: self.ns.clone(),
            uid: self.uid,
            req_id,
            reply_to: self.shared.driver.queue_name().to_owned(),
            target: self.target_server(opts),
            op,
            opts: opts.clone(),
            rooms: Vec::new(),
        }
    }

    pub(crate) async fn reply(&self, queue: &str, req_id: u64, reply: Reply) {
        let msg = Message::Response(Response {
            host_id: self.shared.host_id.clone(),
            namespace: self.ns.clone(),
            uid: self.uid,
            req_id,
            reply,
        });
        if let Err(e) = self.shared.send(&msg, Some(queue)).await {
            tracing::warn!(error = %e, req_id, "cannot send a reply");
        }
    }

    /// Publishes a heartbeat (to `queue` only, when given).
    pub(crate) async fn send_heartbeat(
        &self,
        kind: HeartbeatKind,
        queue: Option<&str>,
    ) -> Result<(), Error> {
        let msg = Message::Heartbeat(Heartbeat {
            host_id: self.shared.host_id.clone(),
            namespace: self.ns.clone(),
            uid: self.uid,
            reply_to: self.shared.driver.queue_name().to_owned(),
            kind,
            state: crate::ctr::lock(&self.announced.value).clone(),
        });
        self.shared.send(&msg, queue).await
    }

    /// [`send_heartbeat`](Self::send_heartbeat) in the background: a failure is logged.
    pub(crate) async fn heartbeat(&self, kind: HeartbeatKind, queue: Option<&str>) {
        if let Err(e) = self.send_heartbeat(kind, queue).await {
            tracing::debug!(error = %e, ?kind, "cannot send a heartbeat");
        }
    }

    /// Builds the `emit` for a broadcast, or `None` when the options reach nobody.
    pub(crate) fn emit_message(
        &self,
        packet: &Packet,
        opts: &BroadcastOptions,
        ack: Option<(u64, Duration)>,
    ) -> Result<Option<Message>, Error> {
        let is_broadcast = opts.has_flag(BroadcastFlags::Broadcast);
        if !is_broadcast && opts.rooms.is_empty() && opts.sid.is_none() {
            return Ok(None);
        }
        let (PacketData::Event(value, _) | PacketData::BinaryEvent(value, _)) = &packet.inner
        else {
            return Err(Error::Unsupported("only events can be broadcast"));
        };
        let (fields, x_value) = match value {
            Value::Str(..) => (
                wire::event_fields(value, self.shared.config.python_data_format)?,
                None,
            ),
            Value::Bytes(b) => (
                wire::EventFields {
                    event: String::new(),
                    data: Json::Array(Vec::new()),
                    binary: false,
                    nargs: None,
                },
                Some(base64::engine::general_purpose::STANDARD.encode(b)),
            ),
        };
        let room = if !opts.rooms.is_empty() {
            RoomList::from_list(
                opts.rooms
                    .iter()
                    .map(std::string::ToString::to_string)
                    .collect(),
            )
        } else if !is_broadcast {
            opts.sid
                .map(|s| RoomList::One(s.to_string()))
                .unwrap_or_default()
        } else {
            RoomList::None
        };
        let skip_sid = match opts.sid {
            Some(sid) if is_broadcast => RoomList::One(sid.to_string()),
            _ => RoomList::None,
        };
        let callback = ack.map(|(id, _)| CallbackRef {
            room: room.to_vec().into_iter().next().unwrap_or_default(),
            namespace: self.ns.clone(),
            id: i64::try_from(id).unwrap_or(i64::MAX),
        });
        let emit = Emit {
            event: fields.event,
            data: fields.data,
            binary: fields.binary,
            namespace: self.ns.clone(),
            room,
            skip_sid,
            callback,
            host_id: self.shared.host_id.clone(),
            x_uid: Some(self.uid),
            x_opts: Some(opts.clone()),
            x_req: ack.map(|(id, _)| id),
            x_reply_to: ack.map(|_| self.shared.driver.queue_name().to_owned()),
            x_timeout_ms: ack.map(|(_, t)| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            x_value: x_value.clone(),
            x_nargs: fields.nargs,
        };
        Ok(Some(if x_value.is_some() {
            Message::RawEmit(emit)
        } else {
            Message::Emit(emit)
        }))
    }
}
