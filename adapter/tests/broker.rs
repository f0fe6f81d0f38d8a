//! The lapin driver against a real RabbitMQ (`AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`).

use std::time::Duration;

mod common;
mod rabbit;

use common::kill_connection;
use rabbit::{BrokerCleanup, BrokerLock};
use socketioxide_amqp::broker::{AmqpConfig, AmqpDriver, BrokerError, Driver};

fn config(exchange: &str) -> AmqpConfig {
    AmqpConfig::new(rabbit::uri())
        .with_exchange(exchange)
        .with_queue_expires(Some(Duration::from_secs(10)))
}

async fn recv(stream: &mut socketioxide_amqp::broker::MessageStream) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(10), stream.recv())
        .await
        .expect("no message within 10 s")
        .expect("stream closed")
}

#[tokio::test]
async fn fanout_reaches_every_queue_and_direct_reaches_one() {
    let _lock = BrokerLock::shared();
    let cleanup = BrokerCleanup::new(&rabbit::unique_exchange("fanout"));
    let exchange = cleanup.exchange();
    let a = AmqpDriver::connect(config(exchange)).await.unwrap();
    let b = AmqpDriver::connect(config(exchange)).await.unwrap();
    cleanup.queue(a.queue_name());
    cleanup.queue(b.queue_name());
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
        Err(BrokerError::Closed)
    ));
}

#[tokio::test]
async fn wrong_credentials_fail_at_connect() {
    // Refused before anything is declared.
    let mut cfg = config(&rabbit::unique_exchange("creds"));
    cfg.uri = "amqp://nobody:wrong@127.0.0.1:5672/%2f".to_owned();
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
    if !kill_connection(&queue) {
        eprintln!("rabbitmqctl not usable: skipping the reconnect test");
        return;
    }
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while a.publish(b"pong".to_vec()).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publish never recovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.is_connected());
}

#[tokio::test]
async fn publisher_declares_no_queue_and_close_deletes_the_own_queue() {
    let _lock = BrokerLock::shared();
    let cleanup = BrokerCleanup::new(&rabbit::unique_exchange("close"));
    let publisher = AmqpDriver::connect_publisher(config(cleanup.exchange()))
        .await
        .unwrap();
    // The name a publisher reports was never declared: a one-shot emit leaves no queue behind.
    assert!(!rabbit::queue_exists(publisher.queue_name()).await);
    let consumer = AmqpDriver::connect(config(cleanup.exchange()))
        .await
        .unwrap();
    cleanup.queue(consumer.queue_name());
    assert!(rabbit::queue_exists(consumer.queue_name()).await);
    consumer.close().await;
    assert!(!rabbit::queue_exists(consumer.queue_name()).await);
    publisher.publish(b"x".to_vec()).await.unwrap();
    publisher.close().await;
    assert!(matches!(
        publisher.publish(b"x".to_vec()).await,
        Err(BrokerError::Closed)
    ));
    // Its connection is closed once close() returns.
    assert!(!publisher.is_connected());
}
