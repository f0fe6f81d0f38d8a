//! The adapter's error type.

use socketioxide_core::adapter::errors::AdapterError;

use crate::{broker::BrokerError, uri::UriError, wire::WireError};

/// An adapter error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker failed (not connected, publish refused, ...).
    #[error("broker error: {0}")]
    Broker(#[from] BrokerError),
    /// A message could not be encoded.
    #[error("wire error: {0}")]
    Wire(#[from] WireError),
    /// The broker URI cannot be used.
    #[error("invalid broker URI: {0}")]
    Uri(#[from] UriError),
    /// The packet cannot be sent to other servers.
    #[error("unsupported packet: {0}")]
    Unsupported(&'static str),
}

impl From<Error> for AdapterError {
    fn from(e: Error) -> Self {
        AdapterError(Box::new(e))
    }
}
