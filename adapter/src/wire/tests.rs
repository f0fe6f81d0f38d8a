//! Tests of the wire format: captured python-socketio messages, both data layouts, malformed
//! input.

use bytes::Bytes;
use serde_json::Value as Json;
use socketioxide_core::{
    adapter::{BroadcastFlags, BroadcastOptions},
    Sid, Uid, Value,
};

use super::*;

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
    assert_eq!(e.room, RoomList::Many(vec!["r1".into(), "r2".into()]));
    assert_eq!(e.skip_sid, RoomList::One("abc".into()));
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
    // duplicates: deliberate — each case spells out its own message
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
    let legacy = r#"{"method":"emit","event":"e","data":{"x":1},"namespace":"/","host_id":"h"}"#;
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
        event_value(&e, DataFormat::Legacy, false).unwrap(),
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
        event_value(&e, DataFormat::Legacy, false).unwrap(),
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
        room: RoomList::None,
        skip_sid: RoomList::None,
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
    for format in [DataFormat::Args, DataFormat::Legacy] {
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
        room: RoomList::None,
        skip_sid: RoomList::None,
        callback: None,
        host_id: new_host_id(),
        x_uid: Some(Uid::new()),
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
                Json::Array(a) => Json::Array(a.into_iter().map(|v| put_back(v, bins)).collect()),
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
        let f = event_fields(&v, DataFormat::Legacy).unwrap();
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
        for format in [DataFormat::Args, DataFormat::Legacy] {
            for exact in [false, true] {
                assert_eq!(event_value(&e, format, exact).unwrap(), v, "{payload}");
            }
        }
    }
    // The emitter's path lays out plain JSON arguments the same way.
    assert_eq!(
        args_fields("e".into(), vec![json!(1), json!("x")], DataFormat::Legacy),
        EventFields {
            event: "e".into(),
            data: json!([1, "x"]),
            binary: false,
            nargs: Some(2)
        }
    );
    assert_eq!(
        args_fields("e".into(), vec![json!([1])], DataFormat::Legacy).data,
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
        r#"["bin",{"k":{"_placeholder":true,"num":0},"l":[{"_placeholder":true,"num":1}]}]"#.into(),
        Some([Bytes::from_static(b"\x01\x02"), Bytes::from_static(b"zz")].into()),
    );
    let f = event_fields(&one, DataFormat::Legacy).unwrap();
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
    let f = event_fields(&bare, DataFormat::Legacy).unwrap();
    assert_eq!(f.data, json!([ph(0), "/w=="]));
    let e = emit_of(f);
    assert_eq!(event_value(&e, DataFormat::Legacy, true).unwrap(), bare);

    let several = Value::Str(
        r#"["s",{"_placeholder":true,"num":0},"x",{"k":{"_placeholder":true,"num":1}}]"#.into(),
        Some([Bytes::from_static(b"\x07"), Bytes::from_static(b"zz")].into()),
    );
    let f = event_fields(&several, DataFormat::Legacy).unwrap();
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

/// The formats' names in configuration: `legacy` and `args`, the same for
/// `FromStr`, `Display` and serde.
#[test]
fn data_format_names() {
    for (name, format) in [("legacy", DataFormat::Legacy), ("args", DataFormat::Args)] {
        assert_eq!(name.parse::<DataFormat>(), Ok(format));
        assert_eq!(format.to_string(), name);
        assert_eq!(
            serde_json::from_value::<DataFormat>(serde_json::json!(name)).unwrap(),
            format
        );
    }
    for bad in ["value", "Legacy", ""] {
        let err = bad.parse::<DataFormat>().unwrap_err();
        assert_eq!(err, super::UnknownDataFormat(bad.to_owned()));
        assert!(err.to_string().contains("legacy or args"), "{err}");
        assert!(serde_json::from_value::<DataFormat>(serde_json::json!(bad)).is_err());
    }
}

/// What a python peer's `emit` becomes in each reading: HQ 5.0.3
/// (python-socketio 5.16.2) publishes the argument list, vantage6 4.15.2
/// (python-socketio up to 5.15.0) the bare argument.
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
    for (data, args, legacy) in [
        // 5.16: one object, no argument.
        (r#"[{"a":1}]"#, r#"["e",{"a":1}]"#, r#"["e",[{"a":1}]]"#),
        ("[null]", r#"["e"]"#, r#"["e",[null]]"#),
        // Up to 5.15.0: the bare object; `null` for none.
        (r#"{"a":1}"#, r#"["e",{"a":1}]"#, r#"["e",{"a":1}]"#),
        ("null", r#"["e"]"#, r#"["e"]"#),
        // Ambiguous: a legacy list argument reads as two arguments in `Args`.
        ("[1,2]", r#"["e",1,2]"#, r#"["e",[1,2]]"#),
    ] {
        assert_eq!(read(data, DataFormat::Args), args, "{data} as args");
        assert_eq!(read(data, DataFormat::Legacy), legacy, "{data} as legacy");
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
    assert_eq!(e.room, RoomList::Many(vec!["1".into(), "a".into()]));
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
    let bad_b64 = r#"{"method":"emit","event":"e","data":[[],"!!"],"binary":true,"host_id":"h"}"#;
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
            uid: Uid::new(),
            req_id: Some(7),
            reply_to: "q".into(),
            target: None,
            op: RequestOp::AddSockets,
            opts: opts.clone(),
            rooms: vec!["a".into()],
        }),
        Message::Response(Response {
            host_id: "h".into(),
            namespace: "/".into(),
            uid: Uid::new(),
            req_id: 7,
            reply: Reply::Ack {
                sid: Sid::new(),
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
            uid: Uid::new(),
            reply_to: "q".into(),
            kind: HeartbeatKind::Init,
            state: None,
        }),
        Message::Heartbeat(Heartbeat {
            host_id: "h".into(),
            namespace: "/tasks".into(),
            uid: Uid::new(),
            reply_to: "q".into(),
            kind: HeartbeatKind::Beat,
            state: Some(serde_json::json!({"nodes": [1, 2]})),
        }),
    ];
    for m in msgs {
        assert_eq!(decode(&encode(&m).unwrap()).unwrap(), m);
    }
}

/// A request without a reply has no id; the wire carries `0` for it, as it always did.
#[test]
fn request_without_reply_is_id_zero_on_the_wire() {
    let uid = Uid::new();
    let req = Message::Request(Request {
        host_id: "h".into(),
        namespace: "/".into(),
        uid,
        req_id: None,
        reply_to: "q".into(),
        target: Some(uid),
        op: RequestOp::DisconnectSockets,
        opts: BroadcastOptions::default(),
        rooms: Vec::new(),
    });
    let body = encode(&req).unwrap();
    let json: Json = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["req_id"], Json::from(0));
    assert_eq!(json["uid"], Json::from(uid.to_string()));
    assert_eq!(json["target"], Json::from(uid.to_string()));
    assert_eq!(decode(&body).unwrap(), req);
    // A uid that is not one makes the message invalid.
    let bad = String::from_utf8(body)
        .unwrap()
        .replace(&uid.to_string(), "nope");
    assert!(matches!(
        decode(bad.as_bytes()),
        Err(WireError::Invalid {
            method: "x_request",
            ..
        })
    ));
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

#[test]
fn object_rooms_are_invalid() {
    for room in [r#"{"a":1}"#, r#"[["a"]]"#, r#"["a",{}]"#] {
        let body =
            format!(r#"{{"method":"emit","event":"e","data":[1],"room":{room},"host_id":"h"}}"#);
        assert!(
            matches!(
                decode(body.as_bytes()),
                Err(WireError::Invalid { method: "emit", .. })
            ),
            "room {room}"
        );
        let body = format!(
            r#"{{"method":"emit","event":"e","data":[1],"skip_sid":{room},"host_id":"h"}}"#
        );
        assert!(decode(body.as_bytes()).is_err(), "skip_sid {room}");
    }
}
