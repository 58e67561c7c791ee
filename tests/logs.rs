//! The log of a whole run at `trace` level holds no identity number: not in
//! answers logged, not in errors, not in spans, not in what the store's
//! drivers log, not from the console. Correlation uses keyed tags.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use guardian_access::clock::Clock;
use guardian_access::core::time::Instant;
use guardian_access::fixtures::Scenario;
use guardian_access::http::check::{self, State};
use guardian_access::http::listener::ListenerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn exchange(addr: std::net::SocketAddr, request: String) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_level_log_holds_no_identity_number() {
    let captured = Captured::default();
    let writer = captured.clone();
    // The operator asks for everything, the PostgreSQL driver included.
    tracing_subscriber::fmt()
        .with_env_filter(guardian_access::logging::filter("trace,tokio_postgres=trace"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(State::detached(
        ListenerConfig::default(),
        "test",
        Clock::manual(Instant::from_timestamp("2026-11-23T09:00:00Z".parse().unwrap()).unwrap()),
    ));
    state.cell.publish(Scenario::demo().unwrap().snapshot().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(check::run(listener, state.clone(), async {
        let _ = stopped.await;
    }));

    // Numbers of every kind, in every form, valid and not.
    let numbers = [
        ("197701012382", "20150916-2390"),
        ("198001032385", "201801012392"),
        ("770101-2382", "150916+2390"),
        ("197701012383", "201509162390"),
        ("19810829M071", "201509162390"),
        ("198501012390", "201303292385"),
        // Used only on the write path below.
        ("198001022386", "198501012391"),
        ("198501022381", "201509162391"),
    ];
    for (actor, subject) in numbers {
        for service in ["journal", "eservices", "x"] {
            let body = format!(r#"{{"actor": "{actor}", "subject": "{subject}", "service": "{service}"}}"#);
            exchange(addr, post("/v1/check", &body)).await;
        }
        let authz = format!(
            "GET /v1/authz HTTP/1.1\r\nhost: t\r\nconnection: close\r\nx-actor-id: {actor}\r\nx-subject-id: {subject}\r\nx-service: journal\r\n\r\n"
        );
        exchange(addr, authz).await;
        exchange(
            addr,
            post(
                "/v1/children",
                &format!(r#"{{"guardian": "{actor}", "service": "journal"}}"#),
            ),
        )
        .await;
    }
    let batch = r#"{"checks": [{"actor": "197701012382", "subject": "201509162390", "service": "journal"}, {"actor": 197701012382}]}"#;
    let answer = exchange(addr, post("/v1/check/batch", batch)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    exchange(addr, post("/v1/check", r#"{"actor": "1977010123"#)).await;
    exchange(
        addr,
        "GET /v1/authz/201509162390 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n".into(),
    )
    .await;

    // Envoy's gRPC ext_authz, the same numbers.
    grpc_checks(state.clone(), &numbers).await;

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    // The write path, on both stores.
    let sqlite_dir = tempfile::tempdir().unwrap();
    write_path(
        guardian_access::store::Store::open_sqlite(sqlite_dir.path())
            .await
            .unwrap(),
    )
    .await;
    console_path(
        guardian_access::store::Store::open_sqlite(&sqlite_dir.path().join("console"))
            .await
            .unwrap(),
    )
    .await;
    let cluster = support::pg::Cluster::start();
    if let Some(cluster) = &cluster {
        let url = cluster.database("logs").await;
        write_path(guardian_access::store::Store::open_postgres(&url).await.unwrap()).await;
    }

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("write committed"), "the writes were logged:\n{log}");
    assert!(
        log.contains("demo login to the console"),
        "the console was used:\n{log}"
    );

    assert!(log.contains("check"), "the debug events were captured:\n{log}");
    assert!(log.contains("grpc check"), "the gRPC checks were logged:\n{log}");
    assert!(log.contains("error answer"), "errors were logged:\n{log}");
    let tag = state.tag(guardian_access::Pid::parse("197701012382", jiff::civil::date(2026, 11, 23)).unwrap());
    assert!(log.contains(&tag.to_string()), "checks carry keyed tags:\n{log}");

    // Each line's own timestamp is the formatter's, not ours: its
    // microseconds may spell any six digits (once `…24.850102Z`), so it is
    // left out of the search.
    let searched: String = log
        .lines()
        .map(|l| match l.split_once(' ') {
            Some((time, rest)) if time.ends_with('Z') && time.contains('T') => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    for (actor, subject) in numbers {
        for n in [actor, subject] {
            let digits: String = n.chars().filter(char::is_ascii_alphanumeric).collect();
            let ten = &digits[digits.len() - 10..];
            for needle in [n, digits.as_str(), ten, &ten[..6]] {
                assert!(!searched.contains(needle), "`{needle}` appears in the log:\n{log}");
            }
        }
    }
}

/// Every pair asked over gRPC (valid, invalid, an unknown service).
async fn grpc_checks(state: Arc<State>, numbers: &[(&str, &str)]) {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    use guardian_access::http::grpc::{self, GrpcListener};

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(grpc::run(GrpcListener::Tcp(listener), state, async {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Endpoint::try_from(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut client = AuthorizationClient::new(channel);
    let mut answered = 0;
    for (actor, subject) in numbers {
        for service in ["journal", "x"] {
            let headers = [
                ("x-actor-id", *actor),
                ("x-subject-id", *subject),
                ("x-service", service),
            ];
            let req = CheckRequest {
                attributes: Some(AttributeContext {
                    request: Some(Request {
                        http: Some(HttpRequest {
                            headers: headers.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            };
            answered += usize::from(client.check(req).await.is_ok());
        }
    }
    assert_eq!(answered, numbers.len() * 2, "every call was answered");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// Imports, writes, lifts, reads and refusals through the admin listener,
/// every one carrying identity numbers.
async fn write_path(store: guardian_access::store::Store) {
    use support::{AUDITOR, POPULATION, REGISTRAR, UNIT};
    let i = support::Instance::start(store, support::quick_node(None)).await;
    let lines = [
        r#"{"id": "201509162390", "protected": false, "guardians": ["197701012382", "198001022386"]}"#,
        r#"{"id": "201801012392", "protected": true, "guardians": ["198001032385"]}"#,
    ]
    .join("\n");
    assert_eq!(i.admin_post(POPULATION, "/v1/population", &lines).await.status, 200);
    let bad = r#"{"id": "201303292385", "protected": false, "guardians": ["198501012391"]}"#;
    assert_eq!(i.admin_post(POPULATION, "/v1/population", bad).await.status, 400);
    let block = format!(
        r#"{{"kind": "block", "subject": "201509162390", "guardian": "197701012382", "issuing_unit": "{UNIT}",
            "decided_by": {{"name": "x"}}, "basis": "y"}}"#
    );
    let r = i.admin_post(REGISTRAR, "/v1/restrictions", &block).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let not_a_guardian = block.replace("197701012382", "198501022381");
    assert_eq!(
        i.admin_post(REGISTRAR, "/v1/restrictions", &not_a_guardian)
            .await
            .status,
        422
    );
    let lift = format!(
        r#"{{"issuing_unit": "{UNIT}", "decided_by": {{"name": "x"}}, "basis": "y", "threat_assessment_done": true, "unit_request_reference": "r"}}"#
    );
    assert_eq!(
        i.admin_post(REGISTRAR, &format!("/v1/restrictions/{id}/lift"), &lift)
            .await
            .status,
        200
    );
    assert_eq!(i.admin_get(AUDITOR, "/v1/subjects/201509162390").await.status, 200);
    assert_eq!(
        i.admin_get(AUDITOR, "/v1/audit?subject=20150916-2390").await.status,
        200
    );
    assert_eq!(i.admin_get(AUDITOR, "/v1/subjects/201509162391").await.status, 400);
    let r = support::send(
        i.admin,
        "GET",
        "/v1/access-log",
        &[
            ("authorization", &format!("Bearer {AUDITOR}")),
            ("x-subject-id", "201509162390"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("subject_view"));
    i.stop().await;
}

/// The console's pages and forms, every one carrying identity numbers in
/// its form fields or showing them on the page.
async fn console_path(store: guardian_access::store::Store) {
    use guardian_access::actor::{Caller, Role};
    use guardian_access::core::model::HsaId;
    use guardian_access::http::console::{ConsoleOptions, LoginOptions};
    use support::{POPULATION, UNIT};
    let staff = |name: &str, role, unit: Option<&str>| Caller {
        name: name.into(),
        role,
        unit: unit.map(|u| HsaId::parse(u).unwrap()),
        hsa_id: Some(HsaId::parse("SE2321000131-P000000000011").unwrap()),
    };
    let options = ConsoleOptions {
        login: LoginOptions::Demo(vec![
            staff("Kim", Role::Registrar, None),
            staff("Vera", Role::Unit, Some(UNIT)),
            staff("Alva", Role::Auditor, None),
        ]),
        smtp: None,
    };
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let i = support::Instance::start_console(store, admin, None, options, support::clock()).await;
    let family = r#"{"id": "201509162390", "protected": false, "guardians": ["197701012382", "198001022386"]}"#;
    assert_eq!(i.admin_post(POPULATION, "/v1/population", family).await.status, 200);
    let base = format!("http://{}", i.admin);
    let token = |html: &str| {
        html.split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_owned()
    };
    let login = async |who: &str| {
        let c = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let page = c
            .get(format!("{base}/console/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        c.post(format!("{base}/console/demo-login"))
            .form(&[("csrf", token(&page).as_str()), ("who", who)])
            .send()
            .await
            .unwrap();
        let home = c
            .get(format!("{base}/console/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        (c.clone(), token(&home))
    };
    let (kim, csrf) = login("0").await;
    let post = async |c: &reqwest::Client, path: &str, form: &[(&str, &str)]| {
        let r = c.post(format!("{base}{path}")).form(form).send().await.unwrap();
        let location = r.headers().get("location").map(|l| l.to_str().unwrap().to_owned());
        (r.status().as_u16(), location)
    };
    assert_eq!(
        post(&kim, "/console/find", &[("csrf", &csrf), ("pnr", "20150916-2391")])
            .await
            .0,
        422
    );
    let (_, child) = post(&kim, "/console/find", &[("csrf", &csrf), ("pnr", "150916-2390")]).await;
    let child = child.unwrap();
    assert_eq!(kim.get(format!("{base}{child}")).send().await.unwrap().status(), 200);
    let mut block = vec![
        ("csrf", csrf.as_str()),
        ("urgent", "1"),
        ("guardian", "197701012382"),
        ("services", "journal"),
        ("services", "eservices"),
        ("requested_by.name", "Sara"),
        ("requested_by.phone", "010"),
        ("requested_by.email", "ssk@region.example"),
        ("issuing_unit", UNIT),
        ("decided_by.name", "Vera"),
        ("basis", "Oro"),
        ("reference", "BUP 1"),
        ("step", "preview"),
    ];
    assert_eq!(post(&kim, &format!("{child}/new/block"), &block).await.0, 200);
    block.pop();
    block.push(("step", "save"));
    let (status, rule) = post(&kim, &format!("{child}/new/block"), &block).await;
    assert_eq!(status, 303);
    let rule = rule.unwrap();
    let id = rule
        .split("/rule/")
        .nth(1)
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        kim.get(format!("{base}/console/worklist"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let field = format!("form_reference-{id}");
    let request = format!("unit_request_reference-{id}");
    let confirm = [
        ("csrf", csrf.as_str()),
        ("decided_by.name", "Vera"),
        (&field, "F-1"),
        (&request, "R-1"),
    ];
    assert_eq!(
        post(&kim, &format!("/console/worklist/{id}/confirm"), &confirm).await.0,
        200
    );
    let lift = [
        ("csrf", csrf.as_str()),
        ("decided_by.name", "Vera"),
        ("basis", "Hotbild kontrollerad"),
        ("threat_assessment_done", "ja"),
        ("unit_request_reference", "R-2"),
    ];
    let rule_path = rule.split('?').next().unwrap();
    assert_eq!(post(&kim, &format!("{rule_path}/lift"), &lift).await.0, 303);
    let (alva, alva_csrf) = login("2").await;
    assert_eq!(
        post(
            &alva,
            "/console/access-log",
            &[("csrf", &alva_csrf), ("pnr", "201509162390")]
        )
        .await
        .0,
        200
    );
    i.stop().await;
}
