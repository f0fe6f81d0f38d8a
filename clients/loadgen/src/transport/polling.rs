//! HTTP long-polling-only Engine.IO transport (no upgrade): one GET always pending (a task of
//! its own, feeding a channel), POSTs for what the client sends.

use std::time::Duration;

use reqwest::{header::AUTHORIZATION, Client};
use tokio::{sync::mpsc, task::JoinHandle};

use super::{Endpoint, Incoming, TransportError};
use crate::wire::{self, Packet};

/// A shared HTTP client for every polling session of the process.
pub fn http_client() -> Result<Client, TransportError> {
    Ok(Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(usize::MAX)
        // A long poll lasts at most a ping interval (25 s); the server's ping timeout is 60 s.
        .timeout(Duration::from_secs(120))
        .build()?)
}

/// An open polling Engine.IO session.
#[derive(Debug)]
pub struct Polling {
    http: Client,
    url: String,
    bearer: String,
    rx: mpsc::Receiver<Result<String, TransportError>>,
    poller: JoinHandle<()>,
}

impl Drop for Polling {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl Polling {
    /// Handshakes (`GET …?EIO=4&transport=polling` with the bearer token) and starts polling.
    pub async fn connect(
        http: &Client,
        ep: &Endpoint,
        token: &str,
    ) -> Result<Self, TransportError> {
        let bearer = format!("Bearer {token}");
        let handshake = format!("{}{}?EIO=4&transport=polling", ep.base, ep.path);
        let text = get(http, &handshake, &bearer).await?;
        let open = wire::split_payload(&text).next().unwrap_or_default();
        let sid = match wire::parse(open) {
            Ok(Packet::Open { sid, .. }) => sid.to_owned(),
            _ => return Err(TransportError::Handshake(text.chars().take(100).collect())),
        };
        let url = format!("{handshake}&sid={sid}");
        let (tx, rx) = mpsc::channel(4);
        let poller = tokio::spawn(poll(http.clone(), url.clone(), bearer.clone(), tx));
        Ok(Self {
            http: http.clone(),
            url,
            bearer,
            rx,
            poller,
        })
    }

    /// POSTs one packet.
    pub async fn send(&mut self, packet: String) -> Result<(), TransportError> {
        let r = self
            .http
            .post(&self.url)
            .header(AUTHORIZATION, &self.bearer)
            .header("Content-Type", "text/plain;charset=UTF-8")
            .body(packet)
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(TransportError::Status(r.status().as_u16()));
        }
        // Read the `ok` body so that the connection goes back to the pool.
        let _ = r.bytes().await;
        Ok(())
    }

    /// The next payload.
    pub async fn recv(&mut self) -> Result<Option<Incoming>, TransportError> {
        match self.rx.recv().await {
            Some(Ok(p)) => Ok(Some(Incoming::Payload(p))),
            Some(Err(TransportError::Closed)) | None => Ok(None),
            Some(Err(e)) => Err(e),
        }
    }

    /// Sends the Engine.IO CLOSE packet.
    pub async fn close(&mut self) {
        let _ = self.send("1".to_owned()).await;
        self.poller.abort();
    }
}

async fn get(http: &Client, url: &str, bearer: &str) -> Result<String, TransportError> {
    let r = http.get(url).header(AUTHORIZATION, bearer).send().await?;
    if !r.status().is_success() {
        return Err(TransportError::Status(r.status().as_u16()));
    }
    Ok(r.text().await?)
}

/// The long-poll loop: one GET after another until the session ends or the receiver is gone.
async fn poll(
    http: Client,
    url: String,
    bearer: String,
    tx: mpsc::Sender<Result<String, TransportError>>,
) {
    loop {
        let r = get(&http, &url, &bearer).await;
        let end = match &r {
            Ok(p) => wire::split_payload(p).any(|pk| pk == "1"),
            Err(_) => true,
        };
        if tx.send(r).await.is_err() || end {
            let _ = tx.send(Err(TransportError::Closed)).await;
            return;
        }
    }
}
