//! The immutable snapshot every check is answered from, and how it is built.
//!
//! A [`Snapshot`] is two independently built halves behind `Arc`s, so that a
//! write touching only restrictions and grants rebuilds the small half and
//! shares the big one:
//!
//! - [`People`]: every person, their guardians and their children, with the
//!   instants at which each person attains the two age limits precomputed in
//!   Europe/Stockholm. Built by [`PeopleBuilder`].
//! - [`Rules`]: every restriction and grant, lifted ones too, grouped by
//!   subject and sorted by `valid_from`.
//!
//! Building validates and precomputes everything the hot path needs, so that
//! a check is one or two hash lookups and a few integer comparisons.

use std::collections::HashMap;
use std::sync::Arc;

use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::identity::Pid;
use crate::model::{Rule, Settings, SettingsError};
use crate::time::{self, Instant, LeapDay, TimeError};

type Hasher = foldhash::fast::RandomState;

const PROTECTED: u64 = 1 << 63;
const BIRTH_KNOWN: u64 = 1 << 62;
const PID_MASK: u64 = (1 << 48) - 1;

/// One person's row: 24 bytes.
///
/// `pid_flags` holds the canonical number in its low 48 bits and the
/// `PROTECTED` and `BIRTH_KNOWN` flags in its high bits; `attains` are the
/// instants (nanoseconds) of the guardian age limit and the own-journal age,
/// meaningful only when `BIRTH_KNOWN` is set.
#[derive(Debug, Clone, Copy)]
struct Row {
    pid_flags: u64,
    attains: [i64; 2],
}

/// A guardian as seen from a child: their number with the `PROTECTED` flag of
/// the guardian's own record folded in, so the hot path needs no second lookup.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct GuardianEdge(u64);

impl GuardianEdge {
    pub(crate) fn pid_value(self) -> u64 {
        self.0 & PID_MASK
    }

    pub(crate) fn protected(self) -> bool {
        self.0 & PROTECTED != 0
    }
}

/// The moments a person attains the two age limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgeLimits {
    /// Attains the guardian age limit (13).
    pub guardian_limit: Instant,
    /// Attains the own-journal age (16).
    pub own_journal: Instant,
}

/// A person found in the snapshot.
#[derive(Clone, Copy)]
pub(crate) struct PersonRef<'s> {
    pub(crate) pid: Pid,
    pub(crate) protected: bool,
    pub(crate) ages: Option<AgeLimits>,
    pub(crate) guardians: &'s [GuardianEdge],
    pub(crate) children: &'s [u32],
}

/// Every person, their guardianships in both directions, and their age limits.
///
/// Invariants: every guardian named by any record is itself a person here
/// (with `protected = false` and the birth date of their number when they have
/// no record of their own); `guardian_edges` and `child_edges` are exact
/// inverses; a person's guardian edges carry the guardian's own protected flag;
/// `attains` were computed with the age limits and leap-day rule recorded in
/// `limits`.
#[derive(Debug)]
pub struct People {
    index: HashMap<Pid, u32, Hasher>,
    rows: Vec<Row>,
    guardian_offsets: Vec<u32>,
    guardian_edges: Vec<GuardianEdge>,
    child_offsets: Vec<u32>,
    child_edges: Vec<u32>,
    limits: (u8, u8, LeapDay),
    records: usize,
}

impl std::fmt::Debug for GuardianEdge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuardianEdge(<redacted>)")
    }
}

/// Why a snapshot cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The settings are unusable.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The time zone database failed.
    #[error(transparent)]
    Time(#[from] TimeError),
    /// More people than the 32-bit index holds.
    #[error("too many persons for one snapshot")]
    TooLarge,
    /// A birth date whose age limits fall outside 1677–2262.
    #[error("a birth date is out of the supported range (1677-2262)")]
    BirthDateRange,
    /// `People` was built under other age settings than the snapshot's.
    #[error("the population index was built with other age settings")]
    SettingsMismatch,
}

impl People {
    pub(crate) fn get(&self, pid: Pid) -> Option<PersonRef<'_>> {
        let &i = self.index.get(&pid)?;
        Some(self.at(i as usize))
    }

    fn at(&self, i: usize) -> PersonRef<'_> {
        let row = self.rows[i];
        let g = self.guardian_offsets[i] as usize..self.guardian_offsets[i + 1] as usize;
        let c = self.child_offsets[i] as usize..self.child_offsets[i + 1] as usize;
        PersonRef {
            pid: pid_of(row.pid_flags),
            protected: row.pid_flags & PROTECTED != 0,
            ages: (row.pid_flags & BIRTH_KNOWN != 0).then(|| AgeLimits {
                guardian_limit: Instant::from_nanos(row.attains[0]),
                own_journal: Instant::from_nanos(row.attains[1]),
            }),
            guardians: &self.guardian_edges[g],
            children: &self.child_edges[c],
        }
    }

    pub(crate) fn child(&self, i: u32) -> PersonRef<'_> {
        self.at(i as usize)
    }

    /// The registered guardians of `pid` (none if unknown).
    pub fn guardians_of(&self, pid: Pid) -> impl Iterator<Item = Pid> + '_ {
        let edges = self.get(pid).map(|p| p.guardians).unwrap_or(&[]);
        edges.iter().map(|e| Pid::from_validated(e.pid_value()))
    }

    /// The persons `pid` is a registered guardian of (none if unknown).
    pub fn children_of(&self, pid: Pid) -> impl Iterator<Item = Pid> + '_ {
        let kids = self.get(pid).map(|p| p.children).unwrap_or(&[]);
        kids.iter().map(|&i| self.at(i as usize).pid)
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
        self.rows.len()
    }

    /// Whether there is nobody.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Number of persons who came with a record of their own.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Number of guardianship links.
    pub fn links(&self) -> usize {
        self.guardian_edges.len()
    }

    /// Heap bytes held, counted from capacities (hash table: buckets plus one
    /// control byte each).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let buckets = self.index.capacity().max(1).next_power_of_two() * 8 / 7;
        buckets * (size_of::<(Pid, u32)>() + 1)
            + self.rows.capacity() * size_of::<Row>()
            + (self.guardian_offsets.capacity()
                + self.child_offsets.capacity()
                + self.child_edges.capacity())
                * size_of::<u32>()
            + self.guardian_edges.capacity() * size_of::<GuardianEdge>()
    }

    /// The age limits of someone with no record, from their number's date.
    pub(crate) fn ages_from_number(
        pid: Pid,
        settings: &Settings,
        tz: &TimeZone,
    ) -> Option<AgeLimits> {
        let birth = pid.birth_date()?;
        Some(AgeLimits {
            guardian_limit: time::attains_age(
                birth,
                settings.guardian_age_limit,
                settings.leap_day,
                tz,
            )?,
            own_journal: time::attains_age(birth, settings.own_journal_age, settings.leap_day, tz)?,
        })
    }
}

fn pid_of(pid_flags: u64) -> Pid {
    // Rows are only ever written from valid `Pid`s.
    Pid::from_validated(pid_flags & PID_MASK)
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
    /// `birth_date` is the population register's, when it has one.
    pub fn person(
        &mut self,
        id: Pid,
        birth_date: Option<Date>,
        protected: bool,
        guardians: &[Pid],
    ) -> &mut Self {
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
    pub fn build(mut self, settings: &Settings, tz: &TimeZone) -> Result<People, BuildError> {
        settings.validate()?;
        if self.guardians.len() >= u32::MAX as usize
            || self.records.len() >= (u32::MAX / 2) as usize
        {
            return Err(BuildError::TooLarge);
        }
        // Upsert: keep the last record of each person.
        let mut order: Vec<u32> = (0..self.records.len() as u32).collect();
        order.sort_by_key(|&i| self.records[i as usize].id);
        let mut keep: Vec<u32> = Vec::with_capacity(order.len());
        for i in order {
            match keep.last() {
                Some(&k) if self.records[k as usize].id == self.records[i as usize].id => {
                    if let Some(last) = keep.last_mut() {
                        *last = i;
                    }
                }
                _ => keep.push(i),
            }
        }
        // Guardians without a record of their own become implicit persons.
        let mut implicit: Vec<Pid> = keep
            .iter()
            .flat_map(|&k| {
                let r = &self.records[k as usize];
                self.guardians[r.guardians.start as usize..r.guardians.end as usize]
                    .iter()
                    .copied()
            })
            .collect();
        implicit.sort_unstable();
        implicit.dedup();
        implicit.retain(|g| {
            keep.binary_search_by_key(g, |&k| self.records[k as usize].id)
                .is_err()
        });

        let n = keep.len() + implicit.len();
        let mut index: HashMap<Pid, u32, Hasher> =
            HashMap::with_capacity_and_hasher(n, Hasher::default());
        let mut rows = Vec::with_capacity(n);
        let mut midnights = Midnights::new(settings, tz);
        for &k in &keep {
            let r = &self.records[k as usize];
            let birth = r.birth_date.or_else(|| r.id.birth_date());
            index.insert(r.id, rows.len() as u32);
            rows.push(midnights.row(r.id, birth, r.protected)?);
        }
        for &g in &implicit {
            index.insert(g, rows.len() as u32);
            rows.push(midnights.row(g, g.birth_date(), false)?);
        }

        // Guardian edges in row order, each with the guardian's protected flag.
        let mut guardian_offsets = Vec::with_capacity(n + 1);
        let mut guardian_edges = Vec::with_capacity(self.guardians.len());
        let mut child_counts = vec![0u32; n + 1];
        guardian_offsets.push(0);
        for &k in &keep {
            let r = &self.records[k as usize];
            for g in &self.guardians[r.guardians.start as usize..r.guardians.end as usize] {
                let gi = index.get(g).copied().unwrap_or(0) as usize;
                let protected = rows[gi].pid_flags & PROTECTED;
                guardian_edges.push(GuardianEdge(g.get() | protected));
                child_counts[gi + 1] += 1;
            }
            guardian_offsets.push(guardian_edges.len() as u32);
        }
        guardian_offsets.resize(n + 1, guardian_edges.len() as u32);

        // Child edges: the exact inverse, by counting sort.
        let mut child_offsets = child_counts;
        for i in 1..=n {
            child_offsets[i] += child_offsets[i - 1];
        }
        let mut fill = child_offsets.clone();
        let mut child_edges = vec![0u32; guardian_edges.len()];
        for (child, w) in guardian_offsets.windows(2).enumerate() {
            for e in &guardian_edges[w[0] as usize..w[1] as usize] {
                let gi = index
                    .get(&Pid::from_validated(e.pid_value()))
                    .copied()
                    .unwrap_or(0) as usize;
                child_edges[fill[gi] as usize] = child as u32;
                fill[gi] += 1;
            }
        }
        self.records.clear();
        self.guardians.clear();
        Ok(People {
            index,
            rows,
            guardian_offsets,
            guardian_edges,
            child_offsets,
            child_edges,
            limits: (
                settings.guardian_age_limit,
                settings.own_journal_age,
                settings.leap_day,
            ),
            records: keep.len(),
        })
    }
}

/// Computes rows, remembering the local midnight of each date: a national
/// population has millions of people but only tens of thousands of birthdays.
struct Midnights<'a> {
    settings: &'a Settings,
    tz: &'a TimeZone,
    memo: HashMap<Date, Option<Instant>, Hasher>,
}

impl<'a> Midnights<'a> {
    fn new(settings: &'a Settings, tz: &'a TimeZone) -> Self {
        Midnights {
            settings,
            tz,
            memo: HashMap::default(),
        }
    }

    fn attains(&mut self, birth: Date, age: u8) -> Result<Instant, BuildError> {
        let day =
            time::birthday(birth, age, self.settings.leap_day).ok_or(BuildError::BirthDateRange)?;
        let tz = self.tz;
        let at = *self
            .memo
            .entry(day)
            .or_insert_with(|| time::local_midnight(day, tz));
        at.ok_or(BuildError::BirthDateRange)
    }

    fn row(&mut self, pid: Pid, birth: Option<Date>, protected: bool) -> Result<Row, BuildError> {
        let mut pid_flags = pid.get();
        if protected {
            pid_flags |= PROTECTED;
        }
        let mut attains = [0, 0];
        if let Some(birth) = birth {
            pid_flags |= BIRTH_KNOWN;
            attains[0] = self
                .attains(birth, self.settings.guardian_age_limit)?
                .as_nanos();
            attains[1] = self
                .attains(birth, self.settings.own_journal_age)?
                .as_nanos();
        }
        Ok(Row { pid_flags, attains })
    }
}

/// Every restriction and grant, grouped by subject.
///
/// Invariants: each subject's rules are contiguous in `rules`, sorted by
/// `valid_from` then id; lifted and expired rules are kept so that a question
/// about a past instant gets the answer that held then.
#[derive(Debug, Default)]
pub struct Rules {
    by_subject: HashMap<Pid, (u32, u32), Hasher>,
    rules: Vec<Rule>,
}

impl Rules {
    /// Groups `rules` by subject.
    pub fn new(mut rules: Vec<Rule>) -> Rules {
        rules.sort_by_key(|r| (r.subject, r.valid_from, r.id));
        let mut by_subject: HashMap<Pid, (u32, u32), Hasher> = HashMap::default();
        let mut start = 0;
        while start < rules.len() {
            let subject = rules[start].subject;
            let end = start
                + rules[start..]
                    .iter()
                    .take_while(|r| r.subject == subject)
                    .count();
            by_subject.insert(subject, (start as u32, end as u32));
            start = end;
        }
        Rules { by_subject, rules }
    }

    /// The rules on `subject`, oldest first.
    pub fn for_subject(&self, subject: Pid) -> &[Rule] {
        match self.by_subject.get(&subject) {
            Some(&(s, e)) => &self.rules[s as usize..e as usize],
            None => &[],
        }
    }

    /// Every rule.
    pub fn all(&self) -> &[Rule] {
        &self.rules
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// Everything a check needs, immutable, at one revision.
#[derive(Debug, Clone)]
pub struct Snapshot {
    revision: u64,
    settings: Arc<Settings>,
    tz: TimeZone,
    people: Arc<People>,
    rules: Arc<Rules>,
}

impl Snapshot {
    /// Puts the halves together; `people` must have been built with the same
    /// age settings.
    pub fn new(
        revision: u64,
        settings: Arc<Settings>,
        people: Arc<People>,
        rules: Arc<Rules>,
    ) -> Result<Snapshot, BuildError> {
        settings.validate()?;
        if people.limits
            != (
                settings.guardian_age_limit,
                settings.own_journal_age,
                settings.leap_day,
            )
        {
            return Err(BuildError::SettingsMismatch);
        }
        Ok(Snapshot {
            revision,
            settings,
            tz: time::stockholm()?,
            people,
            rules,
        })
    }

    /// The same people with other rules, at another revision: the cheap path
    /// for writes that touch only restrictions and grants.
    pub fn with_rules(&self, revision: u64, rules: Arc<Rules>) -> Snapshot {
        Snapshot {
            revision,
            rules,
            ..self.clone()
        }
    }

    /// The revision this snapshot reflects.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The region settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Europe/Stockholm.
    pub fn tz(&self) -> &TimeZone {
        &self.tz
    }

    /// The population half.
    pub fn people(&self) -> &People {
        &self.people
    }

    /// The restrictions-and-grants half.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Heap bytes held by both halves (rules counted by their fixed size).
    pub fn heap_bytes(&self) -> usize {
        self.people.heap_bytes() + self.rules.rules.capacity() * std::mem::size_of::<Rule>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn pid(s: &str) -> Pid {
        Pid::parse(s, date(2026, 11, 23)).unwrap()
    }

    fn build(b: PeopleBuilder) -> People {
        b.build(&Settings::default(), &time::stockholm().unwrap())
            .unwrap()
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
        b.person(kid1, None, false, &[g1, g2])
            .person(kid2, None, false, &[g1]);
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
    }

    #[test]
    fn a_later_record_replaces_an_earlier_one() {
        let (kid, g1, g2) = (
            pid("201509162390"),
            pid("197701012382"),
            pid("198001022386"),
        );
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
        let expected = time::attains_age(
            date(2015, 9, 1),
            13,
            LeapDay::Feb28,
            &time::stockholm().unwrap(),
        );
        assert_eq!(people.age_limits(kid).map(|a| a.guardian_limit), expected);
    }

    #[test]
    fn a_guardian_edge_carries_the_guardians_own_protected_flag() {
        let (kid, g1, g2) = (
            pid("201509162390"),
            pid("197701012382"),
            pid("198001022386"),
        );
        let mut b = PeopleBuilder::new();
        b.person(kid, None, false, &[g1, g2, g1, kid]);
        b.person(g2, None, true, &[]);
        let people = build(b);
        let edges = people.get(kid).unwrap().guardians;
        assert_eq!(
            edges.len(),
            2,
            "duplicates and the person themself are dropped"
        );
        assert!(!edges[0].protected());
        assert!(edges[1].protected());
    }

    #[test]
    fn snapshot_refuses_people_built_under_other_age_settings() {
        let people = Arc::new(build(PeopleBuilder::new()));
        let other = Settings {
            guardian_age_limit: 12,
            ..Settings::default()
        };
        let err = Snapshot::new(
            1,
            Arc::new(other),
            people.clone(),
            Arc::new(Rules::default()),
        );
        assert!(matches!(err, Err(BuildError::SettingsMismatch)));
        let snap = Snapshot::new(
            1,
            Arc::new(Settings::default()),
            people,
            Arc::new(Rules::default()),
        )
        .unwrap();
        let next = snap.with_rules(2, Arc::new(Rules::default()));
        assert_eq!(next.revision(), 2);
        assert!(
            Arc::ptr_eq(&snap.people, &next.people),
            "a rules-only change shares the population"
        );
    }

    #[test]
    fn rules_are_grouped_by_subject_in_start_order() {
        let (a, b) = (pid("201509162390"), pid("201801012392"));
        let rule = |id, subject, from: i64| Rule {
            id: crate::model::RuleId(id),
            kind: crate::model::RuleKind::Seal,
            subject,
            guardian: None,
            services: crate::model::Services::JOURNAL,
            valid_from: Instant::from_nanos(from),
            valid_until: None,
            lifted_at: None,
            care_units: None,
        };
        let rules = Rules::new(vec![rule(1, a, 30), rule(2, b, 10), rule(3, a, 20)]);
        let ids: Vec<u64> = rules.for_subject(a).iter().map(|r| r.id.0).collect();
        assert_eq!(ids, vec![3, 1]);
        assert_eq!(rules.for_subject(b).len(), 1);
        assert!(rules.for_subject(pid("197701012382")).is_empty());
    }
}
