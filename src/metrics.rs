//! Prometheus metrics: the node gauges vantage6 fills from
//! `node_metrics_update` (same names and labels as vantage6's `Metrics`
//! class) and this server's own counters, served on `/metrics`.

use std::sync::{atomic::AtomicU64, Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde_json::Value;

/// Labels of a node gauge: vantage6's `node_id`, `os`, `platform`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// The node's id.
    pub node_id: String,
    /// `os` from the payload, or `unknown`.
    pub os: String,
    /// `platform` from the payload, or `unknown`.
    pub platform: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GpuLabels {
    node_id: String,
    os: String,
    platform: String,
    gpu_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Node metrics with one value. `gpu_count` is one of them: vantage6 4.15.2
/// treats every name containing "gpu" as a per-GPU list and so rejects the
/// integer its own node sends; we export it.
const NODE_METRICS: [(&str, &str); 7] = [
    ("cpu_percent", "CPU usage percentage"),
    ("memory_percent", "Memory usage percentage"),
    (
        "num_algorithm_containers",
        "Number of running algorithm containers",
    ),
    ("cpu_count", "Number of CPUs"),
    ("memory_total", "Total memory"),
    ("memory_available", "Available memory"),
    ("gpu_count", "Number of GPUs"),
];

/// vantage6's GPU node metrics: lists, one value per GPU.
const GPU_METRICS: [(&str, &str); 4] = [
    ("gpu_load", "GPU load"),
    ("gpu_memory_used", "GPU memory used"),
    ("gpu_memory_free", "GPU memory free"),
    ("gpu_temperature", "GPU temperature"),
];

/// Why one entry of a `node_metrics_update` payload was not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    /// Not one of vantage6's metric names.
    #[error("metric '{0}' does not exist")]
    Unknown(String),
    /// A GPU metric that is not a list of numbers, or another metric that is not a number.
    #[error("metric '{0}' has a value of the wrong type")]
    WrongType(String),
}

/// All metrics of the process. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    node: Vec<(&'static str, Family<NodeLabels, FloatGauge>)>,
    gpu: Vec<(&'static str, Family<GpuLabels, FloatGauge>)>,
    connected: Gauge,
    events: Family<EventLabels, Counter>,
    unidentified: Family<ReasonLabels, Counter>,
    ignored: Family<ReasonLabels, Counter>,
    db_errors: Counter,
    identification_retries: Counter,
    identifications_waiting: Gauge,
    ping_recoveries: Counter,
    broadcast_closed: Counter,
    broadcast_full: Counter,
    lost_instance_clients: Counter,
    http_connections: Gauge,
    connections_refused: Counter,
    heap_trims: Counter,
    /// The `os`/`platform` label pairs seen per node (bounded, see
    /// [`MAX_LABEL_SETS_PER_NODE`]).
    node_label_sets: std::sync::Mutex<std::collections::HashMap<String, Vec<(String, String)>>>,
}

/// Most GPUs of one node with a series each; the values of further ones
/// are dropped (counted as `ignored_events{reason="metric_over_bound"}`).
pub const MAX_GPU_SERIES: usize = 16;
/// Longest `os` or `platform` label value; longer ones are cut.
pub const MAX_LABEL_CHARS: usize = 64;
/// Distinct `os`/`platform` pairs per node with series of their own; a
/// node that reports more gets `other` for both.
pub const MAX_LABEL_SETS_PER_NODE: usize = 4;

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        Self::with_collectors(Vec::new())
    }

    /// Creates every metric, plus collectors read at each scrape (e.g. the
    /// RabbitMQ adapter's counters).
    pub fn with_collectors(collectors: Vec<Box<dyn Collector>>) -> Self {
        let mut registry = Registry::default();
        for collector in collectors {
            registry.register_collector(collector);
        }
        let node = NODE_METRICS
            .iter()
            .map(|(name, help)| {
                let family = Family::<NodeLabels, FloatGauge>::default();
                registry.register(*name, *help, family.clone());
                (*name, family)
            })
            .collect();
        let gpu = GPU_METRICS
            .iter()
            .map(|(name, help)| {
                let family = Family::<GpuLabels, FloatGauge>::default();
                registry.register(*name, *help, family.clone());
                (*name, family)
            })
            .collect();
        let connected = Gauge::default();
        registry.register(
            "v6_socketio_connected_sockets",
            "Sockets connected to /tasks on this instance",
            connected.clone(),
        );
        // duplicates: deliberate — one registration per metric, each with its own name and help.
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "v6_socketio_events_received",
            "Events received from clients, by event name",
            events.clone(),
        );
        let unidentified = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "v6_socketio_unidentified_connections",
            "Connections that could not be identified, by reason",
            unidentified.clone(),
        );
        let ignored = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "v6_socketio_ignored_events",
            "Client events that were dropped, by reason",
            ignored.clone(),
        );
        // duplicates: deliberate — metric registrations, one per family
        let db_errors = Counter::default();
        registry.register(
            "v6_socketio_database_errors",
            "Database operations that failed",
            db_errors.clone(),
        );
        let identification_retries = Counter::default();
        registry.register(
            "v6_socketio_identification_retries",
            "Identification attempts that failed on the database and were retried",
            identification_retries.clone(),
        );
        let identifications_waiting = Gauge::default();
        registry.register(
            "v6_socketio_identifications_waiting",
            "Connected sockets whose identification waits for the database",
            identifications_waiting.clone(),
        );
        let ping_recoveries = Counter::default();
        registry.register(
            "v6_socketio_ping_recoveries",
            "5.x: pings of nodes the database had marked offline, answered with the connect sequence",
            ping_recoveries.clone(),
        );
        let broadcast_closed = Counter::default();
        registry.register(
            "v6_socketio_broadcast_closed_sockets",
            "Sockets that a broadcast of this instance found already closed (clients that had just left)",
            broadcast_closed.clone(),
        );
        let broadcast_full = Counter::default();
        registry.register(
            "v6_socketio_broadcast_full_buffers",
            "Sockets that missed a broadcast of this instance because their buffer (max_buffer_size) was full",
            broadcast_full.clone(),
        );
        let lost_instance_clients = Counter::default();
        registry.register(
            "v6_socketio_lost_instance_clients_released",
            "Nodes and users of a lost instance (no heartbeat) that this instance marked offline and announced as gone",
            lost_instance_clients.clone(),
        );
        let http_connections = Gauge::default();
        registry.register(
            "v6_socketio_http_connections",
            "TCP connections open on this instance's listener (upgraded websockets included)",
            http_connections.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "v6_socketio_connections_refused",
            "TCP connections refused with 503 because this instance held max_connections",
            connections_refused.clone(),
        );
        let heap_trims = Counter::default();
        registry.register(
            "v6_socketio_heap_trims",
            "Times freed heap memory was returned to the kernel (heap_trim_threshold)",
            heap_trims.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                node,
                gpu,
                connected,
                events,
                unidentified,
                ignored,
                db_errors,
                identification_retries,
                identifications_waiting,
                ping_recoveries,
                broadcast_closed,
                broadcast_full,
                lost_instance_clients,
                http_connections,
                connections_refused,
                heap_trims,
                node_label_sets: std::sync::Mutex::default(),
            }),
        }
    }

    /// Records one metric of a node, as vantage6's `Metrics.set_metric`.
    pub fn set_node_metric(
        &self,
        labels: &NodeLabels,
        name: &str,
        value: &Value,
    ) -> Result<(), MetricError> {
        let bounded = self.bounded_labels(labels);
        let labels = &bounded;
        if let Some((_, family)) = self.inner.node.iter().find(|(n, _)| *n == name) {
            let v = value
                .as_f64()
                .ok_or_else(|| MetricError::WrongType(name.to_owned()))?;
            family.get_or_create(labels).set(v);
            return Ok(());
        }
        let (_, family) = self
            .inner
            .gpu
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| MetricError::Unknown(name.to_owned()))?;
        let values = value
            .as_array()
            .and_then(|items| items.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
            .ok_or_else(|| MetricError::WrongType(name.to_owned()))?;
        if values.len() > MAX_GPU_SERIES {
            self.ignored_event("metric_over_bound");
        }
        for (gpu_id, v) in values.into_iter().take(MAX_GPU_SERIES).enumerate() {
            let labels = GpuLabels {
                node_id: labels.node_id.clone(),
                os: labels.os.clone(),
                platform: labels.platform.clone(),
                gpu_id: gpu_id.to_string(),
            };
            family.get_or_create(&labels).set(v);
        }
        Ok(())
    }

    /// `labels` within the bounds: values cut at [`MAX_LABEL_CHARS`], and
    /// `other` for a node's pairs beyond [`MAX_LABEL_SETS_PER_NODE`] (a
    /// node could otherwise create a series per message).
    fn bounded_labels(&self, labels: &NodeLabels) -> NodeLabels {
        let cut = |v: &str| match v.char_indices().nth(MAX_LABEL_CHARS) {
            None => v.to_owned(),
            Some((i, _)) => v[..i].to_owned(),
        };
        let pair = (cut(&labels.os), cut(&labels.platform));
        let mut sets = self
            .inner
            .node_label_sets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let known = sets.entry(labels.node_id.clone()).or_default();
        let (os, platform) = if known.contains(&pair) {
            pair
        } else if known.len() < MAX_LABEL_SETS_PER_NODE {
            known.push(pair.clone());
            pair
        } else {
            drop(sets);
            self.ignored_event("metric_over_bound");
            ("other".to_owned(), "other".to_owned())
        };
        NodeLabels {
            node_id: labels.node_id.clone(),
            os,
            platform,
        }
    }

    /// A socket connected to (`+1`) or left (`-1`) `/tasks`.
    pub fn socket_connected(&self, delta: i64) {
        self.inner.connected.inc_by(delta);
    }

    /// Sockets whose session is still running on this instance.
    pub fn connected_sockets(&self) -> i64 {
        self.inner.connected.get()
    }

    /// Counts a received client event.
    pub fn event_received(&self, event: &str) {
        self.inner
            .events
            .get_or_create(&EventLabels {
                event: event.to_owned(),
            })
            .inc();
    }

    /// Counts a connection that stayed unidentified.
    pub fn unidentified(&self, reason: &str) {
        self.inner
            .unidentified
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a dropped client event.
    pub fn ignored_event(&self, reason: &str) {
        self.inner
            .ignored
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a failed database operation.
    pub fn database_error(&self) {
        self.inner.db_errors.inc();
    }

    /// Counts an identification attempt that failed on the database and
    /// will be retried.
    pub fn identification_retry(&self) {
        self.inner.identification_retries.inc();
    }

    /// Counts the clients of a lost instance released by this one.
    pub fn lost_instance_clients_released(&self, n: u64) {
        self.inner.lost_instance_clients.inc_by(n);
    }

    /// Counts a 5.x ping that recovered a node's session.
    pub fn ping_recovery(&self) {
        self.inner.ping_recoveries.inc();
    }

    /// A socket's identification started (`+1`) or stopped (`-1`) waiting
    /// for the database.
    pub fn identification_waiting(&self, delta: i64) {
        self.inner.identifications_waiting.inc_by(delta);
    }

    /// Counts the sockets a broadcast could not reach: already closed, or
    /// with a full buffer.
    pub fn broadcast_missed(&self, closed: u64, full: u64) {
        self.inner.broadcast_closed.inc_by(closed);
        self.inner.broadcast_full.inc_by(full);
    }

    /// A TCP connection was accepted (`+1`) or closed (`-1`).
    pub fn http_connection(&self, delta: i64) {
        self.inner.http_connections.inc_by(delta);
    }

    /// TCP connections open on the listener now.
    pub fn http_connections(&self) -> i64 {
        self.inner.http_connections.get()
    }

    /// Counts a connection refused because the instance held `max_connections`.
    pub fn connection_refused(&self) {
        self.inner.connections_refused.inc();
    }

    /// Counts a return of freed heap memory to the kernel.
    pub fn heap_trimmed(&self) {
        self.inner.heap_trims.inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.inner.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn node_metric_series_are_bounded() {
        let m = Metrics::new();
        let gpus: Vec<Value> = (0..100_000).map(|i| Value::from(f64::from(i))).collect();
        for i in 0..3_000 {
            let labels = NodeLabels {
                node_id: "7".into(),
                os: format!("os-{i}-{}", "x".repeat(500)),
                platform: "linux".into(),
            };
            m.set_node_metric(&labels, "cpu_percent", &Value::from(1.5))
                .expect("a known metric");
            if i == 0 {
                m.set_node_metric(&labels, "gpu_load", &Value::Array(gpus.clone()))
                    .expect("a known metric");
            }
        }
        let text = m.render();
        assert!(text.len() < 20_000, "/metrics grew to {} bytes", text.len());
        let series = text
            .lines()
            .filter(|l| l.starts_with("cpu_percent{"))
            .count();
        assert_eq!(series, MAX_LABEL_SETS_PER_NODE + 1, "{text}");
        assert!(text.contains("os=\"other\""));
        assert!(!text.contains(&"x".repeat(MAX_LABEL_CHARS + 1)));
    }

    use super::*;
    use serde_json::json;

    fn labels() -> NodeLabels {
        NodeLabels {
            node_id: "7".into(),
            os: "Linux".into(),
            platform: "x86_64".into(),
        }
    }

    #[test]
    fn records_node_and_gpu_metrics() {
        let m = Metrics::new();
        m.set_node_metric(&labels(), "cpu_percent", &json!(12.5))
            .unwrap();
        m.set_node_metric(&labels(), "gpu_load", &json!([0.5, 0.75]))
            .unwrap();
        m.set_node_metric(&labels(), "gpu_count", &json!(2))
            .unwrap();
        let text = m.render();
        assert!(text.contains(r#"cpu_percent{node_id="7",os="Linux",platform="x86_64"} 12.5"#));
        assert!(
            text.contains(r#"gpu_load{node_id="7",os="Linux",platform="x86_64",gpu_id="1"} 0.75"#)
        );
    }

    #[test]
    fn counts_identification_retries_and_waiting_sockets() {
        let m = Metrics::new();
        m.identification_retry();
        m.identification_retry();
        m.identification_waiting(1);
        m.identification_waiting(1);
        m.identification_waiting(-1);
        m.ping_recovery();
        let text = m.render();
        assert!(
            text.contains("v6_socketio_ping_recoveries_total 1"),
            "{text}"
        );
        assert!(
            text.contains("v6_socketio_identification_retries_total 2"),
            "{text}"
        );
        assert!(
            text.contains("v6_socketio_identifications_waiting 1"),
            "{text}"
        );
    }

    #[test]
    fn rejects_unknown_and_mistyped() {
        let m = Metrics::new();
        assert_eq!(
            m.set_node_metric(&labels(), "nope", &json!(1)),
            Err(MetricError::Unknown("nope".into()))
        );
        assert_eq!(
            m.set_node_metric(&labels(), "gpu_load", &json!(1)),
            Err(MetricError::WrongType("gpu_load".into()))
        );
        assert_eq!(
            m.set_node_metric(&labels(), "cpu_count", &json!("x")),
            Err(MetricError::WrongType("cpu_count".into()))
        );
    }
}
