//! `POST /v1/check` bodies: any bytes are an answer or a clear error,
//! never a panic; an answer is valid JSON and the same as `decide`'s.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let w = common::world();
    match guardian_access::http::check::parse::check(&w.snap, data, w.now) {
        Ok((q, d, body)) => {
            let again = guardian_access::decide(&w.snap, &q);
            assert_eq!(d.reason, again.reason);
            let v: serde_json_probe::Value = serde_json_probe::from_slice(&body).expect("the answer is JSON");
            assert!(v.is_object());
        }
        Err(e) => assert!(!e.message.is_empty()),
    }
});
