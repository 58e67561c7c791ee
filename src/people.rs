//! The population half of the snapshot: every person, their guardianships in
//! both directions and the instants they attain the two age limits, laid out
//! so that a check costs about one cache miss.
//!
//! [`People`] is an open-addressing hash table (linear probing, load factor at
//! most 3/4) of 32-byte [`Slot`]s, two to a cache line. A slot holds all that
//! `decide` needs about a subject: the number with its flags, both age
//! instants, and up to two guardians, each with that guardian's own protected
//! flag folded in. Children (for the switch list) and guardians beyond the
//! second live in side tables that only `children` and rare people touch.

use std::collections::HashMap;

use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::identity::Pid;
use crate::model::Settings;
use crate::snapshot::BuildError;
use crate::time::{self, Instant, LeapDay};

const PROTECTED: u64 = 1 << 63;
const BIRTH_KNOWN: u64 = 1 << 62;
const MORE_GUARDIANS: u64 = 1 << 61;
/// Canonical numbers are below 10^12 < 2^40.
const PID_MASK: u64 = (1 << 40) - 1;
const NANOS_PER_MINUTE: i64 = 60_000_000_000;

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
struct Slot {
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

/// A person found in the table.
#[derive(Clone, Copy)]
pub(crate) struct PersonRef<'s> {
    pub(crate) pid: Pid,
    pub(crate) protected: bool,
    pub(crate) ages: Option<AgeLimits>,
    pub(crate) guardians: &'s [GuardianEdge],
    slot: usize,
}

/// Every person, their guardianships in both directions, and their age limits.
///
/// Invariants: every guardian named by any record is itself a person here
/// (unprotected, with the birth date of their number, when they have no
/// record of their own); a person's guardian edges carry the guardian's own
/// protected flag; `child_edges` (slot indices, grouped by the guardian's
/// slot through `child_offsets`) is the exact inverse of the guardian edges;
/// `more_guardians` holds the whole list of anyone with more than two; the
/// age instants were computed with the settings recorded in `limits`.
pub struct People {
    slots: Slots,
    more_guardians: HashMap<u64, Box<[GuardianEdge]>>,
    child_offsets: Vec<u32>,
    child_edges: Vec<u32>,
    limits: (u8, u8, LeapDay),
    len: usize,
    records: usize,
    links: usize,
}

impl std::fmt::Debug for People {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("People")
            .field("len", &self.len)
            .field("links", &self.links)
            .finish_non_exhaustive()
    }
}

/// The slot array, in an anonymous mapping that asks the kernel for huge
/// pages: a check's one random read then rarely misses the TLB as well.
/// Falls back to the heap where the mapping cannot be made.
enum Slots {
    Mapped(memmap2::MmapMut),
    Heap(Vec<Slot>),
}

impl Slots {
    fn zeroed(n: usize) -> Slots {
        let bytes = n * std::mem::size_of::<Slot>();
        match memmap2::MmapMut::map_anon(bytes.max(1)) {
            Ok(map) if bytemuck::try_cast_slice::<u8, Slot>(&map[..bytes]).is_ok() => {
                // Only advice: without huge pages everything still works.
                let _ = map.advise(memmap2::Advice::HugePage);
                Slots::Mapped(map)
            }
            _ => Slots::Heap(vec![Slot::default(); n]),
        }
    }

    #[inline]
    fn get(&self) -> &[Slot] {
        match self {
            Slots::Mapped(map) => {
                let whole = map.len() / std::mem::size_of::<Slot>() * std::mem::size_of::<Slot>();
                bytemuck::try_cast_slice(&map[..whole]).unwrap_or(&[])
            }
            Slots::Heap(v) => v,
        }
    }

    fn get_mut(&mut self) -> &mut [Slot] {
        match self {
            Slots::Mapped(map) => {
                let whole = map.len() / std::mem::size_of::<Slot>() * std::mem::size_of::<Slot>();
                bytemuck::try_cast_slice_mut(&mut map[..whole]).unwrap_or(&mut [])
            }
            Slots::Heap(v) => v,
        }
    }
}

/// The home slot of a number: a strong 64-bit mix, then the high bits scaled
/// onto the table's pairs of slots (no power-of-two rounding, so no memory is
/// wasted). Homes are even, so the first probe reads one whole 64-byte line
/// holding two candidates.
#[inline]
fn home(pid: u64, capacity: usize) -> usize {
    let mut x = pid ^ 0x243F_6A88_85A3_08D3;
    x = (x ^ (x >> 32)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    x = (x ^ (x >> 32)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    x ^= x >> 32;
    2 * ((u128::from(x) * (capacity / 2) as u128) >> 64) as usize
}

impl People {
    /// Finds a person: one hashed probe and a short linear scan.
    #[inline]
    pub(crate) fn get(&self, pid: Pid) -> Option<PersonRef<'_>> {
        let want = pid.get();
        let slots = self.slots.get();
        let n = slots.len();
        if n == 0 {
            return None;
        }
        let mut i = home(want, n);
        // The table is never full, so the scan always meets an empty slot.
        for _ in 0..n {
            let key = slots[i].key;
            if key & PID_MASK == want {
                return Some(self.at(i));
            }
            if key == 0 {
                return None;
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
        None
    }

    fn at(&self, i: usize) -> PersonRef<'_> {
        let slot = &self.slots.get()[i];
        let key = slot.key;
        let guardians: &[GuardianEdge] = if key & MORE_GUARDIANS != 0 {
            self.more_guardians.get(&(key & PID_MASK)).map_or(&[], |g| g)
        } else {
            let n = slot.guardians.iter().take_while(|g| g.0 != 0).count();
            &slot.guardians[..n]
        };
        PersonRef {
            pid: Pid::from_validated(key & PID_MASK),
            protected: key & PROTECTED != 0,
            ages: (key & BIRTH_KNOWN != 0).then(|| AgeLimits {
                guardian_limit: Instant::from_nanos(i64::from(slot.attains[0]) * NANOS_PER_MINUTE),
                own_journal: Instant::from_nanos(i64::from(slot.attains[1]) * NANOS_PER_MINUTE),
            }),
            guardians,
            slot: i,
        }
    }

    /// The persons `person` is a registered guardian of.
    pub(crate) fn children_of_ref<'s>(&'s self, person: PersonRef<'s>) -> impl Iterator<Item = PersonRef<'s>> + 's {
        let range = self.child_offsets[person.slot] as usize..self.child_offsets[person.slot + 1] as usize;
        self.child_edges[range].iter().map(move |&c| self.at(c as usize))
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
        self.len
    }

    /// Whether there is nobody.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of persons who came with a record of their own.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Number of guardianship links.
    pub fn links(&self) -> usize {
        self.links
    }

    /// The age settings the instants were computed with.
    pub(crate) fn limits(&self) -> (u8, u8, LeapDay) {
        self.limits
    }

    /// Heap bytes held, counted from capacities.
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        std::mem::size_of_val(self.slots.get())
            + (self.child_offsets.capacity() + self.child_edges.capacity()) * size_of::<u32>()
            + self.more_guardians.capacity() * (size_of::<(u64, Box<[GuardianEdge]>)>() + 1)
            + self
                .more_guardians
                .values()
                .map(|g| g.len() * size_of::<GuardianEdge>())
                .sum::<usize>()
    }

    /// The age limits of someone with no record, from their number's date.
    pub(crate) fn ages_from_number(pid: Pid, settings: &Settings, tz: &TimeZone) -> Option<AgeLimits> {
        let birth = pid.birth_date()?;
        Some(AgeLimits {
            guardian_limit: time::attains_age(birth, settings.guardian_age_limit, settings.leap_day, tz)?,
            own_journal: time::attains_age(birth, settings.own_journal_age, settings.leap_day, tz)?,
        })
    }
}

/// One population record as given to the builder.
#[derive(Debug, Clone)]
struct Record {
    id: Pid,
    birth_date: Option<Date>,
    protected: bool,
    guardians: std::ops::Range<u32>,
}

/// Collects population records and builds [`People`].
///
/// A later record for the same person replaces an earlier one (upsert), its
/// guardians included.
#[derive(Debug, Default)]
pub struct PeopleBuilder {
    records: Vec<Record>,
    guardians: Vec<Pid>,
}

impl PeopleBuilder {
    /// An empty builder.
    pub fn new() -> PeopleBuilder {
        PeopleBuilder::default()
    }

    /// A builder with room for `records` records and `links` guardianship links.
    pub fn with_capacity(records: usize, links: usize) -> PeopleBuilder {
        PeopleBuilder {
            records: Vec::with_capacity(records),
            guardians: Vec::with_capacity(links),
        }
    }

    /// Adds (or, if the person was added before, replaces) a record.
    /// `birth_date` is the population register's, when it has one. A person
    /// named as their own guardian, or a guardian named twice, is dropped.
    pub fn person(&mut self, id: Pid, birth_date: Option<Date>, protected: bool, guardians: &[Pid]) -> &mut Self {
        let start = self.guardians.len() as u32;
        for g in guardians {
            if *g != id && !self.guardians[start as usize..].contains(g) {
                self.guardians.push(*g);
            }
        }
        let end = self.guardians.len() as u32;
        self.records.push(Record {
            id,
            birth_date,
            protected,
            guardians: start..end,
        });
        self
    }

    /// Builds the population index under `settings`' age limits.
    pub fn build(self, settings: &Settings, tz: &TimeZone) -> Result<People, BuildError> {
        settings.validate()?;
        if self.guardians.len() >= u32::MAX as usize || self.records.len() >= (u32::MAX / 4) as usize {
            return Err(BuildError::TooLarge);
        }
        // Upsert: keep the last record of each person.
        let mut order: Vec<(u64, u32)> = self
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.get(), i as u32))
            .collect();
        order.sort_unstable();
        let mut keep: Vec<u32> = Vec::with_capacity(order.len());
        for (k, w) in order.iter().enumerate() {
            if order.get(k + 1).is_none_or(|next| next.0 != w.0) {
                keep.push(w.1);
            }
        }
        drop(order);
        let guardians_of = |r: &Record| &self.guardians[r.guardians.start as usize..r.guardians.end as usize];

        // Guardians without a record of their own become implicit persons.
        let mut implicit: Vec<u64> = keep
            .iter()
            .flat_map(|&k| guardians_of(&self.records[k as usize]).iter().map(|g| g.get()))
            .collect();
        implicit.sort_unstable();
        implicit.dedup();
        let recorded = |pid: u64| {
            keep.binary_search_by_key(&pid, |&k| self.records[k as usize].id.get())
                .is_ok()
        };
        implicit.retain(|&g| !recorded(g));

        let len = keep.len() + implicit.len();
        // Even, at most 3/4 full, never full.
        let capacity = ((len + len / 3).max(len + 1) + 2) & !1;
        let mut table = Table {
            slots: Slots::zeroed(capacity),
        };
        let mut midnights = Midnights::new(settings, tz);
        for &k in &keep {
            let r = &self.records[k as usize];
            let birth = r.birth_date.or_else(|| r.id.birth_date());
            table.insert(midnights.slot(r.id, birth, r.protected));
        }
        for &g in &implicit {
            let pid = Pid::from_validated(g);
            table.insert(midnights.slot(pid, pid.birth_date(), false));
        }

        // Guardian edges, each with the guardian's protected flag, and the
        // number of children of each guardian's slot.
        let mut more_guardians = HashMap::new();
        let mut child_counts = vec![0u32; capacity + 1];
        let mut links = 0;
        for &k in &keep {
            let r = &self.records[k as usize];
            let list = guardians_of(r);
            if list.is_empty() {
                continue;
            }
            let edges: Vec<GuardianEdge> = list
                .iter()
                .map(|g| {
                    let gi = table.find(g.get()).unwrap_or(0);
                    child_counts[gi + 1] += 1;
                    GuardianEdge(g.get() | (table.slots.get()[gi].key & PROTECTED))
                })
                .collect();
            links += edges.len();
            let si = table.find(r.id.get()).unwrap_or(0);
            let slot = &mut table.slots.get_mut()[si];
            if edges.len() <= 2 {
                slot.guardians[..edges.len()].copy_from_slice(&edges);
            } else {
                slot.key |= MORE_GUARDIANS;
                more_guardians.insert(r.id.get(), edges.into_boxed_slice());
            }
        }

        // Child edges: the exact inverse, by counting sort over slots.
        let mut child_offsets = child_counts;
        for i in 1..child_offsets.len() {
            child_offsets[i] += child_offsets[i - 1];
        }
        let mut fill = child_offsets.clone();
        let mut child_edges = vec![0u32; links];
        for (ci, slot) in table.slots.get().iter().enumerate() {
            if slot.key == 0 {
                continue;
            }
            let edges: &[GuardianEdge] = if slot.key & MORE_GUARDIANS != 0 {
                more_guardians.get(&(slot.key & PID_MASK)).map_or(&[], |g| g)
            } else {
                &slot.guardians
            };
            for e in edges.iter().filter(|e| e.0 != 0) {
                let gi = table.find(e.pid_value()).unwrap_or(0);
                child_edges[fill[gi] as usize] = ci as u32;
                fill[gi] += 1;
            }
        }
        Ok(People {
            slots: table.slots,
            more_guardians,
            child_offsets,
            child_edges,
            limits: (settings.guardian_age_limit, settings.own_journal_age, settings.leap_day),
            len,
            records: keep.len(),
            links,
        })
    }
}

/// The table while it is being filled.
struct Table {
    slots: Slots,
}

impl Table {
    fn insert(&mut self, slot: Slot) {
        let slots = self.slots.get_mut();
        let n = slots.len();
        let mut i = home(slot.key & PID_MASK, n);
        while slots[i].key != 0 {
            i = if i + 1 == n { 0 } else { i + 1 };
        }
        slots[i] = slot;
    }

    fn find(&self, pid: u64) -> Option<usize> {
        let slots = self.slots.get();
        let n = slots.len();
        let mut i = home(pid, n);
        for _ in 0..n {
            let key = slots[i].key;
            if key & PID_MASK == pid {
                return Some(i);
            }
            if key == 0 {
                return None;
            }
            i = if i + 1 == n { 0 } else { i + 1 };
        }
        None
    }
}

/// Computes slots, remembering the local midnight of each date: a national
/// population has millions of people but only tens of thousands of birthdays.
struct Midnights<'a> {
    settings: &'a Settings,
    tz: &'a TimeZone,
    memo: HashMap<Date, Option<i32>>,
}

impl<'a> Midnights<'a> {
    fn new(settings: &'a Settings, tz: &'a TimeZone) -> Self {
        Midnights {
            settings,
            tz,
            memo: HashMap::new(),
        }
    }

    /// Minutes since the epoch at which `birth` attains `age`; `None` when the
    /// date is out of range (the person is then treated as of unknown age).
    fn attains(&mut self, birth: Date, age: u8) -> Option<i32> {
        let day = time::birthday(birth, age, self.settings.leap_day)?;
        let tz = self.tz;
        *self.memo.entry(day).or_insert_with(|| {
            let nanos = time::local_midnight(day, tz)?.as_nanos();
            // Round up to a whole minute (only pre-1879 local mean time has seconds).
            i32::try_from(nanos.div_euclid(NANOS_PER_MINUTE) + i64::from(nanos.rem_euclid(NANOS_PER_MINUTE) != 0)).ok()
        })
    }

    fn slot(&mut self, pid: Pid, birth: Option<Date>, protected: bool) -> Slot {
        let mut key = pid.get();
        if protected {
            key |= PROTECTED;
        }
        let mut attains = [0, 0];
        if let Some(birth) = birth {
            let a = self.attains(birth, self.settings.guardian_age_limit);
            let b = self.attains(birth, self.settings.own_journal_age);
            if let (Some(a), Some(b)) = (a, b) {
                key |= BIRTH_KNOWN;
                attains = [a, b];
            }
        }
        Slot {
            key,
            attains,
            guardians: [GuardianEdge(0); 2],
        }
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

    #[test]
    fn every_generated_person_is_found_and_strangers_are_not() {
        let mut b = PeopleBuilder::new();
        let mut all = Vec::new();
        for serial in 1..=999u16 {
            for (y, m, d) in [(2015, 9, 16), (1980, 1, 2)] {
                let p = crate::identity::make_pid(y, m, d, serial).unwrap();
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
        let stranger = crate::identity::make_pid(2001, 1, 1, 1).unwrap();
        assert!(people.get(stranger).is_none());
    }
}
