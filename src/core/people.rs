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
    (key & BIRTH_KNOWN != 0).then(|| AgeLimits {
        guardian_limit: Instant::from_nanos(i64::from(attains[0]) * NANOS_PER_MINUTE),
        own_journal: Instant::from_nanos(i64::from(attains[1]) * NANOS_PER_MINUTE),
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

/// The base: an immutable table built once and shared.
///
/// Invariants: `child_edges` (slot indices, grouped by the guardian's slot
/// through `child_offsets`) is the exact inverse of the guardian edges;
/// `more_guardians` holds the whole list of anyone with more than two.
pub(crate) struct Table {
    slots: Slots,
    more_guardians: HashMap<u64, Box<[GuardianEdge]>>,
    child_offsets: Vec<u32>,
    child_edges: Vec<u32>,
    limits: (u8, u8, LeapDay),
    len: usize,
    records: usize,
    links: usize,
}

/// The persons changed since the base was built, each with their whole
/// current record.
///
/// Invariants: `children[g]` lists exactly the persons in `persons` whose
/// guardians include `g`; `filter` holds every key of `persons`; the counts
/// are what the overlay adds to the base's.
#[derive(Clone, Default)]
struct Overlay {
    persons: HashMap<u64, OverlayPerson, Hasher>,
    children: HashMap<u64, Vec<u64>, Hasher>,
    filter: Filter,
    added: isize,
    records: isize,
    links: isize,
}

#[derive(Clone)]
struct OverlayPerson {
    key: u64,
    attains: [i32; 2],
    /// Shared, so that copying the overlay for the next write copies no lists.
    guardians: Arc<[GuardianEdge]>,
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

/// Room for `len` persons: even, at most 3/4 full, never full.
fn capacity_for(len: usize) -> usize {
    ((len + len / 3).max(len + 1) + 2) & !1
}

impl Table {
    fn empty(capacity: usize, limits: (u8, u8, LeapDay)) -> Table {
        Table {
            slots: Slots::zeroed(capacity),
            more_guardians: HashMap::new(),
            child_offsets: vec![0; capacity + 1],
            child_edges: Vec::new(),
            limits,
            len: 0,
            records: 0,
            links: 0,
        }
    }

    /// The slot index of `pid`: one hashed probe and a short linear scan.
    #[inline]
    fn find(&self, pid: u64) -> Option<usize> {
        let slots = self.slots.get();
        let n = slots.len();
        if n == 0 {
            return None;
        }
        let mut i = home(pid, n);
        // The table is never full, so the scan always meets an empty slot.
        for _ in 0..n {
            let key = slots[i].key;
            if key & PID_MASK == pid {
                return Some(i);
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

    fn insert(&mut self, slot: Slot) -> usize {
        let slots = self.slots.get_mut();
        let n = slots.len();
        let mut i = home(slot.key & PID_MASK, n);
        while slots[i].key != 0 {
            i = if i + 1 == n { 0 } else { i + 1 };
        }
        slots[i] = slot;
        i
    }

    fn guardians_at(&self, i: usize) -> &[GuardianEdge] {
        let slot = &self.slots.get()[i];
        if slot.key & MORE_GUARDIANS != 0 {
            self.more_guardians.get(&(slot.key & PID_MASK)).map_or(&[], |g| g)
        } else {
            let n = slot.guardians.iter().take_while(|g| g.0 != 0).count();
            &slot.guardians[..n]
        }
    }

    fn at(&self, i: usize) -> PersonRef<'_> {
        let slot = &self.slots.get()[i];
        PersonRef {
            pid: Pid::from_validated(slot.key & PID_MASK),
            protected: slot.key & PROTECTED != 0,
            ages: ages(slot.key, slot.attains),
            guardians: self.guardians_at(i),
            origin: Origin::Base(i as u32),
        }
    }

    fn children_at(&self, i: usize) -> &[u32] {
        let range = self.child_offsets[i] as usize..self.child_offsets[i + 1] as usize;
        &self.child_edges[range]
    }

    /// Sets every edge's protected flag from the guardian's own slot, adds
    /// a person for any guardian who has none, and builds the children index
    /// and the counts. The one last step of building and of folding.
    fn finish(mut self) -> Result<Table, BuildError> {
        let n = self.slots.get().len();
        // Pass 1: flags from each guardian's slot, and each edge's target.
        let mut targets: Vec<u32> = Vec::new();
        let mut child_counts = vec![0u32; n + 1];
        let (mut len, mut records) = (0, 0);
        for i in 0..n {
            let key = self.slots.get()[i].key;
            if key == 0 {
                continue;
            }
            len += 1;
            records += usize::from(key & RECORDED != 0);
            // Every path that fills a table names only guardians it holds.
            let flag = |table: &Table, e: GuardianEdge| -> Result<(GuardianEdge, usize), BuildError> {
                let gi = table.find(e.pid_value()).ok_or(BuildError::MissingGuardian)?;
                let protected = table.slots.get()[gi].key & PROTECTED != 0;
                Ok((e.with_protected(protected), gi))
            };
            if key & MORE_GUARDIANS != 0 {
                let pid = key & PID_MASK;
                let mut list: Vec<GuardianEdge> = self.more_guardians.get(&pid).map(|g| g.to_vec()).unwrap_or_default();
                for e in &mut list {
                    let (fixed, gi) = flag(&self, *e)?;
                    *e = fixed;
                    targets.push(gi as u32);
                    child_counts[gi + 1] += 1;
                }
                self.more_guardians.insert(pid, list.into_boxed_slice());
            } else {
                let mut edges = self.slots.get()[i].guardians;
                for e in edges.iter_mut().filter(|e| e.0 != 0) {
                    let (fixed, gi) = flag(&self, *e)?;
                    *e = fixed;
                    targets.push(gi as u32);
                    child_counts[gi + 1] += 1;
                }
                self.slots.get_mut()[i].guardians = edges;
            }
        }

        // Pass 2: the children index, the exact inverse, by counting sort.
        let mut child_offsets = child_counts;
        for i in 1..child_offsets.len() {
            child_offsets[i] += child_offsets[i - 1];
        }
        let mut fill = child_offsets.clone();
        let mut child_edges = vec![0u32; targets.len()];
        let mut t = targets.iter();
        for i in 0..n {
            if self.slots.get()[i].key == 0 {
                continue;
            }
            for _ in self.guardians_at(i) {
                let gi = *t.next().unwrap_or(&0) as usize;
                child_edges[fill[gi] as usize] = i as u32;
                fill[gi] += 1;
            }
        }
        self.links = targets.len();
        self.child_offsets = child_offsets;
        self.child_edges = child_edges;
        self.len = len;
        self.records = records;
        Ok(self)
    }
}

impl Overlay {
    #[inline]
    fn get(&self, pid: u64) -> Option<&OverlayPerson> {
        if self.persons.is_empty() || !self.filter.may_contain(pid) {
            return None;
        }
        self.persons.get(&pid)
    }

    fn person_ref(p: &OverlayPerson) -> PersonRef<'_> {
        PersonRef {
            pid: Pid::from_validated(p.key & PID_MASK),
            protected: p.key & PROTECTED != 0,
            ages: ages(p.key, p.attains),
            guardians: &p.guardians,
            origin: Origin::Overlay,
        }
    }
}

/// A person's current record while a write is applied: from the overlay
/// being built, else from the base.
struct Current {
    key: u64,
    attains: [i32; 2],
    guardians: Vec<GuardianEdge>,
}

fn current(base: &Table, ov: &Overlay, pid: u64) -> Option<Current> {
    if let Some(p) = ov.persons.get(&pid) {
        return Some(Current {
            key: p.key,
            attains: p.attains,
            guardians: p.guardians.to_vec(),
        });
    }
    let i = base.find(pid)?;
    let slot = &base.slots.get()[i];
    Some(Current {
        key: slot.key,
        attains: slot.attains,
        guardians: base.guardians_at(i).to_vec(),
    })
}

/// The children of `g` as the overlay being built sees them.
fn current_children(base: &Table, ov: &Overlay, g: u64) -> Vec<u64> {
    let mut out: Vec<u64> = match base.find(g) {
        Some(gi) => base
            .children_at(gi)
            .iter()
            .map(|&c| base.slots.get()[c as usize].key & PID_MASK)
            .filter(|c| !ov.persons.contains_key(c))
            .collect(),
        None => Vec::new(),
    };
    if let Some(list) = ov.children.get(&g) {
        out.extend_from_slice(list);
    }
    out
}

impl Overlay {
    /// Puts `person` in the overlay, keeping `children` and the counts true.
    fn put(&mut self, person: OverlayPerson, before: Option<&Current>) {
        let pid = person.key & PID_MASK;
        let old_guardians: &[GuardianEdge] = before.map_or(&[], |c| &c.guardians);
        let was_in_overlay = self.persons.contains_key(&pid);
        // Persons taken from the base were not in `children`; the base's
        // children index stops counting them once they are in the overlay.
        if was_in_overlay {
            for g in old_guardians {
                if let Some(list) = self.children.get_mut(&g.pid_value()) {
                    list.retain(|c| *c != pid);
                    if list.is_empty() {
                        self.children.remove(&g.pid_value());
                    }
                }
            }
        }
        for g in person.guardians.iter() {
            self.children.entry(g.pid_value()).or_default().push(pid);
        }
        match before {
            None => self.added += 1,
            Some(c) => self.records -= isize::from(c.key & RECORDED != 0),
        }
        self.records += isize::from(person.key & RECORDED != 0);
        self.links += person.guardians.len() as isize - old_guardians.len() as isize;
        self.persons.insert(pid, person);
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
        for (i, slot) in base.slots.get().iter().enumerate() {
            if slot.key == 0 || ov.persons.contains_key(&(slot.key & PID_MASK)) {
                continue;
            }
            table.insert(*slot);
            if slot.key & MORE_GUARDIANS != 0 {
                table
                    .more_guardians
                    .insert(slot.key & PID_MASK, base.guardians_at(i).into());
            }
        }
        for p in ov.persons.values() {
            table.put_person(p.key, p.attains, &p.guardians);
        }
        Ok(People {
            base: Arc::new(table.finish()?),
            overlay: Arc::new(Overlay::default()),
        })
    }
}

impl Table {
    /// Inserts a person with their edges inline, or in `more_guardians` when
    /// there are more than two.
    fn put_person(&mut self, key: u64, attains: [i32; 2], guardians: &[GuardianEdge]) {
        let mut slot = Slot {
            key: key & !MORE_GUARDIANS,
            attains,
            guardians: [GuardianEdge(0); 2],
        };
        if guardians.len() <= 2 {
            slot.guardians[..guardians.len()].copy_from_slice(guardians);
        } else {
            slot.key |= MORE_GUARDIANS;
            self.more_guardians.insert(key & PID_MASK, guardians.into());
        }
        self.insert(slot);
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

    /// Adds a record.
    pub fn record(&mut self, r: &PersonRecord) -> &mut Self {
        self.person(r.id, r.birth_date, r.protected, &r.guardians)
    }

    /// Every record added so far, in order (repeats included).
    pub fn records(&self) -> impl Iterator<Item = PersonRecord> + '_ {
        self.records.iter().map(|r| PersonRecord {
            id: r.id,
            birth_date: r.birth_date,
            protected: r.protected,
            guardians: self.guardians[r.guardians.start as usize..r.guardians.end as usize].to_vec(),
        })
    }

    /// Number of records added so far (repeats included).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record was added.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
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

        let limits = (settings.guardian_age_limit, settings.own_journal_age, settings.leap_day);
        let mut table = Table::empty(capacity_for(keep.len() + implicit.len()), limits);
        let mut midnights = Midnights::new(settings, tz);
        let mut edges: Vec<GuardianEdge> = Vec::new();
        for &k in &keep {
            let r = &self.records[k as usize];
            let birth = r.birth_date.or_else(|| r.id.birth_date());
            let slot = midnights.slot(r.id, birth, r.protected);
            edges.clear();
            edges.extend(guardians_of(r).iter().map(|g| GuardianEdge(g.get())));
            table.put_person(slot.key | RECORDED, slot.attains, &edges);
        }
        for &g in &implicit {
            let pid = Pid::from_validated(g);
            table.insert(midnights.slot(pid, pid.birth_date(), false));
        }
        Ok(People {
            base: Arc::new(table.finish()?),
            overlay: Arc::new(Overlay::default()),
        })
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

/// The base's raw parts, for snapshot files: plain old data that is written
/// and read back as bytes.
pub(crate) struct RawPeople<'a> {
    pub(crate) slots: &'a [Slot],
    pub(crate) child_offsets: &'a [u32],
    pub(crate) child_edges: &'a [u32],
    /// `(pid, edges)` of everyone with more than two guardians.
    pub(crate) more_guardians: Vec<(u64, &'a [GuardianEdge])>,
    pub(crate) limits: (u8, u8, LeapDay),
}

/// A slot array filled from a file, not yet checked.
pub(crate) struct RawSlots(Slots);

/// Why raw parts do not make a valid table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the population table is inconsistent: {0}")]
pub struct RawPeopleError(pub &'static str);

impl People {
    /// The raw parts of the base; `None` while the overlay holds anything
    /// (fold first).
    pub(crate) fn raw(&self) -> Option<RawPeople<'_>> {
        if !self.overlay.persons.is_empty() {
            return None;
        }
        let b = &self.base;
        let mut more_guardians: Vec<(u64, &[GuardianEdge])> =
            b.more_guardians.iter().map(|(k, v)| (*k, &v[..])).collect();
        more_guardians.sort_unstable_by_key(|(k, _)| *k);
        Some(RawPeople {
            slots: b.slots.get(),
            child_offsets: &b.child_offsets,
            child_edges: &b.child_edges,
            more_guardians,
            limits: b.limits,
        })
    }

    /// A zeroed slot array of `byte_len` bytes that `fill` writes into
    /// (straight from a file into the huge-page mapping, no copy).
    pub(crate) fn slots_from<E: From<RawPeopleError>>(
        byte_len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<RawSlots, E> {
        let size = std::mem::size_of::<Slot>();
        if !byte_len.is_multiple_of(size) {
            return Err(RawPeopleError("slot bytes are not whole slots").into());
        }
        let n = byte_len / size;
        if n < 2 || !n.is_multiple_of(2) {
            return Err(RawPeopleError("the slot count must be even and at least 2").into());
        }
        let mut slots = Slots::zeroed(n);
        fill(bytemuck::cast_slice_mut(slots.get_mut()))?;
        Ok(RawSlots(slots))
    }

    /// Rebuilds a base from raw parts read from a file, checking every
    /// structural invariant the hot path relies on to index without bounds
    /// failures: a bad file is refused, never served.
    pub(crate) fn from_raw(
        slots: RawSlots,
        child_offsets: Vec<u32>,
        child_edges: Vec<u32>,
        more_guardians: Vec<(u64, Vec<GuardianEdge>)>,
        limits: (u8, u8, LeapDay),
    ) -> Result<People, RawPeopleError> {
        let slots = slots.0;
        let n = slots.get().len();
        if child_offsets.len() != n + 1
            || child_offsets.first() != Some(&0)
            || child_offsets.windows(2).any(|w| w[0] > w[1])
            || child_offsets.last().map(|&l| l as usize) != Some(child_edges.len())
            || child_edges.iter().any(|&c| c as usize >= n)
        {
            return Err(RawPeopleError("the children index is out of bounds"));
        }
        let mut table = Table {
            slots,
            more_guardians: more_guardians
                .into_iter()
                .map(|(k, v)| (k, v.into_boxed_slice()))
                .collect(),
            child_offsets,
            child_edges,
            limits,
            len: 0,
            records: 0,
            links: 0,
        };
        let (mut len, mut records, mut links, mut empty) = (0, 0, 0, 0);
        for i in 0..n {
            let key = table.slots.get()[i].key;
            if key == 0 {
                empty += 1;
                continue;
            }
            if Pid::from_u64(key & PID_MASK).is_err() {
                return Err(RawPeopleError("a slot holds an invalid number"));
            }
            if table.find(key & PID_MASK) != Some(i) {
                return Err(RawPeopleError("a slot is not where its number hashes"));
            }
            len += 1;
            records += usize::from(key & RECORDED != 0);
            if key & MORE_GUARDIANS != 0 && !table.more_guardians.contains_key(&(key & PID_MASK)) {
                return Err(RawPeopleError("a person's extra guardians are missing"));
            }
            links += table.guardians_at(i).len();
        }
        if empty == 0 || links != table.child_edges.len() {
            return Err(RawPeopleError("the counts do not add up"));
        }
        table.len = len;
        table.records = records;
        table.links = links;
        Ok(People {
            base: Arc::new(table),
            overlay: Arc::new(Overlay::default()),
        })
    }
}

impl GuardianEdge {
    /// An edge as read from a file.
    pub(crate) fn from_raw(value: u64) -> GuardianEdge {
        GuardianEdge(value)
    }

    /// The edge's stored value.
    pub(crate) fn raw(self) -> u64 {
        self.0
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
