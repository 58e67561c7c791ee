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

use crate::identity::Pid;
use crate::model::{Rule, Settings, SettingsError};
use crate::time::{self, TimeError};

pub use crate::people::{AgeLimits, People, PeopleBuilder};

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
}

/// Every restriction and grant, grouped by subject.
///
/// Invariants: each subject's rules are contiguous in `rules`, sorted by
/// `valid_from` then id; lifted and expired rules are kept so that a question
/// about a past instant gets the answer that held then; `filter` has the bit
/// of every subject with rules set, so that the hot path skips the hash
/// lookup for the great majority of subjects, who have none.
#[derive(Debug)]
pub struct Rules {
    by_subject: HashMap<Pid, (u32, u32), Hasher>,
    rules: Vec<Rule>,
    filter: Vec<u64>,
    filter_shift: u32,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules::new(Vec::new())
    }
}

impl Rules {
    /// Groups `rules` by subject.
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
        // About 16 bits per subject: one in twenty subjects without rules
        // still takes the hash lookup.
        let bits = (by_subject.len() * 16).next_power_of_two().max(1024);
        let filter_shift = 64 - bits.trailing_zeros();
        let mut filter = vec![0u64; bits / 64];
        for subject in by_subject.keys() {
            let b = filter_bit(*subject, filter_shift);
            filter[b / 64] |= 1 << (b % 64);
        }
        Rules {
            by_subject,
            rules,
            filter,
            filter_shift,
        }
    }

    /// The rules on `subject`, oldest first.
    #[inline]
    pub fn for_subject(&self, subject: Pid) -> &[Rule] {
        let b = filter_bit(subject, self.filter_shift);
        if self.filter[b / 64] & (1 << (b % 64)) == 0 {
            return &[];
        }
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

/// Fibonacci hashing onto the filter's bits.
#[inline]
fn filter_bit(pid: Pid, shift: u32) -> usize {
    (pid.get().wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize
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
        self.people.heap_bytes()
            + self.rules.rules.capacity() * std::mem::size_of::<Rule>()
            + self.rules.by_subject.capacity() * (std::mem::size_of::<(Pid, (u32, u32))>() + 1)
            + self.rules.filter.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{build, pid};
    use crate::time::Instant;

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
