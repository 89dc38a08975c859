//! The one error type of the adapter layer.
//!
//! Errors carry a small classification ([`ErrorClass`]) so callers (the server's main, session
//! logging) can decide what to do without matching on every variant: configuration errors are
//! fatal at startup, client/protocol errors end one session, upstream errors are reported to the
//! client and logged, and Larder keeps running.

use crate::pg::messages::ProtocolError;

/// Everything that can go wrong in the adapter.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// Invalid configuration (bad URL, unreadable certificate, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A peer violated the wire protocol (malformed or hostile bytes).
    #[error("protocol violation: {0}")]
    Protocol(#[from] ProtocolError),
    /// A socket operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A TLS handshake or configuration failure.
    #[error("tls error: {0}")]
    Tls(String),
    /// The upstream database could not be reached.
    #[error("could not connect to upstream {addr}: {source}")]
    UpstreamConnect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The upstream database behaved unexpectedly (refused TLS when required, ...).
    #[error("upstream: {0}")]
    Upstream(String),
    /// A deadline passed.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// A session interceptor failed.
    #[error("interceptor: {0}")]
    Interceptor(String),
}

/// Coarse classification of an [`AdapterError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Fix the configuration; retrying will not help.
    Config,
    /// The client misbehaved or went away; only its session is affected.
    Client,
    /// The upstream database is unreachable or misbehaved.
    Upstream,
    /// Something inside Larder failed.
    Internal,
}

impl AdapterError {
    /// Returns the coarse class of this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            AdapterError::Config(_) => ErrorClass::Config,
            AdapterError::Protocol(_) | AdapterError::Io(_) | AdapterError::Timeout(_) => {
                ErrorClass::Client
            }
            AdapterError::Tls(_) => ErrorClass::Client,
            AdapterError::UpstreamConnect { .. } | AdapterError::Upstream(_) => {
                ErrorClass::Upstream
            }
            AdapterError::Interceptor(_) => ErrorClass::Internal,
        }
    }
}
