//! The broker goes away under a running three-process cluster and comes back
//! (`rabbitmqctl stop_app` / `start_app`): local delivery never stops, cross-instance emits fail
//! at once with an error (and a counted publish error) instead of hanging, and cross-instance
//! delivery resumes without restarting any server.
//!
//! It stops the whole broker, so it holds the broker lock exclusively (every other test using
//! RabbitMQ holds it shared) and restarts the broker when dropped, even if the test fails.
//! It needs `rabbitmqctl` (it comes with RabbitMQ): without it the test fails, it is never
//! skipped. A machine without it leaves the test out by name
//! (`cargo test -- --skip broker_restart`).

mod common;
mod process_cluster;
mod rabbit;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::eventually_within;
use process_cluster::{eventually, Cluster, Received};
use rabbit::{rabbitmqctl, BrokerLock};
use serde_json::json;

/// How long a node may take to reconnect after the broker is back: its reconnect backoff's
/// cap (2 s by default; 250 ms while the port refuses), plus the usual wait, with room.
const RECONNECT_WAIT: Duration = Duration::from_secs(25);

/// A node of the test cluster: run by the test below in child processes.
#[test]
#[ignore = "a cluster node: the test of this file starts it in child processes"]
fn cluster_node() {
    process_cluster::node::main();
}

/// Starts the broker application again when dropped, if it was stopped.
struct BrokerRestart {
    stopped: bool,
}

impl BrokerRestart {
    fn stop(&mut self) {
        self.stopped = true;
        assert_eq!(
            rabbitmqctl(&["stop_app"]),
            Some(true),
            "rabbitmqctl stop_app"
        );
    }
    fn start(&mut self) {
        assert_eq!(
            rabbitmqctl(&["start_app"]),
            Some(true),
            "rabbitmqctl start_app"
        );
        self.stopped = false;
        assert_eq!(
            rabbitmqctl(&["await_startup"]),
            Some(true),
            "rabbitmqctl await_startup"
        );
    }
}

impl Drop for BrokerRestart {
    fn drop(&mut self) {
        if self.stopped {
            eprintln!("restarting the broker after a failure");
            let _ = rabbitmqctl(&["start_app"]);
            let _ = rabbitmqctl(&["await_startup"]);
        }
    }
}

/// Counts of the background traffic.
#[derive(Default)]
struct Traffic {
    ok: AtomicU64,
    failed: AtomicU64,
    slowest_ms: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_keeps_local_delivery_and_recovers_cross_instance_delivery() {
    let _lock = BrokerLock::exclusive();
    // rabbitmqctl comes with RabbitMQ, which these tests need anyway: no silent skip
    assert_eq!(
        rabbitmqctl(&["status"]),
        Some(true),
        "`rabbitmqctl status` failed: the broker restart test needs rabbitmqctl"
    );
    let started = Instant::now();
    let mut cluster = Cluster::start("restart", 3).await;
    // c0..c2: one per node, checked exactly; c3..c5: traffic sinks in room `load`.
    let mut c = cluster.clients(6).await;
    cluster.wait_formed(&c, 6).await;
    for sink in &c[3..] {
        sink.ok(json!({"op": "join", "rooms": ["load"]})).await;
    }

    // Background traffic: c3's node broadcasts to `load` every 20 ms, with or without broker.
    let traffic = Arc::new(Traffic::default());
    let stop_traffic = Arc::new(AtomicBool::new(false));
    let sinks = c.split_off(3);
    let loader = {
        let traffic = traffic.clone();
        let stop = stop_traffic.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let t = Instant::now();
                let res = sinks[0]
                    .call(json!({"op": "emit", "event": "load", "to": ["load"], "data": n}))
                    .await;
                let ms = t.elapsed().as_millis() as u64;
                traffic.slowest_ms.fetch_max(ms, Ordering::Relaxed);
                match res {
                    Ok(_) => traffic.ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => traffic.failed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sinks
        })
    };
    eventually("traffic flows", || async {
        traffic.ok.load(Ordering::Relaxed) >= 5
    })
    .await;
    for via in 0..3 {
        let got = cluster
            .emit_and_fence(via, &mut c, "before", json!(via))
            .await;
        assert_eq!(got, vec![vec![format!("before [{via}]")]; 3]);
    }

    let mut broker = BrokerRestart { stopped: false };
    tokio::task::block_in_place(|| broker.stop());
    let ok_when_stopped = traffic.ok.load(Ordering::Relaxed);
    for (node, client) in c.iter_mut().enumerate() {
        // Local delivery goes on.
        client
            .ok(json!({"op": "emit", "event": "local", "data": node, "local": true}))
            .await;
        assert_eq!(
            client.next().await,
            Received::Event("local".into(), vec![json!(node)])
        );
        // A cluster-wide emit reaches the local client, then fails visibly and fast.
        let before = client.ok(json!({"op": "metrics"})).await;
        let err = client
            .call(json!({"op": "emit", "event": "lost", "data": node}))
            .await
            .expect_err("a cross-instance emit without broker must fail");
        assert!(
            err["elapsed_ms"].as_u64().unwrap() < 3000,
            "the failing emit took too long: {err}"
        );
        assert_eq!(
            client.next().await,
            Received::Event("lost".into(), vec![json!(node)])
        );
        let after = client.ok(json!({"op": "metrics"})).await;
        assert!(
            after["publish_errors"].as_u64() > before["publish_errors"].as_u64(),
            "{before} -> {after}"
        );
        assert_eq!(after["connected"], json!(false));
    }
    eventually("the background traffic sees failures", || async {
        traffic.failed.load(Ordering::Relaxed) > 0
    })
    .await;

    tokio::task::block_in_place(|| broker.start());
    // Every node reconnects by itself and finds the others again through heartbeats. Its
    // reconnect backoff may have grown to its 10 s cap while the broker was down (longer on a
    // loaded machine), so the next attempt can come up to 10 s after the broker is back.
    for client in &c {
        eventually_within(
            &format!("node {} reconnects", client.node),
            RECONNECT_WAIT,
            || async {
                client.ok(json!({"op": "metrics"})).await["connected"] == json!(true)
                    && client.ok(json!({"op": "server_count"})).await == json!(3)
            },
        )
        .await;
    }
    eventually("traffic flows again", || async {
        traffic.ok.load(Ordering::Relaxed) >= ok_when_stopped + 5
    })
    .await;
    // Cross-instance delivery is back: exactly one copy each, nothing stale before it.
    for via in 0..3 {
        let got = cluster
            .emit_and_fence(via, &mut c, "after", json!(via))
            .await;
        assert_eq!(
            got,
            vec![vec![format!("after [{via}]")]; 3],
            "via node {via}"
        );
    }
    // The background load reaches the other nodes again.
    let mark = traffic.ok.load(Ordering::Relaxed) + traffic.failed.load(Ordering::Relaxed);
    eventually("more traffic", || async {
        traffic.ok.load(Ordering::Relaxed) + traffic.failed.load(Ordering::Relaxed) >= mark + 3
    })
    .await;
    stop_traffic.store(true, Ordering::Relaxed);
    let sinks = loader.await.expect("traffic task");
    let mut c4 = sinks.into_iter().nth(1).expect("c4");
    loop {
        if let Received::Event(name, args) = c4.next().await {
            if name == "load" && args[0].as_u64() > Some(mark) {
                break;
            }
        }
    }
    let slowest = traffic.slowest_ms.load(Ordering::Relaxed);
    assert!(slowest < 3000, "a traffic emit hung for {slowest} ms");
    // No server was restarted: the processes started at the beginning are still running.
    for node in &mut cluster.nodes {
        assert!(node.running());
    }
    eprintln!(
        "broker restart test: {} ok / {} failed emits, slowest {slowest} ms, {:?} in all",
        traffic.ok.load(Ordering::Relaxed),
        traffic.failed.load(Ordering::Relaxed),
        started.elapsed()
    );
}
