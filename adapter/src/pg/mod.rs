//! The transparent Postgres proxy.
//!
//! Clients connect to Larder as if it were Postgres. Each client session gets its own upstream
//! session: Larder forwards the client's StartupMessage, relays the authentication exchange
//! (cleartext, MD5, SCRAM) both ways, and then relays the protocol message by message. The
//! pieces:
//!
//! * [`messages`]: every wire message with `Encode`/`Decode`, and the framing layer;
//! * [`upstream`]: the upstream URL and connecting (TCP + optional TLS);
//! * `proxy`: the accept loop, connection limit, TLS for clients, cancel requests, shutdown;
//! * `session`: one client session: startup, auth pass-through and the message relay;
//! * [`intercept`]: the hook where a later layer can answer client messages locally.

pub mod intercept;
pub mod messages;
pub mod upstream;

mod cancel;
pub(crate) mod conn;
mod proxy;
mod route;
mod session;
pub(crate) mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

pub use intercept::{
    ClientBatch, Dispatch, Interceptor, InterceptorFactory, LocalResponse, PassThrough, Peer,
    ResponseMode, SessionState, CAPTURE_SIZE_MAX_BYTES,
};
pub use proxy::{serve, serve_with, serve_with_unix, Proxy};
pub use route::CacheRouter;
pub use tls::load_tls_config;
pub use upstream::{SslMode, UpstreamConfig};

/// Default for [`PgProxyConfig::startup_timeout_ms`].
pub const STARTUP_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Default for [`PgProxyConfig::shutdown_grace_ms`].
pub const SHUTDOWN_GRACE_MS_DEFAULT: u64 = 10_000;
/// Default for [`PgProxyConfig::max_connections`].
pub const MAX_CONNECTIONS_DEFAULT: usize = 1_000;
/// Default for [`PgProxyConfig::client_output_max_bytes`].
pub const CLIENT_OUTPUT_MAX_BYTES_DEFAULT: usize = 64 << 20;

/// Configuration of the Postgres proxy.
#[derive(Debug, Clone)]
pub struct PgProxyConfig {
    /// Where clients connect (informational; `serve` takes an already bound listener).
    pub listen: SocketAddr,
    /// The upstream database.
    pub upstream: UpstreamConfig,
    /// Maximum concurrent client sessions; the excess get SQLSTATE 53300.
    pub max_connections: usize,
    /// Most client statements (sync points) in flight upstream across all sessions; past it, a
    /// session that starts a new statement outside a transaction gets SQLSTATE 53400 instead
    /// of queueing on the database. 0: no bound.
    pub upstream_queries_max: usize,
    /// Largest protocol message accepted from a client.
    pub message_size_max_bytes: usize,
    /// Most response bytes a client may leave unread while it keeps sending statements that
    /// Larder answers itself; past this the session ends with SQLSTATE 53400.
    pub client_output_max_bytes: usize,
    /// Deadline for TLS + startup + authentication of a new session.
    pub startup_timeout_ms: u64,
    /// Close sessions idle (waiting for the client) this long; 0 = never.
    pub idle_timeout_ms: u64,
    /// On shutdown, how long sessions get to finish their in-flight statement.
    pub shutdown_grace_ms: u64,
    /// TLS for clients; `None` answers SSLRequest with `N`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Where the proxy counts connections and relayed statements (for `/metrics`).
    pub metrics: Arc<crate::metrics::ProxyMetrics>,
}

impl PgProxyConfig {
    /// A configuration with default limits and no client TLS.
    pub fn new(listen: SocketAddr, upstream: UpstreamConfig) -> Self {
        PgProxyConfig {
            listen,
            upstream,
            max_connections: MAX_CONNECTIONS_DEFAULT,
            upstream_queries_max: 0,
            message_size_max_bytes: messages::MESSAGE_SIZE_MAX_BYTES_DEFAULT,
            client_output_max_bytes: CLIENT_OUTPUT_MAX_BYTES_DEFAULT,
            startup_timeout_ms: STARTUP_TIMEOUT_MS_DEFAULT,
            idle_timeout_ms: 0,
            shutdown_grace_ms: SHUTDOWN_GRACE_MS_DEFAULT,
            tls: None,
            metrics: crate::metrics::ProxyMetrics::new(),
        }
    }

    fn validate(&self) -> Result<(), crate::AdapterError> {
        let bad = |m: &str| Err(crate::AdapterError::Config(m.to_string()));
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1");
        }
        if self.message_size_max_bytes < 1024 || self.message_size_max_bytes > (1 << 30) {
            return bad("message_size_max_bytes must be between 1 KiB and 1 GiB");
        }
        if self.client_output_max_bytes < (1 << 20) {
            return bad("client_output_max_bytes must be at least 1 MiB");
        }
        if self.startup_timeout_ms == 0 {
            return bad("startup_timeout_ms must be positive");
        }
        Ok(())
    }
}
