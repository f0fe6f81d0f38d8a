//! `v6-loadgen`: a load generator for v6-socketio (and vantage6's Flask-SocketIO `/tasks`):
//! thousands of vantage6 node clients, a RabbitMQ publisher and latency/loss statistics in one
//! process, one JSON line per measurement on stdout. See clients/loadgen/README.md.

mod cli;
mod client;
mod fixture;
mod fleet;
mod publisher;
mod receiver;
mod report;
mod scenario;
mod stats;
mod sysstat;
mod token;
mod transport;
mod wire;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = cli::Args::parse();
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.common.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
        }))
        .enable_all()
        .build()?;
    runtime.block_on(scenario::run(args))
}

/// Raises the soft open-files limit to the hard limit (each client holds a socket or two).
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}
