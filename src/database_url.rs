//! SQLAlchemy-style database URLs, as vantage6 writes them in `uri`.
//!
//! | vantage6 `uri` | meaning |
//! |---|---|
//! | `sqlite:///relative/path.sqlite` | a file relative to the working directory |
//! | `sqlite:////absolute/path.sqlite` | an absolute file |
//! | `postgresql://user:pass@host:5432/db` | PostgreSQL |
//! | `postgresql+psycopg2://…`, `postgres://…` | the same; the driver suffix is dropped |

use std::path::PathBuf;

/// A database location understood by [`crate::store`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL in libpq form (`postgres://…`).
    Postgres(String),
}

/// Why a `uri` is not usable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DatabaseUrlError {
    /// No `scheme://` prefix.
    #[error("{0:?} is not a URL (expected e.g. sqlite:///file.sqlite or postgresql://host/db)")]
    NotAUrl(String),
    /// A dialect other than SQLite or PostgreSQL.
    #[error("database dialect {0:?} is not supported (only sqlite and postgresql)")]
    Unsupported(String),
    /// `sqlite://` with no file, i.e. an in-memory database, which another
    /// process (the vantage6 server) could never share.
    #[error("an in-memory SQLite database cannot be shared with vantage6; give a file path")]
    SqliteMemory,
}

impl DatabaseUrl {
    /// Parses a SQLAlchemy URL.
    pub fn parse(uri: &str) -> Result<Self, DatabaseUrlError> {
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| DatabaseUrlError::NotAUrl(uri.to_owned()))?;
        let dialect = scheme.split('+').next().unwrap_or(scheme);
        match dialect {
            "sqlite" => {
                // SQLAlchemy: sqlite:///rel (3 slashes) and sqlite:////abs (4).
                let path = rest.strip_prefix('/').unwrap_or(rest);
                let path = path.split('?').next().unwrap_or(path);
                if path.is_empty() || path == ":memory:" {
                    return Err(DatabaseUrlError::SqliteMemory);
                }
                Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
            }
            "postgresql" | "postgres" => Ok(DatabaseUrl::Postgres(format!("postgres://{rest}"))),
            other => Err(DatabaseUrlError::Unsupported(other.to_owned())),
        }
    }

    /// The URL with any password hidden, for logs.
    pub fn display_redacted(&self) -> String {
        match self {
            DatabaseUrl::Sqlite(p) => format!("sqlite file {}", p.display()),
            DatabaseUrl::Postgres(u) => crate::config::redact_uri(u),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_relative_and_absolute() {
        assert_eq!(
            DatabaseUrl::parse("sqlite:///v6.sqlite").unwrap(),
            DatabaseUrl::Sqlite("v6.sqlite".into())
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:////var/lib/v6.sqlite").unwrap(),
            DatabaseUrl::Sqlite("/var/lib/v6.sqlite".into())
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite://"),
            Err(DatabaseUrlError::SqliteMemory)
        );
    }

    #[test]
    fn postgres_variants() {
        for uri in [
            "postgresql://u:p@h:5432/db",
            "postgresql+psycopg2://u:p@h:5432/db",
            "postgres://u:p@h:5432/db",
        ] {
            assert_eq!(
                DatabaseUrl::parse(uri).unwrap(),
                DatabaseUrl::Postgres("postgres://u:p@h:5432/db".into())
            );
        }
    }

    #[test]
    fn rejects_other_dialects() {
        assert!(matches!(
            DatabaseUrl::parse("mysql://h/db"),
            Err(DatabaseUrlError::Unsupported(_))
        ));
        assert!(matches!(
            DatabaseUrl::parse("nonsense"),
            Err(DatabaseUrlError::NotAUrl(_))
        ));
    }
}
