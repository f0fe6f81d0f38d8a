//! Socket options of accepted connections.

use std::time::Duration;

use tokio::net::TcpStream;

/// Sets the options every accepted connection gets:
///
/// * `TCP_NODELAY`: every Socket.IO packet is its own small write; with
///   Nagle's algorithm a write behind an unacknowledged one waits for the
///   client's delayed ACK (40 ms on Linux), which showed as a 40-80 ms p99
///   in the fanout benchmark.
/// * `TCP_USER_TIMEOUT` (`tcp_user_timeout`): a client that reads nothing
///   closes its receive window; the websocket writer then waits in its
///   write for good, and engine.io cannot end the session (its close waits
///   for that writer), so the session, its buffer and the node's `online`
///   row would stay for as long as the client's kernel answers the window
///   probes. With the option the kernel drops the connection once sent
///   data stayed unacknowledged that long; the write fails and the session
///   ends as for any lost transport.
///
/// A failure is logged at debug level: the connection works without them.
pub fn apply(tcp: &TcpStream, user_timeout: Option<Duration>) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
    }
    if let Some(timeout) = user_timeout {
        if let Err(e) = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(timeout)) {
            tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT on an accepted connection");
        }
    }
}
