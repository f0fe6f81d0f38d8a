//! A Socket.IO server on the RabbitMQ adapter. Run it several times to get a cluster:
//!
//! ```sh
//! cargo run -p socketioxide-amqp --example cluster -- 3000
//! cargo run -p socketioxide-amqp --example cluster -- 3001
//! ```
//!
//! Every client gets the `message` events sent by any client on any instance (and by python
//! servers or emitters on the same exchange). `AMQP_URL` and `EXCHANGE` set the broker URI and
//! the exchange (default `flask-socketio`).

use serde_json::Value;
use socketioxide::{
    adapter::Emitter,
    extract::{AckSender, Data, SocketRef},
    SocketIo,
};
use socketioxide_amqp::{AdapterConfig, AmqpAdapter, AmqpAdapterCtr, AmqpConfig};
use tracing_subscriber::EnvFilter;

type Socket = SocketRef<AmqpAdapter<Emitter>>;

async fn on_connect(socket: Socket) {
    tracing::info!(sid = %socket.id, "connected");
    socket.on("message", async |socket: Socket, Data(msg): Data<Value>| {
        // One publish: every other client, on this instance and all the others.
        if let Err(e) = socket.broadcast().emit("message", &msg).await {
            tracing::warn!(error = %e, "broadcast failed");
        }
    });
    socket.on("join", async |socket: Socket, Data(room): Data<String>| {
        socket.join(room);
    });
    socket.on(
        "clients",
        async |socket: Socket, ack: AckSender<AmqpAdapter<Emitter>>| {
            // Every client of the cluster (socketioxide instances answer, python ones do not).
            let n = socket
                .broadcast()
                .fetch_sockets()
                .await
                .map_or(1, |s| s.len() + 1);
            ack.send(&n).ok();
        },
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let port: u16 = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("3000")
        .parse()?;
    let uri = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let exchange = std::env::var("EXCHANGE").unwrap_or_else(|_| "flask-socketio".to_owned());

    let ctr = AmqpAdapterCtr::connect_with_config(
        AmqpConfig::new(uri.parse()?).with_exchange(exchange),
        AdapterConfig::default(),
    )
    .await?;
    let (layer, io) = SocketIo::builder()
        .with_adapter::<AmqpAdapter<_>>(ctr.clone())
        .build_layer();
    io.ns("/", on_connect).await?;

    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tracing::info!(port, host_id = ctr.host_id(), "listening");
    axum::serve(listener, app).await?;
    Ok(())
}
