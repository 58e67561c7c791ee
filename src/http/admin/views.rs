//! The admin listener's answers as typed views, like `wire`'s for checks:
//! the one place that decides how a subject, a rule, an audit entry or a
//! write's result looks on the wire (SPEC §5). Instants are written in
//! Stockholm time.

use jiff::tz::TimeZone;
use serde::Serialize;
use serde_json::Value;

use crate::core::decide::Decision;
use crate::core::explain::Explanation;
use crate::core::identity::Pid;
use crate::core::model::{HsaId, Service};
use crate::core::time::{Instant, LocalTime};
use crate::http::wire::DecisionBody;
use crate::store::{AccessEntry, AuditEntry, Family, Imported, StoredPerson, StoredRule};

fn local(i: Instant, tz: &TimeZone) -> String {
    LocalTime::new(i, tz).to_string()
}

/// `201` to a new restriction or grant.
#[derive(Debug, Serialize)]
pub struct Created {
    /// The rule's id (its revision), as text.
    pub id: String,
    /// The write's revision.
    pub revision: u64,
    /// Urgent: in force, waiting for the signed form.
    pub confirmation_pending: bool,
    /// When it ends (a grant is capped at 16).
    pub valid_until: Option<String>,
}

impl Created {
    /// The answer to a committed creation.
    pub fn new(revision: u64, urgent: bool, valid_until: Option<Instant>, tz: &TimeZone) -> Created {
        Created {
            id: revision.to_string(),
            revision,
            confirmation_pending: urgent,
            valid_until: valid_until.map(|u| local(u, tz)),
        }
    }
}

/// `200` to a lift or a confirmation.
#[derive(Debug, Serialize)]
pub struct Written {
    /// The write's revision.
    pub revision: u64,
}

/// `200` to a population import.
#[derive(Debug, Serialize)]
pub struct ImportedView {
    /// Records read.
    pub upserted: u64,
    /// Records that changed something.
    pub changed: u64,
    /// The import's revision.
    pub revision: u64,
}

impl From<Imported> for ImportedView {
    fn from(i: Imported) -> ImportedView {
        ImportedView {
            upserted: i.upserted,
            changed: i.changed,
            revision: i.revision,
        }
    }
}

/// A restriction or grant with its whole record.
#[derive(Debug, Serialize)]
pub struct RuleView<'a> {
    id: String,
    kind: &'static str,
    guardian: Option<String>,
    services: Vec<&'static str>,
    care_units: Option<Vec<&'a str>>,
    valid_from: String,
    valid_until: Option<String>,
    /// `active`, `scheduled`, `expired` or `lifted`, at the view's instant.
    status: &'static str,
    confirmation_pending: bool,
    issuing_unit: &'a str,
    decided_by: &'a Value,
    requested_by: &'a Option<Value>,
    basis: &'a str,
    urgent: bool,
    reference: &'a Option<String>,
    created_at: String,
    created_by: &'a str,
    confirmed_at: Option<String>,
    confirmation: &'a Option<Value>,
    lifted_at: Option<String>,
    lift: &'a Option<Value>,
    revision: u64,
}

impl<'a> RuleView<'a> {
    /// `r` as seen at `at`.
    pub fn new(r: &'a StoredRule, at: Instant, tz: &TimeZone) -> RuleView<'a> {
        let rule = &r.rule;
        let status = if rule.lifted_at.is_some_and(|l| l <= at) {
            "lifted"
        } else if rule.valid_until.is_some_and(|u| u <= at) {
            "expired"
        } else if rule.valid_from > at {
            "scheduled"
        } else {
            "active"
        };
        RuleView {
            id: rule.id.0.to_string(),
            kind: rule.kind.as_str(),
            guardian: rule.guardian.map(|g| g.to_string()),
            services: rule.services.iter().map(Service::as_str).collect(),
            care_units: rule.care_units.as_ref().map(|u| u.iter().map(HsaId::as_str).collect()),
            valid_from: local(rule.valid_from, tz),
            valid_until: rule.valid_until.map(|u| local(u, tz)),
            status,
            confirmation_pending: r.confirmation_pending(),
            issuing_unit: r.meta.issuing_unit.as_str(),
            decided_by: &r.meta.decided_by,
            requested_by: &r.meta.requested_by,
            basis: &r.meta.basis,
            urgent: r.meta.urgent,
            reference: &r.meta.reference,
            created_at: local(r.created_at, tz),
            created_by: &r.created_by,
            confirmed_at: r.confirmed_at.map(|c| local(c, tz)),
            confirmation: &r.confirmation,
            lifted_at: rule.lifted_at.map(|l| local(l, tz)),
            lift: &r.lift,
            revision: r.revision,
        }
    }
}

/// A person as the population data has them.
#[derive(Debug, Serialize)]
pub struct PersonView {
    birth_date: Option<String>,
    protected: bool,
    guardians: Vec<String>,
    revision: u64,
}

/// The answer one actor gets now on one service, as the portal would.
#[derive(Debug, Serialize)]
pub struct AnswerView<'a> {
    #[serde(flatten)]
    decision: DecisionBody<'a>,
    actor: String,
    service: &'static str,
}

impl<'a> AnswerView<'a> {
    /// `d`, decided for `actor` on `service` at `at`.
    pub fn new(d: &Decision<'a>, actor: Pid, service: Service, at: Instant, tz: &TimeZone) -> AnswerView<'a> {
        AnswerView {
            decision: DecisionBody::new(d, at, tz),
            actor: actor.to_string(),
            service: service.as_str(),
        }
    }
}

/// `GET /v1/subjects/{id}`.
#[derive(Debug, Serialize)]
pub struct SubjectView<'a> {
    subject: String,
    person: Option<PersonView>,
    restrictions: Vec<RuleView<'a>>,
    grants: Vec<RuleView<'a>>,
    /// Each guardian's and the subject's answer on each service now; null
    /// while nothing is published.
    answers: Option<Vec<AnswerView<'a>>>,
    revision: Option<u64>,
    at: String,
}

impl<'a> SubjectView<'a> {
    /// Everything recorded about `subject`, seen at `at`.
    pub fn new(
        subject: Pid,
        person: Option<&StoredPerson>,
        rules: &'a [StoredRule],
        answers: Option<Vec<AnswerView<'a>>>,
        revision: Option<u64>,
        at: Instant,
        tz: &TimeZone,
    ) -> SubjectView<'a> {
        let of = |family: Family| {
            rules
                .iter()
                .filter(|r| Family::of(r.rule.kind) == family)
                .map(|r| RuleView::new(r, at, tz))
                .collect()
        };
        SubjectView {
            subject: subject.to_string(),
            person: person.map(|p| PersonView {
                birth_date: p.record.birth_date.map(|d| d.to_string()),
                protected: p.record.protected,
                guardians: p.record.guardians.iter().map(Pid::to_string).collect(),
                revision: p.revision,
            }),
            restrictions: of(Family::Restriction),
            grants: of(Family::Grant),
            answers,
            revision,
            at: local(at, tz),
        }
    }
}

/// One audit entry.
#[derive(Debug, Serialize)]
pub struct AuditEntryView<'a> {
    revision: u64,
    at: String,
    by: &'a str,
    /// The writer's HSA-ID, when a client certificate identified them.
    hsa_id: Option<&'a str>,
    role: &'a str,
    action: &'a str,
    rule_id: Option<String>,
    basis: Option<&'a Value>,
    detail: &'a Value,
}

/// `GET /v1/audit?subject=`.
#[derive(Debug, Serialize)]
pub struct AuditView<'a> {
    subject: String,
    entries: Vec<AuditEntryView<'a>>,
}

impl<'a> AuditView<'a> {
    /// Every write concerning `subject`.
    pub fn new(subject: Pid, entries: &'a [AuditEntry], tz: &TimeZone) -> AuditView<'a> {
        AuditView {
            subject: subject.to_string(),
            entries: entries
                .iter()
                .map(|e| AuditEntryView {
                    revision: e.revision,
                    at: local(e.at, tz),
                    by: &e.actor,
                    hsa_id: e.hsa_id.as_deref(),
                    role: &e.role,
                    action: &e.action,
                    rule_id: e.rule_id.map(|i| i.to_string()),
                    basis: e.detail.get("basis"),
                    detail: &e.detail,
                })
                .collect(),
        }
    }
}

/// `POST /v1/explain`.
#[derive(Debug, Serialize)]
pub struct ExplainView<'a> {
    /// The answer, as `/v1/check` gives it.
    answer: DecisionBody<'a>,
    actor: String,
    subject: String,
    service: &'static str,
    /// The row of SPEC §3 that decided.
    row: RowView,
    /// The data that row used.
    data: DataView,
    /// Every restriction and grant on the subject, with why it did or did
    /// not apply.
    rules: Vec<ExplainedRule<'a>>,
    /// The revision whose facts were used.
    revision: u64,
    /// As asked: `null` for today's facts.
    as_of_revision: Option<u64>,
    /// The settings are today's, whatever the revision.
    settings: &'static str,
}

#[derive(Debug, Serialize)]
struct RowView {
    /// `own` (the subject asks) or `guardian` (someone else asks).
    table: &'static str,
    number: u8,
    text: &'static str,
}

#[derive(Debug, Serialize)]
struct DataView {
    own_access: bool,
    subject_registered: bool,
    birth_date: Option<String>,
    birth_date_source: &'static str,
    age: Option<u8>,
    subject_protected: bool,
    guardians: Vec<GuardianView>,
    actor_is_guardian: bool,
    actor_protected: bool,
}

#[derive(Debug, Serialize)]
struct GuardianView {
    id: String,
    protected: bool,
}

#[derive(Debug, Serialize)]
struct ExplainedRule<'a> {
    id: String,
    kind: &'static str,
    guardian: Option<String>,
    services: Vec<&'static str>,
    care_units: Option<Vec<&'a str>>,
    valid_from: String,
    valid_until: Option<String>,
    lifted_at: Option<String>,
    /// Whether it was in force for this question (it decided, or an
    /// earlier row did).
    in_force: bool,
    why: &'static str,
}

impl<'a> ExplainView<'a> {
    /// The view of `e`; `as_of_revision` as asked.
    pub fn new(e: &'a Explanation, as_of_revision: Option<u64>) -> ExplainView<'a> {
        let q = e.query();
        let tz = e.snapshot().tz();
        let d = &e.data;
        ExplainView {
            answer: DecisionBody::new(&e.decision(), q.at, tz),
            actor: q.actor.to_string(),
            subject: q.subject.to_string(),
            service: q.service.as_str(),
            row: RowView {
                table: if e.row.own { "own" } else { "guardian" },
                number: e.row.number,
                text: e.row.text(),
            },
            data: DataView {
                own_access: d.own,
                subject_registered: d.subject_registered,
                birth_date: d.birth_date.map(|b| b.to_string()),
                birth_date_source: d.birth_source.as_str(),
                age: d.age,
                subject_protected: d.subject_protected,
                guardians: d
                    .guardians
                    .iter()
                    .map(|g| GuardianView {
                        id: g.pid.to_string(),
                        protected: g.protected,
                    })
                    .collect(),
                actor_is_guardian: d.actor_is_guardian,
                actor_protected: d.actor_protected,
            },
            rules: e
                .rules
                .iter()
                .map(|(r, why)| ExplainedRule {
                    id: r.id.0.to_string(),
                    kind: r.kind.as_str(),
                    guardian: r.guardian.map(|g| g.to_string()),
                    services: r.services.iter().map(Service::as_str).collect(),
                    care_units: r.care_units.as_ref().map(|u| u.iter().map(HsaId::as_str).collect()),
                    valid_from: local(r.valid_from, tz),
                    valid_until: r.valid_until.map(|u| local(u, tz)),
                    lifted_at: r.lifted_at.map(|l| local(l, tz)),
                    in_force: why.in_force(),
                    why: why.as_str(),
                })
                .collect(),
            revision: e.decision().revision,
            as_of_revision,
            settings: "current",
        }
    }
}

/// One access-log entry.
#[derive(Debug, Serialize)]
pub struct AccessEntryView<'a> {
    id: u64,
    at: String,
    by: &'a str,
    hsa_id: Option<&'a str>,
    role: &'a str,
    action: &'a str,
    /// Whose data; `"*"` for the whole population.
    subjects: Value,
    purpose: Option<&'a str>,
    detail: &'a Value,
}

impl<'a> AccessEntryView<'a> {
    /// `e`, with its instant in Stockholm time.
    pub fn new(e: &'a AccessEntry, tz: &TimeZone) -> AccessEntryView<'a> {
        AccessEntryView {
            id: e.id,
            at: local(e.at, tz),
            by: &e.actor,
            hsa_id: e.hsa_id.as_deref(),
            role: &e.role,
            action: &e.action,
            subjects: if e.everyone {
                Value::from("*")
            } else {
                Value::from(e.subjects.iter().map(Pid::to_string).collect::<Vec<_>>())
            },
            purpose: e.purpose.as_deref(),
            detail: &e.detail,
        }
    }
}

/// `GET /v1/access-log`: a page of entries.
#[derive(Debug, Serialize)]
pub struct AccessLogView<'a> {
    entries: Vec<AccessEntryView<'a>>,
    /// The `after` of the next page, when there may be one.
    next: Option<u64>,
}

impl<'a> AccessLogView<'a> {
    /// A page of `entries`.
    pub fn new(entries: &'a [AccessEntry], next: Option<u64>, tz: &TimeZone) -> AccessLogView<'a> {
        AccessLogView {
            entries: entries.iter().map(|e| AccessEntryView::new(e, tz)).collect(),
            next,
        }
    }
}
