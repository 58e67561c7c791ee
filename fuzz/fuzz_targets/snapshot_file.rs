//! Snapshot files: any bytes are refused with an error or give a snapshot
//! that answers, never a crash. The first byte picks how: as they are (the
//! MAC refuses nearly all of them), or with the checksums and the MAC made
//! right for this store's key, as if the key had leaked or our own writer
//! had a bug: the reader must still check everything it trusts.
#![no_main]

mod common;

use std::sync::Arc;

use guardian_access::node::snapfile;
use hmac::Mac as _;
use libfuzzer_sys::fuzz_target;

const STORE: &str = "fuzz-store";
const KEY: &[u8] = b"the fuzzing store's snapshot key";

type Mac = hmac::Hmac<sha2::Sha256>;

/// Makes the header checksum, the file checksum and the MAC right.
fn sign(bytes: &mut [u8]) {
    let n = bytes.len();
    if n >= 12 {
        let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        if let Some(end) = 12usize.checked_add(len).filter(|e| e + 4 <= n) {
            let crc = crc32fast::hash(&bytes[12..end]);
            bytes[end..end + 4].copy_from_slice(&crc.to_le_bytes());
        }
    }
    if n >= 36 {
        let crc = crc32fast::hash(&bytes[..n - 36]);
        bytes[n - 36..n - 32].copy_from_slice(&crc.to_le_bytes());
        let mut mac = <Mac as hmac::KeyInit>::new_from_slice(KEY).unwrap();
        mac.update(&bytes[..n - 32]);
        let tag = mac.finalize().into_bytes();
        bytes[n - 32..].copy_from_slice(&tag);
    }
}

fn dir() -> &'static tempfile::TempDir {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap())
}

fuzz_target!(
    init: {
        // A valid file of the demo region as a seed.
        let w = common::world();
        let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/snapshot_file");
        let _ = std::fs::create_dir_all(&seed);
        let path = dir().path().join("seed");
        let folded = w.snap.fold().unwrap();
        snapfile::write(&path, &folded, STORE, KEY, None).unwrap();
        let mut bytes = vec![1u8];
        bytes.extend(std::fs::read(&path).unwrap());
        let _ = std::fs::write(seed.join("demo-signed"), &bytes);
    },
    |data: &[u8]| {
        let Some((&mode, rest)) = data.split_first() else { return };
        let mut bytes = rest.to_vec();
        if mode & 1 == 1 {
            sign(&mut bytes);
        }
        let w = common::world();
        let path = dir().path().join("file");
        std::fs::write(&path, &bytes).unwrap();
        let settings = Arc::new(w.snap.settings().clone());
        if let Ok(snap) = snapfile::read(&path, STORE, KEY, settings) {
            for q in &w.queries {
                let _ = guardian_access::decide(&snap, q);
            }
            let _ = guardian_access::children(&snap, w.queries[0].actor, guardian_access::Service::Journal, w.now).count();
        }
    }
);
