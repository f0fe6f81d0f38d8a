//! vantage6 5.x settings: an unchanged HQ file, `KEYCLOAK_*` from the
//! environment as HQ reads them, our own settings, and the contradictions,
//! in the configuration and at `serve` start-up (the real binary against
//! 5.x and 4.x SQLite databases).

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use clap::Parser;
use jsonwebtoken::Algorithm;
use socketioxide_amqp::DataFormat;
use v6_socketio::{
    config::{Config, ConfigError, GenerationSetting, KeycloakRealm, ServeOverrides},
    generation::{resolve, Vantage6Generation},
    keycloak::KeySource,
    store::{create_demo_database, create_demo_database_v5},
};

const HQ_FIXTURE: &str = "tests/fixtures/vantage6-hq-5x.yaml";

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    overrides: ServeOverrides,
}

fn from_yaml(text: &str, overrides: &ServeOverrides) -> Result<Config, ConfigError> {
    Config::from_yaml(text, overrides).map(|(c, _)| c)
}

/// Overrides built directly, not through clap: clap would read the
/// environment, which the test below changes.
fn keycloak_overrides(url: Option<&str>, realm: Option<&str>) -> ServeOverrides {
    ServeOverrides {
        keycloak_url: url.map(str::to_owned),
        keycloak_realm: realm.map(str::to_owned),
        ..ServeOverrides::default()
    }
}

fn with_keycloak() -> ServeOverrides {
    keycloak_overrides(Some("https://auth.example.org"), Some("vantage6"))
}

#[test]
fn an_unchanged_hq_file_with_keycloak_from_the_environment() {
    // The only test in this binary that touches these variables.
    std::env::set_var("KEYCLOAK_URL", "https://auth.example.org");
    std::env::set_var("KEYCLOAK_REALM", "vantage6");
    std::env::set_var("KEYCLOAK_ADMIN_CLIENT", "backend-admin-client");
    let env = Flags::parse_from(["serve"]).overrides;
    let (c, _) = Config::load(Path::new(HQ_FIXTURE), &env).expect("HQ file loads");
    assert_eq!(c.vantage6_generation, GenerationSetting::V5);
    assert_eq!(
        c.keycloak,
        Some(KeycloakRealm {
            url: "https://auth.example.org".into(),
            realm: "vantage6".into()
        })
    );
    assert_eq!(
        c.realm_key_sources(),
        Some((
            KeySource::Realm("https://auth.example.org/realms/vantage6".into()),
            KeySource::Realm("https://auth.example.org/realms/vantage6".into())
        ))
    );
    assert_eq!(
        c.jwt_decode_algorithms,
        vec![Algorithm::RS256, Algorithm::RS512]
    );
    assert_eq!(c.jwt_decode_leeway, Duration::from_secs(30));
    assert_eq!(c.keycloak_key_refresh_interval, Duration::from_secs(120));
    assert_eq!(c.jwt_secret_key, "", "not needed for 5.x");
    assert_eq!(
        resolve(&c, Vantage6Generation::V5).expect("5.x"),
        Vantage6Generation::V5
    );
    // Flags beat the environment; the env also feeds `auto`.
    std::env::set_var("V6_SOCKETIO_VANTAGE6_GENERATION", "auto");
    std::env::set_var("V6_SOCKETIO_KEYCLOAK_KEY_REFRESH_INTERVAL", "5");
    let env = Flags::parse_from(["serve"]).overrides;
    let c = Config::load(Path::new(HQ_FIXTURE), &env).expect("loads").0;
    assert_eq!(
        c.vantage6_generation,
        GenerationSetting::Auto,
        "env beats file"
    );
    assert_eq!(c.keycloak_key_refresh_interval, Duration::from_secs(5));
    let flag = Flags::parse_from([
        "serve",
        "--vantage6-generation",
        "5",
        "--keycloak-realm",
        "other",
        "--keycloak-key-refresh-interval",
        "7.5",
    ])
    .overrides;
    let c = Config::load(Path::new(HQ_FIXTURE), &flag).expect("loads").0;
    assert_eq!(
        c.vantage6_generation,
        GenerationSetting::V5,
        "flag beats env"
    );
    assert_eq!(c.keycloak.map(|k| k.realm).as_deref(), Some("other"));
    assert_eq!(c.keycloak_key_refresh_interval, Duration::from_millis(7500));
    for v in [
        "V6_SOCKETIO_VANTAGE6_GENERATION",
        "V6_SOCKETIO_KEYCLOAK_KEY_REFRESH_INTERVAL",
        "KEYCLOAK_URL",
        "KEYCLOAK_REALM",
        "KEYCLOAK_ADMIN_CLIENT",
    ] {
        std::env::remove_var(v);
    }
}

#[test]
fn defaults_are_hqs() {
    let c = from_yaml(
        "jwt_secret_key: k\nuri: sqlite:///x\n",
        &ServeOverrides::default(),
    )
    .expect("4.x file");
    assert_eq!(c.vantage6_generation, GenerationSetting::Auto);
    assert_eq!(
        c.jwt_decode_algorithms,
        vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512]
    );
    assert_eq!(c.jwt_decode_leeway, Duration::from_secs(10));
    assert_eq!(c.keycloak_key_refresh_interval, Duration::from_secs(60));
    assert_eq!(c.keycloak, None);
    assert_eq!(c.realm_key_sources(), None);
    // A 4.x file on a 4.x schema: unchanged.
    assert_eq!(
        resolve(&c, Vantage6Generation::V4).expect("4.x"),
        Vantage6Generation::V4
    );
    // The queue format follows the python-socketio of the generation's
    // server (4.15.2: up to 5.15.0, HQ 5.0.3: 5.16.2) unless it is set.
    assert_eq!(c.message_queue_format, None);
    assert_eq!(
        c.message_queue_format_for(Vantage6Generation::V4),
        DataFormat::Legacy
    );
    assert_eq!(
        c.message_queue_format_for(Vantage6Generation::V5),
        DataFormat::Args
    );
    for (text, format) in [("legacy", DataFormat::Legacy), ("args", DataFormat::Args)] {
        let yaml = format!(
            "jwt_secret_key: k\nuri: sqlite:///x\nv6_socketio: {{message_queue_format: {text}}}\n"
        );
        let c = from_yaml(&yaml, &ServeOverrides::default()).expect(text);
        for g in [Vantage6Generation::V4, Vantage6Generation::V5] {
            assert_eq!(c.message_queue_format_for(g), format, "{text} in {g}");
        }
    }
    for (text, g) in [
        ("auto", GenerationSetting::Auto),
        ("4", GenerationSetting::V4),
        ("'5'", GenerationSetting::V5),
    ] {
        let yaml = format!(
            "jwt_secret_key: k\nuri: sqlite:///x\nv6_socketio: {{vantage6_generation: {text}, keycloak_public_key_file: /k.pem}}\n"
        );
        assert_eq!(
            from_yaml(&yaml, &ServeOverrides::default())
                .expect(text)
                .vantage6_generation,
            g
        );
    }
}

#[test]
fn emit_reads_an_hq_file_without_token_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hq.yaml");
    std::fs::write(
        &path,
        "uri: sqlite:///x\nrabbitmq: {uri: 'amqp://a/v'}\nv6_socketio: {vantage6_generation: 5}\n",
    )
    .expect("write");
    let (c, _) = Config::load_for_emit(&path).expect("emit needs only the broker");
    assert_eq!(
        c.rabbitmq_uri
            .map(|u| u.first().vhost().to_owned())
            .as_deref(),
        Some("v")
    );
    // `serve` on the same file needs a way to verify tokens.
    let err = Config::load(&path, &ServeOverrides::default()).expect_err("serve");
    assert!(
        err.to_string().contains("keycloak_public_key_file"),
        "{err}"
    );
}

#[test]
fn key_file_and_keycloak_together() {
    let yaml = "uri: sqlite:///x\nv6_socketio: {keycloak_public_key_file: /etc/realm.pem}\n";
    let c = from_yaml(yaml, &ServeOverrides::default()).expect("file only");
    let file = KeySource::File("/etc/realm.pem".into());
    assert_eq!(c.realm_key_sources(), Some((file.clone(), file.clone())));
    let c = from_yaml(yaml, &with_keycloak()).expect("file and Keycloak");
    assert_eq!(
        c.realm_key_sources(),
        Some((
            file,
            KeySource::Realm("https://auth.example.org/realms/vantage6".into())
        )),
        "the file first, re-fetches from Keycloak"
    );
}

#[test]
fn contradictions_are_one_line_errors_naming_the_setting() {
    let none = ServeOverrides::default();
    let only_url = keycloak_overrides(Some("http://kc"), None);
    let only_realm = keycloak_overrides(None, Some("v6"));
    let keycloak = with_keycloak();
    let cases: Vec<(&str, &ServeOverrides, &str)> = vec![
        ("uri: sqlite:///x\nv6_socketio: {vantage6_generation: 5}\n", &none, "keycloak_public_key_file"),
        ("uri: sqlite:///x\nv6_socketio: {vantage6_generation: 5}\n", &only_url, "KEYCLOAK_REALM"),
        ("uri: sqlite:///x\nv6_socketio: {vantage6_generation: 5}\n", &only_realm, "KEYCLOAK_URL"),
        // Neither generation could verify a token.
        ("uri: sqlite:///x\n", &none, "jwt_secret_key"),
        ("uri: sqlite:///x\nv6_socketio: {vantage6_generation: 4}\n", &keycloak, "jwt_secret_key"),
        ("jwt_secret_key: k\nuri: sqlite:///x\nv6_socketio: {vantage6_generation: 6}\n", &none, "vantage6_generation"),
        ("jwt_secret_key: k\nuri: sqlite:///x\njwt_decode_algorithms: [RS256, HS256]\n", &none, "jwt_decode_algorithms"),
        ("jwt_secret_key: k\nuri: sqlite:///x\njwt_decode_algorithms: [ES256]\n", &none, "jwt_decode_algorithms"),
        ("jwt_secret_key: k\nuri: sqlite:///x\njwt_decode_leeway: -1\n", &none, "jwt_decode_leeway"),
        ("jwt_secret_key: k\nuri: sqlite:///x\nv6_socketio: {keycloak_key_refresh_interval: 0}\n", &none, "keycloak_key_refresh_interval"),
    ];
    for (yaml, overrides, name) in cases {
        let msg = from_yaml(yaml, overrides).expect_err(yaml).to_string();
        assert!(
            msg.contains(name),
            "{yaml:?} gave {msg:?}, which does not name {name}"
        );
        assert!(!msg.contains('\n'), "{msg:?}");
    }
    // Setting and schema disagree, or the detected generation lacks its key.
    let v4 = from_yaml(
        "jwt_secret_key: k\nuri: sqlite:///x\nv6_socketio: {vantage6_generation: 4}\n",
        &none,
    )
    .expect("4");
    let v5 = from_yaml(
        "uri: sqlite:///x\nv6_socketio: {vantage6_generation: 5}\n",
        &with_keycloak(),
    )
    .expect("5");
    let auto_no_key = from_yaml("jwt_secret_key: k\nuri: sqlite:///x\n", &none).expect("auto");
    let auto_no_secret = from_yaml("uri: sqlite:///x\n", &with_keycloak()).expect("auto");
    for (c, schema, name) in [
        (&v4, Vantage6Generation::V5, "vantage6_generation"),
        (&v5, Vantage6Generation::V4, "vantage6_generation"),
        (
            &auto_no_key,
            Vantage6Generation::V5,
            "keycloak_public_key_file",
        ),
        (&auto_no_secret, Vantage6Generation::V4, "jwt_secret_key"),
    ] {
        let msg = resolve(c, schema).expect_err(name).to_string();
        assert!(msg.contains(name), "{msg}");
        assert!(!msg.contains('\n'), "{msg:?}");
    }
    assert_eq!(
        resolve(&auto_no_secret, Vantage6Generation::V5).expect("5"),
        Vantage6Generation::V5
    );
}

/// Runs `serve` on `config`; returns (exit status or None if still running
/// after it logged "serving", stderr lines).
fn serve(config: &Path, extra_env: &[(&str, &str)]) -> (Option<i32>, Vec<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_v6-socketio"));
    cmd.args(["serve", "--config"])
        .arg(config)
        .args(["--port", "0", "--log-format", "text"])
        .env("RUST_LOG", "info")
        .env_remove("KEYCLOAK_URL")
        .env_remove("KEYCLOAK_REALM")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                // The last start-up line: "serving addr=… path=… instance=… affinity_cookie=…".
                let serving = line.contains("serving") && line.contains("affinity_cookie");
                lines.push(line);
                if serving {
                    let _ = child.kill();
                    let _ = child.wait();
                    return (None, lines);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Some(status) = child.try_wait().expect("wait") {
                    lines.extend(rx.try_iter());
                    return (status.code(), lines);
                }
                assert!(
                    Instant::now() < deadline,
                    "serve neither served nor exited: {lines:?}"
                );
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().expect("wait");
                return (status.code(), lines);
            }
        }
    }
}

#[tokio::test]
async fn serve_detects_logs_and_refuses_contradictions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db5 = dir.path().join("v5.sqlite");
    let db4 = dir.path().join("v4.sqlite");
    create_demo_database_v5(&db5).await.expect("5.x db");
    create_demo_database(&db4).await.expect("4.x db");
    let (_, public) = v6_socketio::auth::generate_rsa_key_pair().expect("key");
    let pem = dir.path().join("realm.pem");
    std::fs::write(&pem, public).expect("pem");
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("config");
        p
    };

    // auto + 5.x schema + key file: serves 5.x and says so.
    let auto5 = write(
        "auto5.yaml",
        format!(
            "uri: sqlite:///{}\nlogging: {{level: DEBUG}}\nv6_socketio: {{keycloak_public_key_file: {}}}\n",
            db5.display(),
            pem.display()
        ),
    );
    let (code, lines) = serve(&auto5, &[]);
    assert_eq!(code, None, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("serving vantage6 5.x (database schema: 5.x)")),
        "{lines:?}"
    );
    // A 5.x schema without a 5.x table the handlers use: refused.
    let partial = dir.path().join("v5-partial.sqlite");
    create_demo_database_v5(&partial).await.expect("5.x db");
    {
        use sqlx::{Connection, Executor};
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", partial.display()))
            .await
            .expect("open");
        conn.execute("DROP TABLE dataframetobedeletedatnode")
            .await
            .expect("drop");
        conn.close().await.expect("close");
    }
    let (code, lines) = serve(
        &write(
            "partial.yaml",
            format!(
                "uri: sqlite:///{}\nv6_socketio: {{keycloak_public_key_file: {}}}\n",
                partial.display(),
                pem.display()
            ),
        ),
        &[],
    );
    assert_eq!(code, Some(1), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("error: ") && l.contains("dataframetobedeletedatnode")),
        "{lines:?}"
    );
    // auto + 4.x schema: 4.x, as before.
    let auto4 = write(
        "auto4.yaml",
        format!("jwt_secret_key: k\nuri: sqlite:///{}\n", db4.display()),
    );
    let (code, lines) = serve(&auto4, &[]);
    assert_eq!(code, None, "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("serving vantage6 4.x")),
        "{lines:?}"
    );

    let one_line_error = |code: Option<i32>, lines: &[String], name: &str| {
        assert_eq!(code, Some(1), "{lines:?}");
        let errors: Vec<_> = lines.iter().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "{lines:?}");
        assert!(errors[0].contains(name), "{errors:?} does not name {name}");
        println!("{}", errors[0]);
    };
    // Explicit 4 on a 5.x schema.
    let four_on_5 = write(
        "four_on_5.yaml",
        format!(
            "jwt_secret_key: k\nuri: sqlite:///{}\nv6_socketio: {{vantage6_generation: 4}}\n",
            db5.display()
        ),
    );
    let (code, lines) = serve(&four_on_5, &[]);
    one_line_error(code, &lines, "vantage6_generation");
    // Explicit 5 on a 4.x schema.
    let five_on_4 = write(
        "five_on_4.yaml",
        format!(
            "uri: sqlite:///{}\nv6_socketio: {{vantage6_generation: 5, keycloak_public_key_file: {}}}\n",
            db4.display(),
            pem.display()
        ),
    );
    let (code, lines) = serve(&five_on_4, &[]);
    one_line_error(code, &lines, "vantage6_generation");
    // 5.x schema, jwt_secret_key only: no way to get the realm key.
    let (code, lines) = serve(
        &write(
            "no_key.yaml",
            format!("jwt_secret_key: k\nuri: sqlite:///{}\n", db5.display()),
        ),
        &[],
    );
    one_line_error(code, &lines, "keycloak_public_key_file");
    // KEYCLOAK_URL unreachable: exit at start-up as HQ's sys.exit(1).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("http://127.0.0.1:{closed}");
    let (code, lines) = serve(
        &write("kc.yaml", format!("uri: sqlite:///{}\n", db5.display())),
        &[
            ("KEYCLOAK_URL", url.as_str()),
            ("KEYCLOAK_REALM", "vantage6"),
        ],
    );
    one_line_error(code, &lines, "/realms/vantage6");
}
