//! The three `/v1/authz` headers (as nginx or Envoy send them) and
//! `x-min-revision`: any bytes are a query or a clear error naming the
//! header, never a panic.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let w = common::world();
    // Split the input at NUL bytes into the headers; a missing one is absent.
    let mut parts = data.split(|b| *b == 0);
    let (actor, subject, service, min) = (parts.next(), parts.next(), parts.next(), parts.next());
    let _ = guardian_access::http::check::parse::authz_min_revision(&w.snap, min);
    match guardian_access::http::check::parse::authz_query(actor, subject, service, w.snap.tz(), w.now) {
        Ok(q) => {
            let _ = guardian_access::decide(&w.snap, &q);
        }
        Err(e) => assert!(e.field.is_some() || !e.message.is_empty()),
    }
});
