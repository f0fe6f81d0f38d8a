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
//! default, or, for peers on python-socketio up to 5.15.0, in their layout (the bare argument)
//! with an `x_nargs` field so that socketioxide receivers still get the exact arguments: see
//! [`DataFormat`] and [`args_fields`].
//!
//! Everything here is pure: [`decode`] never panics, whatever the input, and reports malformed
//! messages with a [`WireError`].
//!
//! Modules: `python` (python-socketio's messages), `ext` (our `x_*` messages) and `payload` (the
//! layout of `data`); everything is re-exported here.

use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Serialize;
use serde_json::Value as Json;

mod ext;
mod payload;
mod python;

pub use ext::{Heartbeat, HeartbeatKind, Reply, Request, RequestOp, Response, WireValue};
pub use payload::{
    args_fields, callback_args, callback_value, event_fields, event_value, DataFormat, EventFields,
    UnknownDataFormat,
};
pub use python::{Callback, CallbackRef, CloseRoom, Disconnect, Emit, RoomList, RoomMembership};

/// An error while decoding or encoding a broker message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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

/// Any message on the exchange.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "method", rename_all = "snake_case")]
#[non_exhaustive]
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
        self.addressing().0
    }

    /// The namespace the message is about.
    pub fn namespace(&self) -> &str {
        self.addressing().1
    }

    /// `(host_id, namespace)`: every message kind has both.
    fn addressing(&self) -> (&str, &str) {
        match self {
            Message::Emit(m) | Message::RawEmit(m) => (&m.host_id, &m.namespace),
            Message::Callback(m) => (&m.host_id, &m.namespace),
            Message::Disconnect(m) => (&m.host_id, &m.namespace),
            Message::EnterRoom(m) | Message::LeaveRoom(m) => (&m.host_id, &m.namespace),
            Message::CloseRoom(m) => (&m.host_id, &m.namespace),
            Message::Request(m) => (&m.host_id, &m.namespace),
            Message::Response(m) => (&m.host_id, &m.namespace),
            Message::Heartbeat(m) => (&m.host_id, &m.namespace),
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

/// A fresh host id: 32 lowercase hex characters, like python-socketio's `uuid4().hex`.
pub fn new_host_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests;
