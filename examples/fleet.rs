//! Fleet propagation, measured (issue 5, SPEC §7: a write seen by every
//! node of a fleet within 200 ms p99).
//!
//! ```sh
//! cargo run --release --example fleet                 # 3 and 8 instances, 500 writes each
//! cargo run --release --example fleet -- --writes 100
//! ```
//!
//! Starts a throwaway PostgreSQL (the machine's `initdb`/`pg_ctl`), then N
//! instances in this process, each with its own connection pool, its own
//! `LISTEN` connection and its own snapshot, all on one database with a
//! population of 2,000 families. One client writes seals through the nodes
//! in turn over HTTP, one at a time, paced at 50 writes a second; before
//! each write, every node is watched for the revision it will get. For each
//! write and node, the time from the writer's `201` to that node answering
//! from the write's revision (the writing node: already before its `201`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant as Clock};

use guardian_access::actor::{Caller, Role};
use guardian_access::node::NodeConfig;
use guardian_access::store::{ImportMsg, Store};
use serde_json::json;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn run(cluster: &support::pg::Cluster, nodes: usize, writes: usize) {
    let url = cluster.database(&format!("fleet{nodes}")).await;
    let store = Store::open_postgres(&url).await.unwrap();
    // 2,000 families, numbers made at run time.
    let number = |year, i: usize| support::pid(year, 3, 1 + (i % 28) as u8, 1 + (i / 28) as u16);
    let kids: Vec<guardian_access::Pid> = (0..2000).map(|i| number(2016, i)).collect();
    let records = kids
        .iter()
        .enumerate()
        .map(|(i, k)| guardian_access::PersonRecord {
            id: *k,
            birth_date: None,
            protected: false,
            guardians: vec![number(1985, i)],
        })
        .collect();
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(ImportMsg::Batch(records)).await.unwrap();
    tx.send(ImportMsg::End).await.unwrap();
    let by = Caller {
        name: "bench".into(),
        role: Role::Population,
        unit: None,
        hsa_id: None,
    };
    store.import(rx, &by).await.unwrap();

    let mut fleet = Vec::new();
    for _ in 0..nodes {
        let config = NodeConfig {
            poll_every: Duration::from_millis(500),
            max_staleness: Some(Duration::from_secs(30)),
            ..NodeConfig::default()
        };
        fleet.push(support::Instance::start(Store::open_postgres(&url).await.unwrap(), config).await);
    }
    let first = fleet[0].revision() + 1;
    let mut per_node = Vec::new();
    let mut every_node = Vec::new();
    let mut writes_latency = Vec::new();
    let mut from_send = Vec::new();
    let pace = Duration::from_millis(20);
    for n in 0..writes {
        // One writer: the write's revision is known before it is sent.
        let next = first + n as u64;
        let started = Clock::now();
        // Watch every node for the revision this write will get.
        let watchers: Vec<_> = fleet
            .iter()
            .map(|i| {
                let state = i.service.state.clone();
                tokio::spawn(async move {
                    assert!(
                        state.cell.wait_for_revision(next, Duration::from_secs(10)).await,
                        "a node never saw revision {next}"
                    );
                    Clock::now()
                })
            })
            .collect();
        let writer = &fleet[n % nodes];
        let body = json!({"kind": "seal", "subject": kids[n % kids.len()].to_string(), "issuing_unit": support::UNIT,
                          "decided_by": {"name": "Bench"}, "basis": "propagation"});
        let t0 = Clock::now();
        let r = writer
            .admin_post(support::REGISTRAR, "/v1/restrictions", &body.to_string())
            .await;
        let acked = Clock::now();
        writes_latency.push(acked - t0);
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(r.json()["revision"].as_u64(), Some(next));
        let mut slowest = Duration::ZERO;
        let mut last_seen = t0;
        for w in watchers {
            let seen = w.await.unwrap();
            let lag = seen.saturating_duration_since(acked);
            per_node.push(lag);
            slowest = slowest.max(lag);
            last_seen = last_seen.max(seen);
        }
        every_node.push(slowest);
        from_send.push(last_seen.max(acked) - t0);
        if let Some(rest) = pace.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    per_node.sort();
    every_node.sort();
    writes_latency.sort();
    from_send.sort();
    println!(
        "{nodes} instances: from sending the write to every node answering from it: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(&from_send, 0.5)),
        ms(percentile(&from_send, 0.99)),
        ms(*from_send.last().unwrap()),
    );
    println!(
        "{nodes} instances, {writes} writes: write 2xx p50 {:.2} ms, p99 {:.2} ms | after the 2xx, visible on a node p50 {:.2} ms, p99 {:.2} ms | on every node p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(&writes_latency, 0.5)),
        ms(percentile(&writes_latency, 0.99)),
        ms(percentile(&per_node, 0.5)),
        ms(percentile(&per_node, 0.99)),
        ms(percentile(&every_node, 0.5)),
        ms(percentile(&every_node, 0.99)),
        ms(*every_node.last().unwrap()),
    );
    for i in fleet {
        i.stop().await;
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let writes: usize = args
        .iter()
        .position(|a| a == "--writes")
        .and_then(|i| args.get(i + 1))
        .map_or(500, |s| s.parse().unwrap());
    let Some(cluster) = support::pg::Cluster::start() else {
        eprintln!("no PostgreSQL here: nothing measured");
        return;
    };
    for nodes in [3, 8] {
        run(&cluster, nodes, writes).await;
    }
}
