//! The write path, measured (issue 4, SPEC §7): population import rate,
//! cold start and RSS at national scale, durable writes per second, and
//! write-to-visible latency.
//!
//! ```sh
//! cargo run --release --example write_path               # national scale
//! cargo run --release --example write_path -- --scale 0.05
//! ```
//!
//! 1. Generates the synthetic population (numbers made at run time) as an
//!    NDJSON file and imports it exactly as `import-population` does: the
//!    file read in 1 MiB chunks, parsed line by line, streamed into one
//!    SQLite transaction. Then 50,000 restrictions and grants.
//! 2. Starts the service twice in fresh processes on that data directory:
//!    first with no snapshot file (a full build from the store, then a
//!    checkpoint), then from the snapshot file; each reports its time to
//!    ready and its RSS.
//! 3. Durable writes through the admin API over loopback HTTP: one client,
//!    then 16 at once; after each acknowledged write a check on the same
//!    node must already see it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use common::{import_file, status_mb, write_ndjson};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant as Clock};

use guardian_access::actor::{Caller, Role};
use guardian_access::core::model::{HsaId, RuleId};
use guardian_access::node::SNAPSHOT_FILE;
use guardian_access::store::{NewRule, RuleMeta, Store};
use guardian_access::synth::{self, Scale};
use serde_json::json;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `cold DIR`: start the service on DIR in this (fresh) process and report
/// the time to ready and the RSS; wait for a checkpoint if one is due.
async fn cold(dir: PathBuf) {
    let started = Clock::now();
    let check = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let had_file = dir.join(SNAPSHOT_FILE).exists();
    let store_dir = dir.clone();
    let service = guardian_access::service::start(
        check,
        admin,
        async move { Store::open_sqlite(&store_dir).await },
        guardian_access::service::Options {
            listener: Default::default(),
            node: support::quick_node(Some(dir.clone())),
            settings: Arc::new(Default::default()),
            tokens: support::tokens(),
            source: "bench".into(),
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
    let ready = started.elapsed();
    let rss = status_mb("VmRSS");
    if !had_file {
        // The first start writes a checkpoint in the background.
        while service
            .state
            .cell
            .sync
            .checkpoints
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!(
        "{}",
        json!({"ready_seconds": ready.as_secs_f64(), "rss_mb": rss, "from_file": had_file,
               "peak_rss_mb": status_mb("VmHWM"), "persons": service.state.cell.current().unwrap().snapshot.people().len()})
    );
    service.stop().await;
}

fn cold_start(dir: &Path) -> serde_json::Value {
    let t = Clock::now();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("cold")
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["process_seconds"] = t.elapsed().as_secs_f64().into();
    v
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("cold") {
        return cold(PathBuf::from(&args[2])).await;
    }
    if args.get(1).map(String::as_str) == Some("ndjson") {
        // `ndjson FILE SCALE`: only write the population file (for profiling
        // `import-population`).
        let scale = Scale::fraction(args[3].parse().unwrap());
        let population = synth::population(scale, 42).unwrap();
        let n = write_ndjson(&population, Path::new(&args[2]));
        println!("{n} persons written to {}", args[2]);
        return;
    }
    let fraction: f64 = args
        .iter()
        .position(|a| a == "--scale")
        .and_then(|i| args.get(i + 1))
        .map_or(1.0, |s| s.parse().unwrap());
    let scale = Scale::fraction(fraction);
    let base = tempfile::Builder::new()
        .prefix("guardian-access-bench-")
        .tempdir()
        .unwrap();
    let data = base.path().join("data");
    println!(
        "scale {fraction} ({} children), in {}",
        scale.children,
        base.path().display()
    );

    // 1. The population as NDJSON, then imported like `import-population`.
    let t = Clock::now();
    let population = synth::population(scale, 42).unwrap();
    let file = base.path().join("population.ndjson");
    let persons = write_ndjson(&population, &file);
    let size = std::fs::metadata(&file).unwrap().len();
    println!(
        "generated             {persons} persons, {:.0} MB of NDJSON in {:.1} s",
        size as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    let store = Store::open_sqlite(&data).await.unwrap();
    let t = Clock::now();
    let imported = import_file(&store, &file).await;
    let import = t.elapsed();
    println!(
        "import (fresh store)  {} persons in {:.1} s = {:.0} persons/s",
        imported.upserted,
        import.as_secs_f64(),
        imported.upserted as f64 / import.as_secs_f64()
    );
    // The same file again: every record compared, nothing changed.
    let t = Clock::now();
    let again = import_file(&store, &file).await;
    let second = t.elapsed();
    println!(
        "import (unchanged)    {} persons in {:.1} s = {:.0} persons/s ({} changed)",
        again.upserted,
        second.as_secs_f64(),
        again.upserted as f64 / second.as_secs_f64(),
        again.changed
    );
    let by = Caller {
        name: "bench".into(),
        role: Role::Registrar,
        unit: None,
        hsa_id: None,
    };

    let unit = HsaId::parse(support::UNIT).unwrap();
    let rules: Vec<NewRule> = population
        .rules()
        .iter()
        .map(|r| NewRule {
            rule: guardian_access::Rule {
                id: RuleId(0),
                ..r.clone()
            },
            meta: RuleMeta {
                issuing_unit: unit.clone(),
                decided_by: json!({"name": "Bench"}),
                requested_by: None,
                basis: "benchmark".into(),
                urgent: false,
                reference: None,
            },
        })
        .collect();
    let n_rules = rules.len();
    let t = Clock::now();
    store.seed(Vec::new(), rules, &by).await.unwrap();
    println!(
        "rules                 {n_rules} in one transaction, {:.2} s",
        t.elapsed().as_secs_f64()
    );
    // Children with a guardian, for the writes below.
    let all_kids: Vec<String> = population
        .records()
        .filter(|r| !r.guardians.is_empty())
        .map(|r| r.id.to_string())
        .collect();
    // Enough children that no one gets more than the 16 rules in force a
    // subject may have.
    let kids: Vec<String> = all_kids.iter().take(2000).cloned().collect();
    drop(population);
    drop(store);
    println!("database              {:.0} MB", dir_size(&data) as f64 / 1e6);

    // 2. Cold starts, each in a fresh process.
    let first = cold_start(&data);
    println!(
        "cold start, no file   ready in {:.2} s (process {:.2} s), RSS {:.0} MB (peak {:.0} MB, checkpoint included)",
        first["ready_seconds"].as_f64().unwrap(),
        first["process_seconds"].as_f64().unwrap(),
        first["rss_mb"].as_f64().unwrap(),
        first["peak_rss_mb"].as_f64().unwrap()
    );
    println!(
        "snapshot file         {:.0} MB",
        std::fs::metadata(data.join(SNAPSHOT_FILE)).unwrap().len() as f64 / 1e6
    );
    for _ in 0..2 {
        let warm = cold_start(&data);
        println!(
            "cold start, from file ready in {:.2} s (process {:.2} s), RSS {:.0} MB (peak {:.0} MB)",
            warm["ready_seconds"].as_f64().unwrap(),
            warm["process_seconds"].as_f64().unwrap(),
            warm["rss_mb"].as_f64().unwrap(),
            warm["peak_rss_mb"].as_f64().unwrap()
        );
    }

    // 3. Durable writes over HTTP, and what a check sees right after.
    let store = Store::open_sqlite(&data).await.unwrap();
    let i = support::Instance::start(store, support::quick_node(Some(data.clone()))).await;
    let synthetic_kids = kids;
    let write = |n: usize| {
        let kid = synthetic_kids[n % synthetic_kids.len()].clone();
        json!({"kind": "seal", "subject": kid, "issuing_unit": support::UNIT, "decided_by": {"name": "Bench"},
               "basis": format!("bench {n}")})
        .to_string()
    };
    let mut lat = Vec::new();
    let mut stale = 0;
    let t = Clock::now();
    for n in 0..1000 {
        let t0 = Clock::now();
        let r = i.admin_post(support::REGISTRAR, "/v1/restrictions", &write(n)).await;
        lat.push(t0.elapsed());
        assert_eq!(r.status, 201, "{}", r.text());
        let revision = r.json()["revision"].as_u64().unwrap();
        let kid = &synthetic_kids[n % synthetic_kids.len()];
        let c = support::send(
            i.check,
            "POST",
            "/v1/check",
            &[],
            json!({"actor": kid, "subject": kid, "service": "journal"}).to_string(),
        )
        .await
        .json();
        if c["revision"].as_u64().unwrap() < revision {
            stale += 1;
        }
    }
    let sequential = t.elapsed();
    lat.sort();
    println!(
        "durable writes, 1 client   1000 in {:.2} s = {:.0}/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        sequential.as_secs_f64(),
        1000.0 / sequential.as_secs_f64(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap())
    );
    println!("write-to-visible           {stale} of 1000 checks right after a 2xx answered from an older revision");

    let t = Clock::now();
    let mut tasks = Vec::new();
    for c in 0..16usize {
        let (admin, kids) = (i.admin, synthetic_kids.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for n in 0..200usize {
                let kid = &kids[(c * 200 + n) % kids.len()];
                let body = json!({"kind": "seal", "subject": kid, "issuing_unit": support::UNIT, "decided_by": {"name": "Bench"}, "basis": "bench"});
                let t0 = Clock::now();
                let auth = format!("Bearer {}", support::REGISTRAR);
                let r = support::send(admin, "POST", "/v1/restrictions", &[("authorization", &auth)], body.to_string()).await;
                lat.push(t0.elapsed());
                assert_eq!(r.status, 201);
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let concurrent = t.elapsed();
    lat.sort();
    println!(
        "durable writes, 16 clients 3200 in {:.2} s = {:.0}/s; latency p50 {:.2} ms, p99 {:.2} ms",
        concurrent.as_secs_f64(),
        3200.0 / concurrent.as_secs_f64(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99))
    );
    // Commit to visible, in process: the store's commit returns, then the
    // node reads the change, applies it to the national snapshot and
    // publishes. Over 1,000 writes on distinct subjects the overlay grows,
    // so later writes copy a bigger one.
    let node = i.service.node().unwrap().clone();
    let by = Caller {
        name: "bench".into(),
        role: Role::Registrar,
        unit: None,
        hsa_id: None,
    };
    let every_kid: Vec<guardian_access::Pid> = all_kids
        .iter()
        .map(|k| guardian_access::Pid::from_u64(k.parse().unwrap()).unwrap())
        .collect();
    let mut visible = Vec::new();
    let mut commit = Vec::new();
    for n in 0..1000usize {
        let rule = guardian_access::Rule {
            id: RuleId(0),
            kind: guardian_access::RuleKind::Seal,
            subject: every_kid[n * 37 % every_kid.len()],
            guardian: None,
            services: guardian_access::Services::JOURNAL,
            valid_from: guardian_access::Instant::from_nanos(0),
            valid_until: None,
            lifted_at: None,
            care_units: None,
        };
        let new = NewRule {
            rule,
            meta: RuleMeta {
                issuing_unit: unit.clone(),
                decided_by: json!({"name": "Bench"}),
                requested_by: None,
                basis: "bench".into(),
                urgent: false,
                reference: None,
            },
        };
        let t0 = Clock::now();
        let c = node.store().create_rule(new, false, &by).await.unwrap();
        let t1 = Clock::now();
        assert!(node.wait_applied(c.revision).await);
        commit.push(t1 - t0);
        visible.push(t1.elapsed());
    }
    visible.sort();
    commit.sort();
    println!(
        "commit (fsync)             p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(&commit, 0.5)),
        ms(percentile(&commit, 0.99))
    );
    println!(
        "commit to visible          p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (overlay up to {} subjects)",
        ms(percentile(&visible, 0.5)),
        ms(percentile(&visible, 0.99)),
        ms(*visible.last().unwrap()),
        node.publication().current().unwrap().snapshot.overlay_len()
    );
    let status = support::get(i.check, "/v1/status", &[]).await.json();
    println!(
        "after the writes            overlay {} entries, folds {}, revision {}",
        status["overlay"], status["store"]["folds"], status["revision"]
    );
    i.stop().await;
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}
