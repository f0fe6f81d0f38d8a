//! The adapter's settings ([`AdapterConfig`]); the broker's are in
//! [`AmqpConfig`](crate::AmqpConfig).

use std::time::Duration;

use crate::wire::DataFormat;

/// Adapter settings (the broker settings are in [`AmqpConfig`](crate::AmqpConfig)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AdapterConfig {
    /// How long `fetch_sockets` and `rooms` wait for replies from other servers, and the extra
    /// time an ack stream waits on top of the ack timeout (default 5 s).
    pub request_timeout: Duration,
    /// How often each namespace announces itself to the other servers (default 5 s).
    pub heartbeat_interval: Duration,
    /// After how long without a heartbeat a server is considered gone (default 15 s).
    pub heartbeat_timeout: Duration,
    /// Keep ack streams open until the timeout, to collect acks from Python servers, which do not
    /// say how many acks to expect (default false: the stream ends once the socketioxide servers'
    /// acks are in).
    pub wait_for_python_acks: bool,
    /// Capacity of each namespace's inbound message queue (default 1024).
    pub buffer: usize,
    /// The layout of the `data` of `emit` messages, both read from python servers and emitters
    /// and published (default [`DataFormat::Args`], python-socketio 5.15.1+). Use
    /// [`DataFormat::Legacy`] when the python side runs python-socketio up to 5.15.0 (e.g.
    /// vantage6 4.15.2, which pins 5.15.0): its servers then hand their clients the one argument of
    /// a broadcast as that argument (several arguments arrive there as one list, as from a
    /// 5.15.0 peer). Socketioxide servers get the exact arguments in either format (`x_nargs`).
    pub python_data_format: DataFormat,
    /// Largest broker message that is decoded (default 16 MiB, RabbitMQ 4's own limit); larger
    /// ones are logged, counted as invalid and dropped without being parsed.
    pub max_message_size: usize,
}

/// Default of [`AdapterConfig::max_message_size`].
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

impl Default for AdapterConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(15),
            wait_for_python_acks: false,
            buffer: 1024,
            python_data_format: DataFormat::Args,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

impl AdapterConfig {
    /// Sets the request timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
    /// Sets the heartbeat interval and timeout.
    pub fn with_heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat_interval = interval;
        self.heartbeat_timeout = timeout.max(interval);
        // duplicates: deliberate — builder setters, one per option
        self
    }
    /// Sets the layout of the `data` of `emit` messages, read and published
    /// ([`python_data_format`](Self::python_data_format)).
    pub fn with_python_data_format(mut self, format: DataFormat) -> Self {
        self.python_data_format = format;
        self
    }
    /// Sets [`max_message_size`](Self::max_message_size).
    pub fn with_max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }
    /// Keeps ack streams open until the timeout (for acks from Python servers).
    pub fn with_wait_for_python_acks(mut self, wait: bool) -> Self {
        self.wait_for_python_acks = wait;
        self
    }
}
