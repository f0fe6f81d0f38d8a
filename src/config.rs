//! Configuration: one [`Config`], loaded once from a vantage6 4.x server
//! configuration file, our own `v6_socketio` section in that file,
//! environment variables and command-line flags, and validated up front.
//!
//! Precedence for our own settings is flag > environment > file > default.
//! clap resolves "flag > environment" (see [`ServeOverrides`]); this module
//! layers the result over the file and the defaults.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use socketioxide_amqp::{BrokerUri, DataFormat, UriError};

use crate::{
    affinity::{is_valid_instance_name, InstanceName, MAX_INSTANCE_NAME_LEN},
    auth::{DEFAULT_DECODE_ALGORITHMS, DEFAULT_DECODE_LEEWAY},
    database_url::{DatabaseUrl, DatabaseUrlError},
    generation::Vantage6Generation,
    keycloak::KeySource,
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
/// Default hold of a connection's first server-initiated event (`sync`,
/// `expired_token`, `invalid_token`) after the CONNECT acknowledgement.
/// python-socketio's client handles each packet in a thread of its own and
/// finishes setting up its connection after the server answered; vantage6
/// answers after tens of milliseconds, so its nodes never notice. See the
/// README ("first_event_delay").
pub const DEFAULT_FIRST_EVENT_DELAY: Duration = Duration::from_millis(50);
/// Largest accepted `first_event_delay`.
pub const MAX_FIRST_EVENT_DELAY: Duration = Duration::from_secs(10);
/// Default Socket.IO path, as Flask-SocketIO.
pub const DEFAULT_PATH: &str = "/socket.io/";
/// Default listen port (vantage6's REST API uses 7601 in its own examples;
/// we default one above so both can run side by side).
pub const DEFAULT_PORT: u16 = 7602;
/// Default shortest pause between two re-fetches of the Keycloak realm key.
pub const DEFAULT_KEYCLOAK_KEY_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

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

/// Which vantage6 generation to serve (`vantage6_generation`).
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
    fn parse(name: &'static str, text: &str) -> Result<Self, ConfigError> {
        match text.trim() {
            "auto" => Ok(Self::Auto),
            "4" => Ok(Self::V4),
            "5" => Ok(Self::V5),
            other => Err(ConfigError::Invalid {
                name,
                message: format!("{other:?} is not one of auto, 4, 5"),
            }),
        }
    }
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
    /// RabbitMQ URI for cross-instance delivery (`rabbitmq.uri` or legacy `rabbitmq_uri`).
    pub rabbitmq_uri: Option<BrokerUri>,
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
}

/// Settings that flags or environment variables may override. Each field is
/// `None` when neither was given.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeOverrides {
    /// IP address to listen on [default: 0.0.0.0]
    #[arg(long, env = "V6_SOCKETIO_IP")]
    pub ip: Option<IpAddr>,
    /// Port to listen on [default: 7602]
    #[arg(long, env = "V6_SOCKETIO_PORT")]
    pub port: Option<u16>,
    /// Socket.IO path [default: /socket.io/]
    #[arg(long, env = "V6_SOCKETIO_PATH")]
    pub path: Option<String>,
    /// Engine.IO ping interval in seconds [default: 25]
    #[arg(long, env = "V6_SOCKETIO_PING_INTERVAL")]
    pub ping_interval: Option<f64>,
    /// Engine.IO ping timeout in seconds [default: 60]
    #[arg(long, env = "V6_SOCKETIO_PING_TIMEOUT")]
    pub ping_timeout: Option<f64>,
    /// Seconds between two sweeps that mark silent nodes offline [default: 65]
    #[arg(long, env = "V6_SOCKETIO_SWEEP_INTERVAL")]
    pub sweep_interval: Option<f64>,
    /// Largest accepted Engine.IO payload in bytes [default: 1000000]
    #[arg(long, env = "V6_SOCKETIO_MAX_PAYLOAD")]
    pub max_payload: Option<u64>,
    /// Packets that may wait for one slow client before emits to it fail [default: 4096]
    #[arg(long, env = "V6_SOCKETIO_MAX_BUFFER_SIZE")]
    pub max_buffer_size: Option<usize>,
    /// python-socketio message format on RabbitMQ: legacy (up to 5.15.0, vantage6 4.15.2) or args (5.15.1+, vantage6 5.x) [default: legacy when serving vantage6 4.x, args for 5.x]
    #[arg(long, env = "V6_SOCKETIO_MESSAGE_QUEUE_FORMAT", value_parser = parse_data_format)]
    pub message_queue_format: Option<DataFormat>,
    /// Log format [default: text]
    #[arg(long, env = "V6_SOCKETIO_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Name of this instance in the session-affinity cookie and the proxy's pin map: 1-128 characters of A-Z a-z 0-9 . _ : - [default: <hostname>:<port>]
    #[arg(long, env = "V6_SOCKETIO_INSTANCE_NAME")]
    pub instance_name: Option<String>,
    /// Set the cookie `v6_socketio_instance=<instance name>` on Engine.IO handshake responses, for the proxy's session affinity [default: true]
    #[arg(
        long,
        env = "V6_SOCKETIO_AFFINITY_COOKIE",
        value_name = "true|false",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub affinity_cookie: Option<bool>,
    /// Milliseconds between the CONNECT acknowledgement and the first event the server sends the client (sync, expired_token, invalid_token); 0 sends it at once [default: 50]
    #[arg(long, env = "V6_SOCKETIO_FIRST_EVENT_DELAY", value_name = "MS")]
    pub first_event_delay: Option<u64>,
    /// vantage6 generation to serve: auto (from the database schema), 4 or 5 [default: auto]
    #[arg(long, env = "V6_SOCKETIO_VANTAGE6_GENERATION", value_enum)]
    pub vantage6_generation: Option<GenerationSetting>,
    /// 5.x: Keycloak's address, as HQ reads it [env: KEYCLOAK_URL]
    #[arg(long, env = "KEYCLOAK_URL", hide_env = true)]
    pub keycloak_url: Option<String>,
    /// 5.x: Keycloak realm, as HQ reads it [env: KEYCLOAK_REALM]
    #[arg(long, env = "KEYCLOAK_REALM", hide_env = true)]
    pub keycloak_realm: Option<String>,
    /// 5.x: the realm's public key as a PEM file, instead of fetching it from Keycloak at start-up
    #[arg(long, env = "V6_SOCKETIO_KEYCLOAK_PUBLIC_KEY_FILE")]
    pub keycloak_public_key_file: Option<PathBuf>,
    /// 5.x: shortest pause in seconds between two re-fetches of the realm key after a signature failure [default: 60]
    #[arg(long, env = "V6_SOCKETIO_KEYCLOAK_KEY_REFRESH_INTERVAL")]
    pub keycloak_key_refresh_interval: Option<f64>,
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
    uri: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CorsValue {
    One(String),
    Many(Vec<String>),
}

/// Our own section, `v6_socketio:` in the vantage6 file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnSection {
    ip: Option<IpAddr>,
    port: Option<u16>,
    path: Option<String>,
    ping_interval: Option<f64>,
    ping_timeout: Option<f64>,
    sweep_interval: Option<f64>,
    max_payload: Option<u64>,
    max_buffer_size: Option<usize>,
    message_queue_format: Option<DataFormat>,
    log_format: Option<LogFormat>,
    instance_name: Option<String>,
    affinity_cookie: Option<bool>,
    first_event_delay: Option<u64>,
    vantage6_generation: Option<serde_yaml_ng::Value>,
    keycloak_public_key_file: Option<PathBuf>,
    keycloak_key_refresh_interval: Option<f64>,
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

    /// The message format on the RabbitMQ exchange: the setting, else the
    /// python-socketio of `generation`'s server (vantage6 4.15.2 runs
    /// python-socketio 5.14, `legacy`; HQ 5.0.3 runs 5.16.2, `args`).
    pub fn message_queue_format_for(&self, generation: Vantage6Generation) -> DataFormat {
        self.message_queue_format.unwrap_or(match generation {
            Vantage6Generation::V4 => DataFormat::Legacy,
            Vantage6Generation::V5 => DataFormat::Args,
        })
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
        let own = file.v6_socketio;
        let vantage6_generation = match (&overrides.vantage6_generation, &own.vantage6_generation) {
            (Some(g), _) => *g,
            (None, None) => GenerationSetting::Auto,
            (None, Some(v)) => GenerationSetting::parse(
                "vantage6_generation",
                &match v {
                    serde_yaml_ng::Value::String(s) => s.clone(),
                    serde_yaml_ng::Value::Number(n) => n.to_string(),
                    other => format!("{other:?}"),
                },
            )?,
        };
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
        let keycloak = match (
            non_empty(&overrides.keycloak_url),
            non_empty(&overrides.keycloak_realm),
        ) {
            (Some(url), Some(realm)) => Some(KeycloakRealm { url, realm }),
            _ => None,
        };
        let keycloak_public_key_file = overrides
            .keycloak_public_key_file
            .clone()
            .or(own.keycloak_public_key_file);
        let keycloak_key_refresh_interval = seconds(
            "keycloak_key_refresh_interval",
            overrides
                .keycloak_key_refresh_interval
                .or(own.keycloak_key_refresh_interval),
            DEFAULT_KEYCLOAK_KEY_REFRESH_INTERVAL,
        )?;
        let can_serve_5 =
            keycloak.is_some() || keycloak_public_key_file.is_some() || purpose == Purpose::Emit;
        if vantage6_generation == GenerationSetting::V5 && !can_serve_5 {
            return Err(no_realm_key(overrides));
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

        let nested = file.rabbitmq.and_then(|r| r.uri).filter(|u| !u.is_empty());
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

        let ip = overrides
            .ip
            .or(own.ip)
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let port = overrides.port.or(own.port).unwrap_or(DEFAULT_PORT);
        let path = normalize_path(
            overrides
                .path
                .clone()
                .or(own.path)
                .unwrap_or_else(|| DEFAULT_PATH.to_owned()),
        )?;
        let ping_interval = seconds(
            "ping_interval",
            overrides.ping_interval.or(own.ping_interval),
            DEFAULT_PING_INTERVAL,
        )?;
        let ping_timeout = seconds(
            "ping_timeout",
            overrides.ping_timeout.or(own.ping_timeout),
            DEFAULT_PING_TIMEOUT,
        )?;
        let sweep_interval = seconds(
            "sweep_interval",
            overrides.sweep_interval.or(own.sweep_interval),
            DEFAULT_SWEEP_INTERVAL,
        )?;
        let max_payload = nonzero(
            "max_payload",
            overrides
                .max_payload
                .or(own.max_payload)
                .unwrap_or(DEFAULT_MAX_PAYLOAD),
            "byte",
        )?;
        let max_buffer_size = nonzero(
            "max_buffer_size",
            overrides
                .max_buffer_size
                .or(own.max_buffer_size)
                .unwrap_or(DEFAULT_MAX_BUFFER_SIZE),
            "packet",
        )?;
        let message_queue_format = overrides.message_queue_format.or(own.message_queue_format);
        let log_format = overrides
            .log_format
            .or(own.log_format)
            .unwrap_or(LogFormat::Text);
        let instance_name = match overrides.instance_name.clone().or(own.instance_name) {
            Some(name) => instance_name(name)?,
            None => default_instance_name(port)?,
        };
        let affinity_cookie = overrides
            .affinity_cookie
            .or(own.affinity_cookie)
            .unwrap_or(true);
        let first_event_delay =
            first_event_delay(overrides.first_event_delay.or(own.first_event_delay))?;

        Ok((
            Config {
                jwt_secret_key,
                database,
                rabbitmq_uri,
                cors_allowed_origins,
                listen: SocketAddr::new(ip, port),
                path,
                ping_interval,
                ping_timeout,
                sweep_interval,
                max_payload,
                max_buffer_size,
                message_queue_format,
                log_format,
                instance_name,
                affinity_cookie,
                first_event_delay,
                vantage6_generation,
                jwt_decode_algorithms,
                jwt_decode_leeway,
                keycloak,
                keycloak_public_key_file,
                keycloak_key_refresh_interval,
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

/// `--message-queue-format`: the adapter's names, `legacy` and `args`.
pub fn parse_data_format(name: &str) -> Result<DataFormat, socketioxide_amqp::UnknownDataFormat> {
    name.parse()
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
fn no_realm_key(overrides: &ServeOverrides) -> ConfigError {
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
    match (set(&overrides.keycloak_url), set(&overrides.keycloak_realm)) {
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

fn seconds(
    name: &'static str,
    value: Option<f64>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if v.is_finite() && v > 0.0 && v < 1e9 => Ok(Duration::from_secs_f64(v)),
        Some(v) => Err(ConfigError::Invalid {
            name,
            message: format!("{v} is not a positive number of seconds"),
        }),
    }
}

fn first_event_delay(ms: Option<u64>) -> Result<Duration, ConfigError> {
    let Some(ms) = ms else {
        return Ok(DEFAULT_FIRST_EVENT_DELAY);
    };
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

/// `rabbitmq.uri` with kombu's rules, as vantage6's REST API and Flask-SocketIO read it.
fn parse_broker_uri(name: &'static str, uri: &str) -> Result<BrokerUri, ConfigError> {
    BrokerUri::parse(uri).map_err(|source| ConfigError::RabbitMqUri { name, source })
}

/// Hides the password of a URI for logs and error messages.
pub fn redact_uri(uri: &str) -> String {
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
        assert!(w.0.is_empty());
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
