//! `v6-socketio demo`: the embedded default. Creates (if absent) a demo
//! SQLite database with the vantage6 4.x tables this server uses and a small
//! fixture, writes a vantage6-style configuration file next to it, prints a
//! ready token per client and the command that connects the bundled node
//! simulator, then serves like `serve` on 127.0.0.1.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    auth::{self, MintError},
    config::{Config, ConfigError, ServeOverrides},
    store::{create_demo_database, StoreError},
};

/// How long the printed tokens stay valid.
const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Why the demo could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The demo folder or its configuration file could not be written.
    #[error("cannot prepare demo folder {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The demo database could not be created.
    #[error("cannot create demo database: {0}")]
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
    let overrides = ServeOverrides {
        ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        port: Some(options.port),
        ..ServeOverrides::default()
    };
    let (config, _) = Config::load(&config_path, &overrides)?;

    let url = format!("http://{}", config.listen);
    let mut out = String::new();
    out.push_str(&format!(
        "\nv6-socketio demo: vantage6's /tasks namespace on {url}{}\n",
        config.path
    ));
    out.push_str(&format!(
        "  database: {} ({})\n  config:   {}\n\n",
        db_path.display(),
        if created { "created now" } else { "existing" },
        config_path.display()
    ));
    for (i, (id, name)) in fixture.nodes.iter().enumerate() {
        let token = auth::mint_access_token(&config.jwt_secret_key, *id, "node", TOKEN_LIFETIME)?;
        if i == 0 {
            out.push_str(&format!(
                "Connect the bundled node simulator as {name}, from the repository root in another terminal:\n\n  \
                 clients/simulate-node --url {url} --token {token}\n\n"
            ));
        } else {
            out.push_str(&format!("Token for {name} (node {id}):\n  {token}\n"));
        }
    }
    let (user_id, user_name) = &fixture.user;
    let token = auth::mint_access_token(&config.jwt_secret_key, *user_id, "user", TOKEN_LIFETIME)?;
    out.push_str(&format!(
        "Token for {user_name} (user {user_id}, receives every event of collaboration {}):\n  {token}\n\n\
         Tokens are valid for 24 hours; run the demo again for new ones. Ctrl-C stops it.\n",
        fixture.collaboration_id
    ));
    // The instructions are the demo's output, not a log line.
    print!("{out}");
    Ok(config)
}
