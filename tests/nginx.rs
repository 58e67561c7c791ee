//! End to end behind a real load balancer: nginx on loopback, in front of a
//! small upstream, asks `/v1/authz` with `auth_request` before forwarding.
//! Allowed requests reach the upstream; denied ones get 403 and nothing is
//! forwarded.
//!
//! Needs Debian's `nginx` (it has `auth_request`); `.ci/run` installs it.
//! Without it the test says SKIPPED locally and fails under CI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use guardian_access::clock::Clock;
use guardian_access::core::time::Instant;
use guardian_access::fixtures::Scenario;
use guardian_access::http::check::{self, State};
use guardian_access::http::listener::ListenerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn nginx_binary() -> Option<PathBuf> {
    let candidates = [PathBuf::from("/usr/sbin/nginx"), PathBuf::from("/usr/local/sbin/nginx")];
    candidates.into_iter().find(|p| p.exists())
}

/// nginx in the foreground, as one process, everything in `dir`.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_nginx(bin: &Path, port: u16, check: &str, upstream_port: u16) -> Nginx {
    let dir = std::env::temp_dir().join(format!("guardian-access-nginx-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    let conf = format!(
        r#"
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    upstream guardian_access {{
        server {check};
        keepalive 8;
    }}

    server {{
        listen 127.0.0.1:{port};

        location /journal/ {{
            auth_request /_guardian_access;
            auth_request_set $access_reason $upstream_http_x_access_reason;
            add_header x-access-reason $access_reason always;
            proxy_pass http://127.0.0.1:{upstream_port};
        }}

        location = /_guardian_access {{
            internal;
            proxy_pass http://guardian_access/v1/authz;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header x-actor-id $http_x_actor_id;
            proxy_set_header x-subject-id $http_x_subject_id;
            proxy_set_header x-service $http_x_service;
        }}
    }}
}}
"#
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(bin)
        .arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Nginx { child, dir }
}

/// The upstream: answers 200 and counts what reaches it.
async fn upstream(listener: TcpListener, seen: Arc<AtomicUsize>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            seen.fetch_add(1, Ordering::SeqCst);
            let body = "the journal";
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(reply.as_bytes()).await;
        });
    }
}

async fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: portal\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_forwards_only_what_is_allowed() {
    through_nginx(false).await;
}

/// The same through the check listener's Unix socket, the sidecar's
/// natural transport (`--check-addr unix:/PATH`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_works_through_a_unix_socket() {
    through_nginx(true).await;
}

async fn through_nginx(unix: bool) {
    let Some(bin) = nginx_binary() else {
        assert!(std::env::var_os("CI").is_none(), "CI must install nginx");
        eprintln!("\n*** SKIPPED nginx end to end: nginx is not installed ***\n");
        return;
    };

    let sockets = tempfile::tempdir().unwrap();
    let (check, upstream_server): (guardian_access::http::listener::Listener, String) = if unix {
        let path = sockets.path().join("check.sock");
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        (l.into(), format!("unix:{}", path.display()))
    } else {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        (l.into(), format!("127.0.0.1:{port}"))
    };
    let state = Arc::new(State::detached(
        ListenerConfig::default(),
        "test",
        Clock::manual(Instant::from_timestamp("2026-11-23T09:00:00Z".parse().unwrap()).unwrap()),
    ));
    state.cell.publish(Scenario::demo().unwrap().snapshot().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(check::run(check, state.clone(), async {
        let _ = stopped.await;
    }));

    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_port = up.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    tokio::spawn(upstream(up, seen.clone()));

    let port = free_port();
    let nginx = start_nginx(&bin, port, &upstream_server, upstream_port);
    let mut up_yet = false;
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            up_yet = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let log = || std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
    assert!(up_yet, "nginx did not start:\n{}", log());

    let ask = |actor: &'static str, subject: &'static str, service: &'static str| {
        [("x-actor-id", actor), ("x-subject-id", subject), ("x-service", service)]
    };

    // A guardian of an 11-year-old: forwarded.
    let (status, text) = get(port, "/journal/child", &ask("197701012382", "201509162390", "journal")).await;
    assert_eq!(status, 200, "{text}\n{}", log());
    assert!(text.ends_with("the journal"), "{text}");
    assert_eq!(seen.load(Ordering::SeqCst), 1);

    // Blocked, not a guardian, sealed, protected child: 403, nothing forwarded.
    for (actor, subject, service, reason) in [
        ("198001032385", "201801012392", "journal", "blocked"),
        ("198501022381", "201509162390", "journal", "not_guardian"),
        ("197701022381", "201406012383", "journal", "sealed"),
        ("198001022394", "201903012381", "eservices", "protected_subject"),
    ] {
        let (status, text) = get(port, "/journal/child", &ask(actor, subject, service)).await;
        assert_eq!(status, 403, "{reason}: {text}");
        assert!(
            text.to_ascii_lowercase()
                .contains(&format!("x-access-reason: {reason}")),
            "{text}"
        );
        assert_eq!(seen.load(Ordering::SeqCst), 1, "{reason} was forwarded");
    }

    // A bad identifier is a 400 from guardian-access, which nginx turns into
    // an error: still nothing forwarded.
    let (status, _) = get(port, "/journal/child", &ask("197701012383", "201509162390", "journal")).await;
    assert!(status >= 400, "{status}");
    let (status, _) = get(port, "/journal/child", &[]).await;
    assert!(status >= 400, "{status}");
    assert_eq!(seen.load(Ordering::SeqCst), 1);

    // The same allowed request once more: forwarded again.
    let (status, _) = get(port, "/journal/child", &ask("198501012390", "201303292385", "journal")).await;
    assert_eq!(status, 200);
    assert_eq!(seen.load(Ordering::SeqCst), 2);

    // guardian-access gone: nginx cannot ask, and forwards nothing.
    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
    let (status, _) = get(port, "/journal/child", &ask("197701012382", "201509162390", "journal")).await;
    assert!(status >= 500, "{status}");
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}
