//! The adapter against a real RabbitMQ (`AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`): several `SocketIo` instances in one process, each
//! with its own connection and queue, plus raw AMQP peers playing python-socketio.

mod common;
mod rabbit;

use std::time::Duration;

use common::{eventually, server, wait_for_cluster, Client, Io};
use futures_util::StreamExt;
use lapin::{
    options::{BasicPublishOptions, ExchangeDeclareOptions, QueueDeclareOptions},
    types::FieldTable,
    BasicProperties, Connection, ExchangeKind,
};
use serde_json::json;
use socketioxide_amqp::{
    broker::Driver as _,
    wire::{self, Message},
    AmqpConfig, AmqpDriver, AmqpEmitter,
};

use rabbit::{uri, BrokerCleanup, BrokerLock};

/// A server on `cleanup`'s exchange, whose queue is deleted with it.
async fn amqp_server(
    cleanup: &BrokerCleanup,
) -> (
    Io<AmqpDriver>,
    socketioxide_amqp::AmqpAdapterCtr<AmqpDriver>,
) {
    let config = AmqpConfig::new(uri().parse().unwrap())
        .with_exchange(cleanup.exchange())
        .with_queue_expires(Some(Duration::from_secs(10)));
    let driver = AmqpDriver::connect(config).await.expect("connect");
    cleanup.queue(driver.queue_name());
    server(driver).await
}

/// A raw AMQP peer on the exchange, declared exactly like python-socketio's KombuManager.
struct PythonPeer {
    channel: lapin::Channel,
    consumer: lapin::Consumer,
    exchange: String,
    queue: String,
    _conn: Connection,
}

impl PythonPeer {
    async fn new(exchange: &str) -> Self {
        let (conn, channel) = rabbit::open_channel().await;
        // duplicates: deliberate — lapin declarations (here the exchange, in the tap a queue).
        // Kombu's declaration: fanout, durable=False, auto_delete=False (no 406 if ours differs).
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: false,
                    auto_delete: false,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("python-style exchange declaration is compatible");
        let queue = format!("python-socketio.{}", uuid::Uuid::new_v4());
        let mut args = FieldTable::default();
        args.insert(
            "x-expires".into(),
            lapin::types::AMQPValue::LongInt(300_000),
        );
        channel
            .queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), args)
            .await
            .unwrap();
        let consumer = rabbit::bind_and_consume(&channel, &queue, exchange, "")
            .await
            .unwrap();
        Self {
            channel,
            consumer,
            exchange: exchange.to_owned(),
            queue,
            _conn: conn,
        }
    }

    /// Publishes like kombu: text/plain, utf-8, delivery_mode 2.
    async fn publish(&self, body: serde_json::Value) {
        let props = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_content_encoding("utf-8".into())
            .with_delivery_mode(2);
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                body.to_string().as_bytes(),
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// The next message matching `pred`, with its properties.
    async fn next_matching(
        &mut self,
        pred: impl Fn(&Message) -> bool,
    ) -> (Message, BasicProperties) {
        let deadline = tokio::time::Instant::now() + common::WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let delivery = tokio::time::timeout(left, self.consumer.next())
                .await
                .expect("no matching message in time")
                .expect("consumer ended")
                .expect("delivery");
            if let Ok(msg) = wire::decode(&delivery.data) {
                if pred(&msg) {
                    return (msg, delivery.properties);
                }
            }
        }
    }
}

// duplicates: deliberate — each test sets up its own servers and clients in full, so that it
// reads as its scenario.
#[tokio::test]
async fn three_servers_share_broadcasts_sockets_rooms_and_acks() {
    let _lock = BrokerLock::shared();
    let cleanup = BrokerCleanup::new(&rabbit::unique_exchange("cluster"));
    let (io1, ctr1) = amqp_server(&cleanup).await;
    let (io2, _) = amqp_server(&cleanup).await;
    let (io3, _) = amqp_server(&cleanup).await;
    let mut a = Client::connect(&io1).await;
    let mut b = Client::connect(&io2).await;
    let mut c = Client::connect(&io3).await;
    wait_for_cluster(&[&io1, &io2, &io3], 3).await;

    io1.emit("hello", &"all").await.unwrap();
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(client.next().await, r#"2["hello","all"]"#);
    }

    io2.clone().join("everyone").await.unwrap();
    eventually("join reached every server", || async {
        io3.within("everyone").fetch_sockets().await.unwrap().len() == 3
    })
    .await;
    assert_eq!(io1.rooms().await.unwrap(), ["everyone"]);

    let stream = io3.emit_with_ack::<_, String>("q", &()).await.unwrap();
    for client in [&mut a, &mut b, &mut c] {
        let frame = client.next().await;
        client.ack(&frame, &format!(r#"["{}"]"#, client.sid)).await;
    }
    let acks: Vec<_> = stream.collect().await;
    assert_eq!(acks.len(), 3);

    let remote_b = io1
        .fetch_sockets()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.data().id == b.sid)
        .unwrap();
    remote_b.emit("just-b", &1).await.unwrap();
    assert_eq!(b.next().await, r#"2["just-b",1]"#);
    remote_b.disconnect().await.unwrap();
    b.expect_disconnect().await;
    assert_eq!(ctr1.metrics().invalid, 0);
    assert_eq!(ctr1.metrics().publish_errors, 0);
}

#[tokio::test]
async fn python_peer_interop_over_rabbitmq() {
    let _lock = BrokerLock::shared();
    let cleanup = BrokerCleanup::new(&rabbit::unique_exchange("python"));
    let exchange = cleanup.exchange();
    let mut py = PythonPeer::new(exchange).await;
    cleanup.queue(py.queue.clone());
    let (io, ctr) = amqp_server(&cleanup).await;
    let mut a = Client::connect(&io).await;
    io.local()
        .sockets()
        .into_iter()
        .for_each(|s| s.join("room1"));

    // Rust broadcast → a python-readable emit with kombu's properties.
    io.to("room1")
        .emit("from-rust", &json!({"x": 1}))
        .await
        .unwrap();
    assert_eq!(a.next().await, r#"2["from-rust",{"x":1}]"#);
    let (msg, props) = py
        .next_matching(|m| matches!(m, Message::Emit(e) if e.event == "from-rust"))
        .await;
    let Message::Emit(e) = msg else {
        unreachable!()
    };
    assert_eq!(e.data, json!([{"x": 1}]));
    assert_eq!(e.room, wire::RoomList::One("room1".into()));
    assert_eq!(e.host_id, ctr.host_id());
    assert_eq!(
        props
            .content_type()
            .as_ref()
            .map(lapin::types::ShortString::as_str),
        Some("text/plain")
    );
    assert_eq!(
        props
            .content_encoding()
            .as_ref()
            .map(lapin::types::ShortString::as_str),
        Some("utf-8")
    );
    assert_eq!(*props.delivery_mode(), Some(2));

    // Python emit → local sockets.
    py.publish(
        json!({"method": "emit", "event": "my event", "data": [{"a": 1}], "binary": false,
        "namespace": "/", "room": "room1", "skip_sid": null, "callback": null,
        "host_id": "29359f22c4e0480e8f2718beb2381ea7"}),
    )
    .await;
    assert_eq!(a.next().await, r#"2["my event",{"a":1}]"#);

    // Python emit with a callback → a python callback addressed to the python host.
    let py_host = "84aef12e5c124534bf0e9c1587f02701";
    py.publish(
        json!({"method": "emit", "event": "ev", "data": [{"x": 1}], "binary": false,
        "namespace": "/", "room": a.sid.to_string(), "skip_sid": null,
        "callback": [a.sid.to_string(), "/", 1], "host_id": py_host}),
    )
    .await;
    let frame = a.next().await;
    a.ack(&frame, r#"["ok",{"n":2}]"#).await;
    let (msg, _) = py
        .next_matching(|m| matches!(m, Message::Callback(_)))
        .await;
    let Message::Callback(cb) = msg else {
        unreachable!()
    };
    assert_eq!(
        (cb.host_id.as_str(), cb.id, cb.args),
        (py_host, 1, json!(["ok", {"n": 2}]))
    );

    // The emitter publishes what python would.
    let emitter =
        AmqpEmitter::connect(AmqpConfig::new(uri().parse().unwrap()).with_exchange(exchange))
            .await
            .unwrap();
    emitter
        .to("room1")
        .emit("from-emitter", &"hi")
        .await
        .unwrap();
    assert_eq!(a.next().await, r#"2["from-emitter","hi"]"#);
    let (msg, _) = py
        .next_matching(|m| matches!(m, Message::Emit(e) if e.event == "from-emitter"))
        .await;
    assert_eq!(msg.host_id(), emitter.host_id());
    emitter.close().await;
    assert!(emitter.emit("closed", &()).await.is_err());
    assert_eq!(emitter.publish_errors(), 1);

    // Junk is dropped and counted.
    py.channel
        .basic_publish(
            exchange.into(),
            "".into(),
            BasicPublishOptions::default(),
            b"\x00junk",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    py.publish(
        json!({"method": "emit", "event": "after", "data": [], "namespace": "/", "room": null,
        "skip_sid": null, "callback": null, "host_id": py_host}),
    )
    .await;
    assert_eq!(a.next().await, r#"2["after"]"#);
    assert_eq!(ctr.metrics().invalid, 1);
}

#[tokio::test]
async fn cluster_recovers_after_a_connection_loss() {
    let _lock = BrokerLock::shared();
    let cleanup = BrokerCleanup::new(&rabbit::unique_exchange("recover"));
    let (io1, ctr1) = amqp_server(&cleanup).await;
    let (io2, _) = amqp_server(&cleanup).await;
    let mut a = Client::connect(&io1).await;
    let mut b = Client::connect(&io2).await;
    wait_for_cluster(&[&io1, &io2], 2).await;
    // rabbitmqctl comes with RabbitMQ, which these tests need anyway: no silent skip
    assert!(
        common::kill_connection(ctr1.driver().queue_name()),
        "could not close the instance's broker connection with rabbitmqctl (not usable, or no such connection)"
    );
    // Local delivery never stops; remote delivery comes back once reconnected.
    let mut n = 0;
    loop {
        n += 1;
        let _ = io1.emit("from-1", &n).await;
        assert_eq!(a.next().await, format!(r#"2["from-1",{n}]"#));
        if let Ok(frame) = tokio::time::timeout(Duration::from_millis(200), b.next()).await {
            assert!(frame.starts_with(r#"2["from-1","#), "{frame}");
            break;
        }
        assert!(n < 100, "never recovered");
    }
    io2.emit("from-2", &()).await.unwrap();
    // Frames io1 published while reconnecting may still be queued for b; a gets from-2 next.
    assert_eq!(a.next().await, r#"2["from-2",null]"#);
    assert!(ctr1.metrics().published > 0);
}
