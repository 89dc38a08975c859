//! The upstream MySQL/MariaDB server: URL parsing and connecting (TCP, then TLS on request).
//!
//! The URL (`mysql://user:pass@host:port/db?ssl-mode=...`) names the server and the TLS policy.
//! Client sessions never use its credentials: clients authenticate upstream with their own,
//! which Larder relays. TLS to the upstream is negotiated inside the MySQL handshake (the
//! client's SSLRequest), so connecting here is plain TCP and [`MyUpstreamConnector::tls`] wraps
//! the socket once the handshake reaches that point.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::pg::conn::Conn;
use crate::pg::upstream::{parse_port, percent_decode, split_host_port};
use crate::pg::SslMode;
use crate::AdapterError;

/// Default port of a MySQL server.
pub const MYSQL_PORT_DEFAULT: u16 = 3306;
const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// The upstream MySQL/MariaDB server.
#[derive(Clone, PartialEq, Eq)]
pub struct MyUpstreamConfig {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    pub database: Option<String>,
    /// `ssl-mode`, mapped onto libpq's modes: DISABLED, PREFERRED (default), REQUIRED,
    /// VERIFY_CA, VERIFY_IDENTITY.
    pub ssl_mode: SslMode,
    /// CA certificates (PEM) for VERIFY_CA/VERIFY_IDENTITY (`ssl-ca`).
    pub ssl_ca: Option<PathBuf>,
    pub connect_timeout_ms: u64,
}

impl std::fmt::Debug for MyUpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MyUpstreamConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_ca", &self.ssl_ca)
            .finish()
    }
}

fn parse_ssl_mode(v: &str) -> Result<SslMode, AdapterError> {
    Ok(match v.to_ascii_lowercase().replace('_', "-").as_str() {
        "disabled" | "disable" => SslMode::Disable,
        "preferred" | "prefer" => SslMode::Prefer,
        "required" | "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-identity" | "verify-full" => SslMode::VerifyFull,
        other => {
            return Err(AdapterError::Config(format!(
                "unknown ssl-mode {other:?} (expected DISABLED, PREFERRED, REQUIRED, VERIFY_CA, \
                 VERIFY_IDENTITY)"
            )))
        }
    })
}

impl MyUpstreamConfig {
    /// Parses a `mysql://` URL: user, password (percent-decoded), host (name, IPv4 or
    /// `[IPv6]`), port (default 3306), database, and the query parameters `ssl-mode` (also
    /// `sslmode`), `ssl-ca` (also `sslrootcert`) and `connect_timeout` (seconds).
    pub fn from_url(url: &str) -> Result<MyUpstreamConfig, AdapterError> {
        let cfg_err = |m: String| AdapterError::Config(m);
        let rest = url
            .strip_prefix("mysql://")
            .ok_or_else(|| cfg_err("upstream URL must start with mysql://".into()))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let mut cfg = MyUpstreamConfig {
            host: "localhost".into(),
            port: MYSQL_PORT_DEFAULT,
            user: None,
            password: None,
            database: None,
            ssl_mode: SslMode::Prefer,
            ssl_ca: None,
            connect_timeout_ms: CONNECT_TIMEOUT_MS_DEFAULT,
        };
        if let Some(ui) = userinfo {
            let (u, p) = match ui.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (ui, None),
            };
            if !u.is_empty() {
                cfg.user = Some(percent_decode(u, "user")?);
            }
            if let Some(p) = p {
                cfg.password = Some(percent_decode(p, "password")?);
            }
        }
        if hostport.contains(',') {
            return Err(cfg_err("multiple upstream hosts are not supported".into()));
        }
        let (host, port) = split_host_port(hostport)?;
        if let Some(h) = host {
            cfg.host = percent_decode(&h, "host")?;
        }
        if let Some(p) = port {
            cfg.port = parse_port(&p)?;
        }
        if let Some(p) = path.filter(|p| !p.is_empty()) {
            cfg.database = Some(percent_decode(p, "database")?);
        }
        for pair in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v, k)?;
            match k.to_ascii_lowercase().replace('_', "-").as_str() {
                "ssl-mode" | "sslmode" => cfg.ssl_mode = parse_ssl_mode(&v)?,
                "ssl-ca" | "sslrootcert" => cfg.ssl_ca = Some(PathBuf::from(v)),
                "connect-timeout" => {
                    let secs: u64 = v
                        .parse()
                        .map_err(|_| cfg_err(format!("bad connect_timeout {v:?}")))?;
                    if secs > 0 {
                        cfg.connect_timeout_ms = secs.saturating_mul(1000);
                    }
                }
                _ => {}
            }
        }
        if matches!(cfg.ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) && cfg.ssl_ca.is_none() {
            return Err(cfg_err(
                "ssl-mode VERIFY_CA/VERIFY_IDENTITY needs ssl-ca=<path to CA certificates (PEM)>"
                    .into(),
            ));
        }
        Ok(cfg)
    }

    /// `host:port` for messages and logs.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether TLS is mandatory (the session fails when the upstream does not offer it).
    pub fn tls_required(&self) -> bool {
        matches!(
            self.ssl_mode,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

/// Connects to the upstream; holds the TLS client configuration shared by all sessions.
pub(crate) struct MyUpstreamConnector {
    pub(crate) cfg: MyUpstreamConfig,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl MyUpstreamConnector {
    pub(crate) fn new(cfg: MyUpstreamConfig) -> Result<Self, AdapterError> {
        // The TLS configuration is the Postgres one's: same modes, same verifiers.
        let pg_view = crate::pg::UpstreamConfig {
            host: cfg.host.clone(),
            port: cfg.port,
            user: None,
            password: None,
            dbname: None,
            sslmode: cfg.ssl_mode,
            sslrootcert: cfg.ssl_ca.clone(),
            connect_timeout_ms: cfg.connect_timeout_ms,
        };
        let tls = match crate::pg::tls::upstream_client_config(&pg_view)? {
            Some(c) => {
                let name = ServerName::try_from(cfg.host.clone()).map_err(|_| {
                    AdapterError::Config(format!(
                        "upstream host {:?} is not a valid TLS name",
                        cfg.host
                    ))
                })?;
                Some((c, name))
            }
            None => None,
        };
        Ok(MyUpstreamConnector { cfg, tls })
    }

    /// Whether Larder may use TLS upstream at all (ssl-mode is not DISABLED).
    pub(crate) fn tls_enabled(&self) -> bool {
        self.tls.is_some()
    }

    /// Opens a TCP connection (TCP_NODELAY) and returns it with the resolved peer address.
    pub(crate) async fn connect(&self) -> Result<(TcpStream, SocketAddr), AdapterError> {
        let err = |source: std::io::Error| AdapterError::UpstreamConnect {
            addr: self.cfg.address(),
            source,
        };
        let timeout = Duration::from_millis(self.cfg.connect_timeout_ms);
        let tcp = tokio::time::timeout(
            timeout,
            TcpStream::connect((self.cfg.host.as_str(), self.cfg.port)),
        )
        .await
        .map_err(|_| err(std::io::ErrorKind::TimedOut.into()))?
        .map_err(err)?;
        tcp.set_nodelay(true).map_err(err)?;
        let peer = tcp.peer_addr().map_err(err)?;
        Ok((tcp, peer))
    }

    /// The TLS handshake on a connection whose SSLRequest was sent.
    pub(crate) async fn tls(&self, tcp: TcpStream) -> Result<Conn, AdapterError> {
        let Some((config, name)) = &self.tls else {
            return Err(AdapterError::Tls("upstream TLS is disabled".into()));
        };
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let stream = connector
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| AdapterError::Tls(format!("upstream TLS handshake: {e}")))?;
        Ok(Conn::Tls(Box::new(tokio_rustls::TlsStream::Client(stream))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let c = MyUpstreamConfig::from_url(
            "mysql://al%40ice:p%3Ass@db.example.com:3307/shop?ssl-mode=REQUIRED",
        )
        .unwrap();
        assert_eq!((c.host.as_str(), c.port), ("db.example.com", 3307));
        assert_eq!(c.user.as_deref(), Some("al@ice"));
        assert_eq!(c.password.as_deref(), Some("p:ss"));
        assert_eq!(c.database.as_deref(), Some("shop"));
        assert_eq!(c.ssl_mode, SslMode::Require);
        assert!(c.tls_required());
        assert!(!format!("{c:?}").contains("p:ss"));
        let c = MyUpstreamConfig::from_url("mysql://[::1]").unwrap();
        assert_eq!(c.address(), "[::1]:3306");
        assert_eq!(c.ssl_mode, SslMode::Prefer);
        assert_eq!(c.database, None);
        let c = MyUpstreamConfig::from_url("mysql://h/db?sslmode=disable").unwrap();
        assert_eq!(c.ssl_mode, SslMode::Disable);
        assert!(MyUpstreamConnector::new(c).unwrap().tls.is_none());
        let c = MyUpstreamConfig::from_url("mysql://h/db?ssl_mode=verify_ca&ssl-ca=/tmp/ca.pem")
            .unwrap();
        assert_eq!(c.ssl_mode, SslMode::VerifyCa);
    }

    #[test]
    fn rejects_bad_urls() {
        for url in [
            "postgres://h/db",
            "mysql://h:x/db",
            "mysql://h/db?ssl-mode=sometimes",
            "mysql://h/db?ssl-mode=VERIFY_IDENTITY",
            "mysql://a,b/db",
        ] {
            assert!(MyUpstreamConfig::from_url(url).is_err(), "{url}");
        }
    }
}
