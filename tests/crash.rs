//! Crash safety: the binary is killed with SIGKILL while writes are in
//! flight, restarted on the same data directory, and every write it
//! acknowledged is there; an import in flight is there whole or not at all.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use support::{AUDITOR, POPULATION, Process, REGISTRAR, UNIT};

fn start(dir: &Path, tokens: &Path) -> Process {
    Process::serve(&[
        "--data-dir".as_ref(),
        dir.as_os_str(),
        "--admin-tokens".as_ref(),
        tokens.as_os_str(),
    ])
}

/// `(subject, guardian)` of each generated family; numbers made at run time.
fn families(n: u16) -> Vec<(String, String)> {
    (1..=n)
        .map(|i| {
            (
                support::pid(support::years_ago(10), 5, 1 + (i % 28) as u8, i).to_string(),
                support::pid(support::years_ago(42), 5, 1 + (i % 28) as u8, i).to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = support::tokens_file(dir.path());
    let data = dir.path().join("data");
    let fams = families(300);

    let p = start(&data, &tokens);
    p.ready().await;
    let body: String = fams
        .iter()
        .map(|(k, g)| format!("{}\n", json!({"id": k, "protected": false, "guardians": [g]})))
        .collect();
    let auth = format!("Bearer {POPULATION}");
    let r = support::send(p.admin, "POST", "/v1/population", &[("authorization", &auth)], body).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Writers: seals on random subjects, as fast as they are acknowledged.
    let acked: Arc<Mutex<Vec<(String, String, u64)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..12usize {
        let (acked, fams, admin) = (acked.clone(), fams.clone(), p.admin);
        writers.push(tokio::spawn(async move {
            for n in 0.. {
                let (kid, _) = &fams[(w * 7919 + n * 104_729) % fams.len()];
                let body = json!({"kind": "seal", "subject": kid, "issuing_unit": UNIT,
                                  "decided_by": {"name": "Verksamhetschef"}, "basis": format!("writer {w} #{n}")});
                let auth = format!("Bearer {REGISTRAR}");
                let sent = support::try_send(
                    admin,
                    "POST",
                    "/v1/restrictions",
                    &[("authorization", &auth)],
                    body.to_string(),
                )
                .await;
                match sent {
                    Ok(r) if r.status == 201 => {
                        let v = r.json();
                        acked.lock().unwrap().push((
                            kid.clone(),
                            v["id"].as_str().unwrap().to_owned(),
                            v["revision"].as_u64().unwrap(),
                        ));
                    }
                    // The process is gone: stop.
                    _ => break,
                }
            }
        }));
    }
    // And a big import in flight: it must land whole or not at all.
    let big: Vec<(String, String)> = (1..=999u16)
        .flat_map(|i| {
            (support::years_ago(16)..support::years_ago(4)).flat_map(move |y| {
                (1..=5u8).map(move |m| {
                    (
                        support::pid(y, m, 1 + (i % 28) as u8, i).to_string(),
                        support::pid(y - 30, m, 1 + (i % 28) as u8, i).to_string(),
                    )
                })
            })
        })
        .collect();
    let import_body: String = big
        .iter()
        .map(|(k, g)| format!("{}\n", json!({"id": k, "protected": false, "guardians": [g]})))
        .collect();
    let importer = {
        let admin = p.admin;
        tokio::spawn(async move {
            let auth = format!("Bearer {POPULATION}");
            support::try_send(
                admin,
                "POST",
                "/v1/population",
                &[("authorization", &auth)],
                import_body,
            )
            .await
        })
    };

    // Kill while the seals flow and, usually, while the import streams.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut p = p;
    p.kill();
    for w in writers {
        w.await.unwrap();
    }
    let import_acked = matches!(importer.await.unwrap(), Ok(r) if r.status == 200);
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "the writers got going ({} acknowledged)", acked.len());
    let max_revision = acked.iter().map(|a| a.2).max().unwrap();

    // Restart on the same directory.
    let p2 = start(&data, &tokens);
    p2.ready().await;
    let status = support::get(p2.check, "/v1/status", &[]).await.json();
    assert!(status["revision"].as_u64().unwrap() >= max_revision, "{status}");
    let auth = format!("Bearer {AUDITOR}");
    let mut by_subject: std::collections::HashMap<&str, Vec<&str>> = Default::default();
    for (kid, id, _) in &acked {
        by_subject.entry(kid).or_default().push(id);
    }
    for (kid, ids) in &by_subject {
        let v = support::get(p2.admin, &format!("/v1/subjects/{kid}"), &[("authorization", &auth)])
            .await
            .json();
        let stored: Vec<&str> = v["restrictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        for id in ids {
            assert!(stored.contains(id), "acknowledged seal {id} is missing after SIGKILL");
        }
        let guardian = &fams.iter().find(|(k, _)| k == kid).unwrap().1;
        let a = v["answers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| &a["actor"] == guardian && a["service"] == "journal")
            .unwrap()
            .clone();
        assert_eq!(a["reason"], "sealed", "{kid}");
    }
    // The import: whole, or (if it was not acknowledged) possibly absent.
    let present = |(k, _): &(String, String)| {
        let k = k.clone();
        let auth = auth.clone();
        async move {
            let v = support::get(p2.admin, &format!("/v1/subjects/{k}"), &[("authorization", &auth)])
                .await
                .json();
            !v["person"].is_null()
        }
    };
    let (first, last) = (present(&big[0]).await, present(&big[big.len() - 1]).await);
    assert_eq!(first, last, "an import is never half applied");
    if import_acked {
        assert!(first, "an acknowledged import survives");
    }
    let mut p2 = p2;
    p2.kill();

    // The database itself is intact.
    let db = rusqlite::Connection::open(data.join(guardian_access::store::SQLITE_FILE)).unwrap();
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    eprintln!(
        "crash test: {} acknowledged seals on {} subjects survived; import acknowledged: {import_acked}, present: {first}",
        acked.len(),
        by_subject.len()
    );
}
