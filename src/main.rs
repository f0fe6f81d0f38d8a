//! The `v6-socketio` command: `serve` a vantage6 configuration, or run the
//! embedded `demo`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use socketioxide_amqp::BrokerUris;
use tracing_subscriber::{fmt, EnvFilter};
use v6_socketio::{
    config::{Config, EmitOverrides, LogFormat, ServeOverrides},
    demo::{self, DemoOptions},
    emit::{self, EmitRequest},
    generation::Vantage6Generation,
    server,
};

/// Socket.IO server for vantage6's /tasks namespace (replaces vantage6's
/// Flask-SocketIO layer; nodes and the UI connect unchanged).
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once at start-up; boxing the flattened settings buys nothing"
)]
enum Command {
    /// Serve /tasks for an existing vantage6 4.x or 5.x (HQ) server, reading its configuration file.
    ///
    /// From the vantage6 file: jwt_secret_key (4.x), uri, cors_allowed_origins,
    /// rabbitmq.uri (or the legacy rabbitmq_uri), jwt_decode_algorithms and
    /// jwt_decode_leeway (5.x); for 5.x also KEYCLOAK_URL and KEYCLOAK_REALM from
    /// the environment, as HQ. Our own settings, the options below except --config,
    /// --keycloak-url and --keycloak-realm, live in a `v6_socketio:` section of the
    /// same file (e.g. `ping_interval` for --ping-interval) and can be overridden by
    /// environment variables and flags (flag > env > file > default).
    /// Log verbosity: RUST_LOG (default info).
    Serve {
        /// The vantage6 server configuration file (YAML).
        #[arg(long, short, env = "V6_SOCKETIO_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        overrides: ServeOverrides,
    },
    /// Publish one event to a room on every instance through RabbitMQ, as vantage6's REST API does.
    ///
    /// Example: v6-socketio emit --config server.yaml --room collaboration_1 --event new_task
    /// --data '{"id": 7, "parent_id": null}'
    Emit {
        /// A vantage6 server configuration file to take `rabbitmq.uri` from.
        #[arg(
            long,
            short,
            env = "V6_SOCKETIO_CONFIG",
            required_unless_present = "rabbitmq_uri"
        )]
        config: Option<PathBuf>,
        /// RabbitMQ URI (instead of --config), read as vantage6 (kombu) reads it, e.g.
        /// amqp://guest:guest@127.0.0.1:5672/ (virtual host /)
        #[arg(long, env = "V6_SOCKETIO_RABBITMQ_URI")]
        rabbitmq_uri: Option<String>,
        /// Exchange the servers share (Flask-SocketIO's default channel).
        #[arg(long, default_value = "flask-socketio")]
        exchange: String,
        /// Room to reach; repeat for several. Without --room every client of the namespace.
        #[arg(long)]
        room: Vec<String>,
        /// Event name, e.g. new_task.
        #[arg(long)]
        event: String,
        /// The event's argument as JSON; omit for an event without argument.
        #[arg(long)]
        data: Option<String>,
        /// Namespace.
        #[arg(long, default_value = "/tasks")]
        namespace: String,
        /// `serve`'s --message-queue-format.
        #[command(flatten)]
        queue_format: EmitOverrides,
    },
    /// Run a self-contained demo: SQLite database with two nodes and a user, tokens printed
    /// (`--vantage6 5`: the vantage6 5.x layout and Keycloak-style tokens).
    Demo {
        /// Folder for the demo database and configuration.
        #[arg(long, default_value = "demo-data")]
        dir: PathBuf,
        /// Port to listen on (always on 127.0.0.1).
        #[arg(long, default_value_t = v6_socketio::config::DEFAULT_PORT)]
        port: u16,
        /// vantage6 generation: 4, or 5 (HQ: Keycloak-style RS256 tokens, a generated realm key, no Keycloak needed).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(4..=5))]
        vantage6: u8,
    },
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The error and its causes on one line: no message repeats its cause.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = match cli.command {
        Command::Serve { config, overrides } => {
            let (config, warnings) = Config::load(&config, &overrides)?;
            init_logging(config.log_format);
            for w in warnings.0 {
                tracing::warn!("{w}");
            }
            config
        }
        Command::Emit {
            config,
            rabbitmq_uri,
            exchange,
            room,
            event,
            data,
            namespace,
            queue_format,
        } => {
            init_logging(LogFormat::Text);
            let file = match config {
                Some(path) => Some(Config::load_for_emit(&path)?.0),
                None => None,
            };
            let rabbitmq_uri = match (rabbitmq_uri, &file) {
                (Some(uri), _) => BrokerUris::parse(&uri).context("invalid --rabbitmq-uri")?,
                (None, Some(file)) => file
                    .rabbitmq_uri
                    .clone()
                    .context("the configuration file has no `rabbitmq.uri`")?,
                (None, None) => anyhow::bail!("give --config or --rabbitmq-uri"),
            };
            let format = queue_format.data_format(file.as_ref());
            let request = EmitRequest {
                rabbitmq_uri,
                exchange,
                namespace,
                rooms: room,
                event,
                data,
                format,
            };
            emit::emit(&request).await?;
            return Ok(());
        }
        Command::Demo {
            dir,
            port,
            vantage6,
        } => {
            init_logging(LogFormat::Text);
            let vantage6 = if vantage6 == 5 {
                Vantage6Generation::V5
            } else {
                Vantage6Generation::V4
            };
            demo::prepare(&DemoOptions {
                dir,
                port,
                vantage6,
            })
            .await
            .context("demo")?
        }
    };
    server::serve(config).await?;
    Ok(())
}
