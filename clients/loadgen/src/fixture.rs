//! The fixture file written by `clients/bench/fixture.py` (see the crate README).

use std::path::Path;

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
    /// vantage6 generation (4; 5 is not supported yet).
    #[serde(default = "four")]
    pub generation: u8,
    /// HS256 secret of the vantage6 configuration.
    pub jwt_secret_key: String,
    /// Seeded nodes.
    pub nodes: Vec<Node>,
    /// Seeded runs.
    #[serde(default)]
    pub runs: Vec<Run>,
}

fn four() -> u8 {
    4
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
}

impl Fixture {
    /// Reads and checks a fixture file.
    pub fn load(path: &Path) -> Result<Self, FixtureError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| FixtureError::Read {
            path: shown.clone(),
            source,
        })?;
        let fixture: Fixture =
            serde_json::from_str(&text).map_err(|source| FixtureError::Parse {
                path: shown,
                source,
            })?;
        if fixture.nodes.is_empty() {
            return Err(FixtureError::NoNodes);
        }
        Ok(fixture)
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
