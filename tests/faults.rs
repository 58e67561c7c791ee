//! Faults the store can have while the service runs, on both stores: a
//! committed write that cannot be published in time, and a store that
//! keeps failing to answer. A `2xx` means visible; an instance that cannot
//! follow its store stops answering checks (`503`) instead of answering
//! from a snapshot that may miss a committed write, and answers again once
//! it has caught up.
//!
//! The failures are injected from outside the service, through a second
//! connection to the same database: a table the node reads is renamed away
//! and back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use guardian_access::node::NodeConfig;
use guardian_access::store::Store;
use serde_json::json;
use support::pg::Cluster;
use support::{Instance, POPULATION, UNIT, UNIT_TOKEN, quick_node};

// Skatteverket's test numbers.
const KID: &str = "201509162390";
const MOTHER: &str = "197701012382";
const FATHER: &str = "198001022386";

/// A second way into the same database, to break it and mend it.
enum Backdoor {
    Sqlite(std::path::PathBuf),
    Postgres(tokio_postgres::Client),
}

impl Backdoor {
    async fn exec(&self, sql: &str) {
        match self {
            Backdoor::Sqlite(dir) => {
                let conn = rusqlite::Connection::open(dir.join(guardian_access::store::SQLITE_FILE)).unwrap();
                conn.busy_timeout(Duration::from_secs(5)).unwrap();
                conn.execute_batch(sql).unwrap();
            }
            Backdoor::Postgres(client) => client.batch_execute(sql).await.unwrap(),
        }
    }
}

fn node(data_dir: Option<std::path::PathBuf>) -> NodeConfig {
    NodeConfig {
        visible_within: Duration::from_millis(400),
        max_staleness: Some(Duration::from_millis(600)),
        ..quick_node(data_dir)
    }
}

async fn start(store: Store, data_dir: Option<std::path::PathBuf>) -> Instance {
    let i = Instance::start(store, node(data_dir)).await;
    let family = json!({"id": KID, "protected": false, "guardians": [MOTHER, FATHER]});
    let r = i.admin_post(POPULATION, "/v1/population", &format!("{family}\n")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    i
}

fn block() -> String {
    json!({"kind": "block", "subject": KID, "guardian": MOTHER, "issuing_unit": UNIT,
           "decided_by": {"name": "Verksamhetschef"}, "basis": "Orosanmälan", "reference": "Dnr 2026-17"})
    .to_string()
}

async fn check(i: &Instance) -> support::Reply {
    let body = json!({"actor": MOTHER, "subject": KID, "service": "journal"}).to_string();
    support::send(i.check, "POST", "/v1/check", &[], body).await
}

async fn readyz(i: &Instance) -> u16 {
    support::get(i.check, "/readyz", &[]).await.status
}

/// Waits up to 5 s for `/readyz` to answer `want`.
async fn until_ready_is(i: &Instance, want: u16) {
    for _ in 0..250 {
        if readyz(i).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("/readyz never answered {want}");
}

/// A write the node cannot publish: its `2xx` is withheld, checks answer
/// `503` naming the write, and all of it ends once the node catches up.
async fn a_write_not_visible_in_time(i: &Instance, door: &Backdoor) {
    assert_eq!(check(i).await.json()["reason"], "guardian");
    // The node reads `person_history` on every catch-up; the rule write
    // does not touch it, so the write commits and the catch-up fails.
    door.exec("ALTER TABLE person_history RENAME TO person_history_away")
        .await;
    let r = i.admin_post(UNIT_TOKEN, "/v1/restrictions", &block()).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.error().0, "not_ready");
    assert!(r.text().contains("committed"), "{}", r.text());
    // Checks refuse rather than answer `guardian` from before the block.
    let c = check(i).await;
    assert_eq!(c.status, 503, "{}", c.text());
    assert!(c.text().contains("committed write"), "{}", c.text());
    assert_eq!(readyz(i).await, 503);
    let ok = support::send(
        i.check,
        "GET",
        "/v1/authz/journal",
        &[("x-actor-id", MOTHER), ("x-subject-id", KID), ("x-service", "journal")],
        String::new(),
    )
    .await;
    assert_eq!(ok.status, 503, "the nginx/Envoy answer fails closed too");
    // Mended: the node catches up on its own and answers with the block.
    door.exec("ALTER TABLE person_history_away RENAME TO person_history")
        .await;
    until_ready_is(i, 200).await;
    let c = check(i).await;
    assert_eq!(c.status, 200, "{}", c.text());
    assert_eq!(c.json()["reason"], "blocked");
}

/// A store that fails every read: past `max_staleness` checks answer
/// `503`; once it answers again, so does the instance.
async fn a_store_that_keeps_failing(i: &Instance, door: &Backdoor) {
    until_ready_is(i, 200).await;
    door.exec("ALTER TABLE meta RENAME TO meta_away").await;
    until_ready_is(i, 503).await;
    let c = check(i).await;
    assert_eq!(c.status, 503, "{}", c.text());
    assert!(c.text().contains("lost its store"), "{}", c.text());
    door.exec("ALTER TABLE meta_away RENAME TO meta").await;
    until_ready_is(i, 200).await;
    assert_eq!(check(i).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_fails_closed_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(dir.path()).await.unwrap();
    let i = start(store, Some(dir.path().to_owned())).await;
    let door = Backdoor::Sqlite(dir.path().to_owned());
    a_write_not_visible_in_time(&i, &door).await;
    a_store_that_keeps_failing(&i, &door).await;
    i.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_fails_closed_and_recovers() {
    let Some(cluster) = Cluster::start() else { return };
    let url = cluster.database("faults").await;
    let store = Store::open_postgres(&url).await.unwrap();
    let i = start(store, None).await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let door = Backdoor::Postgres(client);
    a_write_not_visible_in_time(&i, &door).await;
    a_store_that_keeps_failing(&i, &door).await;
    i.stop().await;
}
