//! The durable store: population, restrictions and grants, the change log
//! and the audit trail, in SQLite (embedded, the default) or PostgreSQL
//! (a fleet sharing one source of truth). Only this module touches SQL.
//!
//! Both backends have the same schema and the same semantics:
//!
//! - Every write is one transaction that first takes the next revision with
//!   `UPDATE meta SET revision = revision + 1`. That row lock serializes
//!   writers, so revisions are assigned in commit order with no gaps: a
//!   follower that has seen revision `r` has seen everything before it.
//! - `changes` is the change log: one row per revision, saying what kind of
//!   change it was and how many persons it touched. Changed rows carry the
//!   revision that last changed them (`rules.revision`), and every changed
//!   person record is kept in `person_history` under its revision, so
//!   "everything after revision r" is two range reads.
//! - `audit` has one row per revision (who, what, when, on what basis) and
//!   refuses `UPDATE` and `DELETE` by trigger.
//! - The checks that need stored data (is this guardian registered, did this
//!   unit issue it, is it lifted already) run inside the write transaction,
//!   through [`RuleUpdate`] and the creation path, which both backends share.
//!
//! Writes return only after the commit is durable (SQLite: WAL with
//! `synchronous = FULL`; PostgreSQL: `synchronous_commit` on).

pub mod postgres;
mod schema;
pub mod sqlite;

use std::path::Path;

use jiff::civil::Date;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::identity::Pid;
use crate::model::{HsaId, Rule, RuleId, RuleKind};
use crate::people::PersonRecord;
use crate::time::Instant;

/// The file name of the embedded store inside `--data-dir`.
pub const SQLITE_FILE: &str = "guardian-access.db";

/// Records per message on an import channel.
pub const IMPORT_BATCH: usize = 16_384;

/// A token holder's role (SPEC §5, plus `peer` for fetching snapshots).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The contact center / IT service desk: writes on behalf of any unit.
    Registrar,
    /// A care unit: writes only as itself.
    Unit,
    /// The population feed.
    Population,
    /// Reads everything, writes nothing.
    Auditor,
    /// Another instance of the fleet: may fetch snapshot files, nothing else.
    Peer,
}

impl Role {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Registrar => "registrar",
            Role::Unit => "unit",
            Role::Population => "population",
            Role::Auditor => "auditor",
            Role::Peer => "peer",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "registrar" => Some(Role::Registrar),
            "unit" => Some(Role::Unit),
            "population" => Some(Role::Population),
            "auditor" => Some(Role::Auditor),
            "peer" => Some(Role::Peer),
            _ => None,
        }
    }
}

/// Who is writing: the holder of an admin token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name ("Kontaktcenter RJL"); goes into the audit trail.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// For `unit` tokens, the unit.
    pub unit: Option<HsaId>,
}

/// Restrictions (block, seal) or grants (extended and early access): the two
/// families have separate endpoints, and an id of one is not found by the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `block` and `seal`.
    Restriction,
    /// `extended_access` and `early_access`.
    Grant,
}

impl Family {
    /// The family of a kind.
    pub fn of(kind: RuleKind) -> Family {
        if kind.is_grant() {
            Family::Grant
        } else {
            Family::Restriction
        }
    }
}

/// What a registrar records about a decision besides the rule itself.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleMeta {
    /// The care unit that decided it.
    pub issuing_unit: HsaId,
    /// Who decided (`{"name", "hsa_id"?}`), validated by the admin API.
    pub decided_by: Value,
    /// Who asked (`{"name", "id"?, "email"?, "phone"?}`), if recorded.
    pub requested_by: Option<Value>,
    /// Why.
    pub basis: String,
    /// Phoned in: in force at once, waiting for the signed form.
    pub urgent: bool,
    /// The unit's case number (diarienummer).
    pub reference: Option<String>,
}

/// A restriction or grant to create.
#[derive(Debug, Clone)]
pub struct NewRule {
    /// The rule; its `id` and `lifted_at` are ignored (the id is the revision).
    pub rule: Rule,
    /// The rest of the record.
    pub meta: RuleMeta,
}

/// Lifting a restriction or grant.
#[derive(Debug, Clone)]
pub struct LiftRequest {
    /// Which family the endpoint is for.
    pub family: Family,
    /// The unit asking to lift it; must be the issuing unit.
    pub issuing_unit: HsaId,
    /// Who decided.
    pub decided_by: Value,
    /// Why.
    pub basis: String,
    /// Restrictions: the head of unit checked the threat picture with social services.
    pub threat_assessment_done: bool,
}

/// Recording the signed form of an urgent restriction.
#[derive(Debug, Clone)]
pub struct ConfirmRequest {
    /// The unit the form is from; must be the issuing unit.
    pub issuing_unit: HsaId,
    /// Who signed.
    pub decided_by: Value,
    /// The form's reference (diarienummer or document id).
    pub form_reference: String,
}

/// A restriction or grant as stored, with its whole history.
#[derive(Debug, Clone)]
pub struct StoredRule {
    /// The rule as checks see it.
    pub rule: Rule,
    /// The decision's record.
    pub meta: RuleMeta,
    /// When it was created.
    pub created_at: Instant,
    /// The token name that created it.
    pub created_by: String,
    /// When the signed form was recorded (urgent ones).
    pub confirmed_at: Option<Instant>,
    /// The confirmation record.
    pub confirmation: Option<Value>,
    /// The lift record (who, why, threat assessment).
    pub lift: Option<Value>,
    /// The revision that last changed it.
    pub revision: u64,
}

impl StoredRule {
    /// Urgent and not yet confirmed.
    pub fn confirmation_pending(&self) -> bool {
        self.meta.urgent && self.confirmed_at.is_none()
    }
}

/// A population record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPerson {
    /// The record.
    pub record: PersonRecord,
    /// The revision that last changed it.
    pub revision: u64,
}

/// One audit entry: one committed write.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// The write's revision.
    pub revision: u64,
    /// When it was committed.
    pub at: Instant,
    /// The token name.
    pub actor: String,
    /// The token's role.
    pub role: String,
    /// `create_restriction`, `create_grant`, `confirm`, `lift`, `population`, `seed`.
    pub action: String,
    /// The subject, for writes about one.
    pub subject: Option<Pid>,
    /// The restriction or grant, for writes about one.
    pub rule_id: Option<u64>,
    /// The write's content (basis, decided_by, counts …).
    pub detail: Value,
}

/// What changed after a revision, read in one consistent transaction.
#[derive(Debug)]
pub enum Changes {
    /// Nothing after it; the store is at this revision.
    UpToDate(u64),
    /// Everything after it, up to `revision`: changed person records in
    /// revision order (later ones win) and the current state of every
    /// restriction or grant changed.
    Delta {
        /// The store's revision.
        revision: u64,
        /// Changed person records, oldest first.
        persons: Vec<PersonRecord>,
        /// Changed rules, as they are now.
        rules: Vec<Rule>,
    },
    /// More persons changed than the caller wants as a delta: load everything.
    TooMany(u64),
}

/// Everything in the store, read in one consistent transaction.
#[derive(Debug)]
pub struct Loaded {
    /// The revision it is at.
    pub revision: u64,
    /// Every person record, ready to build.
    pub people: crate::people::PeopleBuilder,
    /// Every restriction and grant, lifted ones too.
    pub rules: Vec<Rule>,
}

/// The result of a committed write.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// Its revision.
    pub revision: u64,
    /// The restriction or grant it created or changed.
    pub rule_id: Option<RuleId>,
}

/// The result of a population import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// Its revision.
    pub revision: u64,
    /// Records read (repeats included).
    pub upserted: u64,
    /// Records that changed something.
    pub changed: u64,
}

/// A message on an import channel. The sender says `End` to commit; a
/// sender dropped without it (a bad line, a broken connection) rolls back.
#[derive(Debug)]
pub enum ImportMsg {
    /// More records, in order.
    Batch(Vec<PersonRecord>),
    /// All records were sent: commit.
    End,
}

/// Why a store operation failed. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or failed; the write did not happen.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// No restriction or grant with that id (in that family).
    #[error("no such restriction or grant")]
    NotFound,
    /// Another unit issued it.
    #[error("only the issuing unit can do this")]
    WrongUnit,
    /// Lifted before.
    #[error("it has already been lifted")]
    AlreadyLifted,
    /// Not an urgent one waiting for its form.
    #[error("it is not waiting for confirmation")]
    NotPending,
    /// The named guardian is not a registered guardian of the subject.
    #[error("`guardian`: is not a registered guardian of the subject")]
    NotGuardian,
    /// The import's sender gave up (a bad line, a dropped connection).
    #[error("the import was abandoned; nothing was applied")]
    Aborted,
    /// Stored data fails validation: a damaged or tampered database.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The database was made by a newer version of this program.
    #[error("the database schema is version {0}, newer than this program knows ({1})")]
    Schema(i64, i64),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Unavailable(e.to_string())
    }
}

/// A change to a stored restriction or grant (a lift or a confirmation):
/// what to check against the stored rule, which columns record it, and what
/// the audit trail says. Both backends apply it the same way.
#[derive(Debug)]
pub struct RuleUpdate {
    action: &'static str,
    at_column: &'static str,
    record_column: &'static str,
    detail: Value,
    plan: Plan,
}

#[derive(Debug)]
enum Plan {
    Lift(LiftRequest),
    Confirm(ConfirmRequest),
}

impl RuleUpdate {
    /// Lifting: `lifted_at` and the lift record.
    pub fn lift(req: LiftRequest) -> RuleUpdate {
        RuleUpdate {
            action: "lift",
            at_column: "lifted_at",
            record_column: "lift",
            detail: lift_detail(&req),
            plan: Plan::Lift(req),
        }
    }

    /// Confirming: `confirmed_at` and the confirmation record.
    pub fn confirm(req: ConfirmRequest) -> RuleUpdate {
        RuleUpdate {
            action: "confirm",
            at_column: "confirmed_at",
            record_column: "confirmation",
            detail: confirm_detail(&req),
            plan: Plan::Confirm(req),
        }
    }

    fn check(&self, stored: Option<&StoredRule>) -> Result<(), StoreError> {
        match &self.plan {
            Plan::Lift(r) => plan_lift(stored, r),
            Plan::Confirm(r) => plan_confirm(stored, r),
        }
    }

    /// The record stored on the rule: the audit detail and who wrote it.
    fn record(&self, by: &Caller) -> Value {
        let mut record = self.detail.clone();
        record["by"] = Value::from(by.name.clone());
        record
    }
}

/// Decides a lift against the stored rule: every check SPEC §5 asks for,
/// the same in both backends.
fn plan_lift(stored: Option<&StoredRule>, req: &LiftRequest) -> Result<(), StoreError> {
    let stored = stored.ok_or(StoreError::NotFound)?;
    if Family::of(stored.rule.kind) != req.family {
        return Err(StoreError::NotFound);
    }
    if stored.meta.issuing_unit != req.issuing_unit {
        return Err(StoreError::WrongUnit);
    }
    if stored.rule.lifted_at.is_some() {
        return Err(StoreError::AlreadyLifted);
    }
    Ok(())
}

/// Decides a confirmation against the stored rule.
fn plan_confirm(stored: Option<&StoredRule>, req: &ConfirmRequest) -> Result<(), StoreError> {
    let stored = stored.ok_or(StoreError::NotFound)?;
    if Family::of(stored.rule.kind) != Family::Restriction {
        return Err(StoreError::NotFound);
    }
    if stored.meta.issuing_unit != req.issuing_unit {
        return Err(StoreError::WrongUnit);
    }
    if !stored.confirmation_pending() {
        return Err(StoreError::NotPending);
    }
    Ok(())
}

/// The action name a new rule is audited under.
pub fn create_action(kind: RuleKind) -> &'static str {
    match Family::of(kind) {
        Family::Restriction => "create_restriction",
        Family::Grant => "create_grant",
    }
}

/// Guardians as stored: canonical numbers separated by commas.
pub fn guardians_text(guardians: &[Pid]) -> String {
    let mut out = String::with_capacity(guardians.len() * 13);
    for (i, g) in guardians.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&g.to_string());
    }
    out
}

/// Reads stored guardians back, validating every number.
pub fn parse_guardians(text: &str) -> Result<Vec<Pid>, StoreError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|g| {
            g.parse::<u64>()
                .ok()
                .and_then(|v| Pid::from_u64(v).ok())
                .ok_or_else(|| StoreError::Corrupt("a stored guardian is not a valid number".into()))
        })
        .collect()
}

/// Reads a stored number back.
pub fn stored_pid(v: i64) -> Result<Pid, StoreError> {
    u64::try_from(v)
        .ok()
        .and_then(|v| Pid::from_u64(v).ok())
        .ok_or_else(|| StoreError::Corrupt("a stored number is not valid".into()))
}

/// Reads a stored birth date back.
pub fn stored_date(s: Option<String>) -> Result<Option<Date>, StoreError> {
    s.map(|s| {
        s.parse::<Date>()
            .map_err(|_| StoreError::Corrupt("a stored birth date is not a date".into()))
    })
    .transpose()
}

/// Care units as stored: HSA-IDs separated by commas.
pub fn units_text(units: &[HsaId]) -> String {
    units.iter().map(HsaId::as_str).collect::<Vec<_>>().join(",")
}

/// Reads stored care units back.
pub fn parse_units(text: Option<String>) -> Result<Option<std::sync::Arc<[HsaId]>>, StoreError> {
    text.map(|t| {
        t.split(',')
            .map(|u| HsaId::parse(u).map_err(|_| StoreError::Corrupt("a stored care unit is not an HSA-ID".into())))
            .collect()
    })
    .transpose()
}

/// Reads stored JSON back.
pub fn parse_json(text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|_| StoreError::Corrupt("stored JSON is invalid".into()))
}

/// A `rules` row as both backends read it, before validation.
#[derive(Debug)]
pub struct RuleRow {
    pub(crate) id: i64,
    pub(crate) kind: String,
    pub(crate) subject: i64,
    pub(crate) guardian: Option<i64>,
    pub(crate) services: i64,
    pub(crate) valid_from: i64,
    pub(crate) valid_until: Option<i64>,
    pub(crate) lifted_at: Option<i64>,
    pub(crate) care_units: Option<String>,
    pub(crate) issuing_unit: String,
    pub(crate) decided_by: String,
    pub(crate) requested_by: Option<String>,
    pub(crate) basis: String,
    pub(crate) urgent: bool,
    pub(crate) reference: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) created_by: String,
    pub(crate) confirmed_at: Option<i64>,
    pub(crate) confirmation: Option<String>,
    pub(crate) lift: Option<String>,
    pub(crate) revision: i64,
}

/// The columns of [`RuleRow`], in order, for `SELECT`s.
pub const RULE_COLUMNS: &str = "id, kind, subject, guardian, services, valid_from, valid_until, lifted_at, \
     care_units, issuing_unit, decided_by, requested_by, basis, urgent, reference, created_at, created_by, \
     confirmed_at, confirmation, lift, revision";

impl RuleRow {
    /// The rule as checks see it, validated.
    pub fn rule(&self) -> Result<Rule, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("rule {}: {what}", self.id));
        Ok(Rule {
            id: RuleId(u64::try_from(self.id).map_err(|_| corrupt("bad id"))?),
            kind: RuleKind::parse(&self.kind).ok_or_else(|| corrupt("unknown kind"))?,
            subject: stored_pid(self.subject)?,
            guardian: self.guardian.map(stored_pid).transpose()?,
            services: u8::try_from(self.services)
                .ok()
                .and_then(crate::model::Services::from_bits)
                .ok_or_else(|| corrupt("unknown services"))?,
            valid_from: Instant::from_nanos(self.valid_from),
            valid_until: self.valid_until.map(Instant::from_nanos),
            lifted_at: self.lifted_at.map(Instant::from_nanos),
            care_units: parse_units(self.care_units.clone())?,
        })
    }

    /// The whole record, validated.
    pub fn stored(self) -> Result<StoredRule, StoreError> {
        let rule = self.rule()?;
        Ok(StoredRule {
            rule,
            meta: RuleMeta {
                issuing_unit: HsaId::parse(&self.issuing_unit)
                    .map_err(|_| StoreError::Corrupt("a stored issuing unit is not an HSA-ID".into()))?,
                decided_by: parse_json(&self.decided_by)?,
                requested_by: self.requested_by.as_deref().map(parse_json).transpose()?,
                basis: self.basis,
                urgent: self.urgent,
                reference: self.reference,
            },
            created_at: Instant::from_nanos(self.created_at),
            created_by: self.created_by,
            confirmed_at: self.confirmed_at.map(Instant::from_nanos),
            confirmation: self.confirmation.as_deref().map(parse_json).transpose()?,
            lift: self.lift.as_deref().map(parse_json).transpose()?,
            revision: u64::try_from(self.revision).map_err(|_| StoreError::Corrupt("a bad revision".into()))?,
        })
    }
}

/// A `persons` or `person_history` row before validation.
#[derive(Debug)]
pub struct PersonRow {
    pub(crate) id: i64,
    pub(crate) birth_date: Option<String>,
    pub(crate) protected: bool,
    pub(crate) guardians: String,
    pub(crate) revision: i64,
}

impl PersonRow {
    /// The record, validated.
    pub fn record(self) -> Result<PersonRecord, StoreError> {
        Ok(PersonRecord {
            id: stored_pid(self.id)?,
            birth_date: stored_date(self.birth_date)?,
            protected: self.protected,
            guardians: parse_guardians(&self.guardians)?,
        })
    }
}

/// What the audit trail records about a new rule.
pub fn rule_detail(new: &NewRule) -> Value {
    let r = &new.rule;
    let m = &new.meta;
    serde_json::json!({
        "kind": r.kind.as_str(),
        "guardian": r.guardian.map(|g| g.to_string()),
        "services": r.services.iter().map(crate::model::Service::as_str).collect::<Vec<_>>(),
        "valid_from": r.valid_from.to_timestamp().to_string(),
        "valid_until": r.valid_until.map(|u| u.to_timestamp().to_string()),
        "care_units": r.care_units.as_ref().map(|u| u.iter().map(|h| h.as_str().to_owned()).collect::<Vec<_>>()),
        "issuing_unit": m.issuing_unit.as_str(),
        "decided_by": m.decided_by,
        "requested_by": m.requested_by,
        "basis": m.basis,
        "urgent": m.urgent,
        "reference": m.reference,
    })
}

/// What the audit trail records about a lift.
fn lift_detail(req: &LiftRequest) -> Value {
    serde_json::json!({
        "issuing_unit": req.issuing_unit.as_str(),
        "decided_by": req.decided_by,
        "basis": req.basis,
        "threat_assessment_done": req.threat_assessment_done,
    })
}

/// What the audit trail records about a confirmation.
fn confirm_detail(req: &ConfirmRequest) -> Value {
    serde_json::json!({
        "issuing_unit": req.issuing_unit.as_str(),
        "decided_by": req.decided_by,
        "form_reference": req.form_reference,
    })
}

/// A fresh store id: 128 random bits in hex.
pub fn new_store_id() -> Result<String, StoreError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| StoreError::Unavailable(format!("no randomness: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The current instant, for commit times.
pub fn now() -> Instant {
    Instant::from_timestamp(jiff::Timestamp::now()).unwrap_or(Instant::MAX)
}

/// One of the two backends. An enum rather than a trait object: the two
/// are fixed, and async methods then need no boxing.
#[derive(Debug, Clone)]
pub enum Store {
    /// SQLite in `--data-dir`.
    Sqlite(sqlite::SqliteStore),
    /// PostgreSQL shared by a fleet.
    Postgres(postgres::PgStore),
}

impl Store {
    /// Opens (creating and migrating if needed) the embedded store in `dir`.
    pub async fn open_sqlite(dir: &Path) -> Result<Store, StoreError> {
        let dir = dir.to_owned();
        let s = tokio::task::spawn_blocking(move || sqlite::SqliteStore::open(&dir.join(SQLITE_FILE)))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))??;
        Ok(Store::Sqlite(s))
    }

    /// Opens the embedded store in `dir`, which must exist (for the command line).
    pub async fn open_sqlite_existing(dir: &Path) -> Result<Store, StoreError> {
        let dir = dir.to_owned();
        let s = tokio::task::spawn_blocking(move || sqlite::SqliteStore::open_existing(&dir.join(SQLITE_FILE)))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))??;
        Ok(Store::Sqlite(s))
    }

    /// Connects to (creating and migrating if needed) a PostgreSQL store.
    pub async fn open_postgres(url: &str) -> Result<Store, StoreError> {
        Ok(Store::Postgres(postgres::PgStore::open(url).await?))
    }

    /// A unique id made when the store was created; snapshot files carry it.
    pub fn id(&self) -> &str {
        match self {
            Store::Sqlite(s) => s.id(),
            Store::Postgres(s) => s.id(),
        }
    }

    /// `sqlite` or `postgres`, for `/v1/status`.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// The store's current revision.
    pub async fn revision(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.run(|s| s.revision()).await,
            Store::Postgres(s) => s.revision().await,
        }
    }

    /// Creates a restriction or grant. With `require_guardian`, the rule's
    /// guardian must be a registered guardian of its subject.
    pub async fn create_rule(
        &self,
        new: NewRule,
        require_guardian: bool,
        by: &Caller,
    ) -> Result<Committed, StoreError> {
        let by = by.clone();
        match self {
            Store::Sqlite(s) => s.run(move |s| s.create_rule(&new, require_guardian, &by)).await,
            Store::Postgres(s) => s.create_rule(&new, require_guardian, &by).await,
        }
    }

    /// Lifts a restriction or grant.
    pub async fn lift(&self, id: RuleId, req: LiftRequest, by: &Caller) -> Result<Committed, StoreError> {
        self.update_rule(id, RuleUpdate::lift(req), by).await
    }

    /// Records the signed form of an urgent restriction.
    pub async fn confirm(&self, id: RuleId, req: ConfirmRequest, by: &Caller) -> Result<Committed, StoreError> {
        self.update_rule(id, RuleUpdate::confirm(req), by).await
    }

    async fn update_rule(&self, id: RuleId, update: RuleUpdate, by: &Caller) -> Result<Committed, StoreError> {
        let by = by.clone();
        match self {
            Store::Sqlite(s) => s.run(move |s| s.update_rule(id, &update, &by)).await,
            Store::Postgres(s) => s.update_rule(id, &update, &by).await,
        }
    }

    /// Imports population records arriving on `rx` in one transaction: all
    /// or nothing.
    pub async fn import(&self, rx: mpsc::Receiver<ImportMsg>, by: &Caller) -> Result<Imported, StoreError> {
        let by = by.clone();
        match self {
            Store::Sqlite(s) => s.run(move |s| s.import(rx, &by)).await,
            Store::Postgres(s) => s.import(rx, &by).await,
        }
    }

    /// Writes a scenario's people and rules as they are (lifted ones
    /// included), for `--demo` and `--scenario`: a throwaway store only.
    pub async fn seed(&self, persons: Vec<PersonRecord>, rules: Vec<NewRule>, by: &Caller) -> Result<u64, StoreError> {
        let by = by.clone();
        match self {
            Store::Sqlite(s) => s.run(move |s| s.seed(&persons, &rules, &by)).await,
            Store::Postgres(s) => s.seed(&persons, &rules, &by).await,
        }
    }

    /// What changed after `after`; `TooMany` when more than `max_persons`
    /// person records did.
    pub async fn changes(&self, after: u64, max_persons: u64) -> Result<Changes, StoreError> {
        match self {
            Store::Sqlite(s) => s.run(move |s| s.changes(after, max_persons)).await,
            Store::Postgres(s) => s.changes(after, max_persons).await,
        }
    }

    /// Everything, at one revision.
    pub async fn load(&self) -> Result<Loaded, StoreError> {
        match self {
            Store::Sqlite(s) => s.run(|s| s.load()).await,
            Store::Postgres(s) => s.load().await,
        }
    }

    /// A person's record, if the population data has one.
    pub async fn person(&self, pid: Pid) -> Result<Option<StoredPerson>, StoreError> {
        match self {
            Store::Sqlite(s) => s.run(move |s| s.person(pid)).await,
            Store::Postgres(s) => s.person(pid).await,
        }
    }

    /// Every restriction and grant on a subject, lifted ones too, oldest first.
    pub async fn rules_of(&self, subject: Pid) -> Result<Vec<StoredRule>, StoreError> {
        match self {
            Store::Sqlite(s) => s.run(move |s| s.rules_of(subject)).await,
            Store::Postgres(s) => s.rules_of(subject).await,
        }
    }

    /// Every write concerning a subject, oldest first: writes about their
    /// restrictions and grants, and every population import that changed
    /// their record.
    pub async fn audit_of(&self, subject: Pid) -> Result<Vec<AuditEntry>, StoreError> {
        match self {
            Store::Sqlite(s) => s.run(move |s| s.audit_of(subject)).await,
            Store::Postgres(s) => s.audit_of(subject).await,
        }
    }
}
