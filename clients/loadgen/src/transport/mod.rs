//! The two Engine.IO transports a node client can use: websocket only, or HTTP long-polling
//! only (no upgrade), both behind [`Transport`].

pub mod polling;
pub mod ws;

/// Why a transport failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// TCP connect failed or timed out.
    #[error("connect: {0}")]
    Connect(String),
    /// The websocket handshake or stream failed.
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    /// An HTTP request failed.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// The server answered an HTTP status other than 200.
    #[error("http status {0}")]
    Status(u16),
    /// The server's handshake was not an Engine.IO OPEN packet.
    #[error("bad handshake: {0}")]
    Handshake(String),
    /// The server closed the connection.
    #[error("closed by the server")]
    Closed,
    /// The base URL cannot be used.
    #[error("bad url {0}")]
    Url(String),
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `http://host:port` (no path).
    pub base: String,
    /// `host:port`.
    pub authority: String,
    /// The Engine.IO path, e.g. `/socket.io/`.
    pub path: String,
}

impl Endpoint {
    /// Parses `http://host:port[/]`.
    pub fn parse(url: &str, path: &str) -> Result<Self, TransportError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| TransportError::Url(format!("{url} (only http:// is supported)")))?;
        let authority = rest.trim_end_matches('/').to_owned();
        if authority.is_empty() || authority.contains('/') {
            return Err(TransportError::Url(url.to_owned()));
        }
        Ok(Self {
            base: format!("http://{authority}"),
            authority,
            path: path.to_owned(),
        })
    }
}

/// One incoming unit: a websocket frame (one packet) or a polling payload (packets separated
/// by `\x1e`).
#[derive(Debug)]
pub enum Incoming {
    /// One packet.
    Packet(tokio_tungstenite::tungstenite::Utf8Bytes),
    /// A long-polling payload.
    Payload(String),
}

/// A connected Engine.IO session of either transport.
#[derive(Debug)]
pub enum Transport {
    /// Websocket only.
    Ws(Box<ws::Ws>),
    /// HTTP long-polling only.
    Polling(polling::Polling),
}

impl Transport {
    /// Sends one packet.
    pub async fn send(&mut self, packet: String) -> Result<(), TransportError> {
        match self {
            Transport::Ws(t) => t.send(packet).await,
            Transport::Polling(t) => t.send(packet).await,
        }
    }

    /// The next incoming unit; `Ok(None)` when the server closed the connection.
    pub async fn recv(&mut self) -> Result<Option<Incoming>, TransportError> {
        match self {
            Transport::Ws(t) => t.recv().await,
            Transport::Polling(t) => t.recv().await,
        }
    }

    /// Closes the session politely (best effort).
    pub async fn close(&mut self) {
        match self {
            Transport::Ws(t) => t.close().await,
            Transport::Polling(t) => t.close().await,
        }
    }
}
