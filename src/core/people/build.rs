//! Building a base from population records: upserts collected, age
//! instants computed once per birthday, slots and side tables filled.

use super::*;

/// One population record as given to the builder.
#[derive(Debug, Clone)]
pub(super) struct Record {
    pub(super) id: Pid,
    pub(super) birth_date: Option<Date>,
    pub(super) protected: bool,
    pub(super) guardians: std::ops::Range<u32>,
}

/// Collects population records and builds [`People`].
///
/// A later record for the same person replaces an earlier one (upsert), its
/// guardians included.
#[derive(Debug, Default)]
pub struct PeopleBuilder {
    pub(super) records: Vec<Record>,
    pub(super) guardians: Vec<Pid>,
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
        // The kept numbers, ascending: `implicit` is checked against them
        // by one merge, not a binary search through `records` per guardian.
        let mut kept: Vec<u64> = Vec::with_capacity(order.len());
        for (k, w) in order.iter().enumerate() {
            if order.get(k + 1).is_none_or(|next| next.0 != w.0) {
                keep.push(w.1);
                kept.push(w.0);
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
        let mut recorded = kept.iter().copied().peekable();
        implicit.retain(|&g| {
            while recorded.next_if(|&id| id < g).is_some() {}
            recorded.peek() != Some(&g)
        });
        drop(kept);

        let limits = (settings.guardian_age_limit, settings.own_journal_age, settings.leap_day);
        let mut table = Table::empty(capacity_for(keep.len() + implicit.len()), limits);
        let mut midnights = Midnights::new(settings, tz);
        let mut edges: Vec<GuardianEdge> = Vec::new();
        // Persons with guardians first: they are the subjects the portal
        // asks about, and in linear probing whoever is placed first sits
        // closest to home, so a check's one miss rarely becomes two
        // (see `Table::find`). Their guardians and everyone else after.
        for children_first in [true, false] {
            for &k in &keep {
                let r = &self.records[k as usize];
                if guardians_of(r).is_empty() == children_first {
                    continue;
                }
                let birth = r.birth_date.or_else(|| r.id.birth_date());
                let slot = midnights.slot(r.id, birth, r.protected);
                edges.clear();
                edges.extend(guardians_of(r).iter().map(|g| GuardianEdge(g.get())));
                table.put_person(slot.key | RECORDED, slot.attains, &edges);
            }
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
pub(super) struct Midnights<'a> {
    pub(super) settings: &'a Settings,
    pub(super) tz: &'a TimeZone,
    pub(super) memo: HashMap<Date, Option<i32>, Hasher>,
}

impl<'a> Midnights<'a> {
    pub(super) fn new(settings: &'a Settings, tz: &'a TimeZone) -> Self {
        Midnights {
            settings,
            tz,
            memo: HashMap::default(),
        }
    }

    /// Minutes since the epoch at which `birth` attains `age`; `None` when the
    /// date is out of range (the person is then treated as of unknown age).
    pub(super) fn attains(&mut self, birth: Date, age: u8) -> Option<i32> {
        let day = time::birthday(birth, age, self.settings.leap_day)?;
        let tz = self.tz;
        *self.memo.entry(day).or_insert_with(|| {
            let nanos = time::local_midnight(day, tz)?.as_nanos();
            // Round up to a whole minute (only pre-1879 local mean time has seconds).
            i32::try_from(nanos.div_euclid(NANOS_PER_MINUTE) + i64::from(nanos.rem_euclid(NANOS_PER_MINUTE) != 0)).ok()
        })
    }

    pub(super) fn slot(&mut self, pid: Pid, birth: Option<Date>, protected: bool) -> Slot {
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
