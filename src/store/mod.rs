//! The only module that speaks SQL: reads and writes the vantage6 4.x or
//! 5.x database (SQLite or PostgreSQL) through an async sqlx pool.
//!
//! The vantage6 server owns the schema; `serve` never creates or alters a
//! table. Queries are written once in SQL that both dialects accept
//! (`$n` parameters, `CAST(… AS BIGINT)` for PostgreSQL's 32-bit integer
//! columns); the few places where the dialects differ (timestamps, binding
//! node configuration values) say so.

mod demo;

use std::time::Duration;

use chrono::NaiveDateTime;
use sqlx::{
    postgres::{PgArguments, PgConnectOptions, PgPoolOptions},
    query::Query,
    sqlite::{SqliteArguments, SqliteConnectOptions, SqlitePoolOptions},
    PgPool, Postgres, Sqlite, SqlitePool,
};

use crate::{
    auth::Subject,
    database_url::DatabaseUrl,
    identity::{EventScope, Identity, NodeIdentity, UserIdentity},
    node_config::{ConfigRow, ConfigValue},
};

/// A database failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The driver reported an error. sqlx's messages already end with
    /// their causes, so it is shown, not chained.
    #[error("database error: {0}")]
    Sqlx(sqlx::Error),
    /// A row exists but lacks something vantage6 always sets.
    #[error("inconsistent database: {0}")]
    Inconsistent(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Sqlx(e)
    }
}

/// `authenticatable.status` values (vantage6 `AuthStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStatus {
    /// `online`.
    Online,
    /// `offline`.
    Offline,
}

impl AuthStatus {
    fn as_str(self) -> &'static str {
        match self {
            AuthStatus::Online => "online",
            AuthStatus::Offline => "offline",
        }
    }
}

/// Why an `authenticatable` id does not lead to an [`Identity`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unknown {
    /// No such `authenticatable` row.
    NoSuchId,
    /// `authenticatable.type` is neither `node` nor `user`.
    OtherType(Option<String>),
    /// The `authenticatable` row has no `node` or `user` row (it was
    /// deleted, or never written): a subject that identifies nobody, not a
    /// database failure.
    MissingRow,
}

/// Whose a run is: its organisation and task, and its task's collaboration
/// and job id (each `None` when the column is NULL or, for the task's, the
/// task is missing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOwner {
    /// `run.organization_id`.
    pub organization_id: Option<i64>,
    /// `run.task_id`.
    pub task_id: Option<i64>,
    /// `task.collaboration_id` of the run's task.
    pub collaboration_id: Option<i64>,
    /// `task.job_id` of the run's task.
    pub job_id: Option<i64>,
}

/// What a 5.x node's ping found ([`Store::record_node_ping`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingRecorded {
    /// The status was `online`: only `last_seen` was written.
    WasOnline,
    /// The status was not `online` (e.g. the offline sweep caught the node
    /// late); it is now, with `last_seen`.
    WasNotOnline,
    /// No `authenticatable` row with that id.
    NoSuchRow,
}

/// A `dataframetobedeletedatnode` row: a dataframe a node has yet to
/// delete (5.x).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataframeDeletion {
    /// `dataframe_name`.
    pub dataframe_name: Option<String>,
    /// `session_id`.
    pub session_id: Option<i64>,
}

/// A task that depends on another (5.x `task_depends_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DependentTask {
    /// `task.id`.
    pub id: i64,
    /// `task.parent_id`.
    pub parent_id: Option<i64>,
    /// `task.collaboration_id`.
    pub collaboration_id: Option<i64>,
}

#[derive(Clone, Debug)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same query code on whichever pool is configured. Each arm gets
/// its own monomorphised copy of `$body`, with `$pool` bound to that pool.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// Handle to the vantage6 database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: Pool,
}

const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// sqlx warns about every acquire slower than 2 s: under a burst (a mass
/// disconnect writes twice per client) that is a line per event. Slow
/// acquires are logged at debug; the ones that time out fail the operation,
/// which the handlers count and log rate-limited.
const SLOW_ACQUIRE_LEVEL: log::LevelFilter = log::LevelFilter::Debug;

impl Store {
    /// Connects to an existing vantage6 database (it is never created here).
    pub async fn connect(url: &DatabaseUrl) -> Result<Self, StoreError> {
        let pool = match url {
            DatabaseUrl::Sqlite(path) => {
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(false)
                    // As SQLAlchemy: no foreign-key enforcement on SQLite.
                    .foreign_keys(false)
                    .busy_timeout(Duration::from_secs(10));
                Pool::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(4)
                        .acquire_timeout(ACQUIRE_TIMEOUT)
                        .acquire_slow_level(SLOW_ACQUIRE_LEVEL)
                        .connect_with(options)
                        .await?,
                )
            }
            DatabaseUrl::Postgres(url) => {
                let options: PgConnectOptions = url.parse()?;
                Pool::Postgres(
                    PgPoolOptions::new()
                        .max_connections(10)
                        .acquire_timeout(ACQUIRE_TIMEOUT)
                        .acquire_slow_level(SLOW_ACQUIRE_LEVEL)
                        .connect_with(options)
                        .await?,
                )
            }
        };
        Ok(Self { pool })
    }

    /// Checks that the vantage6 tables this server uses exist, so that a
    /// wrong `uri` fails at start-up rather than at the first connection.
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        for table in [
            "authenticatable",
            "node",
            "\"user\"",
            "collaboration",
            "\"Member\"",
            "rule",
            "nodeconfig",
            "run",
            "task",
        ] {
            self.check_readable(table, "1", "a vantage6 database")
                .await?;
        }
        Ok(())
    }

    /// 5.x: also checks the tables only vantage6 5.x has and this server
    /// uses (pending dataframe deletions, task dependencies).
    pub async fn check_schema_v5(&self) -> Result<(), StoreError> {
        for (table, columns) in [
            (
                "dataframetobedeletedatnode",
                "dataframe_name, session_id, node_id",
            ),
            ("task_depends_on", "task_id, depends_on_id"),
        ] {
            self.check_readable(table, columns, "a vantage6 5.x database")
                .await?;
        }
        Ok(())
    }

    /// `SELECT <columns> FROM <table>` works, or the error names the table
    /// and asks whether `uri` is `what`.
    async fn check_readable(
        &self,
        table: &str,
        columns: &str,
        what: &str,
    ) -> Result<(), StoreError> {
        let sql = format!("SELECT {columns} FROM {table} LIMIT 1");
        on_pool!(self, p => sqlx::query(&sql).fetch_optional(p).await.map(|_| ())).map_err(|e| {
            StoreError::Inconsistent(format!(
                "table {table} is not readable ({e}); is `uri` {what}?"
            ))
        })
    }

    /// A round trip to the database, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, p => sqlx::query("SELECT 1").execute(p).await?.rows_affected());
        Ok(())
    }

    /// Whether the database takes writes now, for readiness checks; `Err`
    /// when it does not answer. PostgreSQL: the session's
    /// `transaction_read_only` (on for a hot standby or a read-only
    /// database). SQLite: a write transaction is begun (`BEGIN IMMEDIATE`
    /// takes the write lock, which a read-only file, directory or mount
    /// refuses) and rolled back without writing anything.
    pub async fn writable(&self) -> Result<bool, StoreError> {
        match &self.pool {
            Pool::Postgres(p) => {
                let (read_only,): (String,) =
                    sqlx::query_as("SELECT current_setting('transaction_read_only')")
                        .fetch_one(p)
                        .await?;
                Ok(read_only != "on")
            }
            Pool::Sqlite(p) => {
                use sqlx::Connection as _;
                let mut conn = p.acquire().await?;
                let writable = match conn.begin_with("BEGIN IMMEDIATE").await {
                    Ok(tx) => {
                        tx.rollback().await?;
                        Ok(true)
                    }
                    Err(sqlx::Error::Database(e)) if is_sqlite_read_only(e.as_ref()) => Ok(false),
                    Err(e) => Err(e.into()),
                };
                writable
            }
        }
    }

    /// Whether `authenticatable.keycloak_id` exists: the vantage6 5.x
    /// schema has it, 4.x does not.
    pub async fn has_keycloak_id_column(&self) -> Result<bool, StoreError> {
        let (n,): (i64,) = match &self.pool {
            Pool::Sqlite(p) => {
                sqlx::query_as(
                    "SELECT COUNT(*) FROM pragma_table_info('authenticatable') \
                     WHERE name = 'keycloak_id'",
                )
                .fetch_one(p)
                .await?
            }
            Pool::Postgres(p) => {
                sqlx::query_as(
                    "SELECT COUNT(*) FROM information_schema.columns \
                     WHERE table_name = 'authenticatable' AND column_name = 'keycloak_id' \
                     AND table_schema = ANY (current_schemas(false))",
                )
                .fetch_one(p)
                .await?
            }
        };
        Ok(n > 0)
    }

    /// Looks up who a token's subject is: the `authenticatable` row with
    /// that id (4.x) or that `keycloak_id` (5.x, as HQ's
    /// `get_by_keycloak_id`; several rows are an inconsistency).
    pub async fn identify(
        &self,
        subject: impl Into<Subject>,
    ) -> Result<Result<Identity, Unknown>, StoreError> {
        let rows: Vec<(i64, Option<String>)> = match subject.into() {
            Subject::Id(auth_id) => on_pool!(self, p =>
                sqlx::query_as("SELECT CAST(id AS BIGINT), type FROM authenticatable WHERE id = $1")
                    .bind(auth_id)
                    .fetch_all(p)
                    .await?
            ),
            Subject::Keycloak(keycloak_id) => {
                let rows = on_pool!(self, p =>
                    sqlx::query_as(
                        "SELECT CAST(id AS BIGINT), type FROM authenticatable \
                         WHERE keycloak_id = $1 LIMIT 2",
                    )
                    .bind(&keycloak_id)
                    .fetch_all(p)
                    .await?
                );
                if rows.len() > 1 {
                    return Err(StoreError::Inconsistent(format!(
                        "several authenticatable rows have keycloak_id {keycloak_id:?}"
                    )));
                }
                rows
            }
        };
        match rows.into_iter().next() {
            None => Ok(Err(Unknown::NoSuchId)),
            Some((id, Some(kind))) if kind == "node" => self.node(id).await,
            Some((id, Some(kind))) if kind == "user" => self.user(id).await,
            Some((_, other)) => Ok(Err(Unknown::OtherType(other))),
        }
    }

    async fn node(&self, id: i64) -> Result<Result<Identity, Unknown>, StoreError> {
        let row: Option<(Option<String>, Option<i64>, Option<i64>)> = on_pool!(self, p =>
            sqlx::query_as(
                "SELECT name, CAST(organization_id AS BIGINT), CAST(collaboration_id AS BIGINT) \
                 FROM node WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(p)
            .await?
        );
        let Some(row) = row else {
            return Ok(Err(Unknown::MissingRow));
        };
        let (name, Some(organization_id), Some(collaboration_id)) = row else {
            return Err(StoreError::Inconsistent(format!(
                "node {id} has no node row with organization and collaboration"
            )));
        };
        Ok(Ok(Identity::Node(NodeIdentity {
            id,
            name: name.unwrap_or_default(),
            organization_id,
            collaboration_id,
        })))
    }

    async fn user(&self, id: i64) -> Result<Result<Identity, Unknown>, StoreError> {
        let row: Option<(Option<String>, Option<i64>)> = on_pool!(self, p =>
            sqlx::query_as(
                "SELECT username, CAST(organization_id AS BIGINT) FROM \"user\" WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(p)
            .await?
        );
        let Some(row) = row else {
            return Ok(Err(Unknown::MissingRow));
        };
        let (username, Some(organization_id)) = row else {
            return Err(StoreError::Inconsistent(format!(
                "user {id} has no user row with an organization"
            )));
        };
        let event_scope = self.event_receive_scope(id).await?;
        let collaboration_ids = match event_scope {
            None => Vec::new(),
            Some(EventScope::Global) => self.all_collaborations().await?,
            Some(_) => self.organization_collaborations(organization_id).await?,
        };
        Ok(Ok(Identity::User(UserIdentity {
            id,
            username: username.unwrap_or_default(),
            organization_id,
            event_scope,
            collaboration_ids,
        })))
    }

    /// The widest scope of the user's `event` RECEIVE rules, given directly
    /// (`UserPermission`) or through roles (`Permission` +
    /// `role_rule_association`). vantage6 4.x stores the enum member names
    /// (`RECEIVE`, `GLOBAL`), 5.x the values (`receive`, `global`); the two
    /// sets do not overlap, so one query serves both generations.
    async fn event_receive_scope(&self, user_id: i64) -> Result<Option<EventScope>, StoreError> {
        let scopes: Vec<(Option<String>,)> = on_pool!(self, p =>
            sqlx::query_as(
                "SELECT CAST(r.scope AS TEXT) FROM rule r \
                 WHERE r.name = 'event' AND CAST(r.operation AS TEXT) IN ('RECEIVE', 'receive') AND ( \
                   r.id IN (SELECT up.rule_id FROM \"UserPermission\" up WHERE up.user_id = $1) \
                   OR r.id IN (SELECT rr.rule_id FROM role_rule_association rr \
                               JOIN \"Permission\" pm ON pm.role_id = rr.role_id \
                               WHERE pm.user_id = $1))",
            )
            .bind(user_id)
            .fetch_all(p)
            .await?
        );
        Ok(scopes
            .into_iter()
            .filter_map(|(s,)| s.as_deref().and_then(EventScope::from_db))
            .max())
    }

    async fn all_collaborations(&self) -> Result<Vec<i64>, StoreError> {
        let ids: Vec<(i64,)> = on_pool!(self, p =>
            sqlx::query_as("SELECT CAST(id AS BIGINT) FROM collaboration ORDER BY id")
                .fetch_all(p)
                .await?
        );
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    async fn organization_collaborations(&self, org_id: i64) -> Result<Vec<i64>, StoreError> {
        let ids: Vec<(Option<i64>,)> = on_pool!(self, p =>
            sqlx::query_as(
                "SELECT DISTINCT CAST(collaboration_id AS BIGINT) FROM \"Member\" \
                 WHERE organization_id = $1 ORDER BY 1",
            )
            .bind(org_id)
            .fetch_all(p)
            .await?
        );
        Ok(ids.into_iter().filter_map(|(id,)| id).collect())
    }

    /// Sets `authenticatable.status`.
    pub async fn set_status(&self, auth_id: i64, status: AuthStatus) -> Result<(), StoreError> {
        on_pool!(self, p =>
            sqlx::query("UPDATE authenticatable SET status = $1 WHERE id = $2")
                .bind(status.as_str())
                .bind(auth_id)
                .execute(p)
                .await?
                .rows_affected()
        );
        Ok(())
    }

    /// Sets `authenticatable.status` to offline if it is online; whether it
    /// was (so that of several instances acting for a lost one, only the
    /// one that changed the row announces the node).
    pub async fn set_offline_if_online(&self, auth_id: i64) -> Result<bool, StoreError> {
        let changed = on_pool!(self, p =>
            sqlx::query(
                "UPDATE authenticatable SET status = $1 WHERE id = $2 AND status = $3",
            )
            .bind(AuthStatus::Offline.as_str())
            .bind(auth_id)
            .bind(AuthStatus::Online.as_str())
            .execute(p)
            .await?
            .rows_affected()
        );
        Ok(changed > 0)
    }

    /// A `ping`: status online and `last_seen` = `now` (UTC, naive, as vantage6).
    pub async fn record_ping(&self, auth_id: i64, now: NaiveDateTime) -> Result<(), StoreError> {
        self.set_online_seen(auth_id, now).await?;
        Ok(())
    }

    /// Status online and `last_seen` = `now`; the number of rows changed.
    async fn set_online_seen(&self, auth_id: i64, now: NaiveDateTime) -> Result<u64, StoreError> {
        Ok(on_pool!(self, p =>
            sqlx::query("UPDATE authenticatable SET status = $1, last_seen = $2 WHERE id = $3")
                .bind(AuthStatus::Online.as_str())
                .bind_timestamp(now)
                .bind(auth_id)
                .execute(p)
                .await?
                .rows_affected()
        ))
    }

    /// A 5.x node's `ping`: `last_seen` = `now`, and status online if it was
    /// not. The common case (still online) is one statement; only when it
    /// changed nothing does a second one set the status too and tell
    /// whether the row exists.
    pub async fn record_node_ping(
        &self,
        auth_id: i64,
        now: NaiveDateTime,
    ) -> Result<PingRecorded, StoreError> {
        let touched = on_pool!(self, p =>
            sqlx::query("UPDATE authenticatable SET last_seen = $1 WHERE id = $2 AND status = $3")
                .bind_timestamp(now)
                .bind(auth_id)
                .bind(AuthStatus::Online.as_str())
                .execute(p)
                .await?
                .rows_affected()
        );
        if touched > 0 {
            return Ok(PingRecorded::WasOnline);
        }
        let set = self.set_online_seen(auth_id, now).await?;
        Ok(if set > 0 {
            PingRecorded::WasNotOnline
        } else {
            PingRecorded::NoSuchRow
        })
    }

    /// 5.x: the dataframes `node_id` has yet to delete
    /// (`dataframetobedeletedatnode` rows), in insertion order.
    pub async fn pending_dataframe_deletions(
        &self,
        node_id: i64,
    ) -> Result<Vec<DataframeDeletion>, StoreError> {
        let rows: Vec<(Option<String>, Option<i64>)> = on_pool!(self, p =>
            sqlx::query_as(
                "SELECT dataframe_name, CAST(session_id AS BIGINT) \
                 FROM dataframetobedeletedatnode WHERE node_id = $1 ORDER BY id",
            )
            .bind(node_id)
            .fetch_all(p)
            .await?
        );
        Ok(rows
            .into_iter()
            .map(|(dataframe_name, session_id)| DataframeDeletion {
                dataframe_name,
                session_id,
            })
            .collect())
    }

    /// 5.x `dataframe_deleted`: deletes the node's pending-deletion rows of
    /// that dataframe; returns how many there were.
    pub async fn delete_dataframe_deletion(
        &self,
        dataframe_name: &str,
        session_id: i64,
        node_id: i64,
    ) -> Result<u64, StoreError> {
        Ok(on_pool!(self, p =>
            sqlx::query(
                "DELETE FROM dataframetobedeletedatnode \
                 WHERE dataframe_name = $1 AND session_id = $2 AND node_id = $3",
            )
            .bind(dataframe_name)
            .bind(session_id)
            .bind(node_id)
            .execute(p)
            .await?
            .rows_affected()
        ))
    }

    /// 5.x: the tasks that depend on `task_id` (`task_depends_on` rows with
    /// `depends_on_id = task_id`, HQ's `Task.required_by`), by id.
    pub async fn dependent_tasks(&self, task_id: i64) -> Result<Vec<DependentTask>, StoreError> {
        let rows: Vec<(i64, Option<i64>, Option<i64>)> = on_pool!(self, p =>
            sqlx::query_as(
                "SELECT CAST(t.id AS BIGINT), CAST(t.parent_id AS BIGINT), \
                 CAST(t.collaboration_id AS BIGINT) \
                 FROM task_depends_on d JOIN task t ON t.id = d.task_id \
                 WHERE d.depends_on_id = $1 ORDER BY t.id",
            )
            .bind(task_id)
            .fetch_all(p)
            .await?
        );
        Ok(rows
            .into_iter()
            .map(|(id, parent_id, collaboration_id)| DependentTask {
                id,
                parent_id,
                collaboration_id,
            })
            .collect())
    }

    /// Marks `online` nodes whose `last_seen` is before `before` as
    /// `offline`; returns how many. Nodes that never pinged (NULL
    /// `last_seen`) are left alone.
    pub async fn sweep_offline_nodes(&self, before: NaiveDateTime) -> Result<u64, StoreError> {
        Ok(on_pool!(self, p =>
            sqlx::query(
                "UPDATE authenticatable SET status = 'offline' \
                 WHERE type = 'node' AND status = 'online' AND last_seen < $1",
            )
            .bind_timestamp(before)
            .execute(p)
            .await?
            .rows_affected()
        ))
    }

    /// Replaces all `nodeconfig` rows of a node, in one transaction.
    pub async fn replace_node_config(
        &self,
        node_id: i64,
        rows: &[ConfigRow],
    ) -> Result<(), StoreError> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query("DELETE FROM nodeconfig WHERE node_id = $1")
                .bind(node_id)
                .execute(&mut *tx)
                .await?;
            for row in rows {
                sqlx::query("INSERT INTO nodeconfig (node_id, \"key\", value) VALUES ($1, $2, $3)")
                    .bind(node_id)
                    .bind(&row.key)
                    .bind_config_value(&row.value)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Deletes all `nodeconfig` rows of a node.
    pub async fn delete_node_config(&self, node_id: i64) -> Result<(), StoreError> {
        on_pool!(self, p =>
            sqlx::query("DELETE FROM nodeconfig WHERE node_id = $1")
                .bind(node_id)
                .execute(p)
                .await?
                .rows_affected()
        );
        Ok(())
    }

    /// The organisation, collaboration and job id of a run; `None` when the
    /// run does not exist.
    pub async fn run_owner(&self, run_id: i64) -> Result<Option<RunOwner>, StoreError> {
        type Row = (Option<i64>, Option<i64>, Option<i64>, Option<i64>);
        let row: Option<Row> = on_pool!(self, p =>
            sqlx::query_as(
                "SELECT CAST(r.organization_id AS BIGINT), CAST(r.task_id AS BIGINT), \
                 CAST(t.collaboration_id AS BIGINT), CAST(t.job_id AS BIGINT) \
                 FROM run r LEFT JOIN task t ON t.id = r.task_id WHERE r.id = $1",
            )
            .bind(run_id)
            .fetch_optional(p)
            .await?
        );
        Ok(row.map(
            |(organization_id, task_id, collaboration_id, job_id)| RunOwner {
                organization_id,
                task_id,
                collaboration_id,
                job_id,
            },
        ))
    }

    /// Appends a line to `run.log` as vantage6 does (a `"\n"` first when the
    /// old log does not end with one), atomically, if the run belongs to
    /// `organization_id` and its task to `collaboration_id`. Returns false
    /// when no such run exists (see [`run_owner`](Self::run_owner) for why).
    pub async fn append_run_log(
        &self,
        run_id: i64,
        organization_id: i64,
        collaboration_id: i64,
        line: &str,
    ) -> Result<bool, StoreError> {
        let done = on_pool!(self, p =>
            sqlx::query(
                "UPDATE run SET log = CASE \
                   WHEN log IS NULL OR log = '' THEN $1 \
                   WHEN substr(log, length(log), 1) = $2 THEN log || $1 \
                   ELSE log || $2 || $1 END \
                 WHERE id = $3 AND organization_id = $4 \
                   AND task_id IN (SELECT id FROM task WHERE collaboration_id = $5)",
            )
            .bind(line)
            .bind("\n")
            .bind(run_id)
            .bind(organization_id)
            .bind(collaboration_id)
            .execute(p)
            .await?
            .rows_affected()
        );
        Ok(done > 0)
    }
}

/// The binds whose form differs between the dialects, chosen so that the
/// stored value is what vantage6 (SQLAlchemy with sqlite3 or psycopg2)
/// stores for the same Python value.
trait DialectBind<'q>: Sized {
    /// A naive UTC timestamp: SQLAlchemy's text form on SQLite, a
    /// `timestamp` on PostgreSQL.
    fn bind_timestamp(self, t: NaiveDateTime) -> Self;
    /// A `nodeconfig.value`: typed, so that the database renders it into the
    /// string column as it does for the reference (SQLite: `false` → `'0'`,
    /// `0.5` → `'0.5'`; PostgreSQL: `false` → `'false'`).
    fn bind_config_value(self, v: &'q ConfigValue) -> Self;
}

impl<'q> DialectBind<'q> for Query<'q, Sqlite, SqliteArguments<'q>> {
    fn bind_timestamp(self, t: NaiveDateTime) -> Self {
        self.bind(sqlalchemy_sqlite_datetime(t))
    }
    fn bind_config_value(self, v: &'q ConfigValue) -> Self {
        match v {
            ConfigValue::Null => self.bind(None::<&str>),
            // Python's sqlite3 binds bools as integers.
            ConfigValue::Bool(b) => self.bind(i64::from(*b)),
            ConfigValue::Int(i) => self.bind(*i),
            ConfigValue::Float(f) => self.bind(*f),
            ConfigValue::Text(s) | ConfigValue::Json(s) => self.bind(s.as_str()),
        }
    }
}

impl<'q> DialectBind<'q> for Query<'q, Postgres, PgArguments> {
    fn bind_timestamp(self, t: NaiveDateTime) -> Self {
        self.bind(t)
    }
    fn bind_config_value(self, v: &'q ConfigValue) -> Self {
        // Always text: sqlx caches the statement with the first bind's
        // type, and psycopg2 sends literals that PostgreSQL casts to VARCHAR.
        self.bind(postgres_config_text(v))
    }
}

/// The text PostgreSQL stores in `nodeconfig.value` (VARCHAR) when
/// psycopg2 sends the Python value as a literal: `true`, `5`, and for floats
/// Python's `repr` read as a NUMERIC (`1.0` stays `1.0`, `1e+20` becomes
/// `100000000000000000000`).
fn postgres_config_text(v: &ConfigValue) -> Option<String> {
    match v {
        ConfigValue::Null => None,
        ConfigValue::Bool(b) => Some(b.to_string()),
        ConfigValue::Int(i) => Some(i.to_string()),
        // NUMERIC has no negative zero.
        ConfigValue::Float(f) if *f == 0.0 => Some("0.0".to_owned()),
        ConfigValue::Float(f) => {
            let text = f.to_string();
            // repr() keeps a ".0" on integral values it writes without an exponent.
            let fixed = (1e-4..1e16).contains(&f.abs());
            Some(if fixed && !text.contains('.') {
                format!("{text}.0")
            } else {
                text
            })
        }
        ConfigValue::Text(s) | ConfigValue::Json(s) => Some(s.clone()),
    }
}

/// SQLAlchemy's SQLite `DATETIME` text form: `YYYY-MM-DD HH:MM:SS.ffffff`.
fn sqlalchemy_sqlite_datetime(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

pub use demo::{create_demo_database, create_demo_database_v5, DemoFixture};

/// SQLite's `SQLITE_READONLY` family (8, extended 264, 520, ...): the
/// database cannot be written.
fn is_sqlite_read_only(e: &dyn sqlx::error::DatabaseError) -> bool {
    e.code()
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| c & 0xff == 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_config_text_matches_psycopg2_literals() {
        let text = |v| postgres_config_text(&v);
        assert_eq!(text(ConfigValue::Bool(false)).as_deref(), Some("false"));
        assert_eq!(text(ConfigValue::Int(-3)).as_deref(), Some("-3"));
        assert_eq!(text(ConfigValue::Float(0.5)).as_deref(), Some("0.5"));
        assert_eq!(text(ConfigValue::Float(2.0)).as_deref(), Some("2.0"));
        assert_eq!(
            text(ConfigValue::Float(1e20)).as_deref(),
            Some("100000000000000000000")
        );
        assert_eq!(
            text(ConfigValue::Float(1.5e-7)).as_deref(),
            Some("0.00000015")
        );
        assert_eq!(
            text(ConfigValue::Float(123456789012345678.0)).as_deref(),
            Some("123456789012345680")
        );
        assert_eq!(text(ConfigValue::Float(-0.0)).as_deref(), Some("0.0"));
        assert_eq!(text(ConfigValue::Null), None);
    }

    #[test]
    fn sqlite_datetime_matches_sqlalchemy() {
        let t = chrono::NaiveDate::from_ymd_opt(2026, 11, 28)
            .and_then(|d| d.and_hms_micro_opt(7, 5, 3, 42))
            .expect("valid date");
        assert_eq!(sqlalchemy_sqlite_datetime(t), "2026-11-28 07:05:03.000042");
    }
}
