//! The overlay: the persons changed since the base was built, each with
//! their whole current record, and how a write changes a copy of it.

use super::*;

/// The persons changed since the base was built, each with their whole
/// current record.
///
/// Invariants: `children[g]` lists exactly the persons in `persons` whose
/// guardians include `g`; `filter` holds every key of `persons`; the counts
/// are what the overlay adds to the base's.
#[derive(Clone, Default)]
pub(super) struct Overlay {
    pub(super) persons: HashMap<u64, OverlayPerson, Hasher>,
    pub(super) children: HashMap<u64, Vec<u64>, Hasher>,
    pub(super) filter: Filter,
    pub(super) added: isize,
    pub(super) records: isize,
    pub(super) links: isize,
}

#[derive(Clone)]
pub(super) struct OverlayPerson {
    pub(super) key: u64,
    pub(super) attains: [i32; 2],
    /// Shared, so that copying the overlay for the next write copies no lists.
    pub(super) guardians: Arc<[GuardianEdge]>,
}

impl Overlay {
    #[inline]
    pub(super) fn get(&self, pid: u64) -> Option<&OverlayPerson> {
        if self.persons.is_empty() || !self.filter.may_contain(pid) {
            return None;
        }
        self.persons.get(&pid)
    }

    pub(super) fn person_ref(p: &OverlayPerson) -> PersonRef<'_> {
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
pub(super) struct Current {
    pub(super) key: u64,
    pub(super) attains: [i32; 2],
    pub(super) guardians: Vec<GuardianEdge>,
}

pub(super) fn current(base: &Table, ov: &Overlay, pid: u64) -> Option<Current> {
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
pub(super) fn current_children(base: &Table, ov: &Overlay, g: u64) -> Vec<u64> {
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
    pub(super) fn put(&mut self, person: OverlayPerson, before: Option<&Current>) {
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
