//! The RabbitMQ adapter's counters on `/metrics`, read from the adapter at
//! each scrape.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};
use socketioxide_amqp::{AmqpAdapterCtr, AmqpDriver};

/// A Prometheus collector over an [`AmqpAdapterCtr`].
#[derive(Debug)]
pub struct BrokerCollector(pub AmqpAdapterCtr<AmqpDriver>);

impl Collector for BrokerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = self.0.metrics();
        let counters = [
            (
                "v6_socketio_broker_published",
                "Messages published to RabbitMQ",
                m.published,
            ),
            (
                "v6_socketio_broker_publish_errors",
                "Publishes to RabbitMQ that failed",
                m.publish_errors,
            ),
            (
                "v6_socketio_broker_received",
                "Messages received from RabbitMQ",
                m.received,
            ),
            (
                "v6_socketio_broker_invalid",
                "Messages from RabbitMQ dropped as invalid",
                m.invalid,
            ),
            (
                "v6_socketio_broker_ignored",
                "Messages from RabbitMQ ignored (own messages but heartbeats, callbacks for other hosts)",
                m.ignored,
            ),
            (
                "v6_socketio_broker_unroutable",
                "Messages from RabbitMQ for a namespace this instance does not serve",
                m.unroutable,
            ),
            (
                "v6_socketio_broker_delivery_closed_sockets",
                "Sockets of this instance that a broadcast from RabbitMQ found already closed",
                m.delivery_closed,
            ),
            (
                "v6_socketio_broker_delivery_full_buffers",
                "Sockets of this instance that missed a broadcast from RabbitMQ because their buffer was full",
                m.delivery_full,
            ),
            (
                "v6_socketio_broker_peers_lost",
                "Peer instances taken for dead: no heartbeat within the timeout while our own broker connection was up",
                m.peers_lost,
            ),
            (
                "v6_socketio_broker_peer_queues_deleted",
                "Lost peer instances' queues deleted by this instance",
                m.peer_queues_deleted,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        // One series per event name that lost publishes (the names are the server's own events).
        let lost = self.0.lost_events();
        let mut family = encoder.encode_descriptor(
            "v6_socketio_broker_publish_lost",
            "Emits that could not be published to RabbitMQ (broker down, refused or not \
             confirmed in time): the other instances' clients missed them; per event name",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (event, n) in &lost {
            let labels = [("event", event.as_str())];
            ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
        }
        let other = ConstCounter::new(self.0.lost_other());
        other.encode(encoder.encode_descriptor(
            "v6_socketio_broker_publish_lost_other",
            "Heartbeats, requests and replies that could not be published to RabbitMQ",
            None,
            other.metric_type(),
        )?)?;
        let up = ConstGauge::new(i64::from(self.0.driver().is_connected()));
        up.encode(encoder.encode_descriptor(
            "v6_socketio_broker_connected",
            "1 while the RabbitMQ connection is up",
            None,
            up.metric_type(),
        )?)
    }
}
