//! A full disk, for real: the data directory on a small `tmpfs` (mounted
//! by the test, which needs root: CI runs as root and must not skip), filled
//! to the last byte.
//!
//! Writes answer `503` naming the cause with nothing half-applied, checks go
//! on from memory, a checkpoint that cannot be written leaves the old file
//! intact and nothing temporary behind, a snapshot download from a peer
//! likewise; once space is freed, everything works again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use guardian_access::node::{NodeConfig, Peer};
use guardian_access::store::Store;
use serde_json::json;
use support::pg::Cluster;
use support::{Instance, PEER, POPULATION, UNIT, UNIT_TOKEN, quick_node};

// Skatteverket's test numbers.
const KID: &str = "201509162390";
const MOTHER: &str = "197701012382";
const FATHER: &str = "198001022386";

/// A small `tmpfs`, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if !root {
            if std::env::var_os("CI").is_some() {
                panic!("mounting a tmpfs needs root: CI must not skip the full-disk tests");
            }
            eprintln!("\n*** SKIPPED: mounting a tmpfs needs root ***\n");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("guardian-access-full-")
            .tempdir()
            .unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills it to the last byte with a file of its own.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        for chunk in [1 << 20, 4096, 1] {
            let bytes = vec![0u8; chunk];
            while f.write_all(&bytes).is_ok() {}
            let _ = f.flush();
        }
        assert!(f.write_all(&[0]).is_err(), "the disk is full");
        path
    }

    /// Names in it other than the filler.
    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "filler")
            .collect();
        names.sort();
        names
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

fn family() -> String {
    format!(
        "{}\n",
        json!({"id": KID, "protected": false, "guardians": [MOTHER, FATHER]})
    )
}

fn block(guardian: &str) -> String {
    json!({"kind": "block", "subject": KID, "guardian": guardian, "issuing_unit": UNIT,
           "decided_by": {"name": "Verksamhetschef"}, "basis": "Orosanmälan", "reference": "Dnr 2026-17"})
    .to_string()
}

async fn reason(i: &Instance, actor: &str) -> String {
    let body = json!({"actor": actor, "subject": KID, "service": "journal"}).to_string();
    let r = support::send(i.check, "POST", "/v1/check", &[], body).await;
    assert_eq!(r.status, 200, "checks go on: {}", r.text());
    r.json()["reason"].as_str().unwrap().to_owned()
}

async fn status(i: &Instance) -> serde_json::Value {
    support::get(i.check, "/v1/status", &[]).await.json()
}

/// Waits up to 10 s for `/v1/status`'s `store.<field>` to reach `at_least`.
async fn until_counted(i: &Instance, field: &str, at_least: u64) {
    for _ in 0..500 {
        if status(i).await["store"][field].as_u64().unwrap_or(0) >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("`{field}` never reached {at_least}: {}", status(i).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_answering_and_recovers() {
    let Some(disk) = Tmpfs::mount("8m") else { return };
    let store = Store::open_sqlite(disk.path()).await.unwrap();
    let node = NodeConfig {
        checkpoint_every: Duration::from_millis(300),
        ..quick_node(Some(disk.path().to_owned()))
    };
    let i = Instance::start(store, node).await;
    let r = i.admin_post(POPULATION, "/v1/population", &family()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    until_counted(&i, "checkpoints", 1).await;
    let snapshot = disk.path().join("snapshot");
    let counted = status(&i).await;
    let (folds, checkpoints) = (
        counted["store"]["folds"].as_u64().unwrap(),
        counted["store"]["checkpoints"].as_u64().unwrap(),
    );
    let before = std::fs::read(&snapshot).unwrap();
    // A write makes a checkpoint due in 300 ms; the disk is full first.
    let r = i.admin_post(UNIT_TOKEN, "/v1/restrictions", &block(MOTHER)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let filler = disk.fill();

    // The checkpoint fails, and leaves the old file whole.
    until_counted(&i, "folds", folds + 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        status(&i).await["store"]["checkpoints"].as_u64().unwrap(),
        checkpoints,
        "the checkpoint after the fold was not written"
    );
    assert_eq!(
        std::fs::read(&snapshot).unwrap(),
        before,
        "the old snapshot file is intact"
    );
    let left = disk.files();
    assert!(
        left.iter()
            .all(|n| !n.ends_with(".tmp") && !n.ends_with(".import-spool")),
        "nothing temporary left: {left:?}"
    );

    // Writes answer 503 naming the cause; nothing is half-applied.
    let revision = i.revision();
    let r = i.admin_post(UNIT_TOKEN, "/v1/restrictions", &block(FATHER)).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("disk is full"), "{}", r.text());
    let r = i.admin_post(POPULATION, "/v1/population", &family()).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("disk is full"), "{}", r.text());
    assert_eq!(i.revision(), revision, "nothing was written");
    // Checks go on from memory, with everything written before.
    assert_eq!(reason(&i, MOTHER).await, "blocked");
    assert_eq!(reason(&i, FATHER).await, "guardian");
    assert_eq!(support::get(i.check, "/readyz", &[]).await.status, 200);

    // Space again: writes work, and the next checkpoint is written.
    std::fs::remove_file(filler).unwrap();
    let checkpoints = status(&i).await["store"]["checkpoints"].as_u64().unwrap();
    let r = i.admin_post(UNIT_TOKEN, "/v1/restrictions", &block(FATHER)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(reason(&i, FATHER).await, "blocked");
    until_counted(&i, "checkpoints", checkpoints + 1).await;
    assert_ne!(std::fs::read(&snapshot).unwrap(), before, "a new snapshot file");
    i.stop().await;

    // And all of it is there after a restart from the same disk.
    let i = Instance::start(
        Store::open_sqlite(disk.path()).await.unwrap(),
        quick_node(Some(disk.path().to_owned())),
    )
    .await;
    assert_eq!(reason(&i, MOTHER).await, "blocked");
    assert_eq!(reason(&i, FATHER).await, "blocked");
    i.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_download_onto_a_full_disk_leaves_nothing_behind() {
    let Some(cluster) = Cluster::start() else { return };
    let url = cluster.database("fulldisk").await;
    let a_dir = tempfile::tempdir().unwrap();
    let a = Instance::start(
        Store::open_postgres(&url).await.unwrap(),
        quick_node(Some(a_dir.path().to_owned())),
    )
    .await;
    let r = a.admin_post(POPULATION, "/v1/population", &family()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = a.admin_post(UNIT_TOKEN, "/v1/restrictions", &block(MOTHER)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    until_counted(&a, "checkpoints", 1).await;

    let Some(disk) = Tmpfs::mount("4m") else { return };
    let filler = disk.fill();
    let peer = Peer {
        url: format!("http://{}", a.admin),
        token: PEER.into(),
        ca: None,
    };
    let node = NodeConfig {
        peers: vec![peer],
        ..quick_node(Some(disk.path().to_owned()))
    };
    // The download fails for want of space; the instance builds from the
    // store instead and answers.
    let b = Instance::start(Store::open_postgres(&url).await.unwrap(), node.clone()).await;
    assert_eq!(reason(&b, MOTHER).await, "blocked");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        disk.files(),
        Vec::<String>::new(),
        "no partial download, no temporary file"
    );
    b.stop().await;

    // With space, the next start takes the peer's file.
    std::fs::remove_file(filler).unwrap();
    let b = Instance::start(Store::open_postgres(&url).await.unwrap(), node).await;
    assert_eq!(reason(&b, MOTHER).await, "blocked");
    assert!(disk.files().contains(&"snapshot".to_owned()), "{:?}", disk.files());
    b.stop().await;
    a.stop().await;
}
