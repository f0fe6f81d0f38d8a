//! The Keycloak realm's public key, which signs vantage6 5.x access tokens.
//!
//! vantage6 HQ 5.0.3 fetches it once at start-up
//! (`vantage6/backend/common/__init__.py`, `_get_keycloak_public_key`):
//! `GET {KEYCLOAK_URL}/realms/{KEYCLOAK_REALM}` (a plain string join), the
//! JSON field `public_key` (base64 DER SubjectPublicKeyInfo) wrapped in PEM
//! armour, retried up to 10 times 5 s apart only when the answer lacks
//! `public_key`; anything else ends the process. It never fetches it again,
//! so a Keycloak key rotation needs an HQ restart.
//!
//! We do the same at start-up (or read a PEM file instead), and beyond HQ:
//! when a token's signature does not verify with the cached key, the key is
//! fetched again, at most once per refresh interval, and the token checked
//! once more with the new key.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use jsonwebtoken::DecodingKey;
use tracing::{info, warn};

/// Where the realm key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Keycloak's realm endpoint, `{KEYCLOAK_URL}/realms/{KEYCLOAK_REALM}`.
    Realm(String),
    /// A PEM file (`keycloak_public_key_file`).
    File(PathBuf),
}

impl KeySource {
    /// The realm endpoint HQ asks: `{url}/realms/{realm}`, joined as HQ
    /// joins it (no normalisation of slashes).
    pub fn realm(url: &str, realm: &str) -> Self {
        KeySource::Realm(format!("{url}/realms/{realm}"))
    }
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Realm(url) => write!(f, "{url}"),
            KeySource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Why the realm key could not be obtained. The message names what failed;
/// the underlying error is its [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
pub enum KeycloakError {
    /// The HTTP request failed (connection, TLS, timeout).
    #[error("cannot fetch the Keycloak realm key from {url}")]
    Http {
        /// The endpoint.
        url: String,
        /// What reqwest said.
        source: reqwest::Error,
    },
    /// The answer is not JSON.
    #[error("the Keycloak realm endpoint {url} did not answer JSON (HTTP {status})")]
    NotJson {
        /// The endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The JSON answer has no string `public_key` (HQ retries this case).
    #[error("the Keycloak realm endpoint {url} answered without `public_key` (HTTP {status})")]
    NoPublicKey {
        /// The endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The key file could not be read.
    #[error("cannot read `keycloak_public_key_file` {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key is not an RSA public key in PEM form.
    #[error("the realm key from {from} is not an RSA public key: {message}")]
    BadKey {
        /// Where it came from.
        from: String,
        /// What jsonwebtoken said.
        message: String,
    },
}

/// Retries of the start-up fetch when the answer lacks `public_key`.
#[derive(Debug, Clone, Copy)]
pub struct StartupRetry {
    /// Attempts in all (HQ: 10).
    pub attempts: u32,
    /// Pause between attempts (HQ: 5 s).
    pub delay: Duration,
}

impl Default for StartupRetry {
    fn default() -> Self {
        Self {
            attempts: 10,
            delay: Duration::from_secs(5),
        }
    }
}

/// Timeout of the start-up request (as HQ's `requests.get(..., timeout=100)`).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(100);
/// Timeout of a re-fetch; connections with bad signatures wait for it.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(10);

/// One version of the realm key.
pub struct KeyVersion {
    /// Counts key changes since start-up (0 for the first key).
    pub version: u64,
    /// The PEM text.
    pub pem: String,
    /// The parsed key.
    pub key: DecodingKey,
}

impl std::fmt::Debug for KeyVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVersion")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// The cached realm key and the rules for fetching it again.
#[derive(Debug)]
pub struct RealmKey {
    current: RwLock<Arc<KeyVersion>>,
    /// When the last re-fetch started; held while one runs.
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
    refresh_source: KeySource,
    refresh_interval: Duration,
    http: reqwest::Client,
}

impl RealmKey {
    /// Obtains the first key from `initial` (retrying a realm answer
    /// without `public_key` as HQ does); later re-fetches go to
    /// `refresh_source`, at most once per `refresh_interval`.
    pub async fn load(
        initial: &KeySource,
        refresh_source: KeySource,
        refresh_interval: Duration,
        retry: StartupRetry,
    ) -> Result<Self, KeycloakError> {
        let http = reqwest::Client::new();
        let mut attempt = 1;
        let pem = loop {
            match fetch_pem(&http, initial, STARTUP_TIMEOUT).await {
                Err(e @ KeycloakError::NoPublicKey { .. }) if attempt < retry.attempts => {
                    warn!(error = %e, attempt, "retrying in {:?}", retry.delay);
                    attempt += 1;
                    tokio::time::sleep(retry.delay).await;
                }
                other => break other?,
            }
        };
        let key = parse(&pem, initial)?;
        info!(from = %initial, "Keycloak realm key loaded");
        Ok(Self {
            current: RwLock::new(Arc::new(KeyVersion {
                version: 0,
                pem,
                key,
            })),
            last_refresh: tokio::sync::Mutex::new(None),
            refresh_source,
            refresh_interval,
            http,
        })
    }

    /// The key to verify with now.
    pub fn current(&self) -> Arc<KeyVersion> {
        match self.current.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Called after a signature did not verify with `seen`: a newer key to
    /// try once more, if there is one. Fetches the key again unless another
    /// caller already replaced `seen` or the last re-fetch was less than the
    /// refresh interval ago; concurrent callers wait for one fetch.
    pub async fn newer_than(&self, seen: &KeyVersion) -> Option<Arc<KeyVersion>> {
        let mut last = self.last_refresh.lock().await;
        let current = self.current();
        if current.version != seen.version {
            return Some(current);
        }
        if last.is_some_and(|t| t.elapsed() < self.refresh_interval) {
            return None;
        }
        *last = Some(Instant::now());
        let fetched = fetch_pem(&self.http, &self.refresh_source, REFRESH_TIMEOUT)
            .await
            .and_then(|pem| parse(&pem, &self.refresh_source).map(|key| (pem, key)));
        match fetched {
            Err(e) => {
                warn!(error = %WithCauses(&e), "re-fetching the Keycloak realm key failed; keeping the old one");
                None
            }
            Ok((pem, _)) if pem == current.pem => {
                info!(from = %self.refresh_source, "Keycloak realm key re-fetched: unchanged");
                None
            }
            Ok((pem, key)) => {
                let next = Arc::new(KeyVersion {
                    version: current.version + 1,
                    pem,
                    key,
                });
                match self.current.write() {
                    Ok(mut k) => *k = next.clone(),
                    Err(poisoned) => *poisoned.into_inner() = next.clone(),
                }
                info!(
                    from = %self.refresh_source,
                    version = next.version,
                    "Keycloak realm key changed (key rotation); using the new key"
                );
                Some(next)
            }
        }
    }
}

fn parse(pem: &str, from: &KeySource) -> Result<DecodingKey, KeycloakError> {
    DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| KeycloakError::BadKey {
        from: from.to_string(),
        message: e.to_string(),
    })
}

/// The PEM text of the key at `source`.
async fn fetch_pem(
    http: &reqwest::Client,
    source: &KeySource,
    timeout: Duration,
) -> Result<String, KeycloakError> {
    let url = match source {
        KeySource::File(path) => {
            return tokio::fs::read_to_string(path)
                .await
                .map_err(|source| KeycloakError::File {
                    path: path.clone(),
                    source,
                })
        }
        KeySource::Realm(url) => url,
    };
    let http_err = |source| KeycloakError::Http {
        url: url.clone(),
        source,
    };
    let response = http
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .map_err(http_err)?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(http_err)?;
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| KeycloakError::NotJson {
            url: url.clone(),
            status,
        })?;
    match json.get("public_key").and_then(serde_json::Value::as_str) {
        Some(key) => Ok(realm_key_pem(key)),
        None => Err(KeycloakError::NoPublicKey {
            url: url.clone(),
            status,
        }),
    }
}

/// The realm endpoint's `public_key` in PEM armour, exactly as HQ wraps it.
pub fn realm_key_pem(public_key: &str) -> String {
    format!("-----BEGIN PUBLIC KEY-----\n{public_key}\n-----END PUBLIC KEY-----")
}

/// An error and its sources on one line (`a: b: c`), for a log line: the
/// messages of our errors do not repeat their sources.
struct WithCauses<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for WithCauses<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}
