//! PostgreSQL failover, with the machine's PostgreSQL binaries: a primary
//! and a streaming standby (`pg_basebackup -R`), three instances on a
//! multi-host URL (`target_session_attrs=read-write`), the primary killed
//! (`pg_ctl stop -m immediate`) and the standby promoted.
//!
//! - With a **synchronous** standby every acknowledged write is on the new
//!   primary and answered by every instance; writes during the switch get
//!   `503`, never a half-applied write; the instances reconnect on their own.
//! - With an **asynchronous** standby that had not received the last writes,
//!   an instance that had read them notices that the new primary's history
//!   differs (the digest chain) and rebuilds from it instead of carrying on
//!   with a state no store has.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use guardian_access::node::NodeConfig;
use guardian_access::store::Store;
use serde_json::json;
use support::pg::Cluster;
use support::{Instance, POPULATION, REGISTRAR, UNIT, quick_node};

/// `(child, guardian)` pairs, numbers made at run time.
fn families(n: u16) -> Vec<(String, String)> {
    (1..=n)
        .map(|k| {
            (
                support::pid(2016, 4, 1 + (k % 28) as u8, k).to_string(),
                support::pid(1985, 4, 1 + (k % 28) as u8, k).to_string(),
            )
        })
        .collect()
}

fn node() -> NodeConfig {
    NodeConfig {
        max_staleness: Some(Duration::from_secs(20)),
        ..quick_node(None)
    }
}

fn seal(subject: &str) -> String {
    json!({"kind": "seal", "subject": subject, "issuing_unit": UNIT, "decided_by": {"name": "Verksamhetschef"},
           "basis": "Skyddade personuppgifter", "reference": "Dnr 2026-3"})
    .to_string()
}

/// Posts a seal; the status and, on `201`, the revision.
async fn post_seal(i: &Instance, subject: &str) -> (u16, Option<u64>) {
    let r = support::try_send(
        i.admin,
        "POST",
        "/v1/restrictions",
        &[("authorization", &format!("Bearer {REGISTRAR}"))],
        seal(subject),
    )
    .await;
    match r {
        Ok(r) if r.status == 201 => (201, r.json()["revision"].as_u64()),
        Ok(r) => (r.status, None),
        Err(e) => panic!("no answer to a write: {e}"),
    }
}

async fn reason(i: &Instance, actor: &str, subject: &str) -> String {
    let body = json!({"actor": actor, "subject": subject, "service": "journal"}).to_string();
    let r = support::send(i.check, "POST", "/v1/check", &[], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["reason"].as_str().unwrap().to_owned()
}

async fn import(i: &Instance, fams: &[(String, String)]) {
    let body: String = fams
        .iter()
        .map(|(k, g)| format!("{}\n", json!({"id": k, "protected": false, "guardians": [g]})))
        .collect();
    let r = i.admin_post(POPULATION, "/v1/population", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Waits up to 30 s for every instance to answer from `revision`.
async fn all_reach(instances: &[Instance], revision: u64) {
    for _ in 0..600 {
        if instances.iter().all(|i| i.revision() >= revision) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at: Vec<u64> = instances.iter().map(Instance::revision).collect();
    panic!("the instances did not reach revision {revision}: {at:?}");
}

fn url(hosts: &[&Cluster]) -> String {
    let hosts: Vec<String> = hosts.iter().map(|c| format!("127.0.0.1:{}", c.port())).collect();
    format!(
        "postgres://postgres@{}/ga?target_session_attrs=read-write",
        hosts.join(",")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_synchronous_standby_loses_no_acknowledged_write() {
    let Some(primary) = Cluster::start() else { return };
    primary.database("ga").await;
    let standby = primary.standby("standby1");
    primary
        .sql("postgres", "ALTER SYSTEM SET synchronous_standby_names = 'standby1'")
        .await;
    primary.sql("postgres", "SELECT pg_reload_conf()").await;
    for n in 0.. {
        let state = primary
            .value(
                "postgres",
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'",
            )
            .await;
        if state.as_deref() == Some("sync") {
            break;
        }
        assert!(n < 200, "the standby never became synchronous: {state:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = url(&[&primary, &standby]);
    let store = Store::open_postgres(&url).await.unwrap();
    let Store::Postgres(pg) = &store else { panic!() };
    assert!(pg.durability().await.unwrap().survives_failover());
    let mut instances = vec![Instance::start(store, node()).await];
    for _ in 0..2 {
        instances.push(Instance::start(Store::open_postgres(&url).await.unwrap(), node()).await);
    }
    let fams = families(400);
    import(&instances[0], &fams).await;

    // Six writers seal one child after another, each on every instance in
    // turn, until told to stop.
    let instances = Arc::new(instances);
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6usize {
        let (instances, stop, fams) = (instances.clone(), stop.clone(), fams.clone());
        writers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for (n, (kid, _)) in fams.iter().enumerate().filter(|(n, _)| n % 6 == w) {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let started = std::time::Instant::now();
                let (status, revision) = post_seal(&instances[n % 3], kid).await;
                assert!(status == 201 || status == 503, "a write answered {status}");
                outcomes.push((n, status, revision, started));
                if status == 503 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = std::time::Instant::now();
    primary.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    standby.promote();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for w in writers {
        outcomes.extend(w.await.unwrap());
    }
    let acked: Vec<(usize, u64)> = outcomes
        .iter()
        .filter(|(_, s, _, _)| *s == 201)
        .map(|(n, _, r, _)| (*n, r.unwrap()))
        .collect();
    let refused = outcomes.iter().filter(|(_, s, _, _)| *s == 503).count();
    let after = outcomes
        .iter()
        .filter(|(_, s, _, started)| *s == 201 && *started > killed)
        .count();
    eprintln!(
        "writes: {} acknowledged ({after} after the primary was killed), {refused} refused with 503",
        acked.len()
    );
    assert!(acked.len() > after, "writes were acknowledged before the failover");
    assert!(after > 0, "writes were acknowledged again after the failover");

    // Every acknowledged write is on the new primary and answered by every
    // instance, each of which reconnected on its own.
    let head = acked.iter().map(|(_, r)| *r).max().unwrap();
    all_reach(&instances, head).await;
    for i in instances.iter() {
        for (n, _) in &acked {
            let (kid, guardian) = &fams[*n];
            assert_eq!(reason(i, guardian, kid).await, "sealed", "an acknowledged seal is lost");
        }
    }
    // Nothing half-applied: every rule has its change-log and audit rows,
    // and the revisions have no gap.
    let orphans = standby
        .value(
            "ga",
            "SELECT count(*) FROM rules r WHERE NOT EXISTS (SELECT 1 FROM changes c WHERE c.revision = r.revision) \
             OR NOT EXISTS (SELECT 1 FROM audit a WHERE a.revision = r.revision)",
        )
        .await;
    assert_eq!(orphans.as_deref(), Some("0"));
    let gapless = standby
        .value(
            "ga",
            "SELECT (SELECT count(*) FROM changes) = (SELECT revision FROM meta)",
        )
        .await;
    assert_eq!(gapless.as_deref(), Some("t"));
    let instances = Arc::try_unwrap(instances).ok().unwrap();
    for i in instances {
        i.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_read_a_lost_history_rebuilds_from_the_new_primary() {
    let Some(primary) = Cluster::start() else { return };
    primary.database("ga").await;
    let standby = primary.standby("standby1");
    let url = url(&[&primary, &standby]);
    let store = Store::open_postgres(&url).await.unwrap();
    let Store::Postgres(pg) = &store else { panic!() };
    assert!(
        !pg.durability().await.unwrap().survives_failover(),
        "an asynchronous standby does not protect acknowledged writes (the node warns at start)"
    );
    let a = Instance::start(store, node()).await;
    let fams = families(12);
    import(&a, &fams).await;
    // Three seals reach the standby ...
    for (kid, _) in &fams[0..3] {
        assert_eq!(post_seal(&a, kid).await.0, 201);
    }
    for n in 0.. {
        let rules = standby.value("ga", "SELECT count(*) FROM rules").await;
        if rules.as_deref() == Some("3") {
            break;
        }
        assert!(n < 200, "the standby never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... three more only the primary has, and the instance reads them.
    standby.stop_fast();
    for (kid, _) in &fams[3..6] {
        assert_eq!(post_seal(&a, kid).await.0, 201);
    }
    let read = a.revision();
    assert_eq!(reason(&a, &fams[4].1, &fams[4].0).await, "sealed");
    // The primary is lost. The standby becomes the primary, writable at
    // first only by a session that asks (the instance requires a writable
    // server, so it cannot reach it yet), and gets more writes than the
    // instance had read: the same revision numbers, another history.
    primary.stop();
    standby.configure("default_transaction_read_only = on");
    standby.start_server();
    standby.promote();
    let writer_url = format!(
        "postgres://postgres@127.0.0.1:{}/ga?options=-c%20default_transaction_read_only%3Doff",
        standby.port()
    );
    let d = Instance::start(Store::open_postgres(&writer_url).await.unwrap(), node()).await;
    for (kid, _) in &fams[6..10] {
        assert_eq!(post_seal(&d, kid).await.0, 201);
    }
    let head = d.revision();
    assert!(
        head > read,
        "the new primary ({head}) is past what the instance read ({read})"
    );
    assert!(a.revision() == read, "the instance could not reach the new primary yet");
    standby
        .sql("postgres", "ALTER SYSTEM RESET default_transaction_read_only")
        .await;
    standby.sql("postgres", "SELECT pg_reload_conf()").await;

    // The instance reconnects, notices the other history and rebuilds.
    all_reach(std::slice::from_ref(&a), head).await;
    for (n, (kid, guardian)) in fams[..10].iter().enumerate() {
        let want = if (3..6).contains(&n) { "guardian" } else { "sealed" };
        assert_eq!(reason(&a, guardian, kid).await, want, "child {n}");
    }
    let status = support::get(a.check, "/v1/status", &[]).await.json();
    assert_eq!(status["revision"], head);
    a.stop().await;
    d.stop().await;
}
