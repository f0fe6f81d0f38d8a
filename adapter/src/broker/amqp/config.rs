//! [`AmqpConfig`]: the RabbitMQ connection and topology settings.

use std::time::Duration;

use crate::BrokerUris;

/// Default of [`AmqpConfig::reconnect_max`].
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(2);

/// Configuration of the RabbitMQ connection and topology.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AmqpConfig {
    /// The broker: one URI or kombu's fail-over list of several (the nodes of a cluster), read
    /// with kombu's rules (see [`BrokerUris`]). The driver connects to the first that answers at
    /// start-up and, after losing a connection, tries the others round-robin from the next one.
    pub uris: BrokerUris,
    /// The fanout exchange shared with the other instances (default `flask-socketio`, the
    /// Flask-SocketIO default; plain python-socketio uses `socketio`).
    pub exchange: String,
    /// The name of the own queue (default `socketioxide-amqp.<uuid4>`).
    pub queue_name: Option<String>,
    /// The `x-expires` argument of the own queue (default 5 minutes; `None` for none).
    pub queue_expires: Option<Duration>,
    /// How many unacknowledged deliveries the broker may push at once (default 256).
    pub prefetch: u16,
    /// Wait for the broker to confirm each publish (default true). A refused publish is then an
    /// error; without confirms only a dead connection is.
    pub publisher_confirms: bool,
    /// First delay of the reconnect backoff (default 100 ms).
    pub reconnect_min: Duration,
    /// Largest delay of the reconnect backoff (default 2 s): the longest a reconnect waits
    /// after the broker is back, on top of the connection's own set-up.
    pub reconnect_max: Duration,
    /// Capacity of the channel between the consumer and the adapter (default 1024).
    pub buffer: usize,
    /// How long a publish may take, confirm included, before it fails with
    /// [`AmqpError::Timeout`](super::AmqpError::Timeout) (default 5 s). Bounds the wait on a silently dead connection.
    pub publish_timeout: Duration,
    /// How long opening a connection (TCP, AMQP handshake, declarations) may take before the
    /// attempt fails with [`AmqpError::ConnectTimeout`](super::AmqpError::ConnectTimeout) (default 10 s, or the first URI's
    /// `connect_timeout` option; a URI's own option applies to that URI). Without it, an attempt
    /// that reached a broker while it was shutting down could wait forever and stop the
    /// reconnect loop.
    pub connect_timeout: Duration,
}

impl AmqpConfig {
    /// A configuration with the defaults and the given broker: one URI or several (a
    /// [`BrokerUri`](crate::BrokerUri) converts with `.into()`). A `connect_timeout` option in
    /// the first URI sets [`connect_timeout`](Self::connect_timeout).
    ///
    /// ```
    /// use socketioxide_amqp::AmqpConfig;
    /// let config = AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/".parse()?);
    /// assert_eq!(config.uris.first().vhost(), "/");
    /// # Ok::<(), socketioxide_amqp::UriError>(())
    /// ```
    pub fn new(uris: BrokerUris) -> Self {
        let connect_timeout = uris
            .first()
            .connect_timeout()
            .unwrap_or(Duration::from_secs(10));
        Self {
            uris,
            exchange: "flask-socketio".to_owned(),
            queue_name: None,
            queue_expires: Some(Duration::from_secs(300)),
            prefetch: 256,
            publisher_confirms: true,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: DEFAULT_RECONNECT_MAX,
            buffer: 1024,
            publish_timeout: Duration::from_secs(5),
            connect_timeout,
        }
    }
    /// Sets the exchange name.
    pub fn with_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }
    /// Sets the own queue name.
    pub fn with_queue_name(mut self, name: impl Into<String>) -> Self {
        self.queue_name = Some(name.into());
        self
    }
    /// Sets the `x-expires` of the own queue.
    pub fn with_queue_expires(mut self, expires: Option<Duration>) -> Self {
        // duplicates: deliberate — builder setters, one per option
        self.queue_expires = expires;
        self
    }
    /// Sets the consumer prefetch.
    pub fn with_prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch;
        self
    }
    /// Enables or disables publisher confirms.
    pub fn with_publisher_confirms(mut self, confirms: bool) -> Self {
        self.publisher_confirms = confirms;
        self
    }
    /// Sets the publish timeout.
    pub fn with_publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }
    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
    /// Sets the reconnect backoff bounds.
    pub fn with_reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max.max(min);
        self
    }
}
