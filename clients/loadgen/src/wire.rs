//! The Engine.IO v4 / Socket.IO v5 text packets a node client exchanges on `/tasks`.
//!
//! Incoming packets are parsed without a JSON parse where an exact extraction is enough (the
//! event name, and the few integer fields the load generator reads from its own payloads);
//! anything unexpected is a [`WireError`] for the caller to count, never a panic.

/// The namespace every vantage6 node uses.
pub const NAMESPACE: &str = "/tasks";

/// Separator of the packets of one HTTP long-polling payload.
pub const RECORD_SEPARATOR: char = '\x1e';

/// The Engine.IO pong a client answers a server ping (`2`) with.
pub const PONG: &str = "3";

/// The Socket.IO CONNECT packet for `/tasks` (no auth payload: the token is a header).
pub const CONNECT_TASKS: &str = "40/tasks,";

/// Why an incoming packet was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// An empty frame or payload element.
    #[error("empty packet")]
    Empty,
    /// An Engine.IO packet type this client does not know.
    #[error("unknown Engine.IO packet type {0:?}")]
    EngineType(char),
    /// A Socket.IO packet type this client does not know.
    #[error("unknown Socket.IO packet type {0:?}")]
    SocketType(char),
    /// A Socket.IO packet for another namespace than `/tasks`.
    #[error("packet for another namespace")]
    Namespace,
    /// An EVENT whose data is not `["name", …]`.
    #[error("malformed event")]
    Event,
    /// A binary packet (vantage6 sends none to nodes).
    #[error("binary packet")]
    Binary,
    /// The Engine.IO OPEN packet has no `sid`.
    #[error("OPEN packet without sid")]
    Open,
}

/// One incoming Engine.IO packet, borrowing from the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `0{…}`: the handshake, with the session id and the ping interval (ms) when given.
    Open {
        /// Engine.IO session id.
        sid: &'a str,
        /// `pingInterval` in milliseconds.
        ping_interval_ms: Option<u64>,
    },
    /// `1`: the server closes the session.
    Close,
    /// `2`: a ping, to answer with [`PONG`].
    Ping,
    /// `3`: a pong.
    Pong,
    /// `6`: a no-op (polling, during an upgrade).
    Noop,
    /// `40/tasks,{"sid":…}`: the namespace CONNECT acknowledgement.
    Connected,
    /// `41/tasks,`: the server disconnected the namespace.
    Disconnected,
    /// `44/tasks,{…}`: the namespace connection was refused.
    ConnectError(&'a str),
    /// `42/tasks,["name", args…]`: an event; `args` is the text after the name (starting with
    /// `,` or `]`).
    Event {
        /// The event name.
        name: &'a str,
        /// The rest of the JSON array after the name.
        args: &'a str,
    },
    /// `43/tasks,…`: an acknowledgement (nodes send no acks; ignored).
    Ack,
}

/// Parses one Engine.IO text packet (a websocket frame, or one element of a polling payload).
pub fn parse(frame: &str) -> Result<Packet<'_>, WireError> {
    let mut chars = frame.chars();
    let kind = chars.next().ok_or(WireError::Empty)?;
    let rest = chars.as_str();
    match kind {
        '0' => parse_open(rest),
        '1' => Ok(Packet::Close),
        '2' => Ok(Packet::Ping),
        '3' => Ok(Packet::Pong),
        '4' => parse_socket(rest),
        '6' => Ok(Packet::Noop),
        'b' => Err(WireError::Binary),
        other => Err(WireError::EngineType(other)),
    }
}

fn parse_open(rest: &str) -> Result<Packet<'_>, WireError> {
    let sid = json_str_field(rest, "sid").ok_or(WireError::Open)?;
    Ok(Packet::Open {
        sid,
        ping_interval_ms: json_u64_field(rest, "pingInterval"),
    })
}

fn parse_socket(packet: &str) -> Result<Packet<'_>, WireError> {
    let mut chars = packet.chars();
    let kind = chars.next().ok_or(WireError::Empty)?;
    let rest = chars.as_str();
    if matches!(kind, '5' | '6') {
        return Err(WireError::Binary);
    }
    if !matches!(kind, '0'..='4') {
        return Err(WireError::SocketType(kind));
    }
    // The namespace: `/tasks,` (or `/tasks` alone at the end of a DISCONNECT).
    let rest = match rest.strip_prefix(NAMESPACE) {
        Some(r) => match r.strip_prefix(',') {
            Some(r) => r,
            None if r.is_empty() => r,
            None => return Err(WireError::Namespace),
        },
        None => return Err(WireError::Namespace),
    };
    match kind {
        '0' => Ok(Packet::Connected),
        '1' => Ok(Packet::Disconnected),
        '4' => Ok(Packet::ConnectError(rest)),
        '3' => Ok(Packet::Ack),
        _ => parse_event(rest),
    }
}

fn parse_event(data: &str) -> Result<Packet<'_>, WireError> {
    // An ack id (digits) may precede the array.
    let data = data.trim_start_matches(|c: char| c.is_ascii_digit());
    let body = data.strip_prefix('[').ok_or(WireError::Event)?;
    let body = body
        .trim_start()
        .strip_prefix('"')
        .ok_or(WireError::Event)?;
    let end = body.find('"').ok_or(WireError::Event)?;
    let name = &body[..end];
    if name.contains('\\') {
        return Err(WireError::Event);
    }
    let args = body[end + 1..].trim_start();
    if !(args.starts_with(',') || args.starts_with(']')) {
        return Err(WireError::Event);
    }
    Ok(Packet::Event { name, args })
}

/// The text right after `"key":` (and any whitespace) in `json`, for an exact extraction from
/// payloads whose keys this program chose. A key inside a string value would need its quotes
/// escaped, so it does not match.
fn after_key<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(at) = json[from..].find(key) {
        let start = from + at;
        let end = start + key.len();
        from = end;
        if start == 0 || json.as_bytes()[start - 1] != b'"' {
            continue;
        }
        let Some(rest) = json[end..].strip_prefix('"') else {
            continue;
        };
        if let Some(value) = rest.trim_start().strip_prefix(':') {
            return Some(value.trim_start());
        }
    }
    None
}

/// The non-negative integer value of `"key"` in `json`, if it has one.
pub fn json_u64_field(json: &str, key: &str) -> Option<u64> {
    let value = after_key(json, key)?;
    let digits = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    if digits == 0 {
        return None;
    }
    value[..digits].parse().ok()
}

/// The string value of `"key"` in `json` when it has no escapes.
pub fn json_str_field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let value = after_key(json, key)?.strip_prefix('"')?;
    let end = value.find('"')?;
    let s = &value[..end];
    (!s.contains('\\')).then_some(s)
}

/// `42/tasks,["event",data]` for a JSON argument already serialized.
pub fn event_packet(event: &str, data_json: &str) -> String {
    format!("42{NAMESPACE},[\"{event}\",{data_json}]")
}

/// Splits an HTTP long-polling payload into its packets.
pub fn split_payload(payload: &str) -> impl Iterator<Item = &str> {
    payload.split(RECORD_SEPARATOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Literal packets as v6-socketio (socketioxide) and python-socketio send them.
    #[test]
    fn open_packet() {
        let p = parse(
            r#"0{"sid":"ZuJ3d1bFMm6rZo4yAAAB","upgrades":[],"pingInterval":25000,"pingTimeout":60000,"maxPayload":1000000}"#,
        );
        assert_eq!(
            p,
            Ok(Packet::Open {
                sid: "ZuJ3d1bFMm6rZo4yAAAB",
                ping_interval_ms: Some(25000)
            })
        );
        // python-socketio separates with spaces
        let p = parse(
            r#"0{"sid": "abc", "upgrades": ["websocket"], "pingTimeout": 20000, "pingInterval": 25000}"#,
        );
        assert_eq!(
            p,
            Ok(Packet::Open {
                sid: "abc",
                ping_interval_ms: Some(25000)
            })
        );
        assert_eq!(parse(r#"0{"upgrades":[]}"#), Err(WireError::Open));
    }

    #[test]
    fn connect_and_sync() {
        assert_eq!(
            parse(r#"40/tasks,{"sid":"dkKhJ3IFBv8nJkvTAAAD"}"#),
            Ok(Packet::Connected)
        );
        assert_eq!(
            parse(r#"42/tasks,["sync"]"#),
            Ok(Packet::Event {
                name: "sync",
                args: "]"
            })
        );
        assert_eq!(parse("41/tasks,"), Ok(Packet::Disconnected));
        assert_eq!(parse("41/tasks"), Ok(Packet::Disconnected));
        assert_eq!(
            parse(r#"44/tasks,{"message":"nope"}"#),
            Ok(Packet::ConnectError(r#"{"message":"nope"}"#))
        );
    }

    #[test]
    fn engine_packets() {
        assert_eq!(parse("2"), Ok(Packet::Ping));
        assert_eq!(parse("3"), Ok(Packet::Pong));
        assert_eq!(parse("1"), Ok(Packet::Close));
        assert_eq!(parse("6"), Ok(Packet::Noop));
        assert_eq!(parse(""), Err(WireError::Empty));
        assert_eq!(parse("9"), Err(WireError::EngineType('9')));
        assert_eq!(parse("bAAEC"), Err(WireError::Binary));
    }

    #[test]
    fn events() {
        let p = parse(
            r#"42/tasks,["new_task",{"id":17,"parent_id":null,"step":2,"sent_us":1764680000123456}]"#,
        );
        let Ok(Packet::Event { name, args }) = p else {
            panic!("not an event: {p:?}");
        };
        assert_eq!(name, "new_task");
        assert_eq!(json_u64_field(args, "id"), Some(17));
        assert_eq!(json_u64_field(args, "step"), Some(2));
        assert_eq!(json_u64_field(args, "sent_us"), Some(1764680000123456));
        assert_eq!(json_u64_field(args, "parent_id"), None);
        // python-socketio's spacing, and an ack id
        let p = parse(r#"42/tasks,12["new_task", {"parent_id": null, "id": 5}]"#);
        let Ok(Packet::Event { name, args }) = p else {
            panic!("not an event: {p:?}");
        };
        assert_eq!(name, "new_task");
        assert_eq!(json_u64_field(args, "id"), Some(5));
        let p =
            parse(r#"42/tasks,["message","Node <bench-node-3> joined room <collaboration_1>"]"#);
        assert!(matches!(
            p,
            Ok(Packet::Event {
                name: "message",
                ..
            })
        ));
        let p = parse(
            r#"42/tasks,["algorithm_status_change",{"status":"active","run_id":40,"task_id":9,"job_id":1000000,"collaboration_id":3,"node_id":12,"organization_id":7,"parent_id":null}]"#,
        );
        let Ok(Packet::Event { name, args }) = p else {
            panic!("not an event: {p:?}");
        };
        assert_eq!(name, "algorithm_status_change");
        assert_eq!(json_u64_field(args, "run_id"), Some(40));
    }

    #[test]
    fn malformed_socket_packets() {
        assert_eq!(parse("42/other,[\"x\"]"), Err(WireError::Namespace));
        assert_eq!(parse("42[\"x\"]"), Err(WireError::Namespace));
        assert_eq!(parse("42/tasksx"), Err(WireError::Namespace));
        assert_eq!(parse("42/tasks,{}"), Err(WireError::Event));
        assert_eq!(parse("42/tasks,[\"unterminated"), Err(WireError::Event));
        assert_eq!(parse("42/tasks,[\"a\\\"b\"]"), Err(WireError::Event));
        assert_eq!(parse("42/tasks,[\"x\"junk"), Err(WireError::Event));
        assert_eq!(parse("45-/tasks,[]"), Err(WireError::Binary));
        assert_eq!(parse("49/tasks,"), Err(WireError::SocketType('9')));
        assert_eq!(parse("4"), Err(WireError::Empty));
    }

    #[test]
    fn field_extraction_is_exact() {
        assert_eq!(json_u64_field(r#"{"parent_id": 3}"#, "id"), None);
        assert_eq!(json_u64_field(r#"{"x":"\"id\": 4","id":5}"#, "id"), Some(5));
        assert_eq!(json_u64_field(r#"{"id": -1}"#, "id"), None);
        assert_eq!(
            json_u64_field(r#"{"id":99999999999999999999999}"#, "id"),
            None
        );
        assert_eq!(json_u64_field(r#"{"id"}"#, "id"), None);
        assert_eq!(json_str_field(r#"{"sid" : "a"}"#, "sid"), Some("a"));
    }

    #[test]
    fn payloads_and_encoding() {
        let parts: Vec<_> = split_payload("2\x1e42/tasks,[\"sync\"]").collect();
        assert_eq!(parts, ["2", "42/tasks,[\"sync\"]"]);
        assert_eq!(
            event_packet("algorithm_status_change", r#"{"run_id":1}"#),
            r#"42/tasks,["algorithm_status_change",{"run_id":1}]"#
        );
    }
}
