//! National scale, measured: builds the synthetic national population
//! (2.2 million children, ~4.3 million guardianship links, 25,000 protected
//! persons, 50,000 restrictions and grants) and reports build time, memory
//! and the latency distribution of single decisions.
//!
//! `cargo run --release --example national [-- SCALE]` (SCALE 1.0 = national).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Instant as Clock;

use guardian_access::synth::{self, Scale};
use guardian_access::{Service, children, decide};

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1_048_576.0
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn main() {
    let fraction: f64 = std::env::args()
        .nth(1)
        .map_or(1.0, |s| s.parse().expect("SCALE must be a number"));
    let scale = Scale::fraction(fraction);
    let before = rss_bytes();

    let t = Clock::now();
    let population = synth::population(scale, 42).unwrap();
    let generated = t.elapsed();
    let t = Clock::now();
    let synthetic = population.build().unwrap();
    let built = t.elapsed();
    let snap = &synthetic.snapshot;
    let people = snap.people();
    let heap = snap.heap_bytes();
    let rss = rss_bytes();

    println!("scale                 {fraction} ({} children)", scale.children);
    println!(
        "persons               {} ({} records, {} guardianship links)",
        people.len(),
        people.records(),
        people.links()
    );
    println!("rules                 {}", snap.rules().len());
    println!("generate input        {:.2} s", generated.as_secs_f64());
    println!("build snapshot        {:.2} s", built.as_secs_f64());
    println!(
        "snapshot heap         {:.1} MB ({:.0} bytes per child, {:.0} bytes per person)",
        mb(heap),
        heap as f64 / scale.children as f64,
        heap as f64 / people.len() as f64
    );
    let huge = std::fs::read_to_string("/proc/self/smaps_rollup")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    println!("huge pages in use     {huge}");
    println!(
        "process RSS           {:.1} MB (was {:.1} MB before; includes the generator's lists of numbers)",
        mb(rss),
        mb(before)
    );

    // Single decisions over random pairs, each timed on its own.
    let queries = synthetic.queries(1_000_000, 7);
    for q in queries.iter().take(100_000) {
        black_box(decide(snap, q));
    }
    let mut overhead = Vec::with_capacity(100_000);
    for _ in 0..100_000 {
        let t = Clock::now();
        overhead.push(t.elapsed().as_nanos() as u32);
    }
    overhead.sort_unstable();
    let mut samples = Vec::with_capacity(queries.len());
    for q in &queries {
        let t = Clock::now();
        black_box(decide(snap, black_box(q)));
        samples.push(t.elapsed().as_nanos() as u32);
    }
    samples.sort_unstable();
    println!(
        "decide, timed singly  p50 {} ns, p90 {} ns, p99 {} ns, p99.9 {} ns, max {} ns (timer overhead p50 {} ns, included)",
        percentile(&samples, 0.5),
        percentile(&samples, 0.9),
        percentile(&samples, 0.99),
        percentile(&samples, 0.999),
        samples[samples.len() - 1],
        percentile(&overhead, 0.5),
    );
    let t = Clock::now();
    for q in &queries {
        black_box(decide(snap, black_box(q)));
    }
    println!(
        "decide, back to back  {:.0} ns mean",
        t.elapsed().as_nanos() as f64 / queries.len() as f64
    );

    // The lookup alone, without the rules.
    let mut lookup = Vec::with_capacity(queries.len());
    for q in &queries {
        let t = Clock::now();
        black_box(people.age_limits(black_box(q.subject)));
        lookup.push(t.elapsed().as_nanos() as u32);
    }
    lookup.sort_unstable();
    println!(
        "person lookup alone   p50 {} ns, p99 {} ns",
        percentile(&lookup, 0.5),
        percentile(&lookup, 0.99)
    );

    // The floor: one random read from a table as large as the snapshot's,
    // timed the same way. A check at national scale cannot beat this.
    let table: Vec<u64> = (0..heap / 8).map(|i| i as u64).collect();
    let mut rng = synth::Rng::new(9);
    let mut floor = Vec::with_capacity(1_000_000);
    for _ in 0..1_000_000 {
        let i = rng.below(table.len());
        let t = Clock::now();
        black_box(table[black_box(i)]);
        floor.push(t.elapsed().as_nanos() as u32);
    }
    floor.sort_unstable();
    println!(
        "memory floor          one random read from {:.0} MB: p50 {} ns, p99 {} ns",
        mb(table.len() * 8),
        percentile(&floor, 0.5),
        percentile(&floor, 0.99)
    );
    drop(table);

    let t = Clock::now();
    let mut listed = 0;
    for g in synthetic.guardians.iter().take(200_000) {
        listed += black_box(children(snap, *g, Service::Journal, synthetic.reference).count());
    }
    println!(
        "children              {:.0} ns mean per switch list ({:.2} children each)",
        t.elapsed().as_nanos() as f64 / 200_000.0,
        listed as f64 / 200_000.0
    );

    // The write path on the national snapshot: what one more write costs
    // as the overlay grows toward `fold_at` (10,000 by default), and what a
    // background fold costs.
    let mut current = snap.clone();
    let rules: Vec<guardian_access::Rule> = snap.rules().iter().take(10_000).cloned().collect();
    let mut written = 0;
    for target in [0usize, 1_000, 10_000] {
        while written < target {
            let mut r = rules[written % rules.len()].clone();
            r.lifted_at = Some(synthetic.reference);
            current = current.apply(current.revision() + 1, &[], &[r]).unwrap();
            written += 1;
        }
        let mut costs = Vec::with_capacity(200);
        for rule in rules.iter().take(200) {
            let mut r = rule.clone();
            r.lifted_at = Some(synthetic.reference);
            let t = Clock::now();
            black_box(current.apply(current.revision() + 1, &[], &[r]).unwrap());
            costs.push(t.elapsed().as_nanos() as u32);
        }
        costs.sort_unstable();
        println!(
            "apply one rule        with {:>6} subjects in the overlay: p50 {:.1} µs, p99 {:.1} µs",
            current.overlay_len(),
            f64::from(percentile(&costs, 0.5)) / 1000.0,
            f64::from(percentile(&costs, 0.99)) / 1000.0
        );
    }
    let records: Vec<guardian_access::PersonRecord> = synthetic
        .children
        .iter()
        .take(10_000)
        .map(|c| guardian_access::PersonRecord {
            id: *c,
            birth_date: None,
            protected: false,
            guardians: people.guardians_of(*c).collect(),
        })
        .collect();
    let t = Clock::now();
    let with_people = current.apply(current.revision() + 1, &records, &[]).unwrap();
    println!(
        "apply 10,000 persons  {:.1} ms (one population delta)",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let t = Clock::now();
    let folded = with_people.fold().unwrap();
    println!(
        "fold                  {:.2} s ({} overlay entries into a new national base)",
        t.elapsed().as_secs_f64(),
        with_people.overlay_len()
    );
    assert_eq!(folded.overlay_len(), 0);
}
