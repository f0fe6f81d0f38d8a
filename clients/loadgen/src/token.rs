//! Access tokens minted in-process, as vantage6 4.15.2 (flask-jwt-extended) mints them.

use std::{
    fmt::Write as _,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// How long a minted token is valid (vantage6's node tokens: 6 h).
pub const LIFETIME: Duration = Duration::from_secs(6 * 3600);

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No randomness for the `jti`.
    #[error("no randomness available: {0}")]
    Random(#[from] getrandom::Error),
    /// Encoding failed.
    #[error("cannot encode token: {0}")]
    Encode(#[from] jsonwebtoken::errors::Error),
    /// A generation this program does not mint for yet.
    #[error("vantage6 generation {0} tokens are not supported yet (4 only)")]
    Generation(u8),
}

/// Mints node tokens for one fixture.
#[derive(Clone)]
pub struct Minter {
    key: EncodingKey,
    generation: u8,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Minter {
    /// A minter for the fixture's secret and generation. Generation 5 (Keycloak RS256 tokens)
    /// is the seam left for later: it fails here, before any connection.
    pub fn new(secret: &str, generation: u8) -> Result<Self, TokenError> {
        if generation != 4 {
            return Err(TokenError::Generation(generation));
        }
        Ok(Self {
            key: EncodingKey::from_secret(secret.as_bytes()),
            generation,
        })
    }

    /// A fresh access token for node `node_id` (its authenticatable id).
    pub fn node_token(&self, node_id: u64) -> Result<String, TokenError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut jti = [0u8; 16];
        getrandom::fill(&mut jti)?;
        let claims = serde_json::json!({
            "fresh": false,
            "iat": now,
            "jti": uuid_text(jti),
            "type": "access",
            "sub": node_id,
            "nbf": now,
            "exp": now + LIFETIME.as_secs(),
            "client_type": "node",
            "roles": [],
        });
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.key,
        )?)
    }
}

/// A version-4 UUID's text from 16 random bytes, as flask-jwt-extended's `jti`.
fn uuid_text(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = b.iter().fold(String::with_capacity(32), |mut h, x| {
        let _ = write!(h, "{x:02x}");
        h
    });
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, DecodingKey, Validation};

    #[test]
    fn node_token_claims() {
        let m = Minter::new("s3cret", 4).expect("minter");
        let t = m.node_token(12).expect("token");
        let data = decode::<serde_json::Value>(
            &t,
            &DecodingKey::from_secret(b"s3cret"),
            &Validation::new(Algorithm::HS256),
        )
        .expect("valid");
        let c = data.claims;
        assert_eq!(c["sub"], 12);
        assert_eq!(c["type"], "access");
        assert_eq!(c["client_type"], "node");
        assert_eq!(c["fresh"], false);
        assert_eq!(c["roles"], serde_json::json!([]));
        assert_eq!(c["exp"].as_u64(), c["iat"].as_u64().map(|i| i + 6 * 3600));
        assert_eq!(c["jti"].as_str().map(str::len), Some(36));
    }

    #[test]
    fn generation_five_is_refused() {
        assert!(matches!(
            Minter::new("s", 5),
            Err(TokenError::Generation(5))
        ));
    }
}
