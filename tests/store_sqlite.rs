//! The store against a real SQLite file (the demo schema, which mirrors the
//! vantage6 4.x tables). The same operations run against databases built by
//! the real vantage6 models, on SQLite and PostgreSQL, in `clients/tests`.

mod common;

use common::demo_sqlite;
use sqlx::{Connection, SqliteConnection};
use v6_socketio::{
    database_url::DatabaseUrl,
    generation::Vantage6Generation,
    identity::{EventScope, Identity},
    node_config::flatten,
    store::{AuthStatus, RunOwner, Store, Unknown},
};

#[tokio::test]
async fn identifies_nodes_and_users() {
    let (_dir, store, _) = demo_sqlite(Vantage6Generation::V4).await;
    let Ok(Identity::Node(node)) = store.identify(1).await.expect("query") else {
        panic!("node 1 is a node")
    };
    assert_eq!(
        (
            node.name.as_str(),
            node.organization_id,
            node.collaboration_id
        ),
        ("demo-node-a", 1, 1)
    );
    let Ok(Identity::User(user)) = store.identify(3).await.expect("query") else {
        panic!("user 3 is a user")
    };
    assert_eq!(user.event_scope, Some(EventScope::Global));
    assert_eq!(user.collaboration_ids, vec![1]);
    assert_eq!(
        store.identify(99).await.expect("query"),
        Err(Unknown::NoSuchId)
    );
}

#[tokio::test]
async fn connect_writes_and_sweep() {
    let (_dir, store, mut conn) = demo_sqlite(Vantage6Generation::V4).await;
    store
        .set_status(1, AuthStatus::Online)
        .await
        .expect("status");
    store
        .set_status(2, AuthStatus::Online)
        .await
        .expect("status");
    let long_ago = chrono::Utc::now().naive_utc() - chrono::Duration::seconds(600);
    store.record_ping(1, long_ago).await.expect("ping");
    let swept = store
        .sweep_offline_nodes(chrono::Utc::now().naive_utc())
        .await
        .expect("sweep");
    // Node 1 pinged long ago; node 2 never pinged (NULL last_seen) and is kept.
    assert_eq!(swept, 1);
    let rows: Vec<(i64, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT id, status, last_seen FROM authenticatable WHERE type = 'node' ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .expect("read");
    assert_eq!(rows[0].1.as_deref(), Some("offline"));
    assert_eq!(
        rows[0].2.as_deref(),
        Some(
            long_ago
                .format("%Y-%m-%d %H:%M:%S%.6f")
                .to_string()
                .as_str()
        )
    );
    assert_eq!(rows[1].1.as_deref(), Some("online"));
}

#[tokio::test]
async fn run_log_and_owner() {
    let (_dir, store, mut conn) = demo_sqlite(Vantage6Generation::V4).await;
    let owner = |organization_id, job_id| RunOwner {
        organization_id: Some(organization_id),
        task_id: Some(1),
        collaboration_id: Some(1),
        job_id,
    };
    assert_eq!(
        store.run_owner(1).await.expect("q"),
        Some(owner(1, Some(1)))
    );
    assert_eq!(
        store.run_owner(2).await.expect("q"),
        Some(owner(2, Some(1)))
    );
    assert_eq!(store.run_owner(99).await.expect("q"), None);
    // A run without a task has no collaboration (and is nobody's own).
    sqlx::query("INSERT INTO run (id, task_id, organization_id) VALUES (3, NULL, 1)")
        .execute(&mut conn)
        .await
        .expect("orphan run");
    assert_eq!(
        store.run_owner(3).await.expect("q"),
        Some(RunOwner {
            organization_id: Some(1),
            task_id: None,
            collaboration_id: None,
            job_id: None,
        })
    );
    // Run 1: organisation 1, task 1 of collaboration 1.
    assert!(store.append_run_log(1, 1, 1, "first").await.expect("q"));
    assert!(store.append_run_log(1, 1, 1, "second\n").await.expect("q"));
    assert!(!store
        .append_run_log(1, 2, 1, "other organisation")
        .await
        .expect("q"));
    assert!(!store
        .append_run_log(1, 1, 2, "other collaboration")
        .await
        .expect("q"));
    assert!(!store
        .append_run_log(3, 1, 1, "run without a task")
        .await
        .expect("q"));
    assert!(store.append_run_log(1, 1, 1, "third").await.expect("q"));
    assert!(!store.append_run_log(99, 1, 1, "nowhere").await.expect("q"));
    let (log,): (Option<String>,) = sqlx::query_as("SELECT log FROM run WHERE id = 1")
        .fetch_one(&mut conn)
        .await
        .expect("read");
    assert_eq!(log.as_deref(), Some("first\nsecond\nthird"));
}

#[tokio::test]
async fn node_config_rows_as_sqlite_stores_python_values() {
    let (_dir, store, mut conn) = demo_sqlite(Vantage6Generation::V4).await;
    let payload = serde_json::json!({
        "encryption": false,
        "allowed_algorithms": ["a", "b"],
        "database_types": {"db_type_default": "csv"},
        "threshold": 0.5,
        "count": 3,
    });
    let serde_json::Value::Object(map) = payload else {
        panic!("object")
    };
    store
        .replace_node_config(1, &flatten(&map))
        .await
        .expect("first");
    store
        .replace_node_config(1, &flatten(&map))
        .await
        .expect("replace");
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT \"key\", value FROM nodeconfig WHERE node_id = 1 ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .expect("read");
    let rows: Vec<(&str, Option<&str>)> = rows
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_deref()))
        .collect();
    assert_eq!(
        rows,
        [
            ("encryption", Some("0")),
            ("allowed_algorithms", Some("a")),
            ("allowed_algorithms", Some("b")),
            ("db_type_default", Some("csv")),
            ("threshold", Some("0.5")),
            ("count", Some("3")),
        ]
    );
    store.delete_node_config(1).await.expect("delete");
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM nodeconfig")
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(n, 0);
}

#[tokio::test]
async fn serve_refuses_a_database_that_is_not_vantage6() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("empty.sqlite");
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .expect("create");
    sqlx::query("CREATE TABLE other (id INTEGER)")
        .execute(&mut conn)
        .await
        .expect("ddl");
    let store = Store::connect(&DatabaseUrl::Sqlite(path))
        .await
        .expect("connect");
    let err = store.check_schema().await.expect_err("not vantage6");
    assert!(err.to_string().contains("authenticatable"), "{err}");
    // A missing file is an error too: serve never creates the database.
    assert!(
        Store::connect(&DatabaseUrl::Sqlite(dir.path().join("absent.sqlite")))
            .await
            .is_err()
    );
}
