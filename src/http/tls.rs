//! TLS for the admin listener (SPEC §8), with rustls: a certificate chain
//! and a key from PEM files, re-read on demand (SIGHUP) without dropping a
//! connection. Every byte of the admin API leaves the host encrypted:
//! bearer tokens, restrictions and the population files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::core::model::HsaId;

/// Why the certificate or key cannot be used; the message names the file,
/// never its contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or holds no PEM of the kind expected.
    #[error("`{0}`: {1}")]
    File(PathBuf, &'static str),
    /// rustls refused the pair (the key does not match, say).
    #[error("the certificate and key cannot be used together: {0}")]
    Config(String),
}

/// Where the PEM files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA that issues staff's client certificates (SITHS): with it,
    /// clients are asked for a certificate and one presented must verify.
    /// Systems without one still use bearer tokens.
    pub client_ca: Option<PathBuf>,
}

/// What a connection's verified client certificate says: the HSA-ID of its
/// holder (subject `serialNumber`, as on SITHS cards, or a URI SAN), or
/// `None` when it carries none. Put into each request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert(pub Option<HsaId>);

impl ClientCert {
    /// Reads the holder's HSA-ID from a certificate (DER).
    pub fn of(der: &[u8]) -> ClientCert {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            return ClientCert(None);
        };
        let serial = cert
            .subject()
            .iter_by_oid(&x509_parser::oid_registry::OID_X509_SERIALNUMBER)
            .find_map(|a| a.as_str().ok().and_then(|s| HsaId::parse(s).ok()));
        let uri = || {
            cert.subject_alternative_name().ok().flatten().and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    GeneralName::URI(u) => u.rsplit(':').next().and_then(|s| HsaId::parse(s).ok()),
                    _ => None,
                })
            })
        };
        ClientCert(serial.or_else(uri))
    }
}

fn read_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|_| TlsError::File(files.cert.clone(), "cannot be read as PEM"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::File(files.cert.clone(), "holds a damaged certificate"))?;
    if certs.is_empty() {
        return Err(TlsError::File(files.cert.clone(), "holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|_| TlsError::File(files.key.clone(), "holds no private key in PEM"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in
                CertificateDer::pem_file_iter(ca).map_err(|_| TlsError::File(ca.clone(), "cannot be read as PEM"))?
            {
                let c = c.map_err(|_| TlsError::File(ca.clone(), "holds a damaged certificate"))?;
                roots
                    .add(c)
                    .map_err(|_| TlsError::File(ca.clone(), "holds a certificate that is not a CA"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TLS configuration that can be re-read from its files while serving:
/// each new connection gets the configuration current when it arrives.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    current: ArcSwap<ServerConfig>,
}

impl Tls {
    /// Reads `files` (refusing to start without a usable pair).
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let config = read_config(&files)?;
        Ok(Tls {
            files,
            current: ArcSwap::new(config),
        })
    }

    /// Reads the files again; on failure the old configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.current.store(read_config(&self.files)?);
        Ok(())
    }

    /// The acceptor for the next connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// The certificate file, for logs.
    pub fn cert_path(&self) -> &Path {
        &self.files.cert
    }
}
