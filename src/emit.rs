//! `v6-socketio emit`: publish one event to every instance through
//! RabbitMQ, the way vantage6's REST API does, without running a server.

use serde_json::Value;
use socketioxide_amqp::{AmqpConfig, AmqpDriver, AmqpEmitter, BrokerUris, DataFormat};

/// Why an event could not be published.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// `--data` is not JSON.
    #[error("--data is not valid JSON")]
    Data(#[from] serde_json::Error),
    /// The broker refused or could not be reached. The adapter's message
    /// already ends with its causes, so it is shown, not chained.
    #[error("RabbitMQ: {0}")]
    Broker(socketioxide_amqp::Error),
}

impl From<socketioxide_amqp::Error> for EmitError {
    fn from(e: socketioxide_amqp::Error) -> Self {
        EmitError::Broker(e)
    }
}

/// One event to publish.
#[derive(Debug, Clone)]
pub struct EmitRequest {
    /// RabbitMQ, read with kombu's rules.
    pub rabbitmq_uri: BrokerUris,
    /// Exchange shared with the servers (`flask-socketio` for vantage6).
    pub exchange: String,
    /// Namespace, e.g. `/tasks`.
    pub namespace: String,
    /// Rooms to reach; none reaches every client of the namespace.
    pub rooms: Vec<String>,
    /// Event name, e.g. `new_task`.
    pub event: String,
    /// The event's argument as JSON text; `None` sends no argument.
    pub data: Option<String>,
    /// The message format the python-socketio servers on the exchange read.
    pub format: DataFormat,
}

/// Publishes the event once and closes the connection.
pub async fn emit(request: &EmitRequest) -> Result<(), EmitError> {
    let args: Vec<Value> = match &request.data {
        Some(text) => vec![serde_json::from_str(text)?],
        None => Vec::new(),
    };
    let config = AmqpConfig::new(request.rabbitmq_uri.clone()).with_exchange(&request.exchange);
    let driver = AmqpDriver::connect_publisher(config)
        .await
        .map_err(socketioxide_amqp::Error::from)?;
    let emitter = AmqpEmitter::with_data_format(driver, request.format);
    let target = request
        .rooms
        .iter()
        .fold(emitter.of(request.namespace.clone()), |e, room| {
            e.to(room.clone())
        });
    let result = target.emit_args(&request.event, args).await;
    emitter.close().await;
    Ok(result?)
}
