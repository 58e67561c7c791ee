//! The admin listener over HTTPS (SPEC §8), with a CA and certificates made
//! in the test: a client that trusts the CA gets its answers; plain HTTP to
//! the TLS listener gets nothing; a re-read certificate (SIGHUP) is served
//! to the next connection; and the binary refuses a plain admin listener
//! reachable from other hosts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use guardian_access::http::tls::{Tls, TlsFiles};
use guardian_access::store::Store;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, ServerName};
use support::{AUDITOR, POPULATION, quick_node};

/// A CA, and a server certificate for 127.0.0.1 and localhost it signed,
/// written as PEM files; the CA's certificate for clients.
fn certificates(dir: &Path, name: &str) -> (TlsFiles, CertificateDer<'static>) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("Test CA {name}"));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let files = TlsFiles {
        cert: dir.join(format!("{name}-cert.pem")),
        key: dir.join(format!("{name}-key.pem")),
        client_ca: None,
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    std::fs::write(dir.join(format!("{name}-ca.pem")), ca.pem()).unwrap();
    (files, ca.der().clone())
}

/// A client certificate: its chain and key.
type ClientId = (Vec<CertificateDer<'static>>, rustls_pki_types::PrivateKeyDer<'static>);

fn client_config(ca: &CertificateDer<'static>, id: Option<&ClientId>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match id {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder.with_client_auth_cert(chain.clone(), key.clone_key()).unwrap(),
    })
}

/// A staff CA (as SITHS issues cards), and a way to issue client
/// certificates from it with a subject `serialNumber`.
struct StaffCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl StaffCa {
    fn new(dir: &Path) -> (StaffCa, std::path::PathBuf) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test staff CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let path = dir.join("staff-ca.pem");
        std::fs::write(&path, issuer.pem()).unwrap();
        (StaffCa { issuer }, path)
    }

    fn card(&self, serial_number: Option<&str>) -> ClientId {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "A person");
        if let Some(s) = serial_number {
            // 2.5.4.5 serialNumber: where a SITHS card carries the HSA-ID.
            params
                .distinguished_name
                .push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 5]), s);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        (vec![cert.der().clone()], key)
    }
}

/// One HTTPS request; an error if the handshake or the exchange fails.
async fn https(
    addr: std::net::SocketAddr,
    ca: &CertificateDer<'static>,
    token: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), Box<dyn std::error::Error + Send + Sync>> {
    https_as(addr, ca, None, token, path, body).await
}

async fn https_as(
    addr: std::net::SocketAddr,
    ca: &CertificateDer<'static>,
    id: Option<&ClientId>,
    token: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), Box<dyn std::error::Error + Send + Sync>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(client_config(ca, id));
    let stream = connector.connect(ServerName::try_from("127.0.0.1")?, tcp).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let method = if body.is_empty() { "GET" } else { "POST" };
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body.to_owned())))?;
    let res = sender.send_request(req).await?;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test]
async fn the_admin_api_is_served_over_tls_and_reloads_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (files, ca) = certificates(dir.path(), "first");
    let tls = Arc::new(Tls::load(files.clone()).unwrap());
    let store = Store::open_sqlite(&dir.path().join("data")).await.unwrap();
    let i = support::Instance::start_tls(store, quick_node(None), tls.clone()).await;

    let family = r#"{"id": "201509162390", "protected": false, "guardians": ["197701012382"]}"#;
    let (status, body) = https(i.admin, &ca, POPULATION, "/v1/population", family).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = https(i.admin, &ca, AUDITOR, "/v1/subjects/201509162390", "")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("197701012382"));

    // Plain HTTP to the TLS listener gets no answer.
    let plain = support::try_send(i.admin, "GET", "/v1/subjects/201509162390", &[], Bytes::new()).await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    // A client that does not trust the certificate's CA refuses it.
    let (_, stranger_ca) = certificates(dir.path(), "stranger");
    assert!(
        https(i.admin, &stranger_ca, AUDITOR, "/v1/subjects/201509162390", "")
            .await
            .is_err()
    );

    // A renewed certificate (another CA, here) is served after a reload;
    // a pair that cannot be used keeps the old one.
    let (renewed, new_ca) = certificates(dir.path(), "renewed");
    std::fs::copy(&renewed.cert, &files.cert).unwrap();
    std::fs::copy(&renewed.key, &files.key).unwrap();
    tls.reload().unwrap();
    assert!(
        https(i.admin, &new_ca, AUDITOR, "/v1/subjects/201509162390", "")
            .await
            .is_ok()
    );
    assert!(
        https(i.admin, &ca, AUDITOR, "/v1/subjects/201509162390", "")
            .await
            .is_err()
    );
    std::fs::write(&files.key, "not a key").unwrap();
    let e = tls.reload().unwrap_err().to_string();
    assert!(e.contains("-key.pem") && !e.contains("not a key"), "{e}");
    assert!(
        https(i.admin, &new_ca, AUDITOR, "/v1/subjects/201509162390", "")
            .await
            .is_ok()
    );
    i.stop().await;
}

/// Staff identified by their card (a client certificate with their HSA-ID
/// in the subject's `serialNumber`): writes as their unit only, recorded
/// with their name and HSA-ID; an unknown or unnamed card is `401`;
/// systems without a card still use their tokens.
#[tokio::test]
async fn client_certificates_name_the_person_who_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut files, ca) = certificates(dir.path(), "server");
    let (staff, staff_pem) = StaffCa::new(dir.path());
    files.client_ca = Some(staff_pem);
    let tls = Arc::new(Tls::load(files).unwrap());
    let store = Store::open_sqlite(&dir.path().join("data")).await.unwrap();
    let i = support::Instance::start_tls(store, quick_node(None), tls).await;
    let family = r#"{"id": "201509162390", "protected": false, "guardians": ["197701012382"]}"#;
    // A system, without a card: its token.
    let (status, body) = https(i.admin, &ca, POPULATION, "/v1/population", family).await.unwrap();
    assert_eq!(status, 200, "{body}");

    let anna = staff.card(Some(support::PERSON));
    let block = |unit: &str| {
        format!(
            r#"{{"kind": "block", "subject": "201509162390", "guardian": "197701012382", "issuing_unit": "{unit}",
                "decided_by": {{"name": "Anna Andersson"}}, "basis": "Orosanmälan"}}"#
        )
    };
    // No token is needed with a card.
    let (status, body) = https_as(i.admin, &ca, Some(&anna), "", "/v1/restrictions", &block(support::UNIT))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let (status, body) = https_as(
        i.admin,
        &ca,
        Some(&anna),
        "",
        "/v1/restrictions",
        &block(support::OTHER_UNIT),
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("wrong_unit"));
    // The audit trail names the person, with their HSA-ID.
    let (_, audit) = https(i.admin, &ca, AUDITOR, "/v1/audit?subject=201509162390", "")
        .await
        .unwrap();
    let audit: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let write = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "create_restriction")
        .unwrap();
    assert_eq!(
        (write["by"].as_str(), write["hsa_id"].as_str()),
        (Some("Anna Andersson"), Some(support::PERSON))
    );

    // A card of someone unknown, or one without an HSA-ID: 401, even with a token.
    for card in [staff.card(Some("SE2321000131-P000000000099")), staff.card(None)] {
        let (status, body) = https_as(i.admin, &ca, Some(&card), AUDITOR, "/v1/subjects/201509162390", "")
            .await
            .unwrap();
        assert_eq!(status, 401, "{body}");
    }
    // A card from another CA does not get past the handshake.
    let elsewhere = tempfile::tempdir().unwrap();
    let (other_ca, _) = StaffCa::new(elsewhere.path());
    let forged = other_ca.card(Some(support::PERSON));
    assert!(
        https_as(i.admin, &ca, Some(&forged), "", "/v1/subjects/201509162390", "")
            .await
            .is_err()
    );
    i.stop().await;
}

/// A new instance fetches a peer's snapshot file over HTTPS, trusting only
/// the fleet's CA (`--peer-ca`), and the file is authenticated by the
/// store's key before it is used.
#[tokio::test]
async fn a_snapshot_file_comes_from_a_peer_over_https() {
    use guardian_access::node::Peer;
    use guardian_access::node::peer::{PeerError, fetch};
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = certificates(dir.path(), "fleet");
    let tls = Arc::new(Tls::load(files).unwrap());
    let data = dir.path().join("data");
    let store = Store::open_sqlite(&data).await.unwrap();
    let i = support::Instance::start_tls(store, quick_node(Some(data.clone())), tls).await;
    for _ in 0..200 {
        if data.join("snapshot").exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let peer = |ca: Option<std::path::PathBuf>| Peer {
        url: format!("https://127.0.0.1:{}", i.admin.port()),
        token: support::PEER.into(),
        ca,
    };
    let dest = dir.path().join("fetched");
    fetch(&peer(Some(dir.path().join("fleet-ca.pem"))), &dest)
        .await
        .unwrap();
    let store = i.service.node().unwrap().store();
    let settings = Arc::new(Default::default());
    guardian_access::node::snapfile::read(&dest, store.id(), store.snapshot_key(), settings).unwrap();
    assert!(matches!(fetch(&peer(None), &dest).await, Err(PeerError::NoCa)));
    let (_, _) = certificates(dir.path(), "stranger");
    assert!(
        fetch(&peer(Some(dir.path().join("stranger-ca.pem"))), &dest)
            .await
            .is_err()
    );
    i.stop().await;
}

/// The check listener can serve HTTPS too (optional: a sidecar on loopback
/// or a Unix socket needs none).
#[tokio::test]
async fn the_check_listener_can_serve_tls() {
    use guardian_access::clock::Clock;
    use guardian_access::http::check::{self, State};
    use guardian_access::http::listener::ListenerConfig;
    let dir = tempfile::tempdir().unwrap();
    let (files, ca) = certificates(dir.path(), "check");
    let tls = Arc::new(Tls::load(files).unwrap());
    let state = Arc::new(State::detached(ListenerConfig::default(), "test", Clock::system()));
    state
        .cell
        .publish(guardian_access::fixtures::Scenario::demo().unwrap().snapshot().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(check::run_tls(listener, state, Some(tls), async {
        let _ = stopped.await;
    }));
    let body = r#"{"actor": "197701022381", "subject": "201406012383", "service": "journal", "at": "2026-11-23T10:00:00+01:00"}"#;
    let (status, answer) = https(addr, &ca, "", "/v1/check", body).await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""reason":"sealed""#), "{answer}");
    assert!(
        support::try_send(addr, "GET", "/readyz", &[], Bytes::new())
            .await
            .is_err(),
        "plain HTTP gets nothing"
    );
    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
}

#[test]
fn the_binary_refuses_a_plain_admin_listener_off_the_host() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_guardian-access"))
        .args([
            "serve",
            "--demo",
            "--admin-addr",
            "0.0.0.0:0",
            "--check-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`admin_addr`") && err.contains("admin_tls_cert"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.pem");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_guardian-access"))
        .args([
            "serve",
            "--demo",
            "--check-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .arg("--admin-tls-cert")
        .arg(&missing)
        .arg("--admin-tls-key")
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("none.pem"));
}
