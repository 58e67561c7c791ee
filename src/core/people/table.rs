//! The base: an open-addressing table of 32-byte slots in a huge-page
//! mapping, with side tables for children and for more than two guardians.

use super::*;

/// The base: an immutable table built once and shared.
///
/// Invariants: `child_edges` (slot indices, grouped by the guardian's slot
/// through `child_offsets`) is the exact inverse of the guardian edges;
/// `more_guardians` holds the whole list of anyone with more than two.
pub(crate) struct Table {
    pub(super) slots: Slots,
    pub(super) more_guardians: HashMap<u64, Box<[GuardianEdge]>>,
    pub(super) child_offsets: Vec<u32>,
    pub(super) child_edges: Vec<u32>,
    pub(super) limits: (u8, u8, LeapDay),
    pub(super) len: usize,
    pub(super) records: usize,
    pub(super) links: usize,
}

/// The slot array, in an anonymous mapping that asks the kernel for huge
/// pages: a check's one random read then rarely misses the TLB as well.
/// Falls back to the heap where the mapping cannot be made.
pub(super) enum Slots {
    Mapped(memmap2::MmapMut),
    Heap(Vec<Slot>),
}

impl Slots {
    pub(super) fn zeroed(n: usize) -> Slots {
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
    pub(super) fn get(&self) -> &[Slot] {
        match self {
            Slots::Mapped(map) => {
                let whole = map.len() / std::mem::size_of::<Slot>() * std::mem::size_of::<Slot>();
                bytemuck::try_cast_slice(&map[..whole]).unwrap_or(&[])
            }
            Slots::Heap(v) => v,
        }
    }

    pub(super) fn get_mut(&mut self) -> &mut [Slot] {
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
pub(super) fn home(pid: u64, capacity: usize) -> usize {
    let mut x = pid ^ 0x243F_6A88_85A3_08D3;
    x = (x ^ (x >> 32)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    x = (x ^ (x >> 32)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    x ^= x >> 32;
    2 * ((u128::from(x) * (capacity / 2) as u128) >> 64) as usize
}

/// Room for `len` persons: even, at most 3/4 full, never full.
pub(super) fn capacity_for(len: usize) -> usize {
    ((len + len / 3).max(len + 1) + 2) & !1
}

impl Table {
    pub(super) fn empty(capacity: usize, limits: (u8, u8, LeapDay)) -> Table {
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
    pub(super) fn find(&self, pid: u64) -> Option<usize> {
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

    /// Reads the home lines of `pids` and uses nothing it read: touching
    /// many numbers together lets their cache misses overlap, where the
    /// lookups themselves would pay them one after another. The homes are
    /// computed first and the reads then issued back to back, so that all
    /// of them fit in the core's window of instructions in flight at once
    /// (interleaved with the hashing, the window filled after a dozen).
    /// Returns the keys read folded together, for the caller's
    /// `black_box`. Only home lines: children, the persons the portal asks
    /// about, are placed first (see `PeopleBuilder::build`), and 94 % of
    /// them sit in theirs at national scale.
    #[inline]
    pub(super) fn touch(&self, pids: impl Iterator<Item = u64>) -> u64 {
        const MAX: usize = 32;
        let slots = self.slots.get();
        let n = slots.len();
        if n == 0 {
            return 0;
        }
        let mut homes = [0usize; MAX];
        let mut k = 0;
        for pid in pids.take(MAX) {
            homes[k] = home(pid, n);
            k += 1;
        }
        homes[..k]
            .iter()
            .fold(0, |seen, &i| seen ^ slots.get(i).map_or(0, |s| s.key))
    }

    /// Touches the slots of every child of the person in slot `i` (see
    /// [`Table::touch`]).
    pub(super) fn touch_children(&self, i: usize) -> u64 {
        let slots = self.slots.get();
        self.children_at(i)
            .iter()
            .fold(0, |seen, &c| seen ^ slots.get(c as usize).map_or(0, |s| s.key))
    }

    pub(super) fn insert(&mut self, slot: Slot) -> usize {
        let slots = self.slots.get_mut();
        let n = slots.len();
        let mut i = home(slot.key & PID_MASK, n);
        while slots[i].key != 0 {
            i = if i + 1 == n { 0 } else { i + 1 };
        }
        slots[i] = slot;
        i
    }

    pub(super) fn guardians_at(&self, i: usize) -> &[GuardianEdge] {
        let slot = &self.slots.get()[i];
        if slot.key & MORE_GUARDIANS != 0 {
            self.more_guardians.get(&(slot.key & PID_MASK)).map_or(&[], |g| g)
        } else {
            let n = slot.guardians.iter().take_while(|g| g.0 != 0).count();
            &slot.guardians[..n]
        }
    }

    pub(super) fn at(&self, i: usize) -> PersonRef<'_> {
        let slot = &self.slots.get()[i];
        PersonRef {
            pid: Pid::from_validated(slot.key & PID_MASK),
            protected: slot.key & PROTECTED != 0,
            ages: ages(slot.key, slot.attains),
            guardians: self.guardians_at(i),
            origin: Origin::Base(i as u32),
        }
    }

    pub(super) fn children_at(&self, i: usize) -> &[u32] {
        let range = self.child_offsets[i] as usize..self.child_offsets[i + 1] as usize;
        &self.child_edges[range]
    }

    /// Sets every edge's protected flag from the guardian's own slot, adds
    /// a person for any guardian who has none, and builds the children index
    /// and the counts. The one last step of building and of folding.
    pub(super) fn finish(mut self) -> Result<Table, BuildError> {
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

impl Table {
    /// Inserts a person with their edges inline, or in `more_guardians` when
    /// there are more than two.
    pub(super) fn put_person(&mut self, key: u64, attains: [i32; 2], guardians: &[GuardianEdge]) {
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

#[cfg(test)]
mod tests {
    /// The share of persons in their home line (the first two slots of
    /// their probe): children, then everyone else.
    fn in_home_line(people: &super::People) -> (f64, f64) {
        let t = &people.base;
        let slots = t.slots.get();
        let n = slots.len();
        let (mut home, mut all) = ([0usize; 2], [0usize; 2]);
        for (i, slot) in slots.iter().enumerate() {
            if slot.key == 0 {
                continue;
            }
            let adult = usize::from(t.guardians_at(i).is_empty());
            let d = (i + n - super::home(slot.key & super::PID_MASK, n)) % n;
            all[adult] += 1;
            home[adult] += usize::from(d < 2);
        }
        (home[0] as f64 / all[0] as f64, home[1] as f64 / all[1] as f64)
    }

    #[test]
    fn children_are_placed_first_and_sit_in_their_home_line() {
        let synthetic = crate::synth::generate(crate::synth::Scale::fraction(0.01), 42).unwrap();
        let people = synthetic.snapshot.people();
        let (children, adults) = in_home_line(people);
        // At national scale 94 % and 66 %; in file order children came
        // last and 76 % of all persons sat in their home line.
        assert!(children > 0.9, "children in their home line: {children}");
        assert!(adults < children, "{adults} vs {children}");
        // A fold places them the same way.
        let records: Vec<crate::core::people::PersonRecord> = synthetic
            .children
            .iter()
            .take(200)
            .map(|&c| crate::core::people::PersonRecord {
                id: c,
                birth_date: c.birth_date(),
                protected: true,
                guardians: people.guardians_of(c).collect(),
            })
            .collect();
        let snap = &synthetic.snapshot;
        let changed = people
            .apply(&records, snap.settings(), snap.tz())
            .unwrap()
            .fold()
            .unwrap();
        let (children, _) = in_home_line(&changed);
        assert!(children > 0.9, "after a fold: {children}");
    }
}
