//! Configuration: one [`Config`], loaded once from a vantage6 4.x server
//! configuration file, our own `v6_socketio` section in that file,
//! environment variables and command-line flags, and validated up front.
//!
//! Precedence for our own settings is flag > environment > file > default.
//! Each of them is defined once, in the `own_settings!` table below: its
//! help text, type, environment variable, default and clap attributes; the
//! flags ([`ServeOverrides`], where clap resolves "flag > environment"), the
//! file section and the merge over the file and the defaults are generated
//! from it, and the merged values are validated once, into [`Config`].

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use socketioxide_amqp::{BrokerUris, DataFormat, UriError};

use crate::{
    affinity::{is_valid_instance_name, InstanceName, MAX_INSTANCE_NAME_LEN},
    auth::{DEFAULT_DECODE_ALGORITHMS, DEFAULT_DECODE_LEEWAY},
    database_url::{DatabaseUrl, DatabaseUrlError},
    generation::Vantage6Generation,
    keycloak::KeySource,
    tasks_ns::{EventBudget, DEFAULT_EVENT_BUDGET, DEFAULT_PING_WRITE_INTERVAL},
};

/// Default Engine.IO ping interval, as vantage6 (Engine.IO's default).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(25);
/// Default Engine.IO ping timeout, as vantage6 sets it explicitly.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(60);
/// Default pause between two offline sweeps: vantage6's node ping interval + 5 s.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(65);
/// Default largest accepted Engine.IO payload, as python-engineio.
pub const DEFAULT_MAX_PAYLOAD: u64 = 1_000_000;
/// Default number of packets that may wait for a slow client before emits
/// to it fail. python-socketio's queues are unbounded; a user with the
/// global event scope receives one join message per collaboration at once.
pub const DEFAULT_MAX_BUFFER_SIZE: usize = 4096;
/// Default size in bytes of each websocket's read buffer, and the most one
/// read from its socket takes. tungstenite grows the buffer for a frame
/// that needs more, so this bounds what an idle connection holds, not the
/// messages it may send: vantage6's messages to the server are small; 4096
/// (engineioxide's default) cost 2.9 KiB more per connection (docs/memory.md).
pub const DEFAULT_WS_READ_BUFFER_SIZE: usize = 1024;
/// Default hold of a connection's first server-initiated event (`sync`,
/// `expired_token`, `invalid_token`) after the CONNECT acknowledgement.
/// python-socketio's client handles each packet in a thread of its own and
/// finishes setting up its connection after the server answered; vantage6
/// answers after tens of milliseconds, so its nodes never notice. See the
/// README ("first_event_delay").
pub const DEFAULT_FIRST_EVENT_DELAY: Duration = Duration::from_millis(DEFAULT_FIRST_EVENT_DELAY_MS);
/// [`DEFAULT_FIRST_EVENT_DELAY`] in milliseconds, the unit of the setting.
pub const DEFAULT_FIRST_EVENT_DELAY_MS: u64 = 50;
/// Default `tcp_user_timeout`: a client whose receive window stays closed
/// this long (it reads nothing) is dropped. engine.io's own ping cannot drop
/// it: the writer task is stuck in the blocked write and never lets the
/// session close (README, "Failure behaviour").
pub const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `heap_trim_threshold`: freed memory the allocator keeps beyond
/// this (after a burst of connections or events) goes back to the kernel.
pub const DEFAULT_HEAP_TRIM_THRESHOLD: u64 = 32 << 20;

/// Largest accepted `first_event_delay`.
pub const MAX_FIRST_EVENT_DELAY: Duration = Duration::from_secs(10);
/// Default `client_event_burst` (the [`DEFAULT_EVENT_BUDGET`]'s burst).
pub const DEFAULT_CLIENT_EVENT_BURST: u32 = 1000;
/// Default Socket.IO path, as Flask-SocketIO.
pub const DEFAULT_PATH: &str = "/socket.io/";
/// Default listen port (vantage6's REST API uses 7601 in its own examples;
/// we default one above so both can run side by side).
pub const DEFAULT_PORT: u16 = 7602;
/// Default shortest pause between two re-fetches of the Keycloak realm key.
pub const DEFAULT_KEYCLOAK_KEY_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// Default of `broker_reconnect_max`: a reconnect starts at most this long after the broker
/// is back, well within the 5 s the issue allows.
pub const DEFAULT_BROKER_RECONNECT_MAX: Duration = socketioxide_amqp::broker::DEFAULT_RECONNECT_MAX;
/// Smallest `broker_reconnect_max` (the backoff's first pause).
pub const MIN_BROKER_RECONNECT_MAX: Duration = Duration::from_millis(100);
/// Default `http_header_read_timeout`: how long a connection may take to send
/// a complete request head (hyper's own default, and nginx's
/// `client_header_timeout` is 60 s).
pub const DEFAULT_HTTP_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A problem with the configuration; every variant names the setting, and
/// a cause is its [`source`](std::error::Error::source), not repeated in
/// the message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid YAML or a key has the wrong type.
    #[error("invalid configuration file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What serde said.
        message: String,
    },
    /// A required setting is absent.
    #[error("missing setting `{0}`: {1}")]
    Missing(&'static str, &'static str),
    /// A setting has an unusable value.
    #[error("invalid setting `{name}`: {message}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// Why.
        message: String,
    },
    /// `uri` could not be understood.
    #[error("invalid setting `uri`")]
    DatabaseUrl(#[from] DatabaseUrlError),
    /// `rabbitmq.uri` (or the legacy `rabbitmq_uri`) cannot be read as kombu reads it.
    #[error("invalid setting `{name}`")]
    RabbitMqUri {
        /// The setting.
        name: &'static str,
        /// Why (the URI shown without its password).
        source: UriError,
    },
    /// `rabbitmq.uri` and the legacy `rabbitmq_uri` disagree.
    #[error(
        "conflicting settings `rabbitmq.uri` ({nested}) and legacy `rabbitmq_uri` ({legacy}): \
         vantage6 4.x only reads `rabbitmq.uri`; remove one"
    )]
    ConflictingRabbitMq {
        /// `rabbitmq.uri`, credentials hidden.
        nested: String,
        /// `rabbitmq_uri`, credentials hidden.
        legacy: String,
    },
}

/// Which origins may open cross-origin connections (`cors_allowed_origins`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// `*`: every origin (vantage6's default).
    Any,
    /// Only these origins, compared as exact strings (as Flask-SocketIO does).
    List(Vec<String>),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Which vantage6 generation to serve (`vantage6_generation`). In the file
/// `auto`, `4` or `5`, as a string or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GenerationSetting {
    /// From the database schema: `authenticatable.keycloak_id` means 5.x.
    Auto,
    /// vantage6 4.x.
    #[value(name = "4")]
    V4,
    /// vantage6 5.x (HQ).
    #[value(name = "5")]
    V5,
}

impl GenerationSetting {
    /// The generation when no database tells it (`emit`): `auto` is 4.x.
    pub fn without_database(self) -> Vantage6Generation {
        match self {
            GenerationSetting::V5 => Vantage6Generation::V5,
            GenerationSetting::Auto | GenerationSetting::V4 => Vantage6Generation::V4,
        }
    }
}

impl<'de> Deserialize<'de> for GenerationSetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = GenerationSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("auto, 4 or 5")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                <GenerationSetting as clap::ValueEnum>::from_str(text.trim(), false)
                    .map_err(|_| E::custom(format!("{text:?} is not one of auto, 4, 5")))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
                self.visit_str(&n.to_string())
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A [`clap::ValueEnum`]'s name, as flags and files spell it.
fn write_value_name(
    value: &impl clap::ValueEnum,
    f: &mut std::fmt::Formatter<'_>,
) -> std::fmt::Result {
    match value.to_possible_value() {
        Some(v) => f.write_str(v.get_name()),
        None => Ok(()),
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write_value_name(self, f)
    }
}

impl std::fmt::Display for GenerationSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write_value_name(self, f)
    }
}

/// The python-socketio message format (`message_queue_format`) of
/// `generation`'s own server: vantage6 4.15.2's python-socketio (up to
/// 5.15.0) writes `legacy`, HQ 5.0.3's (5.16.2) `args`.
pub fn default_data_format(generation: Vantage6Generation) -> DataFormat {
    match generation {
        Vantage6Generation::V4 => DataFormat::Legacy,
        Vantage6Generation::V5 => DataFormat::Args,
    }
}

/// `--message-queue-format`: the names of [`DataFormat`], listed in `--help`.
fn data_format_parser() -> impl clap::builder::TypedValueParser<Value = DataFormat> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new([
        PossibleValue::new(DataFormat::Legacy.name()).help(
            "python-socketio up to 5.15.0, which vantage6 4.15.2 runs: `data` is the single \
             argument itself",
        ),
        PossibleValue::new(DataFormat::Args.name())
            .help("python-socketio 5.15.1 and later: `data` is the list of arguments"),
    ])
    .try_map(|name| name.parse::<DataFormat>())
}

/// Keycloak's address as HQ reads it: `KEYCLOAK_URL`, `KEYCLOAK_REALM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeycloakRealm {
    /// `KEYCLOAK_URL`, e.g. `https://auth.example.org`.
    pub url: String,
    /// `KEYCLOAK_REALM`, e.g. `vantage6`.
    pub realm: String,
}

/// The validated configuration of one `serve` run.
#[derive(Debug, Clone)]
pub struct Config {
    /// HS256 secret shared with the vantage6 REST API (`jwt_secret_key`).
    /// Required for 4.x; empty when absent, which only a configuration that
    /// can serve 5.x allows (HQ's own is random and REST-only).
    pub jwt_secret_key: String,
    /// The vantage6 database (`uri`).
    pub database: DatabaseUrl,
    /// RabbitMQ URI for cross-instance delivery (`rabbitmq.uri` or legacy `rabbitmq_uri`):
    /// one, or kombu's fail-over list of several (`;`-separated, or a YAML list).
    pub rabbitmq_uri: Option<BrokerUris>,
    /// Largest pause between two rounds of broker reconnect attempts.
    pub broker_reconnect_max: Duration,
    /// `cors_allowed_origins`.
    pub cors_allowed_origins: CorsOrigins,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Socket.IO path, e.g. `/socket.io/`.
    pub path: String,
    /// Engine.IO ping interval.
    pub ping_interval: Duration,
    /// Engine.IO ping timeout.
    pub ping_timeout: Duration,
    /// Pause between two offline sweeps.
    pub sweep_interval: Duration,
    /// Largest accepted Engine.IO payload in bytes.
    pub max_payload: u64,
    /// Packets that may be queued for one client.
    pub max_buffer_size: usize,
    /// Initial size in bytes of each websocket's read buffer.
    pub ws_read_buffer_size: usize,
    /// The python-socketio message format on the RabbitMQ exchange, when
    /// set; otherwise the generation's (see
    /// [`message_queue_format_for`](Self::message_queue_format_for)).
    pub message_queue_format: Option<DataFormat>,
    /// Log format.
    pub log_format: LogFormat,
    /// The name the reverse proxy knows this instance by (`instance_name`).
    pub instance_name: InstanceName,
    /// Whether handshake responses set the `v6_socketio_instance` cookie
    /// naming this instance, for the proxy's session affinity.
    pub affinity_cookie: bool,
    /// How long after the CONNECT acknowledgement a connection's first
    /// server-initiated event is held (zero: not held).
    pub first_event_delay: Duration,
    /// Which vantage6 generation to serve (`vantage6_generation`).
    pub vantage6_generation: GenerationSetting,
    /// Each client's event budget (`client_event_rate`, `client_event_burst`,
    /// `client_flood_disconnect`).
    pub event_budget: EventBudget,
    /// Shortest pause between two database writes of a client's pings.
    pub ping_write_interval: Duration,
    /// `TCP_USER_TIMEOUT` of accepted connections (`None`: the kernel's).
    pub tcp_user_timeout: Option<Duration>,
    /// 5.x: HQ's `jwt_decode_algorithms` (RSA algorithms only).
    pub jwt_decode_algorithms: Vec<jsonwebtoken::Algorithm>,
    /// 5.x: HQ's `jwt_decode_leeway`.
    pub jwt_decode_leeway: Duration,
    /// 5.x: `KEYCLOAK_URL` and `KEYCLOAK_REALM`, when both are set.
    pub keycloak: Option<KeycloakRealm>,
    /// 5.x: the realm key as a PEM file instead of asking Keycloak at start-up.
    pub keycloak_public_key_file: Option<PathBuf>,
    /// 5.x: shortest pause between two re-fetches of the realm key.
    pub keycloak_key_refresh_interval: Duration,
    /// How long a connection may take to send a complete request head
    /// (before its first request and between two on a kept-alive connection).
    pub http_header_read_timeout: Duration,
    /// Newly freed heap bytes kept before they go back to the kernel
    /// (`None`: never).
    pub heap_trim_threshold: Option<u64>,
    /// Most TCP connections open at once; `None`: derived from the open-files
    /// limit at start-up (see [`crate::listener::default_max_connections`]).
    pub max_connections: Option<usize>,
}

/// The `--help` line of a setting: its doc comment and its default.
fn help_text(doc: &str, default: &str) -> String {
    format!("{} [default: {default}]", doc.trim())
}

/// The type a setting resolves to: itself with a default value, an
/// `Option` when the default is only described (`shown`).
macro_rules! resolved_type {
    (default, $ty:ty) => { $ty };
    (shown, $ty:ty) => { Option<$ty> };
}

/// A setting's resolved value from its flag, environment or file value.
macro_rules! resolve_value {
    (default; $value:expr; $($default:tt)*) => { $value.unwrap_or_else(|| $($default)*) };
    (shown; $value:expr; $text:literal) => { $value };
}

/// A setting's default as `--help` and the README show it.
macro_rules! default_text {
    (default; $($default:tt)*) => { ($($default)*).to_string() };
    (shown; $text:literal) => { String::from($text) };
}

/// Defines our own settings, each once: the doc comment is the help text,
/// then an optional `#[arg(..)]` with clap attributes beyond `long` and
/// `env`, the name (flag `--name-with-dashes`, file key `v6_socketio.name`),
/// the type of the flag, environment and file value, the environment
/// variable, and the default: `default(expr)` (shown with `Display`) or
/// `shown("text")` for a default computed later from other settings.
/// `env_only` settings have a flag and an environment variable but no file
/// key (HQ's own variables).
///
/// Generates [`ServeOverrides`] (clap: flag > environment), `OwnSection`
/// (the file's `v6_socketio:`, unknown keys refused), `OwnSettings` (the
/// merge, flag > environment > file > default) and `FILE_SETTINGS`.
macro_rules! own_settings {
    (
        file {$(
            $(#[doc = $doc:literal])+
            $(#[arg($($arg:tt)*)])?
            $name:ident: $ty:ty = $env:literal, $kind:ident($($default:tt)*);
        )+}
        env_only {$(
            $(#[doc = $edoc:literal])+
            $ename:ident: $ety:ty = $eenv:literal;
        )+}
    ) => {
        /// Settings that flags or environment variables may override (clap
        /// resolves flag > environment). Each field is `None` when neither
        /// was given.
        #[derive(Debug, Default, Clone, clap::Args)]
        pub struct ServeOverrides {$(
            $(#[doc = $doc])+
            #[arg(
                long,
                env = $env,
                help = help_text(concat!($($doc),+), &default_text!($kind; $($default)*))
                $(, $($arg)*)?
            )]
            pub $name: Option<$ty>,
        )+$(
            $(#[doc = $edoc])+
            #[arg(
                long,
                env = $eenv,
                hide_env = true,
                help = format!("{} [env: {}]", concat!($($edoc),+).trim(), $eenv)
            )]
            pub $ename: Option<$ety>,
        )+}

        /// Our own section, `v6_socketio:` in the vantage6 file.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct OwnSection {$(
            $name: Option<$ty>,
        )+}

        /// Our own settings, merged: flag > environment > file > default.
        #[derive(Debug)]
        struct OwnSettings {
            $($name: resolved_type!($kind, $ty),)+
            $($ename: Option<$ety>,)+
        }

        impl OwnSettings {
            fn resolve(flags: ServeOverrides, file: OwnSection) -> Self {
                Self {
                    $($name: resolve_value!($kind; flags.$name.or(file.$name); $($default)*),)+
                    $($ename: flags.$ename,)+
                }
            }
        }

        /// Each file setting's name and doc comment, in the README's order.
        const FILE_SETTINGS: &[(&str, &str)] = &[$((stringify!($name), concat!($($doc),+)),)+];
    };
}

own_settings! {
    file {
        /// IP address to listen on
        ip: IpAddr = "V6_SOCKETIO_IP", default(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        /// Port to listen on
        port: u16 = "V6_SOCKETIO_PORT", default(DEFAULT_PORT);
        /// Socket.IO path
        path: String = "V6_SOCKETIO_PATH", default(DEFAULT_PATH.to_owned());
        /// Engine.IO ping interval in seconds
        ping_interval: f64 = "V6_SOCKETIO_PING_INTERVAL",
            default(DEFAULT_PING_INTERVAL.as_secs_f64());
        /// Engine.IO ping timeout in seconds
        ping_timeout: f64 = "V6_SOCKETIO_PING_TIMEOUT",
            default(DEFAULT_PING_TIMEOUT.as_secs_f64());
        /// Seconds between two sweeps that mark silent nodes offline
        sweep_interval: f64 = "V6_SOCKETIO_SWEEP_INTERVAL",
            default(DEFAULT_SWEEP_INTERVAL.as_secs_f64());
        /// Largest accepted Engine.IO payload in bytes
        max_payload: u64 = "V6_SOCKETIO_MAX_PAYLOAD", default(DEFAULT_MAX_PAYLOAD);
        /// Packets that may wait for one slow client before emits to it fail
        max_buffer_size: usize = "V6_SOCKETIO_MAX_BUFFER_SIZE", default(DEFAULT_MAX_BUFFER_SIZE);
        /// Initial read buffer of each websocket in bytes; grows for a larger frame
        ws_read_buffer_size: usize = "V6_SOCKETIO_WS_READ_BUFFER_SIZE",
            default(DEFAULT_WS_READ_BUFFER_SIZE);
        /// python-socketio message format on RabbitMQ: legacy (up to 5.15.0, vantage6 4.15.2)
        /// or args (5.15.1+)
        #[arg(value_parser = data_format_parser())]
        message_queue_format: DataFormat = "V6_SOCKETIO_MESSAGE_QUEUE_FORMAT",
            shown("legacy for vantage6 4.x, args for 5.x");
        /// Log format
        #[arg(value_enum)]
        log_format: LogFormat = "V6_SOCKETIO_LOG_FORMAT", default(LogFormat::Text);
        /// Name of this instance in the session-affinity cookie and the proxy's pin map:
        /// 1-128 characters of A-Z a-z 0-9 . _ : -
        instance_name: String = "V6_SOCKETIO_INSTANCE_NAME", shown("<hostname>:<port>");
        /// Set the cookie `v6_socketio_instance=<instance name>` on Engine.IO handshake
        /// responses, for the proxy's session affinity
        #[arg(value_name = "true|false", value_parser = clap::builder::BoolishValueParser::new())]
        affinity_cookie: bool = "V6_SOCKETIO_AFFINITY_COOKIE", default(true);
        /// Milliseconds between the CONNECT acknowledgement and the first event the server
        /// sends the client (sync, expired_token, invalid_token); 0 sends it at once
        #[arg(value_name = "MS")]
        first_event_delay: u64 = "V6_SOCKETIO_FIRST_EVENT_DELAY",
            default(DEFAULT_FIRST_EVENT_DELAY_MS);
        /// vantage6 generation to serve: auto (from the database schema), 4 or 5
        #[arg(value_enum)]
        vantage6_generation: GenerationSetting = "V6_SOCKETIO_VANTAGE6_GENERATION",
            default(GenerationSetting::Auto);
        /// Largest pause in seconds between two rounds of RabbitMQ reconnect attempts (the
        /// backoff starts at 0.1 s and doubles); at least 0.1
        broker_reconnect_max: f64 = "V6_SOCKETIO_BROKER_RECONNECT_MAX",
            default(DEFAULT_BROKER_RECONNECT_MAX.as_secs_f64());
        /// Events per second one client may send on average; beyond its burst the excess is
        /// dropped and counted
        client_event_rate: f64 = "V6_SOCKETIO_CLIENT_EVENT_RATE",
            default(DEFAULT_EVENT_BUDGET.rate);
        /// Events one client may send at once before client_event_rate applies
        client_event_burst: u32 = "V6_SOCKETIO_CLIENT_EVENT_BURST",
            default(DEFAULT_CLIENT_EVENT_BURST);
        /// Events of one client dropped within 10 s after which it is disconnected; 0 never
        client_flood_disconnect: u64 = "V6_SOCKETIO_CLIENT_FLOOD_DISCONNECT",
            default(DEFAULT_EVENT_BUDGET.disconnect_after);
        /// Shortest pause in seconds between two pings of a client that are written to the
        /// database; the ones in between change nothing
        ping_write_interval: f64 = "V6_SOCKETIO_PING_WRITE_INTERVAL",
            default(DEFAULT_PING_WRITE_INTERVAL.as_secs_f64());
        /// Seconds that data sent to a client may stay unacknowledged (a client that reads
        /// nothing, or is gone) before the kernel drops the connection; 0 for the kernel's
        /// default (about 15 minutes)
        tcp_user_timeout: f64 = "V6_SOCKETIO_TCP_USER_TIMEOUT",
            default(DEFAULT_TCP_USER_TIMEOUT.as_secs_f64());
        /// 5.x: the realm's public key as a PEM file, instead of fetching it from Keycloak at
        /// start-up
        keycloak_public_key_file: PathBuf = "V6_SOCKETIO_KEYCLOAK_PUBLIC_KEY_FILE", shown("none");
        /// 5.x: shortest pause in seconds between two re-fetches of the realm key after a
        /// signature failure
        keycloak_key_refresh_interval: f64 = "V6_SOCKETIO_KEYCLOAK_KEY_REFRESH_INTERVAL",
            default(DEFAULT_KEYCLOAK_KEY_REFRESH_INTERVAL.as_secs_f64());
        /// Seconds a connection may take to send a complete request head (before its first
        /// request and between two on a kept-alive connection); it is closed after that
        http_header_read_timeout: f64 = "V6_SOCKETIO_HTTP_HEADER_READ_TIMEOUT",
            default(DEFAULT_HTTP_HEADER_READ_TIMEOUT.as_secs_f64());
        /// Most TCP connections this instance keeps open at once (websockets included);
        /// further ones get 503 and are closed
        max_connections: usize = "V6_SOCKETIO_MAX_CONNECTIONS",
            shown("the open-files limit - 100");
        /// Bytes the allocator may newly hold free (freed after a burst) before they are
        /// returned to the kernel, checked every second; 0: never returned
        heap_trim_threshold: u64 = "V6_SOCKETIO_HEAP_TRIM_THRESHOLD",
            default(DEFAULT_HEAP_TRIM_THRESHOLD);
    }
    env_only {
        /// 5.x: Keycloak's address, as HQ reads it
        keycloak_url: String = "KEYCLOAK_URL";
        /// 5.x: Keycloak realm, as HQ reads it
        keycloak_realm: String = "KEYCLOAK_REALM";
    }
}

/// `emit`'s `--message-queue-format`: `serve`'s option (flag, environment
/// variable, values) with `emit`'s default, as `emit` has no database to
/// tell the generation ([`data_format`](Self::data_format)).
#[derive(Debug, Default, Clone)]
pub struct EmitOverrides {
    /// The flag or environment value.
    pub message_queue_format: Option<DataFormat>,
}

const MESSAGE_QUEUE_FORMAT: &str = "message_queue_format";

impl EmitOverrides {
    /// The format to publish in: the flag or environment, else the file's
    /// setting, else the default of the generation the file sets (`auto`:
    /// 4.x); without a file, the defaults'.
    pub fn data_format(&self, file: Option<&Config>) -> DataFormat {
        let (setting, generation) = if let Some(c) = file {
            (c.message_queue_format, c.vantage6_generation)
        } else {
            let own = OwnSettings::resolve(ServeOverrides::default(), OwnSection::default());
            (own.message_queue_format, own.vantage6_generation)
        };
        self.message_queue_format
            .or(setting)
            .unwrap_or_else(|| default_data_format(generation.without_database()))
    }
}

impl clap::FromArgMatches for EmitOverrides {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let format = matches
            .try_get_one::<DataFormat>(MESSAGE_QUEUE_FORMAT)
            .map_err(|e| clap::Error::raw(clap::error::ErrorKind::ValueValidation, e))?;
        Ok(Self {
            message_queue_format: format.copied(),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for EmitOverrides {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let serve = <ServeOverrides as clap::Args>::augment_args(clap::Command::new("serve"));
        let doc = FILE_SETTINGS
            .iter()
            .find(|(name, _)| *name == MESSAGE_QUEUE_FORMAT)
            .map_or("", |(_, doc)| doc);
        let arg = serve
            .get_arguments()
            .find(|a| a.get_id() == MESSAGE_QUEUE_FORMAT)
            .cloned();
        match arg {
            Some(arg) => cmd.arg(arg.help(help_text(
                doc,
                "from --config: args when it sets vantage6_generation: 5, else legacy",
            ))),
            None => cmd,
        }
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// The parts of a vantage6 4.x server configuration file that we read.
/// Unknown keys are ignored.
#[derive(Debug, Default, Deserialize)]
struct FileConfig {
    jwt_secret_key: Option<String>,
    uri: Option<String>,
    rabbitmq: Option<RabbitMqSection>,
    rabbitmq_uri: Option<String>,
    cors_allowed_origins: Option<CorsValue>,
    jwt_decode_algorithms: Option<Vec<String>>,
    jwt_decode_leeway: Option<f64>,
    #[serde(default)]
    v6_socketio: OwnSection,
}

#[derive(Debug, Default, Deserialize)]
struct RabbitMqSection {
    uri: Option<UriValue>,
}

/// `rabbitmq.uri`: one string (kombu's `;` list included) or a list, as kombu takes both.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum UriValue {
    One(String),
    Many(Vec<String>),
}

impl UriValue {
    /// The `;`-joined form (what the conflict check compares), `None` when empty.
    fn joined(self) -> Option<String> {
        let s = match self {
            UriValue::One(s) => s,
            UriValue::Many(list) => list.join(";"),
        };
        (!s.trim().is_empty()).then_some(s)
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CorsValue {
    One(String),
    Many(Vec<String>),
}

/// What [`Config::load`] noticed but accepted; the caller logs these once
/// logging is set up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConfigWarnings(pub Vec<String>);

/// What a configuration is loaded for: `serve` needs what verifies tokens
/// (`jwt_secret_key` or a realm key), `emit` only the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Serve,
    Emit,
}

impl Config {
    /// Reads `path` and applies `overrides`.
    pub fn load(
        path: &Path,
        overrides: &ServeOverrides,
    ) -> Result<(Config, ConfigWarnings), ConfigError> {
        Self::load_for(path, overrides, Purpose::Serve)
    }

    /// The message format on the RabbitMQ exchange: the setting, else that
    /// of `generation`'s python-socketio ([`default_data_format`]).
    pub fn message_queue_format_for(&self, generation: Vantage6Generation) -> DataFormat {
        self.message_queue_format
            .unwrap_or_else(|| default_data_format(generation))
    }

    /// Reads `path` for `emit`, which sends no tokens: a file without
    /// `jwt_secret_key` or Keycloak settings (an HQ 5.x file) is fine.
    pub fn load_for_emit(path: &Path) -> Result<(Config, ConfigWarnings), ConfigError> {
        Self::load_for(path, &ServeOverrides::default(), Purpose::Emit)
    }

    fn load_for(
        path: &Path,
        overrides: &ServeOverrides,
        purpose: Purpose,
    ) -> Result<(Config, ConfigWarnings), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml_for(&text, overrides, purpose).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses the text of a configuration file and applies `overrides`.
    pub fn from_yaml(
        text: &str,
        overrides: &ServeOverrides,
    ) -> Result<(Config, ConfigWarnings), ConfigError> {
        Self::from_yaml_for(text, overrides, Purpose::Serve)
    }

    fn from_yaml_for(
        text: &str,
        overrides: &ServeOverrides,
        purpose: Purpose,
    ) -> Result<(Config, ConfigWarnings), ConfigError> {
        let file: FileConfig = if text.trim().is_empty() {
            FileConfig::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
                path: PathBuf::new(),
                message: e.to_string(),
            })?
        };
        Self::from_parts(file, overrides, purpose)
    }

    fn from_parts(
        file: FileConfig,
        overrides: &ServeOverrides,
        purpose: Purpose,
    ) -> Result<(Config, ConfigWarnings), ConfigError> {
        let mut warnings = ConfigWarnings::default();
        let own = OwnSettings::resolve(overrides.clone(), file.v6_socketio);
        let vantage6_generation = own.vantage6_generation;
        let jwt_decode_algorithms = match file.jwt_decode_algorithms {
            None => DEFAULT_DECODE_ALGORITHMS.to_vec(),
            Some(names) => names
                .iter()
                .map(|n| rsa_algorithm(n))
                .collect::<Result<_, _>>()?,
        };
        let jwt_decode_leeway = match file.jwt_decode_leeway {
            None => DEFAULT_DECODE_LEEWAY,
            Some(v) if v.is_finite() && (0.0..1e9).contains(&v) => Duration::from_secs_f64(v),
            Some(v) => {
                return Err(ConfigError::Invalid {
                    name: "jwt_decode_leeway",
                    message: format!("{v} is not a number of seconds >= 0"),
                })
            }
        };
        let non_empty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        let keycloak = match (non_empty(&own.keycloak_url), non_empty(&own.keycloak_realm)) {
            (Some(url), Some(realm)) => Some(KeycloakRealm { url, realm }),
            _ => None,
        };
        let keycloak_key_refresh_interval = seconds(
            "keycloak_key_refresh_interval",
            own.keycloak_key_refresh_interval,
        )?;
        let can_serve_5 = keycloak.is_some()
            || own.keycloak_public_key_file.is_some()
            || purpose == Purpose::Emit;
        if vantage6_generation == GenerationSetting::V5 && !can_serve_5 {
            return Err(no_realm_key(&own));
        }
        let jwt_secret_key = file.jwt_secret_key.filter(|k| !k.is_empty());
        let jwt_secret_key = match jwt_secret_key {
            Some(k) => k,
            None if purpose == Purpose::Emit
                || vantage6_generation == GenerationSetting::V5
                || (vantage6_generation == GenerationSetting::Auto && can_serve_5) =>
            {
                String::new()
            }
            None => return Err(missing_jwt_secret_key()),
        };
        let uri = file.uri.ok_or(ConfigError::Missing(
            "uri",
            "the vantage6 database URL, e.g. sqlite:///vantage6.sqlite or postgresql://user@host/db",
        ))?;
        let database = DatabaseUrl::parse(&uri)?;

        let nested = file.rabbitmq.and_then(|r| r.uri).and_then(UriValue::joined);
        let legacy = file.rabbitmq_uri.filter(|u| !u.is_empty());
        let rabbitmq_uri = match (nested, legacy) {
            (Some(n), Some(l)) if n != l => {
                return Err(ConfigError::ConflictingRabbitMq {
                    nested: redact_uri(&n),
                    legacy: redact_uri(&l),
                })
            }
            (Some(n), _) => Some(parse_broker_uri("rabbitmq.uri", &n)?),
            (None, Some(l)) => {
                warnings.0.push(format!(
                    "legacy top-level `rabbitmq_uri` ({}) is used; vantage6 4.x ignores this key, \
                     so its own instances do not scale over RabbitMQ: move it to `rabbitmq: {{uri: ...}}`",
                    redact_uri(&l)
                ));
                Some(parse_broker_uri("rabbitmq_uri", &l)?)
            }
            (None, None) => None,
        };

        let cors_allowed_origins = match file.cors_allowed_origins {
            None => CorsOrigins::Any,
            Some(CorsValue::One(s)) if s == "*" => CorsOrigins::Any,
            Some(CorsValue::One(s)) => CorsOrigins::List(vec![s]),
            Some(CorsValue::Many(list)) if list.iter().any(|s| s == "*") => CorsOrigins::Any,
            Some(CorsValue::Many(list)) => CorsOrigins::List(list),
        };

        let path = normalize_path(own.path)?;
        let ping_interval = seconds("ping_interval", own.ping_interval)?;
        let ping_timeout = seconds("ping_timeout", own.ping_timeout)?;
        let sweep_interval = seconds("sweep_interval", own.sweep_interval)?;
        let max_payload = nonzero("max_payload", own.max_payload, "byte")?;
        let max_buffer_size = nonzero("max_buffer_size", own.max_buffer_size, "packet")?;
        let ws_read_buffer_size = nonzero("ws_read_buffer_size", own.ws_read_buffer_size, "byte")?;
        let instance_name = match own.instance_name {
            Some(name) => instance_name(name)?,
            None => default_instance_name(own.port)?,
        };
        let first_event_delay = first_event_delay(own.first_event_delay)?;
        let broker_reconnect_max = broker_reconnect_max(own.broker_reconnect_max)?;
        let event_budget = EventBudget {
            rate: seconds("client_event_rate", own.client_event_rate)?.as_secs_f64(),
            burst: f64::from(nonzero(
                "client_event_burst",
                own.client_event_burst,
                "event",
            )?),
            disconnect_after: own.client_flood_disconnect,
        };
        let ping_write_interval = seconds_or_zero("ping_write_interval", own.ping_write_interval)?;
        let tcp_user_timeout = Some(seconds_or_zero("tcp_user_timeout", own.tcp_user_timeout)?)
            .filter(|t| !t.is_zero());
        let http_header_read_timeout =
            seconds("http_header_read_timeout", own.http_header_read_timeout)?;
        let max_connections = own
            .max_connections
            .map(|n| nonzero("max_connections", n, "connection"))
            .transpose()?;
        let heap_trim_threshold = Some(own.heap_trim_threshold).filter(|&n| n > 0);

        Ok((
            Config {
                jwt_secret_key,
                database,
                rabbitmq_uri,
                broker_reconnect_max,
                cors_allowed_origins,
                listen: SocketAddr::new(own.ip, own.port),
                path,
                ping_interval,
                ping_timeout,
                sweep_interval,
                max_payload,
                max_buffer_size,
                ws_read_buffer_size,
                message_queue_format: own.message_queue_format,
                log_format: own.log_format,
                instance_name,
                affinity_cookie: own.affinity_cookie,
                first_event_delay,
                vantage6_generation,
                event_budget,
                ping_write_interval,
                tcp_user_timeout,
                jwt_decode_algorithms,
                jwt_decode_leeway,
                keycloak,
                keycloak_public_key_file: own.keycloak_public_key_file,
                keycloak_key_refresh_interval,
                http_header_read_timeout,
                max_connections,
                heap_trim_threshold,
            },
            warnings,
        ))
    }

    /// 5.x: where the first realm key comes from and where re-fetches go:
    /// the PEM file first when one is configured, Keycloak for re-fetches
    /// when `KEYCLOAK_URL`/`KEYCLOAK_REALM` are set (else the file again).
    pub fn realm_key_sources(&self) -> Option<(KeySource, KeySource)> {
        let realm = self
            .keycloak
            .as_ref()
            .map(|k| KeySource::realm(&k.url, &k.realm));
        let file = self.keycloak_public_key_file.clone().map(KeySource::File);
        match (file, realm) {
            (Some(file), Some(realm)) => Some((file, realm)),
            (Some(file), None) => Some((file.clone(), file)),
            (None, Some(realm)) => Some((realm.clone(), realm)),
            (None, None) => None,
        }
    }
}

/// The error for a 4.x setup without `jwt_secret_key`.
pub fn missing_jwt_secret_key() -> ConfigError {
    ConfigError::Missing(
        "jwt_secret_key",
        "vantage6 generates a random one per process when it is absent, \
         so its tokens could never be verified here; set the same value in both",
    )
}

/// The error for a 5.x setup with no way to get the realm key; names what
/// is half set.
fn no_realm_key(own: &OwnSettings) -> ConfigError {
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
    match (set(&own.keycloak_url), set(&own.keycloak_realm)) {
        (true, false) => ConfigError::Missing(
            "KEYCLOAK_REALM",
            "KEYCLOAK_URL is set; vantage6 5.x needs both to fetch the realm key",
        ),
        (false, true) => ConfigError::Missing(
            "KEYCLOAK_URL",
            "KEYCLOAK_REALM is set; vantage6 5.x needs both to fetch the realm key",
        ),
        _ => realm_key_missing(),
    }
}

/// The error for a 5.x setup with neither Keycloak nor a key file.
pub fn realm_key_missing() -> ConfigError {
    ConfigError::Missing(
        "keycloak_public_key_file",
        "vantage6 5.x tokens are checked with the Keycloak realm key: set KEYCLOAK_URL and \
         KEYCLOAK_REALM (as for HQ) or `v6_socketio.keycloak_public_key_file`",
    )
}

/// An entry of `jwt_decode_algorithms`: the realm key is an RSA key, so
/// only RSA algorithms can verify with it.
fn rsa_algorithm(name: &str) -> Result<jsonwebtoken::Algorithm, ConfigError> {
    use jsonwebtoken::Algorithm::{PS256, PS384, PS512, RS256, RS384, RS512};
    match name {
        "RS256" => Ok(RS256),
        "RS384" => Ok(RS384),
        "RS512" => Ok(RS512),
        "PS256" => Ok(PS256),
        "PS384" => Ok(PS384),
        "PS512" => Ok(PS512),
        other => Err(ConfigError::Invalid {
            name: "jwt_decode_algorithms",
            message: format!(
                "{other:?} cannot verify with the Keycloak realm's RSA key \
                 (use RS256, RS384, RS512, PS256, PS384 or PS512)"
            ),
        }),
    }
}

/// `<hostname>:<port>`, the hostname from `HOSTNAME` (set by Docker and
/// most shells), else `/proc/sys/kernel/hostname` (Linux), else `localhost`;
/// a hostname that would not make a valid [`InstanceName`] is skipped.
fn default_instance_name(port: u16) -> Result<InstanceName, ConfigError> {
    let suffix = format!(":{port}");
    let usable = |host: String| {
        let host = host.trim();
        (host.len() + suffix.len() <= MAX_INSTANCE_NAME_LEN && is_valid_instance_name(host))
            .then(|| host.to_owned())
    };
    let host = std::env::var("HOSTNAME")
        .ok()
        .and_then(usable)
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .and_then(usable)
        })
        .unwrap_or_else(|| "localhost".to_owned());
    instance_name(format!("{host}{suffix}"))
}

fn instance_name(name: String) -> Result<InstanceName, ConfigError> {
    InstanceName::new(name).map_err(|e| ConfigError::Invalid {
        name: "instance_name",
        message: e.to_string(),
    })
}

fn seconds(name: &'static str, value: f64) -> Result<Duration, ConfigError> {
    match value {
        v if v.is_finite() && v > 0.0 && v < 1e9 => Ok(Duration::from_secs_f64(v)),
        v => Err(ConfigError::Invalid {
            name,
            message: format!("{v} is not a positive number of seconds"),
        }),
    }
}

/// Like [`seconds`], and 0 (= none) allowed.
fn seconds_or_zero(name: &'static str, value: f64) -> Result<Duration, ConfigError> {
    if value == 0.0 {
        return Ok(Duration::ZERO);
    }
    seconds(name, value).map_err(|_| ConfigError::Invalid {
        name,
        message: format!("{value} is not 0 or a positive number of seconds"),
    })
}

fn broker_reconnect_max(secs: f64) -> Result<Duration, ConfigError> {
    let d = seconds("broker_reconnect_max", secs)?;
    if d < MIN_BROKER_RECONNECT_MAX {
        return Err(ConfigError::Invalid {
            name: "broker_reconnect_max",
            message: format!(
                "{secs} s is less than {} s",
                MIN_BROKER_RECONNECT_MAX.as_secs_f64()
            ),
        });
    }
    Ok(d)
}

fn first_event_delay(ms: u64) -> Result<Duration, ConfigError> {
    let delay = Duration::from_millis(ms);
    if delay > MAX_FIRST_EVENT_DELAY {
        return Err(ConfigError::Invalid {
            name: "first_event_delay",
            message: format!(
                "{ms} ms is more than {} ms",
                MAX_FIRST_EVENT_DELAY.as_millis()
            ),
        });
    }
    Ok(delay)
}

fn nonzero<T: Copy + PartialEq + Default>(
    name: &'static str,
    value: T,
    unit: &str,
) -> Result<T, ConfigError> {
    if value == T::default() {
        return Err(ConfigError::Invalid {
            name,
            message: format!("must be at least 1 {unit}"),
        });
    }
    Ok(value)
}

fn normalize_path(path: String) -> Result<String, ConfigError> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() || trimmed.contains(['?', '#', ' ']) {
        return Err(ConfigError::Invalid {
            name: "path",
            message: format!("{path:?} is not a usable URL path such as /socket.io/"),
        });
    }
    Ok(format!("/{trimmed}/"))
}

/// `rabbitmq.uri` with kombu's rules, as vantage6's REST API and Flask-SocketIO read it
/// (a `;`-separated fail-over list included).
fn parse_broker_uri(name: &'static str, uri: &str) -> Result<BrokerUris, ConfigError> {
    BrokerUris::parse(uri).map_err(|source| ConfigError::RabbitMqUri { name, source })
}

/// Hides the password of a URI for logs and error messages.
pub fn redact_uri(uri: &str) -> String {
    if uri.contains(';') {
        return uri
            .split(';')
            .map(|u| redact_uri(u.trim()))
            .collect::<Vec<_>>()
            .join(";");
    }
    match url::Url::parse(uri) {
        Ok(mut url) if url.password().is_some() => {
            // Cannot fail for URLs that already have a password.
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(url) => url.to_string(),
        Err(_) => "<unparsable URI>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "jwt_secret_key: s\nuri: sqlite:///x.sqlite\n";

    #[test]
    fn defaults_apply() {
        let (c, w) = Config::from_yaml(MINIMAL, &ServeOverrides::default()).unwrap();
        assert_eq!(c.listen.port(), DEFAULT_PORT);
        assert_eq!(c.path, "/socket.io/");
        assert_eq!(c.ping_timeout, DEFAULT_PING_TIMEOUT);
        assert_eq!(c.cors_allowed_origins, CorsOrigins::Any);
        assert!(c.rabbitmq_uri.is_none());
        assert!(
            c.instance_name.as_str().ends_with(":7602"),
            "{}",
            c.instance_name
        );
        assert!(c.affinity_cookie);
        assert_eq!(c.first_event_delay, DEFAULT_FIRST_EVENT_DELAY);
        assert_eq!(c.ws_read_buffer_size, DEFAULT_WS_READ_BUFFER_SIZE);
        assert_eq!(c.http_header_read_timeout, DEFAULT_HTTP_HEADER_READ_TIMEOUT);
        assert_eq!(c.max_connections, None);
        assert!(w.0.is_empty());
    }

    #[test]
    fn sizes_must_not_be_zero() {
        for name in [
            "max_payload",
            "max_buffer_size",
            "ws_read_buffer_size",
            "max_connections",
        ] {
            let yaml = format!("{MINIMAL}v6_socketio: {{{name}: 0}}\n");
            let err = Config::from_yaml(&yaml, &ServeOverrides::default()).expect_err(&yaml);
            assert!(
                matches!(err, ConfigError::Invalid { name: n, .. } if n == name),
                "{name}: {err}"
            );
            let yaml = format!("{MINIMAL}v6_socketio: {{{name}: 1}}\n");
            Config::from_yaml(&yaml, &ServeOverrides::default()).expect(&yaml);
        }
        let (c, _) = Config::from_yaml(
            &format!("{MINIMAL}v6_socketio: {{ws_read_buffer_size: 8192}}\n"),
            &ServeOverrides::default(),
        )
        .unwrap();
        assert_eq!(c.ws_read_buffer_size, 8192);
    }

    /// The `serve` flags as clap builds them.
    fn serve_command() -> clap::Command {
        <ServeOverrides as clap::Args>::augment_args(clap::Command::new("serve"))
    }

    /// A setting's argument in `command`.
    fn arg<'a>(command: &'a clap::Command, name: &str) -> &'a clap::Arg {
        command
            .get_arguments()
            .find(|a| a.get_id() == name)
            .unwrap_or_else(|| panic!("no argument {name}"))
    }

    /// The text between the first two backticks of a table cell.
    fn code(cell: &str) -> &str {
        cell.split('`')
            .nth(1)
            .unwrap_or_else(|| panic!("no code in {cell:?}"))
    }

    /// The rows of the README's settings table: setting, flag, environment,
    /// default.
    fn readme_settings() -> Vec<Vec<&'static str>> {
        let readme = include_str!("../README.md");
        let start = readme
            .find("| setting | flag | environment | default |")
            .expect("the README's settings table");
        readme[start..]
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
            .collect()
    }

    #[test]
    fn readme_documents_each_setting_as_defined() {
        let command = serve_command();
        let rows = readme_settings();
        let keys: Vec<&str> = rows.iter().map(|r| code(r[0])).collect();
        let names: Vec<&str> = FILE_SETTINGS.iter().map(|(name, _)| *name).collect();
        assert_eq!(keys, names, "the README lists every file setting, in order");
        for row in &rows {
            let name = code(row[0]);
            let arg = arg(&command, name);
            let flag = format!("--{}", name.replace('_', "-"));
            assert_eq!(arg.get_long().map(|l| format!("--{l}")), Some(flag.clone()));
            assert_eq!(
                code(row[1]).split(' ').next(),
                Some(flag.as_str()),
                "{name}"
            );
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(code(row[2])),
                "{name}"
            );
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let default = help
                .split_once("[default: ")
                .and_then(|(_, d)| d.strip_suffix(']'))
                .unwrap_or_else(|| panic!("--help of {name} shows no default: {help:?}"));
            let documented = row[3].replace('`', "");
            assert!(
                documented.starts_with(default),
                "{name}: the README's default {documented:?} is not {default:?}"
            );
        }
        // HQ's variables: a flag and the variable, no file key, documented.
        let readme = include_str!("../README.md");
        for (name, env) in [
            ("keycloak_url", "KEYCLOAK_URL"),
            ("keycloak_realm", "KEYCLOAK_REALM"),
        ] {
            let arg = arg(&command, name);
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(env));
            let flag = format!("`--{}`", name.replace('_', "-"));
            assert!(
                readme.contains(&flag) && readme.contains(&format!("`{env}`")),
                "{name}"
            );
            let yaml = format!("v6_socketio: {{{name}: x}}\n");
            let err = serde_yaml_ng::from_str::<FileConfig>(&yaml).expect_err(&yaml);
            assert!(err.to_string().contains("unknown field"), "{err}");
        }
        // Nothing else.
        let mut all: Vec<&str> = command
            .get_arguments()
            .map(|a| a.get_id().as_str())
            .collect();
        all.sort_unstable();
        let mut expected = names.clone();
        expected.extend(["keycloak_url", "keycloak_realm"]);
        expected.sort_unstable();
        assert_eq!(all, expected);
    }

    /// Two values of each file setting, neither its default.
    const SAMPLES: &[(&str, &str, &str)] = &[
        ("ip", "127.0.0.2", "127.0.0.3"),
        ("port", "7001", "7002"),
        ("path", "/a/", "/b/"),
        ("ping_interval", "1", "2"),
        ("ping_timeout", "1", "2"),
        ("sweep_interval", "1", "2"),
        ("max_payload", "1", "2"),
        ("max_buffer_size", "1", "2"),
        ("ws_read_buffer_size", "1", "2"),
        ("message_queue_format", "args", "legacy"),
        ("log_format", "json", "text"),
        ("instance_name", "a", "b"),
        ("affinity_cookie", "false", "true"),
        ("first_event_delay", "1", "2"),
        ("vantage6_generation", "4", "5"),
        ("broker_reconnect_max", "3", "4"),
        ("client_event_rate", "1", "2"),
        ("client_event_burst", "1", "2"),
        ("client_flood_disconnect", "1", "2"),
        ("ping_write_interval", "1", "2"),
        ("tcp_user_timeout", "1", "2"),
        ("keycloak_public_key_file", "/a.pem", "/b.pem"),
        ("keycloak_key_refresh_interval", "1", "2"),
        ("http_header_read_timeout", "1", "2"),
        ("max_connections", "1", "2"),
        ("heap_trim_threshold", "1", "2"),
    ];

    /// Each file key and each flag sets its own setting, the flag over the
    /// file.
    #[test]
    fn file_key_and_flag_of_each_setting() {
        use clap::FromArgMatches as _;
        let names: Vec<&str> = FILE_SETTINGS.iter().map(|(name, _)| *name).collect();
        let sampled: Vec<&str> = SAMPLES.iter().map(|(name, _, _)| *name).collect();
        assert_eq!(sampled, names, "a sample for every setting");
        let resolve = |flag: Option<(&str, &str)>, file: Option<(&str, &str)>| {
            let mut argv = vec!["serve".to_owned()];
            if let Some((name, value)) = flag {
                argv.extend([format!("--{}", name.replace('_', "-")), value.to_owned()]);
            }
            let matches = serve_command()
                .no_binary_name(false)
                .try_get_matches_from(argv)
                .expect("flags");
            let flags = ServeOverrides::from_arg_matches(&matches).expect("overrides");
            let yaml = match file {
                Some((name, value)) => format!("v6_socketio: {{{name}: {value}}}\n"),
                None => "v6_socketio: {}\n".to_owned(),
            };
            let file: FileConfig = serde_yaml_ng::from_str(&yaml).expect(&yaml);
            format!("{:?}", OwnSettings::resolve(flags, file.v6_socketio))
        };
        let defaults = resolve(None, None);
        for &(name, a, b) in SAMPLES {
            let from_file = resolve(None, Some((name, a)));
            assert_ne!(from_file, defaults, "file key {name}");
            let from_flag = resolve(Some((name, b)), None);
            assert_ne!(from_flag, from_file, "flag of {name}");
            assert_eq!(
                resolve(Some((name, b)), Some((name, a))),
                from_flag,
                "{name}: flag > file"
            );
        }
    }

    #[test]
    fn vantage6_generation_in_the_file_as_a_number_or_a_string() {
        for (text, expected) in [
            ("5", GenerationSetting::V5),
            ("'5'", GenerationSetting::V5),
            ("4", GenerationSetting::V4),
            ("' 4 '", GenerationSetting::V4),
            ("auto", GenerationSetting::Auto),
        ] {
            let yaml = format!("v6_socketio: {{vantage6_generation: {text}}}\n");
            let file: FileConfig = serde_yaml_ng::from_str(&yaml).expect(&yaml);
            assert_eq!(
                file.v6_socketio.vantage6_generation,
                Some(expected),
                "{text}"
            );
        }
        for text in ["6", "'v5'", "4.0", "[5]", "-4"] {
            let yaml = format!("v6_socketio: {{vantage6_generation: {text}}}\n");
            let err = serde_yaml_ng::from_str::<FileConfig>(&yaml).expect_err(&yaml);
            assert!(err.to_string().contains("vantage6_generation"), "{err}");
        }
    }

    /// `emit` shares `serve`'s option and the generation rule, with the
    /// file's generation setting instead of the database.
    #[test]
    fn emit_message_queue_format() {
        use clap::FromArgMatches as _;
        let emit = <EmitOverrides as clap::Args>::augment_args(clap::Command::new("emit"));
        let serve = serve_command();
        let (e, s) = (
            arg(&emit, MESSAGE_QUEUE_FORMAT),
            arg(&serve, MESSAGE_QUEUE_FORMAT),
        );
        assert_eq!(e.get_long(), s.get_long());
        assert_eq!(e.get_env(), s.get_env());
        assert_eq!(e.get_possible_values(), s.get_possible_values());
        let help = e.get_help().map(ToString::to_string).unwrap_or_default();
        assert!(
            help.ends_with(
                "[default: from --config: args when it sets vantage6_generation: 5, else legacy]"
            ),
            "{help}"
        );
        let parse = |argv: &[&str]| {
            let m = emit.clone().try_get_matches_from(argv).expect("flags");
            EmitOverrides::from_arg_matches(&m).expect("emit overrides")
        };
        let none = parse(&["emit"]);
        let args = parse(&["emit", "--message-queue-format", "args"]);
        let legacy = parse(&["emit", "--message-queue-format", "legacy"]);
        assert!(emit
            .clone()
            .try_get_matches_from(["emit", "--message-queue-format", "value"])
            .is_err());
        let file = |own: &str| {
            Config::from_yaml_for(
                &format!("uri: sqlite:///x\nv6_socketio: {own}\n"),
                &ServeOverrides::default(),
                Purpose::Emit,
            )
            .expect(own)
            .0
        };
        let v4 = file("{}");
        let v5 = file("{vantage6_generation: 5}");
        let v5_legacy = file("{vantage6_generation: 5, message_queue_format: legacy}");
        for (flags, config, expected) in [
            (&none, None, DataFormat::Legacy),
            (&none, Some(&v4), DataFormat::Legacy),
            (&none, Some(&v5), DataFormat::Args),
            (&none, Some(&v5_legacy), DataFormat::Legacy),
            (&args, None, DataFormat::Args),
            (&args, Some(&v5_legacy), DataFormat::Args),
            (&legacy, Some(&v5), DataFormat::Legacy),
        ] {
            assert_eq!(flags.data_format(config), expected, "{flags:?} {config:?}");
        }
    }

    #[test]
    fn path_is_normalized() {
        assert_eq!(normalize_path("socket.io".into()).unwrap(), "/socket.io/");
        assert!(normalize_path("/".into()).is_err());
    }

    #[test]
    fn redacts_password() {
        assert_eq!(
            redact_uri("amqp://u:secret@h:5672/v"),
            "amqp://u:***@h:5672/v"
        );
    }
}
