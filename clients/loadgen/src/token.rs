//! Access tokens minted in-process: as vantage6 4.15.2 (flask-jwt-extended) mints them
//! (generation 4, HS256), or as Keycloak mints a vantage6 5.0.3 node's client-credentials token
//! (generation 5, RS256 with the fixture's realm key).

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::fixture::Fixture;

/// How long a minted generation-4 token is valid (vantage6's node tokens: 6 h).
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
    /// A generation this program does not mint for.
    #[error("vantage6 generation {0} tokens are not supported (4 or 5)")]
    Generation(u8),
    /// The fixture lacks what its generation needs.
    #[error("the generation {generation} fixture has no {what}")]
    Missing {
        /// The fixture's generation.
        generation: u8,
        /// What is absent.
        what: &'static str,
    },
    /// The realm's private key file could not be read.
    #[error("cannot read the realm key {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The realm's private key is not an RSA PEM key.
    #[error("the realm key {path} is not an RSA private key in PEM: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What jsonwebtoken said.
        source: jsonwebtoken::errors::Error,
    },
    /// Generation 5: a node the fixture did not list (no Keycloak subject).
    #[error("node {0} has no keycloak_id in the fixture")]
    UnknownNode(u64),
}

/// Generation 5: a node's Keycloak identity.
#[derive(Debug)]
struct KeycloakNode {
    /// `authenticatable.keycloak_id`: the token's `sub`.
    subject: String,
    /// The node's Keycloak client, `<name>-node-client` (`azp`, `client_id`).
    client: String,
}

/// How tokens are signed and what they claim.
#[derive(Clone)]
enum Kind {
    /// vantage6 4.x: HS256 with `jwt_secret_key`, `sub` the authenticatable id.
    V4 { key: EncodingKey },
    /// vantage6 5.x: RS256 with the realm key, `sub` the node's Keycloak id.
    V5 {
        key: EncodingKey,
        issuer: Arc<str>,
        kid: Arc<str>,
        lifetime: Duration,
        nodes: Arc<HashMap<u64, KeycloakNode>>,
    },
}

/// Mints node tokens for one fixture.
#[derive(Clone)]
pub struct Minter {
    kind: Kind,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl Minter {
    /// A generation-4 minter for the configuration's `jwt_secret_key`.
    pub fn new_v4(secret: &str) -> Self {
        Self {
            kind: Kind::V4 {
                key: EncodingKey::from_secret(secret.as_bytes()),
            },
        }
    }

    /// The minter of a fixture's generation: its secret (4), or its realm key, issuer, `kid`
    /// and the nodes' Keycloak subjects (5). Fails before any connection.
    pub fn from_fixture(fixture: &Fixture) -> Result<Self, TokenError> {
        let missing = |what| TokenError::Missing {
            generation: fixture.generation,
            what,
        };
        match fixture.generation {
            4 => {
                let secret = fixture
                    .jwt_secret_key
                    .as_deref()
                    .ok_or_else(|| missing("jwt_secret_key"))?;
                Ok(Self::new_v4(secret))
            }
            5 => {
                let kc = fixture
                    .keycloak
                    .as_ref()
                    .ok_or_else(|| missing("keycloak"))?;
                let path = &kc.private_key_file;
                let pem = std::fs::read(path).map_err(|source| TokenError::KeyFile {
                    path: path.clone(),
                    source,
                })?;
                let key = EncodingKey::from_rsa_pem(&pem).map_err(|source| TokenError::Key {
                    path: path.clone(),
                    source,
                })?;
                let mut nodes = HashMap::with_capacity(fixture.nodes.len());
                for n in &fixture.nodes {
                    let subject = n.keycloak_id.clone().ok_or(TokenError::UnknownNode(n.id))?;
                    let name = n.name.clone().unwrap_or_else(|| format!("node-{}", n.id));
                    let client = format!("{name}-node-client");
                    nodes.insert(n.id, KeycloakNode { subject, client });
                }
                Ok(Self {
                    kind: Kind::V5 {
                        key,
                        issuer: kc.issuer.as_str().into(),
                        kid: kc.kid.as_str().into(),
                        lifetime: Duration::from_secs(kc.token_lifetime_s),
                        nodes: Arc::new(nodes),
                    },
                })
            }
            g => Err(TokenError::Generation(g)),
        }
    }

    /// The vantage6 generation the tokens are for.
    pub fn generation(&self) -> u8 {
        match self.kind {
            Kind::V4 { .. } => 4,
            Kind::V5 { .. } => 5,
        }
    }

    /// A fresh access token for node `node_id` (its authenticatable id).
    pub fn node_token(&self, node_id: u64) -> Result<String, TokenError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut jti = [0u8; 16];
        getrandom::fill(&mut jti)?;
        match &self.kind {
            Kind::V4 { key } => {
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
                    key,
                )?)
            }
            Kind::V5 {
                key,
                issuer,
                kid,
                lifetime,
                nodes,
            } => {
                let node = nodes
                    .get(&node_id)
                    .ok_or(TokenError::UnknownNode(node_id))?;
                // the layout of a Keycloak client-credentials access token of the node's
                // service account, with the `vantage6_client_type` claim of HQ's mapper
                let claims = serde_json::json!({
                    "exp": now + lifetime.as_secs(),
                    "iat": now,
                    "jti": uuid_text(jti),
                    "iss": &**issuer,
                    "aud": "account",
                    "sub": node.subject,
                    "typ": "Bearer",
                    "azp": node.client,
                    "scope": "openid profile email",
                    "realm_access": {"roles": ["default-roles-vantage6", "offline_access", "uma_authorization"]},
                    "resource_access": {"account": {"roles": ["manage-account", "view-profile"]}},
                    "client_id": node.client,
                    "preferred_username": format!("service-account-{}", node.client),
                    "vantage6_client_type": "node",
                });
                let mut header = Header::new(Algorithm::RS256);
                header.kid = Some(kid.to_string());
                Ok(jsonwebtoken::encode(&header, &claims, key)?)
            }
        }
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
    use crate::fixture::{Keycloak, Node};
    use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};

    const REALM_PUB: &str = include_str!("../testdata/realm-pub.pem");

    fn key_file() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/realm-key.pem")
    }

    fn node(id: u64, kc: Option<&str>) -> Node {
        Node {
            id,
            organization_id: 1,
            collaboration_id: 2,
            name: Some(format!("bench-node-{id}")),
            keycloak_id: kc.map(str::to_owned),
        }
    }

    fn fixture(generation: u8, key: PathBuf, nodes: Vec<Node>) -> Fixture {
        Fixture {
            generation,
            jwt_secret_key: (generation == 4).then(|| "s3cret".to_owned()),
            keycloak: (generation == 5).then(|| Keycloak {
                private_key_file: key,
                issuer: "http://127.0.0.1:8080/realms/vantage6".to_owned(),
                kid: "bench-kid".to_owned(),
                token_lifetime_s: 300,
            }),
            nodes,
            runs: Vec::new(),
        }
    }

    #[test]
    fn node_token_claims() {
        let m =
            Minter::from_fixture(&fixture(4, key_file(), vec![node(12, None)])).expect("minter");
        assert_eq!(m.generation(), 4);
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
    fn keycloak_node_token_claims() {
        let kc_id = "0b7c8e4e-7f0e-4a43-9d6f-2f4f1b1e2c3d";
        let fx = fixture(
            5,
            key_file(),
            vec![node(7, Some(kc_id)), node(8, Some("other"))],
        );
        let minter = Minter::from_fixture(&fx).expect("minter");
        assert_eq!(minter.generation(), 5);
        let token = minter.node_token(7).expect("token");
        let header = decode_header(&token).expect("header");
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(header.kid.as_deref(), Some("bench-kid"));
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&["account"]);
        validation.set_issuer(&["http://127.0.0.1:8080/realms/vantage6"]);
        let key = DecodingKey::from_rsa_pem(REALM_PUB.as_bytes()).expect("public key");
        let c = decode::<serde_json::Value>(&token, &key, &validation)
            .expect("valid")
            .claims;
        assert_eq!(c["sub"], kc_id);
        assert_eq!(c["typ"], "Bearer");
        assert_eq!(c["vantage6_client_type"], "node");
        assert_eq!(c["azp"], "bench-node-7-node-client");
        assert_eq!(c["client_id"], "bench-node-7-node-client");
        assert_eq!(
            c["preferred_username"],
            "service-account-bench-node-7-node-client"
        );
        assert_eq!(c["exp"].as_u64(), c["iat"].as_u64().map(|i| i + 300));
        assert_eq!(c["jti"].as_str().map(str::len), Some(36));
        // a Keycloak access token has no flask-jwt-extended `type` claim
        assert!(c.get("type").is_none());
        // a fresh jti per token, each node its own subject
        let again =
            decode::<serde_json::Value>(&minter.node_token(7).expect("token"), &key, &validation)
                .expect("valid")
                .claims;
        assert_ne!(again["jti"], c["jti"]);
        let other =
            decode::<serde_json::Value>(&minter.node_token(8).expect("token"), &key, &validation)
                .expect("valid")
                .claims;
        assert_eq!(other["sub"], "other");
    }

    #[test]
    fn keycloak_token_for_an_unlisted_node_is_refused() {
        let f = fixture(5, key_file(), vec![node(7, Some("kc"))]);
        let m = Minter::from_fixture(&f).expect("minter");
        assert!(matches!(m.node_token(9), Err(TokenError::UnknownNode(9))));
    }

    #[test]
    fn generation_five_needs_a_readable_rsa_key() {
        let absent = fixture(
            5,
            PathBuf::from("/nonexistent/realm-key.pem"),
            vec![node(7, Some("kc"))],
        );
        assert!(matches!(
            Minter::from_fixture(&absent),
            Err(TokenError::KeyFile { .. })
        ));
        let not_a_key = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/README.md");
        assert!(matches!(
            Minter::from_fixture(&fixture(5, not_a_key, vec![node(7, Some("kc"))])),
            Err(TokenError::Key { .. })
        ));
        let no_subject = fixture(5, key_file(), vec![node(7, None)]);
        assert!(matches!(
            Minter::from_fixture(&no_subject),
            Err(TokenError::UnknownNode(7))
        ));
    }

    #[test]
    fn other_generations_are_refused() {
        let mut f = fixture(4, key_file(), vec![node(1, None)]);
        f.generation = 6;
        assert!(matches!(
            Minter::from_fixture(&f),
            Err(TokenError::Generation(6))
        ));
        f.generation = 4;
        f.jwt_secret_key = None;
        assert!(matches!(
            Minter::from_fixture(&f),
            Err(TokenError::Missing { generation: 4, .. })
        ));
    }
}
