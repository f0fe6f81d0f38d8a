//! Websocket-only Engine.IO transport (`transport=websocket`, as python-socketio's nodes with
//! `transports=["websocket"]`), with small buffers so that thousands fit in one process.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{
        client::IntoClientRequest, http::HeaderValue, protocol::WebSocketConfig, Message,
    },
    WebSocketStream,
};

use super::{Endpoint, Incoming, TransportError};
use crate::wire::{self, Packet};

/// Read buffer per connection (tungstenite allocates it eagerly; its default is 128 KiB).
const READ_BUFFER: usize = 4096;

/// An open websocket Engine.IO session.
#[derive(Debug)]
pub struct Ws {
    stream: WebSocketStream<TcpStream>,
}

impl Ws {
    /// Connects, upgrades with `Authorization: Bearer <token>` and reads the OPEN packet.
    pub async fn connect(ep: &Endpoint, token: &str) -> Result<Self, TransportError> {
        let tcp = TcpStream::connect(&ep.authority)
            .await
            .map_err(|e| TransportError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let url = format!("ws://{}{}?EIO=4&transport=websocket", ep.authority, ep.path);
        let mut request = url.into_client_request()?;
        let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|e| TransportError::Handshake(e.to_string()))?;
        request.headers_mut().insert("Authorization", bearer);
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0)
            .max_message_size(Some(1 << 20));
        let (stream, _) =
            tokio_tungstenite::client_async_with_config(request, tcp, Some(config)).await?;
        let mut ws = Self { stream };
        let open = match ws.recv().await? {
            Some(Incoming::Packet(p)) => p,
            Some(Incoming::Payload(_)) | None => return Err(TransportError::Closed),
        };
        if !matches!(wire::parse(open.as_str()), Ok(Packet::Open { .. })) {
            return Err(TransportError::Handshake(
                open.as_str().chars().take(100).collect(),
            ));
        }
        Ok(ws)
    }

    /// Sends one packet as a text frame.
    pub async fn send(&mut self, packet: String) -> Result<(), TransportError> {
        Ok(self.stream.send(Message::text(packet)).await?)
    }

    /// The next text frame; websocket pings are answered by tungstenite itself.
    pub async fn recv(&mut self) -> Result<Option<Incoming>, TransportError> {
        loop {
            match self.stream.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Text(t))) => return Ok(Some(Incoming::Packet(t))),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Sends a close frame.
    pub async fn close(&mut self) {
        let _ = self.stream.close(None).await;
    }
}
