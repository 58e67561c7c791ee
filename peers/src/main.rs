//! guardian-access beside the engines a region would otherwise pick: the
//! same rules (SPEC §3), the same data, the same questions, in the same run.
//!
//! ```sh
//! cargo run --release --manifest-path peers/Cargo.toml                     # scale 0.01, ~2 min
//! cargo run --release --manifest-path peers/Cargo.toml -- --scale 0.1 --memory-scales 0.01,0.1,0.5,1
//! ```
//!
//! 1. **Memory and load time**: each engine is loaded alone in a fresh
//!    child process (this binary re-run with `--only ENGINE`), so resident
//!    set deltas do not mix; each child also checks a sample of answers.
//! 2. **Equality**: every measured question is answered by every engine,
//!    allow/deny *and* reason compared with our `decide`; the first
//!    difference aborts the run, naming the pair, before anything is timed.
//! 3. **In process, one thread**: decisions/s back to back, and p50/p99
//!    of checks timed singly: ours (`decide`), Cedar, regorus.
//! 4. **Loopback HTTP**: our `POST /v1/check` and Cerbos's
//!    `POST /api/check/resources`, the same client, the same connections,
//!    alternating rounds, each server on one core.
//!
//! Every identity number is synthetic, made at run time in memory.

mod cedar;
mod cerbos;
mod data;
mod http;
mod mem;
mod rego;

use std::hint::black_box;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use guardian_access::clock::Clock;
use guardian_access::http::check::{self, State};
use guardian_access::http::listener::ListenerConfig;
use guardian_access::{Reason, decide};

use crate::data::{Case, Rows};

const HELP: &str = "\
peers: guardian-access beside Cedar, Rego (regorus) and Cerbos, same rules, data and questions

  --scale F            fraction of national scale (2.2M children) for equality and speed [0.01]
  --memory-scales LIST comma-separated scales for the memory/load figures, each engine in a
                       fresh process; an engine that fails one is not tried at larger ones
                       [the --scale]
  --queries N          measured questions (every one checked on every engine) [100000]
  --seconds S          in-process timing per engine and round, for each of rate and latency [1]
  --rounds R           rounds, alternating the engines [3]
  --connections C      HTTP keep-alive connections [32]
  --http-seconds S     HTTP closed-loop time per server and round [3]
  --cerbos-dir DIR     where the npm package @cerbos/cerbos-linux-x64 is (installed there if
                       missing) [peers/.cerbos]
  --cerbos-procs N     GOMAXPROCS of the Cerbos server (ours gets one tokio worker) [1]
  --mem-limit-gb G     address-space cap of each memory child [16]
  --no-cerbos          leave out Cerbos
  --no-http            leave out the HTTP comparison
  --no-cerbos-floor    do not also time Cerbos with a one-rule allow-all policy (its floor)
  --http-queries N     the first N measured questions are the HTTP set, every one checked on
                       every server first (Cerbos answers ~1,500/s here) [20000]
  --dump DIR           write the generated Cedar policy, the Rego policy and a sample of each
                       engine's input to DIR
";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Engine {
    Ours,
    Cedar,
    Rego,
}

impl Engine {
    const ALL: [Engine; 3] = [Engine::Ours, Engine::Cedar, Engine::Rego];

    fn flag(self) -> &'static str {
        match self {
            Engine::Ours => "ours",
            Engine::Cedar => "cedar",
            Engine::Rego => "rego",
        }
    }

    fn parse(s: &str) -> Engine {
        Engine::ALL
            .into_iter()
            .find(|e| e.flag() == s)
            .unwrap_or_else(|| panic!("--only: one of ours, cedar, rego (not `{s}`)"))
    }

    fn name(self) -> String {
        match self {
            Engine::Ours => "guardian-access".into(),
            Engine::Cedar => format!("Cedar {}", lock_version("cedar-policy")),
            Engine::Rego => format!("regorus {} (Rego)", lock_version("regorus")),
        }
    }
}

/// What is timed in process: each engine, and Cedar also without the
/// forbids that only name the reason.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Ours,
    Cedar,
    CedarMin,
    Rego,
}

impl Variant {
    const ALL: [Variant; 4] = [Variant::Ours, Variant::Cedar, Variant::CedarMin, Variant::Rego];

    fn engine(self) -> Engine {
        match self {
            Variant::Ours => Engine::Ours,
            Variant::Cedar | Variant::CedarMin => Engine::Cedar,
            Variant::Rego => Engine::Rego,
        }
    }

    fn name(self) -> String {
        match self {
            Variant::CedarMin => format!("Cedar {}, allow/deny only", lock_version("cedar-policy")),
            v => v.engine().name(),
        }
    }

    fn how(self) -> &'static str {
        match self {
            Variant::Ours => "`decide(&snapshot, &query)`",
            Variant::Cedar => "`Authorizer::is_authorized`, 12 policies",
            Variant::CedarMin => "the same without the 4 forbids that only name the reason",
            Variant::Rego => "`set_input` + `eval_rule`",
        }
    }
}

/// A dependency's version, from this crate's lock file.
fn lock_version(name: &str) -> &'static str {
    const LOCK: &str = include_str!("../Cargo.lock");
    let needle = format!("name = \"{name}\"\nversion = \"");
    LOCK.find(&needle)
        .map(|i| {
            let rest = &LOCK[i + needle.len()..];
            &rest[..rest.find('"').unwrap_or(0)]
        })
        .unwrap_or("?")
}

struct Args {
    scale: f64,
    memory_scales: Vec<f64>,
    queries: usize,
    seconds: f64,
    rounds: usize,
    connections: usize,
    http_seconds: f64,
    cerbos_dir: PathBuf,
    cerbos_procs: usize,
    mem_limit_gb: f64,
    cerbos: bool,
    cerbos_floor: bool,
    http_queries: usize,
    http: bool,
    dump: Option<PathBuf>,
    only: Option<Engine>,
}

fn args() -> Args {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut a = Args {
        scale: 0.01,
        memory_scales: Vec::new(),
        queries: 100_000,
        seconds: 1.0,
        rounds: 3,
        connections: 32,
        http_seconds: 3.0,
        cerbos_dir: manifest.join(".cerbos"),
        cerbos_procs: 1,
        mem_limit_gb: 16.0,
        cerbos: true,
        cerbos_floor: true,
        http_queries: 20_000,
        http: true,
        dump: None,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("`{flag}` needs a value"));
        match flag.as_str() {
            "--scale" => a.scale = value().parse().expect("--scale: a number"),
            "--memory-scales" => {
                a.memory_scales = value()
                    .split(',')
                    .map(|s| s.trim().parse().expect("--memory-scales: numbers"))
                    .collect()
            }
            "--queries" => a.queries = value().parse().expect("--queries: a count"),
            "--seconds" => a.seconds = value().parse().expect("--seconds: a number"),
            "--rounds" => a.rounds = value().parse().expect("--rounds: a count"),
            "--connections" => a.connections = value().parse().expect("--connections: a count"),
            "--http-seconds" => a.http_seconds = value().parse().expect("--http-seconds: a number"),
            "--cerbos-dir" => a.cerbos_dir = value().into(),
            "--cerbos-procs" => a.cerbos_procs = value().parse().expect("--cerbos-procs: a count"),
            "--mem-limit-gb" => a.mem_limit_gb = value().parse().expect("--mem-limit-gb: a number"),
            "--dump" => a.dump = Some(value().into()),
            "--only" => a.only = Some(Engine::parse(&value())),
            "--no-cerbos" => a.cerbos = false,
            "--no-http" => a.http = false,
            "--no-cerbos-floor" => a.cerbos_floor = false,
            "--http-queries" => a.http_queries = value().parse().expect("--http-queries: a count"),
            "--help" | "-h" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            _ => panic!("unknown flag `{flag}` (see --help)"),
        }
    }
    if a.memory_scales.is_empty() {
        a.memory_scales.push(a.scale);
    }
    assert!(
        a.rounds > 0 && a.queries > 0 && a.connections > 0,
        "counts must be positive"
    );
    a
}

fn main() {
    let a = args();
    if let Some(engine) = a.only {
        memory_child(engine, a.scale, a.mem_limit_gb);
        return;
    }
    run(&a);
}

// ---------------------------------------------------------------------------
// 1. Memory and load time, one engine per fresh process.
// ---------------------------------------------------------------------------

/// What a memory child reports (one line, `PEERS-MEM k=v ...`).
#[derive(Clone, Debug, Default)]
struct MemReport {
    scale: f64,
    children: usize,
    persons: usize,
    rules: usize,
    input_bytes: usize,
    rss_before: usize,
    rss_after: usize,
    peak: usize,
    load_s: f64,
    verified: usize,
}

impl MemReport {
    fn delta(&self) -> usize {
        self.rss_after.saturating_sub(self.rss_before)
    }

    fn per_child(&self) -> f64 {
        self.delta() as f64 / self.children as f64
    }

    fn line(&self) -> String {
        format!(
            "PEERS-MEM scale={} children={} persons={} rules={} input_bytes={} rss_before={} rss_after={} peak={} load_s={} verified={}",
            self.scale,
            self.children,
            self.persons,
            self.rules,
            self.input_bytes,
            self.rss_before,
            self.rss_after,
            self.peak,
            self.load_s,
            self.verified
        )
    }

    fn parse(line: &str) -> Option<MemReport> {
        let rest = line.strip_prefix("PEERS-MEM ")?;
        let mut r = MemReport::default();
        for kv in rest.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            match k {
                "scale" => r.scale = v.parse().ok()?,
                "children" => r.children = v.parse().ok()?,
                "persons" => r.persons = v.parse().ok()?,
                "rules" => r.rules = v.parse().ok()?,
                "input_bytes" => r.input_bytes = v.parse().ok()?,
                "rss_before" => r.rss_before = v.parse().ok()?,
                "rss_after" => r.rss_after = v.parse().ok()?,
                "peak" => r.peak = v.parse().ok()?,
                "load_s" => r.load_s = v.parse().ok()?,
                "verified" => r.verified = v.parse().ok()?,
                _ => {}
            }
        }
        Some(r)
    }
}

/// What the engine was loaded from.
enum Prepared {
    Ours(Vec<guardian_access::PersonRecord>, Vec<guardian_access::Rule>),
    Cedar { policy: String, entities: String },
    Rego(String),
}

/// A loaded engine.
enum Loaded {
    Ours(guardian_access::Snapshot),
    Cedar(cedar::Cedar),
    Rego(rego::Rego),
}

/// The child: loads one engine alone and reports its memory and load time.
///
/// Resident set before = after generating the input and converting it to
/// the engine's load format (ours: population records and rules; Cedar:
/// entity JSON; regorus: data JSON), everything else freed and the heap
/// trimmed; after = the same with the engine loaded, its load-time garbage
/// freed and the heap trimmed again. The input is held through both
/// readings, so the difference is what the engine keeps.
fn memory_child(engine: Engine, scale: f64, limit_gb: f64) {
    mem::limit_address_space((limit_gb * 1024.0 * 1024.0 * 1024.0) as u64);
    let input = data::generate(scale);
    let children = input.child_count();
    let rules_n = input.rules.len();
    // Expected answers for a sample, from our engine, built and dropped
    // before anything is measured.
    let snap = data::build_snapshot(&input.records, &input.rules);
    let persons = snap.people().len();
    let sample = data::cases(&input, &snap, 20_000, 11);
    drop(snap);
    let prepared = match engine {
        Engine::Ours => Prepared::Ours(input.records, input.rules),
        Engine::Cedar | Engine::Rego => {
            let rows = Rows::from_input(&input.records, &input.rules);
            drop(input);
            if engine == Engine::Cedar {
                let slots = cedar::Slots::of(&rows);
                Prepared::Cedar {
                    policy: cedar::policy_text(slots),
                    entities: cedar::entities_json(&rows),
                }
            } else {
                Prepared::Rego(rego::data_json(&rows))
            }
        }
    };
    let input_bytes = match &prepared {
        Prepared::Ours(..) => 0,
        Prepared::Cedar { entities, .. } => entities.len(),
        Prepared::Rego(s) => s.len(),
    };
    mem::trim();
    let rss_before = mem::rss();
    let t = Instant::now();
    let mut loaded = match &prepared {
        Prepared::Ours(records, rules) => Loaded::Ours(data::build_snapshot(records, rules)),
        Prepared::Cedar { policy, entities } => Loaded::Cedar(cedar::Cedar::load(policy, entities)),
        Prepared::Rego(text) => Loaded::Rego(rego::Rego::load(text)),
    };
    let load_s = t.elapsed().as_secs_f64();
    // The input stays allocated through both readings, so that the
    // difference is what loading added and kept.
    mem::trim();
    let rss_after = mem::rss();
    drop(prepared);
    // The engine answers: the sample, allow/deny compared with ours.
    let mut verified = 0;
    for c in &sample {
        let allowed = match &mut loaded {
            Loaded::Ours(s) => decide(s, &c.query).allowed(),
            Loaded::Cedar(e) => e.allowed(&cedar::Cedar::request(c)),
            Loaded::Rego(e) => e.allowed(&rego::Rego::input(c)),
        };
        assert_eq!(
            allowed,
            c.reason.allows(),
            "{} at scale {scale}: actor {} subject {} {} at {}: expected {}",
            engine.name(),
            c.query.actor,
            c.query.subject,
            c.query.service.as_str(),
            c.at,
            c.reason.as_str()
        );
        verified += 1;
    }
    let report = MemReport {
        scale,
        children,
        persons,
        rules: rules_n,
        input_bytes,
        rss_before,
        rss_after,
        peak: mem::peak(),
        load_s,
        verified,
    };
    println!("{}", report.line());
    black_box(&loaded);
}

/// Runs a memory child; `Err` says why it did not finish.
fn spawn_memory_child(engine: Engine, scale: f64, limit_gb: f64) -> Result<MemReport, String> {
    let exe = std::env::current_exe().expect("path of this binary");
    let t = Instant::now();
    let out = Command::new(exe)
        .args(["--only", engine.flag(), "--scale", &scale.to_string()])
        .args(["--mem-limit-gb", &limit_gb.to_string()])
        .output()
        .map_err(|e| format!("cannot start child: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if let Some(r) = stdout.lines().find_map(MemReport::parse) {
        eprintln!(
            "  {:<26} scale {scale:<6} held: {:.1} MB over {} children ({:.1} s)",
            engine.name(),
            mem::mb(r.delta()),
            r.children,
            t.elapsed().as_secs_f64()
        );
        return Ok(r);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let why = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.starts_with("note:"))
        .unwrap_or("no output")
        .to_owned();
    eprintln!(
        "  {:<26} scale {scale:<6} FAILED after {:.1} s ({}): {why}",
        engine.name(),
        t.elapsed().as_secs_f64(),
        out.status
    );
    Err(format!("{} — {why}", out.status))
}

// ---------------------------------------------------------------------------
// 2-4. Equality, then speed.
// ---------------------------------------------------------------------------

/// The first case on which an engine differs from ours, named, ends the run.
fn differs(engine: &str, c: &Case, allowed: bool, reason: Option<Reason>, extra: &str) -> ! {
    eprintln!(
        "\nEQUALITY FAILED: {engine} differs from guardian-access on a measured pair:\n  \
         actor {} subject {} service {} at {} (Unix s)\n  \
         guardian-access: {} ({})\n  {engine}: {} ({}){extra}",
        c.query.actor,
        c.query.subject,
        c.query.service.as_str(),
        c.at,
        if c.reason.allows() { "allow" } else { "deny" },
        c.reason.as_str(),
        if allowed { "allow" } else { "deny" },
        reason.map_or("no reason", Reason::as_str),
    );
    std::process::exit(2);
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// Checks back to back for `budget`, cycling through the cases;
/// returns decisions per second.
fn rate(n: usize, budget: Duration, mut check: impl FnMut(usize) -> bool) -> f64 {
    let start = Instant::now();
    let mut done = 0usize;
    let mut i = 0usize;
    loop {
        for _ in 0..64 {
            black_box(check(black_box(i)));
            i += 1;
            if i == n {
                i = 0;
            }
        }
        done += 64;
        if start.elapsed() >= budget {
            break;
        }
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// Checks timed one by one for `budget`; nanoseconds, unsorted.
fn latencies(n: usize, budget: Duration, mut check: impl FnMut(usize) -> bool) -> Vec<u64> {
    let start = Instant::now();
    let mut out = Vec::with_capacity(1 << 20);
    let mut i = n / 2;
    while start.elapsed() < budget {
        for _ in 0..64 {
            let t = Instant::now();
            black_box(check(black_box(i)));
            out.push(t.elapsed().as_nanos() as u64);
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }
    out
}

/// Speed figures of one engine.
#[derive(Default)]
struct Speed {
    rates: Vec<f64>,
    lat: Vec<u64>,
}

impl Speed {
    fn median_rate(&self) -> f64 {
        let mut r = self.rates.clone();
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    }

    fn sort(&mut self) {
        self.lat.sort_unstable();
    }
}

fn fmt_ns(ns: f64) -> String {
    if ns < 10_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 10_000_000.0 {
        format!("{:.1} µs", ns / 1000.0)
    } else {
        format!("{:.1} ms", ns / 1e6)
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

fn fmt_bytes(b: f64) -> String {
    if b >= 1_048_576.0 {
        format!("{:.1} MB", b / 1_048_576.0)
    } else if b >= 1024.0 {
        format!("{:.1} KB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

fn run(a: &Args) {
    println!("# guardian-access beside Cedar, Rego (regorus) and Cerbos\n");
    println!(
        "machine: {} cores, {:.1} GB RAM; every engine single-threaded in process; servers on one core each",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem::status_total_gb()
    );

    // ---- 1. Memory, each engine alone --------------------------------------
    println!("\n## 1. Memory and load time (each engine alone in a fresh process)\n");
    let mut memory: Vec<(Engine, f64, Result<MemReport, String>)> = Vec::new();
    let mut scales = a.memory_scales.clone();
    scales.sort_by(f64::total_cmp);
    let cap = a.mem_limit_gb * 1024.0 * 1024.0 * 1024.0;
    for engine in Engine::ALL {
        let mut last: Option<MemReport> = None;
        for &s in &scales {
            // Not worth minutes of loading to learn what the smaller scale
            // already says: skip a scale whose projected peak is over the cap.
            if let Some(prev) = &last {
                let projected = prev.peak as f64 * s / prev.scale;
                if projected > cap {
                    let why = format!(
                        "not tried: peak RSS projected from scale {} is {:.1} GB, over the {} GB cap",
                        prev.scale,
                        projected / 1e9,
                        a.mem_limit_gb
                    );
                    eprintln!("  {:<26} scale {s:<6} {why}", engine.name());
                    memory.push((engine, s, Err(why)));
                    break;
                }
            }
            let r = spawn_memory_child(engine, s, a.mem_limit_gb);
            last = r.as_ref().ok().cloned();
            let failed = r.is_err();
            memory.push((engine, s, r));
            if failed {
                break;
            }
        }
    }
    println!(
        "{:<26} {:>7} {:>10} {:>10} {:>12} {:>11} {:>11} {:>10}",
        "engine", "scale", "children", "load", "input", "RSS delta", "per child", "peak RSS"
    );
    for (engine, s, r) in &memory {
        match r {
            Ok(r) => println!(
                "{:<26} {:>7} {:>10} {:>8.2} s {:>12} {:>11} {:>11} {:>10}",
                engine.name(),
                s,
                r.children,
                r.load_s,
                if r.input_bytes > 0 {
                    fmt_bytes(r.input_bytes as f64)
                } else {
                    "records".into()
                },
                fmt_bytes(r.delta() as f64),
                fmt_bytes(r.per_child()),
                fmt_bytes(r.peak as f64)
            ),
            Err(why) => println!("{:<26} {:>7} — {why}", engine.name(), s),
        }
    }
    println!(
        "(load: ours = snapshot build from population records and rules; Cedar = entity JSON + policy \
         parse; regorus = add_data(JSON) + add_policy + first evaluation. RSS delta = resident memory \
         kept after load (input held through both readings, heap trimmed). Each child also checked 20,000 answers.)"
    );

    // ---- 2. Data, questions, equality -------------------------------------
    println!("\n## 2. Data, questions and equality (scale {})\n", a.scale);
    let t = Instant::now();
    let input = data::generate(a.scale);
    let gen_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let snap = data::build_snapshot(&input.records, &input.rules);
    let ours_load = t.elapsed().as_secs_f64();
    let rows = Rows::from_input(&input.records, &input.rules);
    rows.check_against(&snap);
    let cases = data::cases(&input, &snap, a.queries, 7);
    println!(
        "population: {} persons ({} children, {} of them with unknown birth date), {} restrictions/grants, \
         generated in {gen_s:.1} s",
        snap.people().len(),
        input.child_count(),
        input.unknown_age.len(),
        input.rules.len()
    );
    let slots = cedar::Slots::of(&rows);
    println!(
        "Cedar slots per child (most rules of one kind on one child): seal {}, block {}, extended {}, early {}",
        slots.seal, slots.block, slots.ext, slots.early
    );
    println!(
        "\nmeasured questions: {} (half the generator's realistic mix, half aimed at rare rows)",
        cases.len()
    );
    let synth_half = data::distribution(&cases);
    for (r, n) in &synth_half {
        println!(
            "  {:<20} {:<5} {:>8}  {:>5.1} %",
            r.as_str(),
            if r.allows() { "allow" } else { "deny" },
            n,
            *n as f64 * 100.0 / cases.len() as f64
        );
    }
    let missing: Vec<&str> = synth_half
        .iter()
        .filter(|(_, n)| *n == 0)
        .map(|(r, _)| r.as_str())
        .collect();
    assert!(missing.is_empty(), "no measured question has reason(s) {missing:?}");

    let cedar_policy = cedar::policy_text(slots);
    let t = Instant::now();
    let cedar_json = cedar::entities_json(&rows);
    let cedar_json_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let cedar = cedar::Cedar::load(&cedar_policy, &cedar_json);
    let cedar_load = t.elapsed().as_secs_f64();
    let rego_json = rego::data_json(&rows);
    let t = Instant::now();
    let mut rego = rego::Rego::load(&rego_json);
    let rego_load = t.elapsed().as_secs_f64();
    if let Some(dir) = &a.dump {
        dump(dir, &cedar_policy, &cedar_json, &rego_json);
    }
    drop(cedar_json);
    drop(rego_json);
    println!(
        "loaded here: ours {ours_load:.2} s, Cedar {cedar_load:.2} s (+{cedar_json_s:.2} s writing its JSON), \
         regorus {rego_load:.2} s"
    );

    // Inputs prepared once, outside every timing: each engine gets its
    // natural request object, ready.
    let queries: Vec<guardian_access::Query> = cases.iter().map(|c| c.query).collect();
    let cedar_requests: Vec<cedar_policy::Request> = cases.iter().map(cedar::Cedar::request).collect();
    let rego_inputs: Vec<regorus::Value> = cases.iter().map(rego::Rego::input).collect();

    let t = Instant::now();
    let mut cedar_errors = 0;
    for (i, c) in cases.iter().enumerate() {
        let (allowed, reason, errors) = cedar.explain(&cedar_requests[i]);
        cedar_errors += errors;
        if allowed != c.reason.allows() || reason != Some(c.reason) {
            differs(&Engine::Cedar.name(), c, allowed, reason, "");
        }
        let allowed_min = cedar.allowed_min(&cedar_requests[i]);
        if allowed_min != c.reason.allows() {
            differs(&Variant::CedarMin.name(), c, allowed_min, None, "");
        }
        let (allowed, reason) = rego.explain(&rego_inputs[i]);
        if allowed != c.reason.allows() || reason != Some(c.reason) {
            differs(&Engine::Rego.name(), c, allowed, reason, "");
        }
    }
    println!(
        "equality: Cedar and regorus give the same allow/deny AND reason as guardian-access on all {} \
         questions, and Cedar without the reason-only forbids the same allow/deny ({:.1} s; Cedar policy \
         evaluation errors: {cedar_errors})",
        cases.len(),
        t.elapsed().as_secs_f64()
    );

    // ---- 3. In process ------------------------------------------------------
    let budget = Duration::from_secs_f64(a.seconds);
    let n = cases.len();
    let mut speeds: Vec<(Variant, Speed)> = Variant::ALL.into_iter().map(|e| (e, Speed::default())).collect();
    let mut overhead: Vec<u64> = (0..100_000)
        .map(|_| {
            let t = Instant::now();
            t.elapsed().as_nanos() as u64
        })
        .collect();
    overhead.sort_unstable();
    println!(
        "\n## 3. In process, one thread ({} rounds × {:.1} s per engine for rate and again for latency)\n",
        a.rounds, a.seconds
    );
    for round in 1..=a.rounds {
        for (engine, speed) in speeds.iter_mut() {
            let (r, l) = match engine {
                Variant::Ours => (
                    rate(n, budget, |i| decide(&snap, &queries[i]).allowed()),
                    latencies(n, budget, |i| decide(&snap, &queries[i]).allowed()),
                ),
                Variant::Cedar => (
                    rate(n, budget, |i| cedar.allowed(&cedar_requests[i])),
                    latencies(n, budget, |i| cedar.allowed(&cedar_requests[i])),
                ),
                Variant::CedarMin => (
                    rate(n, budget, |i| cedar.allowed_min(&cedar_requests[i])),
                    latencies(n, budget, |i| cedar.allowed_min(&cedar_requests[i])),
                ),
                Variant::Rego => (
                    rate(n, budget, |i| rego.allowed(&rego_inputs[i])),
                    latencies(n, budget, |i| rego.allowed(&rego_inputs[i])),
                ),
            };
            eprintln!("  round {round}: {:<36} {:>10}/s", engine.name(), fmt_rate(r));
            speed.rates.push(r);
            speed.lat.extend(l);
        }
    }
    for (_, s) in speeds.iter_mut() {
        s.sort();
    }
    let ours_rate = speeds[0].1.median_rate();
    println!(
        "{:<36} {:>14} {:>10} {:>10} {:>14}",
        "engine", "decisions/s", "p50", "p99", "ours ÷ engine"
    );
    for (engine, s) in &speeds {
        println!(
            "{:<36} {:>14} {:>10} {:>10} {:>13.1}×",
            engine.name(),
            fmt_rate(s.median_rate()),
            fmt_ns(percentile(&s.lat, 0.5) as f64),
            fmt_ns(percentile(&s.lat, 0.99) as f64),
            ours_rate / s.median_rate()
        );
    }
    println!(
        "(decisions/s: median of the rounds, back to back; p50/p99: every check timed singly, timer \
         overhead p50 {} ns included. Inputs prebuilt: Query / cedar_policy::Request / regorus::Value.)",
        percentile(&overhead, 0.5)
    );

    // ---- 4. HTTP --------------------------------------------------------------
    let http_rows = if a.http {
        http_compare(a, &cases[..a.http_queries.min(cases.len())], &rows, &snap)
    } else {
        Vec::new()
    };

    // ---- 5. Summary -----------------------------------------------------------
    summary(a, &memory, &speeds, &http_rows, n, ours_load, cedar_load, rego_load);
}

/// Writes what each engine was given, for inspection.
fn dump(dir: &std::path::Path, cedar_policy: &str, cedar_json: &str, rego_json: &str) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("--dump {}: {e}", dir.display()));
    let head = |s: &str| s.chars().take(20_000).collect::<String>();
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("--dump {name}: {e}"));
    };
    write("guardian.cedar", cedar_policy);
    write("guardian.rego", rego::POLICY);
    write("cedar-entities.head.json", &head(cedar_json));
    write("rego-data.head.json", &head(rego_json));
    println!(
        "wrote the policies and the first 20,000 characters of each input to {}",
        dir.display()
    );
}

/// One HTTP server in the comparison, as measured.
struct HttpRow {
    name: String,
    endpoint: &'static str,
    /// The median round by rate.
    outcome: http::Outcome,
    /// Server CPU seconds per decision in that round (user + system).
    cpu_per: f64,
    /// Mean request size, bytes.
    request_bytes: f64,
    /// Start to ready (Cerbos), RSS now and peak (Cerbos).
    start: Option<f64>,
    rss: Option<(usize, usize)>,
}

/// A server under test: where, what to send, how to read its CPU.
struct Target {
    name: String,
    endpoint: &'static str,
    addr: std::net::SocketAddr,
    requests: Arc<Vec<Vec<u8>>>,
    /// User and system CPU seconds of the server so far.
    cpu: Box<dyn Fn() -> (f64, f64)>,
    server: Option<cerbos::Server>,
    rounds: Vec<(http::Outcome, f64)>,
}

/// Our `/v1/check` and Cerbos over loopback: same client, same connections,
/// alternating rounds; each answer checked first.
fn http_compare(a: &Args, cases: &[Case], rows: &Rows, snap: &guardian_access::Snapshot) -> Vec<HttpRow> {
    println!(
        "\n## 4. Loopback HTTP/1.1 ({} keep-alive connections, closed loop, {} rounds × {:.1} s, alternating; \
         the first {} measured questions)\n",
        a.connections,
        a.rounds,
        a.http_seconds,
        cases.len()
    );
    for (r, n) in data::distribution(cases) {
        print!("{} {n}; ", r.as_str());
    }
    println!();
    // Our server on one tokio worker thread, as examples/load.rs; its
    // threads are named so that their CPU time can be read.
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("peers-server")
        .enable_all()
        .build()
        .expect("server runtime");
    let ours_addr = servers.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(State::detached(ListenerConfig::default(), "peers", Clock::system()));
        state.cell.publish(snap.clone());
        tokio::spawn(check::run(listener, state, std::future::pending()));
        addr
    });
    let tz = snap.tz().clone();
    let ours_reqs: Vec<Vec<u8>> = cases
        .iter()
        .map(|c| {
            let q = &c.query;
            let at = guardian_access::core::time::LocalTime::new(q.at, &tz);
            http::post(
                "/v1/check",
                &format!(
                    r#"{{"actor":"{}","subject":"{}","service":"{}","at":"{}"}}"#,
                    q.actor,
                    q.subject,
                    q.service.as_str(),
                    at.as_str()
                ),
            )
        })
        .collect();
    let me = std::process::id();
    let mut targets = vec![Target {
        name: "guardian-access /v1/check".into(),
        endpoint: "`POST /v1/check`",
        addr: ours_addr,
        requests: Arc::new(ours_reqs),
        cpu: Box::new(move || {
            mem::threads_named("peers-server")
                .into_iter()
                .map(|t| mem::cpu_split(me, Some(t)))
                .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
        }),
        server: None,
        rounds: Vec::new(),
    }];
    let mut version = String::new();
    if a.cerbos {
        let bin = cerbos::binary(&a.cerbos_dir);
        version = cerbos::version(&bin);
        let caller = cerbos::Caller::new(rows);
        let reqs: Arc<Vec<Vec<u8>>> = Arc::new(
            cases
                .iter()
                .map(|c| http::post("/api/check/resources", &caller.body(c)))
                .collect(),
        );
        let mut add = |name: String, files: &[(&str, &str)]| {
            let server = cerbos::Server::start(&bin, a.cerbos_procs, files);
            let pid = server.pid();
            targets.push(Target {
                name,
                endpoint: "`POST /api/check/resources`",
                addr: server.addr,
                requests: reqs.clone(),
                cpu: Box::new(move || mem::cpu_split(pid, None)),
                server: Some(server),
                rounds: Vec::new(),
            });
        };
        add(format!("Cerbos {version}"), &cerbos::POLICIES);
        if a.cerbos_floor {
            add(format!("Cerbos {version}, allow-all policy"), &cerbos::FLOOR);
        }
    }

    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let d = Duration::from_secs_f64(a.http_seconds);
    let c = a.connections;
    client.block_on(async {
        // Equality over HTTP first: every measured question, on each
        // server that answers with our rules.
        for target in targets.iter().filter(|t| !t.name.contains("allow-all")) {
            let t = Instant::now();
            let answers = http::answer_all(target.addr, target.requests.clone(), c).await;
            for (case, (status, body)) in cases.iter().zip(&answers) {
                let parsed = if *status != 200 {
                    Err(format!("HTTP {status}: {}", String::from_utf8_lossy(body)))
                } else if target.server.is_some() {
                    cerbos::parse_answer(body, case.query.service)
                } else {
                    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                    Ok((
                        v["decision"] == "allow",
                        v["reason"].as_str().and_then(data::parse_reason),
                    ))
                };
                match parsed {
                    Ok((allowed, reason)) if allowed == case.reason.allows() && reason == Some(case.reason) => {}
                    Ok((allowed, reason)) => differs(
                        &target.name,
                        case,
                        allowed,
                        reason,
                        &format!(" [{}]", String::from_utf8_lossy(body)),
                    ),
                    Err(e) => differs(&target.name, case, false, None, &format!(" [{e}]")),
                }
            }
            println!(
                "equality: {} gives the same allow/deny AND reason as decide() on all {} questions ({:.1} s{})",
                target.name,
                cases.len(),
                t.elapsed().as_secs_f64(),
                target.server.as_ref().map_or(String::new(), |s| format!(
                    "; started and ready in {:.2} s",
                    s.start.as_secs_f64()
                ))
            );
        }
        // Warm up, then alternate.
        for target in &targets {
            http::drive(target.addr, target.requests.clone(), c, Duration::from_millis(500)).await;
        }
        for round in 1..=a.rounds {
            for target in targets.iter_mut() {
                let (u0, s0) = (target.cpu)();
                let o = http::drive(target.addr, target.requests.clone(), c, d).await;
                let (u1, s1) = (target.cpu)();
                let per = |x: f64| x / o.requests.max(1) as f64;
                let cpu_per = per(u1 - u0 + s1 - s0);
                eprintln!(
                    "  round {round}: {:<40} {:>10}/s p50 {:>8.1} µs p99 {:>8.1} µs, server CPU {:>6.1} µs/decision \
                     ({:.1} user + {:.1} system) ({} not 200)",
                    target.name,
                    fmt_rate(o.rate()),
                    o.pct_us(0.5),
                    o.pct_us(0.99),
                    cpu_per * 1e6,
                    per(u1 - u0) * 1e6,
                    per(s1 - s0) * 1e6,
                    o.non_200
                );
                assert_eq!(o.non_200, 0, "{} answered other than 200", target.name);
                target.rounds.push((o, cpu_per));
            }
        }
    });

    let mut out = Vec::new();
    for mut t in targets {
        t.rounds.sort_by(|x, y| x.0.rate().total_cmp(&y.0.rate()));
        let mid = t.rounds.len() / 2;
        let (outcome, cpu_per) = t.rounds.swap_remove(mid);
        out.push(HttpRow {
            request_bytes: t.requests.iter().map(Vec::len).sum::<usize>() as f64 / t.requests.len() as f64,
            name: t.name,
            endpoint: t.endpoint,
            outcome,
            cpu_per,
            start: t.server.as_ref().map(|s| s.start.as_secs_f64()),
            rss: t.server.as_ref().map(cerbos::Server::rss),
        });
    }
    drop(servers);
    let ours_rate = out[0].outcome.rate();
    let ours_cpu = out[0].cpu_per;
    println!(
        "{:<40} {:>12} {:>10} {:>10} {:>13} {:>13} {:>14} {:>9}",
        "server", "decisions/s", "p50", "p99", "ours ÷ it", "CPU/decision", "CPU ÷ ours", "req bytes"
    );
    for r in &out {
        println!(
            "{:<40} {:>12} {:>10} {:>10} {:>12.1}× {:>13} {:>13.1}× {:>9.0}",
            r.name,
            fmt_rate(r.outcome.rate()),
            format!("{:.0} µs", r.outcome.pct_us(0.5)),
            format!("{:.0} µs", r.outcome.pct_us(0.99)),
            ours_rate / r.outcome.rate(),
            format!("{:.1} µs", r.cpu_per * 1e6),
            r.cpu_per / ours_cpu,
            r.request_bytes
        );
    }
    if let Some(r) = out.iter().find(|r| r.rss.is_some()) {
        let (rss, hwm) = r.rss.unwrap_or_default();
        println!(
            "(median round by rate. Cerbos {version}: GOMAXPROCS={}, disk store, ready {:.2} s after spawn, \
             RSS {} after the runs ({} peak). It holds no data: each request carries the subject's guardians \
             and rules, which the caller must hold and look up. Our server: one tokio worker thread, holding \
             the snapshot. Server CPU: user + system time of the server's threads / process.)",
            a.cerbos_procs,
            r.start.unwrap_or(0.0),
            fmt_bytes(rss as f64),
            fmt_bytes(hwm as f64)
        );
    }
    out
}

/// The largest scale at which an engine held, and that report.
fn largest(memory: &[(Engine, f64, Result<MemReport, String>)], engine: Engine) -> Option<&MemReport> {
    memory
        .iter()
        .filter(|(e, _, r)| *e == engine && r.is_ok())
        .filter_map(|(_, _, r)| r.as_ref().ok())
        .max_by(|a, b| a.scale.total_cmp(&b.scale))
}

#[allow(clippy::too_many_arguments)]
fn summary(
    a: &Args,
    memory: &[(Engine, f64, Result<MemReport, String>)],
    speeds: &[(Variant, Speed)],
    http_rows: &[HttpRow],
    n: usize,
    ours_load: f64,
    cedar_load: f64,
    rego_load: f64,
) {
    println!("\n## How it compares\n");
    println!(
        "Same rules (SPEC §3), same synthetic population, same questions: {n} in process, the first {} of them \
         over HTTP; every answer of every engine (allow/deny and reason; allow/deny only for the Cedar variant \
         without reason-naming forbids) checked equal to ours before anything was timed. In process: one \
         thread, scale {}. HTTP: loopback, {} keep-alive connections, server on one core. Memory: resident set \
         kept after loading, each engine alone in a fresh process, at the largest scale tried that it held.\n",
        a.http_queries.min(n),
        a.scale,
        a.connections
    );
    let ours_mem = largest(memory, Engine::Ours);
    let ours_rate = speeds[0].1.median_rate();
    println!(
        "| engine | how it is called | load (cold start) | memory per child | decisions/s, 1 thread | p50 | p99 | ours faster by |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (variant, s) in speeds {
        let how = variant.how();
        let engine = &variant.engine();
        let load_here = match engine {
            Engine::Ours => ours_load,
            Engine::Cedar => cedar_load,
            Engine::Rego => rego_load,
        };
        let m = largest(memory, *engine);
        let load = match m {
            Some(m) if m.scale != a.scale => {
                format!("{:.2} s at {}; {:.2} s at {}", m.load_s, m.scale, load_here, a.scale)
            }
            _ => format!("{load_here:.2} s at {}", a.scale),
        };
        let mem_cell = match (m, ours_mem) {
            (Some(m), Some(o)) if *engine != Engine::Ours => {
                // Ratio at the same scale where both held, else per-child figures as they are.
                let same = memory
                    .iter()
                    .filter_map(|(e, s, r)| {
                        (*e == Engine::Ours && *s == m.scale)
                            .then_some(r.as_ref().ok())
                            .flatten()
                    })
                    .next()
                    .unwrap_or(o);
                format!(
                    "{} (scale {}; {:.0}× ours)",
                    fmt_bytes(m.per_child()),
                    m.scale,
                    m.per_child() / same.per_child()
                )
            }
            (Some(m), _) => format!("{} (scale {})", fmt_bytes(m.per_child()), m.scale),
            (None, _) => "did not load".into(),
        };
        println!(
            "| {} | {how} | {load} | {mem_cell} | {} | {} | {} | {} |",
            variant.name(),
            fmt_rate(s.median_rate()),
            fmt_ns(percentile(&s.lat, 0.5) as f64),
            fmt_ns(percentile(&s.lat, 0.99) as f64),
            if *variant == Variant::Ours {
                "—".to_owned()
            } else {
                format!("{:.0}×", ours_rate / s.median_rate())
            }
        );
    }
    for (engine, s, r) in memory {
        if let Err(why) = r {
            println!("\n{} did not hold scale {s}: {why}", engine.name());
        }
    }
    if !http_rows.is_empty() {
        println!(
            "\n| over loopback HTTP | endpoint | start to ready | server memory | decisions/s | p50 | p99 | server CPU per decision | ours faster by |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        let ours = &http_rows[0];
        for (i, r) in http_rows.iter().enumerate() {
            let (start, memory) = match (r.start, r.rss) {
                (Some(start), Some((rss, _))) => (
                    format!("{start:.2} s"),
                    format!("{} RSS; holds no data (the caller must)", fmt_bytes(rss as f64)),
                ),
                _ => (
                    "the snapshot load (above)".to_owned(),
                    "the snapshot (above)".to_owned(),
                ),
            };
            println!(
                "| {} | {} | {start} | {memory} | {} | {:.0} µs | {:.0} µs | {:.1} µs | {} |",
                r.name,
                r.endpoint,
                fmt_rate(r.outcome.rate()),
                r.outcome.pct_us(0.5),
                r.outcome.pct_us(0.99),
                r.cpu_per * 1e6,
                if i == 0 {
                    "—".to_owned()
                } else {
                    format!(
                        "{:.0}× (CPU {:.0}×)",
                        ours.outcome.rate() / r.outcome.rate(),
                        r.cpu_per / ours.cpu_per
                    )
                }
            );
        }
    }
    let _ = std::io::stdout().flush();
}
