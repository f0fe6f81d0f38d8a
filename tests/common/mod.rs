//! What several of the v6-socketio test files share (`mod common;`).

use sqlx::{Connection, SqliteConnection};
use tempfile::TempDir;
use v6_socketio::{
    database_url::DatabaseUrl,
    generation::Vantage6Generation,
    store::{create_demo_database, create_demo_database_v5, Store},
};

/// The demo SQLite database of `generation`'s layout in a new temporary
/// directory (kept while the returned `TempDir` lives), a store on it whose
/// schema check passed, and a connection of the test's own to read and
/// write the database behind the store's back.
pub async fn demo_sqlite(generation: Vantage6Generation) -> (TempDir, Store, SqliteConnection) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("demo.sqlite");
    let (_, created) = match generation {
        Vantage6Generation::V4 => create_demo_database(&path).await,
        Vantage6Generation::V5 => create_demo_database_v5(&path).await,
    }
    .expect("demo database");
    assert!(created, "a new demo database");
    let store = Store::connect(&DatabaseUrl::Sqlite(path.clone()))
        .await
        .expect("connect");
    store.check_schema().await.expect("schema");
    let conn = SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("a connection of the test's own");
    (dir, store, conn)
}
