//! The lapin driver against a real RabbitMQ (`AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

mod common;
mod rabbit;

use common::{eventually_within, kill_connection};
use rabbit::{BrokerCleanup, BrokerLock};
use socketioxide_amqp::broker::{AmqpConfig, AmqpDriver, AmqpError, Driver};

fn config(exchange: &str) -> AmqpConfig {
    AmqpConfig::new(rabbit::uri().parse().unwrap())
        .with_exchange(exchange)
        .with_queue_expires(Some(Duration::from_secs(10)))
}

async fn recv(stream: &mut socketioxide_amqp::broker::MessageStream) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(10), stream.recv())
        .await
        .expect("no message within 10 s")
        .expect("stream closed")
}

/// A consuming driver on the cleanup's exchange, its queue registered for deletion.
async fn consumer(cleanup: &BrokerCleanup) -> AmqpDriver {
    let driver = AmqpDriver::connect(config(cleanup.exchange()))
        .await
        .unwrap();
    cleanup.queue(driver.queue_name());
    driver
}

#[tokio::test]
async fn fanout_reaches_every_queue_and_direct_reaches_one() {
    let _lock = BrokerLock::shared();
    let cleanup = BrokerCleanup::new(&rabbit::unique_exchange("fanout"));
    let exchange = cleanup.exchange();
    let a = consumer(&cleanup).await;
    let b = consumer(&cleanup).await;
    let publisher = AmqpDriver::connect_publisher(config(exchange))
        .await
        .unwrap();
    assert!(publisher.subscribe().is_none());
    let mut sa = a.subscribe().unwrap();
    let mut sb = b.subscribe().unwrap();
    assert!(a.queue_name().starts_with("socketioxide-amqp."));

    publisher.publish(b"{\"m\":1}".to_vec()).await.unwrap();
    assert_eq!(recv(&mut sa).await, b"{\"m\":1}");
    assert_eq!(recv(&mut sb).await, b"{\"m\":1}");

    a.send_to(b.queue_name(), b"direct".to_vec()).await.unwrap();
    a.publish(b"after".to_vec()).await.unwrap();
    // `a` sees only the fanout message, `b` the direct one first.
    assert_eq!(recv(&mut sa).await, b"after");
    assert_eq!(recv(&mut sb).await, b"direct");
    assert_eq!(recv(&mut sb).await, b"after");

    a.close().await;
    assert!(matches!(
        a.publish(b"x".to_vec()).await,
        Err(AmqpError::Closed)
    ));
}

#[tokio::test]
async fn wrong_credentials_fail_at_connect() {
    // Refused before anything is declared.
    let mut cfg = config(&rabbit::unique_exchange("creds"));
    cfg.uris = "amqp://nobody:wrong@127.0.0.1:5672/%2f".parse().unwrap();
    assert!(AmqpDriver::connect(cfg).await.is_err());
}

#[tokio::test]
async fn reconnects_and_redeclares_after_connection_loss() {
    let _lock = BrokerLock::shared();
    let cleanup = BrokerCleanup::new(&rabbit::unique_exchange("reconnect"));
    let cfg = config(cleanup.exchange())
        .with_reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500));
    let a = AmqpDriver::connect(cfg.clone()).await.unwrap();
    let publisher = AmqpDriver::connect_publisher(cfg).await.unwrap();
    cleanup.queue(a.queue_name());
    let mut sa = a.subscribe().unwrap();
    let queue = a.queue_name().to_owned();
    // rabbitmqctl comes with RabbitMQ, which these tests need anyway: no silent skip
    assert!(
        kill_connection(&queue),
        "could not close the driver's broker connection with rabbitmqctl (not usable, or no such connection)"
    );
    // Publish until the re-established consumer sees a message (the old queue survives the
    // blip thanks to x-expires, so nothing published after the reconnect is lost).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        publisher.publish(b"ping".to_vec()).await.unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sa.recv()).await {
            assert_eq!(m, b"ping");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never reconnected");
    }
    // Publishing from the reconnected driver works too.
    eventually_within("publish recovered", Duration::from_secs(20), || async {
        a.publish(b"pong".to_vec()).await.is_ok()
    })
    .await;
    assert!(a.is_connected());
}

// duplicates: deliberate — each test sets up its own servers and clients in full, so that it
// reads as its scenario.
#[tokio::test]
async fn publisher_declares_no_queue_and_close_deletes_the_own_queue() {
    let _lock = BrokerLock::shared();
    let cleanup = BrokerCleanup::new(&rabbit::unique_exchange("close"));
    let publisher = AmqpDriver::connect_publisher(config(cleanup.exchange()))
        .await
        .unwrap();
    // The name a publisher reports was never declared: a one-shot emit leaves no queue behind.
    assert!(!rabbit::queue_exists(publisher.queue_name()).await);
    let own = consumer(&cleanup).await;
    assert!(rabbit::queue_exists(own.queue_name()).await);
    own.close().await;
    assert!(!rabbit::queue_exists(own.queue_name()).await);
    publisher.publish(b"x".to_vec()).await.unwrap();
    publisher.close().await;
    assert!(matches!(
        publisher.publish(b"x".to_vec()).await,
        Err(AmqpError::Closed)
    ));
    // Its connection is closed once close() returns.
    assert!(!publisher.is_connected());
}

#[tokio::test]
async fn a_peer_queue_is_deleted_only_when_nothing_consumes_from_it() {
    let _lock = BrokerLock::shared();
    let cleanup = BrokerCleanup::new(&rabbit::unique_exchange("delete"));
    let exchange = cleanup.exchange();
    let a = consumer(&cleanup).await;
    let b = consumer(&cleanup).await;
    let mut sb = b.subscribe().unwrap();
    // b consumes from its queue: kept, and the refusal (406, which closes the channel it was
    // asked on) leaves a's publishing channel open.
    assert!(!a.delete_queue(b.queue_name()).await.unwrap());
    assert!(rabbit::queue_exists(b.queue_name()).await);
    a.publish(b"after".to_vec()).await.unwrap();
    assert_eq!(recv(&mut sb).await, b"after");

    // A queue whose consumer is gone (its server was killed): deleted.
    let unused = format!("{exchange}.unused");
    cleanup.queue(&unused);
    let (conn, channel) = rabbit::open_channel().await;
    channel
        .queue_declare(
            unused.as_str().into(),
            lapin::options::QueueDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    conn.close(200, "bye".into()).await.unwrap();
    assert!(rabbit::queue_exists(&unused).await);
    assert!(a.delete_queue(&unused).await.unwrap());
    assert!(!rabbit::queue_exists(&unused).await);
    // One that does not exist (deleted meanwhile): deleted too.
    assert!(a.delete_queue(&unused).await.unwrap());
    a.publish(b"still".to_vec()).await.unwrap();
    assert_eq!(recv(&mut sb).await, b"still");
    a.close().await;
    b.close().await;
}

/// A TCP proxy to the broker whose existing connections can be frozen: bytes are read and
/// dropped in both directions, sockets stay open, like a connection that died silently
/// (no RST). New connections pass through.
struct FreezingProxy {
    port: u16,
    frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezingProxy {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let flags = frozen.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let flag = Arc::new(AtomicBool::new(false));
                flags.lock().unwrap().push(flag.clone());
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, flag.clone()));
                tokio::spawn(pump(sr, cw, flag));
            }
        });
        Self { port, frozen, task }
    }

    fn freeze_existing(&self) {
        for flag in self.frozen.lock().unwrap().iter() {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies until EOF (then closes the other side), dropping the bytes once frozen.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if !frozen.load(Ordering::Relaxed) && to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[tokio::test]
async fn a_publish_timeout_replaces_a_silently_dead_connection() {
    let _lock = BrokerLock::shared();
    let cleanup = BrokerCleanup::new(&rabbit::unique_exchange("silent"));
    // amqp://user:pass@HOST:PORT/vhost -> the same through the proxy.
    let uri = rabbit::uri();
    let (head, rest) = uri.split_once('@').expect("credentials in AMQP_URL");
    let (upstream, vhost) = rest.split_once('/').unwrap_or((rest, ""));
    let proxy = FreezingProxy::start(upstream.to_owned()).await;
    let cfg = AmqpConfig::new(
        format!("{head}@127.0.0.1:{}/{vhost}", proxy.port)
            .parse()
            .unwrap(),
    )
    .with_exchange(cleanup.exchange())
    .with_queue_expires(Some(Duration::from_secs(10)))
    .with_publish_timeout(Duration::from_millis(300))
    .with_reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200));
    let a = AmqpDriver::connect_publisher(cfg).await.unwrap();
    // A direct consumer on the same exchange sees what `a` manages to publish.
    let b = consumer(&cleanup).await;
    let mut sb = b.subscribe().unwrap();
    a.publish(b"before".to_vec()).await.unwrap();
    assert_eq!(recv(&mut sb).await, b"before");

    proxy.freeze_existing();
    assert!(matches!(
        a.publish(b"lost".to_vec()).await,
        Err(AmqpError::Timeout)
    ));
    // The frozen connection would look alive until AMQP heartbeats notice (a minute or more):
    // the timeout makes the driver drop it and connect again.
    eventually_within(
        "reconnected after the publish timeout",
        Duration::from_secs(10),
        || async { a.publish(b"after".to_vec()).await.is_ok() },
    )
    .await;
    assert_eq!(recv(&mut sb).await, b"after");
    b.close().await;
}

/// A queue's flags as `rabbitmqctl list_queues` reports them.
#[derive(Debug, PartialEq)]
struct QueueFlags {
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    arguments: serde_json::Value,
}

fn listed_queue(name: &str) -> Option<QueueFlags> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--formatter", "json", "-p", "/"])
        .args(["name", "durable", "exclusive", "auto_delete", "arguments"])
        .output()
        .expect("rabbitmqctl is needed for this test");
    assert!(out.status.success(), "rabbitmqctl list_queues failed");
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON list");
    let q = list.into_iter().find(|q| q["name"] == name)?;
    Some(QueueFlags {
        durable: q["durable"] == true,
        exclusive: q["exclusive"] == true,
        auto_delete: q["auto_delete"] == true,
        arguments: arguments_by_name(&q["arguments"]),
    })
}

/// `{"name": value}` whether rabbitmqctl lists arguments as an object or, as 3.x does, as
/// `[name, type, value]` triples.
fn arguments_by_name(listed: &serde_json::Value) -> serde_json::Value {
    match listed {
        serde_json::Value::Array(triples) => triples
            .iter()
            .filter_map(|t| Some((t.get(0)?.as_str()?.to_owned(), t.get(2)?.clone())))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        other => other.clone(),
    }
}

/// RabbitMQ 4.3 refuses, by default, a classic queue that is neither durable nor exclusive
/// (deprecated feature `transient_nonexcl_queues`, error 541).
fn permitted_by_rabbitmq_4_3_defaults(q: &QueueFlags) -> bool {
    q.durable || q.exclusive
}

#[tokio::test]
async fn own_queue_flags_are_a_combination_rabbitmq_4_3_accepts() {
    let _lock = BrokerLock::shared();
    let cleanup = BrokerCleanup::new(&rabbit::unique_exchange("flags"));
    let driver = AmqpDriver::connect(config(cleanup.exchange()))
        .await
        .unwrap();
    let name = driver.queue_name().to_owned();
    cleanup.queue(name.clone());
    let flags = listed_queue(&name).expect("the own queue is listed");
    println!("own queue {name}: {flags:?}");
    assert_eq!(
        flags,
        QueueFlags {
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: serde_json::json!({"x-expires": 10_000}),
        }
    );
    assert!(permitted_by_rabbitmq_4_3_defaults(&flags));
    // What the old declaration was, and what 4.3 refuses.
    assert!(!permitted_by_rabbitmq_4_3_defaults(&QueueFlags {
        durable: false,
        ..flags
    }));
    driver.close().await;
    assert_eq!(listed_queue(&name), None, "a graceful close deletes it");
}

/// `messages_unacknowledged` of a queue, as `rabbitmqctl list_queues` reports it.
fn unacknowledged(name: &str) -> Option<u64> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--formatter", "json", "-p", "/"])
        .args(["name", "messages_unacknowledged"])
        .output()
        .expect("rabbitmqctl is needed for this test");
    assert!(out.status.success(), "rabbitmqctl list_queues failed");
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON list");
    list.into_iter()
        .find(|q| q["name"] == name)?
        .get("messages_unacknowledged")?
        .as_u64()
}

/// Deliveries are acknowledged several at a time: a burst larger than both the prefetch and the
/// acknowledgement batch arrives whole and in order (the consumer never waits for an
/// acknowledgement it did not send), and once it is handled nothing stays unacknowledged (which
/// would be delivered again after a reconnection).
#[tokio::test]
async fn bursts_are_acknowledged_in_batches_and_completely() {
    let _lock = BrokerLock::shared();
    let cleanup = BrokerCleanup::new(&rabbit::unique_exchange("ackbatch"));
    for prefetch in [4, 256] {
        let cfg = config(cleanup.exchange()).with_prefetch(prefetch);
        let a = AmqpDriver::connect(cfg.clone()).await.unwrap();
        cleanup.queue(a.queue_name());
        let publisher = AmqpDriver::connect_publisher(cfg).await.unwrap();
        let mut sa = a.subscribe().unwrap();
        let sent: Vec<Vec<u8>> = (0..300)
            .map(|i| format!("{{\"n\":{i}}}").into_bytes())
            .collect();
        // All published before any is read: they pile up in the consumer as a burst.
        for m in &sent {
            publisher.publish(m.clone()).await.unwrap();
        }
        for m in &sent {
            assert_eq!(&recv(&mut sa).await, m, "prefetch {prefetch}");
        }
        eventually_within(
            "every delivery acknowledged",
            Duration::from_secs(20),
            || async { unacknowledged(a.queue_name()) == Some(0) },
        )
        .await;
        a.close().await;
        publisher.close().await;
    }
}
