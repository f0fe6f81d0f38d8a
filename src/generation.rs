//! Which vantage6 generation an instance serves: 4.x (HS256 tokens with
//! `jwt_secret_key`, integer subjects) or 5.x "HQ" (Keycloak RSA tokens,
//! subjects looked up in `authenticatable.keycloak_id`).
//!
//! The database tells: 5.x has the column `authenticatable.keycloak_id`,
//! 4.x does not. `vantage6_generation: 4` or `5` states it explicitly and
//! must agree with the database.

use crate::config::{
    missing_jwt_secret_key, realm_key_missing, Config, ConfigError, GenerationSetting,
};

/// A vantage6 generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vantage6Generation {
    /// vantage6 4.x.
    V4,
    /// vantage6 5.x (HQ).
    V5,
}

impl std::fmt::Display for Vantage6Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Vantage6Generation::V4 => "4.x",
            Vantage6Generation::V5 => "5.x",
        })
    }
}

/// The generation the database schema belongs to.
pub fn of_schema(has_keycloak_id: bool) -> Vantage6Generation {
    if has_keycloak_id {
        Vantage6Generation::V5
    } else {
        Vantage6Generation::V4
    }
}

/// The generation to serve, from the setting and the schema, or a one-line
/// error naming the setting when they contradict each other or the chosen
/// generation lacks what it needs (`jwt_secret_key` for 4.x, a realm key
/// for 5.x).
pub fn resolve(
    config: &Config,
    schema: Vantage6Generation,
) -> Result<Vantage6Generation, ConfigError> {
    let chosen = match (config.vantage6_generation, schema) {
        (GenerationSetting::Auto, s) => s,
        (GenerationSetting::V4, Vantage6Generation::V4) => Vantage6Generation::V4,
        (GenerationSetting::V5, Vantage6Generation::V5) => Vantage6Generation::V5,
        (setting, _) => {
            let (wanted, found) = match setting {
                GenerationSetting::V4 => (
                    "4",
                    "has `authenticatable.keycloak_id` (a vantage6 5.x schema)",
                ),
                _ => (
                    "5",
                    "has no `authenticatable.keycloak_id` (a vantage6 4.x schema)",
                ),
            };
            return Err(ConfigError::Invalid {
                name: "vantage6_generation",
                message: format!(
                    "set to {wanted}, but the database {found}: remove the setting or fix `uri`"
                ),
            });
        }
    };
    match chosen {
        Vantage6Generation::V4 if config.jwt_secret_key.is_empty() => Err(missing_jwt_secret_key()),
        Vantage6Generation::V5 if config.realm_key_sources().is_none() => Err(realm_key_missing()),
        g => Ok(g),
    }
}
