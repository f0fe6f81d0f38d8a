//! Access-token verification, as vantage6 4.x does it with
//! flask-jwt-extended: the JWT comes from the `Authorization: Bearer` header
//! of the Engine.IO handshake request, is signed with HS256 and
//! `jwt_secret_key`, must be an access token (`type` claim), and its `sub` is
//! the integer id of an `authenticatable` row.

use http::HeaderMap;
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

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
    /// `sub` is not the integer id of a user or node (e.g. a container token).
    #[error("token subject {0} is not a user or node id")]
    BadSubject(String),
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
    #[error("no randomness available: {0}")]
    Random(#[from] getrandom::Error),
    /// Encoding failed.
    #[error("cannot encode token: {0}")]
    Encode(#[from] jsonwebtoken::errors::Error),
}

/// 128 random bits from the operating system (token ids, demo secrets).
pub fn random_u128() -> Result<u128, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(u128::from_le_bytes(bytes))
}
