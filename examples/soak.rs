//! A long mixed run (issue 11, SPEC §7 "memory flat"): checks, writes,
//! imports and folds together on the national snapshot, with this
//! process's RSS and open file descriptors sampled every 10 s.
//!
//! ```sh
//! cargo run --release --example soak                          # national, 10 minutes
//! cargo run --release --example soak -- --scale 0.05 --minutes 1
//! ```
//!
//! The service runs in this process on the embedded store (so its memory
//! is what is sampled), with a snapshot file in its data directory:
//!
//! - **checks**: 4 keep-alive connections, 2,000 checks a second in all,
//!   over random guardian–child pairs;
//! - **writes**: a block every 100 ms on a random child, and every fifth
//!   one lifted again (`201`/`200` each, visible before the answer);
//! - **imports**: at 30 s and then every 60 s a population delta over HTTP:
//!   20,000 children whose second guardian comes and goes, enough to fold
//!   and checkpoint.
//!
//! It prints the series, then whether RSS after the first minute grew by
//! less than 5 % and the descriptors not at all. It runs with glibc's
//! `MALLOC_MMAP_THRESHOLD_` fixed, as the service is deployed
//! (`GUARDIAN_SOAK_GLIBC_DEFAULTS=1` for glibc's defaults).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{import_file, open_fds, status_mb, write_ndjson};
use guardian_access::PersonRecord;
use guardian_access::store::Store;
use guardian_access::synth::{self, Scale};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn arg(args: &[String], name: &str, default: f64) -> f64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |s| s.parse().unwrap())
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: Vec::with_capacity(1 << 16),
        }
    }

    /// Sends a whole request and reads one answer: its status and body.
    async fn roundtrip(&mut self, req: &[u8]) -> (u16, Vec<u8>) {
        self.stream.write_all(req).await.unwrap();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).unwrap();
                let status = head[9..12].parse().unwrap();
                let len: usize = head
                    .split("\r\n")
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + len {
                    let n = self.stream.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "the server closed the connection");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                let body = self.buf[end + 4..end + 4 + len].to_vec();
                self.buf.drain(..end + 4 + len);
                return (status, body);
            }
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn request(path: &str, token: Option<&str>, content_type: &str, body: &str) -> Vec<u8> {
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    format!(
        "POST {path} HTTP/1.1\r\nhost: soak\r\n{auth}content-type: {content_type}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

#[derive(Default)]
struct Counts {
    checks: AtomicU64,
    writes: AtomicU64,
    lifts: AtomicU64,
    imports: AtomicU64,
    failures: AtomicU64,
}

/// glibc's setting the service is deployed with (the Dockerfile, the
/// README): a fixed mmap threshold. Set before the process starts, so the
/// example runs itself again with it unless told not to
/// (`GUARDIAN_SOAK_GLIBC_DEFAULTS=1` measures glibc's defaults).
const MALLOC: (&str, &str) = ("MALLOC_MMAP_THRESHOLD_", "131072");

fn main() {
    if std::env::var_os(MALLOC.0).is_none() && std::env::var_os("GUARDIAN_SOAK_GLIBC_DEFAULTS").is_none() {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().unwrap();
        let e = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(MALLOC.0, MALLOC.1)
            .exec();
        panic!("cannot run again with {}: {e}", MALLOC.0);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(soak());
}

async fn soak() {
    let args: Vec<String> = std::env::args().collect();
    let fraction = arg(&args, "--scale", 1.0);
    let minutes = arg(&args, "--minutes", 10.0);
    let every = Duration::from_secs_f64(arg(&args, "--sample-seconds", 10.0));
    let scale = Scale::fraction(fraction);
    let base = tempfile::Builder::new()
        .prefix("guardian-access-soak-")
        .tempdir()
        .unwrap();
    let data = base.path().join("data");
    println!(
        "scale {fraction} ({} children), {minutes} minutes, in {}; {}={}",
        scale.children,
        base.path().display(),
        MALLOC.0,
        std::env::var(MALLOC.0).unwrap_or_else(|_| "(glibc's default)".into())
    );

    // The population, imported into the store before the service starts.
    let population = synth::population(scale, 42).unwrap();
    let file = base.path().join("population.ndjson");
    write_ndjson(&population, &file);
    let children: Vec<PersonRecord> = population.records().filter(|r| !r.guardians.is_empty()).collect();
    drop(population);
    let store = Store::open_sqlite(&data).await.unwrap();
    let t = Instant::now();
    let imported = import_file(&store, &file).await;
    std::fs::remove_file(&file).unwrap();
    println!(
        "imported {} persons in {:.1} s",
        imported.upserted,
        t.elapsed().as_secs_f64()
    );
    let i = support::Instance::start(store, support::quick_node(Some(data.clone()))).await;
    println!("ready: revision {}, RSS {:.0} MB", i.revision(), status_mb("VmRSS"));

    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let children = Arc::new(children);
    let mut tasks = Vec::new();

    // Checks: 4 connections, 500 a second each.
    for c in 0..4u64 {
        let (counts, stop, children, addr) = (counts.clone(), stop.clone(), children.clone(), i.check);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (c + 1));
            let bodies: Vec<Vec<u8>> = (0..4096)
                .map(|_| {
                    let kid = &children[rng.below(children.len())];
                    let service = if rng.below(5) == 0 { "eservices" } else { "journal" };
                    let body = json!({"actor": kid.guardians[0].to_string(), "subject": kid.id.to_string(), "service": service});
                    request("/v1/check", None, "application/json", &body.to_string())
                })
                .collect();
            let mut conn = Conn::open(addr).await;
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if conn.roundtrip(&bodies[n % bodies.len()]).await.0 == 200 {
                    counts.checks.fetch_add(1, Ordering::Relaxed);
                } else {
                    counts.failures.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
        }));
    }

    // Writes: a block every 100 ms, every fifth lifted again.
    {
        let (counts, stop, children, addr) = (counts.clone(), stop.clone(), children.clone(), i.admin);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x1234_5678_9abc_def1);
            let mut conn = Conn::open(addr).await;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut created: Vec<String> = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                if n.is_multiple_of(5)
                    && let Some(id) = created.pop()
                {
                    let lift = json!({"issuing_unit": support::UNIT, "decided_by": {"name": "Verksamhetschef"},
                                      "basis": "Hotbild kontrollerad", "threat_assessment_done": true,
                                      "unit_request_reference": "Begäran 2026-9"});
                    let path = format!("/v1/restrictions/{id}/lift");
                    let req = request(&path, Some(support::UNIT_TOKEN), "application/json", &lift.to_string());
                    match conn.roundtrip(&req).await.0 {
                        200 => counts.lifts.fetch_add(1, Ordering::Relaxed),
                        _ => counts.failures.fetch_add(1, Ordering::Relaxed),
                    };
                    continue;
                }
                let kid = &children[rng.below(children.len())];
                let block = json!({"kind": "block", "subject": kid.id.to_string(), "issuing_unit": support::UNIT,
                                   "decided_by": {"name": "Verksamhetschef"}, "basis": "Orosanmälan",
                                   "reference": format!("Dnr 2026-{n}")});
                let req = request(
                    "/v1/restrictions",
                    Some(support::UNIT_TOKEN),
                    "application/json",
                    &block.to_string(),
                );
                match conn.roundtrip(&req).await {
                    (201, body) => {
                        counts.writes.fetch_add(1, Ordering::Relaxed);
                        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        created.push(answer["id"].as_str().unwrap().to_owned());
                    }
                    _ => {
                        counts.failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    // Imports: at 30 s and then every 60 s, 20,000 children's second
    // guardian comes or goes (the first minute includes a fold).
    {
        let (counts, stop, children, addr) = (counts.clone(), stop.clone(), children.clone(), i.admin);
        tasks.push(tokio::spawn(async move {
            let mut round = 0usize;
            let first = tokio::time::Instant::now() + Duration::from_secs(30);
            let mut tick = tokio::time::interval_at(first, Duration::from_secs(60));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                round += 1;
                // Rounds go in pairs over the same children: the second
                // guardian goes, then comes back.
                let from = (round.div_ceil(2) * 20_000) % children.len().max(1);
                let mut body = String::new();
                for kid in children.iter().cycle().skip(from).take(20_000.min(children.len())) {
                    let guardians: Vec<String> = if round % 2 == 1 {
                        vec![kid.guardians[0].to_string()]
                    } else {
                        kid.guardians.iter().map(ToString::to_string).collect()
                    };
                    body.push_str(
                        &json!({"id": kid.id.to_string(), "protected": kid.protected, "guardians": guardians})
                            .to_string(),
                    );
                    body.push('\n');
                }
                let mut conn = Conn::open(addr).await;
                let req = request(
                    "/v1/population",
                    Some(support::POPULATION),
                    "application/x-ndjson",
                    &body,
                );
                match conn.roundtrip(&req).await.0 {
                    200 => counts.imports.fetch_add(1, Ordering::Relaxed),
                    _ => counts.failures.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    // The samples.
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(minutes * 60.0);
    let mut series: Vec<(f64, f64, usize)> = Vec::new();
    println!("    t      RSS   fds  revision   checks  writes  lifts  imports  folds  checkpoints  failures");
    loop {
        let t = started.elapsed().as_secs_f64();
        let (rss, fds) = (status_mb("VmRSS"), open_fds());
        let status = support::get(i.check, "/v1/status", &[]).await.json();
        println!(
            "{t:>5.0} s {rss:>6.0} MB {fds:>5} {:>9} {:>8} {:>7} {:>6} {:>8} {:>6} {:>12} {:>9}",
            i.revision(),
            counts.checks.load(Ordering::Relaxed),
            counts.writes.load(Ordering::Relaxed),
            counts.lifts.load(Ordering::Relaxed),
            counts.imports.load(Ordering::Relaxed),
            status["store"]["folds"],
            status["store"]["checkpoints"],
            counts.failures.load(Ordering::Relaxed),
        );
        series.push((t, rss, fds));
        if Instant::now() >= until {
            break;
        }
        tokio::time::sleep(every.min(until.saturating_duration_since(Instant::now()) + Duration::from_millis(1))).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }

    // After the first minute (the first fold and checkpoint have settled).
    let after: Vec<&(f64, f64, usize)> = series.iter().filter(|(t, _, _)| *t >= 60.0).collect();
    if let Some(first) = after.first() {
        let max_rss = after.iter().map(|(_, r, _)| *r).fold(0.0, f64::max);
        let max_fds = after.iter().map(|(_, _, f)| *f).max().unwrap_or(0);
        let growth = (max_rss - first.1) / first.1 * 100.0;
        println!(
            "after the first minute: RSS {:.0} MB -> at most {max_rss:.0} MB ({growth:+.1} %, target < 5 %): {}",
            first.1,
            if growth < 5.0 { "met" } else { "NOT met" }
        );
        // An import holds its connection and spool file while it runs:
        // a leak shows as a count that keeps growing, so the last minute's
        // lowest sample is what is compared.
        let last: Vec<usize> = series
            .iter()
            .filter(|(t, _, _)| *t >= series.last().map_or(0.0, |l| l.0) - 60.0)
            .map(|(_, _, f)| *f)
            .collect();
        let settled = last.iter().copied().min().unwrap_or(0);
        println!(
            "open descriptors {} -> {settled} in the last minute (at most {max_fds} while an import ran; target: \
             no growth): {}",
            first.2,
            if settled <= first.2 { "met" } else { "NOT met" }
        );
    } else {
        println!("(shorter than a minute: no verdict)");
    }
    i.stop().await;
}
