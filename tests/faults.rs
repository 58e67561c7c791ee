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
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    start_limited(store, data_dir, |_| {}).await
}

async fn start_limited(
    store: Store,
    data_dir: Option<std::path::PathBuf>,
    limits: impl FnOnce(&mut guardian_access::http::listener::ListenerConfig),
) -> Instance {
    let i = Instance::start_limited(store, node(data_dir), limits).await;
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

/// A population upload sent by hand, chunk by chunk, so that it can stall.
struct Upload {
    stream: tokio::net::TcpStream,
}

impl Upload {
    async fn start(i: &Instance) -> Upload {
        let mut stream = tokio::net::TcpStream::connect(i.admin).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let head = format!(
            "POST /v1/population HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {POPULATION}\r\n\
             content-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        Upload { stream }
    }

    async fn lines(&mut self, lines: &[serde_json::Value]) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let chunk = format!("{:x}\r\n{text}\r\n", text.len());
        self.stream.write_all(chunk.as_bytes()).await.unwrap();
    }

    /// Ends the upload and reads the answer's status line.
    async fn finish(mut self) -> String {
        let _ = self.stream.write_all(b"0\r\n\r\n").await;
        self.answer().await
    }

    async fn answer(&mut self) -> String {
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match tokio::time::timeout(Duration::from_secs(30), self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }
}

/// Families made at run time for an import.
fn families(from: u16, n: u16) -> Vec<(String, serde_json::Value)> {
    (from..from + n)
        .map(|k| {
            let kid = support::pid(2016, 3, 1 + (k % 28) as u8, k).to_string();
            let parent = support::pid(1984, 3, 1 + (k % 28) as u8, k).to_string();
            (
                parent.clone(),
                json!({"id": kid, "protected": false, "guardians": [parent]}),
            )
        })
        .collect()
}

/// An import whose feed stalls holds nothing an urgent block needs: the
/// block is answered and visible at once, and the import still lands whole
/// when its feed resumes; a feed that never resumes is cut off whole.
async fn a_stalled_feed_does_not_hold_back_an_urgent_block(i: &Instance, stalled_import: &Instance) {
    let fams = families(1, 40);
    let mut upload = Upload::start(i).await;
    upload
        .lines(&fams[..20].iter().map(|(_, l)| l.clone()).collect::<Vec<_>>())
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let urgent = json!({"kind": "block", "subject": KID, "guardian": MOTHER, "urgent": true,
                        "issuing_unit": UNIT, "decided_by": {"name": "Verksamhetschef"},
                        "requested_by": {"name": "Sjuksköterska", "id": "VGR-ID 123", "phone": "010-000 00 00"},
                        "basis": "Hot mot barnet"});
    let started = std::time::Instant::now();
    let r = i
        .admin_post(support::REGISTRAR, "/v1/restrictions", &urgent.to_string())
        .await;
    let took = started.elapsed();
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(took < Duration::from_secs(1), "the urgent block took {took:?}");
    assert_eq!(check(i).await.json()["reason"], "blocked");
    // The feed stays stalled for 5 s in all, then resumes and finishes.
    tokio::time::sleep(Duration::from_secs(4)).await;
    upload
        .lines(&fams[20..].iter().map(|(_, l)| l.clone()).collect::<Vec<_>>())
        .await;
    let answer = upload.finish().await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for (parent, line) in [&fams[0], &fams[39]] {
        let body = json!({"actor": parent, "subject": line["id"], "service": "journal"}).to_string();
        let r = support::send(i.check, "POST", "/v1/check", &[], body).await;
        assert_eq!(r.json()["reason"], "guardian", "the whole import landed");
    }
    assert_eq!(check(i).await.json()["reason"], "blocked", "and the block stays");

    // A feed that never resumes is cut off at the import deadline, whole.
    let i = stalled_import;
    let before = i.revision();
    let mut upload = Upload::start(i).await;
    upload
        .lines(&fams[..5].iter().map(|(_, l)| l.clone()).collect::<Vec<_>>())
        .await;
    let answer = upload.answer().await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(i.revision(), before, "nothing was applied");
    let (parent, line) = &fams[0];
    let body = json!({"actor": parent, "subject": line["id"], "service": "journal"}).to_string();
    let r = support::send(i.check, "POST", "/v1/check", &[], body).await;
    assert_eq!(r.json()["reason"], "not_guardian");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_imports_without_holding_the_writer() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let i = start(Store::open_sqlite(a.path()).await.unwrap(), Some(a.path().to_owned())).await;
    let short = start_limited(Store::open_sqlite(b.path()).await.unwrap(), None, |l| {
        l.import_timeout = Duration::from_secs(1);
    })
    .await;
    a_stalled_feed_does_not_hold_back_an_urgent_block(&i, &short).await;
    let left: Vec<_> = std::fs::read_dir(b.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".import-spool"))
        .collect();
    assert!(left.is_empty(), "the abandoned spool is removed: {left:?}");
    i.stop().await;
    short.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_imports_without_holding_the_writer() {
    let Some(cluster) = Cluster::start() else { return };
    let url = cluster.database("stalled").await;
    let i = start(Store::open_postgres(&url).await.unwrap(), None).await;
    let short_url = cluster.database("stalled_short").await;
    let short = start_limited(Store::open_postgres(&short_url).await.unwrap(), None, |l| {
        l.import_timeout = Duration::from_secs(1);
    })
    .await;
    a_stalled_feed_does_not_hold_back_an_urgent_block(&i, &short).await;
    i.stop().await;
    short.stop().await;
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
