//! Population NDJSON: any bytes, however they are split into network
//! reads, give the same records or the same error (naming line and field),
//! never a panic.
#![no_main]

mod common;

use guardian_access::ndjson::Reader;
use libfuzzer_sys::fuzz_target;

fn read(chunks: &[&[u8]]) -> Result<Vec<guardian_access::PersonRecord>, (Option<u64>, String)> {
    let w = common::world();
    let mut reader = Reader::new(w.today);
    let mut out = Vec::new();
    for c in chunks {
        reader.feed(c, &mut out).map_err(|e| (e.line, e.message.to_string()))?;
    }
    reader.finish(&mut out).map_err(|e| (e.line, e.message.to_string()))?;
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else { return };
    let at = usize::from(cut) % (data.len() + 1);
    let whole = read(&[data]);
    let split = read(&[&data[..at], &data[at..]]);
    assert_eq!(whole, split, "the answer depends on how the bytes arrived");
    if let Ok(records) = whole {
        // No record is invented: at most one per line.
        assert!(records.len() <= data.split(|b| *b == b'\n').count());
    }
});
