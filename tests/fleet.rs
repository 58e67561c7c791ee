//! Fleet mode: several instances on one throwaway PostgreSQL. Writes
//! through each converge everywhere; concurrent writers on different nodes
//! get one gapless total order; PostgreSQL restarting mid-stream makes
//! instances stale, then (past `max_staleness`) refuse, then converge; an
//! instance killed with SIGKILL comes back and catches up; a late joiner
//! starts from a peer's snapshot file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use guardian_access::node::{NodeConfig, Peer};
use guardian_access::store::Store;
use serde_json::{Value, json};
use support::pg::Cluster;
use support::{AUDITOR, Instance, PEER, POPULATION, Process, REGISTRAR, UNIT};

// The guardians: Skatteverket's test numbers (adults whatever the date).
const MOTHER: &str = "197701012382";
const FATHER: &str = "198001022386";
const KID2_G: &str = "198001032385";

/// The children: numbers generated at run time, 8 and 5 years old today.
/// The fleet has real processes in it, on the system clock, so ages are
/// made relative to it rather than pinned.
fn kid() -> &'static str {
    static KID: LazyLock<String> = LazyLock::new(|| support::pid(support::years_ago(8), 9, 16, 239).to_string());
    &KID
}

fn kid2() -> &'static str {
    static KID2: LazyLock<String> = LazyLock::new(|| support::pid(support::years_ago(5), 1, 1, 239).to_string());
    &KID2
}

/// Thirty more children, for many writes without crowding one child (a
/// subject may have 16 rules in force).
fn many() -> &'static [String] {
    static MANY: LazyLock<Vec<String>> = LazyLock::new(|| {
        (0..30u16)
            .map(|i| support::pid(support::years_ago(7), 3, 1 + (i % 28) as u8, 500 + i).to_string())
            .collect()
    });
    &MANY
}

fn population() -> String {
    [
        json!({"id": kid(), "protected": false, "guardians": [MOTHER, FATHER]}),
        json!({"id": kid2(), "protected": false, "guardians": [KID2_G]}),
    ]
    .into_iter()
    .chain(
        many()
            .iter()
            .map(|k| json!({"id": k, "protected": false, "guardians": [MOTHER]})),
    )
    .map(|l| format!("{l}\n"))
    .collect()
}

fn node(data_dir: Option<PathBuf>, max_staleness: Duration) -> NodeConfig {
    NodeConfig {
        data_dir,
        poll_every: Duration::from_millis(50),
        max_staleness: Some(max_staleness),
        ..NodeConfig::default()
    }
}

async fn instance(url: &str, config: NodeConfig) -> Instance {
    Instance::start_on_system_clock(Store::open_postgres(url).await.unwrap(), config).await
}

fn seal(subject: &str, basis: &str) -> String {
    json!({"kind": "seal", "subject": subject, "services": ["journal", "eservices"], "issuing_unit": UNIT,
           "decided_by": {"name": "Verksamhetschef"}, "basis": basis})
    .to_string()
}

/// A check at the current instant.
async fn ask(addr: std::net::SocketAddr, actor: &str, subject: &str) -> Value {
    let body = json!({"actor": actor, "subject": subject, "service": "journal"}).to_string();
    let r = support::send(addr, "POST", "/v1/check", &[], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

async fn revision(addr: std::net::SocketAddr) -> u64 {
    support::get(addr, "/v1/status", &[]).await.json()["revision"]
        .as_u64()
        .unwrap_or(0)
}

/// Waits until every instance answers from `at_least`.
async fn converge(checks: &[std::net::SocketAddr], at_least: u64) {
    for _ in 0..500 {
        let mut all = true;
        for c in checks {
            all &= revision(*c).await >= at_least;
        }
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the fleet did not converge on revision {at_least}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_converge_and_read_their_writes() {
    let Some(cluster) = Cluster::start() else { return };
    let url = cluster.database("converge").await;
    let minute = Duration::from_secs(60);
    let a = instance(&url, node(None, minute)).await;
    let b = instance(&url, node(None, minute)).await;
    let c = instance(&url, node(None, minute)).await;
    assert_eq!(
        a.admin_post(POPULATION, "/v1/population", &population()).await.status,
        200
    );

    // A write through each node.
    let block = json!({"kind": "block", "subject": kid(), "guardian": MOTHER, "issuing_unit": UNIT,
                       "decided_by": {"name": "Verksamhetschef"}, "basis": "Orosanmälan"});
    let r1 = b.admin_post(REGISTRAR, "/v1/restrictions", &block.to_string()).await;
    assert_eq!(r1.status, 201, "{}", r1.text());
    let r2 = c
        .admin_post(REGISTRAR, "/v1/restrictions", &seal(kid2(), "Polisärende"))
        .await;
    assert_eq!(r2.status, 201, "{}", r2.text());
    let last = r2.json()["revision"].as_u64().unwrap();

    // Read-your-writes on another node: a check carrying the revision the
    // writer got back waits for it instead of answering from older data.
    let body = json!({"actor": KID2_G, "subject": kid2(), "service": "journal", "min_revision": last}).to_string();
    let r = support::send(a.check, "POST", "/v1/check", &[], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["reason"].as_str(), r.json()["revision"].as_u64() >= Some(last)),
        (Some("sealed"), true)
    );

    converge(&[a.check, b.check, c.check], last).await;
    for i in [&a, &b, &c] {
        assert_eq!(ask(i.check, MOTHER, kid()).await["reason"], "blocked");
        assert_eq!(ask(i.check, FATHER, kid()).await["reason"], "guardian");
        assert_eq!(ask(i.check, KID2_G, kid2()).await["reason"], "sealed");
        let s = support::get(i.check, "/v1/status", &[]).await.json();
        assert_eq!(
            (s["revision"].as_u64(), s["store"]["stale"].as_bool()),
            (Some(last), Some(false)),
            "{s}"
        );
    }
    let m = support::get(b.check, "/metrics", &[]).await.text();
    assert!(m.contains(&format!("guardian_access_store_revision {last}")), "{m}");
    assert!(m.contains("guardian_access_replication_lag_revisions 0"), "{m}");
    for i in [a, b, c] {
        i.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_different_nodes_get_one_total_order() {
    let Some(cluster) = Cluster::start() else { return };
    let url = cluster.database("total_order").await;
    let minute = Duration::from_secs(60);
    let nodes = vec![
        instance(&url, node(None, minute)).await,
        instance(&url, node(None, minute)).await,
        instance(&url, node(None, minute)).await,
    ];
    assert_eq!(
        nodes[0]
            .admin_post(POPULATION, "/v1/population", &population())
            .await
            .status,
        200
    );
    let mut tasks = Vec::new();
    for (n, i) in nodes.iter().enumerate() {
        for w in 0..4 {
            let admin = i.admin;
            tasks.push(tokio::spawn(async move {
                let mut revisions = Vec::new();
                for k in 0..15 {
                    // 180 seals, six on each of thirty children.
                    let subject = &many()[((n * 4 + w) * 15 + k) % 30];
                    let auth = format!("Bearer {REGISTRAR}");
                    let r = support::send(
                        admin,
                        "POST",
                        "/v1/restrictions",
                        &[("authorization", &auth)],
                        seal(subject, &format!("node {n} writer {w} #{k}")),
                    )
                    .await;
                    assert_eq!(r.status, 201, "{}", r.text());
                    revisions.push(r.json()["revision"].as_u64().unwrap());
                }
                revisions
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let (first, last) = (all[0], *all.last().unwrap());
    assert_eq!(all.len(), 180);
    assert_eq!(all, (first..=last).collect::<Vec<_>>(), "every revision once, no gaps");
    // The database agrees: one change and one audit entry per revision.
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT count(*), min(revision), max(revision), (SELECT count(*) FROM audit) FROM changes",
            &[],
        )
        .await
        .unwrap();
    let (count, min, max, audit): (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!((count, min, max, audit), (last as i64, 1, last as i64, last as i64));
    let checks: Vec<_> = nodes.iter().map(|i| i.check).collect();
    converge(&checks, last).await;
    // Every node answers the same, from the same revision.
    let subject = |i: &Instance| {
        let admin = i.admin;
        async move {
            let auth = format!("Bearer {AUDITOR}");
            let v = support::get(
                admin,
                &format!("/v1/subjects/{}", many()[0]),
                &[("authorization", &auth)],
            )
            .await
            .json();
            (v["restrictions"].as_array().unwrap().len(), v["revision"].as_u64())
        }
    };
    let views = [
        subject(&nodes[0]).await,
        subject(&nodes[1]).await,
        subject(&nodes[2]).await,
    ];
    // Six seals on each child.
    assert!(views.iter().all(|v| *v == (6, Some(last))), "{views:?}");
    for i in nodes {
        i.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarting_mid_stream_makes_instances_stale_then_converge() {
    let Some(cluster) = Cluster::start() else { return };
    let url = cluster.database("restart").await;
    let strict = instance(&url, node(None, Duration::from_millis(1500))).await;
    let patient = instance(&url, node(None, Duration::from_secs(120))).await;
    assert_eq!(
        strict
            .admin_post(POPULATION, "/v1/population", &population())
            .await
            .status,
        200
    );
    let before = patient
        .admin_post(REGISTRAR, "/v1/restrictions", &seal(kid2(), "before"))
        .await;
    assert_eq!(before.status, 201);
    converge(
        &[strict.check, patient.check],
        before.json()["revision"].as_u64().unwrap(),
    )
    .await;

    cluster.stop();
    // Writes get 503 and write nothing; checks go on from the last snapshot.
    let w = patient
        .admin_post(REGISTRAR, "/v1/restrictions", &seal(kid(), "while down"))
        .await;
    assert_eq!((w.status, w.error().0.as_str()), (503, "not_ready"), "{}", w.text());
    assert_eq!(ask(patient.check, KID2_G, kid2()).await["reason"], "sealed");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let s = support::get(patient.check, "/v1/status", &[]).await.json();
    assert_eq!(
        (s["ready"].as_bool(), s["store"]["stale"].as_bool()),
        (Some(true), Some(true)),
        "{s}"
    );
    assert!(s["store"]["lag_seconds"].as_f64().unwrap() >= 1.0, "{s}");
    assert_eq!(
        ask(patient.check, MOTHER, kid()).await["reason"],
        "guardian",
        "still answering"
    );
    // Past its max_staleness the strict one refuses: fail closed.
    let r = support::send(
        strict.check,
        "POST",
        "/v1/check",
        &[],
        json!({"actor": MOTHER, "subject": kid(), "service": "journal"}).to_string(),
    )
    .await;
    assert_eq!((r.status, r.error().0.as_str()), (503, "not_ready"));
    assert_eq!(support::get(strict.check, "/readyz", &[]).await.status, 503);
    let authz = support::get(
        strict.check,
        "/v1/authz",
        &[
            ("x-actor-id", MOTHER),
            ("x-subject-id", kid()),
            ("x-service", "journal"),
        ],
    )
    .await;
    assert_eq!(authz.status, 503);

    cluster.start_server();
    // Once PostgreSQL is back a write goes through (a pooled connection
    // that died with the old server may fail one attempt first).
    let mut after = None;
    for _ in 0..100 {
        let r = patient
            .admin_post(REGISTRAR, "/v1/restrictions", &seal(kid(), "after"))
            .await;
        if r.status == 201 {
            after = Some(r.json()["revision"].as_u64().unwrap());
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = after.expect("writes work again once PostgreSQL is back");
    converge(&[strict.check, patient.check], after).await;
    strict.ready().await;
    for i in [&strict, &patient] {
        assert_eq!(ask(i.check, MOTHER, kid()).await["reason"], "sealed");
        let s = support::get(i.check, "/v1/status", &[]).await.json();
        assert_eq!(
            (s["ready"].as_bool(), s["store"]["stale"].as_bool()),
            (Some(true), Some(false)),
            "{s}"
        );
    }
    strict.stop().await;
    patient.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_restarts_from_its_file_and_catches_up() {
    let Some(cluster) = Cluster::start() else { return };
    let url = cluster.database("killed").await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = support::tokens_file(dir.path());
    let data = dir.path().join("node");
    let args = [
        "--store".as_ref(),
        url.as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--admin-tokens".as_ref(),
        tokens.as_os_str(),
    ];
    let other = instance(&url, node(None, Duration::from_secs(60))).await;
    assert_eq!(
        other
            .admin_post(POPULATION, "/v1/population", &population())
            .await
            .status,
        200
    );
    let mut p = Process::serve(&args);
    p.ready().await;
    for _ in 0..200 {
        if data.join("snapshot").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(data.join("snapshot").exists(), "the first start wrote a checkpoint");
    p.kill();

    // The fleet writes on while it is down.
    let r = other
        .admin_post(REGISTRAR, "/v1/restrictions", &seal(kid(), "while it was down"))
        .await;
    assert_eq!(r.status, 201);
    let last = r.json()["revision"].as_u64().unwrap();

    let p = Process::serve(&args);
    p.ready().await;
    assert!(revision(p.check).await >= last);
    assert_eq!(ask(p.check, MOTHER, kid()).await["reason"], "sealed");
    let s = support::get(p.check, "/v1/status", &[]).await.json();
    assert_eq!(s["store"]["rebuilds"], 0, "it started from its own snapshot file: {s}");

    // The command line on the same PostgreSQL: an offline import, picked
    // up by the running instances, and a decision from the store.
    let file = dir.path().join("more.ndjson");
    let newcomer = support::pid(support::years_ago(6), 6, 1, 238).to_string();
    std::fs::write(
        &file,
        format!(
            "{}\n",
            json!({"id": newcomer, "protected": false, "guardians": ["197701022381"]})
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_guardian-access");
    let out = std::process::Command::new(bin)
        .args(["import-population"])
        .arg(&file)
        .args(["--store", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let imported: Value = serde_json::from_slice(&out.stdout).unwrap();
    let revision = imported["revision"].as_u64().unwrap();
    converge(&[p.check, other.check], revision).await;
    assert_eq!(ask(p.check, "197701022381", &newcomer).await["reason"], "guardian");
    let out = std::process::Command::new(bin)
        .args(["check", "--store", &url, "--actor", MOTHER, "--subject", kid()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (answer["reason"].as_str(), answer["revision"].as_u64()),
        (Some("sealed"), Some(revision))
    );
    drop(p);
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_starts_from_a_peers_snapshot_file() {
    let Some(cluster) = Cluster::start() else { return };
    let url = cluster.database("joiner").await;
    let (first_dir, joiner_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = instance(&url, node(Some(first_dir.path().to_owned()), Duration::from_secs(60))).await;
    assert_eq!(
        first
            .admin_post(POPULATION, "/v1/population", &population())
            .await
            .status,
        200
    );
    first
        .admin_post(REGISTRAR, "/v1/restrictions", &seal(kid2(), "before the joiner"))
        .await;
    for _ in 0..200 {
        if first_dir.path().join("snapshot").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Written after the peer's checkpoint: the joiner must catch up on it.
    let r = first
        .admin_post(REGISTRAR, "/v1/restrictions", &seal(kid(), "after the checkpoint"))
        .await;
    let last = r.json()["revision"].as_u64().unwrap();

    let config = NodeConfig {
        peers: vec![Peer {
            url: format!("http://{}", first.admin),
            token: PEER.into(),
            ca: None,
        }],
        ..node(Some(joiner_dir.path().to_owned()), Duration::from_secs(60))
    };
    let joiner = instance(&url, config).await;
    assert!(joiner.revision() >= last);
    assert_eq!(ask(joiner.check, MOTHER, kid()).await["reason"], "sealed");
    assert_eq!(ask(joiner.check, KID2_G, kid2()).await["reason"], "sealed");
    let s = support::get(joiner.check, "/v1/status", &[]).await.json();
    assert_eq!(
        s["store"]["rebuilds"], 0,
        "it started from the peer's file, not a full build: {s}"
    );
    assert!(
        joiner_dir.path().join("snapshot").exists(),
        "the peer's file is kept as its own"
    );
    // A peer with a wrong token gets nothing, and the joiner builds instead.
    let other_dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        peers: vec![Peer {
            url: format!("http://{}", first.admin),
            token: "not-a-peer-token-00000000000000".into(),
            ca: None,
        }],
        ..node(Some(other_dir.path().to_owned()), Duration::from_secs(60))
    };
    let builder = instance(&url, config).await;
    let s = support::get(builder.check, "/v1/status", &[]).await.json();
    assert_eq!(s["store"]["rebuilds"], 1, "{s}");
    for i in [first, joiner, builder] {
        i.stop().await;
    }
}
