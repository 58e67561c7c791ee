//! The store's protocol, written once for both backends: what each write
//! and read does, in which order, with which checks. The backends only do
//! I/O: they open transactions and run statements through [`Tx`], and hand
//! back rows through [`Row`].
//!
//! - A write takes the next revision first (`UPDATE meta … RETURNING`, the
//!   row lock that orders writers), does its work, and records one
//!   `changes` row and one `audit` row under that revision.
//! - A read of the change log checks that it follows on from the reader's
//!   revision with no gap, and says [`Changes::Diverged`] when it does not
//!   (a restored backup, a store behind its reader): the node then rebuilds.
//! - Every stored value is validated on the way back ([`RuleRow`],
//!   [`PersonRow`]): a damaged or tampered database is an error, never a
//!   panic and never a wrong answer.

use serde_json::Value;

use super::sql::{self, Dialect};
use super::{
    Access, AccessEntry, AccessQuery, AuditEntry, Changes, Committed, Loaded, NewRule, RuleUpdate, StoreError,
    StoredPerson, StoredRule, Subjects, create_action, rule_detail,
};
use crate::actor::Caller;
use crate::core::identity::Pid;
use crate::core::model::{HsaId, Rule, RuleId, RuleKind, Services};
use crate::core::people::{PeopleBuilder, PersonRecord};
use crate::core::time::Instant;

/// A statement parameter, in the few types the schema uses. `None` is a
/// typed SQL `NULL`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Param<'a> {
    /// `INTEGER` / `BIGINT`.
    Int(Option<i64>),
    /// `TEXT`.
    Text(Option<&'a str>),
    /// `INTEGER` 0/1 in SQLite, `BOOLEAN` in PostgreSQL.
    Flag(bool),
}

/// A non-negative number (revision, count, id) as SQL's signed integer.
pub(crate) fn wide(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt("a number is out of range".into()))
}

/// A stored signed integer as the non-negative number it must be.
pub(crate) fn narrow(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt("a stored number is negative".into()))
}

fn int(v: u64) -> Result<Param<'static>, StoreError> {
    Ok(Param::Int(Some(wide(v)?)))
}

fn pid(p: Pid) -> Result<Param<'static>, StoreError> {
    int(p.get())
}

fn opt_pid(p: Option<Pid>) -> Result<Param<'static>, StoreError> {
    Ok(Param::Int(p.map(|p| wide(p.get())).transpose()?))
}

fn instant(i: Option<Instant>) -> Param<'static> {
    Param::Int(i.map(Instant::as_nanos))
}

fn text(s: &str) -> Param<'_> {
    Param::Text(Some(s))
}

/// One row of a result, column by column.
pub(crate) trait Row {
    /// An integer column, `None` for `NULL`.
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError>;
    /// A text column, `None` for `NULL`.
    fn text(&self, i: usize) -> Result<Option<&str>, StoreError>;
    /// A flag column.
    fn flag(&self, i: usize) -> Result<bool, StoreError>;

    /// An integer column that may not be `NULL`.
    fn req_int(&self, i: usize) -> Result<i64, StoreError> {
        self.int(i)?.ok_or_else(|| null(i))
    }

    /// A text column that may not be `NULL`.
    fn req_text(&self, i: usize) -> Result<&str, StoreError> {
        self.text(i)?.ok_or_else(|| null(i))
    }
}

fn null(i: usize) -> StoreError {
    StoreError::Corrupt(format!("column {i} is unexpectedly NULL"))
}

/// What a row callback gets.
pub(crate) type EachRow<'f> = dyn FnMut(&dyn Row) -> Result<(), StoreError> + Send + 'f;

/// A transaction (or, for simple reads, a connection) of one backend.
pub(crate) trait Tx {
    /// The dialect its statements are written in.
    fn dialect(&self) -> Dialect;
    /// Runs several statements without parameters (migrations).
    async fn batch(&mut self, sql: &str) -> Result<(), StoreError>;
    /// Runs one statement; the rows it changed.
    async fn exec(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError>;
    /// Runs a query, calling `each` on every row in order.
    async fn each(&mut self, sql: &str, params: &[Param<'_>], each: &mut EachRow<'_>) -> Result<(), StoreError>;

    /// The first row of a query, through `f`.
    async fn first<T: Send>(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        f: impl Fn(&dyn Row) -> Result<T, StoreError> + Send + Sync,
    ) -> Result<Option<T>, StoreError> {
        let mut out = None;
        self.each(sql, params, &mut |r| {
            if out.is_none() {
                out = Some(f(r)?);
            }
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// Every row of a query, through `f`.
    async fn all<T: Send>(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        f: impl Fn(&dyn Row) -> Result<T, StoreError> + Send + Sync,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        self.each(sql, params, &mut |r| {
            out.push(f(r)?);
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// A query that must return exactly one integer.
    async fn one_int(&mut self, sql: &str, params: &[Param<'_>]) -> Result<i64, StoreError> {
        self.first(sql, params, |r| r.req_int(0))
            .await?
            .ok_or_else(|| StoreError::Corrupt("a query returned no row".into()))
    }
}

/// Creates or migrates the schema and the `meta` row, inside one
/// transaction; the store's id and its snapshot key.
pub(crate) async fn migrate<T: Tx>(tx: &mut T, at: Instant) -> Result<(String, Vec<u8>), StoreError> {
    let d = tx.dialect();
    tx.batch(sql::MIGRATIONS_TABLE).await?;
    let current = tx.one_int(sql::SCHEMA_VERSION, &[]).await?;
    let migrations = super::schema::migrations(d);
    let known = i64::try_from(migrations.len()).unwrap_or(i64::MAX);
    if current > known {
        return Err(StoreError::Schema(current, known));
    }
    for (version, migration) in (1i64..).zip(&migrations).skip(usize::try_from(current).unwrap_or(0)) {
        tx.batch(migration).await?;
        tx.exec(sql::MIGRATION_APPLIED, &[Param::Int(Some(version)), instant(Some(at))])
            .await?;
    }
    let id = super::new_store_id()?;
    tx.exec(sql::META_CREATE, &[text(&id)]).await?;
    let key = super::new_snapshot_key()?;
    tx.exec(sql::SNAPSHOT_KEY_CREATE, &[text(&key)]).await?;
    tx.first(sql::STORE_ID, &[], |r| {
        let key =
            decode_hex(r.req_text(1)?).ok_or_else(|| StoreError::Corrupt("the snapshot key is not hex".into()))?;
        Ok((r.req_text(0)?.to_owned(), key))
    })
    .await?
    .ok_or_else(|| StoreError::Corrupt("no store id".into()))
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The store's current revision.
pub(crate) async fn revision<T: Tx>(tx: &mut T) -> Result<u64, StoreError> {
    narrow(tx.one_int(sql::REVISION, &[]).await?)
}

/// Takes the next revision: the lock that orders writers.
pub(crate) async fn next_revision<T: Tx>(tx: &mut T) -> Result<u64, StoreError> {
    narrow(tx.one_int(sql::NEXT_REVISION, &[]).await?)
}

/// What one write records besides its work: the change-log row and the
/// audit row under its revision.
pub(crate) struct Record<'a> {
    /// `rule` or `population`.
    pub kind: &'static str,
    /// Person records changed.
    pub persons: u64,
    /// Rules changed.
    pub rules: u64,
    /// Who wrote.
    pub by: &'a Caller,
    /// The audited action.
    pub action: &'a str,
    /// The subject, for writes about one.
    pub subject: Option<Pid>,
    /// The restriction or grant, for writes about one.
    pub rule_id: Option<u64>,
    /// The write's content.
    pub detail: &'a Value,
}

/// Writes `record`'s `changes` and `audit` rows.
pub(crate) async fn record<T: Tx>(
    tx: &mut T,
    revision: u64,
    at: Instant,
    record: Record<'_>,
) -> Result<(), StoreError> {
    let rev = int(revision)?;
    let detail = record.detail.to_string();
    let previous = match revision.checked_sub(1) {
        Some(p) if p > 0 => digest_at(tx, p).await?,
        _ => None,
    };
    let digest = chain(previous.as_deref(), revision, at, &record, &detail)?;
    let at = instant(Some(at));
    tx.exec(
        sql::INSERT_CHANGE,
        &[
            rev,
            at,
            text(record.kind),
            int(record.persons)?,
            int(record.rules)?,
            text(&digest),
        ],
    )
    .await?;
    tx.exec(
        sql::INSERT_AUDIT,
        &[
            rev,
            at,
            text(&record.by.name),
            text(record.by.role.as_str()),
            text(record.action),
            opt_pid(record.subject)?,
            Param::Int(record.rule_id.map(wide).transpose()?),
            text(&detail),
            Param::Text(record.by.hsa_id.as_ref().map(HsaId::as_str)),
        ],
    )
    .await?;
    Ok(())
}

/// The stored digest of `revision`, if it has one.
pub(crate) async fn digest_at<T: Tx>(tx: &mut T, revision: u64) -> Result<Option<String>, StoreError> {
    Ok(tx
        .first(sql::DIGEST_AT, &[int(revision)?], |r| Ok(r.text(0)?.map(str::to_owned)))
        .await?
        .flatten())
}

/// The digest of `revision`: SHA-256 over the previous revision's digest,
/// a fresh random nonce and what this revision records, as lowercase hex.
/// Two histories that agree up to a revision have the same digest there;
/// another write under the same number has another digest, even one that
/// records the same thing at the same instant (the nonce).
fn chain(
    previous: Option<&str>,
    revision: u64,
    at: Instant,
    record: &Record<'_>,
    detail: &str,
) -> Result<String, StoreError> {
    use sha2::Digest as _;
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| StoreError::Unavailable(format!("no randomness: {e}")))?;
    let mut h = sha2::Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(previous.unwrap_or("").as_bytes());
    field(&nonce);
    field(&revision.to_le_bytes());
    field(&at.as_nanos().to_le_bytes());
    field(record.kind.as_bytes());
    field(&record.persons.to_le_bytes());
    field(&record.rules.to_le_bytes());
    field(record.by.name.as_bytes());
    field(record.by.role.as_str().as_bytes());
    field(record.action.as_bytes());
    field(&record.subject.map_or(0, Pid::get).to_le_bytes());
    field(&record.rule_id.unwrap_or(0).to_le_bytes());
    field(detail.as_bytes());
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Records a population write (`population` or `seed`) that read
/// `upserted` records and changed `changed`.
pub(crate) async fn record_population<T: Tx>(
    tx: &mut T,
    revision: u64,
    at: Instant,
    by: &Caller,
    action: &str,
    upserted: u64,
    changed: u64,
) -> Result<(), StoreError> {
    let detail = serde_json::json!({"upserted": upserted, "changed": changed});
    let rec = Record {
        kind: "population",
        persons: changed,
        rules: 0,
        by,
        action,
        subject: None,
        rule_id: None,
        detail: &detail,
    };
    record(tx, revision, at, rec).await
}

/// Inserts a rule as revision `id` (its id is its revision).
async fn insert_rule<T: Tx>(
    tx: &mut T,
    id: u64,
    new: &NewRule,
    at: Instant,
    by: &Caller,
    lifted_at: Option<Instant>,
) -> Result<(), StoreError> {
    let r = &new.rule;
    let m = &new.meta;
    let units = r.care_units.as_deref().map(units_text);
    let decided_by = m.decided_by.to_string();
    let requested_by = m.requested_by.as_ref().map(Value::to_string);
    tx.exec(
        sql::INSERT_RULE,
        &[
            int(id)?,
            text(r.kind.as_str()),
            pid(r.subject)?,
            opt_pid(r.guardian)?,
            Param::Int(Some(i64::from(r.services.bits()))),
            instant(Some(r.valid_from)),
            instant(r.valid_until),
            instant(lifted_at),
            Param::Text(units.as_deref()),
            text(m.issuing_unit.as_str()),
            text(&decided_by),
            Param::Text(requested_by.as_deref()),
            text(&m.basis),
            Param::Flag(m.urgent),
            Param::Text(m.reference.as_deref()),
            instant(Some(at)),
            text(&by.name),
        ],
    )
    .await?;
    Ok(())
}

/// Creates a restriction or grant at `revision`. With `require_guardian`,
/// its guardian must be a registered guardian of its subject, checked here,
/// inside the write.
pub(crate) async fn create_rule<T: Tx>(
    tx: &mut T,
    revision: u64,
    at: Instant,
    new: &NewRule,
    require_guardian: bool,
    by: &Caller,
) -> Result<Committed, StoreError> {
    if require_guardian {
        let registered = tx
            .first(sql::GUARDIANS_OF, &[pid(new.rule.subject)?], |r| {
                parse_guardians(r.req_text(0)?)
            })
            .await?
            .unwrap_or_default();
        if !new.rule.guardian.is_some_and(|g| registered.contains(&g)) {
            return Err(StoreError::NotGuardian);
        }
    }
    let in_force = tx
        .one_int(sql::RULES_IN_FORCE, &[pid(new.rule.subject)?, instant(Some(at))])
        .await?;
    if narrow(in_force)? >= super::MAX_RULES_IN_FORCE {
        return Err(StoreError::TooManyRules);
    }
    insert_rule(tx, revision, new, at, by, None).await?;
    let detail = rule_detail(new);
    let rec = Record {
        kind: "rule",
        persons: 0,
        rules: 1,
        by,
        action: create_action(new.rule.kind),
        subject: Some(new.rule.subject),
        rule_id: Some(revision),
        detail: &detail,
    };
    record(tx, revision, at, rec).await?;
    Ok(Committed {
        revision,
        rule_id: Some(RuleId(revision)),
    })
}

/// Writes a scenario's rule as it is (lifted or not) at `revision`.
pub(crate) async fn seed_rule<T: Tx>(
    tx: &mut T,
    revision: u64,
    at: Instant,
    new: &NewRule,
    by: &Caller,
) -> Result<(), StoreError> {
    insert_rule(tx, revision, new, at, by, new.rule.lifted_at).await?;
    let detail = rule_detail(new);
    let rec = Record {
        kind: "rule",
        persons: 0,
        rules: 1,
        by,
        action: "seed",
        subject: Some(new.rule.subject),
        rule_id: Some(revision),
        detail: &detail,
    };
    record(tx, revision, at, rec).await
}

/// A lift or a confirmation at `revision`: checks the stored rule (locked
/// where the dialect can) against what SPEC §5 allows, then records it.
pub(crate) async fn update_rule<T: Tx>(
    tx: &mut T,
    revision: u64,
    at: Instant,
    id: RuleId,
    update: &RuleUpdate,
    by: &Caller,
) -> Result<Committed, StoreError> {
    let stored = match i64::try_from(id.0) {
        Ok(key) => {
            let select = sql::rule_for_update(tx.dialect());
            tx.first(&select, &[Param::Int(Some(key))], |r| RuleRow::read(r)?.stored())
                .await?
        }
        Err(_) => None,
    };
    update.check(stored.as_ref())?;
    let record_text = update.record(by).to_string();
    let statement = sql::update_rule(update.at_column, update.record_column);
    tx.exec(
        &statement,
        &[instant(Some(at)), text(&record_text), int(revision)?, int(id.0)?],
    )
    .await?;
    let rec = Record {
        kind: "rule",
        persons: 0,
        rules: 1,
        by,
        action: update.action,
        subject: stored.map(|s| s.rule.subject),
        rule_id: Some(id.0),
        detail: &update.detail,
    };
    record(tx, revision, at, rec).await?;
    Ok(Committed {
        revision,
        rule_id: Some(id),
    })
}

/// What changed after `after`, in one consistent read transaction.
/// `expect` is the digest the reader holds for `after` (see
/// [`digest_at`]): if the store's differs, its history is not the one the
/// reader followed.
pub(crate) async fn changes<T: Tx>(
    tx: &mut T,
    after: u64,
    expect: Option<&str>,
    max_persons: u64,
) -> Result<Changes, StoreError> {
    let head = revision(tx).await?;
    if head < after {
        return Ok(Changes::Diverged(format!(
            "the store is at revision {head}, behind this instance's {after}"
        )));
    }
    if let Some(expect) = expect
        && after > 0
        && let Some(stored) = digest_at(tx, after).await?
        && stored != expect
    {
        return Ok(Changes::Diverged(format!(
            "the store's history differs from this instance's at revision {after} (a failover to a standby that \
             had not received it?)"
        )));
    }
    if head == after {
        return Ok(Changes::UpToDate(head));
    }
    let since = [int(after)?];
    let (count, persons) = tx
        .first(sql::CHANGES_SINCE, &since, |r| Ok((r.req_int(0)?, r.req_int(1)?)))
        .await?
        .unwrap_or((0, 0));
    if narrow(count)? != head - after {
        return Ok(Changes::Diverged("the change log has a gap".into()));
    }
    if narrow(persons)? > max_persons {
        return Ok(Changes::TooMany(head));
    }
    let persons = tx
        .all(sql::PERSON_HISTORY_SINCE, &since, |r| PersonRow::read(r)?.record())
        .await?;
    let rules = tx.all(sql::RULES_SINCE, &since, |r| RuleRow::read(r)?.rule()).await?;
    let digest = digest_at(tx, head).await?;
    Ok(Changes::Delta {
        revision: head,
        persons,
        rules,
        digest,
    })
}

/// Everything, in one consistent read transaction; person rows are
/// streamed into the builder, not collected.
pub(crate) async fn load<T: Tx>(tx: &mut T) -> Result<Loaded, StoreError> {
    let head = revision(tx).await?;
    let count = usize::try_from(tx.one_int(sql::COUNT_PERSONS, &[]).await?).unwrap_or(0);
    let mut people = PeopleBuilder::with_capacity(count, count);
    let mut guardians: Vec<Pid> = Vec::new();
    tx.each(sql::ALL_PERSONS, &[], &mut |r| {
        let id = stored_pid(r.req_int(0)?)?;
        let birth = stored_date(r.text(1)?)?;
        guardians.clear();
        guardians.extend(parse_guardians(r.req_text(3)?)?);
        people.person(id, birth, r.flag(2)?, &guardians);
        Ok(())
    })
    .await?;
    let rules = tx.all(sql::ALL_RULES, &[], |r| RuleRow::read(r)?.rule()).await?;
    let digest = match head {
        0 => None,
        h => digest_at(tx, h).await?,
    };
    Ok(Loaded {
        revision: head,
        people,
        rules,
        digest,
    })
}

/// A person's record, if the population data has one.
pub(crate) async fn person<T: Tx>(tx: &mut T, subject: Pid) -> Result<Option<StoredPerson>, StoreError> {
    tx.first(sql::PERSON, &[pid(subject)?], |r| {
        let row = PersonRow::read(r)?;
        let revision = narrow(row.revision)?;
        Ok(StoredPerson {
            record: row.record()?,
            revision,
        })
    })
    .await
}

/// Every restriction and grant on a subject, oldest first.
/// Urgent restrictions not lifted and still waiting for their signed form,
/// oldest first.
pub(crate) async fn awaiting_form<T: Tx>(tx: &mut T) -> Result<Vec<StoredRule>, StoreError> {
    tx.all(sql::AWAITING_FORM, &[Param::Flag(true)], |r| RuleRow::read(r)?.stored())
        .await
}

/// The newest `limit` rules issued by `unit`.
pub(crate) async fn rules_of_unit<T: Tx>(tx: &mut T, unit: &HsaId, limit: u64) -> Result<Vec<StoredRule>, StoreError> {
    tx.all(sql::RULES_OF_UNIT, &[text(unit.as_str()), int(limit)?], |r| {
        RuleRow::read(r)?.stored()
    })
    .await
}

pub(crate) async fn rules_of<T: Tx>(tx: &mut T, subject: Pid) -> Result<Vec<StoredRule>, StoreError> {
    tx.all(sql::RULES_OF, &[pid(subject)?], |r| RuleRow::read(r)?.stored())
        .await
}

/// Every write concerning a subject, oldest first: writes about their rules
/// and every population write that changed their record.
pub(crate) async fn audit_of<T: Tx>(tx: &mut T, subject: Pid) -> Result<Vec<AuditEntry>, StoreError> {
    let key = [pid(subject)?];
    // Both queries start with the audit row's revision, at, actor, role and
    // action; then the rule id and detail, or the person's record as it was.
    let entry = |r: &dyn Row, rule_id: Option<u64>, detail: Value, hsa: usize| -> Result<AuditEntry, StoreError> {
        Ok(AuditEntry {
            hsa_id: r.text(hsa)?.map(str::to_owned),
            revision: narrow(r.req_int(0)?)?,
            at: Instant::from_nanos(r.req_int(1)?),
            actor: r.req_text(2)?.to_owned(),
            role: r.req_text(3)?.to_owned(),
            action: r.req_text(4)?.to_owned(),
            subject: Some(subject),
            rule_id,
            detail,
        })
    };
    let mut out = tx
        .all(sql::AUDIT_OF, &key, |r| {
            let rule_id = r.int(5)?.map(narrow).transpose()?;
            entry(r, rule_id, parse_json(r.req_text(6)?)?, 7)
        })
        .await?;
    let history = tx
        .all(sql::POPULATION_AUDIT_OF, &key, |r| {
            let guardians: Vec<String> = parse_guardians(r.req_text(7)?)?.iter().map(Pid::to_string).collect();
            let record = serde_json::json!({
                "birth_date": r.text(5)?,
                "protected": r.flag(6)?,
                "guardians": guardians,
            });
            entry(r, None, record, 8)
        })
        .await?;
    out.extend(history);
    out.sort_by_key(|e| e.revision);
    Ok(out)
}

/// The facts of a pair as they stood at `at_revision` (the head when
/// `None`): the subject's record, their guardians' and the asker's, and the
/// subject's rules with lifts made later undone. From the history, so the
/// explanation of last Tuesday's answer is last Tuesday's.
pub(crate) async fn facts<T: Tx>(
    tx: &mut T,
    subject: Pid,
    actor: Pid,
    at_revision: Option<u64>,
) -> Result<(u64, Vec<PersonRecord>, Vec<Rule>), StoreError> {
    let head = revision(tx).await?;
    let at = match at_revision {
        Some(r) if r > head => return Err(StoreError::FutureRevision(head)),
        Some(r) => r,
        None => head,
    };
    let rev = int(at)?;
    let mut records: Vec<PersonRecord> = Vec::new();
    let mut wanted = vec![subject, actor];
    while let Some(pid) = wanted.pop() {
        if records.iter().any(|r| r.id == pid) {
            continue;
        }
        let found = tx
            .first(sql::PERSON_AT, &[pid_param(pid)?, rev], |r| {
                PersonRow::read(r)?.record()
            })
            .await?;
        if let Some(record) = found {
            if record.id == subject {
                wanted.extend(record.guardians.iter().copied());
            }
            records.push(record);
        }
    }
    let rules = tx
        .all(sql::RULES_AT, &[pid_param(subject)?, rev], |r| {
            let mut rule = RuleRow::read(r)?.rule()?;
            if let Some(lifted) = r.int(21)?
                && narrow(lifted)? > at
            {
                rule.lifted_at = None;
            }
            Ok(rule)
        })
        .await?;
    Ok((at, records, rules))
}

fn pid_param(p: Pid) -> Result<Param<'static>, StoreError> {
    pid(p)
}

/// Appends one access-log entry (with its subjects, for a patient's log
/// extract); its id.
pub(crate) async fn record_access<T: Tx>(tx: &mut T, at: Instant, access: &Access<'_>) -> Result<u64, StoreError> {
    let subjects = match access.subjects {
        Subjects::Some(list) => guardians_text(list),
        Subjects::Everyone => "*".to_owned(),
        Subjects::None => String::new(),
    };
    let detail = access.detail.to_string();
    let id = tx
        .first(
            sql::INSERT_ACCESS,
            &[
                instant(Some(at)),
                text(&access.by.name),
                Param::Text(access.by.hsa_id.as_ref().map(HsaId::as_str)),
                text(access.by.role.as_str()),
                text(access.action),
                text(&subjects),
                Param::Text(access.purpose),
                text(&detail),
            ],
            |r| r.req_int(0),
        )
        .await?
        .ok_or_else(|| StoreError::Corrupt("an insert returned no id".into()))?;
    if let Subjects::Some(list) = access.subjects {
        for subject in list {
            tx.exec(sql::INSERT_ACCESS_SUBJECT, &[pid(*subject)?, Param::Int(Some(id))])
                .await?;
        }
    }
    narrow(id)
}

/// Access-log entries: a subject's or everyone's, in `[from, to)`, after
/// entry `after`, at most `limit`, oldest first.
pub(crate) async fn access_log<T: Tx>(tx: &mut T, query: &AccessQuery) -> Result<Vec<AccessEntry>, StoreError> {
    let (from, to) = (instant(Some(query.from)), instant(Some(query.to)));
    let (after, limit) = (int(query.after)?, int(query.limit)?);
    let read = |r: &dyn Row| -> Result<AccessEntry, StoreError> {
        let subjects = r.req_text(6)?;
        Ok(AccessEntry {
            id: narrow(r.req_int(0)?)?,
            at: Instant::from_nanos(r.req_int(1)?),
            actor: r.req_text(2)?.to_owned(),
            hsa_id: r.text(3)?.map(str::to_owned),
            role: r.req_text(4)?.to_owned(),
            action: r.req_text(5)?.to_owned(),
            everyone: subjects == "*",
            subjects: if subjects == "*" {
                Vec::new()
            } else {
                parse_guardians(subjects)?
            },
            purpose: r.text(7)?.map(str::to_owned),
            detail: parse_json(r.req_text(8)?)?,
        })
    };
    match query.subject {
        Some(subject) => {
            tx.all(sql::ACCESS_OF, &[pid(subject)?, from, to, after, limit], read)
                .await
        }
        None => tx.all(sql::ACCESS_BETWEEN, &[from, to, after, limit], read).await,
    }
}

/// Removes the access log before `before` (the caller has checked the
/// retention), recording the boundary first and the removal itself as an
/// entry; how many entries went.
pub(crate) async fn prune_access_log<T: Tx>(
    tx: &mut T,
    at: Instant,
    before: Instant,
    by: &Caller,
) -> Result<u64, StoreError> {
    let boundary = instant(Some(before));
    tx.exec(sql::INSERT_PRUNE, &[boundary, instant(Some(at)), text(&by.name)])
        .await?;
    tx.exec(sql::PRUNE_SUBJECTS, &[boundary]).await?;
    let removed = tx.exec(sql::PRUNE_ACCESS, &[boundary]).await?;
    let detail = serde_json::json!({"before": before.to_timestamp().to_string(), "removed": removed});
    let entry = Access {
        by,
        action: "prune_access_log",
        subjects: Subjects::None,
        purpose: None,
        detail,
    };
    record_access(tx, at, &entry).await?;
    Ok(removed)
}

/// Guardians as stored: canonical numbers separated by commas.
pub(crate) fn guardians_text(guardians: &[Pid]) -> String {
    let mut out = String::with_capacity(guardians.len() * 13);
    push_guardians_text(&mut out, guardians);
    out
}

/// [`guardians_text`] appended to `out`, allocating nothing more (a
/// national import writes millions).
pub(crate) fn push_guardians_text(out: &mut String, guardians: &[Pid]) {
    use std::fmt::Write;
    for (i, g) in guardians.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{g}");
    }
}

/// Reads stored guardians back, validating every number.
pub(crate) fn parse_guardians(text: &str) -> Result<Vec<Pid>, StoreError> {
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
fn stored_pid(v: i64) -> Result<Pid, StoreError> {
    u64::try_from(v)
        .ok()
        .and_then(|v| Pid::from_u64(v).ok())
        .ok_or_else(|| StoreError::Corrupt("a stored number is not valid".into()))
}

/// Reads a stored birth date back.
fn stored_date(s: Option<&str>) -> Result<Option<jiff::civil::Date>, StoreError> {
    s.map(|s| {
        s.parse()
            .map_err(|_| StoreError::Corrupt("a stored birth date is not a date".into()))
    })
    .transpose()
}

/// Care units as stored: HSA-IDs separated by commas.
fn units_text(units: &[HsaId]) -> String {
    units.iter().map(HsaId::as_str).collect::<Vec<_>>().join(",")
}

/// Reads stored care units back.
fn parse_units(text: Option<&str>) -> Result<Option<std::sync::Arc<[HsaId]>>, StoreError> {
    text.map(|t| {
        t.split(',')
            .map(|u| HsaId::parse(u).map_err(|_| StoreError::Corrupt("a stored care unit is not an HSA-ID".into())))
            .collect()
    })
    .transpose()
}

/// Reads stored JSON back.
fn parse_json(text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|_| StoreError::Corrupt("stored JSON is invalid".into()))
}

/// A `rules` row (the columns of [`sql::RULE_COLUMNS`]) before validation.
#[derive(Debug)]
struct RuleRow {
    id: i64,
    kind: String,
    subject: i64,
    guardian: Option<i64>,
    services: i64,
    valid_from: i64,
    valid_until: Option<i64>,
    lifted_at: Option<i64>,
    care_units: Option<String>,
    issuing_unit: String,
    decided_by: String,
    requested_by: Option<String>,
    basis: String,
    urgent: bool,
    reference: Option<String>,
    created_at: i64,
    created_by: String,
    confirmed_at: Option<i64>,
    confirmation: Option<String>,
    lift: Option<String>,
    revision: i64,
}

impl RuleRow {
    fn read(r: &dyn Row) -> Result<RuleRow, StoreError> {
        let owned = |i| -> Result<Option<String>, StoreError> { Ok(r.text(i)?.map(str::to_owned)) };
        Ok(RuleRow {
            id: r.req_int(0)?,
            kind: r.req_text(1)?.to_owned(),
            subject: r.req_int(2)?,
            guardian: r.int(3)?,
            services: r.req_int(4)?,
            valid_from: r.req_int(5)?,
            valid_until: r.int(6)?,
            lifted_at: r.int(7)?,
            care_units: owned(8)?,
            issuing_unit: r.req_text(9)?.to_owned(),
            decided_by: r.req_text(10)?.to_owned(),
            requested_by: owned(11)?,
            basis: r.req_text(12)?.to_owned(),
            urgent: r.flag(13)?,
            reference: owned(14)?,
            created_at: r.req_int(15)?,
            created_by: r.req_text(16)?.to_owned(),
            confirmed_at: r.int(17)?,
            confirmation: owned(18)?,
            lift: owned(19)?,
            revision: r.req_int(20)?,
        })
    }

    /// The rule as checks see it, validated.
    fn rule(&self) -> Result<Rule, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("rule {}: {what}", self.id));
        Ok(Rule {
            id: RuleId(u64::try_from(self.id).map_err(|_| corrupt("bad id"))?),
            kind: RuleKind::parse(&self.kind).ok_or_else(|| corrupt("unknown kind"))?,
            subject: stored_pid(self.subject)?,
            guardian: self.guardian.map(stored_pid).transpose()?,
            services: u8::try_from(self.services)
                .ok()
                .and_then(Services::from_bits)
                .ok_or_else(|| corrupt("unknown services"))?,
            valid_from: Instant::from_nanos(self.valid_from),
            valid_until: self.valid_until.map(Instant::from_nanos),
            lifted_at: self.lifted_at.map(Instant::from_nanos),
            care_units: parse_units(self.care_units.as_deref())?,
        })
    }

    /// The whole record, validated.
    fn stored(self) -> Result<StoredRule, StoreError> {
        let rule = self.rule()?;
        Ok(StoredRule {
            rule,
            meta: super::RuleMeta {
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
            revision: narrow(self.revision)?,
        })
    }
}

/// A `persons` or `person_history` row (id, birth date, protected,
/// guardians, revision) before validation.
#[derive(Debug)]
struct PersonRow {
    id: i64,
    birth_date: Option<String>,
    protected: bool,
    guardians: String,
    revision: i64,
}

impl PersonRow {
    fn read(r: &dyn Row) -> Result<PersonRow, StoreError> {
        Ok(PersonRow {
            id: r.req_int(0)?,
            birth_date: r.text(1)?.map(str::to_owned),
            protected: r.flag(2)?,
            guardians: r.req_text(3)?.to_owned(),
            revision: r.req_int(4)?,
        })
    }

    /// The record, validated.
    fn record(self) -> Result<PersonRecord, StoreError> {
        Ok(PersonRecord {
            id: stored_pid(self.id)?,
            birth_date: stored_date(self.birth_date.as_deref())?,
            protected: self.protected,
            guardians: parse_guardians(&self.guardians)?,
        })
    }
}
