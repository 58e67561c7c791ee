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

pub mod outbox;
pub mod postgres;
mod protocol;
mod schema;
mod spool;
mod sql;
pub mod sqlite;

use std::path::Path;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::actor::Caller;
use crate::clock::Clock;
use crate::core::identity::Pid;
use crate::core::model::{HsaId, Rule, RuleId, RuleKind};
use crate::core::people::PersonRecord;
use crate::core::time::Instant;
pub use outbox::{MailDraft, MailStatus, QueuedMail};

/// The file name of the embedded store inside `--data-dir`.
pub const SQLITE_FILE: &str = "guardian-access.db";

/// Creates `dir` (and its parents) if needed, and makes it readable by the
/// service's user only (`0700`): it holds the population and the audit
/// trail. A directory someone else owns is left as it is, with an error.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The most restrictions and grants one subject may have in force or
/// pending (not lifted, not ended) at once. A check walks its subject's
/// rules to find when its answer changes (`valid_until`); this bounds that
/// walk whatever a unit's token writes. A real child has a handful.
pub const MAX_RULES_IN_FORCE: u64 = 16;

/// Records per message on an import channel.
pub const IMPORT_BATCH: usize = 16_384;

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
    /// The unit's signed request, when the contact center lifts for it.
    pub unit_request_reference: Option<String>,
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
    /// The unit's signed request, when the contact center confirms for it.
    pub unit_request_reference: Option<String>,
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
    /// The token name, or the person's name.
    pub actor: String,
    /// The person's HSA-ID, when a client certificate identified them.
    pub hsa_id: Option<String>,
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

/// Whose personal data a read showed.
#[derive(Debug, Clone, Copy)]
pub enum Subjects<'a> {
    /// These persons.
    Some(&'a [Pid]),
    /// The whole population (a snapshot file).
    Everyone,
    /// Nobody's in particular (a pruning).
    None,
}

/// One read of personal data, for the access log (SPEC §8).
#[derive(Debug, Clone)]
pub struct Access<'a> {
    /// Who read.
    pub by: &'a Caller,
    /// What: `subject_view`, `audit_view`, `explain`, `snapshot_download`,
    /// `access_log_view`, `access_log_export`, `cli_check`, …
    pub action: &'static str,
    /// Whose data.
    pub subjects: Subjects<'a>,
    /// The purpose given (`x-purpose`), if any.
    pub purpose: Option<&'a str>,
    /// What was asked (no identity numbers beyond the subjects').
    pub detail: Value,
}

/// An [`Access`] that owns its parts, to move into a backend's transaction.
#[derive(Debug)]
struct OwnedAccess {
    by: Caller,
    action: &'static str,
    /// `None`: everyone.
    subjects: Option<Vec<Pid>>,
    purpose: Option<String>,
    detail: Value,
}

impl From<Access<'_>> for OwnedAccess {
    fn from(a: Access<'_>) -> OwnedAccess {
        OwnedAccess {
            by: a.by.clone(),
            action: a.action,
            subjects: match a.subjects {
                Subjects::Some(list) => Some(list.to_vec()),
                Subjects::Everyone => None,
                Subjects::None => Some(Vec::new()),
            },
            purpose: a.purpose.map(str::to_owned),
            detail: a.detail,
        }
    }
}

impl OwnedAccess {
    async fn record<T: protocol::Tx>(&self, tx: &mut T, at: Instant) -> Result<u64, StoreError> {
        let subjects = match &self.subjects {
            Some(list) if list.is_empty() => Subjects::None,
            Some(list) => Subjects::Some(list),
            None => Subjects::Everyone,
        };
        let access = Access {
            by: &self.by,
            action: self.action,
            subjects,
            purpose: self.purpose.as_deref(),
            detail: self.detail.clone(),
        };
        protocol::record_access(tx, at, &access).await
    }
}

/// An access-log entry as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessEntry {
    /// Its number, in order of writing.
    pub id: u64,
    /// When.
    pub at: Instant,
    /// Who (token name or person).
    pub actor: String,
    /// The reader's HSA-ID, when a person was identified by one.
    pub hsa_id: Option<String>,
    /// Their role.
    pub role: String,
    /// What they read.
    pub action: String,
    /// Whose data (empty with `everyone` or for a pruning).
    pub subjects: Vec<Pid>,
    /// The whole population.
    pub everyone: bool,
    /// The purpose given.
    pub purpose: Option<String>,
    /// What was asked.
    pub detail: Value,
}

/// Which access-log entries to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessQuery {
    /// Only those showing this person's data.
    pub subject: Option<Pid>,
    /// From this instant (inclusive).
    pub from: Instant,
    /// To this instant (exclusive).
    pub to: Instant,
    /// After this entry (0: from the first), for reading in pages.
    pub after: u64,
    /// At most this many.
    pub limit: u64,
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
        /// The digest of `revision` (`None` for revisions written before
        /// digests).
        digest: Option<String>,
    },
    /// More persons changed than the caller wants as a delta: load everything.
    TooMany(u64),
    /// The log does not follow on from the revision asked about (the store
    /// is behind it, or has a gap): the reader must rebuild from scratch.
    Diverged(String),
}

/// Everything in the store, read in one consistent transaction.
#[derive(Debug)]
pub struct Loaded {
    /// The revision it is at.
    pub revision: u64,
    /// Every person record, ready to build.
    pub people: crate::core::people::PeopleBuilder,
    /// Every restriction and grant, lifted ones too.
    pub rules: Vec<Rule>,
    /// The digest of `revision`, if it has one.
    pub digest: Option<String>,
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

/// A population import as a backend runs it: the records, who sends them
/// and the action it is audited under (`population` or `seed`).
pub(crate) struct Import<'a> {
    rx: mpsc::Receiver<ImportMsg>,
    by: &'a Caller,
    action: &'static str,
}

/// Why a store operation failed. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or failed; the write did not happen.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The store's disk is full; the write did not happen.
    #[error("the store's disk is full: {0}")]
    DiskFull(String),
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
    /// The subject already has [`MAX_RULES_IN_FORCE`] restrictions and
    /// grants in force or pending.
    #[error(
        "`subject`: has {MAX_RULES_IN_FORCE} restrictions and grants in force or pending, the most one person may have"
    )]
    TooManyRules,
    /// Stored data fails validation: a damaged or tampered database.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// A revision after the store's head was asked for.
    #[error("the store is at revision {0}; there is no later one yet")]
    FutureRevision(u64),
    /// The database was made by a newer version of this program.
    #[error("the database schema is version {0}, newer than this program knows ({1})")]
    Schema(i64, i64),
}

/// A change to a stored restriction or grant (a lift or a confirmation):
/// what to check against the stored rule, which columns record it, and what
/// the audit trail says. Both backends apply it the same way.
#[derive(Debug)]
pub(crate) struct RuleUpdate {
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
    fn lift(req: LiftRequest) -> RuleUpdate {
        RuleUpdate {
            action: "lift",
            at_column: "lifted_at",
            record_column: "lift",
            detail: lift_detail(&req),
            plan: Plan::Lift(req),
        }
    }

    /// Confirming: `confirmed_at` and the confirmation record.
    fn confirm(req: ConfirmRequest) -> RuleUpdate {
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

/// What the audit trail records about a new rule.
fn rule_detail(new: &NewRule) -> Value {
    let r = &new.rule;
    let m = &new.meta;
    serde_json::json!({
        "kind": r.kind.as_str(),
        "guardian": r.guardian.map(|g| g.to_string()),
        "services": r.services.iter().map(crate::core::model::Service::as_str).collect::<Vec<_>>(),
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
        "unit_request_reference": req.unit_request_reference,
    })
}

/// What the audit trail records about a confirmation.
fn confirm_detail(req: &ConfirmRequest) -> Value {
    serde_json::json!({
        "issuing_unit": req.issuing_unit.as_str(),
        "decided_by": req.decided_by,
        "form_reference": req.form_reference,
        "unit_request_reference": req.unit_request_reference,
    })
}

/// A fresh snapshot key: 256 random bits in hex.
fn new_snapshot_key() -> Result<String, StoreError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| StoreError::Unavailable(format!("no randomness: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A fresh store id: 128 random bits in hex.
fn new_store_id() -> Result<String, StoreError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| StoreError::Unavailable(format!("no randomness: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Writes a scenario's rule as it is (lifted or not); its revision.
async fn seeded<T: protocol::Tx>(
    tx: &mut T,
    revision: u64,
    at: Instant,
    new: &NewRule,
    by: &Caller,
) -> Result<u64, StoreError> {
    protocol::seed_rule(tx, revision, at, new, by).await?;
    Ok(revision)
}

/// One of the two backends. An enum rather than a trait object: the two
/// are fixed, and async methods then need no boxing. Each method runs the
/// one [`protocol`] on the backend's transactions.
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
        let path = dir.join(SQLITE_FILE);
        sqlite::SqliteStore::open(path, true).await.map(Store::Sqlite)
    }

    /// Opens the embedded store in `dir`, which must exist (for the command line).
    pub async fn open_sqlite_existing(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(SQLITE_FILE);
        sqlite::SqliteStore::open(path, false).await.map(Store::Sqlite)
    }

    /// Connects to (creating and migrating if needed) a PostgreSQL store.
    pub async fn open_postgres(url: &str) -> Result<Store, StoreError> {
        Ok(Store::Postgres(postgres::PgStore::open(url).await?))
    }

    /// The same store with commit times from `clock` (the system clock
    /// unless told otherwise).
    pub fn with_clock(self, clock: Clock) -> Store {
        match self {
            Store::Sqlite(s) => Store::Sqlite(s.with_clock(clock)),
            Store::Postgres(s) => Store::Postgres(s.with_clock(clock)),
        }
    }

    /// A unique id made when the store was created; snapshot files carry it.
    pub fn id(&self) -> &str {
        match self {
            Store::Sqlite(s) => s.id(),
            Store::Postgres(s) => s.id(),
        }
    }

    /// The key that authenticates this store's snapshot files; never
    /// written to a file.
    pub fn snapshot_key(&self) -> &[u8] {
        match self {
            Store::Sqlite(s) => s.snapshot_key(),
            Store::Postgres(s) => s.snapshot_key(),
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
            Store::Sqlite(s) => s.read(async |tx| protocol::revision(tx).await).await,
            Store::Postgres(s) => s.read(async |tx| protocol::revision(tx).await).await,
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
        self.create_rule_mailing(new, require_guardian, by, None).await
    }

    /// [`Store::create_rule`], queueing `mail` in the same transaction.
    pub async fn create_rule_mailing(
        &self,
        new: NewRule,
        require_guardian: bool,
        by: &Caller,
        mail: Option<MailDraft>,
    ) -> Result<Committed, StoreError> {
        let by = by.clone();
        let tz = crate::core::time::stockholm().map_err(|e| StoreError::Corrupt(e.to_string()))?;
        match self {
            Store::Sqlite(s) => {
                s.write(async move |tx, rev, at| {
                    outbox::create_rule(tx, rev, at, &new, require_guardian, &by, mail.as_ref(), &tz).await
                })
                .await
            }
            Store::Postgres(s) => {
                s.write(async |tx, rev, at| {
                    outbox::create_rule(tx, rev, at, &new, require_guardian, &by, mail.as_ref(), &tz).await
                })
                .await
            }
        }
    }

    /// Lifts a restriction or grant.
    pub async fn lift(&self, id: RuleId, req: LiftRequest, by: &Caller) -> Result<Committed, StoreError> {
        self.update_rule(id, RuleUpdate::lift(req), by, None).await
    }

    /// Records the signed form of an urgent restriction.
    pub async fn confirm(&self, id: RuleId, req: ConfirmRequest, by: &Caller) -> Result<Committed, StoreError> {
        self.update_rule(id, RuleUpdate::confirm(req), by, None).await
    }

    /// [`Store::lift`], queueing `mail` in the same transaction.
    pub async fn lift_mailing(
        &self,
        id: RuleId,
        req: LiftRequest,
        by: &Caller,
        mail: Option<MailDraft>,
    ) -> Result<Committed, StoreError> {
        self.update_rule(id, RuleUpdate::lift(req), by, mail).await
    }

    /// [`Store::confirm`], queueing `mail` in the same transaction.
    pub async fn confirm_mailing(
        &self,
        id: RuleId,
        req: ConfirmRequest,
        by: &Caller,
        mail: Option<MailDraft>,
    ) -> Result<Committed, StoreError> {
        self.update_rule(id, RuleUpdate::confirm(req), by, mail).await
    }

    async fn update_rule(
        &self,
        id: RuleId,
        update: RuleUpdate,
        by: &Caller,
        mail: Option<MailDraft>,
    ) -> Result<Committed, StoreError> {
        let by = by.clone();
        let tz = crate::core::time::stockholm().map_err(|e| StoreError::Corrupt(e.to_string()))?;
        match self {
            Store::Sqlite(s) => {
                s.write(async move |tx, rev, at| {
                    outbox::update_rule(tx, rev, at, id, &update, &by, mail.as_ref(), &tz).await
                })
                .await
            }
            Store::Postgres(s) => {
                s.write(async |tx, rev, at| {
                    outbox::update_rule(tx, rev, at, id, &update, &by, mail.as_ref(), &tz).await
                })
                .await
            }
        }
    }

    /// Urgent restrictions in force still waiting for their signed form,
    /// oldest first (the console's worklist).
    pub async fn awaiting_form(&self) -> Result<Vec<StoredRule>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(async move |tx| protocol::awaiting_form(tx).await).await,
            Store::Postgres(s) => s.read(async |tx| protocol::awaiting_form(tx).await).await,
        }
    }

    /// The newest `limit` restrictions and grants issued by `unit`.
    pub async fn rules_of_unit(&self, unit: HsaId, limit: u64) -> Result<Vec<StoredRule>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.read(async move |tx| protocol::rules_of_unit(tx, &unit, limit).await)
                    .await
            }
            Store::Postgres(s) => s.read(async |tx| protocol::rules_of_unit(tx, &unit, limit).await).await,
        }
    }

    /// Claims up to `limit` confirmation e-mails due now for this sender.
    pub async fn claim_mail(&self, limit: u64) -> Result<Vec<QueuedMail>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.append(async move |tx, at| outbox::claim_due(tx, at, limit).await)
                    .await
            }
            Store::Postgres(s) => s.append(async |tx, at| outbox::claim_due(tx, at, limit).await).await,
        }
    }

    /// Records that the mail server accepted message `id`.
    pub async fn mail_sent(&self, id: u64) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.append(async move |tx, at| outbox::sent(tx, at, id).await).await,
            Store::Postgres(s) => s.append(async |tx, at| outbox::sent(tx, at, id).await).await,
        }
    }

    /// Records a failed attempt at message `id`, to be tried again at `next`.
    pub async fn mail_failed(&self, id: u64, next: Instant, why: String) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.append(async move |tx, at| outbox::failed(tx, at, id, next, &why).await)
                    .await
            }
            Store::Postgres(s) => {
                s.append(async |tx, at| outbox::failed(tx, at, id, next, &why).await)
                    .await
            }
        }
    }

    /// Where the confirmations of rules `ids` stand.
    pub async fn mails_of(&self, ids: Vec<u64>) -> Result<Vec<MailStatus>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(async move |tx| outbox::of_rules(tx, &ids).await).await,
            Store::Postgres(s) => s.read(async |tx| outbox::of_rules(tx, &ids).await).await,
        }
    }

    /// Imports population records arriving on `rx` in one transaction: all
    /// or nothing.
    pub async fn import(&self, rx: mpsc::Receiver<ImportMsg>, by: &Caller) -> Result<Imported, StoreError> {
        self.import_as(rx, by, "population").await
    }

    async fn import_as(
        &self,
        rx: mpsc::Receiver<ImportMsg>,
        by: &Caller,
        action: &'static str,
    ) -> Result<Imported, StoreError> {
        let import = Import { rx, by, action };
        match self {
            Store::Sqlite(s) => s.import(import).await,
            Store::Postgres(s) => s.import(import).await,
        }
    }

    /// Writes a scenario's people and rules as they are (lifted ones
    /// included), for `--demo` and `--scenario`: a throwaway store only.
    /// The people are one write (audited as `seed`), each rule one more.
    pub async fn seed(&self, persons: Vec<PersonRecord>, rules: Vec<NewRule>, by: &Caller) -> Result<u64, StoreError> {
        let (tx, rx) = mpsc::channel(2);
        // Room for both messages: neither send waits.
        let _ = tx.try_send(ImportMsg::Batch(persons));
        let _ = tx.try_send(ImportMsg::End);
        drop(tx);
        let mut revision = self.import_as(rx, by, "seed").await?.revision;
        for new in rules {
            let by = by.clone();
            revision = match self {
                Store::Sqlite(s) => {
                    s.write(async move |tx, rev, at| seeded(tx, rev, at, &new, &by).await)
                        .await?
                }
                Store::Postgres(s) => {
                    s.write(async |tx, rev, at| seeded(tx, rev, at, &new, &by).await)
                        .await?
                }
            };
        }
        Ok(revision)
    }

    /// What changed after `after`; `TooMany` when more than `max_persons`
    /// person records did; `Diverged` when the log does not follow on.
    ///
    /// `expect` is the digest the caller holds for `after`: a store whose
    /// digest there differs answers [`Changes::Diverged`].
    pub async fn changes(&self, after: u64, expect: Option<String>, max_persons: u64) -> Result<Changes, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.read(async move |tx| protocol::changes(tx, after, expect.as_deref(), max_persons).await)
                    .await
            }
            Store::Postgres(s) => {
                s.read(async |tx| protocol::changes(tx, after, expect.as_deref(), max_persons).await)
                    .await
            }
        }
    }

    /// Everything, at one revision.
    pub async fn load(&self) -> Result<Loaded, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(async |tx| protocol::load(tx).await).await,
            Store::Postgres(s) => s.read(async |tx| protocol::load(tx).await).await,
        }
    }

    /// A person's record, if the population data has one.
    pub async fn person(&self, pid: Pid) -> Result<Option<StoredPerson>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(async move |tx| protocol::person(tx, pid).await).await,
            Store::Postgres(s) => s.read(async |tx| protocol::person(tx, pid).await).await,
        }
    }

    /// Every restriction and grant on a subject, lifted ones too, oldest first.
    pub async fn rules_of(&self, subject: Pid) -> Result<Vec<StoredRule>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(async move |tx| protocol::rules_of(tx, subject).await).await,
            Store::Postgres(s) => s.read(async |tx| protocol::rules_of(tx, subject).await).await,
        }
    }

    /// The facts of the pair (`subject`, `actor`) as they stood at
    /// `at_revision` (the head when `None`), from the store's history: the
    /// revision, the records of the subject, their guardians and the actor,
    /// and the subject's rules as they stood.
    pub async fn facts(
        &self,
        subject: Pid,
        actor: Pid,
        at_revision: Option<u64>,
    ) -> Result<(u64, Vec<PersonRecord>, Vec<Rule>), StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.read(async move |tx| protocol::facts(tx, subject, actor, at_revision).await)
                    .await
            }
            Store::Postgres(s) => {
                s.read(async |tx| protocol::facts(tx, subject, actor, at_revision).await)
                    .await
            }
        }
    }

    /// Appends one read of personal data to the access log, durably, before
    /// the data is shown; the entry's number. Takes no revision: reads
    /// change nothing checks see.
    pub async fn log_access(&self, access: Access<'_>) -> Result<u64, StoreError> {
        let owned = OwnedAccess::from(access);
        match self {
            Store::Sqlite(s) => s.append(async move |tx, at| owned.record(tx, at).await).await,
            Store::Postgres(s) => s.append(async |tx, at| owned.record(tx, at).await).await,
        }
    }

    /// Access-log entries, oldest first (see [`AccessQuery`]).
    pub async fn access_log(&self, query: AccessQuery) -> Result<Vec<AccessEntry>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(async move |tx| protocol::access_log(tx, &query).await).await,
            Store::Postgres(s) => s.read(async |tx| protocol::access_log(tx, &query).await).await,
        }
    }

    /// Removes the access log before `before`, recording the boundary and
    /// the removal (the caller checks the retention period); how many
    /// entries went.
    pub async fn prune_access_log(&self, before: Instant, by: &Caller) -> Result<u64, StoreError> {
        let by = by.clone();
        match self {
            Store::Sqlite(s) => {
                s.append(async move |tx, at| protocol::prune_access_log(tx, at, before, &by).await)
                    .await
            }
            Store::Postgres(s) => {
                s.append(async |tx, at| protocol::prune_access_log(tx, at, before, &by).await)
                    .await
            }
        }
    }

    /// Every write concerning a subject, oldest first: writes about their
    /// restrictions and grants, and every population import that changed
    /// their record.
    pub async fn audit_of(&self, subject: Pid) -> Result<Vec<AuditEntry>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(async move |tx| protocol::audit_of(tx, subject).await).await,
            Store::Postgres(s) => s.read(async |tx| protocol::audit_of(tx, subject).await).await,
        }
    }
}
