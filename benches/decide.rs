//! Criterion benches of the decision core over a synthetic population.
//!
//! `GA_BENCH_SCALE` sets the population as a fraction of national scale
//! (default 1.0: 2.2 million children). CI runs a small scale in quick mode.
//!
//! - `decide/random_pairs`: a check over random pairs (cold memory at national scale);
//! - `decide/hot_pairs`: the same over 1,000 pairs that stay in cache (the CPU cost);
//! - `decide/while_swapping_every_ms`, `decide/while_swapping_flat_out`: a
//!   check through `ArcSwap` while another thread swaps in new snapshots once
//!   a millisecond, or as fast as it can;
//! - `decide/worst_allowed_subject`: a guardian of the most expensive
//!   subject the write path allows (`MAX_RULES_IN_FORCE` blocks whose ends
//!   are staggered, so that finding `valid_until` re-evaluates the answer
//!   at each, beside 200 lifted rules of history); target < 5 µs;
//! - `decide/batch_of_100`: 100 random pairs through `decide_batch`, which
//!   reads the subjects' slots a group ahead so that the misses overlap;
//!   reported per batch (divide by 100 for per check); target < 80 ns a check;
//! - `decide/one_by_one_100`: the same 100 pairs through `decide`, one after
//!   another, for the ratio;
//! - `memory/floor`: one dependent random read from a huge-page table the
//!   size of the snapshot (a pointer chase: each read's address comes from
//!   the previous one). A single check cannot beat it; the target is
//!   `decide/random_pairs` within 1.3x of it, measured in the same run;
//! - `children/switch_list`: a guardian's switch list.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use guardian_access::synth::{self, Scale, Synthetic};
use guardian_access::{Rules, Service, Snapshot, children, decide, decide_batch};

fn population() -> Synthetic {
    let fraction = std::env::var("GA_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    synth::generate(Scale::fraction(fraction), 42).unwrap()
}

fn benches(c: &mut Criterion) {
    let synthetic = population();
    let snap = &synthetic.snapshot;
    let queries = synthetic.queries(1 << 20, 7);
    let mask = queries.len() - 1;

    let mut group = c.benchmark_group("decide");
    let mut i = 0;
    group.bench_function("random_pairs", |b| {
        b.iter(|| {
            i = (i + 1) & mask;
            black_box(decide(snap, black_box(&queries[i])))
        })
    });
    let mut i = 0;
    group.bench_function("hot_pairs", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(decide(snap, black_box(&queries[i])))
        })
    });

    // A writer thread keeps swapping in snapshots that share the population
    // and carry a fresh copy of the rules, as a restriction write would:
    // once a millisecond (far more writes than a region makes), and flat out.
    let current = Arc::new(ArcSwap::from_pointee(snap.clone()));
    for (name, pause) in [
        ("while_swapping_every_ms", Some(Duration::from_millis(1))),
        ("while_swapping_flat_out", None),
    ] {
        let stop = Arc::new(AtomicBool::new(false));
        let writer = swapper(current.clone(), stop.clone(), snap.clone(), pause);
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) & mask;
                let snapshot = current.load();
                black_box(decide(&snapshot, black_box(&queries[i])).revision)
            })
        });
        stop.store(true, Ordering::Relaxed);
        let swaps = writer.join().unwrap();
        println!("decide/{name}: the writer swapped {swaps} snapshots meanwhile");
    }
    // Batches of 100 random pairs, overlapped and one by one.
    let mut out = Vec::with_capacity(100);
    let mut start = 0;
    group.throughput(criterion::Throughput::Elements(100));
    group.bench_function("batch_of_100", |b| {
        b.iter(|| {
            start = if start + 200 > queries.len() { 0 } else { start + 100 };
            decide_batch(snap, black_box(&queries[start..start + 100]), &mut out);
            black_box(out.len())
        })
    });
    let mut start = 0;
    group.bench_function("one_by_one_100", |b| {
        b.iter(|| {
            start = if start + 200 > queries.len() { 0 } else { start + 100 };
            for q in &queries[start..start + 100] {
                black_box(decide(snap, black_box(q)));
            }
        })
    });
    group.throughput(criterion::Throughput::Elements(1));
    let (worst, query) = worst_allowed_subject();
    let d = decide(&worst, &query);
    assert_eq!(d.reason, guardian_access::Reason::Blocked);
    assert!(d.valid_until.is_some());
    group.bench_function("worst_allowed_subject", |b| {
        b.iter(|| black_box(decide(&worst, black_box(&query))))
    });
    group.finish();

    let mut group = c.benchmark_group("memory");
    let chase = Chase::new(snap.heap_bytes());
    let mut at = 0;
    group.bench_function("floor", |b| b.iter(|| at = chase.next(black_box(at))));
    drop(chase);
    group.finish();

    let mut group = c.benchmark_group("children");
    let mut i = 0;
    let guardians = &synthetic.guardians;
    group.bench_function("switch_list", |b| {
        b.iter(|| {
            i = (i + 1) % guardians.len();
            let list = children(snap, black_box(guardians[i]), Service::Journal, synthetic.reference);
            black_box(list.map(|(_, d)| d.reason as u32).sum::<u32>())
        })
    });
    group.finish();
}

/// A table as large as the snapshot, in a huge-page mapping like the
/// population table's, holding one random cycle through all its 64-byte
/// lines (Sattolo's algorithm): following it reads a random line each step,
/// and each read's address depends on the previous read, so nothing
/// overlaps — the latency of one miss, the memory floor of a check.
struct Chase {
    map: memmap2::MmapMut,
}

impl Chase {
    const LINE: usize = 64;

    fn new(bytes: usize) -> Chase {
        let lines = (bytes / Self::LINE).max(2);
        let mut map = memmap2::MmapMut::map_anon(lines * Self::LINE).unwrap();
        let _ = map.advise(memmap2::Advice::HugePage);
        let mut order: Vec<u32> = (0..lines as u32).collect();
        let mut rng = synth::Rng::new(9);
        for i in (1..lines).rev() {
            order.swap(i, rng.below(i));
        }
        // Line order[k] points at order[k + 1]; the last back at the first.
        for k in 0..lines {
            let from = order[k] as usize * Self::LINE;
            let to = order[(k + 1) % lines].to_le_bytes();
            map[from..from + 4].copy_from_slice(&to);
        }
        Chase { map }
    }

    #[inline]
    fn next(&self, line: u32) -> u32 {
        let at = line as usize * Self::LINE;
        u32::from_le_bytes(self.map[at..at + 4].try_into().unwrap())
    }
}

/// The costliest subject the write path lets a unit build: as many blocks
/// of one guardian in force as allowed, each ending a day after the one
/// before (so the answer stays `blocked` across every end but the last),
/// and a long history of lifted blocks that every evaluation walks past.
fn worst_allowed_subject() -> (Snapshot, guardian_access::Query) {
    use guardian_access::fixtures::{CaseFile, Scenario};
    use serde_json::json;
    const KID: &str = "201509162390";
    const MOTHER: &str = "197701012382";
    let in_force = guardian_access::store::MAX_RULES_IN_FORCE;
    let mut rules: Vec<serde_json::Value> = (0..in_force)
        .map(|n| {
            json!({"kind": "block", "subject": KID, "guardian": MOTHER, "valid_from": "2026-01-01",
                   "valid_until": format!("2027-{:02}-{:02}", 1 + n / 28, 1 + n % 28)})
        })
        .collect();
    rules.extend((0..200).map(|n| {
        json!({"kind": "block", "subject": KID, "guardian": MOTHER,
               "valid_from": format!("2024-{:02}-01", 1 + n % 12),
               "lifted_at": format!("2025-{:02}-01", 1 + n % 12)})
    }));
    let scenario: Scenario = serde_json::from_value(json!({
        "people": [{"id": KID, "guardians": [MOTHER, "198001022386"]}],
        "rules": rules,
    }))
    .unwrap();
    let snap = scenario.snapshot().unwrap();
    let case: CaseFile = serde_json::from_value(json!({
        "name": "worst", "actor": MOTHER, "subject": KID, "service": "journal",
        "at": "2026-06-01T12:00:00+02:00", "expect": {}
    }))
    .unwrap();
    let query = case.query(snap.tz()).unwrap();
    (snap, query)
}

/// Swaps a copy of `base` with fresh rules into `current` until `stop`,
/// pausing between swaps if asked; returns how many it made.
fn swapper(
    current: Arc<ArcSwap<Snapshot>>,
    stop: Arc<AtomicBool>,
    base: Snapshot,
    pause: Option<Duration>,
) -> JoinHandle<u64> {
    let rules = Arc::new(Rules::new(base.rules().iter().cloned().collect()));
    std::thread::spawn(move || {
        let mut revision = base.revision();
        let mut swaps = 0u64;
        while !stop.load(Ordering::Relaxed) {
            revision += 1;
            current.store(Arc::new(base.with_rules(revision, rules.clone())));
            swaps += 1;
            if let Some(p) = pause {
                std::thread::sleep(p);
            }
        }
        swaps
    })
}

criterion_group!(decide_benches, benches);
criterion_main!(decide_benches);
