//! Fuzzing of the broker message decoder ([`wire::decode`] and what the receiver does next with
//! an `emit`: [`wire::event_value`]), with proptest on stable Rust.
//!
//! Every run replays the committed corpus (`tests/corpus/wire/`: `valid/` must decode, `invalid/`
//! must be refused with an error) and then generates cases: arbitrary bytes, corpus messages with
//! bytes flipped, and corpus messages with one field replaced by an arbitrary JSON value or
//! removed. Nothing may panic; what decodes must encode and decode again to the same message.
//!
//! `V6_FUZZ_CASES=200000 cargo test -p socketioxide-amqp --test fuzz_wire` runs longer (the
//! default keeps each target within a few seconds of a debug build); see `tests/corpus/README.md`.

use std::path::{Path, PathBuf};

use proptest::{
    collection::{btree_map, vec},
    prelude::*,
    test_runner::{Config, TestRunner},
};
use serde_json::Value as Json;
use socketioxide_amqp::wire::{self, DataFormat, Message};

/// The cases per generated target, `V6_FUZZ_CASES` or a default that runs in a few seconds.
fn cases(default: u32) -> u32 {
    std::env::var("V6_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runner(default: u32) -> TestRunner {
    TestRunner::new(Config {
        cases: cases(default),
        failure_persistence: None,
        ..Config::default()
    })
}

fn corpus_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus/wire")
        .join(kind)
}

/// The files of `valid/` or `invalid/`, sorted, with their names.
fn corpus(kind: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir(kind))
        .expect("corpus directory")
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    let out: Vec<_> = files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("corpus file"))
        })
        .collect();
    assert!(out.len() >= 5, "corpus {kind} has too few seeds");
    out
}

/// What the receiver does with a decoded message's payloads; must not panic either.
fn exercise(msg: &Message) {
    match msg {
        Message::Emit(e) | Message::RawEmit(e) => {
            for format in [DataFormat::Args, DataFormat::Legacy] {
                for exact in [false, true] {
                    let _ = wire::event_value(e, format, exact);
                }
            }
        }
        Message::Callback(c) => {
            let _ = wire::callback_value(&c.args);
        }
        _ => {}
    }
    let again = wire::encode(msg).expect("a decoded message encodes");
    let back = wire::decode(&again).expect("an encoded message decodes");
    assert_eq!(back.method(), msg.method());
    assert_eq!(back.host_id(), msg.host_id());
    assert_eq!(back.namespace(), msg.namespace());
}

fn check(bytes: &[u8]) {
    if let Ok(msg) = wire::decode(bytes) {
        exercise(&msg);
    }
}

#[test]
fn corpus_valid_messages_decode() {
    for (name, body) in corpus("valid") {
        let msg = wire::decode(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        exercise(&msg);
    }
}

#[test]
fn corpus_invalid_messages_are_errors() {
    for (name, body) in corpus("invalid") {
        assert!(
            wire::decode(&body).is_err(),
            "{name} decoded, expected an error"
        );
    }
}

/// Any JSON value, nested a few levels.
fn json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Json::Number)),
        ".{0,12}".prop_map(Json::String),
        Just(Json::String("/tasks".into())),
        Just(Json::String("AQI=".into())),
        Just(serde_json::json!({"_placeholder": true, "num": 0})),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Json::Array),
            btree_map("[a-z_]{0,8}", inner, 0..6)
                .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

/// Field names of every message kind, ours and python-socketio's.
const FIELDS: &[&str] = &[
    "method",
    "event",
    "data",
    "binary",
    "namespace",
    "room",
    "skip_sid",
    "callback",
    "host_id",
    "sid",
    "id",
    "args",
    "x_uid",
    "x_opts",
    "x_nargs",
    "x_value",
    "x_req",
    "x_reply_to",
    "x_timeout_ms",
    "uid",
    "req_id",
    "reply_to",
    "target",
    "op",
    "opts",
    "rooms",
    "reply",
    "kind",
];

const METHODS: &[&str] = &[
    "emit",
    "callback",
    "disconnect",
    "enter_room",
    "leave_room",
    "close_room",
    "x_emit",
    "x_request",
    "x_response",
    "x_heartbeat",
];

#[test]
fn arbitrary_bytes_never_panic() {
    runner(20_000)
        .run(&vec(any::<u8>(), 0..1024), |bytes| {
            check(&bytes);
            Ok(())
        })
        .unwrap();
}

#[test]
fn flipped_corpus_bytes_never_panic() {
    let seeds: Vec<Vec<u8>> = corpus("valid").into_iter().map(|(_, b)| b).collect();
    let n = seeds.len();
    runner(20_000)
        .run(
            &(0..n, vec((any::<usize>(), any::<u8>()), 1..8)),
            |(seed, flips)| {
                let mut body = seeds[seed].clone();
                for (pos, byte) in flips {
                    let at = pos % body.len();
                    body[at] = byte;
                }
                check(&body);
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn structured_wrong_fields_never_panic() {
    let seeds: Vec<serde_json::Map<String, Json>> = corpus("valid")
        .into_iter()
        .map(|(_, b)| serde_json::from_slice(&b).expect("valid seed is JSON"))
        .collect();
    let n = seeds.len();
    let edit = prop_oneof![
        // a field set to any value
        (0..FIELDS.len(), json()).prop_map(|(f, v)| (FIELDS[f], Some(v))),
        // a field removed
        (0..FIELDS.len()).prop_map(|f| (FIELDS[f], None)),
        // another method over the same fields
        (0..METHODS.len()).prop_map(|m| ("method", Some(Json::String(METHODS[m].into())))),
    ];
    runner(20_000)
        .run(&(0..n, vec(edit, 1..5)), |(seed, edits)| {
            let mut map = seeds[seed].clone();
            for (field, value) in edits {
                match value {
                    Some(v) => map.insert(field.to_owned(), v),
                    None => map.remove(field),
                };
            }
            let body = serde_json::to_vec(&map).expect("encode");
            check(&body);
            Ok(())
        })
        .unwrap();
}
