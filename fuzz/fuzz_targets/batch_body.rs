//! `POST /v1/check/batch` bodies: an answer per check or a clear error,
//! never a panic.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let w = common::world();
    match guardian_access::http::check::parse::batch(&w.snap, data, w.now) {
        Ok(b) => {
            let v: serde_json_probe::Value = serde_json_probe::from_slice(&b.body).expect("the answer is JSON");
            let results = v["results"].as_array().expect("results");
            assert_eq!(results.len(), b.outcomes.len());
        }
        Err(e) => assert!(!e.message.is_empty()),
    }
});
