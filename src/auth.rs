//! Access-token verification, as vantage6 4.x does it with
//! flask-jwt-extended: the JWT comes from the `Authorization: Bearer` header
//! of the Engine.IO handshake request, is signed with HS256 and
//! `jwt_secret_key`, must be an access token (`type` claim), and its `sub` is
//! the integer id of an `authenticatable` row.
//!
//! vantage6 5.x (HQ) checks Keycloak's RS256 tokens instead: see
//! [`KeycloakVerifier`]. [`Verifier`] is the one the server runs, per
//! generation; both give a [`Subject`] for the store to look up.

use std::{fmt, sync::Arc, time::Duration};

use http::HeaderMap;
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::keycloak::{KeyVersion, RealmKey};

/// Why a connection could not be identified. [`TokenError::client_event`]
/// says which of these vantage6 reports to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No `Authorization` header on the handshake request.
    #[error("no Authorization header")]
    MissingHeader,
    /// The header is not `Bearer <token>`.
    #[error("Authorization header is not a Bearer token")]
    NotBearer,
    /// The token's `exp` is in the past.
    #[error("token has expired")]
    Expired,
    /// The token was signed with another key.
    #[error("token signature is invalid")]
    InvalidSignature,
    /// Not a decodable HS256 JWT (garbage, other algorithm, not yet valid, ...).
    #[error("token is not a valid JWT: {0}")]
    Malformed(String),
    /// A refresh token (or any token whose `type` is not `access`).
    #[error("only access tokens are accepted, got type {0:?}")]
    NotAccessToken(Option<String>),
    /// `sub` is not the integer id of a user or node (e.g. a container
    /// token), or in 5.x not a Keycloak id (a string).
    #[error("token subject {0} is not a user or node id")]
    BadSubject(String),
    /// 5.x: the header's `alg` is not among `jwt_decode_algorithms` (e.g.
    /// an HS256 container token).
    #[error("token algorithm is not allowed: {0}")]
    AlgorithmNotAllowed(String),
    /// 5.x: `iat` or `nbf` is later than now plus the leeway.
    #[error("token is not yet valid ({0})")]
    NotYetValid(&'static str),
}

impl TokenError {
    /// The event vantage6 emits to the client for this failure, if any:
    /// `expired_token` and `invalid_token`; every other failure is only logged.
    pub fn client_event(&self) -> Option<&'static str> {
        match self {
            TokenError::Expired => Some("expired_token"),
            TokenError::InvalidSignature => Some("invalid_token"),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<Value>,
    #[serde(rename = "type")]
    token_type: Option<String>,
    iat: Option<Value>,
    nbf: Option<Value>,
    exp: Option<Value>,
}

/// Verifies vantage6 access tokens. Cheap to clone.
#[derive(Clone)]
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier").finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// A verifier for tokens signed with `secret` (vantage6's `jwt_secret_key`).
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // flask-jwt-extended: no leeway, `exp` optional (but checked when
        // present), `nbf` checked when present, `sub` not validated.
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.required_spec_claims.clear();
        Self {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// Checks the handshake headers and returns the `authenticatable` id.
    pub fn verify_headers(&self, headers: &HeaderMap) -> Result<i64, TokenError> {
        self.verify(bearer_token(headers)?)
    }

    /// Checks one token and returns the `authenticatable` id.
    pub fn verify(&self, token: &str) -> Result<i64, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::InvalidSignature,
                _ => TokenError::Malformed(e.to_string()),
            },
        )?;
        let claims = data.claims;
        // jsonwebtoken skips a time claim that is not a number; PyJWT reads it with `int()`.
        let times: Map<String, Value> = [
            ("iat", &claims.iat),
            ("nbf", &claims.nbf),
            ("exp", &claims.exp),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), v.clone()?)))
        .collect();
        check_times(&times, now(), 0.0)?;
        if claims.token_type.as_deref() != Some("access") {
            return Err(TokenError::NotAccessToken(claims.token_type));
        }
        subject_id(claims.sub.as_ref())
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, TokenError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(TokenError::MissingHeader)?
        .to_str()
        .map_err(|_| TokenError::NotBearer)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(TokenError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::NotBearer);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenError::NotBearer);
    }
    Ok(token)
}

/// vantage6 4.x puts the integer id in `sub`; newer PyJWT setups may
/// serialise it as a string of digits.
fn subject_id(sub: Option<&Value>) -> Result<i64, TokenError> {
    let bad = || TokenError::BadSubject(sub.map_or_else(|| "(none)".into(), Value::to_string));
    match sub {
        Some(Value::Number(n)) => n.as_i64().ok_or_else(bad),
        Some(Value::String(s)) => s.trim().parse().map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// Mints an access token the way vantage6 4.x does (flask-jwt-extended
/// claims plus vantage6's `client_type` and `roles`), for the demo and tests.
pub fn mint_access_token(
    secret: &str,
    auth_id: i64,
    client_type: &str,
    lifetime: std::time::Duration,
) -> Result<String, MintError> {
    let now = chrono::Utc::now().timestamp();
    let lifetime = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2);
    let claims = serde_json::json!({
        "fresh": false,
        "iat": now,
        "jti": format!("{:032x}", random_u128()?),
        "type": "access",
        "sub": auth_id,
        "nbf": now,
        "exp": now.saturating_add(lifetime),
        "client_type": client_type,
        "roles": [],
    });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The operating system gave no randomness.
    #[error("no randomness available")]
    Random(#[from] getrandom::Error),
    /// Encoding failed.
    #[error("cannot encode token")]
    Encode(#[from] jsonwebtoken::errors::Error),
    /// An RSA key could not be generated or encoded.
    #[error("cannot create RSA key: {0}")]
    Key(String),
}

/// 128 random bits from the operating system (token ids, demo secrets).
pub fn random_u128() -> Result<u128, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(u128::from_le_bytes(bytes))
}

/// Who a verified token names: an `authenticatable.id` (4.x) or an
/// `authenticatable.keycloak_id` (5.x).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// vantage6 4.x: the integer `sub`.
    Id(i64),
    /// vantage6 5.x: the Keycloak subject, a string.
    Keycloak(String),
}

impl From<i64> for Subject {
    fn from(id: i64) -> Self {
        Subject::Id(id)
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Id(id) => write!(f, "{id}"),
            Subject::Keycloak(k) => write!(f, "keycloak:{k}"),
        }
    }
}

/// The token verifier of the vantage6 generation being served. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Verifier {
    /// 4.x: HS256 with `jwt_secret_key`.
    V4(Box<TokenVerifier>),
    /// 5.x: Keycloak's RSA tokens.
    V5(KeycloakVerifier),
}

impl From<TokenVerifier> for Verifier {
    fn from(v: TokenVerifier) -> Self {
        Verifier::V4(Box::new(v))
    }
}

impl From<KeycloakVerifier> for Verifier {
    fn from(v: KeycloakVerifier) -> Self {
        Verifier::V5(v)
    }
}

impl Verifier {
    /// Checks the handshake headers and returns the token's subject.
    pub async fn verify_headers(&self, headers: &HeaderMap) -> Result<Subject, TokenError> {
        let token = bearer_token(headers)?;
        match self {
            Verifier::V4(v) => v.verify(token).map(Subject::Id),
            Verifier::V5(v) => v.verify(token).await.map(Subject::Keycloak),
        }
    }
}

/// The algorithms HQ accepts by default (`jwt_decode_algorithms`).
pub const DEFAULT_DECODE_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];
/// HQ's default `jwt_decode_leeway`.
pub const DEFAULT_DECODE_LEEWAY: Duration = Duration::from_secs(10);

/// Verifies vantage6 5.x access tokens as HQ 5.0.3 does (flask-jwt-extended
/// 4.7.1 over PyJWT 2.13 with `JWT_ALGORITHM = "RS256"`, the Keycloak realm
/// key, `JWT_DECODE_LEEWAY`, no audience or issuer check, `JWT_VERIFY_SUB`
/// off). Cheap to clone.
#[derive(Clone)]
pub struct KeycloakVerifier {
    key: Arc<RealmKey>,
    algorithms: Vec<Algorithm>,
    leeway: f64,
}

impl fmt::Debug for KeycloakVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeycloakVerifier")
            .field("algorithms", &self.algorithms)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl KeycloakVerifier {
    /// A verifier for tokens signed with the realm key, with one of
    /// `algorithms` (see [`decode_algorithms`]) and `leeway`.
    pub fn new(key: Arc<RealmKey>, algorithms: Vec<Algorithm>, leeway: Duration) -> Self {
        Self {
            key,
            algorithms: decode_algorithms(&algorithms),
            leeway: leeway.as_secs_f64(),
        }
    }

    /// Checks one token and returns its `sub`. A signature that does not
    /// verify with the cached key is checked once more with a re-fetched
    /// key, if [`RealmKey::newer_than`] gives one.
    pub async fn verify(&self, token: &str) -> Result<String, TokenError> {
        let key = self.key.current();
        match self.verify_with(token, &key, now()) {
            Err(TokenError::InvalidSignature) => match self.key.newer_than(&key).await {
                Some(newer) => self.verify_with(token, &newer, now()),
                None => Err(TokenError::InvalidSignature),
            },
            other => other,
        }
    }

    /// PyJWT's order: split and base64-decode the parts, check the
    /// algorithm, then the signature, then parse the payload and check the
    /// claims (so expired *and* wrongly signed is `invalid_token`). Claims
    /// HQ does not check (`aud`, `iss`, ...) may have any type.
    fn verify_with(&self, token: &str, key: &KeyVersion, now: f64) -> Result<String, TokenError> {
        use base64::Engine;
        let (message, signature) = token
            .rsplit_once('.')
            .ok_or_else(|| malformed("Not enough segments"))?;
        let (_, payload) = message
            .split_once('.')
            .ok_or_else(|| malformed("Not enough segments"))?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let payload = BASE64URL
            .decode(payload)
            .map_err(|_| malformed("Invalid payload padding"))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenError::AlgorithmNotAllowed(format!("{:?}", header.alg)));
        }
        let valid =
            jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key.key, header.alg)
                .map_err(|e| match e.kind() {
                    ErrorKind::InvalidSignature => TokenError::InvalidSignature,
                    _ => TokenError::Malformed(e.to_string()),
                })?;
        if !valid {
            return Err(TokenError::InvalidSignature);
        }
        let claims: Map<String, Value> = serde_json::from_slice(&payload)
            .map_err(|_| malformed("Invalid payload string: must be a json object"))?;
        check_claims(&claims, now, self.leeway)
    }
}

/// base64url as PyJWT reads it: padding optional.
const BASE64URL: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// flask-jwt-extended's `decode_algorithms`: the configured list, with
/// `JWT_ALGORITHM` (RS256) appended when it is missing; RS256 alone when
/// the list is empty.
pub fn decode_algorithms(configured: &[Algorithm]) -> Vec<Algorithm> {
    let mut list = configured.to_vec();
    if !list.contains(&Algorithm::RS256) {
        list.push(Algorithm::RS256);
    }
    list
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The claim checks after the signature, in PyJWT's order (`iat`, `nbf`,
/// `exp`, then `jti`), then flask-jwt-extended's (`sub` present, `type` not
/// `refresh`). Returns the subject.
///
/// `sub` must be a string: HQ does not check its type (`JWT_VERIFY_SUB`
/// off) but looks it up in the text column `authenticatable.keycloak_id`,
/// where a number or object never names an account created through
/// Keycloak (PostgreSQL refuses the comparison; `null` would match accounts
/// without a Keycloak id). So any other type is refused, silently.
pub fn check_claims(
    claims: &Map<String, Value>,
    now: f64,
    leeway: f64,
) -> Result<String, TokenError> {
    check_times(claims, now, leeway)?;
    let sub = match claims.get("sub") {
        None => return Err(TokenError::BadSubject("(none)".into())),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(TokenError::BadSubject(other.to_string())),
    };
    if claims.get("type").and_then(Value::as_str) == Some("refresh") {
        return Err(TokenError::NotAccessToken(Some("refresh".into())));
    }
    Ok(sub)
}

/// PyJWT's checks of `iat`, `nbf`, `exp` (read with `int()`, in that order) and `jti` (a string).
fn check_times(claims: &Map<String, Value>, now: f64, leeway: f64) -> Result<(), TokenError> {
    if let Some(iat) = claims.get("iat") {
        let iat =
            py_int(iat).ok_or_else(|| malformed("Issued At claim (iat) must be an integer."))?;
        if iat > now + leeway {
            return Err(TokenError::NotYetValid("iat"));
        }
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf =
            py_int(nbf).ok_or_else(|| malformed("Not Before claim (nbf) must be an integer."))?;
        if nbf > now + leeway {
            return Err(TokenError::NotYetValid("nbf"));
        }
    }
    if let Some(exp) = claims.get("exp") {
        let exp = py_int(exp)
            .ok_or_else(|| malformed("Expiration Time claim (exp) must be an integer."))?;
        if exp <= now - leeway {
            return Err(TokenError::Expired);
        }
    }
    if claims.get("jti").is_some_and(|j| !j.is_string()) {
        return Err(malformed("JWT ID must be a string"));
    }
    Ok(())
}

fn malformed(message: &str) -> TokenError {
    TokenError::Malformed(message.to_owned())
}

/// Python's `int(value)` for a JSON value, as a float for comparing with
/// the clock: integers, floats (truncated), booleans, and strings of
/// digits (with an optional sign, surrounding spaces and single
/// underscores between digits); `None` where `int()` raises.
fn py_int(value: &Value) -> Option<f64> {
    match value {
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        Value::Number(n) => n
            .as_i64()
            .map(|i| i as f64)
            .or_else(|| n.as_u64().map(|u| u as f64))
            .or_else(|| n.as_f64().map(f64::trunc)),
        Value::String(s) => {
            let s = s.trim();
            let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
            let valid = !digits.is_empty()
                && !digits.starts_with('_')
                && !digits.ends_with('_')
                && !digits.contains("__")
                && digits.chars().all(|c| c.is_ascii_digit() || c == '_');
            if !valid {
                return None;
            }
            let n: f64 = digits.replace('_', "").parse().ok()?;
            Some(if s.starts_with('-') { -n } else { n })
        }
        _ => None,
    }
}

/// Mints a token in the claim layout of a Keycloak access token (a node's
/// service account, or a user), signed RS256 with `private_key_pem` (PKCS#8
/// or PKCS#1 PEM): for the 5.x demo and tests. HQ reads only `sub` on the
/// socket; REST also reads `vantage6_client_type`.
pub fn mint_keycloak_token(
    private_key_pem: &str,
    issuer: &str,
    subject: &str,
    client_type: &str,
    username: &str,
    lifetime: Duration,
) -> Result<String, MintError> {
    let now = chrono::Utc::now().timestamp();
    let lifetime = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2);
    let (azp, preferred_username) = if client_type == "node" {
        let client = format!("{username}-node-client");
        (client.clone(), format!("service-account-{client}"))
    } else {
        ("public_client".to_owned(), username.to_owned())
    };
    let id = format!("{:032x}", random_u128()?);
    let claims = serde_json::json!({
        "exp": now.saturating_add(lifetime),
        "iat": now,
        "jti": format!("{}-{}-{}-{}-{}", &id[..8], &id[8..12], &id[12..16], &id[16..20], &id[20..]),
        "iss": issuer,
        "aud": "account",
        "sub": subject,
        "typ": "Bearer",
        "azp": azp,
        "scope": "openid profile email",
        "realm_access": {"roles": ["default-roles-vantage6", "offline_access", "uma_authorization"]},
        "resource_access": {"account": {"roles": ["manage-account", "view-profile"]}},
        "preferred_username": preferred_username,
        "vantage6_client_type": client_type,
    });
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.kid = Some("v6-socketio-demo".to_owned());
    Ok(jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(private_key_pem.as_bytes())?,
    )?)
}

/// A new 2048-bit RSA key pair as PEM texts: (PKCS#8 private key, SPKI
/// public key), the form Keycloak's realm endpoint serves (in PEM armour).
pub fn generate_rsa_key_pair() -> Result<(String, String), MintError> {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048)
        .map_err(|e| MintError::Key(e.to_string()))?;
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| MintError::Key(e.to_string()))?;
    let public = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| MintError::Key(e.to_string()))?;
    Ok((private.to_string(), public))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn py_int_follows_python_int() {
        let i = |v: Value| py_int(&v);
        assert_eq!(i(json!(5)), Some(5.0));
        assert_eq!(i(json!(5.9)), Some(5.0));
        assert_eq!(i(json!(-5.9)), Some(-5.0));
        assert_eq!(i(json!(true)), Some(1.0));
        assert_eq!(i(json!(" 12 ")), Some(12.0));
        assert_eq!(i(json!("-1_000")), Some(-1000.0));
        assert_eq!(i(json!(u64::MAX)), Some(u64::MAX as f64));
        for bad in [
            json!("1.5"),
            json!(""),
            json!("1__0"),
            json!("_1"),
            json!(null),
            json!([1]),
            json!({}),
        ] {
            assert_eq!(i(bad.clone()), None, "{bad}");
        }
    }

    #[test]
    fn decode_algorithms_append_rs256() {
        assert_eq!(decode_algorithms(&[]), vec![Algorithm::RS256]);
        assert_eq!(
            decode_algorithms(&[Algorithm::RS512]),
            vec![Algorithm::RS512, Algorithm::RS256]
        );
        assert_eq!(
            decode_algorithms(&DEFAULT_DECODE_ALGORITHMS),
            DEFAULT_DECODE_ALGORITHMS.to_vec()
        );
    }
}
