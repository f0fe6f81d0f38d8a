//! Three socketioxide servers in separate processes sharing rooms over the real RabbitMQ
//! (`AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`), driven by real Socket.IO
//! clients over websockets, connected round-robin: client `c<i>` sits on node `i % 3`.
//!
//! Each test has its own exchange and nodes. After every operation a fence (see
//! [`Cluster::fence`]) collects what each client received, and the test compares it exactly:
//! a missing, wrong or extra delivery fails.

mod common;
mod process_cluster;
mod rabbit;

use std::collections::BTreeSet;

use process_cluster::{eventually, Cluster, SioClient, Tap};
use rabbit::BrokerLock;
use serde_json::{json, Value};

/// A node of the test clusters: run by the tests below in child processes.
#[test]
#[ignore = "a cluster node: the tests of this file start it in child processes"]
fn cluster_node() {
    process_cluster::node::main();
}

/// `item` for the clients at `who`, nothing for the others (of `n` clients).
fn only(n: usize, who: &[usize], item: &str) -> Vec<Vec<String>> {
    (0..n)
        .map(|i| {
            if who.contains(&i) {
                vec![item.to_owned()]
            } else {
                Vec::new()
            }
        })
        .collect()
}

/// Three nodes, six clients (two per node), the cluster formed.
async fn cluster6(what: &str) -> (Cluster, Vec<SioClient>) {
    let cluster = Cluster::start(what, 3).await;
    let clients = cluster.clients(6).await;
    cluster.wait_formed(&clients, 6).await;
    (cluster, clients)
}

async fn join(c: &SioClient, rooms: &[&str]) {
    c.ok(json!({"op": "join", "rooms": rooms})).await;
}

fn sids(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .expect("socket list")
        .iter()
        .map(|s| s["sid"].as_str().expect("sid").to_owned())
        .collect()
}

fn sids_of(clients: &[SioClient], who: &[usize]) -> BTreeSet<String> {
    who.iter().map(|&i| clients[i].sid.clone()).collect()
}

#[tokio::test]
async fn broadcast_from_any_node_reaches_every_client_once() {
    let _lock = BrokerLock::shared();
    let (cluster, mut c) = cluster6("broadcast").await;
    for via in 0..3 {
        let msg = format!("from node {via}");
        let got = cluster
            .emit_and_fence(via, &mut c, "hello", json!(msg))
            .await;
        assert_eq!(
            got,
            only(6, &[0, 1, 2, 3, 4, 5], &format!("hello [{msg:?}]")),
            "via node {via}"
        );
    }
    // socket.broadcast(): everyone but the sender.
    c[4].ok(json!({"op": "emit", "event": "others", "data": 4, "from_socket": true}))
        .await;
    let got = cluster.fence(4, &mut c).await;
    assert_eq!(got, only(6, &[0, 1, 2, 3, 5], "others [4]"));
}

#[tokio::test]
async fn rooms_except_and_volatile_select_exactly_their_clients() {
    let _lock = BrokerLock::shared();
    let (cluster, mut c) = cluster6("rooms").await;
    // red: one client per node; blue: c3, c4; green: c2, c5.
    for (i, rooms) in [
        &["red"][..],
        &["red"],
        &["red", "green"],
        &["blue"],
        &["blue"],
        &["green"],
    ]
    .iter()
    .enumerate()
    {
        join(&c[i], rooms).await;
    }
    let cases: [(Value, &[usize]); 7] = [
        (json!({"to": ["red"]}), &[0, 1, 2]),
        (json!({"to": ["blue"]}), &[3, 4]),
        // c2 is in red and green: once.
        (json!({"to": ["red", "green"]}), &[0, 1, 2, 5]),
        (json!({"to": ["red"], "except": ["green"]}), &[0, 1]),
        (json!({"except": ["blue"]}), &[0, 1, 2, 5]),
        (json!({"to": ["red"], "volatile": true}), &[0, 1, 2]),
        (json!({"to": ["nobody"]}), &[]),
    ];
    for (k, (opts, who)) in cases.iter().enumerate() {
        for via in 0..3 {
            let mut req = opts.clone();
            req["op"] = json!("emit");
            req["event"] = json!("ev");
            req["data"] = json!(k);
            c[via].ok(req).await;
            let mut got = cluster.fence(via, &mut c).await;
            let want = only(6, who, &format!("ev [{k}]"));
            if opts["volatile"] == json!(true) {
                // Engine.IO sends volatile packets outside the socket's ordered buffer: one may
                // arrive after the fence. A late copy to a non-member would show up in the
                // following fences.
                for &i in *who {
                    if got[i].is_empty() {
                        got[i].push(c[i].next().await.render());
                    }
                }
            }
            assert_eq!(got, want, "{opts} via node {via}");
        }
    }
}

#[tokio::test]
async fn local_operators_stay_on_their_node() {
    let _lock = BrokerLock::shared();
    let (cluster, mut c) = cluster6("local").await;
    join(&c[1], &["red"]).await;
    join(&c[2], &["red"]).await;
    let before = c[1].ok(json!({"op": "metrics"})).await;
    c[1].ok(json!({"op": "emit", "event": "here", "data": 1, "local": true}))
        .await;
    c[1].ok(json!({"op": "emit", "event": "red-here", "to": ["red"], "local": true}))
        .await;
    let local_sockets = c[1].ok(json!({"op": "fetch_sockets", "local": true})).await;
    assert_eq!(sids(&local_sockets), sids_of(&c, &[1, 4]));
    let local_rooms = c[1].ok(json!({"op": "rooms", "local": true})).await;
    assert_eq!(local_rooms, json!(["red"]));
    let after = c[1].ok(json!({"op": "metrics"})).await;
    // Nothing of it went to the broker (heartbeats and replies may have).
    assert_eq!(after["emits"], before["emits"]);
    let got = cluster.fence(1, &mut c).await;
    let mut want = only(6, &[1, 4], "here [1]");
    want[1].push("red-here [null]".to_owned());
    assert_eq!(got, want);
}

// duplicates: deliberate — each test sets up its own servers and clients in full, so that it
// reads as its scenario.
#[tokio::test]
async fn broadcast_with_ack_collects_every_client_and_ends_early() {
    let _lock = BrokerLock::shared();
    let (cluster, mut c) = cluster6("acks").await;
    join(&c[0], &["red"]).await;
    join(&c[4], &["red"]).await;
    join(&c[5], &["red"]).await;
    let all_labels: BTreeSet<(String, String)> = c
        .iter()
        .map(|x| (x.sid.clone(), json!(x.label).to_string()))
        .collect();
    for via in 0..3 {
        // A long ack timeout: the stream must end as soon as the six acks are in.
        let res = c[via]
            .ok(json!({"op": "emit_with_ack", "event": "ask", "data": via, "timeout_ms": 8000}))
            .await;
        let acks: BTreeSet<(String, String)> = res["acks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["sid"].as_str().unwrap().to_owned(),
                    a["value"].to_string(),
                )
            })
            .collect();
        assert_eq!(res["acks"].as_array().unwrap().len(), 6, "{res}");
        assert_eq!(acks, all_labels, "{res}");
        let elapsed = res["elapsed_ms"].as_u64().unwrap();
        assert!(elapsed < 3000, "the ack stream waited {elapsed} ms");
        let got = cluster.fence(via, &mut c).await;
        assert_eq!(got, only(6, &[0, 1, 2, 3, 4, 5], &format!("ask [{via}]")));
    }
    // To a room: only its members answer.
    let res = c[1]
        .ok(json!({"op": "emit_with_ack", "event": "ask-red", "to": ["red"], "timeout_ms": 8000}))
        .await;
    let got_sids: BTreeSet<String> = res["acks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["sid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(res["acks"].as_array().unwrap().len(), 3, "{res}");
    assert_eq!(got_sids, sids_of(&c, &[0, 4, 5]));
    let got = cluster.fence(1, &mut c).await;
    assert_eq!(got, only(6, &[0, 4, 5], "ask-red [null]"));
    // A client that does not answer (on another node) gets a timeout error, the others answer.
    c[5].set_auto_ack(false);
    let res = c[0]
        .ok(json!({"op": "emit_with_ack", "event": "ask", "data": "t", "timeout_ms": 300}))
        .await;
    let acks = res["acks"].as_array().unwrap();
    assert_eq!(acks.len(), 6, "{res}");
    for a in acks {
        if a["sid"] == json!(c[5].sid) {
            assert!(a["error"].as_str().is_some(), "{res}");
        } else {
            assert!(a["value"].as_str().is_some(), "{res}");
        }
    }
    let got = cluster.fence(0, &mut c).await;
    assert_eq!(got, only(6, &[0, 1, 2, 3, 4, 5], r#"ask ["t"]"#));
}

#[tokio::test]
async fn fetch_sockets_and_rooms_see_the_whole_cluster() {
    let _lock = BrokerLock::shared();
    let (_cluster, c) = cluster6("fetch").await;
    join(&c[0], &["red"]).await;
    join(&c[4], &["red", "blue"]).await;
    join(&c[5], &["green"]).await;
    let everyone = sids_of(&c, &[0, 1, 2, 3, 4, 5]);
    for via in 0..3 {
        let all = c[via].ok(json!({"op": "fetch_sockets"})).await;
        assert_eq!(sids(&all), everyone, "via node {via}");
        // Each socket's rooms, asked to its own node.
        for s in all.as_array().unwrap() {
            let i = c.iter().position(|x| x.sid == s["sid"]).unwrap();
            let want = match i {
                0 => &["red"][..],
                4 => &["blue", "red"],
                5 => &["green"],
                _ => &[],
            };
            assert_eq!(s["rooms"], json!(want), "rooms of c{i} via node {via}");
        }
        let red = c[via]
            .ok(json!({"op": "fetch_sockets", "to": ["red"]}))
            .await;
        assert_eq!(sids(&red), sids_of(&c, &[0, 4]), "red via node {via}");
        let none = c[via]
            .ok(json!({"op": "fetch_sockets", "to": ["nobody"]}))
            .await;
        assert_eq!(none, json!([]));
        let rooms = c[via].ok(json!({"op": "rooms"})).await;
        assert_eq!(
            rooms,
            json!(["blue", "green", "red"]),
            "rooms via node {via}"
        );
    }
}

#[tokio::test]
async fn remote_socket_emit_ack_join_leave_disconnect() {
    let _lock = BrokerLock::shared();
    let (cluster, mut c) = cluster6("remote").await;
    // Node 0 acts on c1 (node 1) and c5 (node 2).
    let on = |sid: &str, action: &str| json!({"op": "remote", "sid": sid, "action": action});
    let (s1, s5) = (c[1].sid.clone(), c[5].sid.clone());

    let mut req = on(&s1, "emit");
    req["event"] = json!("just-you");
    req["data"] = json!(1);
    c[0].ok(req).await;
    let got = cluster.fence(0, &mut c).await;
    assert_eq!(got, only(6, &[1], "just-you [1]"));
    // A socket of the acting node itself, found through fetch_sockets too.
    let mut req = on(&c[3].sid, "emit");
    req["event"] = json!("just-you");
    req["data"] = json!(3);
    c[0].ok(req).await;
    let got = cluster.fence(0, &mut c).await;
    assert_eq!(got, only(6, &[3], "just-you [3]"));

    let mut req = on(&s5, "emit_with_ack");
    req["event"] = json!("ask-you");
    let res = c[0].ok(req).await;
    assert_eq!(
        res["acks"],
        json!([{"sid": s5, "value": "c5"}]),
        "one ack, from c5"
    );
    let got = cluster.fence(0, &mut c).await;
    assert_eq!(got, only(6, &[5], "ask-you [null]"));

    let mut req = on(&s1, "join");
    req["rooms"] = json!(["vip", "vip2"]);
    c[0].ok(req).await;
    c[0].ok(json!({"op": "emit", "event": "vip", "to": ["vip"]}))
        .await;
    let got = cluster.fence(0, &mut c).await;
    assert_eq!(got, only(6, &[1], "vip [null]"));
    let vip = c[2].ok(json!({"op": "fetch_sockets", "to": ["vip"]})).await;
    assert_eq!(sids(&vip), sids_of(&c, &[1]));
    let rooms = c[2].ok(on(&s1, "rooms")).await;
    assert_eq!(rooms, json!(["vip", "vip2"]));

    let mut req = on(&s1, "leave");
    req["rooms"] = json!(["vip"]);
    c[0].ok(req).await;
    c[0].ok(json!({"op": "emit", "event": "vip", "to": ["vip"]}))
        .await;
    c[0].ok(json!({"op": "emit", "event": "vip2", "to": ["vip2"]}))
        .await;
    let got = cluster.fence(0, &mut c).await;
    assert_eq!(got, only(6, &[1], "vip2 [null]"));

    c[0].ok(on(&s5, "disconnect")).await;
    let got = cluster.fence(0, &mut c).await;
    let mut want = only(6, &[], "");
    want[5].push("disconnect".to_owned());
    assert_eq!(got, want);
    let all = c[1].ok(json!({"op": "fetch_sockets"})).await;
    assert_eq!(sids(&all), sids_of(&c, &[0, 1, 2, 3, 4]));
    // A socket that is gone cannot be acted on.
    assert!(c[0].call(on(&s5, "emit")).await.is_err());
}

#[tokio::test]
async fn room_wide_join_leave_and_disconnect() {
    let _lock = BrokerLock::shared();
    let (cluster, mut c) = cluster6("room-ops").await;
    join(&c[0], &["red"]).await;
    join(&c[1], &["red"]).await;
    join(&c[5], &["red"]).await;
    join(&c[3], &["blue"]).await;
    join(&c[4], &["blue"]).await;

    // Node 2 moves the whole red room into `team`, on every node.
    c[2].ok(json!({"op": "room_op", "to": ["red"], "action": "join", "rooms": ["team"]}))
        .await;
    c[2].ok(json!({"op": "emit", "event": "team", "to": ["team"]}))
        .await;
    let got = cluster.fence(2, &mut c).await;
    assert_eq!(got, only(6, &[0, 1, 5], "team [null]"));
    let team = c[0]
        .ok(json!({"op": "fetch_sockets", "to": ["team"]}))
        .await;
    assert_eq!(sids(&team), sids_of(&c, &[0, 1, 5]));

    c[2].ok(json!({"op": "room_op", "to": ["red"], "action": "leave", "rooms": ["team"]}))
        .await;
    c[2].ok(json!({"op": "emit", "event": "team", "to": ["team"]}))
        .await;
    c[2].ok(json!({"op": "emit", "event": "red", "to": ["red"]}))
        .await;
    let got = cluster.fence(2, &mut c).await;
    assert_eq!(got, only(6, &[0, 1, 5], "red [null]"));

    c[0].ok(json!({"op": "room_op", "to": ["blue"], "action": "disconnect"}))
        .await;
    let got = cluster.fence(0, &mut c).await;
    assert_eq!(got, only(6, &[3, 4], "disconnect"));
    let all = c[2].ok(json!({"op": "fetch_sockets"})).await;
    assert_eq!(sids(&all), sids_of(&c, &[0, 1, 2, 5]));
}

#[tokio::test]
async fn server_count_follows_the_nodes() {
    let _lock = BrokerLock::shared();
    let (mut cluster, c) = cluster6("server-count").await;
    for client in &c[..3] {
        assert_eq!(client.ok(json!({"op": "server_count"})).await, json!(3));
    }
    // Node 2 stops gracefully: its namespace says goodbye, the others forget it at once.
    drop(cluster.nodes.pop());
    for client in &c[..2] {
        eventually(
            &format!("node {} counts 2 servers", client.node),
            || async { client.ok(json!({"op": "server_count"})).await == json!(2) },
        )
        .await;
    }
    let all = c[0].ok(json!({"op": "fetch_sockets"})).await;
    assert_eq!(sids(&all), sids_of(&c, &[0, 1, 3, 4]));
    // Node 1 crashes: node 0 forgets it once its heartbeats stop (timeout 3 s).
    cluster.nodes[1].kill();
    eventually("node 0 counts 1 server", || async {
        c[0].ok(json!({"op": "server_count"})).await == json!(1)
    })
    .await;
    let all = c[0].ok(json!({"op": "fetch_sockets"})).await;
    assert_eq!(sids(&all), sids_of(&c, &[0, 3]));
}

#[tokio::test]
async fn one_publish_per_room_broadcast_across_three_nodes() {
    let _lock = BrokerLock::shared();
    let (cluster, mut c) = cluster6("publish-count").await;
    // One member of `red` on each node.
    join(&c[0], &["red"]).await;
    join(&c[4], &["red"]).await;
    join(&c[2], &["red"]).await;
    let mut tap = Tap::new(cluster.exchange()).await;
    let before: Vec<Value> =
        futures_util::future::join_all((0..3).map(|i| c[i].ok(json!({"op": "metrics"})))).await;
    c[0].ok(json!({"op": "emit", "event": "news", "to": ["red"], "data": 1}))
        .await;
    let after: Vec<Value> =
        futures_util::future::join_all((0..3).map(|i| c[i].ok(json!({"op": "metrics"})))).await;
    let got = cluster.fence(0, &mut c).await;
    assert_eq!(got, only(6, &[0, 2, 4], "news [1]"));
    // The adapter's counter: one emit published by node 0, none by the others.
    let delta: Vec<u64> = (0..3)
        .map(|i| after[i]["emits"].as_u64().unwrap() - before[i]["emits"].as_u64().unwrap())
        .collect();
    assert_eq!(delta, [1, 0, 0]);
    // The broker's view: exactly one `news` message went through the exchange.
    let through = tap.until_fence(cluster.last_fence()).await;
    let news: Vec<&Value> = through
        .iter()
        .filter(|m| m["method"] == "emit" && m["event"] == "news")
        .collect();
    assert_eq!(news.len(), 1, "{through:?}");
    assert_eq!(news[0]["room"], json!("red"));
    assert_eq!(news[0]["data"], json!([1]));
}
