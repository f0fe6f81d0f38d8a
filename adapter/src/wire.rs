//! The JSON messages exchanged on the broker.
//!
//! Two families of messages share one fanout exchange:
//!
//! * the six methods of **python-socketio's message queue** (5.15.1 and later):
//!   [`Emit`], [`Callback`], [`Disconnect`], [`RoomMembership`] (`enter_room` / `leave_room`)
//!   and [`CloseRoom`]. They are encoded with the same keys, in the same order, as python-socketio,
//!   so a Python server (Flask-SocketIO, `socketio.KombuManager`, `AsyncAioPikaManager`) on the same
//!   exchange understands what we publish and we understand what it publishes;
//! * **extension messages**, used only between socketioxide instances: [`Request`], [`Response`],
//!   [`Heartbeat`] and the `x_emit` form of [`Emit`] (for payloads that are not JSON). Their method
//!   names start with `x_`, which python-socketio ignores, and the extra `x_*` fields we add to
//!   `emit` are ignored by Python as well.
//!
//! The `data` of an `emit` is written in python-socketio 5.15.1+'s layout (the argument list) by
//! default, or, for python-socketio 5.14.0 to 5.15.0 peers, in their layout (the bare argument)
//! with an `x_nargs` field so that socketioxide receivers still get the exact arguments: see
//! [`DataFormat`] and [`args_fields`].
//!
//! Everything here is pure: [`decode`] never panics, whatever the input, and reports malformed
//! messages with a [`WireError`].

use std::collections::VecDeque;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value as Json;
use socketioxide_core::{adapter::BroadcastOptions, adapter::RemoteSocketData, Value};

/// An error while decoding or encoding a broker message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The body is not valid JSON.
    #[error("message is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// The body is JSON, but not an object.
    #[error("message is not a JSON object")]
    NotAnObject,
    /// The object has no string `method` key.
    #[error("message has no string `method` key")]
    MissingMethod,
    /// The `method` is not one we know.
    #[error("unknown method `{0}`")]
    UnknownMethod(String),
    /// A known method with fields of the wrong shape.
    #[error("invalid `{method}` message: {source}")]
    Invalid {
        /// The method of the message.
        method: &'static str,
        /// What serde found wrong.
        #[source]
        source: serde_json::Error,
    },
    /// A binary attachment is not valid base64.
    #[error("invalid base64 in attachment {index}: {source}")]
    Base64 {
        /// The index of the attachment (0 for the first one).
        index: usize,
        /// The decoding error.
        #[source]
        source: base64::DecodeError,
    },
    /// The event payload does not have the expected form.
    #[error("invalid event payload: {0}")]
    Payload(&'static str),
    /// Serializing a message failed (never expected with these types).
    #[error("cannot encode message: {0}")]
    Encode(#[source] serde_json::Error),
}

/// A room or sid list as python-socketio writes it: `null`, one string, or an array of strings.
///
/// Python allows any hashable as a room; numbers and other non-string items are kept as their
/// JSON text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Targets {
    /// `null`: no restriction (every client for `room`, nobody for `skip_sid`).
    #[default]
    None,
    /// One string.
    One(String),
    /// An array of strings.
    Many(Vec<String>),
}

impl Targets {
    /// The targets as a list (empty for [`Targets::None`]).
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Targets::None => Vec::new(),
            Targets::One(s) => vec![s.clone()],
            Targets::Many(v) => v.clone(),
        }
    }
    /// Builds `null`, a string or an array from a list, as python-socketio would.
    pub fn from_list(mut list: Vec<String>) -> Self {
        match list.len() {
            0 => Targets::None,
            1 => Targets::One(list.remove(0)),
            _ => Targets::Many(list),
        }
    }
    /// `true` for [`Targets::None`].
    pub fn is_none(&self) -> bool {
        matches!(self, Targets::None)
    }
}

fn json_to_string(v: Json) -> String {
    match v {
        Json::String(s) => s,
        other => other.to_string(),
    }
}

impl Serialize for Targets {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Targets::None => s.serialize_none(),
            Targets::One(r) => s.serialize_str(r),
            Targets::Many(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Targets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Json::deserialize(d)? {
            Json::Null => Targets::None,
            Json::Array(items) => Targets::Many(items.into_iter().map(json_to_string).collect()),
            other => Targets::One(json_to_string(other)),
        })
    }
}

/// A string field that python may fill with another scalar (e.g. an int room).
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(json_to_string(Json::deserialize(d)?))
}

/// A boolean that also accepts `null`, `0` and `1`.
fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match Json::deserialize(d)? {
        Json::Bool(b) => b,
        Json::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        _ => false,
    })
}

fn root_ns() -> String {
    "/".to_owned()
}

/// A namespace: `/` when `null` or empty, like python-socketio's `namespace or '/'`.
fn lenient_ns<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Json::deserialize(d)? {
        Json::Null => root_ns(),
        Json::String(s) if s.is_empty() => root_ns(),
        other => json_to_string(other),
    })
}

/// The `callback` field of an `emit`: `[room, namespace, id]`.
///
/// Anything that is not a 3-element array is read as "no callback", like python-socketio does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackRef {
    /// The emit target the callback is for (normally one sid); echoed back as `sid`.
    pub room: String,
    /// The namespace.
    pub namespace: String,
    /// The ack id chosen by the origin host; echoed back as `id`.
    pub id: i64,
}

impl Serialize for CallbackRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.room, &self.namespace, self.id).serialize(s)
    }
}

fn lenient_callback<'de, D: Deserializer<'de>>(d: D) -> Result<Option<CallbackRef>, D::Error> {
    let Json::Array(mut items) = Json::deserialize(d)? else {
        return Ok(None);
    };
    if items.len() != 3 {
        return Ok(None);
    }
    let id = items.pop().and_then(|v| v.as_i64());
    let namespace = items.pop().map(json_to_string);
    let room = items.pop().map(json_to_string);
    Ok(match (room, namespace, id) {
        (Some(room), Some(namespace), Some(id)) => Some(CallbackRef {
            room,
            namespace,
            id,
        }),
        _ => None,
    })
}

/// `emit`: deliver an event to the clients of a namespace, optionally filtered by rooms.
///
/// The first nine fields are python-socketio's, in its order. The `x_*` fields are our
/// extensions, only written by socketioxide instances and omitted when empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Emit {
    /// The event name.
    pub event: String,
    /// The arguments: a JSON array of args, or, when `binary` is true,
    /// `[args_with_placeholders, base64_attachment_0, ...]`.
    #[serde(default)]
    pub data: Json,
    /// Whether `data` carries binary attachments.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub binary: bool,
    /// The namespace (`/` when missing).
    #[serde(default = "root_ns", deserialize_with = "lenient_ns")]
    pub namespace: String,
    /// The rooms to reach (`null` = everybody in the namespace). A sid is also a room.
    #[serde(default)]
    pub room: Targets,
    /// The sids not to reach.
    #[serde(default)]
    pub skip_sid: Targets,
    /// When set, every receiving client's ack is sent back as a [`Callback`].
    #[serde(default, deserialize_with = "lenient_callback")]
    pub callback: Option<CallbackRef>,
    /// The sending host.
    #[serde(default, deserialize_with = "lenient_string")]
    pub host_id: String,
    /// Extension: the socketioxide server id of the sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_uid: Option<String>,
    /// Extension: the exact socketioxide broadcast options (rooms, except, flags, target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_opts: Option<BroadcastOptions>,
    /// Extension: the id of an ack request; replies go to `x_reply_to` as [`Response`]s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_req: Option<u64>,
    /// Extension: the queue to send replies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_reply_to: Option<String>,
    /// Extension: the ack timeout in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_timeout_ms: Option<u64>,
    /// Extension: a non-JSON payload (e.g. msgpack), base64; then `event`/`data` are unused and
    /// the message is sent with the `x_emit` method, which Python ignores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_value: Option<String>,
    /// Extension: `data` is laid out as python-socketio 5.14.0 to 5.15.0 write it
    /// ([`DataFormat::Value`]) and carries this many arguments: `null` for none, the argument
    /// itself for one, the array of the arguments for several. Python ignores it; socketioxide
    /// receivers use it to rebuild the exact arguments. Absent in the 5.15.1+ layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_nargs: Option<usize>,
}

/// `callback`: a client's ack, sent to the host that asked for it.
///
/// Unlike every other message, `host_id` is the **destination**.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Callback {
    /// The host the callback is for.
    #[serde(deserialize_with = "lenient_string")]
    pub host_id: String,
    /// Echo of `callback[0]` of the emit.
    #[serde(deserialize_with = "lenient_string")]
    pub sid: String,
    /// The namespace.
    #[serde(default = "root_ns", deserialize_with = "lenient_ns")]
    pub namespace: String,
    /// Echo of `callback[2]` of the emit.
    pub id: i64,
    /// The ack arguments (a JSON array).
    #[serde(default)]
    pub args: Json,
}

/// `disconnect`: disconnect a client, wherever it is connected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disconnect {
    /// The client's sid.
    #[serde(deserialize_with = "lenient_string")]
    pub sid: String,
    /// The namespace.
    #[serde(default = "root_ns", deserialize_with = "lenient_ns")]
    pub namespace: String,
    /// The sending host.
    #[serde(default, deserialize_with = "lenient_string")]
    pub host_id: String,
}

/// `enter_room` / `leave_room`: add a client to, or remove it from, a room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomMembership {
    /// The client's sid.
    #[serde(deserialize_with = "lenient_string")]
    pub sid: String,
    /// The room.
    #[serde(deserialize_with = "lenient_string")]
    pub room: String,
    /// The namespace.
    #[serde(default = "root_ns", deserialize_with = "lenient_ns")]
    pub namespace: String,
    /// The sending host.
    #[serde(default, deserialize_with = "lenient_string")]
    pub host_id: String,
}

/// `close_room`: remove every client from a room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloseRoom {
    /// The room.
    #[serde(deserialize_with = "lenient_string")]
    pub room: String,
    /// The namespace.
    #[serde(default = "root_ns", deserialize_with = "lenient_ns")]
    pub namespace: String,
    /// The sending host.
    #[serde(default, deserialize_with = "lenient_string")]
    pub host_id: String,
}

/// What a [`Request`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
pub struct Request {
    /// The sending host.
    pub host_id: String,
    /// The namespace.
    pub namespace: String,
    /// The socketioxide server id of the sender.
    pub uid: String,
    /// The request id, echoed in the responses.
    pub req_id: u64,
    /// The queue to send responses to.
    pub reply_to: String,
    /// The only server that should act on it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// What to do.
    pub op: RequestOp,
    /// Which sockets.
    #[serde(default)]
    pub opts: BroadcastOptions,
    /// The rooms for `add_sockets` / `del_sockets`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
}

/// A payload of an ack, as carried in a [`Reply::Ack`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireValue {
    /// The JSON text of a string payload.
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
    /// First answer to an ack-requesting [`Emit`]: how many acks will follow.
    AckCount {
        /// The number of local sockets the event was sent to.
        count: u32,
    },
    /// One client's ack (or its failure).
    Ack {
        /// The acking socket.
        sid: String,
        /// The ack payload, on success.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<WireValue>,
        /// The ack error (socketioxide's `AckError` as JSON), on failure.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Json>,
    },
}

/// Extension (`x_response`): a reply to a [`Request`] or to an ack-requesting [`Emit`], sent
/// directly to the requester's queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The replying host.
    pub host_id: String,
    /// The namespace.
    pub namespace: String,
    /// The socketioxide server id of the replier.
    pub uid: String,
    /// The request id.
    pub req_id: u64,
    /// The reply.
    pub reply: Reply,
}

/// The kind of a [`Heartbeat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
pub struct Heartbeat {
    /// The sending host.
    pub host_id: String,
    /// The namespace.
    pub namespace: String,
    /// The socketioxide server id of the sender.
    pub uid: String,
    /// The sender's queue, for direct messages.
    pub reply_to: String,
    /// The kind.
    pub kind: HeartbeatKind,
}

/// Any message on the exchange.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Message {
    /// python-socketio `emit`.
    Emit(Emit),
    /// python-socketio `callback`.
    Callback(Callback),
    /// python-socketio `disconnect`.
    Disconnect(Disconnect),
    /// python-socketio `enter_room`.
    EnterRoom(RoomMembership),
    /// python-socketio `leave_room`.
    LeaveRoom(RoomMembership),
    /// python-socketio `close_room`.
    CloseRoom(CloseRoom),
    /// Extension `x_emit`: an emit whose payload is in `x_value`.
    #[serde(rename = "x_emit")]
    RawEmit(Emit),
    /// Extension `x_request`.
    #[serde(rename = "x_request")]
    Request(Request),
    /// Extension `x_response`.
    #[serde(rename = "x_response")]
    Response(Response),
    /// Extension `x_heartbeat`.
    #[serde(rename = "x_heartbeat")]
    Heartbeat(Heartbeat),
}

impl Message {
    /// The `method` key of the message.
    pub fn method(&self) -> &'static str {
        match self {
            Message::Emit(_) => "emit",
            Message::Callback(_) => "callback",
            Message::Disconnect(_) => "disconnect",
            Message::EnterRoom(_) => "enter_room",
            Message::LeaveRoom(_) => "leave_room",
            Message::CloseRoom(_) => "close_room",
            Message::RawEmit(_) => "x_emit",
            Message::Request(_) => "x_request",
            Message::Response(_) => "x_response",
            Message::Heartbeat(_) => "x_heartbeat",
        }
    }

    /// The `host_id`: the sender, except for [`Message::Callback`] where it is the destination.
    pub fn host_id(&self) -> &str {
        match self {
            Message::Emit(m) | Message::RawEmit(m) => &m.host_id,
            Message::Callback(m) => &m.host_id,
            Message::Disconnect(m) => &m.host_id,
            Message::EnterRoom(m) | Message::LeaveRoom(m) => &m.host_id,
            Message::CloseRoom(m) => &m.host_id,
            Message::Request(m) => &m.host_id,
            Message::Response(m) => &m.host_id,
            Message::Heartbeat(m) => &m.host_id,
        }
    }

    /// The namespace the message is about.
    pub fn namespace(&self) -> &str {
        match self {
            Message::Emit(m) | Message::RawEmit(m) => &m.namespace,
            Message::Callback(m) => &m.namespace,
            Message::Disconnect(m) => &m.namespace,
            Message::EnterRoom(m) | Message::LeaveRoom(m) => &m.namespace,
            Message::CloseRoom(m) => &m.namespace,
            Message::Request(m) => &m.namespace,
            Message::Response(m) => &m.namespace,
            Message::Heartbeat(m) => &m.namespace,
        }
    }
}

/// Decodes a message body. Never panics.
///
/// The body may be sent with any content type; it is always read as UTF-8 JSON.
pub fn decode(body: &[u8]) -> Result<Message, WireError> {
    let json: Json = serde_json::from_slice(body).map_err(WireError::Json)?;
    let Json::Object(map) = json else {
        return Err(WireError::NotAnObject);
    };
    let method = match map.get("method") {
        Some(Json::String(m)) => m.clone(),
        _ => return Err(WireError::MissingMethod),
    };
    fn read<T: serde::de::DeserializeOwned>(
        method: &'static str,
        map: serde_json::Map<String, Json>,
    ) -> Result<T, WireError> {
        serde_json::from_value(Json::Object(map))
            .map_err(|source| WireError::Invalid { method, source })
    }
    Ok(match method.as_str() {
        "emit" => Message::Emit(read("emit", map)?),
        "callback" => Message::Callback(read("callback", map)?),
        "disconnect" => Message::Disconnect(read("disconnect", map)?),
        "enter_room" => Message::EnterRoom(read("enter_room", map)?),
        "leave_room" => Message::LeaveRoom(read("leave_room", map)?),
        "close_room" => Message::CloseRoom(read("close_room", map)?),
        "x_emit" => Message::RawEmit(read("x_emit", map)?),
        "x_request" => Message::Request(read("x_request", map)?),
        "x_response" => Message::Response(read("x_response", map)?),
        "x_heartbeat" => Message::Heartbeat(read("x_heartbeat", map)?),
        _ => return Err(WireError::UnknownMethod(method)),
    })
}

/// Encodes a message as compact UTF-8 JSON.
pub fn encode(msg: &Message) -> Result<Vec<u8>, WireError> {
    serde_json::to_vec(msg).map_err(WireError::Encode)
}

fn decode_bins(bins: &[String]) -> Result<Option<VecDeque<Bytes>>, WireError> {
    if bins.is_empty() {
        return Ok(None);
    }
    bins.iter()
        .enumerate()
        .map(|(index, b)| {
            BASE64
                .decode(b)
                .map(Bytes::from)
                .map_err(|source| WireError::Base64 { index, source })
        })
        .collect::<Result<VecDeque<_>, _>>()
        .map(Some)
}

/// The `event`, `data`, `binary` and `x_nargs` fields for a socketioxide event payload.
#[derive(Debug, Clone, PartialEq)]
pub struct EventFields {
    /// The event name.
    pub event: String,
    /// The `data` field.
    pub data: Json,
    /// The `binary` field.
    pub binary: bool,
    /// The `x_nargs` field: the number of arguments, set in the [`DataFormat::Value`] layout
    /// only.
    pub nargs: Option<usize>,
}

/// How python-socketio lays out the arguments in the `data` field of an `emit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DataFormat {
    /// python-socketio 5.15.1 and later: `data` is the list of arguments; a one-element list
    /// `[null]` means "no argument" (Python cannot send a single `None` argument).
    #[default]
    Args,
    /// python-socketio 5.14.0 to 5.15.0: `data` is the single argument itself (`null` for none;
    /// a list is one list argument). Several arguments can only be written as one array (what
    /// 5.15.0 publishes for a tuple), which such a python receiver hands its clients as one list
    /// argument.
    Value,
}

/// Turns a socketioxide event payload (`Value::Str("[\"event\", args...]", attachments)`, as
/// produced by the common parser) into python-socketio's `event` / `data` / `binary` fields, laid
/// out as `format` says (see [`args_fields`]).
pub fn event_fields(value: &Value, format: DataFormat) -> Result<EventFields, WireError> {
    let Value::Str(text, bins) = value else {
        return Err(WireError::Payload(
            "binary (msgpack) payloads have no JSON form",
        ));
    };
    let mut items: Vec<Json> = serde_json::from_str(text)
        .map_err(|_| WireError::Payload("event payload is not a JSON array"))?;
    if items.is_empty() {
        return Err(WireError::Payload("event payload has no event name"));
    }
    let Json::String(event) = items.remove(0) else {
        return Err(WireError::Payload("event name is not a string"));
    };
    Ok(layout(event, items, bins.iter().flatten(), format))
}

/// python-socketio's `event` / `data` / `binary` fields (and our `x_nargs`) for JSON arguments
/// without binary attachments.
///
/// * [`DataFormat::Args`]: `data` is the array of the arguments;
/// * [`DataFormat::Value`]: `data` is `null` for no argument, the argument for one, the array of
///   the arguments for several, and `x_nargs` says how many there are.
///
/// With attachments ([`event_fields`]), `binary` is true and `data` is
/// `[<the above, with placeholders>, <base64 attachment 0>, ...]`, in both formats.
pub fn args_fields(event: String, args: Vec<Json>, format: DataFormat) -> EventFields {
    layout(event, args, std::iter::empty(), format)
}

/// The one place where `data` is laid out, for the adapter and the emitter alike.
fn layout<'a>(
    event: String,
    mut args: Vec<Json>,
    bins: impl Iterator<Item = &'a Bytes>,
    format: DataFormat,
) -> EventFields {
    let (payload, nargs) = match format {
        DataFormat::Args => (Json::Array(args), None),
        DataFormat::Value => {
            let n = args.len();
            let payload = match n {
                0 => Json::Null,
                1 => args.pop().unwrap_or(Json::Null),
                _ => Json::Array(args),
            };
            (payload, Some(n))
        }
    };
    let attachments: Vec<Json> = bins.map(|b| Json::String(BASE64.encode(b))).collect();
    if attachments.is_empty() {
        return EventFields {
            event,
            data: payload,
            binary: false,
            nargs,
        };
    }
    let mut data = Vec::with_capacity(attachments.len() + 1);
    data.push(payload);
    data.extend(attachments);
    EventFields {
        event,
        data: Json::Array(data),
        binary: true,
        nargs,
    }
}

/// Rebuilds a socketioxide event payload from an [`Emit`].
///
/// When the message carries `x_nargs` (a socketioxide sender in the [`DataFormat::Value`]
/// layout), `data` is read in that layout with exactly that many arguments, whatever `format`
/// and `exact` say. Otherwise `format` says how to read `data`, and with `exact`, used for
/// messages from socketioxide instances (which carry `x_opts` and then use
/// [`DataFormat::Args`]), a single `null` argument is kept instead of meaning "no argument".
pub fn event_value(emit: &Emit, format: DataFormat, exact: bool) -> Result<Value, WireError> {
    if let Some(raw) = &emit.x_value {
        let b = BASE64
            .decode(raw)
            .map_err(|source| WireError::Base64 { index: 0, source })?;
        return Ok(Value::Bytes(b.into()));
    }
    let (args, bins) = if emit.binary {
        let Json::Array(parts) = &emit.data else {
            return Err(WireError::Payload("binary data is not an array"));
        };
        let Some((args, rest)) = parts.split_first() else {
            return Err(WireError::Payload("binary data is empty"));
        };
        let bins = rest
            .iter()
            .enumerate()
            .map(|(index, b)| match b {
                Json::String(s) => BASE64
                    .decode(s)
                    .map(Bytes::from)
                    .map_err(|source| WireError::Base64 { index, source }),
                _ => Err(WireError::Payload("binary attachment is not a string")),
            })
            .collect::<Result<VecDeque<_>, _>>()?;
        (args, Some(bins).filter(|b| !b.is_empty()))
    } else {
        (&emit.data, None)
    };
    let args: &[Json] = match (emit.x_nargs, args) {
        // A socketioxide sender in the `Value` layout: exact.
        (Some(0), Json::Null) => &[],
        (Some(1), one) => std::slice::from_ref(one),
        (Some(n), Json::Array(a)) if n >= 2 && a.len() == n => a,
        (Some(_), _) => return Err(WireError::Payload("`x_nargs` does not match `data`")),
        (None, Json::Null) => &[],
        (None, other) if format == DataFormat::Value => std::slice::from_ref(other),
        (None, Json::Array(a)) if !exact && a.len() == 1 && a[0].is_null() => &[],
        (None, Json::Array(a)) => a,
        // Before python-socketio 5.15.1 `data` was the bare argument.
        (None, other) => std::slice::from_ref(other),
    };
    let mut text = String::with_capacity(64);
    text.push('[');
    // Writing a `String` and serializing JSON values cannot fail.
    text.push_str(&Json::String(emit.event.clone()).to_string());
    for arg in args {
        text.push(',');
        text.push_str(&arg.to_string());
    }
    text.push(']');
    Ok(Value::Str(text.into(), bins))
}

/// The `args` of a python `callback` message for a socketioxide ack payload.
///
/// Binary attachments cannot be sent to Python in a callback and are dropped
/// (their placeholders stay in place).
pub fn callback_args(value: &Value) -> Json {
    match value {
        Value::Str(text, _) => match serde_json::from_str::<Json>(text) {
            Ok(Json::Array(a)) => Json::Array(a),
            Ok(other) => Json::Array(vec![other]),
            Err(_) => Json::Array(Vec::new()),
        },
        Value::Bytes(_) => Json::Array(Vec::new()),
    }
}

/// The ack payload (`Value::Str("[args...]")`) for the `args` of a python `callback` message.
pub fn callback_value(args: &Json) -> Value {
    let text = match args {
        Json::Array(_) => args.to_string(),
        Json::Null => "[]".to_owned(),
        other => format!("[{other}]"),
    };
    Value::Str(text.into(), None)
}

/// A fresh host id: 32 lowercase hex characters, like python-socketio's `uuid4().hex`.
pub fn new_host_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use socketioxide_core::adapter::BroadcastFlags;

    const EMIT: &str = r#"{"method": "emit", "event": "my event", "data": [{"a": 1}], "binary": false, "namespace": "/chat", "room": "room1", "skip_sid": null, "callback": null, "host_id": "29359f22c4e0480e8f2718beb2381ea7"}"#;
    const EMIT_BIN: &str = r#"{"method": "emit", "event": "bin", "data": [[{"_placeholder": true, "num": 0}, "x", {"k": {"_placeholder": true, "num": 1}}], "AQI=", "eno="], "binary": true, "namespace": "/", "room": ["r1", "r2"], "skip_sid": "abc", "callback": null, "host_id": "29359f22c4e0480e8f2718beb2381ea7"}"#;
    const EMIT_CB: &str = r#"{"method": "emit", "event": "ev", "data": [{"x": 1}], "binary": false, "namespace": "/", "room": "Fz4y4d0kvSL6KuHWAAAB", "skip_sid": null, "callback": ["Fz4y4d0kvSL6KuHWAAAB", "/", 1], "host_id": "84aef12e5c124534bf0e9c1587f02701"}"#;
    const EMIT_MULTI: &str = r#"{"method": "emit", "event": "multi", "data": ["a", 2, null], "binary": false, "namespace": "/", "room": "r", "skip_sid": null, "callback": null, "host_id": "84aef12e5c124534bf0e9c1587f02701"}"#;
    const EMIT_NONE: &str = r#"{"method": "emit", "event": "none", "data": [null], "binary": false, "namespace": "/", "room": null, "skip_sid": null, "callback": null, "host_id": "84aef12e5c124534bf0e9c1587f02701"}"#;
    const CALLBACK: &str = r#"{"method": "callback", "host_id": "aaaahost", "sid": "Fz4y4d0kvSL6KuHWAAAB", "namespace": "/", "id": 1, "args": ["ok", {"n": 2}]}"#;
    const DISCONNECT: &str = r#"{"method": "disconnect", "sid": "Fz4y4d0kvSL6KuHWAAAB", "namespace": "/", "host_id": "84aef12e5c124534bf0e9c1587f02701"}"#;
    const ENTER: &str = r#"{"method": "enter_room", "sid": "SID2", "room": "room9", "namespace": "/", "host_id": "29359f22c4e0480e8f2718beb2381ea7"}"#;
    const LEAVE: &str = r#"{"method": "leave_room", "sid": "SID2", "room": "room9", "namespace": "/", "host_id": "29359f22c4e0480e8f2718beb2381ea7"}"#;
    const CLOSE: &str = r#"{"method": "close_room", "room": "room1", "namespace": "/", "host_id": "29359f22c4e0480e8f2718beb2381ea7"}"#;

    const ALL: [&str; 10] = [
        EMIT, EMIT_BIN, EMIT_CB, EMIT_MULTI, EMIT_NONE, CALLBACK, DISCONNECT, ENTER, LEAVE, CLOSE,
    ];

    /// Python's `json.dumps` separators, to compare our output with the captured text.
    fn pythonize(compact: &[u8]) -> String {
        let v: Json = serde_json::from_slice(compact).unwrap();
        // serde_json keeps key order (preserve_order is not needed: we only compare values
        // here and check the order separately).
        v.to_string()
    }

    fn keys(s: &str) -> Vec<String> {
        // Top-level keys in textual order.
        let mut out = Vec::new();
        let mut de = serde_json::Deserializer::from_str(s);
        struct Keys<'a>(&'a mut Vec<String>);
        impl<'de> serde::de::Visitor<'de> for Keys<'_> {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
                while let Some(k) = m.next_key::<String>()? {
                    m.next_value::<serde::de::IgnoredAny>()?;
                    self.0.push(k);
                }
                Ok(())
            }
        }
        serde::Deserializer::deserialize_map(&mut de, Keys(&mut out)).unwrap();
        out
    }

    #[test]
    fn python_messages_round_trip_with_python_key_order() {
        for literal in ALL {
            let msg = decode(literal.as_bytes()).unwrap();
            let out = encode(&msg).unwrap();
            let lit: Json = serde_json::from_str(literal).unwrap();
            let ours: Json = serde_json::from_slice(&out).unwrap();
            assert_eq!(lit, ours, "{literal}");
            assert_eq!(
                keys(literal),
                keys(std::str::from_utf8(&out).unwrap()),
                "{}",
                pythonize(&out)
            );
        }
    }

    #[test]
    fn decode_emit_fields() {
        let Message::Emit(e) = decode(EMIT_BIN.as_bytes()).unwrap() else {
            panic!("not an emit")
        };
        assert_eq!(e.event, "bin");
        assert!(e.binary);
        assert_eq!(e.room, Targets::Many(vec!["r1".into(), "r2".into()]));
        assert_eq!(e.skip_sid, Targets::One("abc".into()));
        assert_eq!(e.host_id, "29359f22c4e0480e8f2718beb2381ea7");
        let v = event_value(&e, DataFormat::Args, false).unwrap();
        let Value::Str(text, Some(bins)) = v else {
            panic!("no bins")
        };
        assert_eq!(
            &*text,
            r#"["bin",{"_placeholder":true,"num":0},"x",{"k":{"_placeholder":true,"num":1}}]"#
        );
        assert_eq!(
            bins,
            [Bytes::from_static(b"\x01\x02"), Bytes::from_static(b"zz")]
        );

        let Message::Emit(e) = decode(EMIT_CB.as_bytes()).unwrap() else {
            panic!("not an emit")
        };
        assert_eq!(
            e.callback,
            Some(CallbackRef {
                room: "Fz4y4d0kvSL6KuHWAAAB".into(),
                namespace: "/".into(),
                id: 1
            })
        );
    }

    #[test]
    fn python_args_semantics() {
        let Message::Emit(e) = decode(EMIT_MULTI.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(
            event_value(&e, DataFormat::Args, false).unwrap(),
            Value::Str(r#"["multi","a",2,null]"#.into(), None)
        );
        let Message::Emit(e) = decode(EMIT_NONE.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(
            event_value(&e, DataFormat::Args, false).unwrap(),
            Value::Str(r#"["none"]"#.into(), None)
        );
        // From a socketioxide peer, a single null argument is kept.
        assert_eq!(
            event_value(&e, DataFormat::Args, true).unwrap(),
            Value::Str(r#"["none",null]"#.into(), None)
        );
        // Pre-5.15.1 bare data.
        let legacy =
            r#"{"method":"emit","event":"e","data":{"x":1},"namespace":"/","host_id":"h"}"#;
        let Message::Emit(e) = decode(legacy.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(
            event_value(&e, DataFormat::Args, false).unwrap(),
            Value::Str(r#"["e",{"x":1}]"#.into(), None)
        );
    }

    #[test]
    fn legacy_value_format() {
        let body = r#"{"method":"emit","event":"e","data":[1,2],"namespace":"/","host_id":"h"}"#;
        let Message::Emit(e) = decode(body.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(
            event_value(&e, DataFormat::Value, false).unwrap(),
            Value::Str(r#"["e",[1,2]]"#.into(), None)
        );
        assert_eq!(
            event_value(&e, DataFormat::Args, false).unwrap(),
            Value::Str(r#"["e",1,2]"#.into(), None)
        );
        let none = r#"{"method":"emit","event":"e","data":null,"namespace":"/","host_id":"h"}"#;
        let Message::Emit(e) = decode(none.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(
            event_value(&e, DataFormat::Value, false).unwrap(),
            Value::Str(r#"["e"]"#.into(), None)
        );
    }

    #[test]
    fn event_fields_round_trip() {
        let v = Value::Str(
            r#"["ev",{"a":1},{"_placeholder":true,"num":0}]"#.into(),
            Some([Bytes::from_static(b"\x01\x02")].into()),
        );
        let f = event_fields(&v, DataFormat::Args).unwrap();
        assert_eq!(f.event, "ev");
        assert!(f.binary);
        assert_eq!(f.nargs, None);
        assert_eq!(
            f.data,
            serde_json::json!([[{"a": 1}, {"_placeholder": true, "num": 0}], "AQI="])
        );
        let emit = Emit {
            event: f.event,
            data: f.data,
            binary: f.binary,
            namespace: "/".into(),
            room: Targets::None,
            skip_sid: Targets::None,
            callback: None,
            host_id: new_host_id(),
            x_uid: None,
            x_opts: None,
            x_req: None,
            x_reply_to: None,
            x_timeout_ms: None,
            x_value: None,
            x_nargs: f.nargs,
        };
        assert_eq!(event_value(&emit, DataFormat::Args, false).unwrap(), v);
        for format in [DataFormat::Args, DataFormat::Value] {
            assert!(event_fields(&Value::Bytes(Bytes::new()), format).is_err());
            assert!(event_fields(&Value::Str("[]".into(), None), format).is_err());
            assert!(event_fields(&Value::Str("[1]".into(), None), format).is_err());
        }
    }

    /// An `emit` carrying `fields`, as a socketioxide server publishes it (with `x_opts`).
    fn emit_of(fields: EventFields) -> Emit {
        Emit {
            event: fields.event,
            data: fields.data,
            binary: fields.binary,
            namespace: "/".into(),
            room: Targets::None,
            skip_sid: Targets::None,
            callback: None,
            host_id: new_host_id(),
            x_uid: Some("AAAAAAAAAAAAAAAA".into()),
            x_opts: Some(BroadcastOptions::default()),
            x_req: None,
            x_reply_to: None,
            x_timeout_ms: None,
            x_value: None,
            x_nargs: fields.nargs,
        }
    }

    /// What python-socketio 5.15.0's `_handle_emit` + `Manager.emit` hand its clients for an
    /// `emit` message: `data` (attachments put back) is one argument, `null` none.
    fn python_5_15_0_client_args(msg: &Json) -> Vec<Json> {
        let mut data = msg["data"].clone();
        if msg["binary"] == Json::Bool(true) {
            let parts = data.as_array().cloned().unwrap_or_default();
            let bins: Vec<Json> = parts[1..]
                .iter()
                .map(|b| Json::String(format!("<{}>", b.as_str().unwrap_or_default())))
                .collect();
            fn put_back(v: Json, bins: &[Json]) -> Json {
                match v {
                    Json::Object(o) if o.get("_placeholder") == Some(&Json::Bool(true)) => {
                        bins[o["num"].as_u64().unwrap_or_default() as usize].clone()
                    }
                    Json::Object(o) => {
                        Json::Object(o.into_iter().map(|(k, v)| (k, put_back(v, bins))).collect())
                    }
                    Json::Array(a) => {
                        Json::Array(a.into_iter().map(|v| put_back(v, bins)).collect())
                    }
                    other => other,
                }
            }
            data = put_back(parts[0].clone(), &bins);
        }
        match data {
            Json::Null => Vec::new(),
            one => vec![one],
        }
    }

    #[test]
    fn value_format_encoding() {
        use serde_json::json;
        let cases: [(&str, Json, usize, Vec<Json>); 5] = [
            // (payload, data, x_nargs, what a 5.15.0 server's clients get)
            (r#"["e"]"#, json!(null), 0, vec![]),
            (
                r#"["e",{"a":1}]"#,
                json!({"a": 1}),
                1,
                vec![json!({"a": 1})],
            ),
            (r#"["e",null]"#, json!(null), 1, vec![]),
            (r#"["e",[1,2]]"#, json!([1, 2]), 1, vec![json!([1, 2])]),
            // Several arguments: one array, as 5.15.0 publishes a tuple.
            (
                r#"["e","a",2,null]"#,
                json!(["a", 2, null]),
                3,
                vec![json!(["a", 2, null])],
            ),
        ];
        for (payload, data, nargs, python_args) in cases {
            let v = Value::Str(payload.into(), None);
            let f = event_fields(&v, DataFormat::Value).unwrap();
            assert_eq!(f.event, "e");
            assert_eq!(f.data, data, "{payload}");
            assert!(!f.binary);
            assert_eq!(f.nargs, Some(nargs), "{payload}");
            let body = encode(&Message::Emit(emit_of(f))).unwrap();
            let msg: Json = serde_json::from_slice(&body).unwrap();
            assert_eq!(python_5_15_0_client_args(&msg), python_args, "{payload}");
            assert_eq!(msg["x_nargs"], json!(nargs));
            // Socketioxide receivers get the exact arguments back, whatever they are set to read.
            let Message::Emit(e) = decode(&body).unwrap() else {
                panic!("not an emit")
            };
            for format in [DataFormat::Args, DataFormat::Value] {
                for exact in [false, true] {
                    assert_eq!(event_value(&e, format, exact).unwrap(), v, "{payload}");
                }
            }
        }
        // The emitter's path lays out plain JSON arguments the same way.
        assert_eq!(
            args_fields("e".into(), vec![json!(1), json!("x")], DataFormat::Value),
            EventFields {
                event: "e".into(),
                data: json!([1, "x"]),
                binary: false,
                nargs: Some(2)
            }
        );
        assert_eq!(
            args_fields("e".into(), vec![json!([1])], DataFormat::Value).data,
            json!([1])
        );
        assert_eq!(
            args_fields("e".into(), vec![json!([1])], DataFormat::Args),
            EventFields {
                event: "e".into(),
                data: json!([[1]]),
                binary: false,
                nargs: None
            }
        );
    }

    #[test]
    fn value_format_binary() {
        use serde_json::json;
        let ph = |n: u64| json!({"_placeholder": true, "num": n});
        // One argument holding two attachments: 5.15.0's `emit('bin', {'k': b'..', 'l': [b'..']})`.
        let one = Value::Str(
            r#"["bin",{"k":{"_placeholder":true,"num":0},"l":[{"_placeholder":true,"num":1}]}]"#
                .into(),
            Some([Bytes::from_static(b"\x01\x02"), Bytes::from_static(b"zz")].into()),
        );
        let f = event_fields(&one, DataFormat::Value).unwrap();
        assert!(f.binary);
        assert_eq!(f.nargs, Some(1));
        assert_eq!(f.data, json!([{"k": ph(0), "l": [ph(1)]}, "AQI=", "eno="]));
        let body = encode(&Message::Emit(emit_of(f))).unwrap();
        let msg: Json = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            python_5_15_0_client_args(&msg),
            [json!({"k": "<AQI=>", "l": ["<eno=>"]})]
        );
        let Message::Emit(e) = decode(&body).unwrap() else {
            panic!("not an emit")
        };
        assert_eq!(event_value(&e, DataFormat::Args, true).unwrap(), one);

        // A bare binary argument, and several arguments with attachments.
        let bare = Value::Str(
            r#"["b",{"_placeholder":true,"num":0}]"#.into(),
            Some([Bytes::from_static(b"\xff")].into()),
        );
        let f = event_fields(&bare, DataFormat::Value).unwrap();
        assert_eq!(f.data, json!([ph(0), "/w=="]));
        let e = emit_of(f);
        assert_eq!(event_value(&e, DataFormat::Value, true).unwrap(), bare);

        let several = Value::Str(
            r#"["s",{"_placeholder":true,"num":0},"x",{"k":{"_placeholder":true,"num":1}}]"#.into(),
            Some([Bytes::from_static(b"\x07"), Bytes::from_static(b"zz")].into()),
        );
        let f = event_fields(&several, DataFormat::Value).unwrap();
        assert_eq!(f.nargs, Some(3));
        assert_eq!(f.data, json!([[ph(0), "x", {"k": ph(1)}], "Bw==", "eno="]));
        let body = encode(&Message::Emit(emit_of(f))).unwrap();
        let msg: Json = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            python_5_15_0_client_args(&msg),
            [json!(["<Bw==>", "x", {"k": "<eno=>"}])]
        );
        let Message::Emit(e) = decode(&body).unwrap() else {
            panic!("not an emit")
        };
        assert_eq!(event_value(&e, DataFormat::Args, true).unwrap(), several);
    }

    /// What a python peer's `emit` becomes in each reading: HQ 5.0.3
    /// (python-socketio 5.16.2) publishes the argument list, vantage6 4.15.2
    /// (5.14) the bare argument.
    #[test]
    fn python_data_in_both_readings() {
        let read = |data: &str, format| {
            let body = format!(r#"{{"method":"emit","event":"e","data":{data},"host_id":"h"}}"#);
            let Message::Emit(e) = decode(body.as_bytes()).unwrap() else {
                panic!("not an emit")
            };
            match event_value(&e, format, false).unwrap() {
                Value::Str(text, None) => text.to_string(),
                other => panic!("{other:?}"),
            }
        };
        for (data, args, value) in [
            // 5.16: one object, no argument.
            (r#"[{"a":1}]"#, r#"["e",{"a":1}]"#, r#"["e",[{"a":1}]]"#),
            ("[null]", r#"["e"]"#, r#"["e",[null]]"#),
            // 5.14: the bare object; `null` for none.
            (r#"{"a":1}"#, r#"["e",{"a":1}]"#, r#"["e",{"a":1}]"#),
            ("null", r#"["e"]"#, r#"["e"]"#),
            // Ambiguous: a 5.14 list argument reads as two arguments in `Args`.
            ("[1,2]", r#"["e",1,2]"#, r#"["e",[1,2]]"#),
        ] {
            assert_eq!(read(data, DataFormat::Args), args, "{data} as args");
            assert_eq!(read(data, DataFormat::Value), value, "{data} as value");
        }
    }

    #[test]
    fn x_nargs_mismatch_is_an_error() {
        for body in [
            r#"{"method":"emit","event":"e","data":[1],"x_nargs":2,"host_id":"h"}"#,
            r#"{"method":"emit","event":"e","data":1,"x_nargs":2,"host_id":"h"}"#,
            r#"{"method":"emit","event":"e","data":1,"x_nargs":0,"host_id":"h"}"#,
        ] {
            let Message::Emit(e) = decode(body.as_bytes()).unwrap() else {
                panic!("not an emit")
            };
            assert!(matches!(
                event_value(&e, DataFormat::Args, true),
                Err(WireError::Payload(_))
            ));
        }
        let bad = r#"{"method":"emit","event":"e","data":1,"x_nargs":-1,"host_id":"h"}"#;
        assert!(matches!(
            decode(bad.as_bytes()),
            Err(WireError::Invalid { method: "emit", .. })
        ));
        // Messages from socketioxide servers without `x_nargs` keep the 5.15.1+ reading (the
        // adapter reads every message with `x_opts` as `Args`, exact).
        let old = emit_of(args_fields("e".into(), vec![Json::Null], DataFormat::Args));
        let body = encode(&Message::Emit(old)).unwrap();
        assert!(!std::str::from_utf8(&body).unwrap().contains("x_nargs"));
        let Message::Emit(e) = decode(&body).unwrap() else {
            panic!("not an emit")
        };
        assert_eq!(
            event_value(&e, DataFormat::Args, true).unwrap(),
            Value::Str(r#"["e",null]"#.into(), None)
        );
    }

    #[test]
    fn lenient_fields() {
        let odd = r#"{"method":"emit","event":"e","data":[],"binary":0,"room":[1,"a"],"skip_sid":["x","y"],"callback":[1,2],"host_id":"h"}"#;
        let Message::Emit(e) = decode(odd.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(e.namespace, "/");
        assert_eq!(e.room, Targets::Many(vec!["1".into(), "a".into()]));
        let null_ns = r#"{"method":"close_room","room":"r","namespace":null,"host_id":"h"}"#;
        assert_eq!(decode(null_ns.as_bytes()).unwrap().namespace(), "/");
        assert_eq!(e.skip_sid.to_vec(), ["x", "y"]);
        assert_eq!(e.callback, None);
        let enter = r#"{"method":"enter_room","sid":"s","room":7,"host_id":"h"}"#;
        let Message::EnterRoom(r) = decode(enter.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(r.room, "7");
    }

    #[test]
    fn malformed_inputs_are_typed_errors() {
        assert!(matches!(decode(b"not json"), Err(WireError::Json(_))));
        assert!(matches!(decode(b"[1,2]"), Err(WireError::NotAnObject)));
        assert!(matches!(decode(b"{}"), Err(WireError::MissingMethod)));
        assert!(matches!(
            decode(br#"{"method":"pickle"}"#),
            Err(WireError::UnknownMethod(m)) if m == "pickle"
        ));
        assert!(matches!(
            decode(br#"{"method":"emit"}"#),
            Err(WireError::Invalid { method: "emit", .. })
        ));
        let bad_b64 =
            r#"{"method":"emit","event":"e","data":[[],"!!"],"binary":true,"host_id":"h"}"#;
        let Message::Emit(e) = decode(bad_b64.as_bytes()).unwrap() else {
            panic!()
        };
        assert!(matches!(
            event_value(&e, DataFormat::Args, false),
            Err(WireError::Base64 { .. })
        ));
    }

    #[test]
    fn extension_messages_round_trip() {
        let mut opts = BroadcastOptions::default();
        opts.add_flag(BroadcastFlags::Broadcast);
        opts.rooms.push("r1".into());
        let msgs = [
            Message::Request(Request {
                host_id: new_host_id(),
                namespace: "/".into(),
                uid: "AAAAAAAAAAAAAAAA".into(),
                req_id: 7,
                reply_to: "q".into(),
                target: None,
                op: RequestOp::AddSockets,
                opts: opts.clone(),
                rooms: vec!["a".into()],
            }),
            Message::Response(Response {
                host_id: "h".into(),
                namespace: "/".into(),
                uid: "u".into(),
                req_id: 7,
                reply: Reply::Ack {
                    sid: "s".into(),
                    value: Some(WireValue::from_value(&Value::Str(
                        "[1]".into(),
                        Some([Bytes::from_static(b"x")].into()),
                    ))),
                    error: None,
                },
            }),
            Message::Heartbeat(Heartbeat {
                host_id: "h".into(),
                namespace: "/".into(),
                uid: "u".into(),
                reply_to: "q".into(),
                kind: HeartbeatKind::Init,
            }),
        ];
        for m in msgs {
            assert_eq!(decode(&encode(&m).unwrap()).unwrap(), m);
        }
    }

    #[test]
    fn wire_value_round_trip() {
        for v in [
            Value::Str("[\"ok\"]".into(), None),
            Value::Str(
                "[{\"_placeholder\":true,\"num\":0}]".into(),
                Some([Bytes::from_static(b"\0\xff")].into()),
            ),
            Value::Bytes(Bytes::from_static(b"\x93\x01")),
        ] {
            assert_eq!(WireValue::from_value(&v).into_value().unwrap(), v);
        }
    }

    #[test]
    fn host_id_is_32_hex() {
        let h = new_host_id();
        assert_eq!(h.len(), 32);
        assert!(h
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Ok(Message::Emit(e)) = decode(&bytes) {
                let _ = event_value(&e, DataFormat::Args, false);
            }
        }

        #[test]
        fn decode_never_panics_on_jsonish(s in r#"\{("method": ?"(emit|callback|x_request|x_response|close_room)",? ?)?("[a-z_]{1,9}": ?(null|true|1|"[a-z]*"|\[[0-9a-z", \[\]]*\]|\{\}),? ?){0,8}\}"#) {
            if let Ok(Message::Emit(e)) = decode(s.as_bytes()) {
                let _ = event_value(&e, DataFormat::Args, false);
            }
        }
    }
}
