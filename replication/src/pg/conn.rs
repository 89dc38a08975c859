//! Upstream connections: ordinary SQL sessions (tokio-postgres) and the walsender session
//! (pg_walstream's native connection) built from the same configuration.
//!
//! TLS follows libpq's `sslmode` semantics for the modes tokio-postgres parses: `disable`
//! (plain), `prefer` (TLS if the server offers it), `require` (TLS or fail). Like libpq, neither
//! `prefer` nor `require` verifies the server certificate; `verify-ca`/`verify-full` are not
//! accepted by the URL parser and are reported as invalid configuration.

use std::future::Future;
use std::io;
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
use tracing::warn;

use crate::error::ReplicationError;

/// Opens an ordinary SQL session and drives its connection on a spawned task.
pub(crate) async fn connect(config: &Config) -> Result<Client, ReplicationError> {
    let connect_err = ReplicationError::pg("connecting to the upstream");
    match config.get_ssl_mode() {
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

/// A libpq key/value conninfo for the walsender session (`replication=database`), derived
/// from the parsed config so both kinds of connection reach the same server as the same role.
pub(crate) fn replication_conninfo(config: &Config) -> Result<String, ReplicationError> {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(_)) => {
            return Err(ReplicationError::InvalidConfig(
                "replication over a Unix socket is not supported; use a TCP host".into(),
            ))
        }
        None => match config.get_hostaddrs().first() {
            Some(addr) => addr.to_string(),
            None => "localhost".to_string(),
        },
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config
        .get_user()
        .ok_or_else(|| ReplicationError::InvalidConfig("the upstream URL names no user".into()))?;
    let dbname = config.get_dbname().unwrap_or(user);
    let sslmode = match config.get_ssl_mode() {
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
            replication_conninfo(&cfg).unwrap(),
            "host='127.0.0.1' port=5433 user='u' dbname='db' sslmode=disable \
             replication=database password='p''w'"
        );
    }
}
