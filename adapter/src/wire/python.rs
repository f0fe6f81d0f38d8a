//! python-socketio's message-queue messages (5.15.1 and later), field for field: [`Emit`],
//! [`Callback`], [`Disconnect`], [`RoomMembership`] (`enter_room` / `leave_room`) and
//! [`CloseRoom`], with the lenient readers python's loosely typed fields need (any scalar as a
//! room, `0`/`1` as booleans, `null` as the root namespace).
//!
//! [`Emit`] also carries our `x_*` extension fields, which python-socketio ignores.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value as Json;
use socketioxide_core::{adapter::BroadcastOptions, Uid};

/// A room or sid list as python-socketio writes it: `null`, one string, or an array of strings.
///
/// Python allows any hashable as a room; numbers and other non-string items are kept as their
/// JSON text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoomList {
    /// `null`: no restriction (every client for `room`, nobody for `skip_sid`).
    #[default]
    None,
    /// One string.
    One(String),
    /// An array of strings.
    Many(Vec<String>),
}

impl RoomList {
    /// The targets as a list (empty for [`RoomList::None`]).
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            RoomList::None => Vec::new(),
            RoomList::One(s) => vec![s.clone()],
            RoomList::Many(v) => v.clone(),
        }
    }
    /// Builds `null`, a string or an array from a list, as python-socketio would.
    pub fn from_list(mut list: Vec<String>) -> Self {
        match list.len() {
            0 => RoomList::None,
            1 => RoomList::One(list.remove(0)),
            _ => RoomList::Many(list),
        }
    }
    /// `true` for [`RoomList::None`].
    pub fn is_none(&self) -> bool {
        matches!(self, RoomList::None)
    }
}

fn json_to_string(v: Json) -> String {
    match v {
        Json::String(s) => s,
        other => other.to_string(),
    }
}

impl Serialize for RoomList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RoomList::None => s.serialize_none(),
            RoomList::One(r) => s.serialize_str(r),
            RoomList::Many(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for RoomList {
    /// An object, or an array holding an object or an array, is refused: python cannot send one
    /// (a room is hashable), so such a message is junk, dropped and counted as invalid.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        fn scalar<E: serde::de::Error>(v: Json) -> Result<String, E> {
            match v {
                Json::Object(_) | Json::Array(_) => Err(E::custom(
                    "a room or sid must be a string, a scalar or a list of them",
                )),
                other => Ok(json_to_string(other)),
            }
        }
        Ok(match Json::deserialize(d)? {
            Json::Null => RoomList::None,
            Json::Array(items) => {
                RoomList::Many(items.into_iter().map(scalar).collect::<Result<_, _>>()?)
            }
            other => RoomList::One(scalar(other)?),
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
#[non_exhaustive]
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
#[non_exhaustive]
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
    pub room: RoomList,
    /// The sids not to reach.
    #[serde(default)]
    pub skip_sid: RoomList,
    /// When set, every receiving client's ack is sent back as a [`Callback`].
    #[serde(default, deserialize_with = "lenient_callback")]
    pub callback: Option<CallbackRef>,
    /// The sending host.
    #[serde(default, deserialize_with = "lenient_string")]
    pub host_id: String,
    /// Extension: the socketioxide server id of the sender.
    // duplicates: deliberate — serde attributes of the wire fields, one per field
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_uid: Option<Uid>,
    /// Extension: the exact socketioxide broadcast options (rooms, except, flags, target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_opts: Option<BroadcastOptions>,
    /// Extension: the id of an ack request; replies go to `x_reply_to` as [`Response`](super::Response)s.
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
    /// Extension: `data` is laid out as python-socketio up to 5.15.0 writes it
    /// ([`DataFormat::Legacy`](super::DataFormat::Legacy)) and carries this many arguments:
    /// `null` for none, the argument
    /// itself for one, the array of the arguments for several. Python ignores it; socketioxide
    /// receivers use it to rebuild the exact arguments. Absent in the 5.15.1+ layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_nargs: Option<usize>,
}

/// `callback`: a client's ack, sent to the host that asked for it.
///
/// Unlike every other message, `host_id` is the **destination**.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
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

// duplicates: deliberate — `Disconnect`, `RoomMembership` and `CloseRoom` each spell out the fields
// of one python-socketio message with their serde readers; a shared flattened part would hide them.

/// `disconnect`: disconnect a client, wherever it is connected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
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
#[non_exhaustive]
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
#[non_exhaustive]
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
