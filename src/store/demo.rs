//! The embedded demo databases: the vantage6 4.x (or 5.x) tables this
//! server uses, with the same names and columns, plus a small fixture. Only
//! `demo` calls this; `serve` never creates or alters tables.

use std::path::Path;

use sqlx::{
    sqlite::{SqliteConnectOptions, SqlitePoolOptions},
    Executor,
};

use super::StoreError;

/// What the demo fixture contains, for printing instructions.
#[derive(Debug, Clone)]
pub struct DemoFixture {
    /// `(id, name)` of each node.
    pub nodes: Vec<(i64, String)>,
    /// `(id, username)` of the user.
    pub user: (i64, String),
    /// The collaboration's id.
    pub collaboration_id: i64,
    /// 5.x: the Keycloak subject (`authenticatable.keycloak_id`) of each
    /// node, then the user; empty for 4.x.
    pub keycloak_ids: Vec<String>,
}

const SCHEMA: &str = r#"
CREATE TABLE organization (
    id INTEGER NOT NULL PRIMARY KEY, name VARCHAR UNIQUE, domain VARCHAR,
    address1 VARCHAR, address2 VARCHAR, zipcode VARCHAR, country VARCHAR, _public_key BLOB
);
CREATE TABLE collaboration (
    id INTEGER NOT NULL PRIMARY KEY, name VARCHAR UNIQUE, encrypted BOOLEAN
);
CREATE TABLE "Member" (
    organization_id INTEGER REFERENCES organization (id),
    collaboration_id INTEGER REFERENCES collaboration (id)
);
CREATE TABLE authenticatable (
    id INTEGER NOT NULL PRIMARY KEY, type VARCHAR(50), ip VARCHAR, last_seen DATETIME, status VARCHAR
);
CREATE TABLE node (
    id INTEGER NOT NULL PRIMARY KEY REFERENCES authenticatable (id), name VARCHAR UNIQUE,
    api_key VARCHAR, collaboration_id INTEGER REFERENCES collaboration (id),
    organization_id INTEGER REFERENCES organization (id)
);
CREATE TABLE "user" (
    id INTEGER NOT NULL PRIMARY KEY REFERENCES authenticatable (id), username VARCHAR UNIQUE,
    password VARCHAR, firstname VARCHAR, lastname VARCHAR, email VARCHAR UNIQUE,
    organization_id INTEGER REFERENCES organization (id), failed_login_attempts INTEGER,
    last_login_attempt DATETIME, otp_secret VARCHAR(32), last_email_failed_login_sent DATETIME,
    last_email_recover_password_sent DATETIME
);
CREATE TABLE rule (
    id INTEGER NOT NULL PRIMARY KEY, name TEXT, operation VARCHAR(7), scope VARCHAR(13),
    description VARCHAR
);
CREATE TABLE role (
    id INTEGER NOT NULL PRIMARY KEY, name TEXT, description TEXT,
    organization_id INTEGER REFERENCES organization (id), is_default_role BOOLEAN
);
CREATE TABLE "Permission" (role_id INTEGER REFERENCES role (id), user_id INTEGER REFERENCES "user" (id));
CREATE TABLE "UserPermission" (rule_id INTEGER REFERENCES rule (id), user_id INTEGER REFERENCES "user" (id));
CREATE TABLE role_rule_association (role_id INTEGER REFERENCES role (id), rule_id INTEGER REFERENCES rule (id));
CREATE TABLE nodeconfig (
    id INTEGER NOT NULL PRIMARY KEY, node_id INTEGER REFERENCES node (id), "key" VARCHAR, value VARCHAR
);
CREATE TABLE task (
    id INTEGER NOT NULL PRIMARY KEY, name VARCHAR, description VARCHAR, image VARCHAR,
    collaboration_id INTEGER REFERENCES collaboration (id), study_id INTEGER, job_id INTEGER,
    parent_id INTEGER REFERENCES task (id), init_org_id INTEGER REFERENCES organization (id),
    init_user_id INTEGER REFERENCES "user" (id), created_at DATETIME, algorithm_store_id INTEGER
);
CREATE TABLE run (
    id INTEGER NOT NULL PRIMARY KEY, input TEXT, task_id INTEGER REFERENCES task (id),
    organization_id INTEGER REFERENCES organization (id), result TEXT, assigned_at DATETIME,
    started_at DATETIME, finished_at DATETIME, status TEXT, log TEXT, cleanup_at DATETIME,
    blob_storage_used BOOLEAN
);
"#;

const FIXTURE: &str = r#"
INSERT INTO organization (id, name, country) VALUES (1, 'Demo Hospital A', 'NL'), (2, 'Demo Hospital B', 'BE');
INSERT INTO collaboration (id, name, encrypted) VALUES (1, 'demo-collaboration', 0);
INSERT INTO "Member" (organization_id, collaboration_id) VALUES (1, 1), (2, 1);
INSERT INTO authenticatable (id, type, status) VALUES (1, 'node', 'offline'), (2, 'node', 'offline'), (3, 'user', 'offline');
INSERT INTO node (id, name, api_key, collaboration_id, organization_id) VALUES
    (1, 'demo-node-a', 'not-a-real-key-a', 1, 1), (2, 'demo-node-b', 'not-a-real-key-b', 1, 2);
INSERT INTO "user" (id, username, email, organization_id, failed_login_attempts) VALUES
    (3, 'demo-user', 'demo@example.org', 1, 0);
INSERT INTO rule (id, name, operation, scope, description) VALUES
    (1, 'event', 'RECEIVE', 'GLOBAL', 'Receive websocket events of all collaborations');
INSERT INTO "UserPermission" (rule_id, user_id) VALUES (1, 3);
INSERT INTO task (id, name, image, collaboration_id, job_id, init_org_id, init_user_id) VALUES
    (1, 'demo-task', 'harbor2.vantage6.ai/demo/average', 1, 1, 1, 3);
INSERT INTO run (id, task_id, organization_id, status) VALUES (1, 1, 1, 'pending'), (2, 1, 2, 'pending');
"#;

/// Creates the demo SQLite database at `path` if the file does not exist
/// yet. Returns the fixture and whether the file was created now.
pub async fn create_demo_database(path: &Path) -> Result<(DemoFixture, bool), StoreError> {
    create(path, SCHEMA, FIXTURE, Vec::new()).await
}

/// The demo database from `schema` and `fixture` (both generations share
/// its ids and names), created only when `path` does not exist yet.
async fn create(
    path: &Path,
    schema: &str,
    fixture: &str,
    keycloak_ids: Vec<String>,
) -> Result<(DemoFixture, bool), StoreError> {
    let created = !path.exists();
    if created {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        let mut tx = pool.begin().await?;
        tx.execute(schema).await?;
        tx.execute(fixture).await?;
        tx.commit().await?;
        pool.close().await;
    }
    Ok((
        DemoFixture {
            nodes: vec![(1, "demo-node-a".into()), (2, "demo-node-b".into())],
            user: (3, "demo-user".into()),
            collaboration_id: 1,
            keycloak_ids,
        },
        created,
    ))
}

/// The vantage6 5.0.3 layout of the same tables (`create_all` of HQ 5.0.3
/// on SQLite, trimmed to what this server reads and writes): `keycloak_id`
/// and `keycloak_client_id` on `authenticatable`, no `api_key` or passwords,
/// rule operation and scope stored as lowercase values, and the 5.x-only
/// `task_depends_on`, `session` and `dataframetobedeletedatnode`.
const SCHEMA_V5: &str = r#"
CREATE TABLE organization (
    name VARCHAR, domain VARCHAR, address1 VARCHAR, address2 VARCHAR, zipcode VARCHAR,
    country VARCHAR, _public_key BLOB, id INTEGER NOT NULL PRIMARY KEY, UNIQUE (name)
);
CREATE TABLE collaboration (
    name VARCHAR, encrypted BOOLEAN, session_restrict_to_same_image BOOLEAN,
    id INTEGER NOT NULL PRIMARY KEY, UNIQUE (name)
);
CREATE TABLE "Member" (
    organization_id INTEGER REFERENCES organization (id),
    collaboration_id INTEGER REFERENCES collaboration (id)
);
CREATE TABLE authenticatable (
    type VARCHAR(50), keycloak_id VARCHAR, last_seen DATETIME, status VARCHAR,
    keycloak_client_id VARCHAR, id INTEGER NOT NULL PRIMARY KEY
);
CREATE TABLE node (
    id INTEGER NOT NULL PRIMARY KEY REFERENCES authenticatable (id), name VARCHAR UNIQUE,
    collaboration_id INTEGER REFERENCES collaboration (id),
    organization_id INTEGER REFERENCES organization (id)
);
CREATE TABLE "user" (
    id INTEGER NOT NULL PRIMARY KEY REFERENCES authenticatable (id), username VARCHAR UNIQUE,
    organization_id INTEGER REFERENCES organization (id), is_service_account BOOLEAN
);
CREATE TABLE rule (name TEXT, operation VARCHAR, scope VARCHAR, description VARCHAR, id INTEGER NOT NULL PRIMARY KEY);
CREATE TABLE role (
    name TEXT, description TEXT, organization_id INTEGER REFERENCES organization (id),
    is_default_role BOOLEAN, id INTEGER NOT NULL PRIMARY KEY
);
CREATE TABLE "Permission" (role_id INTEGER REFERENCES role (id), user_id INTEGER REFERENCES "user" (id));
CREATE TABLE "UserPermission" (rule_id INTEGER REFERENCES rule (id), user_id INTEGER REFERENCES "user" (id));
CREATE TABLE role_rule_association (role_id INTEGER REFERENCES role (id), rule_id INTEGER REFERENCES rule (id));
CREATE TABLE nodeconfig (
    node_id INTEGER REFERENCES node (id), "key" VARCHAR, value VARCHAR, id INTEGER NOT NULL PRIMARY KEY
);
CREATE TABLE task (
    name VARCHAR, description VARCHAR, image VARCHAR, method VARCHAR,
    collaboration_id INTEGER REFERENCES collaboration (id), study_id INTEGER, session_id INTEGER,
    dataframe_id INTEGER, job_id INTEGER, parent_id INTEGER REFERENCES task (id),
    init_org_id INTEGER NOT NULL REFERENCES organization (id), init_user_id INTEGER REFERENCES "user" (id),
    created_at DATETIME, algorithm_store_id INTEGER, id INTEGER NOT NULL PRIMARY KEY
);
CREATE TABLE run (
    arguments TEXT, task_id INTEGER REFERENCES task (id), organization_id INTEGER REFERENCES organization (id),
    result TEXT, assigned_at DATETIME, started_at DATETIME, finished_at DATETIME, status TEXT, log TEXT,
    cleanup_at DATETIME, blob_storage_used BOOLEAN, action VARCHAR, id INTEGER NOT NULL PRIMARY KEY
);
CREATE TABLE task_depends_on (
    task_id INTEGER NOT NULL REFERENCES task (id), depends_on_id INTEGER NOT NULL REFERENCES task (id),
    PRIMARY KEY (task_id, depends_on_id)
);
CREATE TABLE session (
    name VARCHAR, user_id INTEGER NOT NULL REFERENCES "user" (id),
    collaboration_id INTEGER NOT NULL REFERENCES collaboration (id), study_id INTEGER,
    created_at DATETIME, last_used_at DATETIME, scope VARCHAR, image VARCHAR,
    id INTEGER NOT NULL PRIMARY KEY, UNIQUE (name, collaboration_id)
);
CREATE TABLE dataframetobedeletedatnode (
    dataframe_name VARCHAR, session_id INTEGER REFERENCES session (id),
    node_id INTEGER REFERENCES node (id), id INTEGER NOT NULL PRIMARY KEY
);
"#;

/// Keycloak subjects of the 5.x demo accounts (node a, node b, user).
const KEYCLOAK_IDS: [&str; 3] = [
    "0b6c1f9e-5d2a-4c1e-9a53-1d7f0c2e4a01",
    "5e2d8a47-93b1-4f0c-8e6d-2c4b7a9f1e02",
    "c9a4e3d2-1b7f-4e8a-a5c6-3f2e1d0b9c03",
];

const FIXTURE_V5: &str = r#"
INSERT INTO organization (id, name, country) VALUES (1, 'Demo Hospital A', 'NL'), (2, 'Demo Hospital B', 'BE');
INSERT INTO collaboration (id, name, encrypted, session_restrict_to_same_image) VALUES (1, 'demo-collaboration', 0, 0);
INSERT INTO "Member" (organization_id, collaboration_id) VALUES (1, 1), (2, 1);
INSERT INTO authenticatable (id, type, status, keycloak_id, keycloak_client_id) VALUES
    (1, 'node', 'offline', '0b6c1f9e-5d2a-4c1e-9a53-1d7f0c2e4a01', '7d1e0c5b-2a4f-4b8e-9c3d-6e5f4a3b2c11'),
    (2, 'node', 'offline', '5e2d8a47-93b1-4f0c-8e6d-2c4b7a9f1e02', '8e2f1d6c-3b5a-4c9f-ad4e-7f6a5b4c3d12'),
    (3, 'user', 'offline', 'c9a4e3d2-1b7f-4e8a-a5c6-3f2e1d0b9c03', NULL);
INSERT INTO node (id, name, collaboration_id, organization_id) VALUES
    (1, 'demo-node-a', 1, 1), (2, 'demo-node-b', 1, 2);
INSERT INTO "user" (id, username, organization_id, is_service_account) VALUES (3, 'demo-user', 1, 0);
INSERT INTO rule (id, name, operation, scope, description) VALUES
    (1, 'event', 'receive', 'global', 'Receive websocket events of all collaborations');
INSERT INTO "UserPermission" (rule_id, user_id) VALUES (1, 3);
INSERT INTO task (id, name, image, method, collaboration_id, job_id, init_org_id, init_user_id) VALUES
    (1, 'demo-task', 'harbor2.vantage6.ai/demo/average', 'partial_average', 1, 1, 1, 3);
INSERT INTO run (id, task_id, organization_id, status, action) VALUES
    (1, 1, 1, 'pending', 'federated_compute'), (2, 1, 2, 'pending', 'federated_compute');
"#;

/// Creates the 5.x demo SQLite database at `path` if the file does not
/// exist yet. Returns the fixture and whether the file was created now.
pub async fn create_demo_database_v5(path: &Path) -> Result<(DemoFixture, bool), StoreError> {
    let keycloak_ids = KEYCLOAK_IDS.iter().map(|s| (*s).to_owned()).collect();
    create(path, SCHEMA_V5, FIXTURE_V5, keycloak_ids).await
}
