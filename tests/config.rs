//! Configuration parsing against a real-shaped vantage6 4.x server file.

use std::{path::Path, time::Duration};

use clap::Parser;
use v6_socketio::{
    config::{Config, ConfigError, CorsOrigins, LogFormat, ServeOverrides},
    database_url::DatabaseUrl,
};

const FIXTURE: &str = "tests/fixtures/vantage6-server-4x.yaml";

fn load(overrides: &ServeOverrides) -> Config {
    Config::load(Path::new(FIXTURE), overrides)
        .expect("fixture loads")
        .0
}

#[test]
fn reads_vantage6_keys_and_ignores_the_rest() {
    let c = load(&ServeOverrides::default());
    assert_eq!(c.jwt_secret_key, "vantage6-test-secret");
    assert_eq!(
        c.database,
        DatabaseUrl::Postgres("postgres://vantage6:s3cret@db.example.org:5432/vantage6".into())
    );
    assert_eq!(
        broker(&c),
        Some(("v6", "guest", "rabbit.example.org", 5672, "vantage6"))
    );
    assert_eq!(
        c.cors_allowed_origins,
        CorsOrigins::List(vec![
            "https://portal.example.org".into(),
            "http://localhost:7600".into()
        ])
    );
    // vantage6's own `ip`/`port` belong to its REST API, not to us.
    assert_eq!(c.listen.to_string(), "0.0.0.0:7700");
    assert_eq!(c.path, "/socket.io/");
    assert_eq!(c.ping_interval, Duration::from_secs(25));
    assert_eq!(c.ping_timeout, Duration::from_secs(30));
    assert_eq!(c.sweep_interval, Duration::from_millis(2500));
    assert_eq!(c.max_payload, 1_000_000);
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.instance_name.as_str(), "from-file");
    assert!(!c.affinity_cookie);
}

/// The `serve` flags, parsed as the binary parses them (clap resolves
/// flag > environment; the file and the defaults come after).
#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    overrides: ServeOverrides,
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    // The only test in this binary that touches these variables.
    std::env::set_var("V6_SOCKETIO_PORT", "7800");
    std::env::set_var("V6_SOCKETIO_PING_TIMEOUT", "45");
    std::env::set_var("V6_SOCKETIO_LOG_FORMAT", "json");
    std::env::set_var("V6_SOCKETIO_INSTANCE_NAME", "from-env");
    std::env::set_var("V6_SOCKETIO_AFFINITY_COOKIE", "true");
    let from_env = Flags::parse_from(["serve"]).overrides;
    let from_flag = Flags::parse_from([
        "serve",
        "--port",
        "7900",
        "--ip",
        "127.0.0.1",
        "--instance-name",
        "from-flag:7900",
        "--affinity-cookie",
        "false",
    ])
    .overrides;
    std::env::set_var("V6_SOCKETIO_INSTANCE_NAME", "not valid");
    let invalid_env = Flags::parse_from(["serve"]).overrides;
    std::env::remove_var("V6_SOCKETIO_PORT");
    std::env::remove_var("V6_SOCKETIO_PING_TIMEOUT");
    std::env::remove_var("V6_SOCKETIO_LOG_FORMAT");
    std::env::remove_var("V6_SOCKETIO_INSTANCE_NAME");
    std::env::remove_var("V6_SOCKETIO_AFFINITY_COOKIE");

    let c = load(&from_env);
    assert_eq!(c.listen.port(), 7800, "env beats file");
    assert_eq!(c.ping_timeout, Duration::from_secs(45), "env beats file");
    assert_eq!(c.log_format, LogFormat::Json, "env beats default");
    assert_eq!(
        c.sweep_interval,
        Duration::from_millis(2500),
        "file beats default"
    );

    assert_eq!(c.instance_name.as_str(), "from-env", "env beats file");
    assert!(c.affinity_cookie, "env beats file");

    let c = load(&from_flag);
    assert_eq!(
        c.listen.to_string(),
        "127.0.0.1:7900",
        "flag beats env and file"
    );
    assert_eq!(
        c.instance_name.as_str(),
        "from-flag:7900",
        "flag beats env and file"
    );
    assert!(!c.affinity_cookie, "flag beats env");

    let err = Config::load(Path::new(FIXTURE), &invalid_env)
        .expect_err("invalid name from the environment")
        .to_string();
    assert!(
        err.contains("instance_name") && err.contains("not valid"),
        "{err}"
    );
}

#[test]
fn instance_name_and_affinity_cookie_defaults() {
    let (c, _) = from_yaml("jwt_secret_key: k\nuri: sqlite:///x\nv6_socketio: {port: 7611}\n")
        .expect("valid");
    assert!(c.affinity_cookie, "the cookie is on by default");
    // <hostname>:<port>, whatever this host is called.
    let name = c.instance_name.as_str();
    assert!(name.ends_with(":7611"), "{name}");
    assert!(
        v6_socketio::affinity::is_valid_instance_name(name),
        "{name}"
    );
    let (c, _) = from_yaml(
        "jwt_secret_key: k\nuri: sqlite:///x\nv6_socketio: {instance_name: '10.0.0.5:7602', affinity_cookie: true}\n",
    )
    .expect("valid");
    assert_eq!(c.instance_name.as_str(), "10.0.0.5:7602");
    assert!(c.affinity_cookie);
}

/// The broker as read: user, password, host, port, virtual host.
fn broker(c: &Config) -> Option<(&str, &str, &str, u16, &str)> {
    c.rabbitmq_uri.as_ref().map(|u| {
        let u = u.first();
        (u.username(), u.password(), u.host(), u.port(), u.vhost())
    })
}

/// Each broker of the fail-over list as `host:port/vhost`.
fn brokers(c: &Config) -> Vec<String> {
    c.rabbitmq_uri
        .iter()
        .flat_map(|l| l.iter())
        .map(|u| format!("{}:{}/{}", u.host(), u.port(), u.vhost()))
        .collect()
}

#[test]
fn several_rabbitmq_uris_as_kombu_takes_them() {
    // kombu's `;` list, in one string (what vantage6 hands python-socketio unchanged).
    let (c, w) = from_yaml(
        "jwt_secret_key: k\nuri: sqlite:///x\nrabbitmq: {uri: 'amqp://u:p@a:5672//;amqp://u:p@b:5673/v6'}\n",
    )
    .expect("valid");
    assert_eq!(brokers(&c), ["a:5672//", "b:5673/v6"]);
    assert!(w.is_empty());
    // A YAML list (kombu's Connection takes a list too).
    let (c, _) = from_yaml(
        "jwt_secret_key: k\nuri: sqlite:///x\nrabbitmq:\n  uri:\n    - amqp://u:p@a//\n    - amqp://u:p@b//\n",
    )
    .expect("valid");
    assert_eq!(brokers(&c), ["a:5672//", "b:5672//"]);
    // The same list in both keys is not a conflict; the passwords stay hidden in errors.
    let err = from_yaml(
        "jwt_secret_key: k\nuri: sqlite:///x\nrabbitmq: {uri: ['amqp://u:hunter2@a//', 'amqp://u:hunter2@b//']}\nrabbitmq_uri: 'amqp://u:hunter2@a//;amqp://u:hunter2@c//'\n",
    )
    .expect_err("conflict")
    .to_string();
    assert!(err.contains("u:***@b") && err.contains("u:***@c"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    let (c, _) = from_yaml(
        "jwt_secret_key: k\nuri: sqlite:///x\nrabbitmq: {uri: ['amqp://a//', 'amqp://b//']}\nrabbitmq_uri: 'amqp://a//;amqp://b//'\n",
    )
    .expect("same list");
    assert_eq!(brokers(&c).len(), 2);
    // An empty entry is refused, naming the setting.
    let err = from_yaml(
        "jwt_secret_key: k\nuri: sqlite:///x\nrabbitmq: {uri: 'amqp://u:hunter2@a//;'}\n",
    )
    .expect_err("empty entry");
    let msg = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        msg.contains("rabbitmq.uri") && msg.contains("empty broker URI"),
        "{msg}"
    );
    assert!(!msg.contains("hunter2"), "{msg}");
}

#[test]
fn broker_reconnect_max_default_and_bounds() {
    let base = "jwt_secret_key: k\nuri: sqlite:///x\n";
    let (c, _) = from_yaml(base).expect("valid");
    assert_eq!(c.broker_reconnect_max, Duration::from_secs(2));
    let (c, _) = from_yaml(&format!(
        "{base}v6_socketio: {{broker_reconnect_max: 0.5}}\n"
    ))
    .unwrap();
    assert_eq!(c.broker_reconnect_max, Duration::from_millis(500));
    let (c, _) = from_yaml(&format!(
        "{base}v6_socketio: {{broker_reconnect_max: 0.1}}\n"
    ))
    .unwrap();
    assert_eq!(c.broker_reconnect_max, Duration::from_millis(100));
    for bad in ["0.05", "0", "-1", ".nan"] {
        let err = from_yaml(&format!(
            "{base}v6_socketio: {{broker_reconnect_max: {bad}}}\n"
        ))
        .expect_err(bad)
        .to_string();
        assert!(err.contains("broker_reconnect_max"), "{bad}: {err}");
    }
    let flags = ServeOverrides {
        broker_reconnect_max: Some(1.5),
        ..ServeOverrides::default()
    };
    let (c, _) = Config::from_yaml(
        &format!("{base}v6_socketio: {{broker_reconnect_max: 4}}\n"),
        &flags,
    )
    .unwrap();
    assert_eq!(
        c.broker_reconnect_max,
        Duration::from_millis(1500),
        "the flag wins"
    );
}

fn from_yaml(text: &str) -> Result<(Config, Vec<String>), ConfigError> {
    Config::from_yaml(text, &ServeOverrides::default()).map(|(c, w)| (c, w.0))
}

#[test]
fn legacy_rabbitmq_key_is_used_with_a_warning() {
    let (c, warnings) =
        from_yaml("jwt_secret_key: k\nuri: sqlite:///v6.sqlite\nrabbitmq_uri: amqp://u:p@h/v\n")
            .expect("valid");
    assert_eq!(broker(&c), Some(("u", "p", "h", 5672, "v")));
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("rabbitmq_uri") && warnings[0].contains("u:***@h"));
}

#[test]
fn conflicting_rabbitmq_keys_are_an_error_naming_both() {
    let err = from_yaml(
        "jwt_secret_key: k\nuri: sqlite:///v6.sqlite\nrabbitmq: {uri: 'amqp://a/v'}\nrabbitmq_uri: amqp://b/v\n",
    )
    .expect_err("conflict");
    let msg = err.to_string();
    assert!(
        msg.contains("rabbitmq.uri") && msg.contains("rabbitmq_uri"),
        "{msg}"
    );
    // Identical values are not a conflict.
    let (c, w) = from_yaml(
        "jwt_secret_key: k\nuri: sqlite:///v6.sqlite\nrabbitmq: {uri: 'amqp://a/v'}\nrabbitmq_uri: amqp://a/v\n",
    )
    .expect("same value");
    assert_eq!(broker(&c), Some(("guest", "guest", "a", 5672, "v")));
    assert!(w.is_empty());
}

#[test]
fn missing_or_invalid_settings_are_one_line_errors_naming_them() {
    let cases = [
        ("uri: sqlite:///v6.sqlite\n", "jwt_secret_key"),
        ("jwt_secret_key: k\n", "`uri`"),
        ("jwt_secret_key: k\nuri: mysql://h/db\n", "`uri`"),
        (
            "jwt_secret_key: k\nuri: sqlite:///x\nv6_socketio: {ping_timeout: -1}\n",
            "ping_timeout",
        ),
        (
            "jwt_secret_key: k\nuri: sqlite:///x\nv6_socketio: {path: /}\n",
            "path",
        ),
        (
            "jwt_secret_key: k\nuri: sqlite:///x\nv6_socketio: {prot: 1}\n",
            "prot",
        ),
        (
            "jwt_secret_key: k\nuri: sqlite:///x\nv6_socketio: {port: nope}\n",
            "port",
        ),
        (
            "jwt_secret_key: [not, a, string]\nuri: sqlite:///x\n",
            "jwt_secret_key",
        ),
        (
            "jwt_secret_key: k\nuri: sqlite:///x\nv6_socketio: {instance_name: ''}\n",
            "instance_name",
        ),
        (
            "jwt_secret_key: k\nuri: sqlite:///x\nv6_socketio: {instance_name: 'a;b'}\n",
            "instance_name",
        ),
        (
            "jwt_secret_key: k\nuri: sqlite:///x\nv6_socketio: {affinity_cookie: maybe}\n",
            "affinity_cookie",
        ),
    ];
    for (yaml, name) in cases {
        let msg = from_yaml(yaml).expect_err(yaml).to_string();
        assert!(
            msg.contains(name),
            "{yaml:?} gave {msg:?}, which does not name {name}"
        );
        assert!(!msg.contains('\n'), "{msg:?} is not one line");
    }
}

#[test]
fn cors_star_and_single_string() {
    let (c, _) = from_yaml("jwt_secret_key: k\nuri: sqlite:///x\ncors_allowed_origins: '*'\n")
        .expect("valid");
    assert_eq!(c.cors_allowed_origins, CorsOrigins::Any);
    let (c, _) = from_yaml(
        "jwt_secret_key: k\nuri: sqlite:///x\ncors_allowed_origins: https://ui.example\n",
    )
    .expect("valid");
    assert_eq!(
        c.cors_allowed_origins,
        CorsOrigins::List(vec!["https://ui.example".into()])
    );
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let err = Config::load(
        Path::new("tests/fixtures/absent.yaml"),
        &ServeOverrides::default(),
    )
    .expect_err("absent");
    assert!(err.to_string().contains("absent.yaml"));
}

#[test]
fn first_event_delay_in_milliseconds() {
    let base = "jwt_secret_key: k\nuri: sqlite:///x\n";
    let (c, _) = from_yaml(base).expect("valid");
    assert_eq!(c.first_event_delay, Duration::from_millis(50), "default");
    let (c, _) = from_yaml(&format!("{base}v6_socketio: {{first_event_delay: 0}}\n")).expect("0");
    assert_eq!(c.first_event_delay, Duration::ZERO, "0 turns the hold off");
    let (c, _) =
        from_yaml(&format!("{base}v6_socketio: {{first_event_delay: 120}}\n")).expect("file");
    assert_eq!(c.first_event_delay, Duration::from_millis(120));
    let flag = Flags::parse_from(["serve", "--first-event-delay", "7"]).overrides;
    let (c, _) = Config::from_yaml(
        &format!("{base}v6_socketio: {{first_event_delay: 120}}\n"),
        &flag,
    )
    .expect("flag");
    assert_eq!(
        c.first_event_delay,
        Duration::from_millis(7),
        "flag beats file"
    );
    for bad in ["10001", "-1", "0.5", "soon"] {
        let yaml = format!("{base}v6_socketio: {{first_event_delay: {bad}}}\n");
        let msg = from_yaml(&yaml).expect_err(&yaml).to_string();
        assert!(msg.contains("first_event_delay"), "{yaml:?} gave {msg:?}");
    }
}

/// What `main` prints (`error: {:#}`): each cause once, on one line, the
/// password hidden.
#[test]
fn error_chains_name_each_cause_once() {
    let chain = |e: ConfigError| format!("{:#}", anyhow::Error::from(e));
    let absent = chain(
        Config::load(
            Path::new("tests/fixtures/absent.yaml"),
            &ServeOverrides::default(),
        )
        .expect_err("absent"),
    );
    assert!(
        absent.starts_with("cannot read configuration file tests/fixtures/absent.yaml: "),
        "{absent}"
    );
    assert_eq!(absent.matches("os error").count(), 1, "{absent}");

    let bad_uri = chain(
        from_yaml(
            "jwt_secret_key: k\nuri: sqlite:///x\nrabbitmq: {uri: 'amqp://u:hunter2@h:port/'}\n",
        )
        .expect_err("bad broker URI"),
    );
    assert!(
        bad_uri.starts_with("invalid setting `rabbitmq.uri`: "),
        "{bad_uri}"
    );
    assert_eq!(
        bad_uri.matches("invalid host or port").count(),
        1,
        "{bad_uri}"
    );
    assert!(!bad_uri.contains("hunter2"), "{bad_uri}");

    let bad_db = chain(from_yaml("jwt_secret_key: k\nuri: mysql://h/db\n").expect_err("dialect"));
    assert!(bad_db.starts_with("invalid setting `uri`: "), "{bad_db}");
    assert_eq!(bad_db.matches("mysql").count(), 1, "{bad_db}");
    for line in [&absent, &bad_uri, &bad_db] {
        assert!(!line.contains('\n'), "{line}");
    }
}
