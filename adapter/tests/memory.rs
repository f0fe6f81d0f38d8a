//! Adapter behaviour over the in-process broker: several `SocketIo` servers, dummy clients,
//! and python-socketio messages injected on the exchange.

mod common;

use common::{config, eventually, py_emit, server, server_with, wait_for_cluster, Client};
use futures_util::StreamExt;
use serde_json::json;
use socketioxide_amqp::{
    broker::{Driver as _, MemoryBroker},
    wire::{self, Message},
    AdapterConfig, PeerEvent,
};

/// Drains the tap and decodes what was published to the exchange.
fn published(tap: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) -> Vec<Message> {
    let mut out = Vec::new();
    while let Ok(body) = tap.try_recv() {
        out.push(wire::decode(&body).expect("our own messages decode"));
    }
    out
}

fn emits(msgs: Vec<Message>) -> Vec<wire::Emit> {
    msgs.into_iter()
        .filter_map(|m| match m {
            Message::Emit(e) => Some(e),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn broadcast_reaches_every_server_with_one_python_readable_publish() {
    let broker = MemoryBroker::new();
    let (io1, ctr1) = server(broker.driver()).await;
    let (io2, _) = server(broker.driver()).await;
    let mut c1 = Client::connect(&io1).await;
    let mut c2 = Client::connect(&io2).await;
    wait_for_cluster(&[&io1, &io2], 2).await;

    let mut tap = broker.tap();
    io1.emit("hello", &json!({"a": 1})).await.unwrap();
    assert_eq!(c1.next().await, r#"2["hello",{"a":1}]"#);
    assert_eq!(c2.next().await, r#"2["hello",{"a":1}]"#);

    let emits = emits(published(&mut tap));
    assert_eq!(emits.len(), 1, "exactly one publish per broadcast");
    let e = &emits[0];
    assert_eq!(e.event, "hello");
    assert_eq!(e.data, json!([{"a": 1}]));
    assert_eq!(e.namespace, "/");
    assert!(e.room.is_none());
    assert_eq!(e.host_id, ctr1.host_id());

    // The sender ignored its own message: the next frame is the next broadcast.
    io1.to("nobody").emit("skip", &()).await.unwrap();
    io2.emit("marker", &()).await.unwrap();
    assert_eq!(c1.next().await, r#"2["marker",null]"#);
    assert!(ctr1.metrics().ignored >= 1);
}

// duplicates: deliberate — each test sets up its own servers and clients in full, so that it
// reads as its scenario.
#[tokio::test]
async fn rooms_except_and_binary_between_servers() {
    let broker = MemoryBroker::new();
    let (io1, _) = server(broker.driver()).await;
    let (io2, _) = server(broker.driver()).await;
    let mut a = Client::connect(&io1).await;
    let mut b = Client::connect(&io2).await;
    let mut c = Client::connect(&io2).await;
    wait_for_cluster(&[&io1, &io2], 3).await;
    io1.local().fetch_sockets().await.unwrap();
    // Rooms set on each server locally.
    for s in io2.sockets() {
        s.join(if s.id == b.sid { "r1" } else { "r2" });
    }
    io1.to("r1").emit("only-r1", &1).await.unwrap();
    assert_eq!(b.next().await, r#"2["only-r1",1]"#);
    io1.to(["r1", "r2"])
        .except("r2")
        .emit("except", &2)
        .await
        .unwrap();
    assert_eq!(b.next().await, r#"2["except",2]"#);

    let bin = bytes::Bytes::from_static(b"\x01\x02");
    io1.to("r2").emit("bin", &(bin.clone(), "x")).await.unwrap();
    let (frame, bins) = c.next_with_bins(1).await;
    assert_eq!(frame, r#"51-["bin",{"_placeholder":true,"num":0},"x"]"#);
    assert_eq!(bins, [b"\x01\x02".to_vec()]);

    io2.emit("marker", &()).await.unwrap();
    assert_eq!(a.next().await, r#"2["marker",null]"#);
}

#[tokio::test]
async fn python_emit_reaches_local_sockets() {
    let broker = MemoryBroker::new();
    let (io, ctr) = server(broker.driver()).await;
    let mut a = Client::connect(&io).await;
    let mut b = Client::connect(&io).await;
    io.local()
        .sockets()
        .into_iter()
        .for_each(|s| s.join(if s.id == a.sid { "room1" } else { "room2" }));

    // The literal message captured from python-socketio 5.18.1.
    broker.inject(br#"{"method": "emit", "event": "my event", "data": [{"a": 1}], "binary": false, "namespace": "/", "room": "room1", "skip_sid": null, "callback": null, "host_id": "29359f22c4e0480e8f2718beb2381ea7"}"#.to_vec());
    assert_eq!(a.next().await, r#"2["my event",{"a":1}]"#);

    // Several args, room list.
    broker.inject(py_emit(
        "multi",
        json!(["a", 2, null]),
        json!(["room1", "room2"]),
    ));
    assert_eq!(a.next().await, r#"2["multi","a",2,null]"#);
    assert_eq!(b.next().await, r#"2["multi","a",2,null]"#);

    // A sid is a room, `[null]` is no argument, skip_sid excludes.
    broker.inject(py_emit("to-sid", json!([null]), json!(b.sid.to_string())));
    assert_eq!(b.next().await, r#"2["to-sid"]"#);
    let mut skip = serde_json::from_slice::<serde_json::Value>(&py_emit(
        "skip",
        json!([]),
        serde_json::Value::Null,
    ))
    .unwrap();
    skip["skip_sid"] = json!([a.sid.to_string(), "FDEIIuLvTWf7FaSBAAAA"]);
    broker.inject(serde_json::to_vec(&skip).unwrap());
    assert_eq!(b.next().await, r#"2["skip"]"#);

    // Binary with placeholders, to everybody.
    broker.inject(br#"{"method": "emit", "event": "bin", "data": [[{"_placeholder": true, "num": 0}, "x", {"k": {"_placeholder": true, "num": 1}}], "AQI=", "eno="], "binary": true, "namespace": "/", "room": null, "skip_sid": null, "callback": null, "host_id": "29359f22c4e0480e8f2718beb2381ea7"}"#.to_vec());
    for client in [&mut a, &mut b] {
        let (frame, bins) = client.next_with_bins(2).await;
        assert_eq!(
            frame,
            r#"52-["bin",{"_placeholder":true,"num":0},"x",{"k":{"_placeholder":true,"num":1}}]"#
        );
        assert_eq!(bins, [b"\x01\x02".to_vec(), b"zz".to_vec()]);
    }

    // Junk is counted and dropped, the next message still works.
    broker.inject(b"\x80not json".to_vec());
    broker.inject(br#"{"method":"emit"}"#.to_vec());
    broker.inject(py_emit("after-junk", json!([1]), serde_json::Value::Null));
    assert_eq!(a.next().await, r#"2["after-junk",1]"#);
    assert_eq!(ctr.metrics().invalid, 2);
}

#[tokio::test]
async fn python_callback_requests_get_callback_replies() {
    let broker = MemoryBroker::new();
    let (io, ctr) = server(broker.driver()).await;
    let a = Client::connect(&io).await;
    let mut a = a;
    let mut tap = broker.tap();
    let py_host = "84aef12e5c124534bf0e9c1587f02701";
    let body = json!({"method": "emit", "event": "ev", "data": [{"x": 1}], "binary": false,
        "namespace": "/", "room": a.sid.to_string(), "skip_sid": null,
        "callback": [a.sid.to_string(), "/", 7], "host_id": py_host});
    broker.inject(serde_json::to_vec(&body).unwrap());
    let frame = a.next().await;
    assert!(
        frame.starts_with('2') && frame.ends_with(r#"["ev",{"x":1}]"#),
        "{frame}"
    );
    a.ack(&frame, r#"["ok",{"n":2}]"#).await;

    let deadline = tokio::time::Instant::now() + common::WAIT;
    let callback = loop {
        if let Some(Ok(Message::Callback(c))) = tap.recv().await.map(|b| wire::decode(&b)) {
            break c;
        }
        assert!(tokio::time::Instant::now() < deadline);
    };
    assert_eq!(callback.host_id, py_host);
    assert_eq!(callback.sid, a.sid.to_string());
    assert_eq!(callback.id, 7);
    assert_eq!(callback.namespace, "/");
    assert_eq!(callback.args, json!(["ok", {"n": 2}]));
    assert_ne!(callback.host_id, ctr.host_id());
}

#[tokio::test]
async fn python_room_and_disconnect_methods_act_on_local_sockets() {
    let broker = MemoryBroker::new();
    let (io, _) = server(broker.driver()).await;
    let mut a = Client::connect(&io).await;
    let sid = a.sid.to_string();
    let host = "29359f22c4e0480e8f2718beb2381ea7";
    let inject = |v: serde_json::Value| broker.inject(serde_json::to_vec(&v).unwrap());

    inject(
        json!({"method": "enter_room", "sid": sid, "room": "room9", "namespace": "/", "host_id": host}),
    );
    // Unknown (python) sids are ignored, without ghost entries.
    inject(
        json!({"method": "enter_room", "sid": "FDEIIuLvTWf7FaSBAAAA", "room": "room9", "namespace": "/", "host_id": host}),
    );
    broker.inject(py_emit("in9", json!([]), json!("room9")));
    assert_eq!(a.next().await, r#"2["in9"]"#);
    assert_eq!(io.local().rooms().await.unwrap(), ["room9"]);

    inject(
        json!({"method": "leave_room", "sid": sid, "room": "room9", "namespace": "/", "host_id": host}),
    );
    inject(
        json!({"method": "enter_room", "sid": sid, "room": "room8", "namespace": "/", "host_id": host}),
    );
    inject(json!({"method": "close_room", "room": "room8", "namespace": "/", "host_id": host}));
    broker.inject(py_emit("marker", json!([]), json!(null)));
    assert_eq!(a.next().await, r#"2["marker"]"#);
    assert!(io.local().rooms().await.unwrap().is_empty());

    inject(json!({"method": "disconnect", "sid": sid, "namespace": "/", "host_id": host}));
    a.expect_disconnect().await;
}

#[tokio::test]
async fn fetch_sockets_rooms_and_room_wide_ops_across_servers() {
    let broker = MemoryBroker::new();
    let (io1, _) = server(broker.driver()).await;
    let (io2, _) = server(broker.driver()).await;
    let (io3, ctr3) = server(broker.driver()).await;
    let _a = Client::connect(&io1).await;
    let mut b = Client::connect(&io2).await;
    let mut c = Client::connect(&io3).await;
    wait_for_cluster(&[&io1, &io2, &io3], 3).await;

    io1.clone().join("all").await.unwrap();
    eventually("every socket joined", || async {
        io3.within("all").fetch_sockets().await.unwrap().len() == 3
    })
    .await;
    assert_eq!(io2.rooms().await.unwrap(), ["all"]);
    io1.within("all").leave("all").await.unwrap();
    eventually("every socket left", || async {
        io2.rooms().await.unwrap().is_empty()
    })
    .await;

    // Remote socket operations, from server 1 on the socket of server 3.
    let sockets = io1.fetch_sockets().await.unwrap();
    assert_eq!(sockets.len(), 3);
    let remote_c = sockets.into_iter().find(|s| s.data().id == c.sid).unwrap();
    remote_c.join("vip").await.unwrap();
    eventually("remote join", || async {
        io3.local().rooms().await.unwrap() == ["vip"]
    })
    .await;
    assert!(io2.local().rooms().await.unwrap().is_empty());
    remote_c.emit("direct", &"hi").await.unwrap();
    assert_eq!(c.next().await, r#"2["direct","hi"]"#);
    let published_before = broker.published();
    remote_c.leave("vip").await.unwrap();
    // Targeted at a known server: sent to its queue, not to the exchange.
    assert_eq!(broker.published(), published_before);
    eventually("remote leave", || async {
        io3.local().rooms().await.unwrap().is_empty()
    })
    .await;

    io1.to("nobody").disconnect().await.unwrap();
    io2.emit("still", &()).await.unwrap();
    assert_eq!(b.next().await, r#"2["still",null]"#);
    assert_eq!(c.next().await, r#"2["still",null]"#);
    remote_c.disconnect().await.unwrap();
    c.expect_disconnect().await;
    io1.disconnect().await.unwrap();
    b.expect_disconnect().await;
    assert_eq!(ctr3.metrics().invalid, 0);
}

#[tokio::test]
async fn broadcast_with_ack_collects_every_ack_and_ends() {
    let broker = MemoryBroker::new();
    let (io1, _) = server(broker.driver()).await;
    let (io2, _) = server(broker.driver()).await;
    let mut a = Client::connect(&io1).await;
    let mut b = Client::connect(&io2).await;
    let mut b2 = Client::connect(&io2).await;
    wait_for_cluster(&[&io1, &io2], 3).await;

    let stream = io1
        .emit_with_ack::<_, String>("question", &1)
        .await
        .unwrap();
    for client in [&mut a, &mut b, &mut b2] {
        let frame = client.next().await;
        client.ack(&frame, &format!(r#"["{}"]"#, client.sid)).await;
    }
    let acks: Vec<_> = stream.collect().await;
    let mut got: Vec<String> = acks.into_iter().map(|(_, r)| r.unwrap()).collect();
    got.sort();
    let mut want = vec![a.sid.to_string(), b.sid.to_string(), b2.sid.to_string()];
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn local_operations_never_touch_the_broker() {
    let broker = MemoryBroker::new();
    let (io1, ctr) = server(broker.driver()).await;
    let (io2, _) = server(broker.driver()).await;
    let mut a = Client::connect(&io1).await;
    let _b = Client::connect(&io2).await;
    wait_for_cluster(&[&io1, &io2], 2).await;
    let before = ctr.metrics().published;
    io1.local().emit("local", &()).await.unwrap();
    assert_eq!(a.next().await, r#"2["local",null]"#);
    assert_eq!(io1.local().fetch_sockets().await.unwrap().len(), 1);
    io1.local().join("x").await.unwrap();
    assert_eq!(io1.local().rooms().await.unwrap(), ["x"]);
    io1.local().leave("x").await.unwrap();
    let stream = io1.local().emit_with_ack::<_, ()>("q", &()).await.unwrap();
    let frame = a.next().await;
    a.ack(&frame, "[null]").await;
    assert_eq!(stream.count().await, 1);
    assert_eq!(ctr.metrics().published, before);
}

#[tokio::test]
async fn broker_down_keeps_local_delivery_and_reports_the_failure() {
    let broker = MemoryBroker::new();
    let (io, ctr) = server(broker.driver()).await;
    let mut a = Client::connect(&io).await;
    broker.set_down(true);
    let res = io.emit("while-down", &()).await;
    assert!(res.is_err(), "the failed publish is an error");
    assert_eq!(a.next().await, r#"2["while-down",null]"#);
    assert_eq!(ctr.metrics().publish_errors, 1);
    broker.set_down(false);
    io.emit("back", &()).await.unwrap();
    assert_eq!(a.next().await, r#"2["back",null]"#);
}

/// A namespace whose start-up cannot reach the broker is an error for the caller of `io.ns`,
/// and is not registered; once the broker is back, it can be added.
#[tokio::test]
async fn namespace_start_up_reports_a_broker_failure() {
    let broker = MemoryBroker::new();
    let (io, ctr) = server(broker.driver()).await;
    broker.set_down(true);
    let res = io.ns("/down", async || {}).await;
    assert!(res.is_err(), "the failed start-up is an error");
    assert!(io.of("/down").is_none(), "the namespace is not registered");
    assert_eq!(ctr.server_count("/down"), None);
    broker.set_down(false);
    io.ns("/down", async || {}).await.unwrap();
    assert!(io.of("/down").is_some());
    assert_eq!(ctr.server_count("/down"), Some(1));
}

#[tokio::test]
async fn python_acks_are_collected_while_the_stream_is_open() {
    let broker = MemoryBroker::new();
    let config = common::config()
        .with_request_timeout(std::time::Duration::from_millis(200))
        .with_wait_for_python_acks(true);
    let (io, ctr) = common::server_with(broker.driver(), config).await;
    let mut tap = broker.tap();
    let stream = io
        .to("FDEIIuLvTWf7FaSBAAAA")
        .timeout(std::time::Duration::from_millis(300))
        .emit_with_ack::<_, String>("call", &1)
        .await
        .unwrap();
    let emit = emits(published(&mut tap)).remove(0);
    let callback = emit.callback.expect("python callback field");
    assert_eq!(callback.room, "FDEIIuLvTWf7FaSBAAAA");
    // What a python server does when its client acks.
    broker.inject(
        serde_json::to_vec(&json!({"method": "callback", "host_id": ctr.host_id(),
            "sid": callback.room, "namespace": "/", "id": callback.id, "args": ["py-ok"]}))
        .unwrap(),
    );
    let acks: Vec<_> = stream.collect().await;
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].1.as_ref().unwrap(), "py-ok");
}

#[tokio::test]
async fn emitter_reaches_servers_like_a_python_publisher() {
    let broker = MemoryBroker::new();
    let (io, _) = server(broker.driver()).await;
    let mut a = Client::connect(&io).await;
    let mut b = Client::connect(&io).await;
    io.local().sockets().into_iter().for_each(|s| s.join("r"));
    let emitter = socketioxide_amqp::AmqpEmitter::new(broker.driver());
    let mut tap = broker.tap();
    emitter
        .to("r")
        .skip_sid(b.sid.to_string())
        .emit("ev", &json!({"k": 1}))
        .await
        .unwrap();
    assert_eq!(a.next().await, r#"2["ev",{"k":1}]"#);
    let sent = emits(published(&mut tap)).remove(0);
    assert_eq!(sent.room, wire::RoomList::One("r".into()));
    assert!(sent.x_opts.is_none(), "plain python message");

    emitter
        .emit_args("two", vec![json!(1), json!("x")])
        .await
        .unwrap();
    assert_eq!(b.next().await, r#"2["two",1,"x"]"#);
    assert_eq!(a.next().await, r#"2["two",1,"x"]"#);
    emitter.close_room("r").await.unwrap();
    emitter.enter_room(&a.sid.to_string(), "s").await.unwrap();
    emitter.to("s").emit("in-s", &()).await.unwrap();
    assert_eq!(a.next().await, r#"2["in-s"]"#);
    assert_eq!(io.local().rooms().await.unwrap(), ["s"]);
    emitter.leave_room(&a.sid.to_string(), "s").await.unwrap();
    emitter.disconnect(&b.sid.to_string()).await.unwrap();
    b.expect_disconnect().await;
    assert!(io.local().rooms().await.unwrap().is_empty());
    broker.set_down(true);
    assert!(emitter.emit("x", &1).await.is_err());
    assert_eq!(emitter.publish_errors(), 1);
}

#[tokio::test]
async fn python_5_15_0_legacy_format() {
    let broker = MemoryBroker::new();
    let config = common::config().with_python_data_format(socketioxide_amqp::DataFormat::Legacy);
    let (io, _) = common::server_with(broker.driver(), config).await;
    let mut a = Client::connect(&io).await;
    // python-socketio 5.15.0 `emit('ev', [1, 2])`: one list argument.
    broker.inject(py_emit("ev", json!([1, 2]), serde_json::Value::Null));
    assert_eq!(a.next().await, r#"2["ev",[1,2]]"#);
    let emitter = socketioxide_amqp::AmqpEmitter::with_data_format(
        broker.driver(),
        socketioxide_amqp::DataFormat::Legacy,
    );
    let mut tap = broker.tap();
    emitter.emit("one", &json!(["x"])).await.unwrap();
    assert_eq!(a.next().await, r#"2["one",["x"]]"#);
    let sent = emits(published(&mut tap)).remove(0);
    assert_eq!(sent.data, json!(["x"]));
    assert_eq!(sent.x_nargs, Some(1));
    io.emit("rust", &json!([1, 2])).await.unwrap();
    assert_eq!(a.next().await, r#"2["rust",[1,2]]"#);
}

/// Servers set to python-socketio 5.15.0's layout publish `data` as the bare argument, which a
/// 5.15.0 server hands its clients as that argument, and still reach each other (and servers set
/// to the 5.15.1+ layout) with the exact arguments.
#[tokio::test]
async fn legacy_format_between_socketioxide_servers_is_exact() {
    use socketioxide_amqp::DataFormat;
    let broker = MemoryBroker::new();
    let legacy = common::config().with_python_data_format(DataFormat::Legacy);
    let (io1, _) = common::server_with(broker.driver(), legacy.clone()).await;
    let (io2, _) = common::server_with(broker.driver(), legacy).await;
    let (io3, _) = server(broker.driver()).await;
    let mut a = Client::connect(&io1).await;
    let mut b = Client::connect(&io2).await;
    let mut c = Client::connect(&io3).await;
    wait_for_cluster(&[&io1, &io2, &io3], 3).await;
    let mut tap = broker.tap();

    // One null argument, one list argument, several arguments.
    io1.emit("null", &()).await.unwrap();
    io1.emit("list", &json!([1, 2])).await.unwrap();
    io1.emit("dict", &json!({"run_id": 3})).await.unwrap();
    io1.emit("several", &("a", 2, json!(null))).await.unwrap();
    let expected = [
        (r#"2["null",null]"#, json!(null), 1),
        (r#"2["list",[1,2]]"#, json!([1, 2]), 1),
        (r#"2["dict",{"run_id":3}]"#, json!({"run_id": 3}), 1),
        (r#"2["several","a",2,null]"#, json!(["a", 2, null]), 3),
    ];
    for (frame, _, _) in &expected {
        assert_eq!(a.next().await, *frame, "local");
        assert_eq!(b.next().await, *frame, "remote, Value layout");
        assert_eq!(c.next().await, *frame, "remote, Args layout");
    }
    let sent = emits(published(&mut tap));
    assert_eq!(sent.len(), expected.len(), "one publish per broadcast");
    for ((frame, data, nargs), sent) in expected.into_iter().zip(sent) {
        assert_eq!(
            sent.data, data,
            "{frame}: 5.15.0 reads `data` as the argument"
        );
        assert!(!sent.binary);
        assert_eq!(sent.x_nargs, Some(nargs));
    }

    // Binary: one bare attachment, and several arguments holding attachments.
    let bin = bytes::Bytes::from_static(b"\x01\x02");
    io1.emit("bin", &bin).await.unwrap();
    let one = r#"51-["bin",{"_placeholder":true,"num":0}]"#;
    for client in [&mut a, &mut b, &mut c] {
        let (frame, bins) = client.next_with_bins(1).await;
        assert_eq!(frame, one);
        assert_eq!(bins, [b"\x01\x02".to_vec()]);
    }
    let sent = emits(published(&mut tap)).remove(0);
    assert!(sent.binary);
    assert_eq!(sent.data, json!([{"_placeholder": true, "num": 0}, "AQI="]));
    assert_eq!(sent.x_nargs, Some(1));

    let zz = bytes::Bytes::from_static(b"zz");
    io2.emit("bins", &(bin.clone(), "x", json!({"k": 1}), zz))
        .await
        .unwrap();
    let several =
        r#"52-["bins",{"_placeholder":true,"num":0},"x",{"k":1},{"_placeholder":true,"num":1}]"#;
    for client in [&mut b, &mut a, &mut c] {
        let (frame, bins) = client.next_with_bins(2).await;
        assert_eq!(frame, several);
        assert_eq!(bins, [b"\x01\x02".to_vec(), b"zz".to_vec()]);
    }
    let sent = emits(published(&mut tap)).remove(0);
    assert!(sent.binary);
    assert_eq!(
        sent.data,
        json!([[{"_placeholder": true, "num": 0}, "x", {"k": 1}, {"_placeholder": true, "num": 1}], "AQI=", "eno="])
    );
    assert_eq!(sent.x_nargs, Some(4));

    // A server in the 5.15.1+ layout publishes the argument list, without `x_nargs`, and the
    // servers in the 5.15.0 layout read it exactly.
    io3.emit("null", &()).await.unwrap();
    for client in [&mut c, &mut a, &mut b] {
        assert_eq!(client.next().await, r#"2["null",null]"#);
    }
    let sent = emits(published(&mut tap)).remove(0);
    assert_eq!(sent.data, json!([null]));
    assert_eq!(sent.x_nargs, None);
}

#[tokio::test]
async fn deleting_a_namespace_leaves_the_others_working() {
    use socketioxide_amqp::{AmqpAdapterCtr, CustomAmqpAdapter};
    let broker = MemoryBroker::new();
    // io1's first namespace is "/b": its init starts the consumer shared by all namespaces.
    let ctr1 = AmqpAdapterCtr::new_with_driver(broker.driver(), common::config());
    let (_svc, io1) = socketioxide::SocketIo::builder()
        .with_adapter::<CustomAmqpAdapter<_, _>>(ctr1.clone())
        .build_svc();
    io1.ns("/b", async || {}).await.unwrap();
    io1.ns("/", async || {}).await.unwrap();
    let (io2, _) = server(broker.driver()).await;
    io2.ns("/b", async || {}).await.unwrap();
    let mut a = Client::connect(&io1).await;
    let _b = Client::connect(&io2).await;
    wait_for_cluster(&[&io1, &io2], 2).await;

    io1.delete_ns("/b");
    io2.of("/b").unwrap().emit("to-b", &()).await.unwrap();
    io2.emit("to-root", &()).await.unwrap();
    assert_eq!(a.next().await, r#"2["to-root",null]"#);
    eventually("the /b message was unroutable on io1", || async {
        ctr1.metrics().unroutable >= 1
    })
    .await;
}

#[tokio::test]
async fn server_count_and_emit_counter() {
    let broker = MemoryBroker::new();
    let (io1, ctr1) = server(broker.driver()).await;
    let (io2, ctr2) = server(broker.driver()).await;
    let _a = Client::connect(&io1).await;
    let _b = Client::connect(&io2).await;
    wait_for_cluster(&[&io1, &io2], 2).await;
    assert_eq!(ctr1.server_count("/"), Some(2));
    assert_eq!(ctr2.server_count("/"), Some(2));
    assert_eq!(ctr1.server_count("/nope"), None);

    let before = ctr1.metrics();
    io1.to("r").emit("x", &1).await.unwrap();
    io1.local().emit("y", &1).await.unwrap();
    let after = ctr1.metrics();
    assert_eq!(
        after.emits - before.emits,
        1,
        "one emit for the broadcast, none for local"
    );
    assert!(after.published - before.published >= 1);

    // A namespace that closes says goodbye: the other server counts itself only.
    io2.delete_ns("/");
    eventually("server 1 forgets server 2", || async {
        ctr1.server_count("/") == Some(1)
    })
    .await;
    assert_eq!(ctr2.server_count("/"), None);
}

#[tokio::test]
async fn oversized_messages_are_dropped_before_decoding() {
    let broker = MemoryBroker::new();
    let (io, ctr) = server_with(broker.driver(), config().with_max_message_size(1024)).await;
    let mut a = Client::connect(&io).await;
    // A valid emit, but over the limit: counted as invalid, never delivered.
    let mut huge = serde_json::from_slice::<serde_json::Value>(&py_emit(
        "huge",
        json!([]),
        serde_json::Value::Null,
    ))
    .unwrap();
    huge["data"] = json!(["x".repeat(4096)]);
    broker.inject(serde_json::to_vec(&huge).unwrap());
    broker.inject(py_emit("small", json!([1]), serde_json::Value::Null));
    assert_eq!(a.next().await, r#"2["small",1]"#);
    assert_eq!(ctr.metrics().invalid, 1);
}

/// Heartbeats every 50 ms, a peer silent for 200 ms is lost.
fn fast_heartbeats() -> AdapterConfig {
    config().with_heartbeat(
        std::time::Duration::from_millis(50),
        std::time::Duration::from_millis(200),
    )
}

#[tokio::test]
async fn a_peer_that_stops_beating_is_lost_with_its_last_state_and_its_queue_deleted() {
    let broker = MemoryBroker::new();
    let (_io1, ctr1) = server_with(broker.driver(), fast_heartbeats()).await;
    let mut events = ctr1.peer_events();
    let (io2, ctr2) = server_with(broker.driver(), fast_heartbeats()).await;
    let queue2 = ctr2.driver().queue_name().to_owned();
    ctr2.set_local_state("/", json!({"nodes": [7, 9]}));
    eventually("server 1 reads server 2's state", || async {
        ctr1.peer_states("/")
            .iter()
            .any(|(_, s)| s.as_ref() == Some(&json!({"nodes": [7, 9]})))
    })
    .await;
    // A state that changes is announced at once, not at the next beat only.
    ctr2.set_local_state("/", json!({"nodes": [7]}));
    eventually("server 1 reads the new state", || async {
        ctr1.peer_states("/")
            .iter()
            .any(|(_, s)| s.as_ref() == Some(&json!({"nodes": [7]})))
    })
    .await;

    // Server 2 dies: its `SocketIo` is gone without a `bye` (its tasks end with it).
    drop(io2);
    drop(ctr2);
    let event = tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
        .await
        .expect("a lost-peer event within 5 s")
        .expect("the event channel is open");
    let PeerEvent::Lost {
        namespace,
        state,
        acting,
        ..
    } = event
    else {
        panic!("not a lost peer: {event:?}");
    };
    assert_eq!(namespace, "/");
    assert_eq!(state, Some(json!({"nodes": [7]})));
    assert!(acting, "the only live server acts");
    assert!(
        !broker.has_queue(&queue2),
        "the lost peer's queue is deleted"
    );
    let m = ctr1.metrics();
    assert_eq!((m.peers_lost, m.peer_queues_deleted), (1, 1));
    assert!(ctr1.peer_states("/").is_empty());
    assert_eq!(ctr1.server_count("/"), Some(1));
}

#[tokio::test]
async fn peers_silent_during_our_own_outage_are_forgotten_not_lost() {
    let broker = MemoryBroker::new();
    let (_io1, ctr1) = server_with(broker.driver(), fast_heartbeats()).await;
    let mut events = ctr1.peer_events();
    let (_io2, ctr2) = server_with(broker.driver(), fast_heartbeats()).await;
    let queue2 = ctr2.driver().queue_name().to_owned();
    eventually("the servers see each other", || async {
        ctr1.server_count("/") == Some(2)
    })
    .await;
    // The broker is down for longer than the heartbeat timeout: nobody hears anybody.
    broker.set_down(true);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    broker.set_down(false);
    eventually("the servers see each other again", || async {
        ctr1.server_count("/") == Some(2)
    })
    .await;
    assert!(
        events.try_recv().is_err(),
        "no peer declared lost for an outage"
    );
    assert_eq!(ctr1.metrics().peers_lost, 0);
    assert!(broker.has_queue(&queue2));
}

#[tokio::test]
async fn a_silent_peer_whose_queue_has_a_consumer_is_not_lost() {
    let broker = MemoryBroker::new();
    let (_io1, ctr1) = server_with(broker.driver(), fast_heartbeats()).await;
    let mut events = ctr1.peer_events();
    // A peer whose heartbeats stop while something still consumes from its queue (the
    // receiver of `alive` lives): a server that is up, e.g. back after an outage of its own.
    let alive = broker.driver();
    let queue = alive.queue_name().to_owned();
    broker.inject(
        serde_json::to_vec(&json!({
            "method": "x_heartbeat", "host_id": "0f0e0d0c0b0a09080706050403020100",
            "namespace": "/", "uid": "AAAAAAAAAAAAAAAA", "reply_to": queue, "kind": "beat"
        }))
        .unwrap(),
    );
    eventually("server 1 hears the peer", || async {
        ctr1.server_count("/") == Some(2)
    })
    .await;
    // Three heartbeat timeouts without a beat.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(
        ctr1.server_count("/"),
        Some(1),
        "forgotten until heard again"
    );
    assert!(
        events.try_recv().is_err(),
        "a peer whose queue is consumed is not declared lost"
    );
    assert!(broker.has_queue(&queue), "its queue is kept");
    let m = ctr1.metrics();
    assert_eq!((m.peers_lost, m.peer_queues_deleted), (0, 0));
    drop(alive);
}

#[tokio::test]
async fn our_own_heartbeats_come_back_uncounted() {
    let broker = MemoryBroker::new();
    let (_io1, ctr1) = server_with(broker.driver(), fast_heartbeats()).await;
    // Beats every 50 ms go round the fanout exchange and come back to their sender.
    eventually("several own heartbeats received", || async {
        ctr1.metrics().received >= 4
    })
    .await;
    assert_eq!(
        ctr1.metrics().ignored,
        0,
        "own heartbeats are not counted as ignored messages"
    );
}
