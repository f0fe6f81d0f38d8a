//! Broker URIs, read the way kombu reads them.
//!
//! python-socketio's `KombuManager` (and so Flask-SocketIO, vantage6's REST API and every Python
//! process on the exchange) hands its `url` to kombu, whose rules differ from the AMQP URI
//! specification that lapin follows. The same string must reach the same broker and virtual host
//! from both sides, so [`BrokerUri`] parses kombu's way and hands lapin a URI already taken apart.
//!
//! | URI | virtual host | note |
//! |---|---|---|
//! | `amqp://h`, `amqp://h:5672`, `amqp://h:5672/` | `/` | an empty path is kombu's default vhost (lapin: `""`) |
//! | `amqp://h:5672//`, `amqp://h:5672/%2f` | `/` | |
//! | `amqp://h:5672/vantage6` | `vantage6` | |
//! | `amqp://h/a%20b`, `amqp://h/a/b` | `a b`, `a/b` | the path after its first `/`, percent-decoded |
//!
//! * Schemes: `amqp`, `pyamqp` and `librabbitmq` (plain), `amqps` (TLS; default port 5671).
//! * User and password are percent-decoded; a missing one is `guest`, as kombu's default.
//!   A missing host is `localhost`, a missing port 5672 (5671 with TLS).
//! * Query options kombu accepts and lapin can honour: `heartbeat` (seconds; `0` turns heartbeats
//!   off; without it the broker's proposal is used, 60 s on RabbitMQ), `connect_timeout` (seconds),
//!   `ssl` (`true`/`1`/`yes`/`on` turns TLS on), `ssl_ca_certs` (PEM file of trusted CAs),
//!   `ssl_certfile` + `ssl_keyfile` (client certificate and PKCS#8 key, PEM), `ssl_cert_reqs`
//!   (only `CERT_REQUIRED` / `required`: verification cannot be turned off), `login_method`
//!   (`PLAIN`, `AMQPLAIN`, `EXTERNAL`). Any other option is refused, as kombu refuses options it
//!   does not know.
//! * Several URIs (a RabbitMQ cluster): [`BrokerUris`], kombu's fail-over list. kombu splits its
//!   `hostname` at every `;` (`amqp://a//;amqp://b//`) and also takes a list; each entry is a whole
//!   URI read with the rules above (kombu's `switch` parses each alternate on its own). Blanks
//!   around an entry are dropped; an empty entry is refused. A single [`BrokerUri`] refuses `;`.
//!
//! ```
//! use socketioxide_amqp::BrokerUri;
//!
//! let uri: BrokerUri = "amqp://guest:s%40cret@rabbit:5672/?heartbeat=10".parse()?;
//! assert_eq!(uri.vhost(), "/");
//! assert_eq!(uri.password(), "s@cret");
//! assert_eq!(uri.heartbeat(), Some(10));
//! assert_eq!(uri.to_string(), "amqp://guest:***@rabbit:5672/?heartbeat=10");
//! # Ok::<(), socketioxide_amqp::UriError>(())
//! ```

use std::{fmt, str::FromStr, time::Duration};

use lapin::{
    tcp::{OwnedIdentity, OwnedTLSConfig},
    uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo, SASLMechanism},
};

/// Why a broker URI cannot be used. The [`Display`](fmt::Display) is one line and never shows the
/// password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    /// No `scheme://`.
    #[error("`{uri}` is not a URI (expected amqp://user:password@host:port/vhost)")]
    NotAUri {
        /// The URI, password hidden.
        uri: String,
    },
    /// A scheme other than `amqp`, `amqps`, `pyamqp`, `librabbitmq`.
    #[error("`{uri}`: scheme `{scheme}` is not an AMQP transport (use amqp:// or amqps://)")]
    Scheme {
        /// The URI, password hidden.
        uri: String,
        /// The scheme found.
        scheme: String,
    },
    /// kombu's `;`-separated fail-over list where one URI is expected (use [`BrokerUris`]).
    #[error("`{uri}`: several broker URIs separated by `;` where one is expected")]
    SeveralUris {
        /// The URI, password hidden.
        uri: String,
    },
    /// A fail-over list with an empty entry (`a;;b`, a trailing `;`) or no entry at all.
    #[error("`{uri}`: empty broker URI in the list (entries are separated by `;`)")]
    EmptyUri {
        /// The list, passwords hidden.
        uri: String,
    },
    /// A port that is not a number from 0 to 65535, or a malformed `[IPv6]` host.
    #[error("`{uri}`: invalid host or port `{hostport}`")]
    HostPort {
        /// The URI, password hidden.
        uri: String,
        /// The host and port part.
        hostport: String,
    },
    /// A query option with a value that cannot be used.
    #[error("`{uri}`: invalid value for `{option}`: {reason}")]
    Option {
        /// The URI, password hidden.
        uri: String,
        /// The option's name.
        option: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A query option kombu does not know, or one lapin has no equivalent for.
    #[error("`{uri}`: unsupported query option `{option}` (supported: heartbeat, connect_timeout, ssl, ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_cert_reqs, login_method)")]
    UnknownOption {
        /// The URI, password hidden.
        uri: String,
        /// The option's name.
        option: String,
    },
    /// A file named by an `ssl_*` option could not be read.
    #[error("`{uri}`: cannot read `{option}` file {path}: {reason}")]
    TlsFile {
        /// The URI, password hidden.
        uri: String,
        /// The option's name.
        option: String,
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
}

/// A RabbitMQ address as kombu understands it (see the [module docs](self)).
///
/// `Display` and `Debug` hide the password.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct BrokerUri {
    amqp: AMQPUri,
    tls: OwnedTLSConfig,
    connect_timeout: Option<Duration>,
    redacted: String,
}

impl BrokerUri {
    /// Parses `uri` with kombu's rules.
    pub fn parse(uri: &str) -> Result<Self, UriError> {
        uri.parse()
    }
    /// The virtual host (`/` for an empty path).
    pub fn vhost(&self) -> &str {
        &self.amqp.vhost
    }
    /// The host name or address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.amqp.authority.host
    }
    /// The port.
    pub fn port(&self) -> u16 {
        self.amqp.authority.port
    }
    /// The user name (`guest` when the URI has none).
    pub fn username(&self) -> &str {
        &self.amqp.authority.userinfo.username
    }
    /// The password (`guest` when the URI has none).
    pub fn password(&self) -> &str {
        &self.amqp.authority.userinfo.password
    }
    /// Whether the connection uses TLS (`amqps://` or `ssl=true`).
    pub fn is_tls(&self) -> bool {
        self.amqp.scheme == AMQPScheme::AMQPS
    }
    /// The heartbeat asked for in seconds (`None`: the broker's proposal; `Some(0)`: none).
    pub fn heartbeat(&self) -> Option<u16> {
        self.amqp.query.heartbeat
    }
    /// The `connect_timeout` option, if given.
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }
    /// The URI with its password replaced by `***`, for logs and errors.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }
    /// lapin's form of the address.
    pub(crate) fn amqp(&self) -> &AMQPUri {
        &self.amqp
    }
    /// Trusted CAs and client identity from the `ssl_*` options.
    pub(crate) fn tls_config(&self) -> &OwnedTLSConfig {
        &self.tls
    }
}

// duplicates: deliberate — the getters and Display/Debug of a redacting newtype, as InstanceName's
impl fmt::Display for BrokerUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for BrokerUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BrokerUri").field(&self.redacted).finish()
    }
}

impl FromStr for BrokerUri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Self, UriError> {
        let redacted = redact(s);
        let err_uri = || redacted.clone();
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(UriError::NotAUri { uri: err_uri() });
        };
        if s.contains(';') {
            return Err(UriError::SeveralUris { uri: err_uri() });
        }
        let mut tls = match scheme.to_ascii_lowercase().as_str() {
            "amqp" | "pyamqp" | "librabbitmq" => false,
            "amqps" => true,
            _ => {
                return Err(UriError::Scheme {
                    uri: err_uri(),
                    scheme: scheme.to_owned(),
                })
            }
        };
        // As Python's urlsplit: the authority ends at the first `/`, `?` or `#`; a fragment is
        // dropped.
        let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
        let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match before_query.find('/') {
            Some(i) => before_query.split_at(i),
            None => (before_query, ""),
        };
        // userinfo ends at the last `@`; the password starts after the first `:` in it.
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((name, pass)) => (decode(name), decode(pass)),
                None => (decode(u), String::new()),
            },
            None => (String::new(), String::new()),
        };
        let (host, port) = split_host_port(hostport).ok_or_else(|| UriError::HostPort {
            uri: err_uri(),
            hostport: hostport.to_owned(),
        })?;
        let vhost = decode(path.strip_prefix('/').unwrap_or(path));

        let mut options = Options::default();
        for (key, value) in parse_query(query) {
            options.set(&key, value, &redacted)?;
        }
        if let Some(on) = options.ssl {
            tls |= on;
        }
        let mut query = AMQPQueryString {
            heartbeat: options.heartbeat,
            auth_mechanism: options.login_method,
            ..AMQPQueryString::default()
        };
        if let Some(t) = options.connect_timeout {
            query.connection_timeout = Some(u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        }
        let tls_config = options.tls_config(&redacted)?;
        let amqp = AMQPUri {
            scheme: if tls {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: or_default(user, "guest"),
                    password: or_default(password, "guest"),
                },
                host: or_default(decode(&host), "localhost"),
                port: port.unwrap_or(if tls { 5671 } else { 5672 }),
            },
            vhost: or_default(vhost, "/"),
            query,
        };
        Ok(Self {
            amqp,
            tls: tls_config,
            connect_timeout: options.connect_timeout,
            redacted,
        })
    }
}

/// One or more broker URIs, tried in turn: kombu's fail-over list (see the [module docs](self)).
///
/// The driver connects to the first that answers at start-up, and after losing a connection goes
/// on round-robin from the one after it (kombu's default `failover_strategy`), so the instances of
/// a RabbitMQ cluster spread over its nodes as Python's do. `Display` and `Debug` hide the
/// passwords.
///
/// ```
/// use socketioxide_amqp::BrokerUris;
///
/// let uris: BrokerUris = "amqp://u:secret@rabbit-a:5672//; amqp://u:secret@rabbit-b:5672//".parse()?;
/// assert_eq!(uris.len(), 2);
/// assert_eq!(uris[1].host(), "rabbit-b");
/// assert_eq!(uris.to_string(), "amqp://u:***@rabbit-a:5672//;amqp://u:***@rabbit-b:5672//");
/// # Ok::<(), socketioxide_amqp::UriError>(())
/// ```
#[derive(Clone, PartialEq)]
pub struct BrokerUris(Vec<BrokerUri>);

impl BrokerUris {
    /// Parses a `;`-separated list (one URI is a list of one).
    pub fn parse(uris: &str) -> Result<Self, UriError> {
        uris.parse()
    }
    /// Parses each entry of a list (kombu's `Connection([...])`); an entry may itself hold
    /// `;`-separated URIs.
    pub fn from_list<S: AsRef<str>>(list: &[S]) -> Result<Self, UriError> {
        let mut all = Vec::new();
        for entry in list {
            all.extend(Self::parse(entry.as_ref())?.0);
        }
        if all.is_empty() {
            return Err(UriError::EmptyUri { uri: String::new() });
        }
        Ok(Self(all))
    }
    /// The first URI (the one tried first at start-up).
    pub fn first(&self) -> &BrokerUri {
        // Never empty: every constructor checks it.
        &self.0[0]
    }
    /// The URIs, in order.
    pub fn as_slice(&self) -> &[BrokerUri] {
        &self.0
    }
}

impl std::ops::Deref for BrokerUris {
    type Target = [BrokerUri];
    fn deref(&self) -> &[BrokerUri] {
        &self.0
    }
}

impl From<BrokerUri> for BrokerUris {
    fn from(uri: BrokerUri) -> Self {
        Self(vec![uri])
    }
}

impl FromStr for BrokerUris {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Self, UriError> {
        let uris = s
            .split(';')
            .map(|part| match part.trim() {
                "" => Err(UriError::EmptyUri { uri: redact(s) }),
                part => part.parse::<BrokerUri>(),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(uris))
    }
}

impl fmt::Display for BrokerUris {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, uri) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            f.write_str(uri.redacted())?;
        }
        Ok(())
    }
}

impl fmt::Debug for BrokerUris {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(BrokerUri::redacted))
            .finish()
    }
}

/// The query options we honour, as read.
#[derive(Default)]
struct Options {
    heartbeat: Option<u16>,
    connect_timeout: Option<Duration>,
    ssl: Option<bool>,
    login_method: Option<SASLMechanism>,
    ca_certs: Option<String>,
    certfile: Option<String>,
    keyfile: Option<String>,
}

impl Options {
    fn set(&mut self, key: &str, value: String, uri: &str) -> Result<(), UriError> {
        let invalid = |reason: &str| UriError::Option {
            uri: uri.to_owned(),
            option: key.to_owned(),
            reason: reason.to_owned(),
        };
        match key {
            "heartbeat" => {
                let secs = seconds(&value).ok_or_else(|| invalid("expected seconds"))?;
                let secs = secs.as_secs() + u64::from(secs.subsec_nanos() > 0);
                let secs = u16::try_from(secs).map_err(|_| invalid("at most 65535 seconds"))?;
                self.heartbeat = Some(secs);
            }
            "connect_timeout" => {
                let t = seconds(&value).ok_or_else(|| invalid("expected seconds"))?;
                if t.is_zero() {
                    return Err(invalid("must be more than 0"));
                }
                self.connect_timeout = Some(t);
            }
            "ssl" => {
                // kombu takes any non-empty value as "on", `ssl=false` included: accept only
                // values that say what kombu does.
                match value.to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" | "on" => self.ssl = Some(true),
                    _ => return Err(invalid(
                        "kombu turns TLS on for any value; use ssl=true, or amqp:// without ssl",
                    )),
                }
            }
            "login_method" => {
                self.login_method = Some(match value.to_ascii_uppercase().as_str() {
                    "PLAIN" => SASLMechanism::Plain,
                    "AMQPLAIN" => SASLMechanism::AMQPlain,
                    "EXTERNAL" => SASLMechanism::External,
                    _ => return Err(invalid("expected PLAIN, AMQPLAIN or EXTERNAL")),
                });
            }
            "ssl_ca_certs" => self.ca_certs = Some(value),
            "ssl_certfile" => self.certfile = Some(value),
            "ssl_keyfile" => self.keyfile = Some(value),
            "ssl_cert_reqs" => match value.as_str() {
                "CERT_REQUIRED" | "required" => {}
                _ => {
                    return Err(invalid(
                        "only CERT_REQUIRED: the broker's certificate is always verified",
                    ))
                }
            },
            _ => {
                return Err(UriError::UnknownOption {
                    uri: uri.to_owned(),
                    option: key.to_owned(),
                })
            }
        }
        Ok(())
    }

    fn tls_config(&self, uri: &str) -> Result<OwnedTLSConfig, UriError> {
        let read = |option: &str, path: &str| {
            std::fs::read(path).map_err(|e| UriError::TlsFile {
                uri: uri.to_owned(),
                option: option.to_owned(),
                path: path.to_owned(),
                reason: e.to_string(),
            })
        };
        let cert_chain = match &self.ca_certs {
            Some(path) => Some(String::from_utf8(read("ssl_ca_certs", path)?).map_err(|_| {
                UriError::Option {
                    uri: uri.to_owned(),
                    option: "ssl_ca_certs".to_owned(),
                    reason: "the file is not PEM text".to_owned(),
                }
            })?),
            None => None,
        };
        let identity = match (&self.certfile, &self.keyfile) {
            (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
                pem: read("ssl_certfile", cert)?,
                key: read("ssl_keyfile", key)?,
            }),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                return Err(UriError::Option {
                    uri: uri.to_owned(),
                    option: "ssl_certfile".to_owned(),
                    reason: "ssl_certfile and ssl_keyfile go together".to_owned(),
                })
            }
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }
}

fn or_default(s: String, default: &str) -> String {
    if s.is_empty() {
        default.to_owned()
    } else {
        s
    }
}

/// A non-negative number of seconds, as Python's `float()` reads it.
fn seconds(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`; an empty port is none (as Python).
fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    Some((host.to_ascii_lowercase(), port))
}

/// Python's `unquote`: `%XX` decoded, invalid UTF-8 replaced, a stray `%` kept.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                // Two hex digits are below 256.
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'%'));
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Python's `parse_qsl` (blank values and pairs without `=` dropped, `+` is a space); the last of
/// a repeated key wins, as in kombu's `dict(...)`.
fn parse_query(query: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in query.split('&') {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        if v.is_empty() {
            continue;
        }
        let key = decode(&k.replace('+', " "));
        let value = decode(&v.replace('+', " "));
        out.retain(|(existing, _)| *existing != key);
        out.push((key, value));
    }
    out
}

/// The URI with the password (between the first `:` of the userinfo and its last `@`) replaced by
/// `***`. Works on strings that do not parse, so errors can show them.
fn redact(uri: &str) -> String {
    if uri.contains(';') {
        return uri
            .split(';')
            .map(|u| redact(u.trim()))
            .collect::<Vec<_>>()
            .join(";");
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return match uri.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => uri.to_owned(),
        };
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => uri.to_owned(),
        },
        None => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests;
