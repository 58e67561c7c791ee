//! The one data set every engine is loaded with, and the one set of
//! questions every engine answers.
//!
//! The population is `guardian_access::synth` (deterministic, seed 42, made
//! in memory at run time; no number in it belongs to anyone), plus a few
//! children whose birth date is unknown (samordningsnummer with month `00`
//! and day `60`), so that `unknown_age` is exercised too: the generator
//! makes none.
//!
//! [`Rows`] is the engine-neutral form the peers are loaded from: every
//! person with their protected flag, guardians and the two instants at
//! which they attain the age limits (Unix seconds, Europe/Stockholm, the
//! leap-day rule applied), and every restriction and grant with its
//! validity window and `lifted_at` as Unix seconds. Our own snapshot is
//! built from the very same records and rules.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use guardian_access::core::time::{self as gtime, LeapDay};
use guardian_access::synth::{self, Rng, Scale, Synthetic};
use guardian_access::{
    Instant, PeopleBuilder, PersonRecord, Pid, Query, Reason, Rule, RuleKind, Rules, Service, Services, Settings,
    Snapshot, decide,
};

/// Seed of the synthetic population (as in the examples).
pub const SEED: u64 = 42;
const NANOS: i64 = 1_000_000_000;
const DAY: i64 = 86_400;

/// The generated input, before any engine has seen it: what a population
/// import and the restrictions table would hand over.
pub struct Input {
    pub records: Vec<PersonRecord>,
    pub rules: Vec<Rule>,
    /// Children of the generator, in generation order.
    pub children: Vec<Pid>,
    /// Children added here whose birth date is unknown.
    pub unknown_age: Vec<Pid>,
    /// Guardians of the generator, in generation order.
    pub guardians: Vec<Pid>,
    /// 2026-11-23 00:00 Stockholm: what the generator spreads ages around.
    pub reference: Instant,
}

impl Input {
    /// Children in all (the denominator of "memory per child").
    pub fn child_count(&self) -> usize {
        self.children.len() + self.unknown_age.len()
    }
}

/// Generates the population at `fraction` of national scale.
pub fn generate(fraction: f64) -> Input {
    let population = synth::population(Scale::fraction(fraction), SEED).expect("synthetic population");
    let mut records: Vec<PersonRecord> = population.records().collect();
    let rules = population.rules().to_vec();
    // The generator keeps its lists private until `build`; rebuild them
    // from the records: children are the persons with guardians.
    let children: Vec<Pid> = records
        .iter()
        .filter(|r| !r.guardians.is_empty())
        .map(|r| r.id)
        .collect();
    let guardians: Vec<Pid> = records
        .iter()
        .filter(|r| r.guardians.is_empty())
        .map(|r| r.id)
        .collect();
    drop(population);

    // One child in a thousand (at least 20) with an unknown birth date, born
    // into an existing family: samordningsnummer `YYYY0060NNNC`.
    let mut rng = Rng::new(SEED ^ 0x5eed);
    let extra = (children.len() / 1000).max(20);
    let by_id: HashMap<Pid, usize> = records.iter().enumerate().map(|(i, r)| (r.id, i)).collect();
    let mut unknown_age = Vec::with_capacity(extra);
    let mut serial = 0u16;
    let mut year = 2010i16;
    while unknown_age.len() < extra {
        serial += 1;
        if serial > 999 {
            serial = 1;
            year += 1;
        }
        let Some(pid) = guardian_access::core::identity::make_pid(year, 0, 60, serial) else {
            continue;
        };
        assert!(pid.birth_date().is_none(), "a month-00 samordningsnummer has no date");
        let sibling = children[rng.below(children.len())];
        let family = records[by_id[&sibling]].guardians.clone();
        records.push(PersonRecord {
            id: pid,
            birth_date: None,
            protected: false,
            guardians: family,
        });
        unknown_age.push(pid);
    }

    let tz = gtime::stockholm().expect("Europe/Stockholm");
    let reference = gtime::local_midnight(jiff::civil::date(2026, 11, 23), &tz).expect("reference instant");
    Input {
        records,
        rules,
        children,
        unknown_age,
        guardians,
        reference,
    }
}

/// Our snapshot from the input: the same path a full load takes
/// (population records into the people table, rules grouped by subject).
pub fn build_snapshot(records: &[PersonRecord], rules: &[Rule]) -> Snapshot {
    let tz = gtime::stockholm().expect("Europe/Stockholm");
    let settings = Settings::default();
    let mut builder = PeopleBuilder::with_capacity(records.len(), records.len() * 2);
    for r in records {
        builder.record(r);
    }
    let people = builder.build(&settings, &tz).expect("people table");
    Snapshot::new(
        1,
        Arc::new(settings),
        Arc::new(people),
        Arc::new(Rules::new(rules.to_vec())),
    )
    .expect("snapshot")
}

/// Nanoseconds to whole Unix seconds; every instant in this data set is a
/// whole second (midnights, and whole days from them), which the peers'
/// integer seconds then represent exactly.
pub fn secs(at: Instant) -> i64 {
    let ns = at.as_nanos();
    assert!(ns % NANOS == 0, "an instant of the data set is not a whole second");
    ns / NANOS
}

/// One person as the peers are given it.
pub struct PersonRow {
    pub pid: Pid,
    pub protected: bool,
    /// Unix seconds at which they attain 13 and 16; `None`: birth date unknown.
    pub attains: Option<(i64, i64)>,
    pub guardians: Vec<Pid>,
}

/// One restriction or grant as the peers are given it.
pub struct RuleRow {
    pub id: u64,
    pub kind: RuleKind,
    pub subject: Pid,
    pub guardian: Option<Pid>,
    pub services: Services,
    pub valid_from: i64,
    pub valid_until: Option<i64>,
    pub lifted_at: Option<i64>,
    pub care_units: Option<Vec<String>>,
}

/// The engine-neutral data set.
pub struct Rows {
    pub persons: Vec<PersonRow>,
    pub rules: Vec<RuleRow>,
}

impl Rows {
    /// Converts the input. The age instants are computed exactly as our
    /// builder computes them (the register's birth date, else the number's;
    /// 00:00 Stockholm on the birthday; 29 February ages on 28 February),
    /// with the library's public `attains_age`; persons named only as
    /// someone's guardian get an implicit record as in our table.
    pub fn from_input(records: &[PersonRecord], rules: &[Rule]) -> Rows {
        let tz = gtime::stockholm().expect("Europe/Stockholm");
        let s = Settings::default();
        let attains = |pid: Pid, birth: Option<jiff::civil::Date>| {
            let birth = birth.or_else(|| pid.birth_date())?;
            let a13 = gtime::attains_age(birth, s.guardian_age_limit, LeapDay::Feb28, &tz)?;
            let a16 = gtime::attains_age(birth, s.own_journal_age, LeapDay::Feb28, &tz)?;
            Some((secs(a13), secs(a16)))
        };
        // Later records replace earlier ones (upsert), as in the builder.
        let mut index: HashMap<Pid, usize> = HashMap::with_capacity(records.len());
        let mut persons: Vec<PersonRow> = Vec::with_capacity(records.len());
        for r in records {
            let mut guardians = Vec::with_capacity(r.guardians.len());
            for g in &r.guardians {
                if *g != r.id && !guardians.contains(g) {
                    guardians.push(*g);
                }
            }
            let row = PersonRow {
                pid: r.id,
                protected: r.protected,
                attains: attains(r.id, r.birth_date),
                guardians,
            };
            match index.get(&r.id) {
                Some(&i) => persons[i] = row,
                None => {
                    index.insert(r.id, persons.len());
                    persons.push(row);
                }
            }
        }
        let named: Vec<Pid> = persons.iter().flat_map(|p| p.guardians.iter().copied()).collect();
        for g in named {
            if !index.contains_key(&g) {
                index.insert(g, persons.len());
                persons.push(PersonRow {
                    pid: g,
                    protected: false,
                    attains: attains(g, None),
                    guardians: Vec::new(),
                });
            }
        }
        let rules = rules
            .iter()
            .map(|r| RuleRow {
                id: r.id.0,
                kind: r.kind,
                subject: r.subject,
                guardian: r.guardian,
                services: r.services,
                valid_from: secs(r.valid_from),
                valid_until: r.valid_until.map(secs),
                lifted_at: r.lifted_at.map(secs),
                care_units: r
                    .care_units
                    .as_ref()
                    .map(|units| units.iter().map(|u| u.as_str().to_owned()).collect()),
            })
            .collect();
        Rows { persons, rules }
    }

    /// Checks the age instants against our table's, person by person, so
    /// that a difference in the data cannot pose as a difference of engines.
    pub fn check_against(&self, snap: &Snapshot) {
        for p in &self.persons {
            let ours = snap
                .people()
                .age_limits(p.pid)
                .map(|a| (secs(a.guardian_limit), secs(a.own_journal)));
            assert_eq!(ours, p.attains, "age instants of {} differ from the snapshot's", p.pid);
        }
    }
}

/// A question with its instant in Unix seconds, and our answer.
#[derive(Clone, Copy)]
pub struct Case {
    pub query: Query,
    pub at: i64,
    pub reason: Reason,
}

/// The measured questions: half the generator's realistic mix (four in
/// five from a guardian about their child, one in ten own access, one in
/// ten from a stranger, all at the reference instant), half aimed at the
/// rarer rows so that every reason is well represented: restrictions and
/// grants around their start, end and lifting, birthdays (13, 16) to the
/// second, unknown birth dates and protected identities. Each question is
/// answered by our `decide`: that answer is what every peer must match.
pub fn cases(input: &Input, snap: &Snapshot, n: usize, seed: u64) -> Vec<Case> {
    let synthetic = Synthetic {
        snapshot: snap.clone(),
        children: input.children.clone(),
        guardians: input.guardians.clone(),
        reference: input.reference,
    };
    let mut queries = synthetic.queries(n / 2, seed);
    drop(synthetic);

    let people = snap.people();
    let mut rng = Rng::new(seed ^ 0xa11ce);
    let reference = input.reference;
    let at_secs = |s: i64| Instant::from_nanos(s * NANOS);
    let pick = |rng: &mut Rng, v: &[Pid]| v[rng.below(v.len())];
    let guardians_of = |c: Pid| people.guardians_of(c).collect::<Vec<_>>();
    let service = |rng: &mut Rng, journal_percent: usize| {
        if rng.percent(journal_percent) {
            Service::Journal
        } else {
            Service::Eservices
        }
    };

    // Protected guardians who have children, and protected children.
    let protected: HashSet<Pid> = input.records.iter().filter(|r| r.protected).map(|r| r.id).collect();
    let protected_guardians: Vec<Pid> = input
        .guardians
        .iter()
        .copied()
        .filter(|g| protected.contains(g) && people.children_of(*g).next().is_some())
        .collect();
    let protected_children: Vec<Pid> = input
        .children
        .iter()
        .copied()
        .filter(|c| protected.contains(c))
        .collect();
    let rules = &input.rules;

    while queries.len() < n {
        let q = match rng.below(100) {
            // A restriction or grant, asked about around its window.
            0..50 if !rules.is_empty() => {
                let r = &rules[rng.below(rules.len())];
                let gs = guardians_of(r.subject);
                let actor = match (rng.below(4), r.guardian, r.kind) {
                    // An early-access grant is the subject's own.
                    (0..3, _, RuleKind::EarlyAccess) => r.subject,
                    (0 | 1, Some(named), _) => named,
                    (3, _, _) => r.subject,
                    _ if !gs.is_empty() => pick(&mut rng, &gs),
                    _ => r.subject,
                };
                let svc = match r.kind {
                    RuleKind::ExtendedAccess | RuleKind::EarlyAccess => service(&mut rng, 85),
                    _ => service(&mut rng, 60),
                };
                let from = secs(r.valid_from);
                let ages = people.age_limits(r.subject);
                let mut candidates = vec![secs(reference), from, from - 1];
                for end in [r.valid_until, r.lifted_at].into_iter().flatten() {
                    candidates.extend([secs(end) - 1, secs(end)]);
                }
                if let Some(a) = ages {
                    let (a13, a16) = (secs(a.guardian_limit), secs(a.own_journal));
                    candidates.extend([a13 - 1, a13, a16 - 1, a16]);
                    // Twice, an instant inside the rule's window at which
                    // the rule can matter: grants only at 13-15, and a
                    // guardian's restrictions mostly under 13.
                    let end = r.end().as_nanos() / NANOS;
                    let (lo, hi) = match r.kind {
                        RuleKind::ExtendedAccess | RuleKind::EarlyAccess => (from.max(a13), end.min(a16)),
                        _ if actor != r.subject => (from, end.min(a13)),
                        _ => (from, end),
                    };
                    if lo < hi {
                        let span = (hi - lo).min(10 * 365 * DAY) as usize;
                        for _ in 0..2 {
                            candidates.push(lo + rng.below(span) as i64);
                        }
                    }
                }
                candidates.push(from - 400 * DAY + rng.below(1200) as i64 * DAY + rng.below(86_400) as i64);
                Query {
                    actor,
                    subject: r.subject,
                    service: svc,
                    at: at_secs(candidates[rng.below(candidates.len())]),
                }
            }
            // A birthday to the second: below and above 13 and 16.
            0..75 => {
                let child = pick(&mut rng, &input.children);
                let a = people.age_limits(child).expect("generated children have birth dates");
                let (a13, a16) = (secs(a.guardian_limit), secs(a.own_journal));
                let gs = guardians_of(child);
                let actor = if rng.percent(35) || gs.is_empty() {
                    child
                } else {
                    pick(&mut rng, &gs)
                };
                let at = [a13 - 1, a13, a16 - 1, a16, secs(reference)][rng.below(5)];
                Query {
                    actor,
                    subject: child,
                    service: service(&mut rng, 70),
                    at: at_secs(at),
                }
            }
            // Unknown birth date.
            0..85 => {
                let child = pick(&mut rng, &input.unknown_age);
                let gs = guardians_of(child);
                let actor = match rng.below(5) {
                    0 => child,
                    1 => pick(&mut rng, &input.guardians),
                    _ => pick(&mut rng, &gs),
                };
                Query {
                    actor,
                    subject: child,
                    service: service(&mut rng, 70),
                    at: reference,
                }
            }
            // Protected identity, guardian's or child's.
            _ => {
                let (actor, subject) = if rng.percent(50) && !protected_guardians.is_empty() {
                    let g = pick(&mut rng, &protected_guardians);
                    let kids: Vec<Pid> = people.children_of(g).collect();
                    (g, pick(&mut rng, &kids))
                } else if !protected_children.is_empty() {
                    let c = pick(&mut rng, &protected_children);
                    let gs = guardians_of(c);
                    (
                        if rng.percent(20) || gs.is_empty() {
                            c
                        } else {
                            pick(&mut rng, &gs)
                        },
                        c,
                    )
                } else {
                    continue;
                };
                Query {
                    actor,
                    subject,
                    service: service(&mut rng, 70),
                    at: reference,
                }
            }
        };
        queries.push(q);
    }
    // Interleave the two halves so that any slice of the set has both.
    let mut order: Vec<usize> = (0..queries.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
        .into_iter()
        .map(|i| {
            let query = queries[i];
            Case {
                query,
                at: secs(query.at),
                reason: decide(snap, &query).reason,
            }
        })
        .collect()
}

/// How many of each reason, in `Reason::ALL` order.
pub fn distribution(cases: &[Case]) -> Vec<(Reason, usize)> {
    Reason::ALL
        .iter()
        .map(|r| (*r, cases.iter().filter(|c| c.reason == *r).count()))
        .collect()
}

/// The reason wire name back to the enum.
pub fn parse_reason(s: &str) -> Option<Reason> {
    Reason::ALL.iter().copied().find(|r| r.as_str() == s)
}
