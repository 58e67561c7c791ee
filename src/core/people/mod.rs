//! The population half of the snapshot: every person, their guardianships in
//! both directions and the instants they attain the two age limits, laid out
//! so that a check costs about one cache miss, and changed by small writes
//! without rebuilding it.
//!
//! [`People`] is a big immutable *base* shared between snapshots, plus a
//! small *overlay* of the persons changed since the base was built:
//!
//! - The base is an open-addressing hash table (linear probing, load factor
//!   at most 3/4) of 32-byte slots, two to a cache line. A slot holds all that
//!   `decide` needs about a subject: the number with its flags, both age
//!   instants, and up to two guardians, each with that guardian's own
//!   protected flag folded in. Children (for the switch list) and guardians
//!   beyond the second live in side tables that only `children` and rare
//!   people touch.
//! - The overlay maps each changed person to their whole current record. A
//!   write copies the overlay (it is small) and changes the copy; the base is
//!   shared. A lookup asks the overlay first, behind a bit filter, so an
//!   empty overlay costs one branch.
//! - [`People::fold`] merges the overlay into a new base without reading
//!   anything from the store: every slot already holds what it needs.

use std::collections::HashMap;
use std::sync::Arc;

use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::core::filter::Filter;
use crate::core::identity::Pid;
use crate::core::model::Settings;
use crate::core::snapshot::BuildError;
use crate::core::time::{self, Instant, LeapDay};

mod build;
mod overlay;
mod raw;
mod table;

use build::Midnights;
pub use build::PeopleBuilder;
use overlay::*;
pub use raw::RawPeopleError;
use table::*;

const PROTECTED: u64 = 1 << 63;
const BIRTH_KNOWN: u64 = 1 << 62;
const MORE_GUARDIANS: u64 = 1 << 61;
/// The person has a population record of their own (not only named as someone's guardian).
const RECORDED: u64 = 1 << 60;
/// Canonical numbers are below 10^12 < 2^40.
const PID_MASK: u64 = (1 << 40) - 1;
const NANOS_PER_MINUTE: i64 = 60_000_000_000;

type Hasher = foldhash::fast::RandomState;

/// A guardian as seen from a child: their number with the `PROTECTED` flag of
/// the guardian's own record, so the hot path needs no second lookup. Zero
/// means "no guardian" in a slot.
#[derive(Clone, Copy, PartialEq, Eq, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(transparent)]
pub(crate) struct GuardianEdge(u64);

impl GuardianEdge {
    pub(crate) fn pid_value(self) -> u64 {
        self.0 & PID_MASK
    }

    pub(crate) fn protected(self) -> bool {
        self.0 & PROTECTED != 0
    }

    fn with_protected(self, protected: bool) -> GuardianEdge {
        GuardianEdge(self.pid_value() | if protected { PROTECTED } else { 0 })
    }
}

impl std::fmt::Debug for GuardianEdge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuardianEdge(<redacted>)")
    }
}

/// One person: 32 bytes.
///
/// `key` is the canonical number in its low 40 bits with the flags above;
/// zero marks an empty slot. `attains` are the minutes since the epoch at
/// which the person attains the guardian age limit and the own-journal age
/// (meaningful only with `BIRTH_KNOWN`): local midnights in Stockholm have
/// been whole minutes since 1879, and earlier ones are rounded up.
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub(crate) struct Slot {
    key: u64,
    attains: [i32; 2],
    guardians: [GuardianEdge; 2],
}

/// The moments a person attains the two age limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgeLimits {
    /// Attains the guardian age limit (13).
    pub guardian_limit: Instant,
    /// Attains the own-journal age (16).
    pub own_journal: Instant,
}

fn ages(key: u64, attains: [i32; 2]) -> Option<AgeLimits> {
    // Saturating: a built table holds minutes of this era, but a snapshot
    // file can hold any i32 (found by fuzzing); never an overflow.
    (key & BIRTH_KNOWN != 0).then(|| AgeLimits {
        guardian_limit: Instant::from_nanos(i64::from(attains[0]).saturating_mul(NANOS_PER_MINUTE)),
        own_journal: Instant::from_nanos(i64::from(attains[1]).saturating_mul(NANOS_PER_MINUTE)),
    })
}

/// A person found in the snapshot.
#[derive(Clone, Copy)]
pub(crate) struct PersonRef<'s> {
    pub(crate) pid: Pid,
    pub(crate) protected: bool,
    pub(crate) ages: Option<AgeLimits>,
    pub(crate) guardians: &'s [GuardianEdge],
    /// Where the person's record was found.
    origin: Origin,
}

/// Where a [`PersonRef`] came from.
#[derive(Clone, Copy)]
enum Origin {
    /// The base, at this slot.
    Base(u32),
    /// The overlay.
    Overlay,
}

/// One population record: what the register says about a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonRecord {
    /// The person.
    pub id: Pid,
    /// The register's birth date, when it has one (else the number's date).
    pub birth_date: Option<Date>,
    /// Protected identity.
    pub protected: bool,
    /// Registered guardians (the whole list: it replaces the earlier one).
    pub guardians: Vec<Pid>,
}

/// Every person, their guardianships in both directions, and their age limits.
///
/// Invariants: every guardian named by any record is itself a person here
/// (unprotected, with the birth date of their number, when they have no
/// record of their own); a person's guardian edges carry the guardian's own
/// protected flag, in the base and the overlay alike; the children of a
/// guardian are the base's children not in the overlay plus the overlay's
/// persons that name them; the age instants were computed with the settings
/// recorded in `limits`. An implicit guardian whom no record names any more
/// stays a person until the next full build: without a record or children
/// they answer exactly like a stranger, so removing them is not worth a
/// reverse lookup on every write.
#[derive(Clone)]
pub struct People {
    base: Arc<Table>,
    overlay: Arc<Overlay>,
}

impl std::fmt::Debug for People {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("People")
            .field("len", &self.len())
            .field("links", &self.links())
            .field("overlay", &self.overlay.persons.len())
            .finish_non_exhaustive()
    }
}

impl People {
    /// Finds a person: the overlay (one branch when it is empty), then one
    /// hashed probe and a short linear scan of the base.
    #[inline]
    pub(crate) fn get(&self, pid: Pid) -> Option<PersonRef<'_>> {
        if let Some(p) = self.overlay.get(pid.get()) {
            return Some(Overlay::person_ref(p));
        }
        self.base.find(pid.get()).map(|i| self.base.at(i))
    }

    /// Brings the lines lookups of `pids` (at most 32) read toward the
    /// cache, side by side; see [`decide_batch`](crate::core::decide::decide_batch).
    #[inline]
    pub(crate) fn touch(&self, pids: impl Iterator<Item = Pid>) {
        std::hint::black_box(self.base.touch(pids.map(Pid::get)));
    }

    /// Brings the slots of `person`'s children in the base toward the cache,
    /// so that a switch list pays their misses side by side.
    pub(crate) fn touch_children(&self, person: &PersonRef<'_>) {
        if let Origin::Base(i) = person.origin {
            std::hint::black_box(self.base.touch_children(i as usize));
        }
    }

    /// The persons `person` is a registered guardian of: the base's children
    /// that the overlay has not replaced, then the overlay's.
    pub(crate) fn children_of_ref<'s>(&'s self, person: PersonRef<'s>) -> impl Iterator<Item = PersonRef<'s>> + 's {
        let overlay = &self.overlay;
        let base = &self.base;
        let slot = match person.origin {
            Origin::Base(i) => Some(i as usize),
            // A person the overlay changed may still have children in the base.
            Origin::Overlay => base.find(person.pid.get()),
        };
        let in_base = slot.map_or(&[][..], |i| base.children_at(i));
        let from_base = in_base
            .iter()
            .map(move |&c| base.at(c as usize))
            .filter(move |c| overlay.get(c.pid.get()).is_none());
        let from_overlay = overlay
            .children
            .get(&person.pid.get())
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter_map(move |c| overlay.get(*c).map(Overlay::person_ref));
        from_base.chain(from_overlay)
    }

    /// The registered guardians of `pid` (none if unknown).
    pub fn guardians_of(&self, pid: Pid) -> impl Iterator<Item = Pid> + '_ {
        let edges = self.get(pid).map(|p| p.guardians).unwrap_or(&[]);
        edges.iter().map(|e| Pid::from_validated(e.pid_value()))
    }

    /// The persons `pid` is a registered guardian of (none if unknown).
    pub fn children_of(&self, pid: Pid) -> impl Iterator<Item = Pid> + '_ {
        self.get(pid)
            .into_iter()
            .flat_map(move |p| self.children_of_ref(p).map(|c| c.pid).collect::<Vec<_>>())
    }

    /// Whether `pid` is known.
    pub fn contains(&self, pid: Pid) -> bool {
        self.get(pid).is_some()
    }

    /// Whether `pid` is known and has protected identity.
    pub fn is_protected(&self, pid: Pid) -> bool {
        self.get(pid).is_some_and(|p| p.protected)
    }

    /// The moments `pid` attains the age limits, if their birth date is known.
    pub fn age_limits(&self, pid: Pid) -> Option<AgeLimits> {
        self.get(pid).and_then(|p| p.ages)
    }

    /// Number of persons, records and implicit guardians alike.
    pub fn len(&self) -> usize {
        (self.base.len as isize + self.overlay.added).max(0) as usize
    }

    /// Whether there is nobody.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of persons who came with a record of their own.
    pub fn records(&self) -> usize {
        (self.base.records as isize + self.overlay.records).max(0) as usize
    }

    /// Number of guardianship links.
    pub fn links(&self) -> usize {
        (self.base.links as isize + self.overlay.links).max(0) as usize
    }

    /// Number of persons in the overlay (changed since the base was built).
    pub fn overlay_len(&self) -> usize {
        self.overlay.persons.len()
    }

    /// The age settings the instants were computed with.
    pub(crate) fn limits(&self) -> (u8, u8, LeapDay) {
        self.base.limits
    }

    /// Heap bytes held, counted from capacities.
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let base = &self.base;
        let overlay = &self.overlay;
        std::mem::size_of_val(base.slots.get())
            + (base.child_offsets.capacity() + base.child_edges.capacity()) * size_of::<u32>()
            + base.more_guardians.capacity() * (size_of::<(u64, Box<[GuardianEdge]>)>() + 1)
            + base
                .more_guardians
                .values()
                .map(|g| g.len() * size_of::<GuardianEdge>())
                .sum::<usize>()
            + overlay.persons.capacity() * (size_of::<(u64, OverlayPerson)>() + 1)
            + overlay.filter.heap_bytes()
    }

    /// The age limits of someone with no record, from their number's date.
    pub(crate) fn ages_from_number(pid: Pid, settings: &Settings, tz: &TimeZone) -> Option<AgeLimits> {
        let birth = pid.birth_date()?;
        Some(AgeLimits {
            guardian_limit: time::attains_age(birth, settings.guardian_age_limit, settings.leap_day, tz)?,
            own_journal: time::attains_age(birth, settings.own_journal_age, settings.leap_day, tz)?,
        })
    }

    /// The same people with `records` upserted (later ones win), sharing the
    /// base: the write path for population changes. Costs a copy of the
    /// overlay plus work proportional to the records and, for a person whose
    /// protected flag changes, to their children.
    pub fn apply(&self, records: &[PersonRecord], settings: &Settings, tz: &TimeZone) -> Result<People, BuildError> {
        if (settings.guardian_age_limit, settings.own_journal_age, settings.leap_day) != self.base.limits {
            return Err(BuildError::SettingsMismatch);
        }
        let base = &*self.base;
        let mut ov = (*self.overlay).clone();
        let mut midnights = Midnights::new(settings, tz);
        for r in records {
            let pid = r.id.get();
            let before = current(base, &ov, pid);
            let mut guardians: Vec<GuardianEdge> = Vec::with_capacity(r.guardians.len());
            for g in &r.guardians {
                let gv = g.get();
                if gv == pid || guardians.iter().any(|e| e.pid_value() == gv) {
                    continue;
                }
                let protected = match current(base, &ov, gv) {
                    Some(c) => c.key & PROTECTED != 0,
                    None => {
                        // Every guardian named is a person: an implicit one.
                        let slot = midnights.slot(*g, g.birth_date(), false);
                        ov.put(
                            OverlayPerson {
                                key: slot.key,
                                attains: slot.attains,
                                guardians: Arc::from([]),
                            },
                            None,
                        );
                        false
                    }
                };
                guardians.push(GuardianEdge(gv).with_protected(protected));
            }
            let birth = r.birth_date.or_else(|| r.id.birth_date());
            let slot = midnights.slot(r.id, birth, r.protected);
            let person = OverlayPerson {
                key: slot.key | RECORDED,
                attains: slot.attains,
                guardians: Arc::from(guardians),
            };
            let flag_changed = before.as_ref().is_some_and(|c| (c.key & PROTECTED != 0) != r.protected);
            ov.put(person, before.as_ref());
            if flag_changed {
                // Every child's edge to this guardian carries the flag.
                for c in current_children(base, &ov, pid) {
                    let Some(child) = current(base, &ov, c) else { continue };
                    let edges: Vec<GuardianEdge> = child
                        .guardians
                        .iter()
                        .map(|e| {
                            if e.pid_value() == pid {
                                e.with_protected(r.protected)
                            } else {
                                *e
                            }
                        })
                        .collect();
                    ov.put(
                        OverlayPerson {
                            key: child.key,
                            attains: child.attains,
                            guardians: Arc::from(edges),
                        },
                        Some(&child),
                    );
                }
            }
        }
        ov.filter = Filter::new(ov.persons.len(), ov.persons.keys().copied());
        Ok(People {
            base: self.base.clone(),
            overlay: Arc::new(ov),
        })
    }

    /// A new base holding the base and the overlay, with an empty overlay:
    /// built from the slots alone, no store read, no time-zone arithmetic.
    pub fn fold(&self) -> Result<People, BuildError> {
        if self.overlay.persons.is_empty() {
            return Ok(self.clone());
        }
        let base = &*self.base;
        let ov = &*self.overlay;
        let mut table = Table::empty(capacity_for(self.len()), base.limits);
        // Persons with guardians first, as `PeopleBuilder::build` places them.
        for children_first in [true, false] {
            for (i, slot) in base.slots.get().iter().enumerate() {
                if slot.key == 0
                    || base.guardians_at(i).is_empty() == children_first
                    || ov.persons.contains_key(&(slot.key & PID_MASK))
                {
                    continue;
                }
                table.insert(*slot);
                if slot.key & MORE_GUARDIANS != 0 {
                    table
                        .more_guardians
                        .insert(slot.key & PID_MASK, base.guardians_at(i).into());
                }
            }
            for p in ov.persons.values().filter(|p| p.guardians.is_empty() != children_first) {
                table.put_person(p.key, p.attains, &p.guardians);
            }
        }
        Ok(People {
            base: Arc::new(table.finish()?),
            overlay: Arc::new(Overlay::default()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{build, pid};
    use jiff::civil::date;

    #[test]
    fn slots_are_32_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 32);
    }

    #[test]
    fn guardians_and_children_are_inverse_and_implicit_guardians_exist() {
        let (kid1, kid2, g1, g2) = (
            pid("201509162390"),
            pid("201801012392"),
            pid("197701012382"),
            pid("198001022386"),
        );
        let mut b = PeopleBuilder::new();
        b.person(kid1, None, false, &[g1, g2]).person(kid2, None, false, &[g1]);
        let people = build(b);
        assert_eq!(people.len(), 4, "two children and two implicit guardians");
        assert_eq!(people.records(), 2);
        assert_eq!(people.links(), 3);
        assert_eq!(people.guardians_of(kid1).collect::<Vec<_>>(), vec![g1, g2]);
        let mut kids: Vec<Pid> = people.children_of(g1).collect();
        kids.sort();
        assert_eq!(kids, vec![kid1, kid2]);
        assert_eq!(people.children_of(g2).collect::<Vec<_>>(), vec![kid1]);
        // An implicit guardian is unprotected, with their number's birth date.
        assert!(!people.is_protected(g1));
        assert!(people.age_limits(g1).is_some());
        assert!(people.get(pid("198501012382")).is_none());
    }

    #[test]
    fn a_later_record_replaces_an_earlier_one() {
        let (kid, g1, g2) = (pid("201509162390"), pid("197701012382"), pid("198001022386"));
        let mut b = PeopleBuilder::new();
        b.person(kid, None, false, &[g1]);
        b.person(kid, Some(date(2015, 9, 1)), true, &[g2]);
        let people = build(b);
        assert_eq!(people.guardians_of(kid).collect::<Vec<_>>(), vec![g2]);
        assert!(people.is_protected(kid));
        assert_eq!(people.children_of(g2).collect::<Vec<_>>(), vec![kid]);
        // The replaced guardianship left no trace, nor did g1 as a person.
        assert_eq!(people.children_of(g1).count(), 0);
        assert_eq!(people.len(), 2);
        let expected = time::attains_age(date(2015, 9, 1), 13, LeapDay::Feb28, &time::stockholm().unwrap());
        assert_eq!(people.age_limits(kid).map(|a| a.guardian_limit), expected);
    }

    #[test]
    fn a_guardian_edge_carries_the_guardians_own_protected_flag() {
        let (kid, g1, g2) = (pid("201509162390"), pid("197701012382"), pid("198001022386"));
        let mut b = PeopleBuilder::new();
        b.person(kid, None, false, &[g1, g2, g1, kid]);
        b.person(g2, None, true, &[]);
        let people = build(b);
        let edges = people.get(kid).unwrap().guardians;
        assert_eq!(edges.len(), 2, "duplicates and the person themself are dropped");
        assert!(!edges[0].protected());
        assert!(edges[1].protected());
    }

    #[test]
    fn more_than_two_guardians_are_kept_whole() {
        let kid = pid("201509162390");
        let gs = [pid("197701012382"), pid("198001022386"), pid("198501012382")];
        let mut b = PeopleBuilder::new();
        b.person(kid, None, false, &gs);
        b.person(gs[2], None, true, &[]);
        let people = build(b);
        assert_eq!(people.guardians_of(kid).collect::<Vec<_>>(), gs.to_vec());
        assert!(people.get(kid).unwrap().guardians[2].protected());
        for g in gs {
            assert_eq!(people.children_of(g).collect::<Vec<_>>(), vec![kid]);
        }
    }

    /// Everything observable about a population, for comparing two built
    /// different ways.
    /// An implicit guardian no longer named by anyone is "absent" here: an
    /// incremental write leaves them in place, a fresh build does not, and
    /// they answer exactly like a stranger either way.
    fn observe(people: &People, pool: &[Pid]) -> Vec<String> {
        let mut out = vec![format!("records={} links={}", people.records(), people.links())];
        for p in pool {
            let mut kids: Vec<Pid> = people.children_of(*p).collect();
            kids.sort();
            let key = match people.overlay.persons.get(&p.get()) {
                Some(o) => o.key,
                None => people.base.find(p.get()).map_or(0, |i| people.base.slots.get()[i].key),
            };
            let Some(r) = people.get(*p).filter(|_| key & RECORDED != 0 || !kids.is_empty()) else {
                out.push(format!("{p}: absent"));
                continue;
            };
            let edges: Vec<(u64, bool)> = r.guardians.iter().map(|e| (e.pid_value(), e.protected())).collect();
            out.push(format!(
                "{p}: protected={} ages={:?} edges={edges:?} children={kids:?}",
                r.protected, r.ages
            ));
        }
        out
    }

    fn record_strategy(pool_len: usize) -> impl proptest::strategy::Strategy<Value = (usize, bool, bool, Vec<usize>)> {
        (
            0..pool_len,
            proptest::bool::weighted(0.3),
            proptest::bool::weighted(0.2),
            proptest::collection::vec(0..pool_len, 0..4),
        )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Applying records in batches onto a base, and folding, give exactly
        /// what building everything from scratch gives.
        #[test]
        fn apply_and_fold_agree_with_a_fresh_build(
            initial in proptest::collection::vec(record_strategy(12), 0..12),
            batches in proptest::collection::vec(proptest::collection::vec(record_strategy(12), 1..6), 1..5),
        ) {
            let pool: Vec<Pid> = (0..12u16)
                .map(|i| crate::core::identity::make_pid(if i < 6 { 2014 } else { 1980 }, 3, 1 + i as u8, 10 + i).unwrap())
                .collect();
            let record = |(who, protected, own_date, guardians): &(usize, bool, bool, Vec<usize>)| PersonRecord {
                id: pool[*who],
                birth_date: own_date.then(|| date(2012, 2, 29)),
                protected: *protected,
                guardians: guardians.iter().map(|g| pool[*g]).collect(),
            };
            let settings = Settings::default();
            let tz = time::stockholm().unwrap();
            let mut everything = PeopleBuilder::new();
            let mut base = PeopleBuilder::new();
            for r in &initial {
                everything.record(&record(r));
                base.record(&record(r));
            }
            let mut people = base.build(&settings, &tz).unwrap();
            for batch in &batches {
                let records: Vec<PersonRecord> = batch.iter().map(record).collect();
                for r in &records {
                    everything.record(r);
                }
                people = people.apply(&records, &settings, &tz).unwrap();
            }
            let fresh = everything.build(&settings, &tz).unwrap();
            let want = observe(&fresh, &pool);
            proptest::prop_assert_eq!(observe(&people, &pool), want.clone(), "applied");
            let folded = people.fold().unwrap();
            proptest::prop_assert_eq!(folded.overlay_len(), 0);
            proptest::prop_assert_eq!(observe(&folded, &pool), want, "folded");
        }
    }

    #[test]
    fn a_guardian_turning_protected_reaches_children_in_the_base() {
        let (kid, g) = (pid("201509162390"), pid("197701012382"));
        let mut b = PeopleBuilder::new();
        b.person(kid, None, false, &[g]);
        let people = build(b);
        assert!(!people.get(kid).unwrap().guardians[0].protected());
        let settings = Settings::default();
        let tz = time::stockholm().unwrap();
        let changed = people
            .apply(
                &[PersonRecord {
                    id: g,
                    birth_date: None,
                    protected: true,
                    guardians: vec![],
                }],
                &settings,
                &tz,
            )
            .unwrap();
        assert!(changed.get(kid).unwrap().guardians[0].protected());
        assert!(
            !people.get(kid).unwrap().guardians[0].protected(),
            "the old snapshot is untouched"
        );
        assert_eq!(
            changed.overlay_len(),
            2,
            "the guardian and the child whose edge changed"
        );
        let other = Settings {
            guardian_age_limit: 12,
            ..Settings::default()
        };
        assert!(matches!(
            people.apply(&[], &other, &tz),
            Err(BuildError::SettingsMismatch)
        ));
    }

    #[test]
    fn every_generated_person_is_found_and_strangers_are_not() {
        let mut b = PeopleBuilder::new();
        let mut all = Vec::new();
        for serial in 1..=999u16 {
            for (y, m, d) in [(2015, 9, 16), (1980, 1, 2)] {
                let p = crate::core::identity::make_pid(y, m, d, serial).unwrap();
                all.push(p);
            }
        }
        for pair in all.chunks(2) {
            b.person(pair[0], None, false, &[pair[1]]);
        }
        let people = build(b);
        assert_eq!(people.len(), all.len());
        for p in &all {
            assert_eq!(people.get(*p).map(|r| r.pid), Some(*p));
        }
        let stranger = crate::core::identity::make_pid(2001, 1, 1, 1).unwrap();
        assert!(people.get(stranger).is_none());
    }
}
