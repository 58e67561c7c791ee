//! The log of a whole run at `trace` level holds no identity number: not in
//! answers logged, not in errors, not in spans. Correlation uses keyed tags.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use guardian_access::fixtures::Scenario;
use guardian_access::server::{self, ListenerConfig, State};
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
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(State::new(ListenerConfig::default(), "test"));
    state.publish(Scenario::demo().unwrap().snapshot().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::run(listener, state.clone(), async {
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

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("check"), "the debug events were captured:\n{log}");
    assert!(log.contains("error answer"), "errors were logged:\n{log}");
    let tag = state.tag(guardian_access::Pid::parse("197701012382", jiff::civil::date(2026, 11, 23)).unwrap());
    assert!(log.contains(&tag.to_string()), "checks carry keyed tags:\n{log}");

    for (actor, subject) in numbers {
        for n in [actor, subject] {
            let digits: String = n.chars().filter(char::is_ascii_alphanumeric).collect();
            let ten = &digits[digits.len() - 10..];
            for needle in [n, digits.as_str(), ten, &ten[..6]] {
                assert!(!log.contains(needle), "`{needle}` appears in the log:\n{log}");
            }
        }
    }
}
