//! Our extension messages, exchanged between socketioxide instances only (python-socketio
//! ignores methods starting with `x_`): [`Request`] (`x_request`), [`Response`] (`x_response`)
//! and [`Heartbeat`] (`x_heartbeat`).

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value as Json;
use socketioxide_core::{
    adapter::{BroadcastOptions, RemoteSocketData},
    Sid, Uid, Value,
};

use super::{payload::decode_bins, WireError, BASE64};

/// What a [`Request`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RequestOp {
    /// Reply with the matching sockets ([`Reply::Sockets`]).
    FetchSockets,
    /// Reply with the rooms of the matching sockets ([`Reply::Rooms`]).
    Rooms,
    /// Add the matching sockets to `rooms`; no reply.
    AddSockets,
    /// Remove the matching sockets from `rooms`; no reply.
    DelSockets,
    /// Disconnect the matching sockets; no reply.
    DisconnectSockets,
}

/// Extension (`x_request`): a socketioxide-only request to the other instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Request {
    /// The sending host.
    pub host_id: String,
    /// The namespace.
    pub namespace: String,
    /// The socketioxide server id of the sender.
    pub uid: Uid,
    /// The request id, echoed in the responses; `None` for requests without a reply (written
    /// `0` on the wire).
    #[serde(with = "zero_is_none")]
    pub req_id: Option<u64>,
    /// The queue to send responses to.
    pub reply_to: String,
    /// The only server that should act on it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Uid>,
    /// What to do.
    pub op: RequestOp,
    /// Which sockets.
    #[serde(default)]
    pub opts: BroadcastOptions,
    /// The rooms for `add_sockets` / `del_sockets`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
}

/// `req_id` as the wire has it: a number, `0` for "no reply wanted" (request ids start at 1).
mod zero_is_none {
    use super::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::ref_option, reason = "serde's `with` signature")]
    pub(super) fn serialize<S: Serializer>(id: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(id.unwrap_or(0))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Ok(Some(u64::deserialize(d)?).filter(|id| *id != 0))
    }
}

/// A payload of an ack, as carried in a [`Reply::Ack`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WireValue {
    /// The JSON text of a string payload.
    // duplicates: deliberate — serde attributes of the wire fields, one per field
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The binary attachments of a string payload, base64.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bins: Vec<String>,
    /// A binary payload (e.g. msgpack), base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
}

impl WireValue {
    /// Encodes a socketioxide [`Value`].
    pub fn from_value(value: &Value) -> Self {
        match value {
            Value::Str(text, bins) => WireValue {
                text: Some(text.to_string()),
                bins: bins.iter().flatten().map(|b| BASE64.encode(b)).collect(),
                bytes: None,
            },
            Value::Bytes(b) => WireValue {
                text: None,
                bins: Vec::new(),
                bytes: Some(BASE64.encode(b)),
            },
        }
    }
    /// Decodes back into a socketioxide [`Value`].
    pub fn into_value(self) -> Result<Value, WireError> {
        if let Some(b) = self.bytes {
            let b = BASE64
                .decode(b)
                .map_err(|source| WireError::Base64 { index: 0, source })?;
            return Ok(Value::Bytes(b.into()));
        }
        let text = self
            .text
            .ok_or(WireError::Payload("ack value without text"))?;
        let bins = decode_bins(&self.bins)?;
        Ok(Value::Str(text.into(), bins))
    }
}

/// The body of a [`Response`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reply {
    /// Answer to [`RequestOp::FetchSockets`].
    Sockets {
        /// The matching sockets of the replying server.
        sockets: Vec<RemoteSocketData>,
    },
    /// Answer to [`RequestOp::Rooms`].
    Rooms {
        /// The rooms of the matching sockets of the replying server.
        rooms: Vec<String>,
    },
    /// First answer to an ack-requesting [`Emit`](super::Emit): how many acks will follow.
    AckCount {
        /// The number of local sockets the event was sent to.
        count: u32,
    },
    /// One client's ack (or its failure).
    Ack {
        /// The acking socket.
        sid: Sid,
        /// The ack payload, on success.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<WireValue>,
        /// The ack error (socketioxide's `AckError` as JSON), on failure.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Json>,
    },
}

/// Extension (`x_response`): a reply to a [`Request`] or to an ack-requesting [`Emit`](super::Emit), sent
/// directly to the requester's queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Response {
    /// The replying host.
    pub host_id: String,
    /// The namespace.
    pub namespace: String,
    /// The socketioxide server id of the replier.
    pub uid: Uid,
    /// The request id.
    pub req_id: u64,
    /// The reply.
    pub reply: Reply,
}

/// The kind of a [`Heartbeat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HeartbeatKind {
    /// Sent once when a namespace starts: every peer answers with a direct `beat`.
    Init,
    /// Periodic liveness signal.
    Beat,
    /// Sent when a namespace closes: peers forget the sender at once.
    Bye,
}

/// Extension (`x_heartbeat`): liveness of socketioxide instances, used for `server_count`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Heartbeat {
    /// The sending host.
    pub host_id: String,
    /// The namespace.
    pub namespace: String,
    /// The socketioxide server id of the sender.
    pub uid: Uid,
    /// The sender's queue, for direct messages.
    pub reply_to: String,
    /// The kind.
    pub kind: HeartbeatKind,
    /// What the sender announces about itself to its peers (the application's choice, see
    /// [`AmqpAdapterCtr::set_local_state`](crate::AmqpAdapterCtr::set_local_state)); absent
    /// when it announces nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<serde_json::Value>,
}
