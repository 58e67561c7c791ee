//! Fetching a snapshot file from another instance of the fleet
//! (`GET /v1/snapshot` on its admin listener, with a `peer` token), so that
//! a new instance starts from a file instead of a full build.
//!
//! The file is streamed to a temporary name beside the destination and
//! renamed only when complete; [`crate::node::snapfile::read`] then checks it like
//! any other (checksum, store id, settings) before anything is served.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use crate::node::Peer;

/// How long a whole transfer may take.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Why a snapshot file could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The URL is not `http(s)://host[:port]`.
    #[error("`peers`: must be a URL such as `https://10.0.0.2:7071`")]
    Url,
    /// An `https` peer without `--peer-ca`.
    #[error("`peer_ca`: an https peer needs the fleet's CA")]
    NoCa,
    /// The CA file cannot be used.
    #[error("`peer_ca`: cannot be read as PEM CA certificates")]
    Ca,
    /// Connecting, sending or receiving failed.
    #[error("transfer failed: {0}")]
    Transfer(String),
    /// The peer answered something else than the file.
    #[error("the peer answered {0}")]
    Status(StatusCode),
    /// It took too long.
    #[error("the transfer timed out")]
    Timeout,
}

fn transfer(e: impl std::fmt::Display) -> PeerError {
    PeerError::Transfer(e.to_string())
}

/// Fetches `peer`'s snapshot file into `dest`.
pub async fn fetch(peer: &Peer, dest: &Path) -> Result<(), PeerError> {
    tokio::time::timeout(TIMEOUT, fetch_inner(peer, dest))
        .await
        .map_err(|_| PeerError::Timeout)?
}

async fn fetch_inner(peer: &Peer, dest: &Path) -> Result<(), PeerError> {
    let uri: Uri = format!("{}/v1/snapshot", peer.url.trim_end_matches('/'))
        .parse()
        .map_err(|_| PeerError::Url)?;
    let host = uri.host().ok_or(PeerError::Url)?.to_owned();
    let tcp = |port: u16| {
        let host = host.clone();
        async move {
            tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(transfer)
        }
    };
    match uri.scheme_str() {
        Some("http") => {
            let stream = tcp(uri.port_u16().unwrap_or(80)).await?;
            download(stream, &uri, &host, peer, dest).await
        }
        Some("https") => {
            let ca = peer.ca.as_deref().ok_or(PeerError::NoCa)?;
            let connector = tokio_rustls::TlsConnector::from(client_config(ca)?);
            let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|_| PeerError::Url)?;
            let stream = tcp(uri.port_u16().unwrap_or(443)).await?;
            let stream = connector.connect(name, stream).await.map_err(transfer)?;
            download(stream, &uri, &host, peer, dest).await
        }
        _ => Err(PeerError::Url),
    }
}

/// A TLS client that trusts only the fleet's CA (`--peer-ca`).
fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, PeerError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).map_err(|_| PeerError::Ca)? {
        roots.add(c.map_err(|_| PeerError::Ca)?).map_err(|_| PeerError::Ca)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(transfer)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Removes a download's temporary file unless forgotten (after the rename).
struct Partial<'a>(&'a Path);

impl Drop for Partial<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// Streams `body` into `tmp`, syncs it and renames it to `dest`.
async fn save(mut body: hyper::body::Incoming, tmp: &Path, dest: &Path) -> Result<(), PeerError> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)
        .await
        .map_err(transfer)?;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(transfer)?.into_data() {
            file.write_all(&data).await.map_err(transfer)?;
        }
    }
    // tokio hands writes to a blocking thread: a failed one (a full disk)
    // is reported by `flush`, not by `write_all` or `sync_all`.
    file.flush().await.map_err(transfer)?;
    file.sync_all().await.map_err(transfer)?;
    drop(file);
    tokio::fs::rename(tmp, dest).await.map_err(transfer)
}

/// `GET /v1/snapshot` over `stream`, into `dest`.
async fn download<S>(stream: S, uri: &Uri, host: &str, peer: &Peer, dest: &Path) -> Result<(), PeerError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(transfer)?;
    let conn = tokio::spawn(conn);
    let req = Request::get(uri.path())
        .header(hyper::header::HOST, host)
        .header(hyper::header::AUTHORIZATION, format!("Bearer {}", peer.token))
        .body(Empty::<Bytes>::new())
        .map_err(transfer)?;
    let res = sender.send_request(req).await.map_err(transfer)?;
    if res.status() != StatusCode::OK {
        return Err(PeerError::Status(res.status()));
    }
    let tmp = dest.with_extension("download");
    // A full disk, a broken transfer or the caller's timeout (which drops
    // this future mid-way): nothing half-written stays.
    let partial = Partial(&tmp);
    save(res.into_body(), &tmp, dest).await?;
    std::mem::forget(partial);
    conn.abort();
    Ok(())
}
