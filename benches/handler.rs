//! Criterion bench of the check listener's request handling in process,
//! without sockets: what `/v1/check` costs on top of `decide` (body
//! collection, JSON in and out, identity parsing, clocks, metrics).
//!
//! `GA_BENCH_SCALE` as in `benches/decide.rs` (default 0.1 here).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use guardian_access::clock::Clock;
use guardian_access::http::check::parse;
use guardian_access::http::check::{self, State};
use guardian_access::http::listener::ListenerConfig;
use guardian_access::synth::{self, Scale};
use http_body_util::Full;

fn benches(c: &mut Criterion) {
    let fraction = std::env::var("GA_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.1);
    let synthetic = synth::generate(Scale::fraction(fraction), 42).unwrap();
    let bodies: Vec<Bytes> = synthetic
        .queries(1 << 16, 7)
        .iter()
        .map(|q| {
            Bytes::from(format!(
                r#"{{"actor":"{}","subject":"{}","service":"{}"}}"#,
                q.actor,
                q.subject,
                q.service.as_str()
            ))
        })
        .collect();
    let mask = bodies.len() - 1;
    let state = State::detached(ListenerConfig::default(), "bench", Clock::system());
    let snap = synthetic.snapshot.clone();
    state.cell.publish(synthetic.snapshot);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let tz = snap.tz().clone();
    let now = guardian_access::Instant::from_timestamp(jiff::Timestamp::now()).unwrap();

    let mut group = c.benchmark_group("handler");
    let mut i = 0;
    group.bench_function("parse_check", |b| {
        b.iter(|| {
            i = (i + 1) & mask;
            black_box(parse::parse_check(black_box(&bodies[i]), &tz, now).unwrap())
        })
    });
    let queries: Vec<_> = bodies
        .iter()
        .map(|b| parse::parse_check(b, &tz, now).unwrap())
        .collect();
    let mut i = 0;
    group.bench_function("check_answer", |b| {
        b.iter(|| {
            i = (i + 1) & mask;
            black_box(parse::check_answer(&snap, black_box(&queries[i])).1.len())
        })
    });
    let mut i = 0;
    group.bench_function("handle_check", |b| {
        b.iter(|| {
            i = (i + 1) & mask;
            let req = hyper::Request::post("/v1/check")
                .body(Full::new(bodies[i].clone()))
                .unwrap();
            black_box(rt.block_on(check::handle(&state, req)).status())
        })
    });
    group.finish();
}

criterion_group!(handler_benches, benches);
criterion_main!(handler_benches);
