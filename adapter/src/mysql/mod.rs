//! The transparent MySQL/MariaDB relay.
//!
//! Clients connect to Larder as if it were the MySQL server. Each client session gets its own
//! upstream connection: Larder forwards the upstream's initial handshake (with its own
//! connection id and adjusted capability flags) so the client computes its scramble against
//! the upstream's salt, relays the handshake response and the whole auth exchange (auth
//! switch, caching_sha2_password's fast/full auth, ed25519, ...) both ways, and then relays
//! the command phase packet by packet, knowing where every response ends. Larder knows no
//! passwords and caches nothing yet: Larder's own statements (`CREATE CACHE`, ...) are
//! answered with ER_NOT_SUPPORTED_YET and everything else goes upstream untouched.
//!
//! * [`messages`]: every protocol message with encode/decode, and the length-encoded values;
//! * [`packet`]: framing (3-byte length + sequence id, splitting of large payloads);
//! * [`upstream`]: the `mysql://` URL and connecting (TCP, TLS inside the handshake);
//! * `proxy`: the accept loop, `max_connections`, shutdown;
//! * `session`: one client session: handshake pass-through, command relay, `KILL` rewriting.

pub mod messages;
pub mod packet;
pub mod upstream;

mod proxy;
mod session;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub use proxy::MyProxy;
pub use upstream::MyUpstreamConfig;

use crate::AdapterError;

/// Configuration of the MySQL relay.
#[derive(Clone)]
pub struct MyProxyConfig {
    /// Where clients connect (informational; `serve` takes a bound listener).
    pub listen: SocketAddr,
    pub upstream: MyUpstreamConfig,
    /// Maximum concurrent client sessions; the excess get ER_CON_COUNT_ERROR (1040).
    pub max_connections: usize,
    /// Largest logical packet payload accepted from a client; larger ones get
    /// ER_NET_PACKET_TOO_LARGE (1153) and the session ends.
    pub max_packet_bytes: usize,
    /// Deadline for connecting upstream, TLS and authentication of a new session.
    pub startup_timeout_ms: u64,
    /// Close sessions idle (waiting for the client) this long; 0 = never.
    pub idle_timeout_ms: u64,
    /// On shutdown, how long sessions get to finish their in-flight command.
    pub shutdown_grace_ms: u64,
    /// TLS for clients (offered as CLIENT_SSL); `None` offers none.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Connection and relayed-command counters (for `/metrics`).
    pub metrics: Arc<crate::metrics::ProxyMetrics>,
    /// The caches; `None` relays everything (Larder's statements are refused).
    pub backend: Option<Arc<dyn crate::cache::CacheBackend>>,
}

impl std::fmt::Debug for MyProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MyProxyConfig")
            .field("listen", &self.listen)
            .field("upstream", &self.upstream)
            .field("max_connections", &self.max_connections)
            .field("caching", &self.backend.is_some())
            .finish_non_exhaustive()
    }
}

impl MyProxyConfig {
    /// A configuration with default limits and no client TLS.
    pub fn new(listen: SocketAddr, upstream: MyUpstreamConfig) -> Self {
        MyProxyConfig {
            listen,
            upstream,
            max_connections: crate::pg::MAX_CONNECTIONS_DEFAULT,
            max_packet_bytes: packet::MAX_PACKET_BYTES_DEFAULT,
            startup_timeout_ms: crate::pg::STARTUP_TIMEOUT_MS_DEFAULT,
            idle_timeout_ms: 0,
            shutdown_grace_ms: crate::pg::SHUTDOWN_GRACE_MS_DEFAULT,
            tls: None,
            metrics: crate::metrics::ProxyMetrics::new(),
            backend: None,
        }
    }

    fn validate(&self) -> Result<(), AdapterError> {
        let bad = |m: &str| Err(AdapterError::Config(m.to_string()));
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1");
        }
        if self.max_packet_bytes < 1024 || self.max_packet_bytes > (1 << 30) {
            return bad("max_packet_bytes must be between 1 KiB and 1 GiB");
        }
        if self.startup_timeout_ms == 0 {
            return bad("startup_timeout_ms must be positive");
        }
        Ok(())
    }
}

/// Loads the certificate and key for clients' TLS ([`crate::load_tls_config`] without the
/// Postgres ALPN name, which MySQL clients do not send).
pub fn load_tls_config(
    cert_pem_path: &Path,
    key_pem_path: &Path,
) -> Result<Arc<rustls::ServerConfig>, AdapterError> {
    let cfg = crate::pg::load_tls_config(cert_pem_path, key_pem_path)?;
    let mut cfg = (*cfg).clone();
    cfg.alpn_protocols.clear();
    Ok(Arc::new(cfg))
}
