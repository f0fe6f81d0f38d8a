//! Fuzzing of the token paths of the handshake (proptest on stable Rust): the `Authorization`
//! header parser ([`bearer_token`]), the 4.x verifier ([`TokenVerifier`], HS256) and the 5.x
//! verifier ([`KeycloakVerifier`], RS256, and its claim checks [`check_claims`]).
//!
//! Every run replays the committed corpus `tests/corpus/tokens/` (tokens in vantage6 4.15.2's
//! claim layout, signed with the corpus secret `fuzz-corpus-secret`; the file name's prefix says
//! what the client must get: `ok_` an identity, `expired_` `expired_token`, `invalid_`
//! `invalid_token`, `other_` a refusal without a client event), then generated cases: arbitrary
//! header bytes, arbitrary token strings, tokens of three arbitrary-JSON segments, and correctly
//! signed tokens with arbitrary claims. Nothing may panic, and a token is accepted only when its
//! claims say it is an access token of an integer (4.x) or string (5.x) subject.
//!
//! `V6_FUZZ_CASES=200000 cargo test --test fuzz_tokens` runs longer; see
//! `tests/corpus/README.md`.

use std::{path::Path, sync::Arc, time::Duration};

use base64::Engine as _;
use http::{HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::{
    collection::{btree_map, vec},
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config, TestRunner},
};
use serde_json::{json, Map, Value};
use v6_socketio::{
    auth::{
        bearer_token, check_claims, generate_rsa_key_pair, mint_keycloak_token, KeycloakVerifier,
        TokenError, TokenVerifier, DEFAULT_DECODE_ALGORITHMS,
    },
    keycloak::{KeySource, RealmKey, StartupRetry},
};

const CORPUS_SECRET: &str = "fuzz-corpus-secret";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn runner(default: u32) -> TestRunner {
    let cases = std::env::var("V6_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// `(file stem, token)` of every corpus file, sorted.
fn corpus() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/tokens");
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .expect("corpus directory")
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jwt"))
        .map(|p| {
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            let token = std::fs::read_to_string(&p).expect("corpus file");
            (stem, token.trim().to_owned())
        })
        .collect();
    out.sort();
    assert!(out.len() >= 20, "token corpus has too few seeds");
    out
}

fn headers(value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(value).expect("header value"),
    );
    h
}

#[test]
fn corpus_tokens_get_what_vantage6_gives() {
    let verifier = TokenVerifier::new(CORPUS_SECRET);
    for (name, token) in corpus() {
        let got = verifier.verify_headers(&headers(&format!("Bearer {token}")));
        let kind = name.split('_').next().unwrap();
        match kind {
            "ok" => assert!(got.is_ok(), "{name}: {got:?}"),
            "expired" => assert_eq!(got, Err(TokenError::Expired), "{name}"),
            "invalid" => assert_eq!(got, Err(TokenError::InvalidSignature), "{name}"),
            "other" => {
                let err = got.expect_err(&name);
                assert_eq!(err.client_event(), None, "{name}: {err:?}");
            }
            _ => panic!("corpus file {name}: unknown prefix"),
        }
    }
}

#[test]
fn corpus_subjects_of_every_json_type() {
    // The `sub` claim of the `other_sub_*` seeds: float, bool, null, list, object, word, and an
    // integer beyond i64. None of them is an id (a list or object is refused by the JWT library
    // already, as not a valid `sub`).
    let verifier = TokenVerifier::new(CORPUS_SECRET);
    let subs: Vec<_> = corpus()
        .into_iter()
        .filter(|(n, _)| n.starts_with("other_sub_"))
        .collect();
    assert_eq!(subs.len(), 7);
    for (name, token) in subs {
        assert!(
            matches!(
                verifier.verify(&token),
                Err(TokenError::BadSubject(_) | TokenError::Malformed(_))
            ),
            "{name}"
        );
    }
}

/// Any JSON value, nested a few levels.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        ".{0,10}".prop_map(Value::String),
        Just(Value::String("access".into())),
        Just(Value::String("refresh".into())),
        (0i64..5_000_000_000).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map("[a-z]{0,5}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Claims in vantage6's layout with some of them replaced by arbitrary values or removed.
fn claims() -> impl Strategy<Value = Map<String, Value>> {
    const KEYS: [&str; 9] = [
        "fresh",
        "iat",
        "jti",
        "type",
        "sub",
        "nbf",
        "exp",
        "client_type",
        "roles",
    ];
    vec((0..KEYS.len(), proptest::option::of(json())), 0..5).prop_map(|edits| {
        let Value::Object(mut m) = json!({
            "fresh": false, "iat": 1764000000, "jti": "j", "type": "access", "sub": 1,
            "nbf": 1764000000, "exp": 4102444800_i64, "client_type": "node", "roles": [],
        }) else {
            unreachable!()
        };
        for (k, v) in edits {
            match v {
                Some(v) => m.insert(KEYS[k].to_owned(), v),
                None => m.remove(KEYS[k]),
            };
        }
        m
    })
}

#[test]
fn arbitrary_authorization_headers_never_panic() {
    let verifier = TokenVerifier::new(CORPUS_SECRET);
    runner(5_000)
        .run(&vec(any::<u8>(), 0..300), |bytes| {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                h.insert(http::header::AUTHORIZATION, v);
            }
            let _ = bearer_token(&h);
            let _ = verifier.verify_headers(&h);
            Ok(())
        })
        .unwrap();
}

#[test]
fn arbitrary_token_strings_never_panic() {
    let verifier = TokenVerifier::new(CORPUS_SECRET);
    let strategy = prop_oneof![
        ".{0,200}",
        "[A-Za-z0-9_=-]{0,40}\\.[A-Za-z0-9_=-]{0,40}\\.[A-Za-z0-9_=-]{0,40}",
        (json(), json(), ".{0,20}").prop_map(|(h, p, s)| format!(
            "{}.{}.{}",
            B64.encode(h.to_string()),
            B64.encode(p.to_string()),
            s
        )),
    ];
    runner(5_000)
        .run(&strategy, |token| {
            let _ = verifier.verify(&token);
            Ok(())
        })
        .unwrap();
}

/// vantage6 4.x (flask-jwt-extended): identity `sub`, `type` must be `access`.
fn v4_accepts(c: &Map<String, Value>) -> bool {
    c.get("type").and_then(Value::as_str) == Some("access")
        && match c.get("sub") {
            Some(Value::Number(n)) => n.is_i64(),
            Some(Value::String(s)) => s.trim().parse::<i64>().is_ok(),
            _ => false,
        }
}

#[test]
fn signed_tokens_with_arbitrary_claims_never_panic_and_accept_only_access_ids() {
    let verifier = TokenVerifier::new(CORPUS_SECRET);
    let key = EncodingKey::from_secret(CORPUS_SECRET.as_bytes());
    runner(3_000)
        .run(&claims(), |c| {
            let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &c, &key).unwrap();
            if let Ok(id) = verifier.verify(&token) {
                prop_assert!(v4_accepts(&c), "accepted {c:?} as {id}");
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn keycloak_claim_checks_never_panic() {
    runner(5_000)
        .run(
            &(
                btree_map("[a-z]{0,4}|iat|nbf|exp|jti|sub|type", json(), 0..8),
                any::<f64>(),
                any::<f64>(),
            ),
            |(m, now, leeway)| {
                let m: Map<String, Value> = m.into_iter().collect();
                if let Ok(sub) = check_claims(&m, now, leeway) {
                    prop_assert_eq!(m.get("sub"), Some(&Value::String(sub)));
                }
                Ok(())
            },
        )
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn keycloak_verifier_never_panics_and_accepts_only_string_subjects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (private, public) = generate_rsa_key_pair().expect("RSA key");
    let pem = dir.path().join("realm.pem");
    std::fs::write(&pem, &public).expect("realm key file");
    let source = KeySource::File(pem);
    let key = RealmKey::load(
        &source,
        source.clone(),
        Duration::from_secs(3600),
        StartupRetry::default(),
    )
    .await
    .expect("realm key");
    let verifier = KeycloakVerifier::new(
        Arc::new(key),
        DEFAULT_DECODE_ALGORITHMS.to_vec(),
        Duration::from_secs(10),
    );
    let good = mint_keycloak_token(
        &private,
        "https://keycloak.test.invalid/realms/vantage6",
        "5d3c1a2e-0000-4000-8000-000000000001",
        "node",
        "node-a",
        Duration::from_secs(600),
    )
    .expect("token");
    assert_eq!(
        verifier.verify(&good).await.as_deref(),
        Ok("5d3c1a2e-0000-4000-8000-000000000001")
    );
    // Every 4.x corpus token is refused by 5.x (HS256 is not an allowed algorithm, `alg: none`
    // neither, RS256 with an HMAC signature does not verify), without a client event except for a
    // signature that does not verify.
    for (name, token) in corpus() {
        let err = verifier.verify(&token).await.expect_err(&name);
        assert!(
            matches!(
                err,
                TokenError::AlgorithmNotAllowed(_)
                    | TokenError::Malformed(_)
                    | TokenError::InvalidSignature
            ),
            "{name}: {err:?}"
        );
    }
    // RS256-signed tokens with arbitrary claims, and arbitrary strings.
    let signing = EncodingKey::from_rsa_pem(private.as_bytes()).expect("RSA signing key");
    let mut runner = runner(300);
    let tokens = prop_oneof![
        claims().prop_map(move |mut c| {
            // 5.x subjects are Keycloak ids: a string `sub` unless the edit changed it.
            if c.get("sub") == Some(&json!(1)) {
                c.insert("sub".into(), json!("kc-id"));
            }
            (
                Some(c.clone()),
                jsonwebtoken::encode(&Header::new(Algorithm::RS256), &c, &signing).unwrap(),
            )
        }),
        ".{0,120}".prop_map(|s| (None, s)),
    ];
    let mut cases = Vec::new();
    for _ in 0..runner.config().cases {
        let tree = tokens.new_tree(&mut runner).expect("a case");
        cases.push(tree.current());
    }
    let mut accepted = 0;
    for (claims, token) in &cases {
        if let Ok(sub) = verifier.verify(token).await {
            let claims = claims.as_ref().expect("an arbitrary string was accepted");
            assert_eq!(claims.get("sub"), Some(&Value::String(sub)));
            assert_ne!(claims.get("type").and_then(Value::as_str), Some("refresh"));
            accepted += 1;
        }
    }
    println!(
        "keycloak verifier: {} generated tokens, {accepted} accepted",
        cases.len()
    );
}
