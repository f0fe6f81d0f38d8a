//! Tests of kombu's reading of broker URIs.

use super::*;

fn parse(s: &str) -> BrokerUri {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn vhost_as_kombu_reads_it() {
    for (uri, vhost) in [
        ("amqp://h", "/"),
        ("amqp://h:5672", "/"),
        ("amqp://h:5672/", "/"),
        ("amqp://h:5672//", "/"),
        ("amqp://h:5672/%2f", "/"),
        ("amqp://h:5672/%2F", "/"),
        ("amqp://h:5672/vantage6", "vantage6"),
        ("amqp://h/a%20b", "a b"),
        ("amqp://h/a/b", "a/b"),
        ("amqp://h/v?heartbeat=5", "v"),
        ("amqp://h/#frag", "/"),
        ("pyamqp://h/x", "x"),
        ("librabbitmq://h/x", "x"),
    ] {
        assert_eq!(parse(uri).vhost(), vhost, "{uri}");
    }
}

#[test]
fn credentials_host_and_port() {
    let u = parse("amqp://us%65r:p%40ss:w@rd@Rabbit.Example:1234/v");
    assert_eq!(
        (u.username(), u.password(), u.host(), u.port()),
        ("user", "p@ss:w@rd", "rabbit.example", 1234)
    );
    let u = parse("amqp://h");
    assert_eq!(
        (u.username(), u.password(), u.port(), u.is_tls()),
        ("guest", "guest", 5672, false)
    );
    let u = parse("amqp://bob@h");
    assert_eq!((u.username(), u.password()), ("bob", "guest"));
    let u = parse("amqp://");
    assert_eq!(u.host(), "localhost");
    let u = parse("amqp://[::1]:5673/");
    assert_eq!((u.host(), u.port()), ("::1", 5673));
    let u = parse("amqp://h:/");
    assert_eq!(u.port(), 5672);
}

#[test]
fn tls_scheme_and_option() {
    let u = parse("amqps://h/");
    assert!(u.is_tls());
    assert_eq!(u.port(), 5671);
    let u = parse("amqp://h/?ssl=true");
    assert!(u.is_tls());
    assert_eq!(u.port(), 5671);
    assert!(matches!(
        BrokerUri::parse("amqp://h/?ssl=false"),
        Err(UriError::Option { .. })
    ));
}

#[test]
fn query_options() {
    let u = parse("amqp://h/?heartbeat=10&connect_timeout=2.5&login_method=AMQPLAIN");
    assert_eq!(u.heartbeat(), Some(10));
    assert_eq!(u.connect_timeout(), Some(Duration::from_millis(2500)));
    assert_eq!(u.amqp().query.connection_timeout, Some(2500));
    assert_eq!(u.amqp().query.auth_mechanism, Some(SASLMechanism::AMQPlain));
    assert_eq!(parse("amqp://h/?heartbeat=0.5").heartbeat(), Some(1));
    assert_eq!(parse("amqp://h/?heartbeat=0").heartbeat(), Some(0));
    assert_eq!(parse("amqp://h/").heartbeat(), None);
    assert_eq!(parse("amqp://h/?heartbeat=").heartbeat(), None);
    assert_eq!(
        parse("amqp://h/?heartbeat=3&heartbeat=4").heartbeat(),
        Some(4)
    );
}

#[test]
fn bad_uris_are_one_line_without_password() {
    for (uri, needle) in [
        ("rabbit:5672", "is not a URI"),
        ("redis://u:secret@h/", "scheme `redis`"),
        (
            "amqp://u:secret@h1;amqp://u:secret@h2",
            "several broker URIs",
        ),
        ("amqp://u:secret@h:port/", "invalid host or port"),
        ("amqp://u:secret@h:99999/", "invalid host or port"),
        ("amqp://u:secret@[::1/", "invalid host or port"),
        ("amqp://u:secret@h/?heartbeat=soon", "`heartbeat`"),
        ("amqp://u:secret@h/?heartbeat=-1", "`heartbeat`"),
        (
            "amqp://u:secret@h/?frame_max=4096",
            "unsupported query option `frame_max`",
        ),
        (
            "amqp://u:secret@h/?ssl_cert_reqs=CERT_NONE",
            "`ssl_cert_reqs`",
        ),
        ("amqp://u:secret@h/?login_method=GSSAPI", "`login_method`"),
        (
            "amqps://u:secret@h/?ssl_ca_certs=/nonexistent.pem",
            "cannot read",
        ),
        ("amqps://u:secret@h/?ssl_certfile=/c.pem", "go together"),
    ] {
        let e = BrokerUri::parse(uri).expect_err(uri).to_string();
        assert!(e.contains(needle), "{uri}: {e}");
        assert!(!e.contains("secret"), "{uri}: {e}");
        assert!(!e.contains('\n'), "{uri}: {e}");
    }
}

#[test]
fn display_and_debug_hide_the_password() {
    let u = parse("amqp://vantage6:t0p%2Fsecret@rabbit:5672/vantage6?heartbeat=10");
    assert_eq!(
        u.to_string(),
        "amqp://vantage6:***@rabbit:5672/vantage6?heartbeat=10"
    );
    assert!(!format!("{u:?}").contains("secret"));
    assert_eq!(parse("amqp://h/").to_string(), "amqp://h/");
    assert_eq!(redact("amqp://a:b@c:d@h/x@y"), "amqp://a:***@h/x@y");
}

#[test]
fn decode_is_lenient_like_unquote() {
    assert_eq!(decode("%"), "%");
    assert_eq!(decode("a%2"), "a%2");
    assert_eq!(decode("%zz"), "%zz");
    assert_eq!(decode("%C3%A9"), "é");
    assert_eq!(decode("%ff"), "\u{fffd}");
}

#[test]
fn failover_lists_as_kombu_splits_them() {
    let uris = BrokerUris::parse("amqp://u:secret@a:5672//;amqp://u:secret@b:5673/v6").unwrap();
    assert_eq!(uris.len(), 2);
    assert_eq!(
        (uris[0].host(), uris[0].port(), uris[0].vhost()),
        ("a", 5672, "/")
    );
    assert_eq!(
        (uris[1].host(), uris[1].port(), uris[1].vhost()),
        ("b", 5673, "v6")
    );
    assert_eq!(uris.first().host(), "a");
    // Each entry is a whole URI of its own: nothing is inherited from the first.
    let uris = BrokerUris::parse("amqp://bob:pw@a/x?heartbeat=5;amqp://b").unwrap();
    assert_eq!((uris[1].username(), uris[1].vhost()), ("guest", "/"));
    assert_eq!(uris[1].heartbeat(), None);
    // Blanks around the entries (a folded YAML string) are dropped.
    let uris = BrokerUris::parse(" amqp://a// ;\n amqp://b// ").unwrap();
    assert_eq!((uris[0].host(), uris[1].host()), ("a", "b"));
    // One URI is a list of one.
    let one = BrokerUris::parse("amqp://a//").unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(BrokerUris::from(parse("amqp://a//")), one);
}

#[test]
fn failover_list_from_a_yaml_list() {
    let uris = BrokerUris::from_list(&["amqp://a//", "amqp://b//;amqp://c//"]).unwrap();
    let hosts: Vec<_> = uris.iter().map(BrokerUri::host).collect();
    assert_eq!(hosts, ["a", "b", "c"]);
    let empty: [&str; 0] = [];
    assert!(matches!(
        BrokerUris::from_list(&empty),
        Err(UriError::EmptyUri { .. })
    ));
}

#[test]
fn bad_failover_lists_name_the_entry_without_passwords() {
    for (list, needle) in [
        ("amqp://u:secret@a//;", "empty broker URI"),
        (
            "amqp://u:secret@a//;;amqp://u:secret@b//",
            "empty broker URI",
        ),
        ("", "empty broker URI"),
        ("amqp://u:secret@a//;redis://u:secret@b/", "scheme `redis`"),
        (
            "amqp://u:secret@a//;amqp://u:secret@b:x/",
            "invalid host or port",
        ),
    ] {
        let e = BrokerUris::parse(list).expect_err(list).to_string();
        assert!(e.contains(needle), "{list}: {e}");
        assert!(!e.contains("secret"), "{list}: {e}");
        assert!(!e.contains('\n'), "{list}: {e}");
    }
    // A single URI still refuses a list.
    assert!(matches!(
        BrokerUri::parse("amqp://a//;amqp://b//"),
        Err(UriError::SeveralUris { .. })
    ));
}

#[test]
fn failover_lists_display_redacted() {
    let uris = BrokerUris::parse("amqp://u:secret@a//; amqp://v:hunter2@b//").unwrap();
    assert_eq!(uris.to_string(), "amqp://u:***@a//;amqp://v:***@b//");
    let debug = format!("{uris:?}");
    assert!(
        !debug.contains("secret") && !debug.contains("hunter2"),
        "{debug}"
    );
    assert!(debug.contains("amqp://v:***@b//"), "{debug}");
}
