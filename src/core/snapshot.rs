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

use jiff::tz::TimeZone;

use crate::core::filter::Filter;
use crate::core::identity::Pid;
use crate::core::model::{Rule, Settings, SettingsError};
use crate::core::time::{self, TimeError};

pub use crate::core::people::{AgeLimits, People, PeopleBuilder, PersonRecord};

type Hasher = foldhash::fast::RandomState;

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
    /// A person names a guardian the table does not hold (a bug, refused).
    #[error("a guardian is missing from the population index")]
    MissingGuardian,
}

/// Every restriction and grant, grouped by subject: a base shared between
/// snapshots plus a small overlay of the subjects whose rules changed since.
///
/// Invariants: each subject's rules are sorted by `valid_from` then id;
/// lifted and expired rules are kept so that a question about a past
/// instant gets the answer that held then; a subject in the overlay has its
/// whole current list there; each filter holds every subject of its map, so
/// that the hot path skips the hash lookups for the great majority of
/// subjects, who have no rules.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    base: Arc<RuleTable>,
    overlay: Arc<RuleOverlay>,
    len: usize,
}

#[derive(Debug, Default)]
struct RuleTable {
    by_subject: HashMap<Pid, (u32, u32), Hasher>,
    rules: Vec<Rule>,
    filter: Filter,
}

#[derive(Debug, Clone, Default)]
struct RuleOverlay {
    by_subject: HashMap<Pid, Arc<[Rule]>, Hasher>,
    filter: Filter,
}

impl Rules {
    /// Groups `rules` by subject into a new base.
    pub fn new(mut rules: Vec<Rule>) -> Rules {
        rules.sort_by_key(|r| (r.subject, r.valid_from, r.id));
        let mut by_subject: HashMap<Pid, (u32, u32), Hasher> = HashMap::default();
        let mut start = 0;
        while start < rules.len() {
            let subject = rules[start].subject;
            let end = start + rules[start..].iter().take_while(|r| r.subject == subject).count();
            by_subject.insert(subject, (start as u32, end as u32));
            start = end;
        }
        let filter = Filter::new(by_subject.len(), by_subject.keys().map(|p| p.get()));
        Rules {
            len: rules.len(),
            base: Arc::new(RuleTable {
                by_subject,
                rules,
                filter,
            }),
            overlay: Arc::default(),
        }
    }

    /// The rules on `subject`, oldest first.
    #[inline]
    pub fn for_subject(&self, subject: Pid) -> &[Rule] {
        let key = subject.get();
        if self.overlay.filter.may_contain(key)
            && let Some(list) = self.overlay.by_subject.get(&subject)
        {
            return list;
        }
        if !self.base.filter.may_contain(key) {
            return &[];
        }
        match self.base.by_subject.get(&subject) {
            Some(&(s, e)) => &self.base.rules[s as usize..e as usize],
            None => &[],
        }
    }

    /// Every rule, grouped by subject.
    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        let overlay = &self.overlay;
        self.base
            .rules
            .iter()
            .filter(move |r| !overlay.by_subject.contains_key(&r.subject))
            .chain(overlay.by_subject.values().flat_map(|l| l.iter()))
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of subjects in the overlay (whose rules changed since the base).
    pub fn overlay_len(&self) -> usize {
        self.overlay.by_subject.len()
    }

    /// The same rules with `changed` added or replaced (by id), sharing the
    /// base: the write path for restrictions and grants.
    pub fn apply(&self, changed: &[Rule]) -> Rules {
        let mut overlay = (*self.overlay).clone();
        let mut len = self.len;
        for rule in changed {
            let mut list: Vec<Rule> = match overlay.by_subject.get(&rule.subject) {
                Some(l) => l.to_vec(),
                None => self.for_subject(rule.subject).to_vec(),
            };
            match list.iter_mut().find(|r| r.id == rule.id) {
                Some(r) => *r = rule.clone(),
                None => {
                    list.push(rule.clone());
                    len += 1;
                }
            }
            list.sort_by_key(|r| (r.valid_from, r.id));
            overlay.by_subject.insert(rule.subject, Arc::from(list));
        }
        overlay.filter = Filter::new(overlay.by_subject.len(), overlay.by_subject.keys().map(|p| p.get()));
        Rules {
            base: self.base.clone(),
            overlay: Arc::new(overlay),
            len,
        }
    }

    /// A new base holding everything, with an empty overlay.
    pub fn fold(&self) -> Rules {
        if self.overlay.by_subject.is_empty() {
            return self.clone();
        }
        Rules::new(self.iter().cloned().collect())
    }

    fn heap_bytes(&self) -> usize {
        let b = &self.base;
        b.rules.capacity() * std::mem::size_of::<Rule>()
            + b.by_subject.capacity() * (std::mem::size_of::<(Pid, (u32, u32))>() + 1)
            + b.filter.heap_bytes()
            + self
                .overlay
                .by_subject
                .values()
                .map(|l| l.len() * std::mem::size_of::<Rule>())
                .sum::<usize>()
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
        if people.limits() != (settings.guardian_age_limit, settings.own_journal_age, settings.leap_day) {
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
        self.people.heap_bytes() + self.rules.heap_bytes()
    }

    /// The snapshot after a committed change at `revision`: `persons`
    /// upserted and `rules` added or replaced, both halves sharing their
    /// bases with this one. Cheap for small changes; see [`Snapshot::fold`].
    pub fn apply(&self, revision: u64, persons: &[PersonRecord], rules: &[Rule]) -> Result<Snapshot, BuildError> {
        let people = if persons.is_empty() {
            self.people.clone()
        } else {
            Arc::new(self.people.apply(persons, &self.settings, &self.tz)?)
        };
        let rules = if rules.is_empty() {
            self.rules.clone()
        } else {
            Arc::new(self.rules.apply(rules))
        };
        Ok(Snapshot {
            revision,
            people,
            rules,
            ..self.clone()
        })
    }

    /// The same answers from new bases with empty overlays, at the same
    /// revision. Takes seconds at national scale: done off the hot path.
    pub fn fold(&self) -> Result<Snapshot, BuildError> {
        Ok(Snapshot {
            people: Arc::new(self.people.fold()?),
            rules: Arc::new(self.rules.fold()),
            ..self.clone()
        })
    }

    /// How many entries the overlays hold: persons plus subjects with
    /// changed rules. Zero right after a build or a fold.
    pub fn overlay_len(&self) -> usize {
        self.people.overlay_len() + self.rules.overlay_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::time::Instant;
    use crate::testing::{build, pid};

    /// A seal on `subject` from `from`, with id `id`.
    fn seal(id: u64, subject: Pid, from: i64) -> Rule {
        Rule {
            id: crate::core::model::RuleId(id),
            kind: crate::core::model::RuleKind::Seal,
            subject,
            guardian: None,
            services: crate::core::model::Services::JOURNAL,
            valid_from: Instant::from_nanos(from),
            valid_until: None,
            lifted_at: None,
            care_units: None,
        }
    }

    #[test]
    fn snapshot_refuses_people_built_under_other_age_settings() {
        let people = Arc::new(build(PeopleBuilder::new()));
        let other = Settings {
            guardian_age_limit: 12,
            ..Settings::default()
        };
        let err = Snapshot::new(1, Arc::new(other), people.clone(), Arc::new(Rules::default()));
        assert!(matches!(err, Err(BuildError::SettingsMismatch)));
        let snap = Snapshot::new(1, Arc::new(Settings::default()), people, Arc::new(Rules::default())).unwrap();
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
        let rule = seal;
        let rules = Rules::new(vec![rule(1, a, 30), rule(2, b, 10), rule(3, a, 20)]);
        let ids: Vec<u64> = rules.for_subject(a).iter().map(|r| r.id.0).collect();
        assert_eq!(ids, vec![3, 1]);
        assert_eq!(rules.for_subject(b).len(), 1);
        assert!(rules.for_subject(pid("197701012382")).is_empty());
    }

    #[test]
    fn rules_apply_replaces_by_id_and_fold_keeps_every_rule() {
        let (a, b) = (pid("201509162390"), pid("201801012392"));
        let rule = seal;
        let base = Rules::new(vec![rule(1, a, 30), rule(2, b, 10)]);
        let mut lifted = rule(1, a, 30);
        lifted.lifted_at = Some(Instant::from_nanos(40));
        let next = base.apply(&[lifted.clone(), rule(3, a, 20)]);
        assert_eq!(next.len(), 3);
        assert_eq!(next.overlay_len(), 1);
        let ids: Vec<u64> = next.for_subject(a).iter().map(|r| r.id.0).collect();
        assert_eq!(ids, vec![3, 1], "in start order");
        assert_eq!(next.for_subject(a)[1].lifted_at, lifted.lifted_at);
        assert_eq!(next.for_subject(b).len(), 1, "untouched subjects come from the base");
        assert_eq!(base.for_subject(a).len(), 1, "the old rules are untouched");
        let folded = next.fold();
        assert_eq!(folded.overlay_len(), 0);
        assert_eq!(folded.len(), 3);
        let mut all: Vec<u64> = folded.iter().map(|r| r.id.0).collect();
        all.sort();
        assert_eq!(all, vec![1, 2, 3]);
        assert_eq!(folded.for_subject(a), next.for_subject(a));
    }
}
