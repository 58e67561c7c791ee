//! A deterministic synthetic population, up to national scale, generated in
//! memory for benchmarks and scale tests. Its numbers are made at run time
//! and never written to the repository or to logs.
//!
//! National scale (SPEC §7): 2.2 million children aged 0–17, about 4.4
//! million guardianship links, 25,000 protected persons and 50,000
//! restrictions and grants.

use std::sync::Arc;

use jiff::ToSpan;
use jiff::civil::Date;

use crate::core::decide::Query;
use crate::core::identity::{Pid, make_pid};
use crate::core::model::{HsaId, Rule, RuleId, RuleKind, Service, Services, Settings};
use crate::core::snapshot::{BuildError, PeopleBuilder, Rules, Snapshot};
use crate::core::time::{self, Instant};

/// How big a population to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    /// Children (aged 0–17 on the reference date).
    pub children: usize,
    /// Persons with protected identity.
    pub protected: usize,
    /// Restrictions and grants.
    pub rules: usize,
}

impl Scale {
    /// Sweden.
    pub const NATIONAL: Scale = Scale {
        children: 2_200_000,
        protected: 25_000,
        rules: 50_000,
    };

    /// A fraction of national scale, for quick runs.
    pub fn fraction(f: f64) -> Scale {
        let part = |n: usize| ((n as f64 * f).round() as usize).max(1);
        Scale {
            children: part(2_200_000),
            protected: part(25_000),
            rules: part(50_000),
        }
    }
}

/// A generated population and the snapshot built from it.
#[derive(Debug)]
pub struct Synthetic {
    /// The snapshot, at revision 1, default settings.
    pub snapshot: Snapshot,
    /// Every child, in generation order.
    pub children: Vec<Pid>,
    /// Every guardian, in generation order.
    pub guardians: Vec<Pid>,
    /// The reference instant ages are spread around.
    pub reference: Instant,
}

/// SplitMix64: small, fast and deterministic, which is all a generator needs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// Hands out unique numbers born between two dates.
struct Numbers {
    first: Date,
    days: usize,
    next_serial: Vec<u16>,
}

impl Numbers {
    fn new(first: Date, last: Date) -> Numbers {
        let days = (first.until(last).map(|s| s.get_days()).unwrap_or(0).max(0) as usize) + 1;
        Numbers {
            first,
            days,
            next_serial: vec![1; days],
        }
    }

    fn make(&mut self, rng: &mut Rng) -> Option<Pid> {
        for _ in 0..64 {
            let d = rng.below(self.days);
            let serial = self.next_serial[d];
            if serial > 999 {
                continue;
            }
            self.next_serial[d] += 1;
            let date = self.first.checked_add((d as i64).days()).ok()?;
            return make_pid(date.year(), date.month() as u8, date.day() as u8, serial);
        }
        None
    }
}

/// Generated input, not yet built into a snapshot: what a population import
/// and the restrictions table would hand the builder.
#[derive(Debug)]
pub struct Population {
    people: PeopleBuilder,
    rules: Vec<Rule>,
    children: Vec<Pid>,
    guardians: Vec<Pid>,
    reference: Instant,
}

/// Generates and builds a population of `scale` from `seed`.
pub fn generate(scale: Scale, seed: u64) -> Result<Synthetic, BuildError> {
    population(scale, seed)?.build()
}

impl Population {
    /// The population records, as an import would deliver them.
    pub fn records(&self) -> impl Iterator<Item = crate::core::people::PersonRecord> + '_ {
        self.people.records()
    }

    /// The restrictions and grants.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Builds the snapshot (default settings, revision 1).
    pub fn build(self) -> Result<Synthetic, BuildError> {
        let tz = time::stockholm()?;
        let settings = Settings::default();
        let people = self.people.build(&settings, &tz)?;
        let snapshot = Snapshot::new(
            1,
            Arc::new(settings),
            Arc::new(people),
            Arc::new(Rules::new(self.rules)),
        )?;
        Ok(Synthetic {
            snapshot,
            children: self.children,
            guardians: self.guardians,
            reference: self.reference,
        })
    }
}

/// Generates a population of `scale` from `seed`, around 2026-11-23.
pub fn population(scale: Scale, seed: u64) -> Result<Population, BuildError> {
    let mut rng = Rng::new(seed);
    let reference_day = jiff::civil::date(2026, 11, 23);
    let mut kids = Numbers::new(jiff::civil::date(2009, 1, 1), jiff::civil::date(2026, 11, 22));
    let mut adults = Numbers::new(jiff::civil::date(1960, 1, 1), jiff::civil::date(2000, 12, 31));
    let mut children = Vec::with_capacity(scale.children);
    let mut child_guardians: Vec<[Option<Pid>; 2]> = Vec::with_capacity(scale.children);
    let mut guardians = Vec::with_capacity(scale.children * 13 / 10);

    while children.len() < scale.children {
        let Some(first) = adults.make(&mut rng) else {
            break;
        };
        guardians.push(first);
        let second = if rng.percent(97) { adults.make(&mut rng) } else { None };
        if let Some(s) = second {
            guardians.push(s);
        }
        let family = match rng.below(100) {
            0..45 => 1,
            45..85 => 2,
            _ => 3,
        };
        for _ in 0..family.min(scale.children - children.len()) {
            if let Some(kid) = kids.make(&mut rng) {
                children.push(kid);
                child_guardians.push([Some(first), second]);
            }
        }
    }

    // Protected identity: three in five of them children.
    let mut protected = std::collections::HashSet::with_capacity(scale.protected);
    while protected.len() < scale.protected.min(children.len() + guardians.len()) {
        let pid = if rng.percent(60) {
            children[rng.below(children.len())]
        } else {
            guardians[rng.below(guardians.len())]
        };
        protected.insert(pid);
    }

    let mut people = PeopleBuilder::with_capacity(children.len() + guardians.len(), children.len() * 2);
    for g in &guardians {
        people.person(*g, None, protected.contains(g), &[]);
    }
    for (kid, gs) in children.iter().zip(&child_guardians) {
        let list: Vec<Pid> = gs.iter().flatten().copied().collect();
        people.person(*kid, None, protected.contains(kid), &list);
    }

    let tz = time::stockholm()?;
    let reference = time::local_midnight(reference_day, &tz).ok_or(BuildError::BirthDateRange)?;
    let rules = make_rules(scale.rules, &children, &child_guardians, reference, &mut rng);
    Ok(Population {
        people,
        rules,
        children,
        guardians,
        reference,
    })
}

fn make_rules(
    n: usize,
    children: &[Pid],
    guardians: &[[Option<Pid>; 2]],
    reference: Instant,
    rng: &mut Rng,
) -> Vec<Rule> {
    const DAY: i64 = 86_400 * 1_000_000_000;
    let unit = HsaId::parse("SE2321000131-E000000000001").ok();
    let mut rules = Vec::with_capacity(n);
    for i in 0..n {
        let c = rng.below(children.len());
        let named = guardians[c][rng.below(2)].or(guardians[c][0]);
        let kind = match rng.below(100) {
            0..40 => RuleKind::Block,
            40..60 => RuleKind::Seal,
            60..90 => RuleKind::ExtendedAccess,
            _ => RuleKind::EarlyAccess,
        };
        let guardian = match kind {
            RuleKind::Block if rng.percent(50) => named,
            RuleKind::ExtendedAccess => named,
            _ => None,
        };
        let start = reference.as_nanos() - rng.below(3 * 365) as i64 * DAY;
        let valid_until = rng
            .percent(20)
            .then(|| Instant::from_nanos(start + (30 + rng.below(700)) as i64 * DAY));
        let lifted_at = rng
            .percent(30)
            .then(|| Instant::from_nanos(start + rng.below(400) as i64 * DAY));
        let care_units = (kind == RuleKind::ExtendedAccess && rng.percent(30))
            .then(|| unit.clone().map(|u| Arc::from(vec![u])))
            .flatten();
        rules.push(Rule {
            id: RuleId(i as u64 + 1),
            kind,
            subject: children[c],
            guardian,
            services: if kind == RuleKind::Seal && rng.percent(20) {
                Services::BOTH
            } else {
                kind.default_services()
            },
            valid_from: Instant::from_nanos(start),
            valid_until,
            lifted_at,
            care_units,
        });
    }
    rules
}

impl Synthetic {
    /// `n` questions at the reference instant: four in five from a guardian
    /// about their child, one in ten own access, one in ten from a stranger.
    pub fn queries(&self, n: usize, seed: u64) -> Vec<Query> {
        let mut rng = Rng::new(seed);
        let at = self.reference;
        (0..n)
            .map(|_| {
                let child = self.children[rng.below(self.children.len())];
                let service = if rng.percent(80) {
                    Service::Journal
                } else {
                    Service::Eservices
                };
                let actor = match rng.below(10) {
                    0 => child,
                    1 => self.guardians[rng.below(self.guardians.len())],
                    _ => self.snapshot.people().guardians_of(child).next().unwrap_or(child),
                };
                Query {
                    actor,
                    subject: child,
                    service,
                    at,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::decide::{Reason, decide};

    #[test]
    fn small_population_is_consistent_and_deterministic() {
        let a = generate(Scale::fraction(0.001), 7).unwrap();
        let b = generate(Scale::fraction(0.001), 7).unwrap();
        assert_eq!(a.children, b.children);
        assert_eq!(a.children.len(), 2200);
        let people = a.snapshot.people();
        // Every child has one or two guardians, and each lists the child back.
        for &c in &a.children {
            let gs: Vec<Pid> = people.guardians_of(c).collect();
            assert!((1..=2).contains(&gs.len()));
            for g in gs {
                assert!(people.children_of(g).any(|k| k == c));
            }
        }
        assert_eq!(a.snapshot.rules().len(), 50);
        // The mix of questions reaches allows and several kinds of deny.
        let mut seen = std::collections::HashSet::new();
        for q in a.queries(5000, 1) {
            seen.insert(decide(&a.snapshot, &q).reason);
        }
        for r in [
            Reason::Guardian,
            Reason::AgedOut,
            Reason::NotGuardian,
            Reason::OwnAccess,
            Reason::BelowAge,
        ] {
            assert!(seen.contains(&r), "{r:?} never decided");
        }
    }
}
