//! What every target shares: the demo region's snapshot (Skatteverket's
//! test numbers) and a fixed "now", built once.

#![allow(dead_code)]

use std::sync::OnceLock;

use guardian_access::core::time::Instant;
use guardian_access::fixtures::Scenario;
use guardian_access::{Query, Snapshot};

pub struct World {
    pub snap: Snapshot,
    pub now: Instant,
    pub today: jiff::civil::Date,
    /// The demo's own questions, for decisions on a fuzzed snapshot.
    pub queries: Vec<Query>,
}

pub fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let scenario = Scenario::demo().expect("the demo scenario");
        let snap = scenario.snapshot().expect("the demo snapshot");
        let queries = scenario
            .cases
            .iter()
            .map(|c| c.query(snap.tz()).expect("a demo case"))
            .collect();
        World {
            snap,
            now: Instant::from_timestamp("2026-11-23T09:00:00Z".parse().unwrap()).unwrap(),
            today: jiff::civil::date(2026, 11, 23),
            queries,
        }
    })
}
