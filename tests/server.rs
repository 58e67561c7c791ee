//! The check listener over real sockets on port 0, and in process through
//! `server::handle`: every endpoint, every error, fail-closed start-up, the
//! connection limit, slow and idle clients, snapshot swaps and shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use guardian_access::clock::Clock;
use guardian_access::core::time::Instant;
use guardian_access::fixtures::Scenario;
use guardian_access::http::check::{self, State};
use guardian_access::http::listener::{AuthzHeaders, ListenerConfig};
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const AT: &str = "2026-11-23T10:00:00+01:00";

/// A running listener and the means to stop it.
struct Running {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn start(config: ListenerConfig, publish: bool) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::detached(
            config,
            "test",
            Clock::manual(Instant::from_timestamp("2026-11-23T09:00:00Z".parse().unwrap()).unwrap()),
        ));
        if publish {
            state.cell.publish(Scenario::demo().unwrap().snapshot().unwrap());
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(check::run(listener, state.clone(), async {
            let _ = stopped.await;
        }));
        Running {
            addr,
            state,
            stop: Some(stop),
            task,
        }
    }

    async fn demo() -> Running {
        Running::start(ListenerConfig::default(), true).await
    }

    async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("run returns after shutdown")
            .unwrap()
            .unwrap();
    }
}

/// A minimal HTTP/1.1 client over one keep-alive connection, so tests
/// control exactly what goes on the wire.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        // The head and body go in two writes: without this, Nagle's
        // algorithm and delayed ACKs add 40 ms to each request.
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.stream.write_all(req.as_bytes()).await.unwrap();
        // The server may answer (413) and close before taking the whole body.
        let _ = self.stream.write_all(body).await;
        self.read_reply().await
    }

    async fn post(&mut self, path: &str, body: &str) -> Reply {
        self.send("POST", path, &[("content-type", "application/json")], body.as_bytes())
            .await
    }

    async fn get(&mut self, path: &str) -> Reply {
        self.send("GET", path, &[], b"").await
    }

    async fn read_reply(&mut self) -> Reply {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            self.fill().await;
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let start = head_end + 4;
        while self.buf.len() < start + len {
            self.fill().await;
        }
        let body = self.buf[start..start + len].to_vec();
        self.buf.drain(..start + len);
        Reply { status, headers, body }
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .expect("a reply within 10 s")
            .unwrap();
        assert!(n > 0, "the server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Waits for the server to close the connection; returns whether it did
    /// within `limit`.
    async fn closed_within(&mut self, limit: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        matches!(
            tokio::time::timeout(limit, self.stream.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

fn check_body(actor: &str, subject: &str, service: &str) -> String {
    format!(r#"{{"actor": "{actor}", "subject": "{subject}", "service": "{service}", "at": "{AT}"}}"#)
}

#[tokio::test]
async fn check_answers_allow_and_deny_with_every_field() {
    let s = Running::demo().await;
    let mut c = s.client().await;
    let r = c
        .post("/v1/check", &check_body("197701012382", "201509162390", "journal"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        serde_json::json!({
            "decision": "allow", "reason": "guardian", "listing": "enabled", "care_units": null,
            "excluded_care_units": ["SE2321000131-E000000000123"],
            "valid_until": "2028-09-16T00:00:00+02:00", "revision": 1, "at": AT
        })
    );
    // Same connection: keep-alive.
    let r = c
        .post("/v1/check", &check_body("198001032385", "201801012392", "journal"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["reason"], "blocked");
    assert_eq!(r.json()["listing"], "disabled");
    let r = c
        .post(
            "/v1/check",
            r#"{"actor": "198501012390", "subject": "201303292385", "service": "journal"}"#,
        )
        .await;
    assert_eq!(r.json()["reason"], "extended_access", "`at` left out means now");
    assert_eq!(
        r.json()["care_units"],
        serde_json::json!(["SE2321000131-E000000000001"])
    );
    s.shutdown().await;
}

#[tokio::test]
async fn every_error_has_its_code_status_and_field() {
    let s = Running::demo().await;
    let mut c = s.client().await;
    let cases: &[(&str, u16, &str, Option<&str>)] = &[
        (r#"{"actor": "#, 400, "invalid_json", None),
        (
            r#"{"actor": "197701012383", "subject": "201509162390", "service": "journal"}"#,
            400,
            "invalid_identifier",
            Some("actor"),
        ),
        (
            r#"{"actor": "197701012382", "subject": "20150916239", "service": "journal"}"#,
            400,
            "invalid_identifier",
            Some("subject"),
        ),
        (
            r#"{"actor": "19810829M071", "subject": "201509162390", "service": "journal"}"#,
            400,
            "unsupported_identifier",
            Some("actor"),
        ),
        (
            r#"{"actor": "197701012382", "subject": "201509162390", "service": "vaccinations"}"#,
            400,
            "invalid_service",
            Some("service"),
        ),
        (
            r#"{"actor": "197701012382", "subject": "201509162390", "service": "journal", "at": "yesterday"}"#,
            400,
            "invalid_time",
            Some("at"),
        ),
        (
            r#"{"actor": "197701012382", "service": "journal"}"#,
            400,
            "invalid_request",
            Some("subject"),
        ),
        (
            r#"{"actor": ["197701012382"], "subject": "201509162390", "service": "journal"}"#,
            400,
            "invalid_request",
            Some("actor"),
        ),
        (r#"42"#, 400, "invalid_request", None),
    ];
    for (body, status, code, field) in cases {
        let r = c.post("/v1/check", body).await;
        assert_eq!(r.status, *status, "{body}");
        let v = r.json();
        assert_eq!(v["error"]["code"], *code, "{body}");
        assert_eq!(v["error"]["field"].as_str(), *field, "{body}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            !message.contains("0101238") && !message.contains("0916239"),
            "{message}"
        );
    }

    let big = format!(r#"{{"actor": "{}"}}"#, "1".repeat(70_000));
    let r = c.post("/v1/check", &big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "body_too_large");

    let mut c = s.client().await;
    let r = c.get("/v1/nothing").await;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (404, Some("not_found")));
    let r = c.get("/v1/check").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = c.post("/metrics", "").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
    s.shutdown().await;
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_refused_too() {
    let s = Running::demo().await;
    let mut c = s.client().await;
    let chunk = "x".repeat(8 * 1024);
    let mut req = String::from("POST /v1/check HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n");
    for _ in 0..10 {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("0\r\n\r\n");
    c.stream.write_all(req.as_bytes()).await.unwrap();
    let r = c.read_reply().await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "body_too_large");
    s.shutdown().await;
}

#[tokio::test]
async fn batch_answers_in_order_with_one_revision() {
    let s = Running::demo().await;
    let mut c = s.client().await;
    let body = format!(
        r#"{{"checks": [{}, {}, {{"actor": "x", "subject": "201509162390", "service": "journal"}}]}}"#,
        check_body("197701012382", "201509162390", "journal"),
        check_body("197701022381", "201406012383", "journal"),
    );
    let r = c.post("/v1/check/batch", &body).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["revision"], 1);
    assert_eq!(v["results"][0]["reason"], "guardian");
    assert_eq!(v["results"][1]["reason"], "sealed");
    assert_eq!(v["results"][2]["error"]["code"], "invalid_identifier");
    assert_eq!(v["results"][2]["error"]["field"], "actor");

    let one = check_body("197701012382", "201509162390", "journal");
    let r = c
        .post(
            "/v1/check/batch",
            &format!(r#"{{"checks": [{}]}}"#, vec![one.as_str(); 1001].join(",")),
        )
        .await;
    // 1001 checks of ~110 bytes is over 64 KiB: the body limit answers first.
    assert_eq!(r.status, 413);
    let mut c = s.client().await;
    // A check body is at least 65 bytes, so over HTTP the 64 KiB limit
    // binds before the 1,000-check limit (tested in `api`): about 990 fit.
    let short = r#"{"actor":"7701012382","subject":"1509162390","service":"journal"}"#;
    let r = c
        .post(
            "/v1/check/batch",
            &format!(r#"{{"checks": [{}]}}"#, vec![short; 900].join(",")),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["results"].as_array().unwrap().len(), 900);
    let r = c.post("/v1/check/batch", r#"{"check": []}"#).await;
    assert_eq!((r.status, r.json()["error"]["field"].as_str()), (400, Some("checks")));
    s.shutdown().await;
}

#[tokio::test]
async fn children_lists_the_switch_list() {
    let s = Running::demo().await;
    let mut c = s.client().await;
    let r = c
        .post(
            "/v1/children",
            &format!(r#"{{"guardian": "198501012390", "service": "journal", "at": "{AT}"}}"#),
        )
        .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["revision"], 1);
    let mut got: Vec<(String, String, String)> = v["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["subject"].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap().to_owned(),
                e["listing"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("201105152381".into(), "aged_out".into(), "hidden".into()),
            ("201303292385".into(), "extended_access".into(), "enabled".into()),
        ]
    );
    let r = c.post("/v1/children", r#"{"guardian": "198501012390"}"#).await;
    assert_eq!((r.status, r.json()["error"]["field"].as_str()), (400, Some("service")));
    s.shutdown().await;
}

#[tokio::test]
async fn authz_answers_with_status_and_reason_headers() {
    let s = Running::demo().await;
    let mut c = s.client().await;
    let ask = |actor: &'static str, subject: &'static str| {
        [
            ("x-actor-id", actor),
            ("x-subject-id", subject),
            ("x-service", "journal"),
        ]
    };
    let r = c
        .send("GET", "/v1/authz", &ask("197701012382", "201509162390"), b"")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-access-reason"), Some("guardian"));
    assert_eq!(r.header("x-access-revision"), Some("1"));
    let r = c
        .send("GET", "/v1/authz", &ask("198001032385", "201801012392"), b"")
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-access-reason"), Some("blocked"));
    let r = c
        .send("GET", "/v1/authz", &ask("198001032385", "2018010123"), b"")
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["field"], "subject");
    let r = c.send("GET", "/v1/authz", &[("x-actor-id", "198001032385")], b"").await;
    assert_eq!(r.status, 400);
    s.shutdown().await;
}

/// Envoy's HTTP `ext_authz` (`http_service` with `path_prefix: /v1/authz`)
/// sends the original method and the original path after the prefix, with
/// the `allowed_headers` and an empty body: every such request is the same
/// question as `GET /v1/authz`.
#[tokio::test]
async fn authz_answers_envoys_http_mode_for_any_method_and_path_below_it() {
    let s = Running::demo().await;
    let mut c = s.client().await;
    let envoy = |actor: &'static str, subject: &'static str| {
        [
            ("x-actor-id", actor),
            ("x-subject-id", subject),
            ("x-service", "journal"),
            ("x-envoy-expected-rq-timeout-ms", "200"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "5f2c6a1e-0000-4000-8000-000000000000"),
        ]
    };
    for (method, path) in [
        ("POST", "/v1/authz/journal/123"),
        ("GET", "/v1/authz/journal/view?tab=notes"),
        ("PUT", "/v1/authz/api/forms/42"),
        ("DELETE", "/v1/authz/"),
        ("POST", "/v1/authz"),
    ] {
        let r = c.send(method, path, &envoy("197701012382", "201509162390"), b"").await;
        assert_eq!(r.status, 200, "{method} {path}");
        assert_eq!(r.header("x-access-reason"), Some("guardian"), "{method} {path}");
        assert_eq!(r.header("x-access-valid-until"), Some("2028-09-16T00:00:00+02:00"));
        let r = c.send(method, path, &envoy("198001032385", "201801012392"), b"").await;
        assert_eq!(r.status, 403, "{method} {path}");
        assert_eq!(r.header("x-access-reason"), Some("blocked"), "{method} {path}");
    }
    // Only paths below `/v1/authz/` are the question.
    let r = c
        .send("GET", "/v1/authzx", &envoy("197701012382", "201509162390"), b"")
        .await;
    assert_eq!(r.status, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn authz_header_names_are_configurable() {
    let config = ListenerConfig {
        authz: AuthzHeaders {
            actor: HeaderName::from_static("x-user"),
            subject: HeaderName::from_static("x-patient"),
            service: HeaderName::from_static("x-app"),
        },
        ..ListenerConfig::default()
    };
    let s = Running::start(config, true).await;
    let mut c = s.client().await;
    let headers = [
        ("x-user", "197701012382"),
        ("x-patient", "201509162390"),
        ("x-app", "eservices"),
    ];
    let r = c.send("GET", "/v1/authz", &headers, b"").await;
    assert_eq!((r.status, r.header("x-access-reason")), (200, Some("guardian")));
    let defaults = [
        ("x-actor-id", "197701012382"),
        ("x-subject-id", "201509162390"),
        ("x-service", "journal"),
    ];
    let r = c.send("GET", "/v1/authz", &defaults, b"").await;
    assert_eq!(r.status, 400, "the default names are no longer read");
    s.shutdown().await;
}

#[tokio::test]
async fn before_a_snapshot_every_check_fails_closed() {
    let s = Running::start(ListenerConfig::default(), false).await;
    let mut c = s.client().await;
    let body = check_body("197701012382", "201509162390", "journal");
    for path in ["/v1/check", "/v1/check/batch", "/v1/children"] {
        let r = c.post(path, &body).await;
        assert_eq!(r.status, 503, "{path}");
        assert_eq!(r.json()["error"]["code"], "not_ready");
    }
    let headers = [
        ("x-actor-id", "197701012382"),
        ("x-subject-id", "201509162390"),
        ("x-service", "journal"),
    ];
    let r = c.send("GET", "/v1/authz", &headers, b"").await;
    assert_eq!(r.status, 503);
    assert_eq!(c.get("/readyz").await.status, 503);
    assert_eq!(c.get("/healthz").await.status, 200);
    assert_eq!(c.get("/v1/status").await.json()["ready"], false);
    assert!(c.get("/metrics").await.text().contains("guardian_access_ready 0"));

    // Publishing makes it ready, on the same connection.
    s.state.cell.publish(Scenario::demo().unwrap().snapshot().unwrap());
    assert_eq!(c.post("/v1/check", &body).await.status, 200);
    let r = c.get("/readyz").await;
    assert_eq!((r.status, r.json()["revision"].as_u64()), (200, Some(1)));
    s.shutdown().await;
}

#[tokio::test]
async fn a_new_snapshot_is_answered_from_at_once() {
    let s = Running::demo().await;
    let mut c = s.client().await;
    let body = check_body("197701012382", "201509162390", "journal");
    assert_eq!(c.post("/v1/check", &body).await.json()["revision"], 1);
    let snap = Scenario::demo().unwrap().snapshot().unwrap();
    let rules = Arc::new(guardian_access::Rules::new(snap.rules().iter().cloned().collect()));
    s.state.cell.publish(snap.with_rules(7, rules));
    assert_eq!(c.post("/v1/check", &body).await.json()["revision"], 7);
    assert_eq!(c.get("/v1/status").await.json()["revision"], 7);
    s.shutdown().await;
}

#[tokio::test]
async fn status_and_metrics_report_what_happened() {
    let s = Running::demo().await;
    let mut c = s.client().await;
    c.post("/v1/check", &check_body("197701012382", "201509162390", "journal"))
        .await;
    c.post("/v1/check", &check_body("197701012383", "201509162390", "journal"))
        .await;
    let status = c.get("/v1/status").await.json();
    assert_eq!(status["ready"], true);
    assert_eq!(status["revision"], 1);
    assert_eq!(status["source"], "test");
    assert_eq!(status["rules"], 4);
    assert!(status["persons"].as_u64().unwrap() >= 7);
    let r = c.get("/metrics").await;
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = r.text();
    for line in [
        "guardian_access_requests_total{endpoint=\"check\"} 2",
        "guardian_access_decisions_total{endpoint=\"check\",decision=\"allow\",reason=\"guardian\"} 1",
        "guardian_access_errors_total{endpoint=\"check\",code=\"invalid_identifier\"} 1",
        "guardian_access_request_duration_seconds_count{endpoint=\"check\"} 2",
        "guardian_access_snapshot_revision 1",
        "guardian_access_ready 1",
        "guardian_access_connections_open 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
    }
    assert!(!text.contains("201509162390") && !text.contains("197701012382"));
    s.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_head_is_cut_off() {
    let config = ListenerConfig {
        header_read_timeout: Duration::from_millis(200),
        ..ListenerConfig::default()
    };
    let s = Running::start(config, true).await;
    let mut c = s.client().await;
    c.stream
        .write_all(b"POST /v1/check HTTP/1.1\r\nhost: te")
        .await
        .unwrap();
    assert!(c.closed_within(Duration::from_secs(10)).await);
    s.shutdown().await;
}

#[tokio::test]
async fn a_body_that_trickles_in_gets_408_and_the_connection_closes() {
    let config = ListenerConfig {
        body_read_timeout: Duration::from_millis(300),
        ..ListenerConfig::default()
    };
    let s = Running::start(config, true).await;
    let mut c = s.client().await;
    c.stream
        .write_all(b"POST /v1/check HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n{")
        .await
        .unwrap();
    let r = c.read_reply().await;
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "request_timeout");
    assert!(c.closed_within(Duration::from_secs(5)).await);
    s.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_its_answers_is_cut_off() {
    let config = ListenerConfig {
        write_timeout: Duration::from_millis(300),
        ..ListenerConfig::default()
    };
    let s = Running::start(config, true).await;
    let mut c = s.client().await;
    // Thousands of pipelined requests whose answers are never read: the
    // socket buffers fill and the server's writes block.
    let one = b"GET /metrics HTTP/1.1\r\nhost: t\r\n\r\n";
    let many: Vec<u8> = one.iter().copied().cycle().take(one.len() * 4000).collect();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.stream.write_all(&many)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Now read: the buffered answers, then the end of the connection,
    // long before 4,000 answers.
    let mut total = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), c.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => total += n,
            Err(_) => break false,
        }
    };
    assert!(closed, "the connection was closed after {total} bytes");
    let answers = total / 1000;
    assert!(answers < 4000, "{answers}");
    // Others are still served.
    assert_eq!(s.client().await.get("/healthz").await.status, 200);
    s.shutdown().await;
}

/// Twice as many connections as the limit, each sending a byte a second
/// (a head, or a body after a whole head): the well-behaved client's
/// pooled connections go on being answered at once, and the deadlines cut
/// the tricklers off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_clients_do_not_slow_down_a_well_behaved_one() {
    let config = ListenerConfig {
        max_connections: 32,
        header_read_timeout: Duration::from_secs(1),
        body_read_timeout: Duration::from_secs(1),
        ..ListenerConfig::default()
    };
    let s = Running::start(config, true).await;
    // The portal's proxy keeps a pool of connections (nginx `keepalive`).
    let mut pool = Vec::new();
    for _ in 0..2 {
        let mut c = s.client().await;
        assert_eq!(c.get("/healthz").await.status, 200);
        pool.push(c);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cut_off = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tricklers = Vec::new();
    for n in 0..64 {
        let (addr, stop, cut_off) = (s.addr, stop.clone(), cut_off.clone());
        tricklers.push(tokio::spawn(async move {
            let Ok(mut stream) = TcpStream::connect(addr).await else {
                return;
            };
            let wire: &[u8] = if n % 2 == 0 {
                b"POST /v1/check HTTP/1.1\r\nhost: slow\r\ncontent-length: 64\r\n\r\n"
            } else {
                b""
            };
            if !wire.is_empty() && stream.write_all(wire).await.is_err() {
                return;
            }
            let trickle = if n % 2 == 0 {
                b"{".repeat(64)
            } else {
                b"POST /v1/check HTTP/1.1\r\n".to_vec()
            };
            for byte in trickle {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                if stream.write_all(&[byte]).await.is_err() {
                    cut_off.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let body = check_body("197701012382", "201509162390", "journal");
    let mut took = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(4);
    let mut k = 0;
    while std::time::Instant::now() < until {
        let c = &mut pool[k % 2];
        k += 1;
        let started = std::time::Instant::now();
        let r = c.post("/v1/check", &body).await;
        took.push(started.elapsed());
        assert_eq!(r.status, 200);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tricklers {
        let _ = t.await;
    }
    took.sort();
    let p99 = took[took.len() * 99 / 100];
    assert!(
        p99 < Duration::from_millis(10),
        "p99 {p99:?} over {} checks",
        took.len()
    );
    // Those admitted were cut off by the deadlines (writes to a closed
    // socket fail), not left to hold their slots.
    assert!(
        cut_off.load(std::sync::atomic::Ordering::Relaxed) >= 16,
        "{} tricklers were cut off",
        cut_off.load(std::sync::atomic::Ordering::Relaxed)
    );
    s.shutdown().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let config = ListenerConfig {
        idle_timeout: Duration::from_millis(200),
        ..ListenerConfig::default()
    };
    let s = Running::start(config, true).await;
    let mut c = s.client().await;
    assert_eq!(c.get("/healthz").await.status, 200);
    assert!(c.closed_within(Duration::from_secs(10)).await);
    // A fresh connection is served.
    assert_eq!(s.client().await.get("/healthz").await.status, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_and_counted() {
    let config = ListenerConfig {
        max_connections: 2,
        ..ListenerConfig::default()
    };
    let s = Running::start(config, true).await;
    let mut a = s.client().await;
    let mut b = s.client().await;
    assert_eq!(a.get("/healthz").await.status, 200);
    assert_eq!(b.get("/healthz").await.status, 200);
    let mut over = s.client().await;
    let _ = over.stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n").await;
    assert!(over.closed_within(Duration::from_secs(10)).await);
    let text = a.get("/metrics").await.text();
    assert!(text.contains("guardian_access_connections_refused_total 1"), "{text}");
    // A slot frees when a client leaves.
    drop(b);
    let mut later = None;
    for _ in 0..100 {
        let mut c = s.client().await;
        c.stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        let mut byte = [0u8; 1];
        if let Ok(Ok(1)) = tokio::time::timeout(Duration::from_secs(1), c.stream.peek(&mut byte)).await {
            later = Some(c.read_reply().await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(later.expect("served once a slot is free").status, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_accepting_and_returns() {
    let s = Running::demo().await;
    let addr = s.addr;
    let mut c = s.client().await;
    assert_eq!(c.get("/healthz").await.status, 200);
    s.shutdown().await;
    // The idle keep-alive connection was closed and nothing listens any more.
    assert!(c.closed_within(Duration::from_secs(5)).await);
    assert!(TcpStream::connect(addr).await.is_err());
}

/// In process, without a socket: the same `handle` the listener calls.
#[tokio::test]
async fn handle_answers_in_process() {
    let state = State::detached(
        ListenerConfig::default(),
        "in-process",
        Clock::manual(Instant::from_timestamp("2026-11-23T09:00:00Z".parse().unwrap()).unwrap()),
    );
    state.cell.publish(Scenario::demo().unwrap().snapshot().unwrap());
    let req = hyper::Request::post("/v1/check")
        .body(Full::new(Bytes::from(check_body(
            "197701022381",
            "201406012383",
            "eservices",
        ))))
        .unwrap();
    let resp = check::handle(&state, req).await;
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["reason"], "guardian", "a seal covers only the journal");

    let req = hyper::Request::get("/v1/check/batch")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(check::handle(&state, req).await.status(), 405);
}
