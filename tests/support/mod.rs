//! Test support shared by the integration tests: a whole instance on port 0
//! (through `service::start`, as `serve` runs it), a small HTTP client, the
//! test tokens, and a throwaway PostgreSQL.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod pg;
#[cfg(test)]
pub mod process;
#[cfg(test)]
#[allow(unused_imports)]
pub use process::Process;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use guardian_access::actor::{Caller, Role};
use guardian_access::clock::Clock;
use guardian_access::core::identity::Pid;
use guardian_access::core::model::{HsaId, Settings};
use guardian_access::core::time::Instant;
use guardian_access::http::admin::auth::Tokens;
use guardian_access::http::listener::ListenerConfig;
use guardian_access::node::NodeConfig;
use guardian_access::service::{self, Options, Service};
use guardian_access::store::Store;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

pub const UNIT: &str = "SE2321000131-E000000000001";
pub const OTHER_UNIT: &str = "SE2321000131-E000000000002";
pub const REGISTRAR: &str = "test-registrar-token-000000000000";
pub const UNIT_TOKEN: &str = "test-unit-token-00000000000000000";
pub const OTHER_UNIT_TOKEN: &str = "test-other-unit-token-00000000000";
pub const POPULATION: &str = "test-population-token-00000000000";
pub const AUDITOR: &str = "test-auditor-token-000000000000000";
pub const PEER: &str = "test-peer-token-000000000000000000";

/// The test tokens, one per role (two units).
pub fn tokens() -> Tokens {
    let caller = |name: &str, role, unit: Option<&str>| Caller {
        name: name.into(),
        role,
        unit: unit.map(|u| HsaId::parse(u).unwrap()),
        hsa_id: None,
    };
    Tokens::from_list(vec![
        (REGISTRAR.into(), caller("Kontaktcenter", Role::Registrar, None)),
        (UNIT_TOKEN.into(), caller("BUP", Role::Unit, Some(UNIT))),
        (
            OTHER_UNIT_TOKEN.into(),
            caller("Barnahus", Role::Unit, Some(OTHER_UNIT)),
        ),
        (POPULATION.into(), caller("Navet", Role::Population, None)),
        (AUDITOR.into(), caller("Spärr och logg", Role::Auditor, None)),
        (PEER.into(), caller("Peer", Role::Peer, None)),
    ])
    .with_identities(vec![Caller {
        name: "Anna Andersson".into(),
        role: Role::Unit,
        unit: Some(HsaId::parse(UNIT).unwrap()),
        hsa_id: Some(HsaId::parse(PERSON).unwrap()),
    }])
}

/// The HSA-ID of the person (a unit's head) whose client certificate the
/// tests make.
pub const PERSON: &str = "SE2321000131-P000000000001";

/// The tokens as a file, for the binary.
pub fn tokens_file(dir: &Path) -> PathBuf {
    let path = dir.join("tokens.json");
    let entry = |t: &str, name: &str, role: &str, unit: Option<&str>| {
        let mut v = serde_json::json!({"token": t, "name": name, "role": role});
        if let Some(u) = unit {
            v["unit"] = u.into();
        }
        v
    };
    let file = serde_json::json!({"tokens": [
        entry(REGISTRAR, "Kontaktcenter", "registrar", None),
        entry(UNIT_TOKEN, "BUP", "unit", Some(UNIT)),
        entry(POPULATION, "Navet", "population", None),
        entry(AUDITOR, "Spärr och logg", "auditor", None),
        entry(PEER, "Peer", "peer", None),
    ]});
    std::fs::write(&path, file.to_string()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A number generated at run time (never committed): a valid personnummer
/// for the date and serial.
pub fn pid(year: i16, month: u8, day: u8, serial: u16) -> Pid {
    guardian_access::core::identity::make_pid(year, month, day, serial).unwrap()
}

/// A committed test number (12 digits), parsed.
pub fn pid_of(s: &str) -> Pid {
    Pid::parse(s, jiff::civil::date(2026, 11, 23)).unwrap()
}

/// The instant in-process instances are pinned to (10:00 in Stockholm on
/// a Monday in November 2026): every "now" of theirs, whatever today is.
pub const NOW: &str = "2026-11-23T09:00:00Z";

/// A clock pinned to [`NOW`].
pub fn clock() -> Clock {
    Clock::manual(Instant::from_timestamp(NOW.parse().unwrap()).unwrap())
}

/// The year `n` years before today's (the system clock's), for numbers
/// generated at run time that must have an age today: tests that run the
/// binary cannot pin its clock.
pub fn years_ago(n: i16) -> i16 {
    let tz = guardian_access::core::time::stockholm().unwrap();
    guardian_access::core::time::local_date(Clock::system().now(), &tz).year() - n
}

/// Node settings that react quickly in tests.
pub fn quick_node(data_dir: Option<PathBuf>) -> NodeConfig {
    NodeConfig {
        data_dir,
        poll_every: Duration::from_millis(50),
        ..NodeConfig::default()
    }
}

/// A whole instance on port 0.
pub struct Instance {
    pub check: SocketAddr,
    pub admin: SocketAddr,
    pub service: Service,
}

impl Instance {
    pub async fn start(store: Store, node: NodeConfig) -> Instance {
        Instance::start_with(store, node, Settings::default()).await
    }

    pub async fn start_with(store: Store, node: NodeConfig, settings: Settings) -> Instance {
        Instance::start_full(store, node, settings, clock()).await
    }

    /// An instance on the system clock, for a fleet that also has real
    /// processes in it (they cannot be pinned).
    pub async fn start_on_system_clock(store: Store, node: NodeConfig) -> Instance {
        Instance::start_full(store, node, Settings::default(), Clock::system()).await
    }

    /// An instance whose admin listener serves HTTPS.
    pub async fn start_tls(store: Store, node: NodeConfig, tls: Arc<guardian_access::http::tls::Tls>) -> Instance {
        Instance::start_inner(store, node, Settings::default(), clock(), Some(tls)).await
    }

    async fn start_full(store: Store, node: NodeConfig, settings: Settings, clock: Clock) -> Instance {
        Instance::start_inner(store, node, settings, clock, None).await
    }

    /// An instance with the console on, its admin listener already bound
    /// (an identity provider needs the callback's address first).
    pub async fn start_console(
        store: Store,
        admin: tokio::net::TcpListener,
        admin_tls: Option<Arc<guardian_access::http::tls::Tls>>,
        console: guardian_access::http::console::ConsoleOptions,
        clock: Clock,
    ) -> Instance {
        let check = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (check_addr, admin_addr) = (check.local_addr().unwrap(), admin.local_addr().unwrap());
        let service = service::start(
            check,
            admin,
            async move { Ok(store) },
            Options {
                listener: ListenerConfig {
                    min_revision_wait: Duration::from_millis(200),
                    ..ListenerConfig::default()
                },
                node: quick_node(None),
                settings: Arc::new(Settings::default()),
                tokens: tokens(),
                source: "test".into(),
                clock,
                grpc: None,
                admin_tls,
                check_tls: None,
                console: Some(console),
            },
        );
        let i = Instance {
            check: check_addr,
            admin: admin_addr,
            service,
        };
        i.ready().await;
        i
    }

    /// An instance with the listeners' limits changed from the tests' usual.
    pub async fn start_limited(store: Store, node: NodeConfig, limits: impl FnOnce(&mut ListenerConfig)) -> Instance {
        let mut listener = ListenerConfig {
            min_revision_wait: Duration::from_millis(200),
            ..ListenerConfig::default()
        };
        limits(&mut listener);
        Instance::start_listening(store, node, Settings::default(), clock(), None, listener).await
    }

    async fn start_inner(
        store: Store,
        node: NodeConfig,
        settings: Settings,
        clock: Clock,
        admin_tls: Option<Arc<guardian_access::http::tls::Tls>>,
    ) -> Instance {
        let listener = ListenerConfig {
            min_revision_wait: Duration::from_millis(200),
            ..ListenerConfig::default()
        };
        Instance::start_listening(store, node, settings, clock, admin_tls, listener).await
    }

    async fn start_listening(
        store: Store,
        node: NodeConfig,
        settings: Settings,
        clock: Clock,
        admin_tls: Option<Arc<guardian_access::http::tls::Tls>>,
        listener: ListenerConfig,
    ) -> Instance {
        let check = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (check_addr, admin_addr) = (check.local_addr().unwrap(), admin.local_addr().unwrap());
        let service = service::start(
            check,
            admin,
            async move { Ok(store) },
            Options {
                listener,
                node,
                settings: Arc::new(settings),
                tokens: tokens(),
                source: "test".into(),
                clock,
                grpc: None,
                admin_tls,
                check_tls: None,
                console: None,
            },
        );
        let i = Instance {
            check: check_addr,
            admin: admin_addr,
            service,
        };
        i.ready().await;
        i
    }

    /// Waits until checks are answered (a national snapshot, for the
    /// examples, takes a while to build).
    pub async fn ready(&self) {
        for _ in 0..6000 {
            if get(self.check, "/readyz", &[]).await.status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the instance did not become ready");
    }

    /// The revision checks answer from.
    pub fn revision(&self) -> u64 {
        self.service.state.revision()
    }

    pub async fn stop(self) {
        self.service.stop().await;
    }

    /// `POST` to the admin listener with a token.
    pub async fn admin_post(&self, token: &str, path: &str, body: &str) -> Reply {
        send(
            self.admin,
            "POST",
            path,
            &[("authorization", &format!("Bearer {token}"))],
            body.to_owned(),
        )
        .await
    }

    /// `GET` from the admin listener with a token.
    pub async fn admin_get(&self, token: &str, path: &str) -> Reply {
        get(self.admin, path, &[("authorization", &format!("Bearer {token}"))]).await
    }

    /// `POST /v1/check` at an instant.
    pub async fn check(&self, actor: Pid, subject: Pid, service: &str, at: &str) -> serde_json::Value {
        let body = serde_json::json!({"actor": actor.to_string(), "subject": subject.to_string(), "service": service, "at": at});
        let r = send(self.check, "POST", "/v1/check", &[], body.to_string()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The error body's code and field.
    pub fn error(&self) -> (String, Option<String>) {
        let v = self.json();
        (
            v["error"]["code"].as_str().unwrap_or_default().to_owned(),
            v["error"]["field"].as_str().map(str::to_owned),
        )
    }
}

/// Any failure to get an answer.
pub type Failure = Box<dyn std::error::Error + Send + Sync>;

/// One request on a fresh connection; an error if no answer came.
pub async fn try_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Reply, Failure> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path).header("host", "test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = sender.send_request(req.body(Full::new(body.into()))?).await?;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await?.to_bytes();
    Ok(Reply { status, headers, body })
}

/// One request on a fresh connection.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    try_send(addr, method, path, headers, body).await.unwrap()
}

/// `GET` without a token; an error if no answer came.
pub async fn try_get(addr: SocketAddr, path: &str) -> Result<Reply, Failure> {
    try_send(addr, "GET", path, &[], Bytes::new()).await
}

pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(addr, "GET", path, headers, Bytes::new()).await
}
