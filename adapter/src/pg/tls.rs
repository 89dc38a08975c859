//! TLS configuration: the server side (clients -> Larder) and the client side (Larder ->
//! upstream, per libpq's sslmode).
//!
//! The whole project uses exactly one crypto backend, aws-lc-rs. No process-wide default
//! provider is installed here: every config is built with an explicit provider.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_name, WebPkiServerVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::upstream::{SslMode, UpstreamConfig};
use crate::AdapterError;

/// ALPN protocol name Postgres clients use for direct TLS (`sslnegotiation=direct`).
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Loads a PEM certificate chain and private key into a rustls server configuration for
/// clients connecting to Larder.
pub fn load_tls_config(
    cert_pem_path: &Path,
    key_pem_path: &Path,
) -> Result<Arc<rustls::ServerConfig>, AdapterError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_pem_path)
        .map_err(|e| AdapterError::Config(format!("reading {}: {e}", cert_pem_path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| AdapterError::Config(format!("parsing {}: {e}", cert_pem_path.display())))?;
    if certs.is_empty() {
        return Err(AdapterError::Config(format!(
            "{} contains no certificate",
            cert_pem_path.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key_pem_path).map_err(|e| {
        AdapterError::Config(format!("reading key {}: {e}", key_pem_path.display()))
    })?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| AdapterError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| AdapterError::Config(format!("certificate/key: {e}")))?;
    cfg.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(cfg))
}

fn load_roots(path: &Path) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), AdapterError> {
    let mut roots = RootCertStore::empty();
    let mut ders = Vec::new();
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| {
        AdapterError::Config(format!("reading sslrootcert {}: {e}", path.display()))
    })?;
    for cert in iter {
        let cert = cert.map_err(|e| {
            AdapterError::Config(format!("parsing sslrootcert {}: {e}", path.display()))
        })?;
        ders.push(cert.clone());
        roots
            .add(cert)
            .map_err(|e| AdapterError::Config(format!("sslrootcert {}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(AdapterError::Config(format!(
            "sslrootcert {} contains no certificate",
            path.display()
        )));
    }
    Ok((roots, ders))
}

/// The TLS client configuration for upstream connections, or `None` for `sslmode=disable`.
pub(crate) fn upstream_client_config(
    cfg: &UpstreamConfig,
) -> Result<Option<Arc<rustls::ClientConfig>>, AdapterError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| AdapterError::Tls(e.to_string()))?;
    let config = match cfg.sslmode {
        SslMode::Disable => return Ok(None),
        SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertificateVerification { provider }))
            .with_no_client_auth(),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let path = cfg.sslrootcert.as_deref().ok_or_else(|| {
                AdapterError::Config("sslmode verify-ca/verify-full needs sslrootcert".into())
            })?;
            let (store, roots) = load_roots(path)?;
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
                .build()
                .map_err(|e| AdapterError::Config(format!("sslrootcert: {e}")))?;
            let verifier = RootedVerification {
                inner,
                roots,
                check_name: cfg.sslmode == SslMode::VerifyFull,
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
    };
    Ok(Some(Arc::new(config)))
}

/// `sslmode=require`/`prefer`: encrypt, but accept any certificate (as libpq does). Handshake
/// signatures are still checked so the session keys belong to whoever holds the presented key.
#[derive(Debug)]
struct NoCertificateVerification {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoCertificateVerification {
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
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `sslmode=verify-ca`/`verify-full`: the chain must lead to a root from `sslrootcert`;
/// verify-full also checks the host name. webpki checks the chain before the name, so a name
/// error means the chain was valid. Like libpq/OpenSSL, a server certificate that is itself
/// listed in `sslrootcert` (a pinned self-signed certificate) is trusted as is (webpki would
/// reject it as "CA used as end entity"); its validity period is then not checked.
#[derive(Debug)]
struct RootedVerification {
    inner: Arc<WebPkiServerVerifier>,
    roots: Vec<CertificateDer<'static>>,
    check_name: bool,
}

impl ServerCertVerifier for RootedVerification {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match result {
            Ok(v) => Ok(v),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            Err(e) => {
                if !self.roots.iter().any(|r| r.as_ref() == end_entity.as_ref()) {
                    return Err(e);
                }
                if self.check_name {
                    let parsed = ParsedCertificate::try_from(end_entity)?;
                    verify_server_name(&parsed, server_name)?;
                }
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
