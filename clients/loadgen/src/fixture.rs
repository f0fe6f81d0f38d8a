//! The fixture file written by `clients/bench/fixture.py` (see the crate README).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One seeded vantage6 node.
#[derive(Debug, Clone, Deserialize)]
pub struct Node {
    /// Authenticatable id: the token's `sub`.
    pub id: u64,
    /// Its organization.
    pub organization_id: u64,
    /// Its collaboration.
    pub collaboration_id: u64,
    /// Its name (generation 5: the Keycloak client is `<name>-node-client`).
    #[serde(default)]
    pub name: Option<String>,
    /// Generation 5: `authenticatable.keycloak_id`, the `sub` of its Keycloak tokens.
    #[serde(default)]
    pub keycloak_id: Option<String>,
}

/// Generation 5: what signs the nodes' Keycloak-layout access tokens. (The fixture's
/// `public_key_file`, for the servers or a realm stand-in, is not read here.)
#[derive(Debug, Clone, Deserialize)]
pub struct Keycloak {
    /// The realm's private key, a PKCS#8 (or PKCS#1) PEM file; relative to the fixture's
    /// directory when relative.
    pub private_key_file: PathBuf,
    /// The tokens' `iss` (`{KEYCLOAK_URL}/realms/{realm}`; HQ does not check it).
    pub issuer: String,
    /// The `kid` of the tokens' header.
    pub kid: String,
    /// Lifetime of a minted token in seconds (Keycloak's default access-token lifespan: 300).
    #[serde(default = "keycloak_lifetime")]
    pub token_lifetime_s: u64,
}

fn keycloak_lifetime() -> u64 {
    300
}

/// A run of a node's own organization.
#[derive(Debug, Clone, Deserialize)]
pub struct Run {
    /// Run id.
    pub id: u64,
    /// Its task.
    pub task_id: u64,
    /// The task's collaboration.
    pub collaboration_id: u64,
    /// The run's organization.
    pub organization_id: u64,
    /// The node of that organization in that collaboration.
    pub node_id: u64,
}

/// The whole fixture.
#[derive(Debug, Clone, Deserialize)]
pub struct Fixture {
    /// vantage6 generation: 4 (HS256 tokens) or 5 (Keycloak RS256 tokens).
    #[serde(default = "four")]
    pub generation: u8,
    /// Generation 4: HS256 secret of the vantage6 configuration.
    #[serde(default)]
    pub jwt_secret_key: Option<String>,
    /// Generation 5: the realm key and token layout.
    #[serde(default)]
    pub keycloak: Option<Keycloak>,
    /// Seeded nodes.
    pub nodes: Vec<Node>,
    /// Seeded runs.
    #[serde(default)]
    pub runs: Vec<Run>,
}

fn four() -> u8 {
    4
}

#[derive(Debug)]
enum ParseOrCheck {
    Parse(serde_json::Error),
    Check(FixtureError),
}

/// Why a fixture could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// The file could not be read.
    #[error("cannot read fixture {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a fixture.
    #[error("fixture {path} is not valid: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// Nothing to connect.
    #[error("the fixture has no nodes")]
    NoNodes,
    /// A field the fixture's generation needs is absent.
    #[error("a generation {generation} fixture needs `{field}`")]
    Missing {
        /// The fixture's generation.
        generation: u8,
        /// The absent field.
        field: String,
    },
    /// A generation this program does not know.
    #[error("vantage6 generation {0} is not supported (4 or 5)")]
    Generation(u8),
}

impl Fixture {
    /// Reads and checks a fixture file.
    pub fn load(path: &Path) -> Result<Self, FixtureError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| FixtureError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut fixture = Self::parse(&text).map_err(|e| match e {
            ParseOrCheck::Parse(source) => FixtureError::Parse {
                path: shown,
                source,
            },
            ParseOrCheck::Check(e) => e,
        })?;
        if let Some(kc) = &mut fixture.keycloak {
            if kc.private_key_file.is_relative() {
                let dir = path.parent().unwrap_or(Path::new("."));
                kc.private_key_file = dir.join(&kc.private_key_file);
            }
        }
        Ok(fixture)
    }

    /// Parses and checks a fixture's text (paths left as written).
    fn parse(text: &str) -> Result<Self, ParseOrCheck> {
        let fixture: Fixture = serde_json::from_str(text).map_err(ParseOrCheck::Parse)?;
        fixture.check().map_err(ParseOrCheck::Check)?;
        Ok(fixture)
    }

    /// Nodes present, and what the generation needs to mint tokens.
    fn check(&self) -> Result<(), FixtureError> {
        if self.nodes.is_empty() {
            return Err(FixtureError::NoNodes);
        }
        let missing = |field: &str| FixtureError::Missing {
            generation: self.generation,
            field: field.to_owned(),
        };
        match self.generation {
            4 if self.jwt_secret_key.is_none() => Err(missing("jwt_secret_key")),
            4 => Ok(()),
            5 => {
                if self.keycloak.is_none() {
                    return Err(missing("keycloak"));
                }
                match self.nodes.iter().find(|n| n.keycloak_id.is_none()) {
                    Some(n) => Err(missing(&format!("nodes[id={}].keycloak_id", n.id))),
                    None => Ok(()),
                }
            }
            g => Err(FixtureError::Generation(g)),
        }
    }

    /// Keeps the first `n` nodes (all when `None`), and the runs of the nodes kept.
    pub fn truncate_nodes(&mut self, n: Option<usize>) {
        if let Some(n) = n {
            self.nodes.truncate(n.max(1));
        }
        let kept: std::collections::HashSet<u64> = self.nodes.iter().map(|n| n.id).collect();
        self.runs.retain(|r| kept.contains(&r.node_id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = r#"{"generation": 4, "jwt_secret_key": "s", "prefix": "p",
        "nodes": [{"id": 3, "name": "p-node-0", "organization_id": 1, "collaboration_id": 2}],
        "collaborations": [{"id": 2, "nodes": [3]}],
        "runs": [{"id": 9, "task_id": 8, "job_id": 1000000, "collaboration_id": 2,
                  "organization_id": 1, "node_id": 3}]}"#;

    const V5: &str = r#"{"generation": 5, "prefix": "p",
        "keycloak": {"private_key_file": "p-realm-key.pem", "public_key_file": "p-realm-pub.pem",
                     "issuer": "http://127.0.0.1:8080/realms/vantage6", "kid": "k1"},
        "nodes": [{"id": 3, "name": "p-node-0", "organization_id": 1, "collaboration_id": 2,
                   "keycloak_id": "0b7c8e4e-7f0e-4a43-9d6f-2f4f1b1e2c3d"}],
        "collaborations": [{"id": 2, "nodes": [3]}], "runs": []}"#;

    #[test]
    fn generation_four_unchanged() {
        let f = Fixture::parse(V4).expect("parses");
        assert_eq!(f.generation, 4);
        assert_eq!(f.jwt_secret_key.as_deref(), Some("s"));
        assert!(f.keycloak.is_none());
        assert_eq!(f.nodes[0].keycloak_id, None);
        assert_eq!(f.runs[0].node_id, 3);
    }

    #[test]
    fn generation_five_fields() {
        let f = Fixture::parse(V5).expect("parses");
        assert_eq!(f.generation, 5);
        assert!(f.jwt_secret_key.is_none());
        let kc = f.keycloak.expect("keycloak");
        assert_eq!(kc.kid, "k1");
        assert_eq!(kc.issuer, "http://127.0.0.1:8080/realms/vantage6");
        assert_eq!(kc.token_lifetime_s, 300);
        assert_eq!(kc.private_key_file, PathBuf::from("p-realm-key.pem"));
        assert_eq!(
            f.nodes[0].keycloak_id.as_deref(),
            Some("0b7c8e4e-7f0e-4a43-9d6f-2f4f1b1e2c3d")
        );
        assert_eq!(f.nodes[0].name.as_deref(), Some("p-node-0"));
    }

    #[test]
    fn relative_key_path_is_the_fixture_directory() {
        let dir = std::env::temp_dir().join(format!("v6-loadgen-fixture-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("fixture.json");
        std::fs::write(&path, V5).expect("write");
        let f = Fixture::load(&path).expect("loads");
        let _ = std::fs::remove_dir_all(&dir);
        let kc = f.keycloak.expect("keycloak");
        assert_eq!(kc.private_key_file, dir.join("p-realm-key.pem"));
    }

    #[test]
    fn what_a_generation_lacks_is_refused() {
        let check = |text: &str| {
            Fixture::parse(text).err().map(|e| match e {
                ParseOrCheck::Check(e) => e.to_string(),
                ParseOrCheck::Parse(e) => format!("parse: {e}"),
            })
        };
        let no_secret = V4.replace(r#""jwt_secret_key": "s","#, "");
        assert_eq!(
            check(&no_secret).as_deref(),
            Some("a generation 4 fixture needs `jwt_secret_key`")
        );
        let no_kc_id = V5.replace(
            r#""keycloak_id": "0b7c8e4e-7f0e-4a43-9d6f-2f4f1b1e2c3d""#,
            r#""keycloak_id": null"#,
        );
        assert_eq!(
            check(&no_kc_id).as_deref(),
            Some("a generation 5 fixture needs `nodes[id=3].keycloak_id`")
        );
        let no_kc = V4.replace(r#""generation": 4"#, r#""generation": 5"#);
        assert_eq!(
            check(&no_kc).as_deref(),
            Some("a generation 5 fixture needs `keycloak`")
        );
        let six = V4.replace(r#""generation": 4"#, r#""generation": 6"#);
        assert_eq!(
            check(&six).as_deref(),
            Some("vantage6 generation 6 is not supported (4 or 5)")
        );
    }
}
