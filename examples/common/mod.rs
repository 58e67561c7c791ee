//! What the write-path and soak examples share: memory figures of this
//! process, and the population as NDJSON imported the way
//! `import-population` does.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufWriter, Read, Write};
use std::path::Path;

use guardian_access::actor::{Caller, Role};
use guardian_access::store::{IMPORT_BATCH, ImportMsg, Store};
use guardian_access::synth;
use serde_json::json;

/// A memory figure of this process from `/proc/self/status`, in MB:
/// `VmRSS` (now) or `VmHWM` (the peak).
pub fn status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Writes the population as NDJSON, one person a line; returns the count.
pub fn write_ndjson(population: &synth::Population, file: &Path) -> u64 {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(file).unwrap());
    let mut persons = 0u64;
    for r in population.records() {
        let guardians: Vec<String> = r.guardians.iter().map(ToString::to_string).collect();
        serde_json::to_writer(
            &mut out,
            &json!({"id": r.id.to_string(), "protected": r.protected, "guardians": guardians}),
        )
        .unwrap();
        out.write_all(b"\n").unwrap();
        persons += 1;
    }
    out.flush().unwrap();
    persons
}

/// Imports an NDJSON file exactly as `import-population` does.
pub async fn import_file(store: &Store, file: &Path) -> guardian_access::store::Imported {
    let (tx, rx) = tokio::sync::mpsc::channel::<ImportMsg>(4);
    let path = file.to_owned();
    let reader = tokio::task::spawn_blocking(move || {
        let mut input = std::fs::File::open(path).unwrap();
        let mut lines = guardian_access::ndjson::Reader::new(jiff::civil::date(2026, 11, 23));
        let mut buf = vec![0u8; 1 << 20];
        let mut batch = Vec::with_capacity(IMPORT_BATCH);
        loop {
            let n = input.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            lines.feed(&buf[..n], &mut batch).unwrap();
            if batch.len() >= IMPORT_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(IMPORT_BATCH));
                tx.blocking_send(ImportMsg::Batch(full)).unwrap();
            }
        }
        lines.finish(&mut batch).unwrap();
        tx.blocking_send(ImportMsg::Batch(batch)).unwrap();
        tx.blocking_send(ImportMsg::End).unwrap();
    });
    let by = Caller {
        name: "bench".into(),
        role: Role::Population,
        unit: None,
        hsa_id: None,
    };
    let imported = store.import(rx, &by).await.unwrap();
    reader.await.unwrap();
    imported
}
