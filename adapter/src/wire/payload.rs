//! The layout of an event's arguments in the `data` field of an `emit`: python-socketio
//! 5.15.1+'s argument list ([`DataFormat::Args`]) or the bare value of python-socketio up to
//! 5.15.0 ([`DataFormat::Legacy`], with our `x_nargs`), binary attachments as base64 with
//! python-socketio's `{"_placeholder": true, "num": N}`, and the `args` of a python `callback`.

use std::{collections::VecDeque, str::FromStr};

use base64::Engine as _;
use bytes::Bytes;
use serde_json::Value as Json;
use socketioxide_core::Value;

use super::{Emit, WireError, BASE64};

pub(super) fn decode_bins(bins: &[String]) -> Result<Option<VecDeque<Bytes>>, WireError> {
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
#[non_exhaustive]
pub struct EventFields {
    /// The event name.
    pub event: String,
    /// The `data` field.
    pub data: Json,
    /// The `binary` field.
    pub binary: bool,
    /// The `x_nargs` field: the number of arguments, set in the [`DataFormat::Legacy`] layout
    /// only.
    pub nargs: Option<usize>,
}

/// How python-socketio lays out the arguments in the `data` field of an `emit`.
///
/// In configuration files and on command lines the formats are named `legacy` and `args`
/// ([`Display`](std::fmt::Display), [`FromStr`], and `serde::Deserialize` use these names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DataFormat {
    /// python-socketio 5.15.1 and later: `data` is the list of arguments; a one-element list
    /// `[null]` means "no argument" (Python cannot send a single `None` argument).
    #[default]
    Args,
    /// python-socketio up to 5.15.0 (e.g. vantage6 4.15.2): `data` is the single argument itself
    /// (`null` for none; a list is one list argument). Several arguments can only be written as
    /// one array (what 5.15.0 publishes for a tuple), which such a python receiver hands its
    /// clients as one list argument.
    Legacy,
}

impl DataFormat {
    /// The name in configuration files: `args` or `legacy`.
    pub fn name(self) -> &'static str {
        match self {
            DataFormat::Args => "args",
            DataFormat::Legacy => "legacy",
        }
    }
}

impl std::fmt::Display for DataFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not one of [`DataFormat`]'s (`legacy`, `args`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a python-socketio data format (legacy or args)")]
#[non_exhaustive]
pub struct UnknownDataFormat(pub String);

impl FromStr for DataFormat {
    type Err = UnknownDataFormat;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "args" => Ok(DataFormat::Args),
            "legacy" => Ok(DataFormat::Legacy),
            other => Err(UnknownDataFormat(other.to_owned())),
        }
    }
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
/// * [`DataFormat::Legacy`]: `data` is `null` for no argument, the argument for one, the array of
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
        DataFormat::Legacy => {
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
/// When the message carries `x_nargs` (a socketioxide sender in the [`DataFormat::Legacy`]
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
        // A socketioxide sender in the `Legacy` layout: exact.
        (Some(0), Json::Null) => &[],
        (Some(1), one) => std::slice::from_ref(one),
        (Some(n), Json::Array(a)) if n >= 2 && a.len() == n => a,
        (Some(_), _) => return Err(WireError::Payload("`x_nargs` does not match `data`")),
        (None, Json::Null) => &[],
        (None, other) if format == DataFormat::Legacy => std::slice::from_ref(other),
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
