//! Session affinity behind a reverse proxy: the instance's name in a cookie.
//!
//! Every request of an Engine.IO session must reach the instance that
//! created it; any other instance answers 400 "unknown sid". A proxy cannot
//! hash on the `Authorization` header alone, because python-engineio (the
//! vantage6 node) sends that header only on the handshake. So each instance
//! names itself ([`InstanceName`]) and [`AffinityCookieLayer`] adds
//! `Set-Cookie: v6_socketio_instance=<name>` to the responses that open a
//! session; the clients send the cookie back on every later request, and the
//! proxy (deploy/nginx/vantage6.conf.template) routes requests carrying a
//! `sid` by it.
//!
//! A response opens a session when it answers a `GET` under the Socket.IO
//! path whose query has no `sid` parameter (a polling handshake or a direct
//! websocket) with 200 or 101. Requests of an existing session, other paths,
//! CORS preflights and error responses are left alone.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{header::SET_COOKIE, HeaderValue, Method, Request, Response, StatusCode};
use tower::{Layer, Service};

/// The cookie's name; the nginx template reads it as `$cookie_v6_socketio_instance`.
pub const COOKIE_NAME: &str = "v6_socketio_instance";

/// Longest accepted instance name.
pub const MAX_INSTANCE_NAME_LEN: usize = 128;

/// The name an instance is known by to the proxy: 1 to 128 characters of
/// `A-Z a-z 0-9 . _ : -`, so that it is a valid cookie value and nginx map
/// key as it is, without quoting.
#[derive(Clone, PartialEq, Eq)]
pub struct InstanceName {
    name: String,
    /// The whole `Set-Cookie` value, built once.
    set_cookie: HeaderValue,
}

/// Why a string is not an [`InstanceName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a usable instance name: use 1 to {MAX_INSTANCE_NAME_LEN} characters \
     of A-Z, a-z, 0-9, '.', '_', ':' and '-'"
)]
pub struct InvalidInstanceName(pub String);

impl InstanceName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidInstanceName> {
        let name = name.into();
        if !is_valid_instance_name(&name) {
            return Err(InvalidInstanceName(name));
        }
        let set_cookie = HeaderValue::from_str(&format!(
            "{COOKIE_NAME}={name}; Path=/; HttpOnly; SameSite=Lax"
        ))
        .map_err(|_| InvalidInstanceName(name.clone()))?;
        Ok(InstanceName { name, set_cookie })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The `Set-Cookie` header value naming this instance.
    pub fn set_cookie(&self) -> &HeaderValue {
        &self.set_cookie
    }
}

impl fmt::Display for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.name, f)
    }
}

/// Whether `name` may be an [`InstanceName`].
pub fn is_valid_instance_name(name: &str) -> bool {
    (1..=MAX_INSTANCE_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Whether a query string has a `sid` parameter, compared as engineioxide
/// does: the part of a `&`-separated pair before its first `=` is exactly
/// `sid` (case-sensitive, not percent-decoded). A bare `sid` without `=`
/// counts too, so that no doubtful request gets a cookie.
pub fn query_names_session(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|pair| pair.split('=').next() == Some("sid"))
    })
}

/// Whether the response to a request with this method, path and query under
/// `socket_path` (normalized, ending in `/`) may open a new session, and so
/// gets the cookie when it succeeds.
pub fn may_open_session(
    method: &Method,
    path: &str,
    query: Option<&str>,
    socket_path: &str,
) -> bool {
    method == Method::GET && path.starts_with(socket_path) && !query_names_session(query)
}

/// Whether a response with this status opened a session: 200 (polling
/// handshake) or 101 (websocket without a prior polling session).
pub fn opened_session(status: StatusCode) -> bool {
    status == StatusCode::OK || status == StatusCode::SWITCHING_PROTOCOLS
}

/// Adds the instance cookie to the responses that open an Engine.IO session.
/// Must wrap the Socket.IO layer, which answers its requests itself.
#[derive(Clone)]
pub struct AffinityCookieLayer {
    socket_path: Arc<str>,
    cookie: HeaderValue,
}

impl AffinityCookieLayer {
    /// For the Socket.IO path `socket_path` (as in the configuration, ending
    /// in `/`) and this instance's name.
    pub fn new(socket_path: &str, instance: &InstanceName) -> Self {
        AffinityCookieLayer {
            socket_path: socket_path.into(),
            cookie: instance.set_cookie().clone(),
        }
    }
}

impl<S> Layer<S> for AffinityCookieLayer {
    type Service = AffinityCookie<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AffinityCookie {
            inner,
            socket_path: self.socket_path.clone(),
            cookie: self.cookie.clone(),
        }
    }
}

/// The service of [`AffinityCookieLayer`].
#[derive(Clone)]
pub struct AffinityCookie<S> {
    inner: S,
    socket_path: Arc<str>,
    cookie: HeaderValue,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AffinityCookie<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let cookie = may_open_session(
            req.method(),
            req.uri().path(),
            req.uri().query(),
            &self.socket_path,
        )
        .then(|| self.cookie.clone());
        ResponseFuture {
            inner: Box::pin(self.inner.call(req)),
            cookie,
        }
    }
}

/// The future of [`AffinityCookie`]: the inner response, with the cookie
/// when it opened a session.
pub struct ResponseFuture<F> {
    inner: Pin<Box<F>>,
    cookie: Option<HeaderValue>,
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut response = match self.inner.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(response)) => response,
        };
        if let Some(cookie) = self.cookie.take() {
            if opened_session(response.status()) {
                response.headers_mut().append(SET_COOKIE, cookie);
            }
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    const PATH: &str = "/socket.io/";

    #[test]
    fn sid_must_be_an_exact_key() {
        for query in [
            "EIO=4&transport=polling&sid=AAAAAAAAAAAAAAHs",
            "sid=x",
            "sid=",
            "sid",
            "EIO=4&sid",
            "a=1&&sid=x&",
            "sid=a=b",
        ] {
            assert!(query_names_session(Some(query)), "{query:?}");
        }
        for query in [
            "",
            "EIO=4&transport=polling",
            "EIO=4&transport=polling&t=sid",
            "sids=x",
            "xsid=x",
            "SID=x",
            "%73id=x",
            "&&&",
            "=",
            "==sid",
            "EIO=4&transport=websocket&b64=1",
        ] {
            assert!(!query_names_session(Some(query)), "{query:?}");
        }
        assert!(!query_names_session(None));
    }

    #[test]
    fn only_gets_under_the_socket_path_without_sid_may_open_a_session() {
        let handshake = Some("EIO=4&transport=polling&t=P1");
        assert!(may_open_session(
            &Method::GET,
            "/socket.io/",
            handshake,
            PATH
        ));
        assert!(may_open_session(
            &Method::GET,
            "/socket.io/",
            Some("EIO=4&transport=websocket"),
            PATH
        ));
        assert!(may_open_session(&Method::GET, "/socket.io/", None, PATH));
        assert!(!may_open_session(
            &Method::GET,
            "/socket.io/",
            Some("EIO=4&transport=polling&sid=abc"),
            PATH
        ));
        assert!(!may_open_session(
            &Method::POST,
            "/socket.io/",
            handshake,
            PATH
        ));
        assert!(!may_open_session(
            &Method::OPTIONS,
            "/socket.io/",
            handshake,
            PATH
        ));
        assert!(!may_open_session(&Method::GET, "/health", None, PATH));
        assert!(!may_open_session(
            &Method::GET,
            "/socket.iox",
            handshake,
            PATH
        ));
        assert!(!may_open_session(
            &Method::GET,
            "/api/socket.io/",
            handshake,
            PATH
        ));
    }

    #[test]
    fn only_200_and_101_open_a_session() {
        assert!(opened_session(StatusCode::OK));
        assert!(opened_session(StatusCode::SWITCHING_PROTOCOLS));
        for status in [
            StatusCode::BAD_REQUEST,
            StatusCode::FORBIDDEN,
            StatusCode::NOT_FOUND,
            StatusCode::NO_CONTENT,
            StatusCode::INTERNAL_SERVER_ERROR,
        ] {
            assert!(!opened_session(status), "{status}");
        }
    }

    #[test]
    fn instance_names_are_cookie_values_and_map_keys() {
        for ok in [
            "a",
            "v6-socketio-1",
            "host.example.org:7602",
            "127.0.0.1:7602",
            "A_b",
        ] {
            let name = InstanceName::new(ok).expect(ok);
            assert_eq!(name.as_str(), ok);
            assert_eq!(
                name.set_cookie().to_str().unwrap(),
                format!("v6_socketio_instance={ok}; Path=/; HttpOnly; SameSite=Lax")
            );
        }
        let long = "x".repeat(MAX_INSTANCE_NAME_LEN + 1);
        for bad in [
            "",
            " ",
            "a b",
            "a;b",
            "a,b",
            "a=b",
            "\"a\"",
            "a\nb",
            "é",
            "[::1]:7602",
            &long,
        ] {
            assert!(InstanceName::new(bad).is_err(), "{bad:?}");
        }
        assert!(InstanceName::new("x".repeat(MAX_INSTANCE_NAME_LEN)).is_ok());
    }

    async fn respond(method: Method, uri: &str, status: StatusCode) -> Response<()> {
        let inner = tower::service_fn(move |_req: Request<()>| async move {
            Ok::<_, Infallible>(Response::builder().status(status).body(()).unwrap())
        });
        let name = InstanceName::new("i1").unwrap();
        let mut service = AffinityCookieLayer::new(PATH, &name).layer(inner);
        let req = Request::builder().method(method).uri(uri).body(()).unwrap();
        service.call(req).await.unwrap()
    }

    fn cookie(response: &Response<()>) -> Option<&str> {
        response
            .headers()
            .get(SET_COOKIE)
            .map(|v| v.to_str().unwrap())
    }

    #[tokio::test]
    async fn the_layer_sets_the_cookie_on_successful_handshakes_only() {
        let handshake = "/socket.io/?EIO=4&transport=polling";
        let r = respond(Method::GET, handshake, StatusCode::OK).await;
        assert_eq!(
            cookie(&r),
            Some("v6_socketio_instance=i1; Path=/; HttpOnly; SameSite=Lax")
        );
        let r = respond(
            Method::GET,
            "/socket.io/?EIO=4&transport=websocket",
            StatusCode::SWITCHING_PROTOCOLS,
        )
        .await;
        assert!(cookie(&r).is_some());
        for (method, uri, status) in [
            (Method::GET, handshake, StatusCode::BAD_REQUEST),
            (
                Method::GET,
                "/socket.io/?EIO=4&transport=polling&sid=s",
                StatusCode::OK,
            ),
            (
                Method::POST,
                "/socket.io/?EIO=4&transport=polling&sid=s",
                StatusCode::OK,
            ),
            (Method::OPTIONS, handshake, StatusCode::OK),
            (Method::GET, "/health", StatusCode::OK),
        ] {
            let r = respond(method.clone(), uri, status).await;
            assert_eq!(cookie(&r), None, "{method} {uri} {status}");
        }
    }
}
