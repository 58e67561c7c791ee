//! The base's raw parts for snapshot files, and their checks on the way
//! back: plain old data, validated before it is trusted.

use super::*;

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
        // Every edge names a person here and carries that person's own
        // protected flag: the hot path trusts the edge and never looks the
        // guardian up (a flag wrong here would answer for a protected
        // guardian as for anyone).
        // The guardians' slots are random reads: they are touched a group
        // ahead so that their misses overlap (see `Table::touch`), which
        // halves a national cold start.
        let edges: Vec<GuardianEdge> = (0..n).flat_map(|i| table.guardians_at(i).iter().copied()).collect();
        let mut groups = edges.chunks(16).peekable();
        if let Some(first) = groups.peek() {
            std::hint::black_box(table.touch(first.iter().map(|e| e.pid_value())));
        }
        while let Some(group) = groups.next() {
            if let Some(next) = groups.peek() {
                std::hint::black_box(table.touch(next.iter().map(|e| e.pid_value())));
            }
            for edge in group {
                let Some(j) = table.find(edge.pid_value()) else {
                    return Err(RawPeopleError("a guardian edge names no one"));
                };
                if edge.protected() != (table.slots.get()[j].key & PROTECTED != 0) {
                    return Err(RawPeopleError(
                        "a guardian edge disagrees with the guardian's protection",
                    ));
                }
            }
        }
        drop(edges);
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
