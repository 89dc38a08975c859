//! Upstream connections: ordinary SQL sessions (tokio-postgres) and the walsender session
//! (pg_walstream's native connection) built from the same configuration.
//!
//! TLS follows libpq's `sslmode` semantics for the modes tokio-postgres parses: `disable`
//! (plain), `prefer` (TLS if the server offers it), `require` (TLS or fail). Like libpq, neither
//! `prefer` nor `require` verifies the server certificate; `verify-ca`/`verify-full` are not
//! accepted by the URL parser and are reported as invalid configuration.
//!
//! Unix-socket upstreams (`host=/dir`): tokio-postgres connects to `<dir>/.s.PGSQL.<port>`
//! itself, without TLS (Postgres offers none there; `sslmode` is ignored like libpq does).
//! pg_walstream's native walsender connection only speaks TCP, so each walsender session goes
//! through a one-shot loopback relay to the socket ([`unix_bridge`]).

use std::future::Future;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Config, NoTls};
use tracing::{debug, warn};

use crate::error::ReplicationError;

/// Opens an ordinary SQL session and drives its connection on a spawned task.
pub(crate) async fn connect(config: &Config) -> Result<Client, ReplicationError> {
    let connect_err = ReplicationError::pg("connecting to the upstream");
    let unix = unix_socket_path(config).is_some();
    match config.get_ssl_mode() {
        _ if unix => {
            let (client, connection) = config.connect(NoTls).await.map_err(connect_err)?;
            spawn_connection(connection);
            Ok(client)
        }
        SslMode::Disable => {
            let (client, connection) = config.connect(NoTls).await.map_err(connect_err)?;
            spawn_connection(connection);
            Ok(client)
        }
        _ => {
            let (client, connection) = config
                .connect(RustlsConnect::new()?)
                .await
                .map_err(connect_err)?;
            spawn_connection(connection);
            Ok(client)
        }
    }
}

fn spawn_connection<F, E>(connection: F)
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(error = %e, "upstream connection ended with an error");
        }
    });
}

/// The upstream's socket file (`<dir>/.s.PGSQL.<port>`) when its host is a Unix-socket
/// directory.
pub(crate) fn unix_socket_path(config: &Config) -> Option<PathBuf> {
    match config.get_hosts().first() {
        Some(Host::Unix(dir)) => {
            let port = config.get_ports().first().copied().unwrap_or(5432);
            Some(dir.join(format!(".s.PGSQL.{port}")))
        }
        _ => None,
    }
}

/// A libpq key/value conninfo for the walsender session (`replication=database`), derived
/// from the parsed config so both kinds of connection reach the same server as the same role.
/// For a Unix-socket upstream, `bridge_port` is the loopback port of a [`unix_bridge`] to it.
pub(crate) fn replication_conninfo(
    config: &Config,
    bridge_port: Option<u16>,
) -> Result<String, ReplicationError> {
    let (host, port) = match (config.get_hosts().first(), bridge_port) {
        (Some(Host::Unix(_)), Some(port)) => (Ipv4Addr::LOCALHOST.to_string(), port),
        (Some(Host::Unix(_)), None) => {
            return Err(ReplicationError::InvalidConfig(
                "a Unix-socket upstream needs a relay for the walsender session".into(),
            ))
        }
        (Some(Host::Tcp(h)), _) => (h.clone(), 0),
        (None, _) => match config.get_hostaddrs().first() {
            Some(addr) => (addr.to_string(), 0),
            None => ("localhost".to_string(), 0),
        },
    };
    let port = match port {
        0 => config.get_ports().first().copied().unwrap_or(5432),
        p => p,
    };
    let user = config
        .get_user()
        .ok_or_else(|| ReplicationError::InvalidConfig("the upstream URL names no user".into()))?;
    let dbname = config.get_dbname().unwrap_or(user);
    let sslmode = match config.get_ssl_mode() {
        _ if bridge_port.is_some() => "disable",
        SslMode::Disable => "disable",
        SslMode::Require => "require",
        _ => "prefer",
    };
    let mut parts = vec![
        format!("host={}", quote(&host)),
        format!("port={port}"),
        format!("user={}", quote(user)),
        format!("dbname={}", quote(dbname)),
        format!("sslmode={sslmode}"),
        "replication=database".to_string(),
    ];
    if let Some(pw) = config.get_password() {
        let pw = std::str::from_utf8(pw).map_err(|_| {
            ReplicationError::InvalidConfig("the upstream password is not UTF-8".into())
        })?;
        parts.push(format!("password={}", quote(pw)));
    }
    if let Some(t) = config.get_connect_timeout() {
        parts.push(format!("connect_timeout={}", t.as_secs().max(1)));
    }
    Ok(parts.join(" "))
}

/// How long a walsender relay waits for its one connection.
const BRIDGE_ACCEPT_TIMEOUT_MS: u64 = 60_000;

/// A one-shot relay from a fresh loopback TCP port to the upstream's Unix socket, for one
/// walsender session (pg_walstream's native connection is TCP-only). It accepts exactly one
/// connection, and only one this process made (checked in `/proc`): over a Unix socket the
/// upstream may authenticate by the OS identity of the connecting process (`peer`), so no
/// other local user may ride on the relay. Returns the port; must be called inside a Tokio
/// runtime.
pub(crate) fn unix_bridge(path: &Path) -> Result<u16, ReplicationError> {
    let err = |what: &str, e: io::Error| {
        ReplicationError::Stream(pg_walstream::ReplicationError::transient_connection(
            format!("walsender relay to {}: {what}: {e}", path.display()),
        ))
    };
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|e| err("no async runtime", io::Error::other(e.to_string())))?;
    let std_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| err("binding a loopback port", e))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| err("binding a loopback port", e))?;
    let port = std_listener
        .local_addr()
        .map_err(|e| err("binding a loopback port", e))?
        .port();
    let _guard = handle.enter();
    let listener = tokio::net::TcpListener::from_std(std_listener)
        .map_err(|e| err("binding a loopback port", e))?;
    let path = path.to_path_buf();
    handle.spawn(async move {
        let deadline =
            tokio::time::sleep(std::time::Duration::from_millis(BRIDGE_ACCEPT_TIMEOUT_MS));
        tokio::pin!(deadline);
        let mut tcp = loop {
            tokio::select! {
                _ = &mut deadline => {
                    warn!(port, "walsender relay: nobody connected; closing");
                    return;
                }
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) if connection_is_ours(peer.port(), port) => break tcp,
                    Ok((_, peer)) => warn!(%peer, port,
                        "walsender relay: refused a connection this process did not make"),
                    Err(e) => {
                        warn!(error = %e, "walsender relay: accept failed");
                        return;
                    }
                },
            }
        };
        drop(listener);
        let _ = tcp.set_nodelay(true);
        let mut unix = match tokio::net::UnixStream::connect(&path).await {
            Ok(u) => u,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "walsender relay: cannot connect");
                return;
            }
        };
        if let Err(e) = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await {
            debug!(error = %e, "walsender relay ended");
        }
    });
    Ok(port)
}

/// Whether the loopback connection from `peer_port` to `listen_port` was made by this process:
/// its socket (found in `/proc/net/tcp`) must be one of this process's open descriptors.
fn connection_is_ours(peer_port: u16, listen_port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let port_of = |addr: &str| {
        addr.rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && port_of(f[1]) == Some(peer_port) && port_of(f[2]) == Some(listen_port))
            .then(|| f[9].to_string())
    });
    let Some(inode) = inode.filter(|i| i != "0") else {
        return false;
    };
    let want = format!("socket:[{inode}]");
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == want.as_str())
    })
}

/// Single-quotes a conninfo value; pg_walstream folds `''` into one quote.
fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// tokio-postgres TLS over rustls, without certificate verification (libpq `require`).
#[derive(Clone)]
pub(crate) struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
}

impl RustlsConnect {
    pub(crate) fn new() -> Result<RustlsConnect, ReplicationError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ReplicationError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth();
        Ok(RustlsConnect {
            config: Arc::new(config),
        })
    }
}

pub(crate) struct RustlsConnector {
    config: Arc<rustls::ClientConfig>,
    domain: ServerName<'static>,
}

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnector;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnector> {
        let domain = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnector {
            config: self.config.clone(),
            domain,
        })
    }
}

impl<S> TlsConnect<S> for RustlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.domain, stream)
                .await?;
            Ok(RustlsStream(tls))
        })
    }
}

pub(crate) struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

/// libpq's `sslmode=require`: encrypt, but accept any certificate. Signatures are still
/// checked so the handshake itself is sound.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_from_url() {
        let cfg: Config = "postgresql://u:p'w@127.0.0.1:5433/db?sslmode=disable"
            .parse()
            .unwrap();
        assert_eq!(
            replication_conninfo(&cfg, None).unwrap(),
            "host='127.0.0.1' port=5433 user='u' dbname='db' sslmode=disable \
             replication=database password='p''w'"
        );
    }

    #[test]
    fn conninfo_over_unix_socket_uses_the_relay() {
        let cfg: Config = "postgresql://u@/db?host=/run/pg&port=6000&sslmode=require"
            .parse()
            .unwrap();
        assert_eq!(
            unix_socket_path(&cfg),
            Some(PathBuf::from("/run/pg/.s.PGSQL.6000"))
        );
        assert!(replication_conninfo(&cfg, None).is_err());
        assert_eq!(
            replication_conninfo(&cfg, Some(40000)).unwrap(),
            "host='127.0.0.1' port=40000 user='u' dbname='db' sslmode=disable \
             replication=database"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relay_serves_this_process_only_once() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = std::env::temp_dir().join(format!("larder-relay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".s.PGSQL.1");
        let _ = std::fs::remove_file(&path);
        let server = tokio::net::UnixListener::bind(&path).unwrap();
        let port = unix_bridge(&path).unwrap();
        let mut tcp = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        let (mut unix, _) = server.accept().await.unwrap();
        tcp.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        unix.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        unix.write_all(b"pong").await.unwrap();
        tcp.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        // One shot: the listener is gone.
        assert!(tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
