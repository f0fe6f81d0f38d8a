//! The accept loop of an instance, in place of `axum::serve`: it bounds what
//! a connection may cost before it has sent a request, and how many
//! connections the instance holds at once, and it stops accepting before a
//! graceful stop drains the clients.
//!
//! - **Stop.** When the stop signal fires, the listening socket is closed
//!   first (new connects are refused by the kernel, so clients and proxies go
//!   to another instance); then the caller's drain runs (the sessions'
//!   ending, see `server`), while the connections already accepted keep
//!   being served; then those connections are ended gracefully by hyper,
//!   for at most [`CLOSE_CONNECTIONS_TIMEOUT`].
//! - **Header read timeout.** A connection that has not sent a complete
//!   request head within `header_read_timeout` is closed: one that sends
//!   nothing ([`first_bytes`] waits for its first bytes, because the
//!   HTTP-version detection of hyper-util reads them untimed), part of a
//!   head, or nothing more after a response on a kept-alive connection
//!   (hyper's own `header_read_timeout`, which runs only while hyper waits
//!   for a head: a pending long-poll or an upgraded websocket is not
//!   affected).
//! - **Connection cap.** Each accepted connection holds a permit of a
//!   semaphore of `max_connections` for as long as its socket is open (the
//!   permit travels inside the socket, [`CountedStream`], so an upgraded
//!   websocket keeps it); a connection beyond the cap gets [`refusal`]
//!   (`503`, `Connection: close`) and is closed, counted in
//!   `v6_socketio_connections_refused_total`, with one warning per 10 s.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{watch, OwnedSemaphorePermit, Semaphore},
};
use tracing::{debug, info, warn};

use crate::{log_limit::LogLimiter, metrics::Metrics, tcp_options};

/// Descriptors of the open-files limit kept for what is not a client
/// connection (database pool, broker, logs, configuration and key files):
/// the default `max_connections` is the limit minus this.
pub const FD_RESERVE: u64 = 100;

/// Longest wait, after the drain, for the connections still open to finish
/// their responses and close.
pub const CLOSE_CONNECTIONS_TIMEOUT: Duration = Duration::from_secs(5);

/// Most refused connections being answered at once; beyond it a refused
/// connection is closed without an answer (each one holds a descriptor
/// while its answer is written, outside `max_connections`).
const REFUSALS_AT_ONCE: usize = 32;

/// How long a refused connection may take to take its answer, and then to
/// close its side (what it had sent is read and dropped meanwhile, so that
/// closing does not reset the connection before the client read the answer).
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Pause after a failed `accept` (e.g. out of descriptors), so that the loop
/// does not spin on an error that persists.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The listening socket's accept queue (the kernel caps it at
/// `net.core.somaxconn`). The standard library's 128 overflowed when 250
/// clients connected at once (the kernel drops the SYN, the client sends it
/// again after 1 s): a fleet reconnecting after a restart connects faster.
pub const BACKLOG: u32 = 4096;

/// The body of the answer to a connection beyond `max_connections`.
pub const REFUSAL_BODY: &str = "too many connections to this instance\n";

/// The limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a connection may take to send a complete request head.
    pub header_read_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// `TCP_USER_TIMEOUT` of accepted connections (see [`tcp_options::apply`]).
    pub tcp_user_timeout: Option<Duration>,
}

/// A listening socket on `addr` with [`BACKLOG`] (and `SO_REUSEADDR`, as
/// the standard library sets it, so that a restart can bind while old
/// connections linger in `TIME_WAIT`).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Raises the soft open-files limit to the hard limit and returns the soft
/// limit then in force; `None` when it cannot be read (not Unix).
pub fn raise_open_files_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            warn!(error = %e, "cannot raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// The default `max_connections` under an open-files limit of `open_files`
/// descriptors: the limit minus [`FD_RESERVE`], at least 1; without a known
/// limit, as if it were 1024 (Linux's usual default).
pub fn default_max_connections(open_files: Option<u64>) -> usize {
    let limit = open_files.unwrap_or(1024);
    usize::try_from(limit.saturating_sub(FD_RESERVE).max(1)).unwrap_or(usize::MAX)
}

/// The whole answer to a connection beyond `max_connections`.
pub fn refusal() -> String {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{REFUSAL_BODY}",
        REFUSAL_BODY.len()
    )
}

/// Serves `app` on `listener` until `stop` resolves; then closes the
/// listener, awaits `drain`, and ends the connections still open (at most
/// [`CLOSE_CONNECTIONS_TIMEOUT`]).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    metrics: Metrics,
    stop: impl Future<Output = ()>,
    drain: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let shared = Arc::new(Shared {
        builder,
        app,
        metrics,
        header_read_timeout: limits.header_read_timeout,
    });
    let graceful = GracefulShutdown::new();
    let (stopping_tx, stopping) = watch::channel(false);
    let accepting = Accepting {
        shared: shared.clone(),
        // A larger figure than a semaphore holds is no cap in practice.
        permits: Arc::new(Semaphore::new(
            limits.max_connections.min(Semaphore::MAX_PERMITS),
        )),
        refusals: Arc::new(Semaphore::new(REFUSALS_AT_ONCE)),
        limits,
        log_limit: LogLimiter::default(),
        stopping,
    };
    accepting.run(listener, &graceful, stop).await;
    info!("listener closed: no new connections");
    drain.await;
    // Connections still waiting for their first bytes end now too.
    let _ = stopping_tx.send(true);
    let open = graceful.count();
    if tokio::time::timeout(CLOSE_CONNECTIONS_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            connections = open,
            "HTTP connections not all closed within {CLOSE_CONNECTIONS_TIMEOUT:?}; dropped"
        );
    } else {
        debug!(connections = open, "HTTP connections closed");
    }
}

/// What every connection's task shares.
struct Shared {
    builder: auto::Builder<TokioExecutor>,
    app: axum::Router,
    metrics: Metrics,
    header_read_timeout: Duration,
}

/// The accept loop's state.
struct Accepting {
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    limits: Limits,
    log_limit: LogLimiter,
    /// Turns `true` when the connections are to end.
    stopping: watch::Receiver<bool>,
}

impl Accepting {
    /// Accepts until `stop`; the listener is closed when this returns.
    async fn run(self, listener: TcpListener, graceful: &GracefulShutdown, stop: impl Future) {
        tokio::pin!(stop);
        loop {
            let accepted = tokio::select! {
                biased;
                _ = &mut stop => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if let Some(n) = self.log_limit.hit("accept_failed", 1) {
                        warn!(error = %e, failures = n, "cannot accept a connection");
                    }
                    tokio::select! {
                        biased;
                        _ = &mut stop => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                    }
                }
            };
            tcp_options::apply(&stream, self.limits.tcp_user_timeout);
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let stream = CountedStream::new(stream, permit, &self.shared.metrics);
                    tokio::spawn(serve_connection(
                        stream,
                        self.shared.clone(),
                        graceful.watcher(),
                        self.stopping.clone(),
                    ));
                }
                Err(_) => self.refuse(stream),
            }
        }
        drop(listener);
    }

    /// Answers a connection beyond the cap with [`refusal`] and closes it.
    fn refuse(&self, stream: TcpStream) {
        self.shared.metrics.connection_refused();
        if let Some(n) = self.log_limit.hit("connections_refused", 1) {
            warn!(
                refused = n,
                max_connections = self.limits.max_connections,
                "connections refused: this instance holds max_connections"
            );
        }
        // Without a slot the socket is dropped here, unanswered.
        if let Ok(slot) = self.refusals.clone().try_acquire_owned() {
            tokio::spawn(async move {
                answer_refused(stream).await;
                drop(slot);
            });
        }
    }
}

/// Writes [`refusal`], closes the sending side and reads (and drops) what
/// the client sent until it closes too, all within [`REFUSAL_LINGER`] each.
async fn answer_refused(mut stream: TcpStream) {
    let answered = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(refusal().as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(answered, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        let mut sink = [0u8; 1024];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// One accepted connection: its first bytes within the header read timeout,
/// then hyper (HTTP/1 with upgrades, or HTTP/2), watched for a graceful end.
async fn serve_connection(
    stream: CountedStream,
    shared: Arc<Shared>,
    watcher: hyper_util::server::graceful::Watcher,
    mut stopping: watch::Receiver<bool>,
) {
    let first = tokio::select! {
        first = first_bytes(stream.tcp(), shared.header_read_timeout) => first,
        _ = stopping.wait_for(|s| *s) => return,
    };
    match first {
        Ok(FirstBytes::Arrived) => {}
        Ok(FirstBytes::Closed) => return,
        Ok(FirstBytes::TimedOut) => {
            debug!(timeout = ?shared.header_read_timeout, "connection sent no request: closed");
            return;
        }
        Err(e) => {
            debug!(error = %e, "connection failed before its first request");
            return;
        }
    }
    let service = TowerToHyperService::new(shared.app.clone());
    let conn = shared
        .builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// What a new connection did within the header read timeout.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstBytes {
    /// Enough bytes arrived for hyper-util to tell HTTP/1 from HTTP/2.
    Arrived,
    /// The client closed the connection first.
    Closed,
    /// Not enough came within the timeout.
    TimedOut,
}

/// HTTP/2's connection preface, which hyper-util's version detection
/// compares the first bytes with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Pause between two looks at a connection whose bytes so far are a prefix
/// of [`H2_PREFACE`] (peeking does not consume, so readiness cannot be
/// awaited again).
const PREFACE_POLL: Duration = Duration::from_millis(10);

/// Waits, at most `timeout`, until `tcp` has sent what hyper-util's version
/// detection reads: a byte that differs from [`H2_PREFACE`] (any HTTP/1
/// request's first byte does), or the whole preface. Nothing is consumed.
pub async fn first_bytes(tcp: &TcpStream, timeout: Duration) -> io::Result<FirstBytes> {
    let wait = async {
        let mut buf = [0u8; H2_PREFACE.len()];
        loop {
            let n = tcp.peek(&mut buf).await?;
            if n == 0 {
                return Ok(FirstBytes::Closed);
            }
            if n == H2_PREFACE.len() || buf[..n] != H2_PREFACE[..n] {
                return Ok(FirstBytes::Arrived);
            }
            tokio::time::sleep(PREFACE_POLL).await;
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .unwrap_or(Ok(FirstBytes::TimedOut))
}

/// An accepted connection with its permit of the connection cap; counted in
/// `v6_socketio_http_connections` while it exists. hyper hands it on to an
/// upgraded websocket, so the permit is released when the socket closes,
/// whatever protocol it ended up speaking.
pub struct CountedStream {
    tcp: TcpStream,
    _permit: OwnedSemaphorePermit,
    metrics: Metrics,
}

impl CountedStream {
    /// Counts `tcp` as open until this is dropped.
    pub fn new(tcp: TcpStream, permit: OwnedSemaphorePermit, metrics: &Metrics) -> Self {
        metrics.http_connection(1);
        Self {
            tcp,
            _permit: permit,
            metrics: metrics.clone(),
        }
    }

    /// The socket.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.metrics.http_connection(-1);
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_is_a_complete_http_response() {
        let text = refusal();
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(head.contains("\r\nconnection: close"));
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
        assert_eq!(body, "too many connections to this instance\n");
    }

    #[test]
    fn default_max_connections_keeps_the_reserve() {
        assert_eq!(default_max_connections(Some(20_000)), 19_900);
        assert_eq!(default_max_connections(Some(50)), 1);
        assert_eq!(default_max_connections(None), 924);
    }
}
