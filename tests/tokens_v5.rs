//! vantage6 5.x (HQ 5.0.3) token rules: Keycloak RSA tokens checked as
//! flask-jwt-extended 4.7.1 over PyJWT 2.13 does with HQ's settings, and the
//! realm key fetched from a stand-in Keycloak realm endpoint (a small axum
//! server on 127.0.0.1) that can rotate its key.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Duration,
};

use axum::{extract::State, routing::get, Json, Router};
use http::{header::AUTHORIZATION, HeaderMap, HeaderValue};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use v6_socketio::{
    auth::{
        generate_rsa_key_pair, mint_keycloak_token, KeycloakVerifier, Subject, TokenError,
        Verifier, DEFAULT_DECODE_ALGORITHMS,
    },
    keycloak::{KeySource, KeycloakError, RealmKey, StartupRetry},
};

const SUB: &str = "ad2fda6a-b88e-4641-b4ab-b6641a540e75";

/// RSA key pairs (private PKCS#8 PEM, public SPKI PEM), generated once.
fn keys() -> &'static [(String, String); 3] {
    static KEYS: OnceLock<[(String, String); 3]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let k = || generate_rsa_key_pair().expect("RSA key");
        [k(), k(), k()]
    })
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn sign_with(private_pem: &str, alg: Algorithm, claims: &Value) -> String {
    encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_rsa_pem(private_pem.as_bytes()).expect("private key"),
    )
    .expect("encode")
}

/// Signed with key A, RS256.
fn sign(claims: Value) -> String {
    sign_with(&keys()[0].0, Algorithm::RS256, &claims)
}

/// The base64 body of an SPKI PEM: what Keycloak's realm endpoint serves.
fn realm_public_key(public_pem: &str) -> String {
    public_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect()
}

/// A stand-in for `GET {KEYCLOAK_URL}/realms/{realm}`.
#[derive(Clone)]
struct Realm {
    public_key: Arc<Mutex<Option<String>>>,
    hits: Arc<AtomicUsize>,
    url: String,
}

impl Realm {
    async fn start(public_pem: Option<&str>) -> Self {
        let public_key = Arc::new(Mutex::new(public_pem.map(realm_public_key)));
        let hits = Arc::new(AtomicUsize::new(0));
        let state = (public_key.clone(), hits.clone());
        let app = Router::new()
            .route("/realms/{realm}", get(realm_endpoint))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            public_key,
            hits,
            url,
        }
    }

    fn serve_key(&self, public_pem: &str) {
        *self.public_key.lock().expect("lock") = Some(realm_public_key(public_pem));
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn source(&self) -> KeySource {
        KeySource::realm(&self.url, "vantage6")
    }

    async fn load(&self, interval: Duration) -> Result<RealmKey, KeycloakError> {
        load_quickly(&self.source(), interval).await
    }
}

type RealmState = (Arc<Mutex<Option<String>>>, Arc<AtomicUsize>);

async fn realm_endpoint(
    State((key, hits)): State<RealmState>,
    axum::extract::Path(realm): axum::extract::Path<String>,
) -> Json<Value> {
    hits.fetch_add(1, Ordering::SeqCst);
    let key = key.lock().expect("lock").clone();
    // Keycloak's answer, with `public_key` only when the stand-in has one.
    let mut body = json!({"realm": realm, "token-service": "…", "tokens-not-before": 0});
    if let Some(k) = key {
        body["public_key"] = Value::String(k);
    }
    Json(body)
}

fn quick_retry() -> StartupRetry {
    StartupRetry {
        attempts: 3,
        delay: Duration::from_millis(20),
    }
}

/// The realm key from `source` (also its refresh source), with [`quick_retry`].
async fn load_quickly(source: &KeySource, interval: Duration) -> Result<RealmKey, KeycloakError> {
    RealmKey::load(source, source.clone(), interval, quick_retry()).await
}

/// A verifier with HQ's defaults over a realm serving key A.
async fn hq_default() -> (Realm, KeycloakVerifier) {
    let realm = Realm::start(Some(&keys()[0].1)).await;
    let key = realm.load(Duration::from_secs(60)).await.expect("key");
    let v = KeycloakVerifier::new(
        Arc::new(key),
        DEFAULT_DECODE_ALGORITHMS.to_vec(),
        Duration::from_secs(10),
    );
    (realm, v)
}

fn event(r: &Result<String, TokenError>) -> Option<&'static str> {
    r.as_ref().err().and_then(TokenError::client_event)
}

#[tokio::test]
async fn keycloak_tokens_are_accepted_with_every_default_rsa_algorithm() {
    let (_realm, v) = hq_default().await;
    let claims = json!({"sub": SUB, "exp": now() + 300, "iat": now(), "typ": "Bearer"});
    for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512] {
        let t = sign_with(&keys()[0].0, alg, &claims);
        assert_eq!(v.verify(&t).await.as_deref(), Ok(SUB), "{alg:?}");
    }
    // Keycloak's full claim layout; `aud` and `iss` are not checked.
    let t = mint_keycloak_token(
        &keys()[0].0,
        "https://elsewhere.example/realms/other",
        SUB,
        "node",
        "node-a",
        Duration::from_secs(300),
    )
    .expect("mint");
    assert_eq!(v.verify(&t).await.as_deref(), Ok(SUB));
    // A minimal token (no exp, no iat) is accepted, as HQ does.
    assert_eq!(
        v.verify(&sign(json!({"sub": SUB}))).await.as_deref(),
        Ok(SUB)
    );
    // Through the handshake headers: the Keycloak subject.
    let mut h = HeaderMap::new();
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {t}")).expect("ascii"),
    );
    assert_eq!(
        Verifier::from(v).verify_headers(&h).await,
        Ok(Subject::Keycloak(SUB.into()))
    );
}

#[tokio::test]
async fn only_the_configured_algorithms_and_rs256_are_accepted() {
    let realm = Realm::start(Some(&keys()[0].1)).await;
    let key = Arc::new(realm.load(Duration::from_secs(60)).await.expect("key"));
    // jwt_decode_algorithms: [RS512]; flask-jwt-extended appends JWT_ALGORITHM (RS256).
    let v = KeycloakVerifier::new(key, vec![Algorithm::RS512], Duration::from_secs(10));
    let claims = json!({"sub": SUB});
    let t = |alg| sign_with(&keys()[0].0, alg, &claims);
    assert_eq!(v.verify(&t(Algorithm::RS512)).await.as_deref(), Ok(SUB));
    assert_eq!(v.verify(&t(Algorithm::RS256)).await.as_deref(), Ok(SUB));
    let rs384 = v.verify(&t(Algorithm::RS384)).await;
    assert!(
        matches!(rs384, Err(TokenError::AlgorithmNotAllowed(ref a)) if a == "RS384"),
        "{rs384:?}"
    );
    assert_eq!(event(&rs384), None, "silent");
}

#[tokio::test]
async fn hs256_container_tokens_are_refused_silently() {
    let (_realm, v) = hq_default().await;
    // HQ's container token: HS256 with jwt_secret_key, a dict as `sub`, no exp.
    let container = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": {"vantage6_client_type": "container", "node_id": 1}}),
        &EncodingKey::from_secret(b"research-container-secret"),
    )
    .expect("encode");
    let r = v.verify(&container).await;
    assert!(
        matches!(r, Err(TokenError::AlgorithmNotAllowed(_))),
        "{r:?}"
    );
    assert_eq!(event(&r), None);
    // An HS256 token with a string subject too.
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": SUB}),
        &EncodingKey::from_secret(b"k"),
    )
    .expect("encode");
    assert_eq!(event(&v.verify(&hs).await), None);
    assert!(v.verify(&hs).await.is_err());
}

#[tokio::test]
async fn expiry_with_leeway_and_signature_first() {
    let (_realm, v) = hq_default().await;
    let expired = v
        .verify(&sign(json!({"sub": SUB, "exp": now() - 60})))
        .await;
    assert_eq!(expired, Err(TokenError::Expired));
    assert_eq!(event(&expired), Some("expired_token"));
    // Within the 10 s leeway: still valid; beyond it: expired.
    let within = sign(json!({"sub": SUB, "exp": now() - 5}));
    assert_eq!(v.verify(&within).await.as_deref(), Ok(SUB));
    let beyond = sign(json!({"sub": SUB, "exp": now() - 12}));
    assert_eq!(v.verify(&beyond).await, Err(TokenError::Expired));
    // Other key: invalid_token; expired *and* other key: invalid_token (signature first).
    let other = sign_with(&keys()[1].0, Algorithm::RS256, &json!({"sub": SUB}));
    let r = v.verify(&other).await;
    assert_eq!(r, Err(TokenError::InvalidSignature));
    assert_eq!(event(&r), Some("invalid_token"));
    let other_expired = sign_with(
        &keys()[1].0,
        Algorithm::RS256,
        &json!({"sub": SUB, "exp": now() - 60}),
    );
    let r = v.verify(&other_expired).await;
    assert_eq!(event(&r), Some("invalid_token"), "{r:?}");
}

#[tokio::test]
async fn leeway_is_configurable() {
    let realm = Realm::start(Some(&keys()[0].1)).await;
    let key = Arc::new(realm.load(Duration::from_secs(60)).await.expect("key"));
    let strict = KeycloakVerifier::new(key.clone(), vec![], Duration::ZERO);
    let t = sign(json!({"sub": SUB, "exp": now() - 5}));
    assert_eq!(strict.verify(&t).await, Err(TokenError::Expired));
    let lenient = KeycloakVerifier::new(key, vec![], Duration::from_secs(120));
    let t = sign(json!({"sub": SUB, "exp": now() - 100, "iat": now() + 100}));
    assert_eq!(lenient.verify(&t).await.as_deref(), Ok(SUB));
}

#[tokio::test]
async fn not_yet_valid_tokens_are_refused_silently() {
    let (_realm, v) = hq_default().await;
    let future_iat = v
        .verify(&sign(json!({"sub": SUB, "iat": now() + 60})))
        .await;
    assert_eq!(future_iat, Err(TokenError::NotYetValid("iat")));
    assert_eq!(event(&future_iat), None);
    // iat within the leeway is fine.
    let t = sign(json!({"sub": SUB, "iat": now() + 5}));
    assert_eq!(v.verify(&t).await.as_deref(), Ok(SUB));
    // PyJWT checks iat before exp: future iat and expired is silent, not expired_token.
    let both = v
        .verify(&sign(
            json!({"sub": SUB, "iat": now() + 60, "exp": now() - 60}),
        ))
        .await;
    assert_eq!(both, Err(TokenError::NotYetValid("iat")));
    let nbf = v
        .verify(&sign(json!({"sub": SUB, "nbf": now() + 60})))
        .await;
    assert_eq!(nbf, Err(TokenError::NotYetValid("nbf")));
    assert_eq!(event(&nbf), None);
}

#[tokio::test]
async fn claim_types_follow_pyjwt() {
    let (_realm, v) = hq_default().await;
    // Python's int(): strings of digits and floats are read as integers.
    let t = sign(json!({"sub": SUB, "exp": (now() + 300).to_string(), "iat": now() as f64 + 0.5}));
    assert_eq!(v.verify(&t).await.as_deref(), Ok(SUB));
    let t = sign(json!({"sub": SUB, "exp": (now() - 60).to_string()}));
    assert_eq!(v.verify(&t).await, Err(TokenError::Expired));
    // Not integers: silent.
    for claims in [
        json!({"sub": SUB, "exp": "soon"}),
        json!({"sub": SUB, "iat": "1.5"}),
        json!({"sub": SUB, "nbf": null}),
        json!({"sub": SUB, "exp": [1]}),
        json!({"sub": SUB, "jti": 5}),
    ] {
        let r = v.verify(&sign(claims.clone())).await;
        assert!(
            matches!(r, Err(TokenError::Malformed(_))),
            "{claims}: {r:?}"
        );
        assert_eq!(event(&r), None);
    }
    // flask-jwt-extended refuses only `type: refresh`; Keycloak's `typ` is irrelevant.
    let r = v
        .verify(&sign(json!({"sub": SUB, "type": "refresh"})))
        .await;
    assert!(matches!(r, Err(TokenError::NotAccessToken(_))), "{r:?}");
    let t = sign(json!({"sub": SUB, "type": "other", "typ": "Refresh"}));
    assert_eq!(v.verify(&t).await.as_deref(), Ok(SUB));
    // Claims HQ does not check may have any type.
    let t = sign(json!({"sub": SUB, "aud": 5, "iss": ["x"], "azp": null}));
    assert_eq!(v.verify(&t).await.as_deref(), Ok(SUB));
}

#[tokio::test]
async fn subjects_must_be_strings() {
    let (_realm, v) = hq_default().await;
    for claims in [
        json!({"exp": now() + 60}),
        json!({"sub": 7}),
        json!({"sub": null}),
        json!({"sub": {"vantage6_client_type": "container"}}),
        json!({"sub": [SUB]}),
    ] {
        let r = v.verify(&sign(claims.clone())).await;
        assert!(
            matches!(r, Err(TokenError::BadSubject(_))),
            "{claims}: {r:?}"
        );
        assert_eq!(event(&r), None, "{claims}");
    }
    // An empty string is a string: the store finds no account for it.
    assert_eq!(v.verify(&sign(json!({"sub": ""}))).await.as_deref(), Ok(""));
}

#[tokio::test]
async fn garbage_never_panics_and_stays_silent() {
    let (realm, v) = hq_default().await;
    let long = "a".repeat(100_000);
    let cases = [
        "",
        ".",
        "..",
        "a.b.c",
        "eyJhbGciOiJSUzI1NiJ9.e30.",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln",
        "eyJhbGciOiJSUzI1NiJ9.WzFd.c2ln",
        long.as_str(),
        "ä.ö.ü",
    ];
    for t in cases {
        let r = v.verify(t).await;
        assert!(r.is_err(), "{t:.40}");
        // A garbage signature on a well-formed RS256 token is invalid_token
        // (as PyJWT's InvalidSignatureError); nothing else produces an event.
        if event(&r).is_some() {
            assert_eq!(r, Err(TokenError::InvalidSignature), "{t:.40}");
        }
    }
    // The JSON-array payload and "none" algorithm are refused without an event.
    assert_eq!(
        event(&v.verify("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.").await),
        None
    );
    // Garbage signatures re-fetch the key at most once per interval.
    assert!(realm.hits() <= 2, "{} fetches", realm.hits());
}

#[tokio::test]
async fn a_rotated_key_is_fetched_again_once_and_rate_limited() {
    let realm = Realm::start(Some(&keys()[0].1)).await;
    let key = Arc::new(realm.load(Duration::from_secs(60)).await.expect("key"));
    assert_eq!(realm.hits(), 1, "one fetch at start-up");
    let v = KeycloakVerifier::new(key.clone(), vec![], Duration::from_secs(10));
    let with_b = sign_with(&keys()[1].0, Algorithm::RS256, &json!({"sub": SUB}));

    // Keycloak rotates to key B; tokens signed with B arrive concurrently.
    realm.serve_key(&keys()[1].1);
    let results = futures_join(&v, &with_b, 8).await;
    assert!(
        results.iter().all(|r| r.as_deref() == Ok(SUB)),
        "{results:?}"
    );
    assert_eq!(realm.hits(), 2, "one re-fetch for all of them");
    assert_eq!(key.current().version, 1);

    // A token signed with an unknown key C: invalid_token, and no further
    // fetch within the interval.
    let with_c = sign_with(&keys()[2].0, Algorithm::RS256, &json!({"sub": SUB}));
    for _ in 0..3 {
        assert_eq!(v.verify(&with_c).await, Err(TokenError::InvalidSignature));
    }
    assert_eq!(realm.hits(), 2, "rate-limited");
    // Tokens signed with A are refused now (Keycloak no longer signs with it).
    let with_a = sign(json!({"sub": SUB}));
    assert_eq!(v.verify(&with_a).await, Err(TokenError::InvalidSignature));
    println!("realm fetches: {} (start-up + 1 re-fetch)", realm.hits());
}

#[tokio::test]
async fn re_fetches_resume_after_the_interval_and_survive_a_down_keycloak() {
    let realm = Realm::start(Some(&keys()[0].1)).await;
    let key = Arc::new(realm.load(Duration::from_millis(300)).await.expect("key"));
    let v = KeycloakVerifier::new(key.clone(), vec![], Duration::from_secs(10));
    let with_b = sign_with(&keys()[1].0, Algorithm::RS256, &json!({"sub": SUB}));
    // Unchanged key: a re-fetch happens, the token stays invalid.
    assert_eq!(v.verify(&with_b).await, Err(TokenError::InvalidSignature));
    assert_eq!(realm.hits(), 2);
    assert_eq!(v.verify(&with_b).await, Err(TokenError::InvalidSignature));
    assert_eq!(realm.hits(), 2, "within the interval");
    // Keycloak answers without a key: the old key stays.
    tokio::time::sleep(Duration::from_millis(350)).await;
    *realm.public_key.lock().expect("lock") = None;
    assert_eq!(v.verify(&with_b).await, Err(TokenError::InvalidSignature));
    assert_eq!(realm.hits(), 3);
    assert_eq!(
        v.verify(&sign(json!({"sub": SUB}))).await.as_deref(),
        Ok(SUB)
    );
    // After the interval, the rotation to B is picked up.
    tokio::time::sleep(Duration::from_millis(350)).await;
    realm.serve_key(&keys()[1].1);
    assert_eq!(v.verify(&with_b).await.as_deref(), Ok(SUB));
    assert_eq!(realm.hits(), 4);
}

async fn futures_join(
    v: &KeycloakVerifier,
    token: &str,
    n: usize,
) -> Vec<Result<String, TokenError>> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let v = v.clone();
        let token = token.to_owned();
        tasks.push(tokio::spawn(async move { v.verify(&token).await }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn start_up_fetch_follows_hq() {
    // No `public_key` in the answer: retried (HQ: 10 × 5 s), then an error.
    let realm = Realm::start(None).await;
    let err = realm
        .load(Duration::from_secs(60))
        .await
        .expect_err("no key");
    assert!(matches!(err, KeycloakError::NoPublicKey { .. }), "{err}");
    assert_eq!(realm.hits(), 3, "all attempts used");
    // The key appears while retrying: loaded.
    let realm = Realm::start(None).await;
    let r2 = realm.clone();
    let key_b = keys()[1].1.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        r2.serve_key(&key_b);
    });
    let key = realm
        .load(Duration::from_secs(60))
        .await
        .expect("key after retry");
    assert!(key
        .current()
        .pem
        .starts_with("-----BEGIN PUBLIC KEY-----\n"));
    assert!(key.current().pem.ends_with("\n-----END PUBLIC KEY-----"));
    // Nobody listening: an error at once, naming the endpoint.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let source = KeySource::realm(&format!("http://127.0.0.1:{closed}"), "vantage6");
    let err = load_quickly(&source, Duration::from_secs(60))
        .await
        .expect_err("down");
    assert!(matches!(err, KeycloakError::Http { .. }), "{err}");
    assert!(err.to_string().contains("/realms/vantage6"), "{err}");
    assert!(!err.to_string().contains('\n'));
}

#[tokio::test]
async fn a_pem_file_serves_without_keycloak_and_is_re_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("realm.pem");
    std::fs::write(&path, &keys()[0].1).expect("write");
    let source = KeySource::File(path.clone());
    let key = Arc::new(
        load_quickly(&source, Duration::from_secs(60))
            .await
            .expect("file key"),
    );
    let v = KeycloakVerifier::new(key, vec![], Duration::from_secs(10));
    assert_eq!(
        v.verify(&sign(json!({"sub": SUB}))).await.as_deref(),
        Ok(SUB)
    );
    std::fs::write(&path, &keys()[1].1).expect("write");
    let with_b = sign_with(&keys()[1].0, Algorithm::RS256, &json!({"sub": SUB}));
    assert_eq!(v.verify(&with_b).await.as_deref(), Ok(SUB));
    // Not a key: a one-line error at start-up.
    std::fs::write(&path, "not a key").expect("write");
    let err = load_quickly(&source, Duration::from_secs(60))
        .await
        .expect_err("bad file");
    assert!(matches!(err, KeycloakError::BadKey { .. }), "{err}");
}
