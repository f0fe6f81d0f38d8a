//! `v6-socketio demo`: the embedded default. Creates (if absent) a demo
//! SQLite database with the vantage6 4.x tables this server uses and a small
//! fixture, writes a vantage6-style configuration file next to it, prints a
//! ready token per client and the command that connects the bundled node
//! simulator, then serves like `serve` on 127.0.0.1.
//!
//! `demo --vantage6 5` does the same for vantage6 5.x (HQ): the 5.x tables
//! (with `keycloak_id`), a generated RSA realm key handed to the server as
//! `keycloak_public_key_file` (no Keycloak needed), and tokens in the claim
//! layout of Keycloak's access tokens.

// `write!` into a String cannot fail.
use std::fmt::Write as _;
use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    auth::{self, MintError},
    config::{Config, ConfigError, ServeOverrides},
    generation::Vantage6Generation,
    store::{create_demo_database, create_demo_database_v5, DemoFixture, StoreError},
};

/// The `iss` of the 5.x demo tokens (HQ does not check it; no Keycloak runs).
const DEMO_ISSUER: &str = "https://keycloak.demo.invalid/realms/vantage6";

/// How long the printed tokens stay valid.
const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Why the demo could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The demo folder or its configuration file could not be written.
    #[error("cannot prepare demo folder {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The demo database could not be created.
    #[error("cannot create demo database")]
    Database(#[from] StoreError),
    /// The demo configuration is unusable (e.g. edited by hand).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A token could not be minted.
    #[error(transparent)]
    Token(#[from] MintError),
}

/// Where the demo lives and what it listens on.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Folder for `demo.sqlite` and `demo-config.yaml`.
    pub dir: PathBuf,
    /// Listen port.
    pub port: u16,
    /// The vantage6 generation to imitate (`--vantage6 4|5`).
    pub vantage6: Vantage6Generation,
}

/// Prepares the demo folder, prints the instructions and returns the
/// configuration to serve.
pub async fn prepare(options: &DemoOptions) -> Result<Config, DemoError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| DemoError::Io { path, source }
    };
    std::fs::create_dir_all(&options.dir).map_err(io_err(&options.dir))?;
    let dir = options.dir.canonicalize().map_err(io_err(&options.dir))?;
    if options.vantage6 == Vantage6Generation::V5 {
        return prepare_v5(options, &dir).await;
    }
    let db_path = dir.join("demo.sqlite");
    let config_path = dir.join("demo-config.yaml");
    if !config_path.exists() {
        let secret = format!("{:032x}", auth::random_u128().map_err(MintError::from)?);
        let text = format!(
            "# vantage6-style server configuration written by `v6-socketio demo`.\n\
             jwt_secret_key: {secret}\n\
             uri: sqlite:///{}\n\
             v6_socketio:\n  ip: 127.0.0.1\n",
            db_path.display()
        );
        std::fs::write(&config_path, text).map_err(io_err(&config_path))?;
    }
    let (fixture, created) = create_demo_database(&db_path).await?;
    let config = load_demo_config(&config_path, options.port)?;

    let url = format!("http://{}", config.listen);
    let mut out = String::new();
    let _ = write!(
        out,
        "\nv6-socketio demo: vantage6's /tasks namespace on {url}{}\n",
        config.path
    );
    let _ = write!(
        out,
        "  database: {} ({})\n  config:   {}\n\n",
        db_path.display(),
        if created { "created now" } else { "existing" },
        config_path.display()
    );
    for (i, (id, name)) in fixture.nodes.iter().enumerate() {
        let token = auth::mint_access_token(&config.jwt_secret_key, *id, "node", TOKEN_LIFETIME)?;
        if i == 0 {
            let _ = write!(out,
                "Connect the bundled node simulator as {name}, from the repository root in another terminal:\n\n  \
                 clients/simulate-node --url {url} --token {token}\n\n"
            );
        } else {
            let _ = write!(out, "Token for {name} (node {id}):\n  {token}\n");
        }
    }
    let (user_id, user_name) = &fixture.user;
    let token = auth::mint_access_token(&config.jwt_secret_key, *user_id, "user", TOKEN_LIFETIME)?;
    let _ = write!(out,
        "Token for {user_name} (user {user_id}, receives every event of collaboration {}):\n  {token}\n\n\
         Tokens are valid for 24 hours; run the demo again for new ones. Ctrl-C stops it.\n",
        fixture.collaboration_id
    );
    // The instructions are the demo's output, not a log line.
    print!("{out}");
    Ok(config)
}

/// `demo --vantage6 5`: files `demo5.sqlite`, `demo5-config.yaml` (an HQ
/// 5.x style file with our section), `demo5-realm-private.pem` and
/// `demo5-realm-public.pem` in the demo folder.
async fn prepare_v5(options: &DemoOptions, dir: &Path) -> Result<Config, DemoError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| DemoError::Io { path, source }
    };
    let db_path = dir.join("demo5.sqlite");
    let config_path = dir.join("demo5-config.yaml");
    let private_path = dir.join("demo5-realm-private.pem");
    let public_path = dir.join("demo5-realm-public.pem");
    let private_pem =
        if let (Ok(pem), true) = (std::fs::read_to_string(&private_path), public_path.exists()) {
            pem
        } else {
            let (private, public) = auth::generate_rsa_key_pair()?;
            std::fs::write(&private_path, &private).map_err(io_err(&private_path))?;
            std::fs::write(&public_path, &public).map_err(io_err(&public_path))?;
            private
        };
    if !config_path.exists() {
        let text = format!(
            "# vantage6 5.x (HQ) style server configuration written by `v6-socketio demo --vantage6 5`.\n\
             uri: sqlite:///{}\n\
             jwt_decode_algorithms: [RS256, RS384, RS512]\n\
             jwt_decode_leeway: 10\n\
             v6_socketio:\n  ip: 127.0.0.1\n  vantage6_generation: 5\n  keycloak_public_key_file: {}\n",
            db_path.display(),
            public_path.display()
        );
        std::fs::write(&config_path, text).map_err(io_err(&config_path))?;
    }
    let (fixture, created) = create_demo_database_v5(&db_path).await?;
    let config = load_demo_config(&config_path, options.port)?;
    let url = format!("http://{}", config.listen);
    let mut out = format!(
        "\nv6-socketio demo (vantage6 5.x): the /tasks namespace on {url}{}\n  \
         database:  {} ({})\n  config:    {}\n  realm key: {} (generated; its private half signs the tokens below)\n\n",
        config.path,
        db_path.display(),
        if created { "created now" } else { "existing" },
        config_path.display(),
        public_path.display(),
    );
    let DemoFixture {
        nodes,
        user,
        collaboration_id,
        keycloak_ids,
    } = fixture;
    let subject = |i: usize| keycloak_ids.get(i).map(String::as_str).unwrap_or_default();
    for (i, (id, name)) in nodes.iter().enumerate() {
        let token = auth::mint_keycloak_token(
            &private_pem,
            DEMO_ISSUER,
            subject(i),
            "node",
            name,
            TOKEN_LIFETIME,
        )?;
        if i == 0 {
            let _ = write!(out,
                "Connect the bundled node simulator as {name}, from the repository root in another terminal:\n\n  \
                 clients/simulate-node --url {url} --token {token}\n\n"
            );
        } else {
            let _ = write!(
                out,
                "Token for {name} (node {id}, Keycloak subject {}):\n  {token}\n",
                subject(i)
            );
        }
    }
    let (user_id, user_name) = &user;
    let token = auth::mint_keycloak_token(
        &private_pem,
        DEMO_ISSUER,
        subject(nodes.len()),
        "user",
        user_name,
        TOKEN_LIFETIME,
    )?;
    let _ = write!(out,
        "Token for {user_name} (user {user_id}, receives every event of collaboration {collaboration_id}):\n  {token}\n\n\
         Tokens are RS256 in Keycloak's claim layout, valid for 24 hours; run the demo again for new ones. \
         Ctrl-C stops it.\n"
    );
    print!("{out}");
    Ok(config)
}

/// The configuration the demo wrote, served on 127.0.0.1:`port`.
fn load_demo_config(path: &Path, port: u16) -> Result<Config, DemoError> {
    let overrides = ServeOverrides {
        ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        port: Some(port),
        ..ServeOverrides::default()
    };
    Ok(Config::load(path, &overrides)?.0)
}
