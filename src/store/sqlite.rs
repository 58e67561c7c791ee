//! The embedded store: SQLite through `rusqlite` (bundled), in WAL mode
//! with `synchronous = FULL`, so a commit is on disk before it returns.
//!
//! One writer connection behind a mutex (SQLite has one writer anyway) and a
//! small pool of reader connections, which in WAL mode read a consistent
//! snapshot while the writer commits. Every call runs on tokio's blocking
//! pool through [`SqliteStore::run`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{
    AuditEntry, Caller, Changes, Committed, ImportMsg, Imported, Loaded, NewRule, PersonRow, RULE_COLUMNS, RuleRow,
    RuleUpdate, StoreError, StoredPerson, StoredRule, create_action, guardians_text, now, parse_json, rule_detail,
    stored_pid, units_text,
};
use crate::identity::Pid;
use crate::model::RuleId;
use crate::people::{PeopleBuilder, PersonRecord};
use crate::time::Instant;

/// The embedded store. Cloning shares it.
#[derive(Clone)]
pub struct SqliteStore {
    db: Arc<Db>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.db.path).finish()
    }
}

/// The connections. Methods here block: call them through [`SqliteStore::run`].
pub struct Db {
    path: PathBuf,
    id: String,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

fn connect(path: &Path, create: bool) -> Result<Connection, StoreError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags)?;
    // WAL: readers see a consistent snapshot while the writer commits.
    // FULL: the WAL is synced on every commit, so an acknowledged write
    // survives power loss, not just a crash of this process.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens the store at `path`, creating and migrating it if needed.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(format!("cannot create the data directory: {e}")))?;
        }
        SqliteStore::open_with(path, true)
    }

    /// Opens a store that must already exist (for the command line).
    pub fn open_existing(path: &Path) -> Result<SqliteStore, StoreError> {
        if !path.exists() {
            return Err(StoreError::Unavailable(format!("no store at `{}`", path.display())));
        }
        SqliteStore::open_with(path, false)
    }

    fn open_with(path: &Path, create: bool) -> Result<SqliteStore, StoreError> {
        let mut writer = connect(path, create)?;
        migrate(&mut writer)?;
        let id: String = writer.query_row("SELECT store_id FROM meta WHERE id = 1", [], |r| r.get(0))?;
        Ok(SqliteStore {
            db: Arc::new(Db {
                path: path.to_owned(),
                id,
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The store's id.
    pub fn id(&self) -> &str {
        &self.db.id
    }

    /// Runs `f` on the blocking pool.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }

    /// Runs `f` on the calling thread (for the command line and tests).
    pub fn run_blocking<T>(&self, f: impl FnOnce(&Db) -> Result<T, StoreError>) -> Result<T, StoreError> {
        f(&self.db)
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    let current: i64 = conn.query_row("SELECT coalesce(max(version), 0) FROM schema_migrations", [], |r| {
        r.get(0)
    })?;
    let migrations = super::schema::migrations(super::schema::Dialect::Sqlite);
    let known = migrations.len() as i64;
    if current > known {
        return Err(StoreError::Schema(current, known));
    }
    for (i, sql) in migrations.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![i as i64 + 1, now().as_nanos()],
        )?;
        tx.commit()?;
    }
    conn.execute(
        "INSERT INTO meta (id, store_id, revision) SELECT 1, ?1, 0 WHERE NOT EXISTS (SELECT 1 FROM meta)",
        params![super::new_store_id()?],
    )?;
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a half-done transaction:
    // rusqlite rolls back on drop. The connection is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn pid_value(p: Pid) -> i64 {
    p.get() as i64
}

fn next_revision(tx: &Transaction<'_>) -> Result<u64, StoreError> {
    let r: i64 = tx.query_row(
        "UPDATE meta SET revision = revision + 1 WHERE id = 1 RETURNING revision",
        [],
        |r| r.get(0),
    )?;
    Ok(r as u64)
}

fn change(
    tx: &Transaction<'_>,
    revision: u64,
    at: Instant,
    kind: &str,
    persons: u64,
    rules: u64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO changes (revision, at, kind, persons, rules) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![revision as i64, at.as_nanos(), kind, persons as i64, rules as i64],
    )?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn audit(
    tx: &Transaction<'_>,
    revision: u64,
    at: Instant,
    by: &Caller,
    action: &str,
    subject: Option<Pid>,
    rule_id: Option<u64>,
    detail: &Value,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO audit (revision, at, actor, role, action, subject, rule_id, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            revision as i64,
            at.as_nanos(),
            by.name,
            by.role.as_str(),
            action,
            subject.map(pid_value),
            rule_id.map(|i| i as i64),
            detail.to_string()
        ],
    )?;
    Ok(())
}

fn rule_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RuleRow> {
    Ok(RuleRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        subject: r.get(2)?,
        guardian: r.get(3)?,
        services: r.get(4)?,
        valid_from: r.get(5)?,
        valid_until: r.get(6)?,
        lifted_at: r.get(7)?,
        care_units: r.get(8)?,
        issuing_unit: r.get(9)?,
        decided_by: r.get(10)?,
        requested_by: r.get(11)?,
        basis: r.get(12)?,
        urgent: r.get(13)?,
        reference: r.get(14)?,
        created_at: r.get(15)?,
        created_by: r.get(16)?,
        confirmed_at: r.get(17)?,
        confirmation: r.get(18)?,
        lift: r.get(19)?,
        revision: r.get(20)?,
    })
}

fn person_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PersonRow> {
    Ok(PersonRow {
        id: r.get(0)?,
        birth_date: r.get(1)?,
        protected: r.get(2)?,
        guardians: r.get(3)?,
        revision: r.get(4)?,
    })
}

fn get_rule(tx: &Connection, id: RuleId) -> Result<Option<StoredRule>, StoreError> {
    let Ok(id) = i64::try_from(id.0) else { return Ok(None) };
    tx.query_row(
        &format!("SELECT {RULE_COLUMNS} FROM rules WHERE id = ?1"),
        [id],
        rule_row,
    )
    .optional()?
    .map(RuleRow::stored)
    .transpose()
}

fn insert_rule(
    tx: &Transaction<'_>,
    id: u64,
    new: &NewRule,
    at: Instant,
    by: &Caller,
    lifted_at: Option<Instant>,
) -> Result<(), StoreError> {
    let r = &new.rule;
    let m = &new.meta;
    tx.execute(
        "INSERT INTO rules (id, kind, subject, guardian, services, valid_from, valid_until, lifted_at, care_units,
             issuing_unit, decided_by, requested_by, basis, urgent, reference, created_at, created_by, revision)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?1)",
        params![
            id as i64,
            r.kind.as_str(),
            pid_value(r.subject),
            r.guardian.map(pid_value),
            i64::from(r.services.bits()),
            r.valid_from.as_nanos(),
            r.valid_until.map(Instant::as_nanos),
            lifted_at.map(Instant::as_nanos),
            r.care_units.as_deref().map(units_text),
            m.issuing_unit.as_str(),
            m.decided_by.to_string(),
            m.requested_by.as_ref().map(Value::to_string),
            m.basis,
            m.urgent,
            m.reference,
            at.as_nanos(),
            by.name,
        ],
    )?;
    Ok(())
}

/// Upserts one person at `revision`; `true` if it changed anything (then a
/// history row is written too).
struct PersonWriter<'t> {
    upsert: rusqlite::Statement<'t>,
    history: rusqlite::Statement<'t>,
    revision: i64,
    /// The line within the write: history is keyed by `(revision, seq)`,
    /// so it is appended in order rather than inserted at random.
    seq: i64,
    guardians: String,
}

impl<'t> PersonWriter<'t> {
    fn new(tx: &'t Transaction<'_>, revision: u64) -> Result<PersonWriter<'t>, StoreError> {
        Ok(PersonWriter {
            upsert: tx.prepare(
                "INSERT INTO persons (id, birth_date, protected, guardians, revision) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO UPDATE SET birth_date = excluded.birth_date, protected = excluded.protected,
                     guardians = excluded.guardians, revision = excluded.revision
                 WHERE persons.birth_date IS NOT excluded.birth_date OR persons.protected IS NOT excluded.protected
                     OR persons.guardians IS NOT excluded.guardians",
            )?,
            history: tx.prepare(
                "INSERT INTO person_history (revision, seq, id, birth_date, protected, guardians)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?,
            revision: revision as i64,
            seq: 0,
            guardians: String::new(),
        })
    }

    fn write(&mut self, p: &PersonRecord) -> Result<bool, StoreError> {
        self.guardians.clear();
        self.guardians.push_str(&guardians_text(&p.guardians));
        let birth = p.birth_date.map(|d| d.to_string());
        let id = pid_value(p.id);
        let n = self
            .upsert
            .execute(params![id, birth, p.protected, self.guardians, self.revision])?;
        if n == 0 {
            return Ok(false);
        }
        self.seq += 1;
        self.history
            .execute(params![self.revision, self.seq, id, birth, p.protected, self.guardians])?;
        Ok(true)
    }
}

impl Db {
    fn reader(&self) -> Result<Reader<'_>, StoreError> {
        let conn = match lock(&self.readers).pop() {
            Some(c) => c,
            None => connect(&self.path, false)?,
        };
        Ok(Reader {
            db: self,
            conn: Some(conn),
        })
    }

    /// The store's current revision.
    pub fn revision(&self) -> Result<u64, StoreError> {
        let r = self.reader()?;
        let rev: i64 = r
            .conn()?
            .query_row("SELECT revision FROM meta WHERE id = 1", [], |r| r.get(0))?;
        Ok(rev as u64)
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>, u64, Instant) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let revision = next_revision(&tx)?;
        let out = f(&tx, revision, now())?;
        tx.commit()?;
        Ok(out)
    }

    /// See [`super::Store::create_rule`].
    pub fn create_rule(&self, new: &NewRule, require_guardian: bool, by: &Caller) -> Result<Committed, StoreError> {
        self.write(|tx, revision, at| {
            if require_guardian {
                let guardians: Option<String> = tx
                    .query_row(
                        "SELECT guardians FROM persons WHERE id = ?1",
                        [pid_value(new.rule.subject)],
                        |r| r.get(0),
                    )
                    .optional()?;
                let registered = super::parse_guardians(guardians.as_deref().unwrap_or(""))?;
                if !new.rule.guardian.is_some_and(|g| registered.contains(&g)) {
                    return Err(StoreError::NotGuardian);
                }
            }
            insert_rule(tx, revision, new, at, by, None)?;
            change(tx, revision, at, "rule", 0, 1)?;
            audit(
                tx,
                revision,
                at,
                by,
                create_action(new.rule.kind),
                Some(new.rule.subject),
                Some(revision),
                &rule_detail(new),
            )?;
            Ok(Committed {
                revision,
                rule_id: Some(RuleId(revision)),
            })
        })
    }

    /// See [`super::Store::lift`] and [`super::Store::confirm`]: one
    /// transaction that checks the stored rule and records the change.
    pub fn update_rule(&self, id: RuleId, update: &RuleUpdate, by: &Caller) -> Result<Committed, StoreError> {
        self.write(|tx, revision, at| {
            let stored = get_rule(tx, id)?;
            update.check(stored.as_ref())?;
            tx.execute(
                &format!(
                    "UPDATE rules SET {} = ?1, {} = ?2, revision = ?3 WHERE id = ?4",
                    update.at_column, update.record_column
                ),
                params![
                    at.as_nanos(),
                    update.record(by).to_string(),
                    revision as i64,
                    id.0 as i64
                ],
            )?;
            change(tx, revision, at, "rule", 0, 1)?;
            let subject = stored.map(|s| s.rule.subject);
            audit(tx, revision, at, by, update.action, subject, Some(id.0), &update.detail)?;
            Ok(Committed {
                revision,
                rule_id: Some(id),
            })
        })
    }

    /// See [`super::Store::import`]. Blocks on the channel.
    ///
    /// A new person lands at a random place in `persons` and in the
    /// by-person history index; with the usual page cache a national import
    /// spends its time re-reading pages. The writer gets a large cache for
    /// the import only and gives the memory back afterwards.
    pub fn import(&self, rx: mpsc::Receiver<ImportMsg>, by: &Caller) -> Result<Imported, StoreError> {
        let _big = BigCache::new(&self.writer)?;
        self.import_inner(rx, by)
    }

    fn import_inner(&self, mut rx: mpsc::Receiver<ImportMsg>, by: &Caller) -> Result<Imported, StoreError> {
        self.write(|tx, revision, at| {
            let mut writer = PersonWriter::new(tx, revision)?;
            let (mut upserted, mut changed) = (0u64, 0u64);
            loop {
                match rx.blocking_recv() {
                    Some(ImportMsg::Batch(mut batch)) => {
                        // In number order, consecutive inserts touch
                        // neighbouring pages. Stable: a later line for the
                        // same person still comes later, and wins.
                        batch.sort_by_key(|p| p.id);
                        for p in &batch {
                            upserted += 1;
                            changed += u64::from(writer.write(p)?);
                        }
                    }
                    Some(ImportMsg::End) => break,
                    // Dropped without `End`: roll back (the transaction is
                    // dropped uncommitted).
                    None => return Err(StoreError::Aborted),
                }
            }
            drop(writer);
            change(tx, revision, at, "population", changed, 0)?;
            let detail = serde_json::json!({"upserted": upserted, "changed": changed});
            audit(tx, revision, at, by, "population", None, None, &detail)?;
            Ok(Imported {
                revision,
                upserted,
                changed,
            })
        })
    }

    /// See [`super::Store::seed`]: the people at one revision, then each rule
    /// at its own, all in one transaction.
    pub fn seed(&self, persons: &[PersonRecord], rules: &[NewRule], by: &Caller) -> Result<u64, StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let at = now();
        let mut revision = next_revision(&tx)?;
        let mut writer = PersonWriter::new(&tx, revision)?;
        let mut changed = 0;
        for p in persons {
            changed += u64::from(writer.write(p)?);
        }
        drop(writer);
        change(&tx, revision, at, "population", changed, 0)?;
        let detail = serde_json::json!({"upserted": persons.len(), "changed": changed});
        audit(&tx, revision, at, by, "seed", None, None, &detail)?;
        for new in rules {
            revision = next_revision(&tx)?;
            insert_rule(&tx, revision, new, at, by, new.rule.lifted_at)?;
            change(&tx, revision, at, "rule", 0, 1)?;
            audit(
                &tx,
                revision,
                at,
                by,
                "seed",
                Some(new.rule.subject),
                Some(revision),
                &rule_detail(new),
            )?;
        }
        tx.commit()?;
        Ok(revision)
    }

    /// See [`super::Store::changes`].
    pub fn changes(&self, after: u64, max_persons: u64) -> Result<Changes, StoreError> {
        let mut r = self.reader()?;
        let tx = r.conn_mut()?.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let head: i64 = tx.query_row("SELECT revision FROM meta WHERE id = 1", [], |r| r.get(0))?;
        let head = head as u64;
        if head < after {
            return Err(StoreError::Corrupt(format!(
                "the store is at revision {head}, behind this instance's {after}"
            )));
        }
        if head == after {
            return Ok(Changes::UpToDate(head));
        }
        let (count, persons): (i64, i64) = tx.query_row(
            "SELECT count(*), coalesce(sum(persons), 0) FROM changes WHERE revision > ?1",
            [after as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if count as u64 != head - after {
            return Err(StoreError::Corrupt("the change log has a gap".into()));
        }
        if persons as u64 > max_persons {
            return Ok(Changes::TooMany(head));
        }
        let mut stmt = tx.prepare(
            "SELECT id, birth_date, protected, guardians, revision FROM person_history
             WHERE revision > ?1 ORDER BY revision, seq",
        )?;
        let persons = stmt
            .query_map([after as i64], person_row)?
            .map(|row| row?.record())
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut stmt = tx.prepare(&format!("SELECT {RULE_COLUMNS} FROM rules WHERE revision > ?1"))?;
        let rules = stmt
            .query_map([after as i64], rule_row)?
            .map(|row| row?.rule())
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Changes::Delta {
            revision: head,
            persons,
            rules,
        })
    }

    /// See [`super::Store::load`].
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let mut r = self.reader()?;
        let tx = r.conn_mut()?.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let head: i64 = tx.query_row("SELECT revision FROM meta WHERE id = 1", [], |r| r.get(0))?;
        let count: i64 = tx.query_row("SELECT count(*) FROM persons", [], |r| r.get(0))?;
        let mut people = PeopleBuilder::with_capacity(count as usize, count as usize);
        let mut stmt = tx.prepare("SELECT id, birth_date, protected, guardians, revision FROM persons")?;
        let mut rows = stmt.query([])?;
        let mut guardians: Vec<Pid> = Vec::new();
        while let Some(row) = rows.next()? {
            let id = stored_pid(row.get(0)?)?;
            let birth: Option<String> = row.get(1)?;
            let birth = super::stored_date(birth)?;
            guardians.clear();
            let text: rusqlite::types::ValueRef<'_> = row.get_ref(3)?;
            let text = text
                .as_str()
                .map_err(|_| StoreError::Corrupt("guardians are not text".into()))?;
            guardians.extend(super::parse_guardians(text)?);
            people.person(id, birth, row.get(2)?, &guardians);
        }
        drop(rows);
        drop(stmt);
        let mut stmt = tx.prepare(&format!("SELECT {RULE_COLUMNS} FROM rules"))?;
        let rules = stmt
            .query_map([], rule_row)?
            .map(|row| row?.rule())
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Loaded {
            revision: head as u64,
            people,
            rules,
        })
    }

    /// See [`super::Store::person`].
    pub fn person(&self, pid: Pid) -> Result<Option<StoredPerson>, StoreError> {
        let r = self.reader()?;
        let row = r
            .conn()?
            .query_row(
                "SELECT id, birth_date, protected, guardians, revision FROM persons WHERE id = ?1",
                [pid_value(pid)],
                person_row,
            )
            .optional()?;
        row.map(|row| {
            let revision = row.revision as u64;
            Ok(StoredPerson {
                record: row.record()?,
                revision,
            })
        })
        .transpose()
    }

    /// See [`super::Store::rules_of`].
    pub fn rules_of(&self, subject: Pid) -> Result<Vec<StoredRule>, StoreError> {
        let r = self.reader()?;
        let conn = r.conn()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {RULE_COLUMNS} FROM rules WHERE subject = ?1 ORDER BY valid_from, id"
        ))?;
        stmt.query_map([pid_value(subject)], rule_row)?
            .map(|row| row?.stored())
            .collect()
    }

    /// See [`super::Store::audit_of`].
    pub fn audit_of(&self, subject: Pid) -> Result<Vec<AuditEntry>, StoreError> {
        let r = self.reader()?;
        let conn = r.conn()?;
        let mut out = Vec::new();
        let mut stmt = conn.prepare(
            "SELECT revision, at, actor, role, action, subject, rule_id, detail FROM audit
             WHERE subject = ?1 ORDER BY revision",
        )?;
        let mut rows = stmt.query([pid_value(subject)])?;
        while let Some(row) = rows.next()? {
            let detail: String = row.get(7)?;
            out.push(AuditEntry {
                revision: row.get::<_, i64>(0)? as u64,
                at: Instant::from_nanos(row.get(1)?),
                actor: row.get(2)?,
                role: row.get(3)?,
                action: row.get(4)?,
                subject: Some(subject),
                rule_id: row.get::<_, Option<i64>>(6)?.map(|i| i as u64),
                detail: parse_json(&detail)?,
            });
        }
        drop(rows);
        // Population writes that changed this person's record.
        let mut stmt = conn.prepare(
            "SELECT h.revision, a.at, a.actor, a.role, a.action, h.birth_date, h.protected, h.guardians
             FROM person_history h JOIN audit a ON a.revision = h.revision
             WHERE h.id = ?1 ORDER BY h.revision",
        )?;
        let mut rows = stmt.query([pid_value(subject)])?;
        while let Some(row) = rows.next()? {
            let guardians: String = row.get(7)?;
            let guardians: Vec<String> = super::parse_guardians(&guardians)?.iter().map(Pid::to_string).collect();
            out.push(AuditEntry {
                revision: row.get::<_, i64>(0)? as u64,
                at: Instant::from_nanos(row.get(1)?),
                actor: row.get(2)?,
                role: row.get(3)?,
                action: row.get(4)?,
                subject: Some(subject),
                rule_id: None,
                detail: serde_json::json!({
                    "birth_date": row.get::<_, Option<String>>(5)?,
                    "protected": row.get::<_, bool>(6)?,
                    "guardians": guardians,
                }),
            });
        }
        out.sort_by_key(|e| e.revision);
        Ok(out)
    }
}

/// Page cache of the writer during an import, in KiB.
const IMPORT_CACHE_KIB: i64 = 256 * 1024;
/// Page cache of the writer otherwise, in KiB.
const CACHE_KIB: i64 = 64 * 1024;

/// The writer's page cache enlarged for as long as this lives.
struct BigCache<'a> {
    writer: &'a Mutex<Connection>,
}

impl<'a> BigCache<'a> {
    fn new(writer: &'a Mutex<Connection>) -> Result<BigCache<'a>, StoreError> {
        lock(writer).pragma_update(None, "cache_size", -IMPORT_CACHE_KIB)?;
        Ok(BigCache { writer })
    }
}

impl Drop for BigCache<'_> {
    fn drop(&mut self) {
        let conn = lock(self.writer);
        let _ = conn.pragma_update(None, "cache_size", -CACHE_KIB);
        let _ = conn.execute_batch("PRAGMA shrink_memory");
    }
}

/// A reader connection, returned to the pool when dropped.
struct Reader<'a> {
    db: &'a Db,
    conn: Option<Connection>,
}

impl Reader<'_> {
    fn conn(&self) -> Result<&Connection, StoreError> {
        self.conn
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("no connection".into()))
    }

    fn conn_mut(&mut self) -> Result<&mut Connection, StoreError> {
        self.conn
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("no connection".into()))
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            let mut pool = lock(&self.db.readers);
            if pool.len() < 4 {
                pool.push(c);
            }
        }
    }
}
