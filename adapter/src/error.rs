//! The adapter's error type.

use socketioxide_core::adapter::errors::AdapterError;

use crate::wire::WireError;
#[cfg(feature = "amqp")]
use crate::{broker::AmqpError, uri::UriError};

/// The error of a [`Driver`](crate::broker::Driver), as the adapter carries it.
pub type DriverError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An adapter error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker failed (not connected, publish refused, ...): the driver's own error
    /// ([`Driver::Error`](crate::broker::Driver::Error), e.g. an
    /// [`AmqpError`](crate::broker::AmqpError)), which `downcast_ref` recovers.
    #[error("broker error: {0}")]
    Broker(#[source] DriverError),
    /// A message could not be encoded.
    #[error("wire error: {0}")]
    Wire(#[from] WireError),
    /// The broker URI cannot be used.
    #[cfg(feature = "amqp")]
    #[error("invalid broker URI: {0}")]
    Uri(#[from] UriError),
    /// The packet cannot be sent to other servers.
    #[error("unsupported packet: {0}")]
    Unsupported(&'static str),
}

impl Error {
    /// A driver's error.
    pub(crate) fn broker(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Broker(Box::new(e))
    }
}

#[cfg(feature = "amqp")]
impl From<AmqpError> for Error {
    fn from(e: AmqpError) -> Self {
        Error::broker(e)
    }
}

impl From<Error> for AdapterError {
    fn from(e: Error) -> Self {
        AdapterError(Box::new(e))
    }
}
