//! The population import over HTTP, end to end (SPEC §7: ≥ 250,000
//! persons/s from the first byte to a `2xx` that is visible to checks;
//! RSS < 400 MB right after a national re-import).
//!
//! ```sh
//! cargo run --release --example import_http                  # national scale
//! cargo run --release --example import_http -- --scale 0.05
//! ```
//!
//! The service runs in a second process (this example started again with
//! `serve DIR`, the embedded store on a fresh data directory, as
//! `guardian-access serve` runs it); this process streams the NDJSON file
//! to `POST /v1/population` over loopback in 1 MiB writes and times each
//! import from its first byte to the end of the answer. Imports, in order:
//!
//! 1. a fresh store;
//! 2. the same file again (the daily feed when nothing changed);
//! 3. a file where every 100th person changed (protected identity turned
//!    on or off), as a daily feed with changes;
//!
//! after each, a check on the check listener must answer from the import's
//! revision, and the server's RSS is read from `/proc/PID/status`. Then the
//! server restarts on the same directory (from its snapshot file) for the
//! RSS the same data takes in a fresh process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use guardian_access::store::Store;
use guardian_access::synth::{self, Scale};
use serde_json::json;

/// `serve DIR`: run the service on DIR until stdin closes; print the
/// listeners' addresses as one JSON line once a snapshot is loaded.
async fn serve(dir: PathBuf) {
    // The service's own log lines (import and rebuild times) on stderr.
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(guardian_access::logging::filter(&directives))
        .with_writer(std::io::stderr)
        .init();
    let check = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (check_addr, admin_addr) = (check.local_addr().unwrap(), admin.local_addr().unwrap());
    let store_dir = dir.clone();
    // The production defaults, not the tests' quick ones.
    let node = guardian_access::node::NodeConfig {
        data_dir: Some(dir),
        ..Default::default()
    };
    let service = guardian_access::service::start(
        check,
        admin,
        async move { Store::open_sqlite(&store_dir).await },
        guardian_access::service::Options {
            listener: Default::default(),
            node,
            settings: Arc::new(Default::default()),
            tokens: support::tokens(),
            source: "import_http".into(),
            clock: guardian_access::clock::Clock::system(),
            grpc: None,
            admin_tls: None,
            check_tls: None,
            console: None,
        },
    );
    while service.state.cell.current().is_none() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("{}", json!({"check": check_addr, "admin": admin_addr}));
    // Until the driver closes our stdin.
    tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new()))
        .await
        .unwrap()
        .unwrap();
    service.stop().await;
}

/// The service in a child process.
struct Server {
    child: Child,
    check: SocketAddr,
    admin: SocketAddr,
}

impl Server {
    fn start(dir: &Path) -> (Server, Duration) {
        let t = Instant::now();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("serve")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .env("MALLOC_MMAP_THRESHOLD_", "131072")
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).expect("the server's addresses");
        let addr = |k: &str| v[k].as_str().unwrap().parse().unwrap();
        let server = Server {
            check: addr("check"),
            admin: addr("admin"),
            child,
        };
        (server, t.elapsed())
    }

    /// A memory figure of the server process, in MB.
    fn mb(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    fn stop(mut self) {
        drop(self.child.stdin.take());
        self.child.wait().unwrap();
    }
}

/// One HTTP/1.1 request over a fresh connection; the body streamed from
/// `body` in 1 MiB writes. Returns the status, the answer's body and the
/// time from the first byte sent to the last byte of the answer.
fn post(addr: SocketAddr, path: &str, token: &str, body: &mut dyn Read, len: u64) -> (u16, String, Duration) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {token}\r\n\
         content-type: application/x-ndjson\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
    );
    let t = Instant::now();
    stream.write_all(head.as_bytes()).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = body.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n]).unwrap();
    }
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body, took)
}

/// The population file with every 100th person's protected flag turned.
fn changed_copy(from: &Path, to: &Path) -> u64 {
    let input = BufReader::with_capacity(1 << 20, std::fs::File::open(from).unwrap());
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(to).unwrap());
    let mut changed = 0;
    for (n, line) in input.lines().enumerate() {
        let mut line = line.unwrap();
        if n % 100 == 0 {
            line = if line.contains(r#""protected":false"#) {
                line.replacen(r#""protected":false"#, r#""protected":true"#, 1)
            } else {
                line.replacen(r#""protected":true"#, r#""protected":false"#, 1)
            };
            changed += 1;
        }
        out.write_all(line.as_bytes()).unwrap();
        out.write_all(b"\n").unwrap();
    }
    out.flush().unwrap();
    changed
}

fn import(server: &Server, file: &Path, persons: u64, name: &str, kid: &str) {
    let len = std::fs::metadata(file).unwrap().len();
    let mut input = std::fs::File::open(file).unwrap();
    let (status, body, took) = post(server.admin, "/v1/population", support::POPULATION, &mut input, len);
    assert_eq!(status, 200, "{name}: {body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let revision = answer["revision"].as_u64().unwrap();
    // Visible before the answer: a check right after answers from it.
    let check = json!({"actor": kid, "subject": kid, "service": "journal"}).to_string();
    let (status, body, _) = post(
        server.check,
        "/v1/check",
        "-",
        &mut check.as_bytes(),
        check.len() as u64,
    );
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        seen["revision"].as_u64().unwrap() >= revision,
        "{name}: not visible: {body}"
    );
    println!(
        "{name:<22} {persons} persons ({:.0} MB) in {:.2} s = {:>7.0} persons/s, {:>5.1} MB/s; \
         changed {}; server RSS after {:.0} MB ({:.0} anonymous, {:.0} file; peak {:.0} MB)",
        len as f64 / 1e6,
        took.as_secs_f64(),
        persons as f64 / took.as_secs_f64(),
        len as f64 / 1e6 / took.as_secs_f64(),
        answer["changed"],
        server.mb("VmRSS"),
        server.mb("RssAnon"),
        server.mb("RssFile"),
        server.mb("VmHWM"),
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        return serve(PathBuf::from(&args[2])).await;
    }
    let mut fraction = 1.0;
    let mut it = args.iter().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--scale" => fraction = it.next().and_then(|v| v.parse().ok()).expect("--scale: a number"),
            other => panic!("unknown argument `{other}` (use --scale F)"),
        }
    }
    let scale = Scale::fraction(fraction);
    let base = tempfile::tempdir().unwrap();
    let (data, file, changed) = (
        base.path().join("data"),
        base.path().join("population.ndjson"),
        base.path().join("changed.ndjson"),
    );
    std::fs::create_dir(&data).unwrap();
    let (persons, kid) = {
        let population = synth::population(scale, 42).unwrap();
        let kid = population.records().next().unwrap().id.to_string();
        (common::write_ndjson(&population, &file), kid)
    };
    let turned = changed_copy(&file, &changed);
    println!(
        "scale {fraction}: {} children, {persons} persons as NDJSON; {turned} of them changed in the second file\n",
        scale.children
    );

    let (server, ready) = Server::start(&data);
    println!(
        "server started in {:.2} s (empty store), RSS {:.0} MB",
        ready.as_secs_f64(),
        server.mb("VmRSS")
    );
    import(&server, &file, persons, "fresh store", &kid);
    import(&server, &file, persons, "re-import, unchanged", &kid);
    import(&server, &changed, persons, "re-import, 1 % changed", &kid);
    // The steady state a while later: the background checkpoint written.
    std::thread::sleep(Duration::from_secs(5));
    println!("5 s later              server RSS {:.0} MB", server.mb("VmRSS"));
    server.stop();

    let (server, ready) = Server::start(&data);
    println!(
        "restart on the data   ready in {:.2} s, RSS {:.0} MB (peak {:.0} MB)",
        ready.as_secs_f64(),
        server.mb("VmRSS"),
        server.mb("VmHWM")
    );
    server.stop();
}
