//! python-socketio's side of delivery: which local sockets a python `emit` is for (rooms, sids
//! as rooms, `skip_sid`), and local delivery to an explicit list of sockets.
//!
//! Our own code: python-socketio's addressing (every sid is a room, several skipped sids) has no
//! counterpart in socketioxide's `BroadcastOptions`.

use std::{borrow::Cow, str::FromStr, time::Duration};

use futures_util::stream::SelectAll;
use socketioxide_core::{
    adapter::{errors::SocketError, BroadcastFlags, BroadcastOptions, SocketEmitter},
    packet::Packet,
    Sid,
};

use crate::{adapter::CustomAmqpAdapter, broker::Driver, stream::LocalAcks, wire::Emit};

/// The sockets an incoming emit is for.
// Built once per incoming message and consumed at once: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Recipients {
    Opts(BroadcastOptions),
    Sids(Vec<Sid>),
}

impl<E: SocketEmitter, D: Driver> CustomAmqpAdapter<E, D> {
    /// A local socket with this (python) sid, if any.
    pub(crate) fn local_sid(&self, sid: &str) -> Option<Sid> {
        let sid = Sid::from_str(sid).ok()?;
        self.is_local(sid).then_some(sid)
    }

    /// Whether socket `sid` is connected here.
    pub(crate) fn is_local(&self, sid: Sid) -> bool {
        !self
            .local
            .fetch_sockets(BroadcastOptions::new(sid))
            .is_empty()
    }

    /// Which local sockets a python `emit` is for.
    pub(crate) fn python_recipients(&self, e: &Emit) -> Recipients {
        let skip: Vec<Sid> = e
            .skip_sid
            .to_vec()
            .iter()
            .filter_map(|s| Sid::from_str(s).ok())
            .collect();
        let rooms = e.room.to_vec();
        let mut opts = BroadcastOptions::default();
        opts.add_flag(BroadcastFlags::Broadcast);
        if rooms.is_empty() {
            if skip.len() <= 1 {
                opts.sid = skip.first().copied();
                return Recipients::Opts(opts);
            }
            let mut sids = self.local.sockets(opts);
            sids.retain(|s| !skip.contains(s));
            return Recipients::Sids(sids);
        }
        // In python every sid is a room; socketioxide sockets are not in a room named after
        // their sid unless they joined it, so sids are matched directly too.
        let sid_rooms: Vec<Sid> = rooms.iter().filter_map(|r| self.local_sid(r)).collect();
        opts.rooms = rooms.into_iter().map(Cow::Owned).collect();
        if sid_rooms.is_empty() && skip.len() <= 1 {
            opts.sid = skip.first().copied();
            return Recipients::Opts(opts);
        }
        let mut sids = self.local.sockets(opts);
        for sid in sid_rooms {
            if !sids.contains(&sid) {
                sids.push(sid);
            }
        }
        sids.retain(|s| !skip.contains(s));
        Recipients::Sids(sids)
    }

    pub(crate) fn local_broadcast(
        &self,
        packet: Packet,
        target: Recipients,
    ) -> Result<(), Vec<SocketError>> {
        match target {
            Recipients::Opts(opts) => self.local.broadcast(packet, opts),
            Recipients::Sids(sids) => {
                let errs: Vec<SocketError> = sids
                    .into_iter()
                    .filter_map(|sid| {
                        self.local
                            .broadcast(packet.clone(), BroadcastOptions::new(sid))
                            .err()
                    })
                    .flatten()
                    .collect();
                if errs.is_empty() {
                    Ok(())
                } else {
                    Err(errs)
                }
            }
        }
    }

    pub(crate) fn local_broadcast_with_ack(
        &self,
        packet: Packet,
        target: Recipients,
        timeout: Option<Duration>,
    ) -> (LocalAcks<E>, u32) {
        let mut streams = SelectAll::new();
        let mut count = 0;
        let opts = match target {
            Recipients::Opts(opts) => vec![opts],
            Recipients::Sids(sids) => sids.into_iter().map(BroadcastOptions::new).collect(),
        };
        for opts in opts {
            let (s, n) = self.local.broadcast_with_ack(packet.clone(), opts, timeout);
            streams.push(Box::pin(s));
            count += n;
        }
        (streams, count)
    }
}
