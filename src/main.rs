//! The `v6-socketio` command: `serve` a vantage6 configuration, or run the
//! embedded `demo`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::{fmt, EnvFilter};
use v6_socketio::{
    config::{Config, LogFormat, ServeOverrides},
    demo::{self, DemoOptions},
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
enum Command {
    /// Serve /tasks for an existing vantage6 4.x server, reading its configuration file.
    ///
    /// From the vantage6 file: jwt_secret_key, uri, cors_allowed_origins,
    /// rabbitmq.uri (or the legacy rabbitmq_uri). Our own settings live in a
    /// `v6_socketio:` section of the same file (ip, port, path, ping_interval,
    /// ping_timeout, sweep_interval, max_payload, log_format) and can be
    /// overridden by environment variables and flags (flag > env > file > default).
    /// Log verbosity: RUST_LOG (default info).
    Serve {
        /// The vantage6 server configuration file (YAML).
        #[arg(long, short, env = "V6_SOCKETIO_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        overrides: ServeOverrides,
    },
    /// Run a self-contained demo: SQLite database with two nodes and a user, tokens printed.
    Demo {
        /// Folder for the demo database and configuration.
        #[arg(long, default_value = "demo-data")]
        dir: PathBuf,
        /// Port to listen on (always on 127.0.0.1).
        #[arg(long, default_value_t = v6_socketio::config::DEFAULT_PORT)]
        port: u16,
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
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match cli.command {
        Command::Serve { config, overrides } => {
            let (config, warnings) = Config::load(&config, &overrides)?;
            init_logging(config.log_format);
            for w in warnings.0 {
                tracing::warn!("{w}");
            }
            config
        }
        Command::Demo { dir, port } => {
            init_logging(LogFormat::Text);
            demo::prepare(&DemoOptions { dir, port })
                .await
                .context("demo")?
        }
    };
    server::serve(config).await?;
    Ok(())
}
