//! Copies a request's head out of hyper's read buffer before the Socket.IO
//! layer sees it.
//!
//! hyper parses a request head in place: the URI and every header value are
//! slices of the connection's read buffer (8 KiB at first, 16 KiB once it
//! has grown), which stays allocated as long as one slice is alive.
//! engineioxide keeps the handshake request's `Parts` (URI and headers) in
//! each session for its whole life, so every connection held a whole read
//! buffer for a few hundred bytes of head: about 16 KiB per idle
//! connection (docs/memory.md). Copying the URI and the header values into
//! allocations of their own lets the read buffer go when hyper hands the
//! connection over (websocket upgrade) or the request ends (polling).

use axum::{extract::Request, http::HeaderValue};
use http::Uri;

/// `req` with its URI and header values in allocations of their own; the
/// same request otherwise (header order, repeated headers, sensitivity).
///
/// Only an Engine.IO handshake (an `EIO` parameter and no `sid`) is copied:
/// the requests of an open session, and the other routes, are not kept.
pub fn detach_head(mut req: Request) -> Request {
    if !opens_session(req.uri()) {
        return req;
    }
    if let Ok(uri) = Uri::try_from(req.uri().to_string()) {
        *req.uri_mut() = uri;
    }
    for value in req.headers_mut().values_mut() {
        // A value hyper accepted is valid, so the copy cannot fail; if it
        // did, the shared one is kept.
        if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
            copy.set_sensitive(value.is_sensitive());
            *value = copy;
        }
    }
    req
}

/// An Engine.IO request that opens a session (whose head the session keeps).
fn opens_session(uri: &Uri) -> bool {
    let mut params = uri.query().unwrap_or("").split('&');
    let eio = params.clone().any(|p| p.starts_with("EIO="));
    eio && !params.any(|p| p.starts_with("sid="))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_uri_headers_and_their_order() {
        let req = Request::builder()
            .uri("/socket.io/?EIO=4&transport=websocket")
            .header("authorization", "Bearer abc")
            .header("x-many", "1")
            .header("x-many", "2")
            .body(axum::body::Body::empty())
            .unwrap();
        let req = detach_head(req);
        assert_eq!(req.uri(), "/socket.io/?EIO=4&transport=websocket");
        assert_eq!(req.headers()["authorization"], "Bearer abc");
        let many: Vec<_> = req.headers().get_all("x-many").iter().collect();
        assert_eq!(many, ["1", "2"]);
    }

    #[test]
    fn only_handshakes_are_copied() {
        assert!(opens_session(&Uri::from_static(
            "/socket.io/?EIO=4&transport=polling"
        )));
        assert!(!opens_session(&Uri::from_static(
            "/socket.io/?EIO=4&transport=polling&sid=abc"
        )));
        assert!(!opens_session(&Uri::from_static("/metrics")));
    }

    #[test]
    fn keeps_sensitivity() {
        let mut value = HeaderValue::from_static("Bearer secret");
        value.set_sensitive(true);
        let req = Request::builder()
            .uri("/socket.io/?EIO=4&transport=polling")
            .header("authorization", value)
            .body(axum::body::Body::empty())
            .unwrap();
        assert!(detach_head(req).headers()["authorization"].is_sensitive());
    }
}
