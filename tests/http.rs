//! `/health`, `/ready` and `/metrics` through the router, without a listener.

use std::sync::Arc;

use axum::body::Body;
use http::{Request, StatusCode};
use tower::ServiceExt;
use v6_socketio::{
    database_url::DatabaseUrl,
    http::{router, Readiness},
    metrics::Metrics,
    store::{create_demo_database, Store},
};

async fn get(app: axum::Router, path: &str) -> (StatusCode, String) {
    let response = app
        .oneshot(Request::get(path).body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn ready_reports_what_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("demo.sqlite");
    create_demo_database(&path).await.expect("demo db");
    let store = Store::connect(&DatabaseUrl::Sqlite(path))
        .await
        .expect("connect");
    let metrics = Metrics::new();

    let single = router(
        metrics.clone(),
        Readiness {
            store: store.clone(),
            broker_connected: None,
        },
    );
    assert_eq!(
        get(single.clone(), "/health").await,
        (StatusCode::OK, "ok".into())
    );
    assert_eq!(
        get(single.clone(), "/ready").await,
        (StatusCode::OK, "ready".into())
    );
    let (status, text) = get(single, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("v6_socketio_connected_sockets 0"), "{text}");

    let broker_down = router(
        metrics,
        Readiness {
            store,
            broker_connected: Some(Arc::new(|| false)),
        },
    );
    assert_eq!(
        get(broker_down, "/ready").await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: broker down".into()
        )
    );
}
