//! The upstream database: URL parsing and connecting.
//!
//! The URL (`postgres://user:pass@host:port/db?sslmode=...`) names the upstream server, the TLS
//! policy and the default/replicated database. Client sessions do NOT use the URL's user and
//! password: clients authenticate upstream with their own credentials, which Larder relays.
//! The URL's credentials are for Larder's own connections (replication, cache fills).
//!
//! A host that starts with `/` is a directory holding the server's Unix socket, as in libpq
//! (`postgresql://user@/db?host=/var/run/postgresql&port=5432` connects to
//! `/var/run/postgresql/.s.PGSQL.5432`). Postgres offers no TLS over Unix sockets, so `sslmode`
//! is ignored there, like libpq does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::conn::Conn;
use super::messages::{Encode, SslRequest};
use crate::AdapterError;

/// Default for the upstream TCP connect timeout (URL parameter `connect_timeout`, seconds).
const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// Try TLS, fall back to plain if the server refuses (libpq's default).
    #[default]
    Prefer,
    /// TLS without certificate verification.
    Require,
    /// TLS, certificate chain verified against `sslrootcert`, host name not checked.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self, AdapterError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            // `allow` means "plain first, TLS if required": plain works wherever allow works.
            "allow" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(AdapterError::Config(format!(
                    "unknown sslmode {other:?} (expected disable, prefer, require, verify-ca, \
                     verify-full)"
                )))
            }
        })
    }
}

/// The upstream Postgres server.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    /// The default (and replicated) database.
    pub dbname: Option<String>,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub connect_timeout_ms: u64,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .finish()
    }
}

pub(crate) fn percent_decode(s: &str, what: &str) -> Result<String, AdapterError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| AdapterError::Config(format!("bad percent-encoding in {what}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| AdapterError::Config(format!("{what} is not UTF-8")))
}

impl UpstreamConfig {
    /// Parses a `postgresql://` or `postgres://` URL.
    ///
    /// Supported: user, password (percent-decoded), host (name, IPv4 or `[IPv6]`), port
    /// (default 5432), database, and the query parameters `sslmode`, `sslrootcert`,
    /// `connect_timeout` (seconds), `host`, `port`, `user`, `password`, `dbname`. Other libpq
    /// parameters are ignored. A host starting with `/` is a Unix-socket directory (usually given
    /// as the `host` query parameter, the URL's host part left empty). Multiple hosts are not
    /// supported.
    pub fn from_url(url: &str) -> Result<UpstreamConfig, AdapterError> {
        let cfg_err = |m: String| AdapterError::Config(m);
        let rest = url
            .strip_prefix("postgresql://")
            .or_else(|| url.strip_prefix("postgres://"))
            .ok_or_else(|| {
                cfg_err("upstream URL must start with postgresql:// or postgres://".into())
            })?;
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
        let mut cfg = UpstreamConfig {
            host: "localhost".into(),
            port: 5432,
            user: None,
            password: None,
            dbname: None,
            sslmode: SslMode::default(),
            sslrootcert: None,
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
        if let Some(p) = path {
            if !p.is_empty() {
                cfg.dbname = Some(percent_decode(p, "database")?);
            }
        }
        for pair in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v, k)?;
            match k {
                "sslmode" => cfg.sslmode = SslMode::parse(&v)?,
                "sslrootcert" => cfg.sslrootcert = Some(PathBuf::from(v)),
                "host" => cfg.host = v,
                "port" => cfg.port = parse_port(&v)?,
                "user" => cfg.user = Some(v),
                "password" => cfg.password = Some(v),
                "dbname" => cfg.dbname = Some(v),
                "connect_timeout" => {
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
        if cfg.host.is_empty() {
            cfg.host = "localhost".into();
        }
        if matches!(cfg.sslmode, SslMode::VerifyCa | SslMode::VerifyFull)
            && cfg.sslrootcert.is_none()
            && !cfg.is_unix_socket()
        {
            return Err(cfg_err(format!(
                "sslmode={} needs sslrootcert=<path to CA certificates (PEM)>",
                if cfg.sslmode == SslMode::VerifyCa {
                    "verify-ca"
                } else {
                    "verify-full"
                }
            )));
        }
        Ok(cfg)
    }

    /// Whether the host names a Unix-socket directory rather than a TCP host.
    pub fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// The upstream's Unix socket file (`<dir>/.s.PGSQL.<port>`), for a Unix-socket host.
    pub fn unix_socket_path(&self) -> Option<PathBuf> {
        self.is_unix_socket()
            .then(|| Path::new(&self.host).join(format!(".s.PGSQL.{}", self.port)))
    }

    /// `host:port` (or the Unix socket's path) for messages and logs.
    pub fn address(&self) -> String {
        if let Some(path) = self.unix_socket_path() {
            path.display().to_string()
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

pub(crate) fn parse_port(p: &str) -> Result<u16, AdapterError> {
    p.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| AdapterError::Config(format!("bad upstream port {p:?}")))
}

pub(crate) fn split_host_port(hp: &str) -> Result<(Option<String>, Option<String>), AdapterError> {
    if hp.is_empty() {
        return Ok((None, None));
    }
    if let Some(rest) = hp.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| AdapterError::Config("unterminated [IPv6] host".into()))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.to_string()),
            None if after.is_empty() => None,
            None => return Err(AdapterError::Config("junk after [IPv6] host".into())),
        };
        return Ok((Some(h.to_string()), port));
    }
    match hp.rsplit_once(':') {
        Some((h, p)) => Ok(((!h.is_empty()).then(|| h.to_string()), Some(p.to_string()))),
        None => Ok((Some(hp.to_string()), None)),
    }
}

/// Connects to the upstream server: resolves, TCP (with TCP_NODELAY), optional TLS per sslmode.
/// Built once per `serve` so the TLS client configuration is shared by all sessions.
pub(crate) struct UpstreamConnector {
    pub(crate) cfg: UpstreamConfig,
    /// The socket file, for a Unix-socket upstream.
    unix_path: Option<Arc<Path>>,
    tls: Option<Arc<rustls::ClientConfig>>,
    server_name: Option<ServerName<'static>>,
}

/// Where an upstream connection went: a resolved TCP address or a Unix socket file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UpstreamAddr {
    Tcp(SocketAddr),
    Unix(Arc<Path>),
}

/// A fresh upstream connection.
pub(crate) struct UpstreamConn {
    pub conn: Conn,
    /// The resolved address actually connected to (cancel requests go here).
    pub addr: UpstreamAddr,
    pub tls: bool,
}

impl UpstreamConnector {
    pub(crate) fn new(cfg: UpstreamConfig) -> Result<Self, AdapterError> {
        let unix_path: Option<Arc<Path>> = cfg.unix_socket_path().map(Arc::from);
        // No TLS over Unix sockets: sslmode is ignored there, as libpq does.
        let tls = match unix_path {
            Some(_) => None,
            None => super::tls::upstream_client_config(&cfg)?,
        };
        let server_name = match tls {
            Some(_) => Some(ServerName::try_from(cfg.host.clone()).map_err(|_| {
                AdapterError::Config(format!(
                    "upstream host {:?} is not a valid TLS name",
                    cfg.host
                ))
            })?),
            None => None,
        };
        Ok(UpstreamConnector {
            cfg,
            unix_path,
            tls,
            server_name,
        })
    }

    fn connect_error(&self, source: std::io::Error) -> AdapterError {
        AdapterError::UpstreamConnect {
            addr: self.cfg.address(),
            source,
        }
    }

    /// Opens a new upstream connection, negotiating TLS per sslmode.
    pub(crate) async fn connect(&self) -> Result<UpstreamConn, AdapterError> {
        let timeout = Duration::from_millis(self.cfg.connect_timeout_ms);
        if let Some(path) = &self.unix_path {
            return self.connect_unix(path.clone(), timeout).await;
        }
        let addr = (self.cfg.host.as_str(), self.cfg.port);
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(self.connect_error(e)),
            Err(_) => {
                return Err(self.connect_error(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                )))
            }
        };
        let peer = tcp.peer_addr().map_err(|e| self.connect_error(e))?;
        self.finish_connect(tcp, peer, timeout).await
    }

    async fn connect_unix(
        &self,
        path: Arc<Path>,
        timeout: Duration,
    ) -> Result<UpstreamConn, AdapterError> {
        let unix = tokio::time::timeout(timeout, UnixStream::connect(&*path))
            .await
            .map_err(|_| self.connect_error(std::io::ErrorKind::TimedOut.into()))?
            .map_err(|e| self.connect_error(e))?;
        Ok(UpstreamConn {
            conn: Conn::Unix(unix),
            addr: UpstreamAddr::Unix(path),
            tls: false,
        })
    }

    /// Connects to one specific resolved address (used for cancel requests).
    pub(crate) async fn connect_addr(
        &self,
        addr: &UpstreamAddr,
        tls: bool,
    ) -> Result<UpstreamConn, AdapterError> {
        let timeout = Duration::from_millis(self.cfg.connect_timeout_ms);
        let addr = match addr {
            UpstreamAddr::Tcp(addr) => *addr,
            UpstreamAddr::Unix(path) => return self.connect_unix(path.clone(), timeout).await,
        };
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| self.connect_error(std::io::ErrorKind::TimedOut.into()))?
            .map_err(|e| self.connect_error(e))?;
        if !tls {
            tcp.set_nodelay(true).map_err(|e| self.connect_error(e))?;
            return Ok(UpstreamConn {
                conn: Conn::Plain(tcp),
                addr: UpstreamAddr::Tcp(addr),
                tls: false,
            });
        }
        self.finish_connect(tcp, addr, timeout).await
    }

    async fn finish_connect(
        &self,
        mut tcp: TcpStream,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<UpstreamConn, AdapterError> {
        tcp.set_nodelay(true).map_err(|e| self.connect_error(e))?;
        let (Some(tls), Some(server_name)) = (&self.tls, &self.server_name) else {
            return Ok(UpstreamConn {
                conn: Conn::Plain(tcp),
                addr: UpstreamAddr::Tcp(addr),
                tls: false,
            });
        };
        let mut req = BytesMut::with_capacity(8);
        SslRequest.encode(&mut req);
        let answer = tokio::time::timeout(timeout, async {
            tcp.write_all(&req).await?;
            // Read exactly one byte: anything after it must go through TLS.
            tcp.read_u8().await
        })
        .await
        .map_err(|_| self.connect_error(std::io::ErrorKind::TimedOut.into()))?
        .map_err(|e| self.connect_error(e))?;
        match answer {
            b'S' => {
                let connector = tokio_rustls::TlsConnector::from(tls.clone());
                let stream =
                    tokio::time::timeout(timeout, connector.connect(server_name.clone(), tcp))
                        .await
                        .map_err(|_| AdapterError::Tls("upstream TLS handshake timed out".into()))?
                        .map_err(|e| AdapterError::Tls(format!("upstream TLS handshake: {e}")))?;
                Ok(UpstreamConn {
                    conn: Conn::Tls(Box::new(tokio_rustls::TlsStream::Client(stream))),
                    addr: UpstreamAddr::Tcp(addr),
                    tls: true,
                })
            }
            b'N' if self.cfg.sslmode == SslMode::Prefer => Ok(UpstreamConn {
                conn: Conn::Plain(tcp),
                addr: UpstreamAddr::Tcp(addr),
                tls: false,
            }),
            b'N' => Err(AdapterError::Upstream(
                "upstream server does not support TLS but sslmode requires it".into(),
            )),
            other => Err(AdapterError::Upstream(format!(
                "unexpected answer {:?} to SSLRequest",
                other as char
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_url() {
        let c = UpstreamConfig::from_url(
            "postgresql://al%40ice:p%3Ass%2Fw@db.example.com:6543/shop%20db?sslmode=require&application_name=x",
        )
        .unwrap();
        assert_eq!(c.host, "db.example.com");
        assert_eq!(c.port, 6543);
        assert_eq!(c.user.as_deref(), Some("al@ice"));
        assert_eq!(c.password.as_deref(), Some("p:ss/w"));
        assert_eq!(c.dbname.as_deref(), Some("shop db"));
        assert_eq!(c.sslmode, SslMode::Require);
        assert!(!format!("{c:?}").contains("p:ss/w"));
    }

    #[test]
    fn parses_defaults_and_ipv6() {
        let c = UpstreamConfig::from_url("postgres://[::1]/app").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 5432));
        assert_eq!(c.address(), "[::1]:5432");
        assert_eq!(c.sslmode, SslMode::Prefer);
        assert_eq!(c.user, None);
        let c = UpstreamConfig::from_url("postgres://u@127.0.0.1:5433").unwrap();
        assert_eq!(c.dbname, None);
        assert_eq!(c.port, 5433);
        let c = UpstreamConfig::from_url(
            "postgres://h/db?sslmode=verify-full&sslrootcert=/tmp/ca.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.sslrootcert, Some(PathBuf::from("/tmp/ca.pem")));
        assert_eq!(c.connect_timeout_ms, 3000);
    }

    #[test]
    fn parses_unix_socket_hosts() {
        let c = UpstreamConfig::from_url(
            "postgresql://u:pw@/db?host=/var/run/postgresql&port=5433&sslmode=verify-full",
        )
        .unwrap();
        assert!(c.is_unix_socket());
        assert_eq!(c.port, 5433);
        assert_eq!(c.user.as_deref(), Some("u"));
        assert_eq!(
            c.unix_socket_path(),
            Some(PathBuf::from("/var/run/postgresql/.s.PGSQL.5433"))
        );
        assert_eq!(c.address(), "/var/run/postgresql/.s.PGSQL.5433");
        // No TLS over a Unix socket, whatever sslmode says.
        assert!(UpstreamConnector::new(c).unwrap().tls.is_none());
        let c = UpstreamConfig::from_url("postgresql:///app?host=%2Ftmp").unwrap();
        assert_eq!(c.dbname.as_deref(), Some("app"));
        assert_eq!(
            c.unix_socket_path(),
            Some(PathBuf::from("/tmp/.s.PGSQL.5432"))
        );
        let c = UpstreamConfig::from_url("postgresql://%2Frun%2Fpg:6000/app").unwrap();
        assert_eq!(
            c.unix_socket_path(),
            Some(PathBuf::from("/run/pg/.s.PGSQL.6000"))
        );
        assert!(!UpstreamConfig::from_url("postgres://h/db")
            .unwrap()
            .is_unix_socket());
    }

    #[test]
    fn rejects_bad_urls() {
        for url in [
            "mysql://h/db",
            "postgres://h:notaport/db",
            "postgres://h:0/db",
            "postgres://h/db?sslmode=bogus",
            "postgres://h/db?sslmode=verify-full",
            "postgres://a,b/db",
            "postgres:///db?host=/tmp&port=0",
            "postgres://u:%zz@h/db",
            "postgres://[::1/db",
        ] {
            assert!(UpstreamConfig::from_url(url).is_err(), "{url}");
        }
    }
}
