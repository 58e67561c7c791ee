//! Load benchmark of the check listener over loopback HTTP/1.1 keep-alive,
//! side by side with a bare hyper server that answers a fixed 200, driven by
//! the same client in the same run (SPEC §7).
//!
//! ```sh
//! cargo run --release --example load                  # 10 % of national scale
//! cargo run --release --example load -- --scale 1 --seconds 10 --connections 32
//! ```
//!
//! Both servers run on one tokio worker thread and the client on another
//! (this machine has two cores), so the ratio compares the servers, not how
//! they share cores with the client. Reported:
//!
//! 1. closed loop, all connections as fast as they can: requests/s, p50,
//!    p99 — for the bare server and for `/v1/check`, and their ratio at the
//!    median of 5 alternating rounds; first driven by `wrk` (Debian's, one
//!    thread, in its own process, the same random check bodies through a
//!    Lua script), the client SPEC §7 names, then by this example's own
//!    client;
//! 2. open loop at half of `/v1/check`'s peak: p50, p99, p99.9, latency
//!    measured from when each request was due (no coordinated omission);
//! 3. `/v1/check/batch` with 100 checks a request: checks/s;
//! 4. Envoy's gRPC ext_authz (`Authorization/Check`, a tonic client with as
//!    many calls in flight as there are connections, multiplexed on one
//!    HTTP/2 connection as an Envoy worker does) beside `/v1/check` on the
//!    same server thread, alternating three rounds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request as AttrRequest};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use guardian_access::clock::Clock;
use guardian_access::http::check::{self, State};
use guardian_access::http::grpc::{self, GrpcListener};
use guardian_access::http::listener::ListenerConfig;
use guardian_access::synth::{self, Scale};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy)]
struct Args {
    scale: f64,
    seconds: u64,
    connections: usize,
    rounds: usize,
}

fn args() -> Args {
    let mut a = Args {
        scale: 0.1,
        seconds: 5,
        connections: 32,
        rounds: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("`{flag}` needs a value"));
        match flag.as_str() {
            "--scale" => a.scale = value.parse().expect("--scale: a number"),
            "--rounds" => a.rounds = value.parse().expect("--rounds: a whole number"),
            "--seconds" => a.seconds = value.parse().expect("--seconds: whole seconds"),
            "--connections" => a.connections = value.parse().expect("--connections: a count"),
            _ => panic!("unknown flag `{flag}`"),
        }
    }
    a
}

/// A bare hyper server: reads the body, answers a fixed 200.
async fn bare(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let _ = req.into_body().collect().await;
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One keep-alive connection that sends prepared requests and reads replies.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    chunk: Box<[u8]>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            chunk: vec![0u8; 64 * 1024].into_boxed_slice(),
        }
    }

    /// Sends `req` and reads one reply; returns its status.
    async fn roundtrip(&mut self, req: &[u8]) -> u16 {
        self.stream.write_all(req).await.unwrap();
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
                let total = end + 4 + len;
                while self.buf.len() < total {
                    let n = self.stream.read(&mut self.chunk).await.unwrap();
                    assert!(n > 0, "server closed");
                    self.buf.extend_from_slice(&self.chunk[..n]);
                }
                self.buf.drain(..total);
                return status;
            }
            let n = self.stream.read(&mut self.chunk).await.unwrap();
            assert!(n > 0, "server closed");
            self.buf.extend_from_slice(&self.chunk[..n]);
        }
    }
}

struct Outcome {
    requests: usize,
    elapsed: Duration,
    latencies: Vec<u64>,
    non_200: usize,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn pct(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        self.latencies[((self.latencies.len() - 1) as f64 * p) as usize] as f64 / 1000.0
    }
}

/// Drives `requests` (round robin) over `connections` connections for
/// `duration`. With `rate`, each connection sends on a fixed schedule and
/// latency counts from when a request was due; without, as fast as it can.
async fn drive(
    addr: SocketAddr,
    requests: Arc<Vec<Vec<u8>>>,
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
) -> Outcome {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let requests = requests.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut non_200 = 0;
            let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r));
            let mut due = start + interval.map_or(Duration::ZERO, |i| i.mul_f64(c as f64 / connections as f64));
            let mut i = c * 7919;
            loop {
                if interval.is_some() {
                    if due >= deadline {
                        break;
                    }
                    // tokio's timer has millisecond resolution and fires
                    // late under load: sleep to within 3 ms, then yield
                    // until due, so the client's own timer does not pose
                    // as server latency.
                    if let Some(early) = due.checked_sub(Duration::from_millis(3))
                        && early > Instant::now()
                    {
                        tokio::time::sleep_until(early.into()).await;
                    }
                    while Instant::now() < due {
                        tokio::task::yield_now().await;
                    }
                } else {
                    due = Instant::now();
                    if due >= deadline {
                        break;
                    }
                }
                i = (i + 1) % requests.len();
                if conn.roundtrip(&requests[i]).await != 200 {
                    non_200 += 1;
                }
                latencies.push(due.elapsed().as_nanos() as u64);
                if let Some(interval) = interval {
                    due += interval;
                }
            }
            (latencies, non_200)
        }));
    }
    gather(start, tasks).await
}

/// Every task's latencies and failures, as one outcome.
async fn gather(start: Instant, tasks: Vec<tokio::task::JoinHandle<(Vec<u64>, usize)>>) -> Outcome {
    let mut all = Vec::new();
    let mut non_200 = 0;
    for t in tasks {
        let (l, n) = t.await.unwrap();
        all.extend(l);
        non_200 += n;
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    Outcome {
        requests: all.len(),
        elapsed,
        latencies: all,
        non_200,
    }
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn report(name: &str, o: &Outcome) {
    println!(
        "{name:<28} {:>9.0} req/s   p50 {:>7.1} µs   p99 {:>7.1} µs   p99.9 {:>7.1} µs   ({} requests, {} not 200)",
        o.rate(),
        o.pct(0.50),
        o.pct(0.99),
        o.pct(0.999),
        o.requests,
        o.non_200
    );
}

fn main() {
    let a = args();
    let t = Instant::now();
    let synthetic = synth::generate(Scale::fraction(a.scale), 42).unwrap();
    println!(
        "population: {} persons at scale {} (built in {:.1} s)",
        synthetic.snapshot.people().len(),
        a.scale,
        t.elapsed().as_secs_f64()
    );
    let queries = synthetic.queries(1 << 16, 7);
    let bodies: Vec<String> = queries
        .iter()
        .map(|q| {
            format!(
                r#"{{"actor":"{}","subject":"{}","service":"{}"}}"#,
                q.actor,
                q.subject,
                q.service.as_str()
            )
        })
        .collect();
    let checks = Arc::new(bodies.iter().map(|b| post("/v1/check", b)).collect::<Vec<_>>());
    let batches = Arc::new(
        bodies
            .chunks(100)
            .map(|c| post("/v1/check/batch", &format!(r#"{{"checks":[{}]}}"#, c.join(","))))
            .collect::<Vec<_>>(),
    );

    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (check_addr, bare_addr, grpc_addr) = servers.block_on(async {
        let check = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bare_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addrs = (
            check.local_addr().unwrap(),
            bare_listener.local_addr().unwrap(),
            grpc_listener.local_addr().unwrap(),
        );
        let state = Arc::new(State::detached(ListenerConfig::default(), "load", Clock::system()));
        state.cell.publish(synthetic.snapshot.clone());
        tokio::spawn(check::run(check, state.clone(), std::future::pending()));
        tokio::spawn(grpc::run(
            GrpcListener::Tcp(grpc_listener),
            state,
            std::future::pending(),
        ));
        tokio::spawn(bare(bare_listener));
        addrs
    });
    let grpc_requests = Arc::new(queries.iter().map(grpc_request).collect::<Vec<_>>());

    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let d = Duration::from_secs(a.seconds);
    let n = a.connections;
    client.block_on(async {
        println!(
            "\nclosed loop, {n} keep-alive connections, {} s each, one server thread, one client thread:",
            a.seconds
        );
        // Warm up both.
        drive(bare_addr, checks.clone(), n, Duration::from_millis(500), None).await;
        drive(check_addr, checks.clone(), n, Duration::from_millis(500), None).await;
        wrk_rounds(&a, bare_addr, check_addr, &bodies);
        println!("\nthe same with this example's client (one tokio thread):");
        // Alternate the two, so drift on a shared VM hits both.
        let mut ratios = Vec::new();
        let mut peaks = Vec::new();
        for round in 1..=a.rounds {
            let bare = drive(bare_addr, checks.clone(), n, d, None).await;
            report(&format!("{round}: bare hyper, fixed 200"), &bare);
            let check = drive(check_addr, checks.clone(), n, d, None).await;
            report(&format!("{round}: guardian-access /v1/check"), &check);
            ratios.push(check.rate() / bare.rate());
            peaks.push(check.rate());
        }
        println!(
            "ratio /v1/check ÷ bare       {:.2} median (rounds: {})   (target ≥ 0.85)",
            median(&ratios),
            ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", ")
        );

        let half = median(&peaks) / 2.0;
        println!("\nopen loop at half the /v1/check peak (median of the rounds: {half:.0} req/s), {n} connections:");
        let o = drive(check_addr, checks.clone(), n, d, Some(half)).await;
        report("guardian-access /v1/check", &o);
        println!(
            "p99 at half load             {:.3} ms   (target < 1 ms)",
            o.pct(0.99) / 1000.0
        );

        println!("\nbatch, 100 checks a request, {n} connections:");
        let b = drive(check_addr, batches.clone(), n, d, None).await;
        report("guardian-access /v1/check/batch", &b);
        println!("checks/s in batches          {:.0}", b.rate() * 100.0);

        println!("\ngRPC ext_authz beside /v1/check, {n} calls in flight, one HTTP/2 connection:");
        let channel = tonic::transport::Endpoint::try_from(format!("http://{grpc_addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        drive_grpc(channel.clone(), grpc_requests.clone(), n, Duration::from_millis(500)).await;
        let mut ratios = Vec::new();
        for round in 1..=3 {
            let http = drive(check_addr, checks.clone(), n, d, None).await;
            report(&format!("{round}: /v1/check (HTTP/1.1)"), &http);
            let g = drive_grpc(channel.clone(), grpc_requests.clone(), n, d).await;
            report(&format!("{round}: gRPC Authorization/Check"), &g);
            ratios.push(g.rate() / http.rate());
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "ratio gRPC ÷ /v1/check       {:.2} median (rounds: {})",
            ratios[1],
            ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", ")
        );
    });
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// What one `wrk` run printed.
struct WrkRun {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    non_2xx: u64,
}

/// A `wrk` latency figure (`812.00us`, `1.02ms`, `1.00s`) in µs.
fn wrk_micros(s: &str) -> Option<f64> {
    let (number, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        _ => return None,
    })
}

fn wrk(addr: SocketAddr, script: &std::path::Path, a: &Args) -> WrkRun {
    let out = std::process::Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{}", a.connections),
            &format!("-d{}s", a.seconds),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(format!("http://{addr}/v1/check"))
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field =
        |prefix: &str| -> Option<&str> { text.lines().find_map(|l| l.trim().strip_prefix(prefix)).map(str::trim) };
    WrkRun {
        rate: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .expect("wrk's Requests/sec"),
        p50_us: field("50%").and_then(wrk_micros).expect("wrk's 50%"),
        p99_us: field("99%").and_then(wrk_micros).expect("wrk's 99%"),
        non_2xx: field("Non-2xx or 3xx responses:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    }
}

/// The closed loop driven by `wrk` (one thread, its own process): bare
/// and `/v1/check` alternating, `rounds` rounds, the ratio at the median.
/// The check bodies go into a Lua script that formats every request once
/// up front, so the client does the same little work for both servers.
fn wrk_rounds(a: &Args, bare: SocketAddr, check: SocketAddr, bodies: &[String]) {
    if std::process::Command::new("wrk").arg("-v").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "wrk is required under CI (apt-get install wrk)"
        );
        println!("(wrk is not installed: `apt-get install wrk` for the rounds SPEC §7 names)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("checks.lua");
    let mut lua = String::from("local bodies = {\n");
    for b in bodies.iter().take(4096) {
        lua.push_str(&format!("  [[{b}]],\n"));
    }
    lua.push_str(
        "}\nlocal requests = {}\nlocal i = 0\n\
         init = function(args)\n\
           for k, body in ipairs(bodies) do\n\
             requests[k] = wrk.format(\"POST\", nil, {[\"content-type\"] = \"application/json\"}, body)\n\
           end\n\
         end\n\
         request = function()\n  i = i % #requests + 1\n  return requests[i]\nend\n",
    );
    std::fs::write(&script, lua).unwrap();
    println!(
        "\nwrk, 1 thread, {} connections, {} s a run, {} alternating rounds:",
        a.connections, a.seconds, a.rounds
    );
    wrk(bare, &script, &Args { seconds: 1, ..*a });
    wrk(check, &script, &Args { seconds: 1, ..*a });
    let mut ratios = Vec::new();
    for round in 1..=a.rounds {
        let b = wrk(bare, &script, a);
        let c = wrk(check, &script, a);
        assert_eq!(c.non_2xx, 0, "every check must answer 200");
        for (name, r) in [("bare hyper, fixed 200", &b), ("guardian-access /v1/check", &c)] {
            println!(
                "{round}: {name:<27} {:>9.0} req/s  p50 {:>7.1} µs  p99 {:>7.1} µs",
                r.rate, r.p50_us, r.p99_us
            );
        }
        ratios.push(c.rate / b.rate);
    }
    println!(
        "ratio /v1/check ÷ bare (wrk) {:.2} median (rounds: {})   (target ≥ 0.85)",
        median(&ratios),
        ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", ")
    );
}

/// The question as Envoy asks it: the original request's headers.
fn grpc_request(q: &guardian_access::Query) -> CheckRequest {
    let headers = [
        ("x-actor-id", q.actor.to_string()),
        ("x-subject-id", q.subject.to_string()),
        ("x-service", q.service.as_str().to_owned()),
        (":path", "/journal".to_owned()),
        (":method", "GET".to_owned()),
    ];
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/journal".into(),
                    headers: headers.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// `n` calls in flight for `d`, closed loop; a call that is not an answer
/// (OK or PERMISSION_DENIED) counts as not 200.
async fn drive_grpc(
    channel: tonic::transport::Channel,
    requests: Arc<Vec<CheckRequest>>,
    n: usize,
    d: Duration,
) -> Outcome {
    let start = Instant::now();
    let deadline = start + d;
    let mut tasks = Vec::new();
    for t in 0..n {
        let requests = requests.clone();
        let mut client = AuthorizationClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0;
            let mut i = t * 997;
            while Instant::now() < deadline {
                i = (i + 1) % requests.len();
                let sent = Instant::now();
                match client.check(requests[i].clone()).await {
                    Ok(r) if r.get_ref().status.as_ref().is_some_and(|s| s.code == 0 || s.code == 7) => {}
                    _ => failed += 1,
                }
                latencies.push(sent.elapsed().as_nanos() as u64);
            }
            (latencies, failed)
        }));
    }
    gather(start, tasks).await
}
