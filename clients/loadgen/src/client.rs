//! One vantage6 node client: Engine.IO handshake with the bearer token, `40/tasks,`, wait for
//! the CONNECT acknowledgement and `sync`, then events until the session ends; and the
//! python-socketio-like reconnection backoff.

use std::time::Duration;

use tokio::{sync::mpsc, time::Instant};

use crate::{
    token::Minter,
    transport::{polling::Polling, ws::Ws, Endpoint, Incoming, Transport, TransportError},
    wire::{self, Packet},
};

/// What the process shares between its clients.
#[derive(Debug, Clone)]
pub struct ClientCtx {
    /// Server endpoints (clients spread round-robin).
    pub endpoints: Vec<Endpoint>,
    /// The HTTP client of the polling sessions.
    pub http: reqwest::Client,
    /// Token minter.
    pub minter: Minter,
    /// Limit for the handshake up to `sync`.
    pub connect_timeout: Duration,
}

/// Which node a client is and how it connects.
#[derive(Debug, Clone, Copy)]
pub struct NodeSpec {
    /// The node's authenticatable id.
    pub node_id: u64,
    /// Index into [`ClientCtx::endpoints`].
    pub endpoint: usize,
    /// Long-polling instead of websocket.
    pub polling: bool,
}

/// What a running client is told to do.
#[derive(Debug)]
pub enum Command {
    /// Send this packet.
    Send(String),
    /// Disconnect (and do not reconnect).
    Close,
}

/// What a client does with its session's events.
pub trait Handler: Send {
    /// The namespace CONNECT was acknowledged.
    fn connected(&mut self) {}
    /// `sync` arrived (the first one of a session: the client is ready).
    fn synced(&mut self) {}
    /// An event after `sync`.
    fn event(&mut self, name: &str, args: &str);
    /// An incoming packet that could not be parsed.
    fn bad_packet(&mut self, error: &wire::WireError);
}

/// Why a connection attempt did not reach `sync`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Transport or handshake failure.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The namespace connection was refused (`44/tasks,…`).
    #[error("connect_error {0}")]
    Refused(String),
    /// The server disconnected the namespace before `sync` (e.g. `invalid_token` then `41`).
    #[error("disconnected before sync{0}")]
    Disconnected(String),
    /// No `sync` in time.
    #[error("no sync within {0:?}")]
    Timeout(Duration),
    /// Could not mint a token.
    #[error(transparent)]
    Token(#[from] crate::token::TokenError),
}

impl ConnectError {
    /// A short, low-cardinality name for the error list of a result line.
    pub fn kind(&self) -> String {
        match self {
            ConnectError::Transport(TransportError::Status(s)) => format!("http_{s}"),
            ConnectError::Transport(TransportError::Connect(_)) => "tcp_connect".to_owned(),
            ConnectError::Transport(TransportError::Ws(_)) => "websocket".to_owned(),
            ConnectError::Transport(TransportError::Http(_)) => "http".to_owned(),
            ConnectError::Transport(TransportError::Handshake(_)) => "handshake".to_owned(),
            ConnectError::Transport(TransportError::Closed) => "closed_before_sync".to_owned(),
            ConnectError::Transport(TransportError::Url(_)) => "url".to_owned(),
            ConnectError::Refused(_) => "connect_error".to_owned(),
            ConnectError::Disconnected(_) => "disconnected_before_sync".to_owned(),
            ConnectError::Timeout(_) => "sync_timeout".to_owned(),
            ConnectError::Token(_) => "token".to_owned(),
        }
    }
}

/// How a session that had reached `sync` ended.
#[derive(Debug)]
pub enum Ended {
    /// [`Command::Close`].
    Closed,
    /// The server closed it or the transport failed.
    Lost(String),
}

/// The outcome of one connection attempt.
#[derive(Debug)]
pub enum Outcome {
    /// Never reached `sync`.
    Failed(ConnectError),
    /// Reached `sync`, then ended.
    Ended(Ended),
}

enum Step {
    Continue,
    Stop(Result<Ended, ConnectError>),
}

/// Connects once and serves the session until it ends.
pub async fn run_once<H: Handler>(
    ctx: &ClientCtx,
    spec: NodeSpec,
    handler: &mut H,
    commands: &mut mpsc::Receiver<Command>,
) -> Outcome {
    let deadline = Instant::now() + ctx.connect_timeout;
    let opened = tokio::time::timeout_at(deadline, open(ctx, spec)).await;
    let mut transport = match opened {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Outcome::Failed(e),
        Err(_) => return Outcome::Failed(ConnectError::Timeout(ctx.connect_timeout)),
    };
    let mut synced = false;
    let mut connected = false;
    let result = loop {
        let next = tokio::select! {
            r = transport.recv() => Next::Recv(r),
            c = commands.recv() => Next::Command(c),
            () = tokio::time::sleep_until(deadline), if !synced => Next::Timeout,
        };
        let incoming = match next {
            Next::Timeout => break Err(ConnectError::Timeout(ctx.connect_timeout)),
            Next::Command(Some(Command::Send(p))) => {
                // Before `sync` nothing is sent: the node is not ready yet.
                if synced {
                    if let Err(e) = transport.send(p).await {
                        break Err(e.into());
                    }
                }
                continue;
            }
            Next::Command(Some(Command::Close) | None) => {
                let _ = transport.send(format!("41{},", wire::NAMESPACE)).await;
                transport.close().await;
                break Ok(Ended::Closed);
            }
            Next::Recv(Ok(Some(i))) => i,
            Next::Recv(Ok(None)) => break Err(ConnectError::Transport(TransportError::Closed)),
            Next::Recv(Err(e)) => break Err(e.into()),
        };
        let mut state = (connected, synced);
        let step = match &incoming {
            Incoming::Packet(p) => on_packet(p.as_str(), &mut transport, handler, &mut state).await,
            Incoming::Payload(payload) => {
                let mut step = Step::Continue;
                for p in wire::split_payload(payload) {
                    step = on_packet(p, &mut transport, handler, &mut state).await;
                    if matches!(step, Step::Stop(_)) {
                        break;
                    }
                }
                step
            }
        };
        (connected, synced) = state;
        if let Step::Stop(r) = step {
            break r;
        }
    };
    match (result, synced) {
        (Ok(ended), _) => Outcome::Ended(ended),
        (Err(e), true) => Outcome::Ended(Ended::Lost(e.to_string())),
        (Err(e), false) => Outcome::Failed(e),
    }
}

enum Next {
    Recv(Result<Option<Incoming>, TransportError>),
    Command(Option<Command>),
    Timeout,
}

async fn open(ctx: &ClientCtx, spec: NodeSpec) -> Result<Transport, ConnectError> {
    let token = ctx.minter.node_token(spec.node_id)?;
    let ep = &ctx.endpoints[spec.endpoint % ctx.endpoints.len()];
    let mut t = if spec.polling {
        Transport::Polling(Polling::connect(&ctx.http, ep, &token).await?)
    } else {
        Transport::Ws(Box::new(Ws::connect(ep, &token).await?))
    };
    t.send(wire::CONNECT_TASKS.to_owned()).await?;
    Ok(t)
}

async fn on_packet<H: Handler>(
    text: &str,
    transport: &mut Transport,
    handler: &mut H,
    (connected, synced): &mut (bool, bool),
) -> Step {
    match wire::parse(text) {
        Ok(Packet::Ping) => {
            if let Err(e) = transport.send(wire::PONG.to_owned()).await {
                return Step::Stop(Err(e.into()));
            }
        }
        Ok(Packet::Event { name, args }) => {
            if *synced {
                handler.event(name, args);
            } else if name == "sync" && *connected {
                *synced = true;
                handler.synced();
            }
        }
        Ok(Packet::Connected) => {
            if !*connected {
                *connected = true;
                handler.connected();
            }
        }
        Ok(Packet::ConnectError(m)) => {
            return Step::Stop(Err(ConnectError::Refused(m.chars().take(200).collect())))
        }
        Ok(Packet::Disconnected) => {
            return Step::Stop(Err(ConnectError::Disconnected(String::new())))
        }
        Ok(Packet::Close) => return Step::Stop(Err(TransportError::Closed.into())),
        Ok(Packet::Pong | Packet::Noop | Packet::Ack | Packet::Open { .. }) => {}
        Err(e) => handler.bad_packet(&e),
    }
    Step::Continue
}

/// python-socketio's reconnection delays: `delay` doubling per attempt up to `max`, each
/// randomized by ± `randomization` of itself.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub delay: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Randomization factor (0..1).
    pub randomization: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            delay: Duration::from_secs(1),
            max: Duration::from_secs(5),
            randomization: 0.5,
        }
    }
}

impl Backoff {
    /// The pause before reconnection attempt `attempt` (1-based), with `unit` a random number
    /// in `[0, 1)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let base = self.delay.as_secs_f64()
            * 2f64.powi(i32::try_from(attempt.saturating_sub(1).min(30)).unwrap_or(30));
        let base = base.min(self.max.as_secs_f64());
        let d = base + self.randomization * (2.0 * unit - 1.0) * base;
        Duration::from_secs_f64(d.max(0.0))
    }
}

/// A small per-client random source (xorshift64*), seeded from the OS.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from the operating system (a fixed seed if that fails).
    pub fn new() -> Self {
        let mut b = [0u8; 8];
        let seed = match getrandom::fill(&mut b) {
            Ok(()) => u64::from_le_bytes(b),
            Err(_) => 0x9E37_79B9_7F4A_7C15,
        };
        Self(seed | 1)
    }

    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_max() {
        let b = Backoff::default();
        assert_eq!(b.delay(1, 0.5), Duration::from_secs(1));
        assert_eq!(b.delay(2, 0.5), Duration::from_secs(2));
        assert_eq!(b.delay(3, 0.5), Duration::from_secs(4));
        assert_eq!(b.delay(4, 0.5), Duration::from_secs(5));
        assert_eq!(b.delay(40, 0.5), Duration::from_secs(5));
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(500));
        assert!(b.delay(4, 0.999_999) < Duration::from_millis(7501));
    }

    #[test]
    fn rng_is_in_unit_range() {
        let mut r = Rng::new();
        for _ in 0..1000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
