//! Explanations for support staff (SPEC §10): why a question got its
//! answer. "I could see my son's journal yesterday, why not today?"
//!
//! [`explain`] builds a snapshot of just the facts of one pair (the
//! subject's record, their guardians' and the asker's, the subject's
//! restrictions and grants) and asks [`decide`] on it, so the answer is the
//! answer, not a second opinion. It then says which row of SPEC §3's table
//! decided it, the data that row used (birth date and where it came from,
//! the age at the instant, the guardianship, the protection flags), and for
//! every restriction and grant on the subject why it did or did not apply.
//! The facts may be today's or, from the store's history, those of any
//! earlier revision.

use std::sync::Arc;

use jiff::civil::Date;

use crate::core::decide::{Decision, Listing, Query, Reason, decide};
use crate::core::identity::Pid;
use crate::core::model::{Rule, RuleKind, Service, Settings};
use crate::core::people::{PeopleBuilder, PersonRecord};
use crate::core::snapshot::{BuildError, Rules, Snapshot};
use crate::core::time::{self, Instant};

/// The facts of one pair at one revision.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The revision they are from.
    pub revision: u64,
    /// The region settings.
    pub settings: Arc<Settings>,
    /// The population records of the subject, their guardians and the
    /// asker, as far as the register has them.
    pub records: Vec<PersonRecord>,
    /// Every restriction and grant on the subject, as they stood.
    pub rules: Vec<Rule>,
}

/// Which table of SPEC §3 decided, and which row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// The subject asking about themself (`true`) or someone else.
    pub own: bool,
    /// The row, from 1.
    pub number: u8,
}

impl Row {
    /// The row as SPEC §3 words it.
    pub fn text(self) -> &'static str {
        match (self.own, self.number) {
            (true, 1) => "birth date unknown",
            (true, 2) => "e-services and age under 13",
            (true, 3) => "journal, age under 16 and no active early access",
            (true, 4) => "an active seal covering the service",
            (true, _) => "own access (with early access if it was needed)",
            (false, 1) => "not a registered guardian of the subject",
            (false, 2) => "the subject has protected identity",
            (false, 3) => "the guardian has protected identity",
            (false, 4) => "the subject's birth date is unknown",
            (false, 5) => "the subject is 13 or older, without extended access to the journal",
            (false, 6) => "an active seal covering the service",
            (false, 7) => "an active block covering the service and this guardian",
            (false, _) => "guardian (with extended access if it was used)",
        }
    }
}

/// Where the subject's birth date came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BirthSource {
    /// The population register's record.
    Register,
    /// The identity number's own date.
    Number,
    /// Neither has one (a samordningsnummer without a date, say).
    Unknown,
}

impl BirthSource {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            BirthSource::Register => "register",
            BirthSource::Number => "number",
            BirthSource::Unknown => "unknown",
        }
    }
}

/// A guardian of the subject, as the register has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardianFact {
    /// Who.
    pub pid: Pid,
    /// Protected identity.
    pub protected: bool,
}

/// The data the decision used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    /// The subject asks about themself.
    pub own: bool,
    /// The subject has a population record.
    pub subject_registered: bool,
    /// The subject's birth date, if known.
    pub birth_date: Option<Date>,
    /// Where it came from.
    pub birth_source: BirthSource,
    /// The subject's age at the instant (completed years), if known.
    pub age: Option<u8>,
    /// The subject has protected identity.
    pub subject_protected: bool,
    /// The subject's registered guardians.
    pub guardians: Vec<GuardianFact>,
    /// The asker is one of them.
    pub actor_is_guardian: bool,
    /// The asker has protected identity (by their own record).
    pub actor_protected: bool,
}

/// Why a restriction or grant did or did not apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// It decided the answer.
    Decided,
    /// Lifted before the instant.
    Lifted,
    /// Its `valid_until` had passed.
    Expired,
    /// Its `valid_from` had not come yet.
    NotYetValid,
    /// It does not cover the service.
    OtherService,
    /// It names another guardian.
    OtherGuardian,
    /// Blocks and extended access concern guardians, not the subject.
    NotForOwnAccess,
    /// Early access concerns the subject only.
    OnlyForOwnAccess,
    /// A grant, and the subject is 16 or older: grants end at 16.
    CappedAtSixteen,
    /// Early access, and the subject is not yet 13.
    BeforeThirteen,
    /// Extended access, and the subject is not yet 13: guardians have
    /// access without it.
    NotNeeded,
    /// It would apply, but an earlier row of the table decided (a seal over
    /// a block, a block over extended access, a refusal before either).
    Overridden,
}

impl Why {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Decided => "decided",
            Why::Lifted => "lifted",
            Why::Expired => "expired",
            Why::NotYetValid => "not_yet_valid",
            Why::OtherService => "other_service",
            Why::OtherGuardian => "other_guardian",
            Why::NotForOwnAccess => "not_for_own_access",
            Why::OnlyForOwnAccess => "only_for_own_access",
            Why::CappedAtSixteen => "capped_at_16",
            Why::BeforeThirteen => "before_13",
            Why::NotNeeded => "not_needed",
            Why::Overridden => "overridden",
        }
    }

    /// Whether the rule was in force for this question (it decided or was
    /// overridden), as opposed to not concerning it.
    pub fn in_force(self) -> bool {
        matches!(self, Why::Decided | Why::Overridden)
    }
}

/// Why one question got its answer.
#[derive(Debug)]
pub struct Explanation {
    snapshot: Snapshot,
    query: Query,
    /// The row that decided.
    pub row: Row,
    /// The data it used.
    pub data: Data,
    /// Every restriction and grant on the subject, with why it did or did
    /// not apply.
    pub rules: Vec<(Rule, Why)>,
}

impl Explanation {
    /// The answer, exactly as `decide` gives it on these facts.
    pub fn decision(&self) -> Decision<'_> {
        decide(&self.snapshot, &self.query)
    }

    /// The question.
    pub fn query(&self) -> &Query {
        &self.query
    }

    /// The snapshot of the facts (for the time zone and settings).
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }
}

/// One person's answer on one service, owned (the console's tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// Who asks: a guardian, or the subject.
    pub actor: Pid,
    /// On which service.
    pub service: Service,
    /// Why.
    pub reason: Reason,
    /// How the portal lists the subject (`None`: own access).
    pub listing: Option<Listing>,
}

/// What each registered guardian of `subject`, and the subject, gets at
/// `at` on both services, from `facts` with `extra` added: the console's
/// preview of a rule before it is saved. Decided by `decide` itself.
pub fn answers(facts: &Facts, subject: Pid, extra: Option<&Rule>, at: Instant) -> Result<Vec<Answer>, BuildError> {
    let tz = time::stockholm()?;
    let mut people = PeopleBuilder::with_capacity(facts.records.len(), facts.records.len() * 2);
    for r in &facts.records {
        people.person(r.id, r.birth_date, r.protected, &r.guardians);
    }
    let mut rules: Vec<Rule> = facts.rules.iter().filter(|r| r.subject == subject).cloned().collect();
    rules.extend(extra.cloned());
    let snapshot = Snapshot::new(
        facts.revision,
        facts.settings.clone(),
        Arc::new(people.build(&facts.settings, &tz)?),
        Arc::new(Rules::new(rules)),
    )?;
    Ok(answers_on(&snapshot, subject, at))
}

/// What each registered guardian of `subject`, and the subject, gets at
/// `at` on both services, on `snapshot`.
pub fn answers_on(snapshot: &Snapshot, subject: Pid, at: Instant) -> Vec<Answer> {
    let mut actors: Vec<Pid> = snapshot.people().guardians_of(subject).collect();
    actors.push(subject);
    let mut out = Vec::with_capacity(actors.len() * 2);
    for actor in actors {
        for service in [Service::Journal, Service::Eservices] {
            let d = decide(
                snapshot,
                &Query {
                    actor,
                    subject,
                    service,
                    at,
                },
            );
            out.push(Answer {
                actor,
                service,
                reason: d.reason,
                listing: d.listing,
            });
        }
    }
    out
}

/// Explains `q` on `facts`.
pub fn explain(facts: &Facts, q: &Query) -> Result<Explanation, BuildError> {
    let tz = time::stockholm()?;
    let settings = &facts.settings;
    let mut people = PeopleBuilder::with_capacity(facts.records.len(), facts.records.len() * 2);
    for r in &facts.records {
        people.person(r.id, r.birth_date, r.protected, &r.guardians);
    }
    let subject_rules: Vec<Rule> = facts.rules.iter().filter(|r| r.subject == q.subject).cloned().collect();
    let snapshot = Snapshot::new(
        facts.revision,
        settings.clone(),
        Arc::new(people.build(settings, &tz)?),
        Arc::new(Rules::new(subject_rules.clone())),
    )?;
    let reason = decide(&snapshot, q).reason;

    let record = |pid: Pid| facts.records.iter().rev().find(|r| r.id == pid);
    let subject = record(q.subject);
    let own = q.actor == q.subject;
    let (birth_date, birth_source) = match (subject.and_then(|s| s.birth_date), q.subject.birth_date()) {
        (Some(d), _) => (Some(d), BirthSource::Register),
        (None, Some(d)) => (Some(d), BirthSource::Number),
        (None, None) => (None, BirthSource::Unknown),
    };
    let age = birth_date.and_then(|b| age_at(b, q.at, settings, &tz));
    let guardians: Vec<GuardianFact> = subject
        .map(|s| {
            s.guardians
                .iter()
                .map(|&g| GuardianFact {
                    pid: g,
                    protected: record(g).is_some_and(|r| r.protected),
                })
                .collect()
        })
        .unwrap_or_default();
    let data = Data {
        own,
        subject_registered: subject.is_some(),
        birth_date,
        birth_source,
        age,
        subject_protected: subject.is_some_and(|s| s.protected),
        actor_is_guardian: guardians.iter().any(|g| g.pid == q.actor),
        actor_protected: record(q.actor).is_some_and(|r| r.protected),
        guardians,
    };
    let row = row_of(reason, own, q.service, age, settings);
    let mut rules: Vec<(Rule, Why)> = subject_rules
        .into_iter()
        .map(|r| {
            let why = why(&r, q, reason, age, settings);
            (r, why)
        })
        .collect();
    rules.sort_by_key(|(r, _)| (r.valid_from, r.id.0));
    Ok(Explanation {
        snapshot,
        query: *q,
        row,
        data,
        rules,
    })
}

/// Completed years at `at`: the largest age already attained.
fn age_at(birth: Date, at: Instant, settings: &Settings, tz: &jiff::tz::TimeZone) -> Option<u8> {
    let attained = |n: u8| time::attains_age(birth, n, settings.leap_day, tz).is_some_and(|t| t <= at);
    if !attained(0) {
        return None;
    }
    (1..=150u8).find(|&n| !attained(n)).map(|n| n - 1)
}

/// The row of SPEC §3 a reason comes from.
fn row_of(reason: Reason, own: bool, service: Service, age: Option<u8>, s: &Settings) -> Row {
    let number = match (own, reason) {
        (true, Reason::UnknownAge) => 1,
        (true, Reason::BelowAge) => {
            if service == Service::Eservices && age.is_some_and(|a| a < s.guardian_age_limit) {
                2
            } else {
                3
            }
        }
        (true, Reason::Sealed) => 4,
        (true, _) => 5,
        (false, Reason::NotGuardian) => 1,
        (false, Reason::ProtectedSubject) => 2,
        (false, Reason::ProtectedGuardian) => 3,
        (false, Reason::UnknownAge) => 4,
        (false, Reason::AgedOut) => 5,
        (false, Reason::Sealed) => 6,
        (false, Reason::Blocked) => 7,
        (false, _) => 8,
    };
    Row { own, number }
}

/// Why `r` did or did not apply to `q`, which was answered `reason`.
fn why(r: &Rule, q: &Query, reason: Reason, age: Option<u8>, s: &Settings) -> Why {
    if r.lifted_at.is_some_and(|l| l <= q.at) {
        return Why::Lifted;
    }
    if r.valid_until.is_some_and(|u| u <= q.at) {
        return Why::Expired;
    }
    if r.valid_from > q.at {
        return Why::NotYetValid;
    }
    if !r.services.covers(q.service) {
        return Why::OtherService;
    }
    let own = q.actor == q.subject;
    match r.kind {
        RuleKind::Block | RuleKind::ExtendedAccess if own => return Why::NotForOwnAccess,
        RuleKind::EarlyAccess if !own => return Why::OnlyForOwnAccess,
        RuleKind::Block | RuleKind::ExtendedAccess if r.guardian.is_some_and(|g| g != q.actor) => {
            return Why::OtherGuardian;
        }
        _ => {}
    }
    if r.kind.is_grant() && age.is_some_and(|a| a >= s.own_journal_age) {
        return Why::CappedAtSixteen;
    }
    let young = age.is_some_and(|a| a < s.guardian_age_limit);
    match r.kind {
        RuleKind::EarlyAccess if young => return Why::BeforeThirteen,
        RuleKind::ExtendedAccess if young => return Why::NotNeeded,
        _ => {}
    }
    let decided = matches!(
        (r.kind, reason),
        (RuleKind::Seal, Reason::Sealed)
            | (RuleKind::Block, Reason::Blocked)
            | (RuleKind::ExtendedAccess, Reason::ExtendedAccess)
            | (RuleKind::EarlyAccess, Reason::EarlyAccess)
    );
    if decided { Why::Decided } else { Why::Overridden }
}
