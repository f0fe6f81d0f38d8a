//! Token verification as vantage6 4.x (flask-jwt-extended) does it.
//!
//! The literal tokens below were minted by flask-jwt-extended 4.7.1 (the
//! version vantage6-server 4.15.2 pins) with `JWT_SECRET_KEY =
//! "vantage6-test-secret"`, vantage6's additional claims, identity 7 and
//! `expires_delta=False` (no `exp`), so they stay valid.

use std::time::Duration;

use http::{header::AUTHORIZATION, HeaderMap, HeaderValue};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;
use v6_socketio::auth::{mint_access_token, TokenError, TokenVerifier};

const SECRET: &str = "vantage6-test-secret";
const FLASK_ACCESS: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJmcmVzaCI6ZmFsc2UsImlhdCI6MTc5NTg1Mjc0MiwianRpIjoiMDYzMzk4ZmItY2RlMS00N2UxLWIyNzctOTE2NjRkYzZlOTUyIiwidHlwZSI6ImFjY2VzcyIsInN1YiI6NywibmJmIjoxNzk1ODUyNzQyLCJjc3JmIjoiNDYyZjg4ZmQtYzYyYy00MDg2LTllYjQtZWE4OGEyMzA4MmIzIiwiY2xpZW50X3R5cGUiOiJub2RlIiwicm9sZXMiOltdfQ.a8cGcptROp8p_1AgzCdqXrDFo0UH_Ajyk_YNeAWJuhU";
const FLASK_REFRESH: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJmcmVzaCI6ZmFsc2UsImlhdCI6MTc5NTg1Mjc0MiwianRpIjoiYTM4NWViNDEtMDFlOS00ODNiLTk1MTctNTAzYzhiN2IzNGFiIiwidHlwZSI6InJlZnJlc2giLCJzdWIiOjcsIm5iZiI6MTc5NTg1Mjc0MiwiY3NyZiI6IjM4MDU2ODcxLWRhMmItNGIxNS1iZjBlLTNmMWQzOTZhODRiZSIsImNsaWVudF90eXBlIjoibm9kZSIsInJvbGVzIjpbXX0.GfoVbTcG9WMcdw0lbjE7m-sAdMzGXGipWS5nTi-2HzM";
const FLASK_EXPIRED: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJmcmVzaCI6ZmFsc2UsImlhdCI6MTc5NTg1Mjc0MiwianRpIjoiODQxY2U5MzItNWYxNS00YzRhLTkzMTEtNDc0NWJlNWM2OWFkIiwidHlwZSI6ImFjY2VzcyIsInN1YiI6NywibmJmIjoxNzk1ODUyNzQyLCJjc3JmIjoiZmU5ZGQzOTQtNWJiMi00ZTI3LWE0MjEtYjYxNmQwYWJmZTkzIiwiZXhwIjoxNzk1ODUyNjgyLCJjbGllbnRfdHlwZSI6Im5vZGUiLCJyb2xlcyI6W119.vKUPb7VMbi1kTbqpPXiPpN2eMss23e4vUH1fRQKh-l4";
const FLASK_STRING_SUB: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJmcmVzaCI6ZmFsc2UsImlhdCI6MTc5NTg1Mjc0MiwianRpIjoiNGZhOGYwNjgtYTBmOS00NDk0LWJiZGMtNDRlOTY2YzhhYjE0IiwidHlwZSI6ImFjY2VzcyIsInN1YiI6IjciLCJuYmYiOjE3OTU4NTI3NDIsImNzcmYiOiIyODg2NmVjOC03YjE5LTQ1ZDgtOTdlOC0wYzFjYWM2N2JjMzEiLCJjbGllbnRfdHlwZSI6Im5vZGUiLCJyb2xlcyI6W119.4qeM2ZI5MnEmHpWqg9h2dLJXWYIkXkXV68RE5CU8NC0";

fn verifier() -> TokenVerifier {
    TokenVerifier::new(SECRET)
}

fn headers(value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(AUTHORIZATION, HeaderValue::from_str(value).expect("ascii"));
    h
}

#[test]
fn accepts_flask_jwt_extended_access_tokens() {
    assert_eq!(verifier().verify(FLASK_ACCESS), Ok(7));
    assert_eq!(verifier().verify(FLASK_STRING_SUB), Ok(7));
    assert_eq!(
        verifier().verify_headers(&headers(&format!("Bearer {FLASK_ACCESS}"))),
        Ok(7)
    );
}

#[test]
fn expired_and_forged_tokens_map_to_vantage6_events() {
    let expired = verifier().verify(FLASK_EXPIRED).expect_err("expired");
    assert_eq!(expired, TokenError::Expired);
    assert_eq!(expired.client_event(), Some("expired_token"));

    let forged = TokenVerifier::new("another-secret")
        .verify(FLASK_ACCESS)
        .expect_err("forged");
    assert_eq!(forged, TokenError::InvalidSignature);
    assert_eq!(forged.client_event(), Some("invalid_token"));
}

#[test]
fn other_failures_are_only_logged() {
    let cases: Vec<(HeaderMap, &str)> = vec![
        (HeaderMap::new(), "no header"),
        (headers("Bearer not-a-jwt"), "garbage"),
        (headers(FLASK_ACCESS), "no Bearer scheme"),
        (headers("Basic dXNlcjpwYXNz"), "basic auth"),
        (headers("Bearer "), "empty token"),
        (headers(&format!("Bearer {FLASK_REFRESH}")), "refresh token"),
    ];
    for (h, what) in cases {
        let err = verifier().verify_headers(&h).expect_err(what);
        assert_eq!(err.client_event(), None, "{what}: {err}");
    }
    assert!(matches!(
        verifier().verify(FLASK_REFRESH),
        Err(TokenError::NotAccessToken(Some(t))) if t == "refresh"
    ));
}

fn sign(claims: serde_json::Value, header: Header) -> String {
    encode(
        &header,
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode")
}

#[test]
fn subjects_that_are_not_an_id_are_rejected() {
    // vantage6 4.x container tokens carry a dict as `sub`.
    let container = sign(
        json!({"type": "access", "sub": {"client_type": "container", "node_id": 1}}),
        Header::default(),
    );
    let err = verifier().verify(&container).expect_err("container token");
    assert_eq!(err.client_event(), None, "{err}");
    let no_sub = sign(json!({"type": "access"}), Header::default());
    assert!(matches!(
        verifier().verify(&no_sub),
        Err(TokenError::BadSubject(_))
    ));
}

#[test]
fn other_algorithms_and_future_tokens_are_rejected() {
    let hs512 = sign(
        json!({"type": "access", "sub": 7}),
        Header::new(jsonwebtoken::Algorithm::HS512),
    );
    assert!(matches!(
        verifier().verify(&hs512),
        Err(TokenError::Malformed(_))
    ));
    let now = chrono::Utc::now().timestamp();
    let not_yet = sign(
        json!({"type": "access", "sub": 7, "nbf": now + 3600}),
        Header::default(),
    );
    assert!(matches!(
        verifier().verify(&not_yet),
        Err(TokenError::Malformed(_))
    ));
    // No leeway: expired one second ago is expired.
    let just_expired = sign(
        json!({"type": "access", "sub": 7, "exp": now - 1}),
        Header::default(),
    );
    assert_eq!(verifier().verify(&just_expired), Err(TokenError::Expired));
}

#[test]
fn minted_tokens_verify() {
    let token = mint_access_token(SECRET, 42, "node", Duration::from_secs(60)).expect("mint");
    assert_eq!(verifier().verify(&token), Ok(42));
}
