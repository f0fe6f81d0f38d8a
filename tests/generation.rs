//! Generation detection and 5.x identities on real databases: SQLite files
//! and a PostgreSQL database of our own on 127.0.0.1:5432 (user postgres,
//! trust), created and dropped by the test.

mod common;

use common::demo_sqlite;
use sqlx::{Connection, Executor, PgConnection};
use v6_socketio::{
    auth::Subject,
    database_url::DatabaseUrl,
    generation::{
        self,
        Vantage6Generation::{self, V4, V5},
    },
    identity::{EventScope, Identity, NodeIdentity, UserIdentity},
    rooms,
    store::{DataframeDeletion, DependentTask, PingRecorded, Store, StoreError, Unknown},
};

const NODE_A: &str = "0b6c1f9e-5d2a-4c1e-9a53-1d7f0c2e4a01";
const USER: &str = "c9a4e3d2-1b7f-4e8a-a5c6-3f2e1d0b9c03";

/// The node whose `keycloak_id` is `id`.
async fn node_by_keycloak_id(store: &Store, id: &str) -> NodeIdentity {
    match store.identify(Subject::Keycloak(id.into())).await {
        Ok(Ok(Identity::Node(node))) => node,
        other => panic!("{id}: not a node: {other:?}"),
    }
}

/// The user whose `keycloak_id` is `id`.
async fn user_by_keycloak_id(store: &Store, id: &str) -> UserIdentity {
    match store.identify(Subject::Keycloak(id.into())).await {
        Ok(Ok(Identity::User(user))) => user,
        other => panic!("{id}: not a user: {other:?}"),
    }
}

#[tokio::test]
async fn sqlite_schema_tells_the_generation() {
    let (_d4, s4, _) = demo_sqlite(V4).await;
    assert!(!s4.has_keycloak_id_column().await.expect("probe"));
    let (_d5, s5, _) = demo_sqlite(V5).await;
    assert!(s5.has_keycloak_id_column().await.expect("probe"));
    assert_eq!(generation::of_schema(true), Vantage6Generation::V5);
    assert_eq!(generation::of_schema(false), Vantage6Generation::V4);
}

#[tokio::test]
async fn sqlite_5x_identities_by_keycloak_id() {
    let (_dir, store, mut conn) = demo_sqlite(V5).await;
    let node = node_by_keycloak_id(&store, NODE_A).await;
    assert_eq!((node.id, node.name.as_str()), (1, "demo-node-a"));
    assert_eq!((node.collaboration_id, node.organization_id), (1, 1));
    // The 5.x rule values (lowercase) give the user its rooms.
    let user = user_by_keycloak_id(&store, USER).await;
    assert_eq!(user.event_scope, Some(EventScope::Global));
    assert_eq!(
        rooms::rooms_for(&Identity::User(user)),
        vec!["collaboration_1".to_owned()]
    );
    conn.execute("UPDATE rule SET scope = 'organization' WHERE id = 1")
        .await
        .expect("update");
    let user = user_by_keycloak_id(&store, USER).await;
    assert_eq!(user.event_scope, Some(EventScope::Organization));
    assert_eq!(
        rooms::rooms_for(&Identity::User(user)),
        vec!["collaboration_1_organization_1".to_owned()]
    );
    // Unknown subjects, and ids in the wrong form, are unknown.
    for unknown in ["", "not-a-keycloak-id", "1"] {
        assert_eq!(
            store
                .identify(Subject::Keycloak(unknown.into()))
                .await
                .expect("query"),
            Err(Unknown::NoSuchId),
            "{unknown:?}"
        );
    }
    // Two rows with one keycloak id (HQ's one_or_none raises): an inconsistency.
    conn.execute(
        "UPDATE authenticatable SET keycloak_id = '0b6c1f9e-5d2a-4c1e-9a53-1d7f0c2e4a01' WHERE id = 2",
    )
    .await
    .expect("update");
    assert!(matches!(
        store.identify(Subject::Keycloak(NODE_A.into())).await,
        Err(StoreError::Inconsistent(_))
    ));
}

const PG_5X: &str = r#"
CREATE TABLE organization (id SERIAL PRIMARY KEY, name VARCHAR UNIQUE);
CREATE TABLE collaboration (id SERIAL PRIMARY KEY, name VARCHAR UNIQUE, encrypted BOOLEAN);
CREATE TABLE "Member" (organization_id INTEGER REFERENCES organization (id), collaboration_id INTEGER REFERENCES collaboration (id));
CREATE TABLE authenticatable (id SERIAL PRIMARY KEY, type VARCHAR(50), keycloak_id VARCHAR, keycloak_client_id VARCHAR, last_seen TIMESTAMP, status VARCHAR);
CREATE TABLE node (id INTEGER PRIMARY KEY REFERENCES authenticatable (id), name VARCHAR UNIQUE, collaboration_id INTEGER REFERENCES collaboration (id), organization_id INTEGER REFERENCES organization (id));
CREATE TABLE "user" (id INTEGER PRIMARY KEY REFERENCES authenticatable (id), username VARCHAR UNIQUE, organization_id INTEGER REFERENCES organization (id), is_service_account BOOLEAN);
CREATE TABLE rule (id SERIAL PRIMARY KEY, name TEXT, operation VARCHAR, scope VARCHAR, description VARCHAR);
CREATE TABLE role (id SERIAL PRIMARY KEY, name TEXT);
CREATE TABLE "Permission" (role_id INTEGER REFERENCES role (id), user_id INTEGER REFERENCES "user" (id));
CREATE TABLE "UserPermission" (rule_id INTEGER REFERENCES rule (id), user_id INTEGER REFERENCES "user" (id));
CREATE TABLE role_rule_association (role_id INTEGER REFERENCES role (id), rule_id INTEGER REFERENCES rule (id));
CREATE TABLE nodeconfig (id SERIAL PRIMARY KEY, node_id INTEGER REFERENCES node (id), "key" VARCHAR, value VARCHAR);
CREATE TABLE task (id SERIAL PRIMARY KEY, name VARCHAR, collaboration_id INTEGER, job_id INTEGER, parent_id INTEGER REFERENCES task (id), init_org_id INTEGER NOT NULL);
CREATE TABLE run (id SERIAL PRIMARY KEY, task_id INTEGER, organization_id INTEGER, status TEXT, log TEXT);
CREATE TABLE task_depends_on (task_id INTEGER NOT NULL REFERENCES task (id), depends_on_id INTEGER NOT NULL REFERENCES task (id), PRIMARY KEY (task_id, depends_on_id));
CREATE TABLE session (name VARCHAR, user_id INTEGER NOT NULL REFERENCES "user" (id), collaboration_id INTEGER NOT NULL REFERENCES collaboration (id), id SERIAL PRIMARY KEY);
CREATE TABLE dataframetobedeletedatnode (dataframe_name VARCHAR, session_id INTEGER REFERENCES session (id), node_id INTEGER REFERENCES node (id), id SERIAL PRIMARY KEY);
INSERT INTO organization (id, name) VALUES (1, 'a'), (2, 'b');
INSERT INTO collaboration (id, name, encrypted) VALUES (1, 'c1', false), (2, 'c2', false);
INSERT INTO "Member" VALUES (1, 1), (2, 1), (1, 2);
INSERT INTO authenticatable (id, type, keycloak_id, status) VALUES (1, 'node', 'kc-node', 'offline'), (2, 'user', 'kc-user', 'offline'), (3, 'node', NULL, 'offline');
INSERT INTO node VALUES (1, 'node-1', 1, 2), (3, 'node-3', 2, 1);
INSERT INTO "user" VALUES (2, 'researcher', 1, false);
INSERT INTO rule (id, name, operation, scope) VALUES (1, 'event', 'receive', 'collaboration'), (2, 'event', 'send', 'global');
INSERT INTO role (id, name) VALUES (1, 'Researcher');
INSERT INTO role_rule_association VALUES (1, 1), (1, 2);
INSERT INTO "Permission" VALUES (1, 2);
INSERT INTO task (id, name, collaboration_id, job_id, init_org_id) VALUES (1, 'task-1', 1, 1, 1);
INSERT INTO run (id, task_id, organization_id, status) VALUES (1, 1, 2, 'pending');
"#;

/// The 5.x rows the handlers' queries read, in SQL both dialects accept:
/// tasks 2 and 3 depend on task 1 (3 in another collaboration, a subtask
/// of 2), task 4 on task 2; node 1 has two dataframes to delete, `other`
/// one of the same name.
fn v5_rows(other: i64) -> String {
    format!(
        r"
INSERT INTO task (id, name, collaboration_id, job_id, parent_id, init_org_id) VALUES
    (2, 'task-2', 1, 2, NULL, 1), (3, 'task-3', 2, 2, 2, 1), (4, 'task-4', 1, 4, NULL, 1);
INSERT INTO task_depends_on (task_id, depends_on_id) VALUES (3, 1), (2, 1), (4, 2);
INSERT INTO session (id, name, user_id, collaboration_id) VALUES (1, 'session-1', {user}, 1);
INSERT INTO dataframetobedeletedatnode (id, dataframe_name, session_id, node_id) VALUES
    (1, 'df_a', 1, 1), (2, 'df_b', 1, 1), (3, 'df_a', 1, {other});
UPDATE authenticatable SET status = 'offline' WHERE id = 1;
",
        user = if other == 2 { 3 } else { 2 }
    )
}

/// The 5.x store queries on a database holding [`v5_rows`]; node 1's run 1
/// is of task 1.
async fn assert_v5_queries(store: &Store, other: i64) {
    store.check_schema_v5().await.expect("5.x tables");
    // The run's task, for the dependent-task look-up.
    let owner = store.run_owner(1).await.expect("q").expect("run 1");
    assert_eq!(owner.task_id, Some(1));
    let task = |id, parent_id, collaboration_id| DependentTask {
        id,
        parent_id,
        collaboration_id: Some(collaboration_id),
    };
    assert_eq!(
        store.dependent_tasks(1).await.expect("q"),
        vec![task(2, None, 1), task(3, Some(2), 2)]
    );
    assert_eq!(
        store.dependent_tasks(2).await.expect("q"),
        vec![task(4, None, 1)]
    );
    assert_eq!(store.dependent_tasks(4).await.expect("q"), vec![]);
    assert_eq!(store.dependent_tasks(99).await.expect("q"), vec![]);

    // Pending deletions: each node its own.
    let df = |name: &str| DataframeDeletion {
        dataframe_name: Some(name.to_owned()),
        session_id: Some(1),
    };
    assert_eq!(
        store.pending_dataframe_deletions(1).await.expect("q"),
        vec![df("df_a"), df("df_b")]
    );
    assert_eq!(
        store.pending_dataframe_deletions(other).await.expect("q"),
        vec![df("df_a")]
    );
    // Deleted once; then gone, and another session or another name is no row either.
    for (name, session_id, rows) in [("df_a", 1, 1), ("df_a", 1, 0), ("df_b", 2, 0)] {
        assert_eq!(
            store
                .delete_dataframe_deletion(name, session_id, 1)
                .await
                .expect("q"),
            rows,
            "{name} of session {session_id}"
        );
    }
    assert_eq!(
        store.pending_dataframe_deletions(1).await.expect("q"),
        vec![df("df_b")]
    );
    assert_eq!(
        store.pending_dataframe_deletions(other).await.expect("q"),
        vec![df("df_a")],
        "the other node's row of the same name is kept"
    );

    // Ping: offline → recovered; then the one-statement path.
    let t = chrono::Utc::now().naive_utc();
    let second = chrono::Duration::seconds(1);
    assert_eq!(
        store.record_node_ping(1, t).await.expect("q"),
        PingRecorded::WasNotOnline
    );
    assert_eq!(
        store.record_node_ping(1, t).await.expect("q"),
        PingRecorded::WasOnline
    );
    // last_seen is t: not before t - 1 s, before t + 1 s.
    assert_eq!(store.sweep_offline_nodes(t - second).await.expect("q"), 0);
    assert_eq!(store.sweep_offline_nodes(t + second).await.expect("q"), 1);
    assert_eq!(
        store.record_node_ping(1, t + second).await.expect("q"),
        PingRecorded::WasNotOnline
    );
    assert_eq!(
        store.record_node_ping(1, t + second).await.expect("q"),
        PingRecorded::WasOnline
    );
    assert_eq!(
        store.record_node_ping(99, t).await.expect("q"),
        PingRecorded::NoSuchRow
    );
}

#[tokio::test]
async fn sqlite_5x_store_queries() {
    let (_dir, store, mut conn) = demo_sqlite(V5).await;
    conn.execute("INSERT INTO collaboration (id, name) VALUES (2, 'c2')")
        .await
        .expect("collaboration 2");
    conn.execute(v5_rows(2).as_str()).await.expect("rows");
    assert_v5_queries(&store, 2).await;
}

// duplicates: deliberate — each test prepares its own database in full.
#[tokio::test]
async fn sqlite_5x_schema_check_names_a_missing_5x_table() {
    let (_dir, store, mut conn) = demo_sqlite(V5).await;
    conn.execute("DROP TABLE task_depends_on")
        .await
        .expect("drop");
    let err = store.check_schema_v5().await.expect_err("incomplete 5.x");
    assert!(err.to_string().contains("task_depends_on"), "{err}");
    // The 4.x demo database lacks both.
    let (_d4, s4, _) = demo_sqlite(V4).await;
    let err = s4.check_schema_v5().await.expect_err("4.x");
    assert!(
        err.to_string().contains("dataframetobedeletedatnode"),
        "{err}"
    );
}

/// A PostgreSQL database of this test's own; dropped by [`PgDb::drop_db`].
struct PgDb {
    name: String,
}

const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn pg_url(name: &str) -> String {
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}

impl PgDb {
    async fn create(tag: &str, ddl: &str) -> (Self, Store) {
        let name = format!(
            "v6_gen_{tag}_{}_{:x}",
            std::process::id(),
            v6_socketio::auth::random_u128().expect("random") as u32
        );
        let mut admin = PgConnection::connect(PG_ADMIN)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create database");
        let url = pg_url(&name);
        let mut conn = PgConnection::connect(&url).await.expect("connect");
        conn.execute(ddl).await.expect("schema");
        conn.close().await.expect("close");
        let store = Store::connect(&DatabaseUrl::Postgres(url))
            .await
            .expect("store");
        (Self { name }, store)
    }

    async fn drop_db(self) {
        let mut admin = PgConnection::connect(PG_ADMIN).await.expect("admin");
        admin
            .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
            .await
            .expect("drop database");
    }
}

#[tokio::test]
async fn postgres_schema_tells_the_generation_and_5x_identities_resolve() {
    let ddl_4x = PG_5X
        .replace(
            "keycloak_id VARCHAR, keycloak_client_id VARCHAR,",
            "ip VARCHAR,",
        )
        .replace("'kc-node', ", "")
        .replace("'kc-user', ", "")
        .replace("NULL, 'offline'", "'offline'")
        .replace("(id, type, keycloak_id, status)", "(id, type, status)");
    let (db4, s4) = PgDb::create("4x", &ddl_4x).await;
    let (db5, s5) = PgDb::create("5x", PG_5X).await;
    let db5_name = db5.name.clone();
    let result = async move {
        assert!(!s4.has_keycloak_id_column().await.expect("probe 4.x"));
        assert!(s5.has_keycloak_id_column().await.expect("probe 5.x"));
        s5.check_schema().await.expect("5.x tables are readable");
        let node = node_by_keycloak_id(&s5, "kc-node").await;
        assert_eq!(
            (node.id, node.collaboration_id, node.organization_id),
            (1, 1, 2)
        );
        let user = user_by_keycloak_id(&s5, "kc-user").await;
        assert_eq!(user.event_scope, Some(EventScope::Collaboration));
        assert_eq!(
            rooms::rooms_for(&Identity::User(user)),
            vec!["collaboration_1".to_owned(), "collaboration_2".to_owned()]
        );
        assert_eq!(
            s5.identify(Subject::Keycloak("kc-nobody".into()))
                .await
                .expect("query"),
            Err(Unknown::NoSuchId)
        );
        let mut conn = PgConnection::connect(&pg_url(&db5_name))
            .await
            .expect("connect");
        conn.execute(v5_rows(3).as_str()).await.expect("rows");
        conn.close().await.expect("close");
        assert_v5_queries(&s5, 3).await;
        // 4.x lookups by id keep working on the 4.x schema.
        assert!(matches!(
            s4.identify(1).await.expect("query"),
            Ok(Identity::Node(_))
        ));
    };
    // Drop the databases whatever the outcome.
    let outcome = tokio::spawn(result).await;
    db4.drop_db().await;
    db5.drop_db().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic.into_panic());
    }
}
