//! [`AckStream`]: the acks of a broadcast, local ones first, then those of the other servers.
//!
//! Our own code rather than socketioxide-core's `AckStream`: the core stream needs the number of
//! answering servers up front and drops acks no server announced, while python-socketio servers
//! answer with one `callback` per client ack and never say how many (and may be kept waited for,
//! [`AdapterConfig::wait_for_python_acks`](crate::AdapterConfig::wait_for_python_acks)).

use std::{
    future::Future,
    pin::Pin,
    str::FromStr,
    task::{Context, Poll},
};

use futures_core::{FusedStream, Stream};
use futures_util::{stream::SelectAll, StreamExt};
use serde_json::Value as Json;
use socketioxide_core::{
    adapter::{AckStreamItem, SocketEmitter},
    Sid,
};
use tokio::sync::mpsc;

use crate::{
    requests::{Incoming, PendingGuard},
    wire::{self, Reply, WireValue},
};

pub(crate) struct RemoteAcks {
    pub(crate) rx: mpsc::UnboundedReceiver<Incoming>,
    pub(crate) expected_servers: usize,
    pub(crate) counts: usize,
    pub(crate) acks_expected: u64,
    pub(crate) acks_received: u64,
    pub(crate) wait_python: bool,
    pub(crate) deadline: Pin<Box<tokio::time::Sleep>>,
    pub(crate) _guard: PendingGuard,
}

impl RemoteAcks {
    pub(crate) fn complete(&self) -> bool {
        !self.wait_python
            && self.counts >= self.expected_servers
            && self.acks_received >= self.acks_expected
    }
}

/// The acks of a broadcast: local ones first, then those of the other servers.
///
/// It ends when every expected ack is in, or at the timeout (the ack timeout plus
/// [`AdapterConfig::request_timeout`](crate::AdapterConfig::request_timeout)).
pub struct AckStream<E: SocketEmitter> {
    pub(crate) local: Option<LocalAcks<E>>,
    pub(crate) remote: Option<RemoteAcks>,
    pub(crate) done: bool,
}

/// The merged ack streams of local sockets.
pub(crate) type LocalAcks<E> = SelectAll<Pin<Box<<E as SocketEmitter>::AckStream>>>;

pub(crate) fn one<E: SocketEmitter>(stream: E::AckStream) -> LocalAcks<E> {
    let mut all = SelectAll::new();
    all.push(Box::pin(stream));
    all
}

impl<E: SocketEmitter> AckStream<E> {
    pub(crate) fn local(stream: E::AckStream) -> Self {
        Self::local_opt(Some(one::<E>(stream)))
    }
    pub(crate) fn local_opt(local: Option<LocalAcks<E>>) -> Self {
        Self {
            local,
            remote: None,
            done: false,
        }
    }
}

pub(crate) fn decode_ack<E: SocketEmitter>(
    sid: Sid,
    value: Option<WireValue>,
    error: Option<Json>,
) -> Option<AckStreamItem<E::AckError>> {
    if let Some(v) = value {
        return match v.into_value() {
            Ok(v) => Some((sid, Ok(v))),
            Err(e) => {
                tracing::warn!(error = %e, "dropping an undecodable remote ack");
                None
            }
        };
    }
    match serde_json::from_value::<E::AckError>(error?) {
        Ok(e) => Some((sid, Err(e))),
        Err(e) => {
            tracing::warn!(error = %e, "dropping an undecodable remote ack error");
            None
        }
    }
}

impl<E: SocketEmitter> Stream for AckStream<E> {
    type Item = AckStreamItem<E::AckError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(remote) = &mut this.remote {
            if remote.deadline.as_mut().poll(cx).is_ready() {
                this.done = true;
                return Poll::Ready(None);
            }
        }
        if let Some(local) = &mut this.local {
            match local.poll_next_unpin(cx) {
                Poll::Ready(Some(item)) => return Poll::Ready(Some(item)),
                Poll::Ready(None) => this.local = None,
                Poll::Pending => {}
            }
        }
        if let Some(remote) = &mut this.remote {
            loop {
                match remote.rx.poll_recv(cx) {
                    Poll::Ready(Some(Incoming::Reply(Reply::AckCount { count }))) => {
                        remote.counts += 1;
                        remote.acks_expected += u64::from(count);
                    }
                    Poll::Ready(Some(Incoming::Reply(Reply::Ack { sid, value, error }))) => {
                        remote.acks_received += 1;
                        if let Some(item) = decode_ack::<E>(sid, value, error) {
                            return Poll::Ready(Some(item));
                        }
                    }
                    Poll::Ready(Some(Incoming::PyCallback(cb))) => {
                        // A python callback does not name the acking socket: its `sid` echoes
                        // the emit's first room, which is a socketioxide sid only when the
                        // emit targeted one socket. Otherwise the ack is yielded for
                        // `Sid::ZERO`, as the stream's items must carry a sid.
                        let sid = Sid::from_str(&cb.sid).unwrap_or(Sid::ZERO);
                        return Poll::Ready(Some((sid, Ok(wire::callback_value(&cb.args)))));
                    }
                    Poll::Ready(Some(Incoming::Reply(_))) => {}
                    Poll::Ready(None) => {
                        remote.wait_python = false;
                        remote.counts = remote.expected_servers;
                        remote.acks_expected = remote.acks_received;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        let remote_done = this.remote.as_ref().is_none_or(RemoteAcks::complete);
        if this.local.is_none() && remote_done {
            this.done = true;
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

impl<E: SocketEmitter> FusedStream for AckStream<E> {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

impl<E: SocketEmitter> std::fmt::Debug for AckStream<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckStream")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}
