//! Command line (the contract's flags; the crate README lists them all).

use std::path::PathBuf;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

/// Load generator for v6-socketio / vantage6's `/tasks` namespace.
#[derive(Debug, Parser)]
#[command(name = "v6-loadgen", version)]
pub struct Args {
    /// Flags every scenario takes.
    #[command(flatten)]
    pub common: Common,
    /// The scenario.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Flags every scenario takes.
#[derive(Debug, Clone, ClapArgs)]
pub struct Common {
    /// Fixture file written by clients/bench/fixture.py.
    #[arg(long, global = true, default_value = "fixture.json")]
    pub fixture: PathBuf,
    /// Server base URL (repeatable); clients spread round-robin.
    #[arg(long = "url", global = true, default_value = "http://127.0.0.1:7602")]
    pub urls: Vec<String>,
    /// Engine.IO path.
    #[arg(long, global = true, default_value = "/socket.io/")]
    pub path: String,
    /// How many fixture nodes to use (default: all).
    #[arg(long, global = true)]
    pub nodes: Option<usize>,
    /// Fraction of clients on HTTP long-polling only.
    #[arg(long, global = true, default_value_t = 0.0)]
    pub polling_share: f64,
    /// Server process whose CPU and RSS to sample (repeatable).
    #[arg(long = "server-pid", global = true)]
    pub server_pids: Vec<u32>,
    /// Copied into every JSON line.
    #[arg(long, global = true)]
    pub label: Option<String>,
    /// Publisher's broker (kombu URI rules), for fanout.
    #[arg(
        long,
        global = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/"
    )]
    pub amqp_uri: String,
    /// Exchange shared with the servers.
    #[arg(long, global = true, default_value = "flask-socketio")]
    pub exchange: String,
    /// Message format of the servers on the exchange (`legacy`: vantage6 4.x).
    #[arg(long, global = true, default_value = "legacy")]
    pub message_queue_format: String,
    /// Handshakes in flight at once.
    #[arg(long, global = true, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Seconds one connection attempt may take up to `sync`.
    #[arg(long, global = true, default_value_t = 30.0)]
    pub connect_timeout: f64,
    /// Seconds to wait for every client to be synced before measuring.
    #[arg(long, global = true, default_value_t = 120.0)]
    pub sync_timeout: f64,
    /// Seconds to wait after a step's last event for its deliveries.
    #[arg(long, global = true, default_value_t = 10.0)]
    pub drain_timeout: f64,
    /// Before the first step, wait until no client received any event for this long (seconds;
    /// the connect storm's join messages), at most `--sync-timeout`.
    #[arg(long, global = true, default_value_t = 1.0)]
    pub quiet_period: f64,
    /// Seconds of pause between two steps.
    #[arg(long, global = true, default_value_t = 1.0)]
    pub pause: f64,
    /// Processes: the parent re-executes itself as P-1 workers, each serving
    /// the clients `i` with `i mod P = k`, and merges their measurements into its lines.
    #[arg(long, global = true, default_value_t = 1)]
    pub processes: usize,
    /// Internal: run as worker `k` of `--processes` (commands on stdin, answers on stdout).
    #[arg(long, global = true, hide = true)]
    pub worker: Option<usize>,
    /// Tokio worker threads (default: one per CPU).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
}

/// What to measure.
#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// `new_task` published through RabbitMQ to collaboration rooms, at each offered rate.
    Fanout {
        /// Offered deliveries per second, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000,300000")]
        rates: Vec<f64>,
        /// Seconds per rate.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// `one`: every event to the largest collaboration; `collabs`: round-robin over all
        /// (default: `one` when the fixture has one collaboration).
        #[arg(long, value_enum)]
        topology: Option<Topology>,
    },
    /// Nodes emit `algorithm_status_change` for their runs; the server re-emits it.
    Relay {
        /// Offered deliveries per second, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        rates: Vec<f64>,
        /// Seconds per rate.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// C idle node connections: connect rate, failures, server memory per connection.
    Capacity {
        /// Connections (fixture nodes are reused when there are fewer).
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Seconds to let the server settle before reading its memory.
        #[arg(long, default_value_t = 2.0)]
        settle: f64,
    },
    /// N nodes; READY on stderr; the caller restarts the server; time until all re-synced.
    Restart {
        /// Connections.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// First reconnection delay (s).
        #[arg(long, default_value_t = 1.0)]
        reconnection_delay: f64,
        /// Largest reconnection delay (s).
        #[arg(long, default_value_t = 5.0)]
        reconnection_delay_max: f64,
        /// Randomization factor of each delay.
        #[arg(long, default_value_t = 0.5)]
        randomization_factor: f64,
        /// Seconds to wait for the server to go away, and again for every client to be back.
        #[arg(long, default_value_t = 300.0)]
        restart_timeout: f64,
    },
}

/// Which rooms fanout publishes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Topology {
    /// The largest collaboration only.
    One,
    /// Every collaboration, round-robin.
    Collabs,
}

impl Topology {
    /// The name in the JSON line.
    pub fn name(self) -> &'static str {
        match self {
            Topology::One => "one",
            Topology::Collabs => "collabs",
        }
    }
}
