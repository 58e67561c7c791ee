//! The fleet store: PostgreSQL through `tokio-postgres`, with a
//! `deadpool-postgres` pool for writes and reads and one dedicated
//! connection per instance for `LISTEN`.
//!
//! Same schema and semantics as the embedded store. Writers serialize on the
//! `meta` row (`UPDATE … RETURNING revision`), so revisions are gapless and
//! in commit order even with writers on many nodes; a sequence alone would
//! not give that, since transactions can commit in another order than they
//! drew their numbers. Each write also calls `pg_notify`, delivered at
//! commit, which only wakes the followers: `changes WHERE revision > last`
//! remains the truth. A population import is first copied (`COPY`) into a
//! temporary table without the revision lock, then merged under it, so an
//! urgent seal waits for the merge, not for the upload.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use tokio_postgres::{IsolationLevel, NoTls, Row};

use super::{
    AuditEntry, Caller, Changes, Committed, ImportMsg, Imported, Loaded, NewRule, PersonRow, RULE_COLUMNS, RuleRow,
    RuleUpdate, StoreError, StoredPerson, StoredRule, create_action, guardians_text, now, parse_json, rule_detail,
    stored_pid, units_text,
};
use crate::identity::Pid;
use crate::model::RuleId;
use crate::people::{PeopleBuilder, PersonRecord};
use crate::time::Instant;

/// The channel `pg_notify` wakes followers on.
pub const CHANNEL: &str = "guardian_access";

/// A fixed key for the advisory lock that serializes migrations when many
/// instances start at once.
const MIGRATION_LOCK: i64 = 0x6761_6363_6573_7301;

/// The PostgreSQL store. Cloning shares the pool.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    config: Arc<tokio_postgres::Config>,
    id: Arc<str>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("PgStore").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Turns a driver error into a store error without its detail: PostgreSQL's
/// DETAIL lines can quote key values, which may be identity numbers.
fn pg(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Unavailable(format!("{} ({})", db.message(), db.code().code())),
        None => StoreError::Unavailable(e.to_string()),
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e),
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn pid_value(p: Pid) -> i64 {
    p.get() as i64
}

/// One column, type-checked: a database whose schema was changed behind
/// our back is an error, never a panic.
fn col<'a, T: tokio_postgres::types::FromSql<'a>>(r: &'a Row, i: usize) -> Result<T, StoreError> {
    r.try_get(i)
        .map_err(|_| StoreError::Corrupt(format!("column {i} has an unexpected type")))
}

impl PgStore {
    /// Connects, creating the schema (or migrating it) under an advisory
    /// lock, and reads the store id.
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|_| StoreError::Unavailable("`store`: not a valid PostgreSQL URL".into()))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(3));
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        if config.get_application_name().is_none() {
            config.application_name("guardian-access");
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(8)
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(Duration::from_secs(5)),
                create: Some(Duration::from_secs(5)),
                recycle: Some(Duration::from_secs(5)),
            })
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let store = PgStore {
            pool,
            config: Arc::new(config),
            id: Arc::from(""),
        };
        let id = store.migrate().await?;
        Ok(PgStore {
            id: Arc::from(id.as_str()),
            ..store
        })
    }

    async fn migrate(&self) -> Result<String, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await
        .map_err(pg)?;
        let row = tx
            .query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[])
            .await
            .map_err(pg)?;
        let current: i64 = col(&row, 0)?;
        let migrations = super::schema::migrations(super::schema::Dialect::Postgres);
        let known = migrations.len() as i64;
        if current > known {
            return Err(StoreError::Schema(current, known));
        }
        for (i, sql) in migrations.iter().enumerate().skip(current as usize) {
            tx.batch_execute(sql).await.map_err(pg)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                &[&(i as i64 + 1), &now().as_nanos()],
            )
            .await
            .map_err(pg)?;
        }
        tx.execute(
            "INSERT INTO meta (id, store_id, revision) SELECT 1, $1, 0 WHERE NOT EXISTS (SELECT 1 FROM meta)",
            &[&super::new_store_id()?],
        )
        .await
        .map_err(pg)?;
        let row = tx
            .query_one("SELECT store_id FROM meta WHERE id = 1", &[])
            .await
            .map_err(pg)?;
        let id: String = col(&row, 0)?;
        tx.commit().await.map_err(pg)?;
        Ok(id)
    }

    /// The store's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The store's current revision.
    pub async fn revision(&self) -> Result<u64, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let row = client
            .query_one("SELECT revision FROM meta WHERE id = 1", &[])
            .await
            .map_err(pg)?;
        let r: i64 = col(&row, 0)?;
        Ok(r as u64)
    }

    /// Runs one write: a transaction that takes the next revision first (the
    /// lock that orders writers), does `f`, notifies and commits.
    async fn write<T>(
        &self,
        f: impl AsyncFnOnce(&deadpool_postgres::Transaction<'_>, u64, Instant) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg)?;
        let revision = next_revision(&tx).await?;
        let out = f(&tx, revision, now()).await?;
        notify(&tx, revision).await?;
        tx.commit().await.map_err(pg)?;
        Ok(out)
    }

    /// See [`super::Store::create_rule`].
    pub async fn create_rule(
        &self,
        new: &NewRule,
        require_guardian: bool,
        by: &Caller,
    ) -> Result<Committed, StoreError> {
        self.write(async |tx, revision, at| {
            if require_guardian {
                let row = tx
                    .query_opt(
                        "SELECT guardians FROM persons WHERE id = $1",
                        &[&pid_value(new.rule.subject)],
                    )
                    .await
                    .map_err(pg)?;
                let text: String = match &row {
                    Some(r) => col(r, 0)?,
                    None => String::new(),
                };
                let registered = super::parse_guardians(&text)?;
                if !new.rule.guardian.is_some_and(|g| registered.contains(&g)) {
                    return Err(StoreError::NotGuardian);
                }
            }
            insert_rule(tx, revision, new, at, by, None).await?;
            change(tx, revision, at, "rule", 0, 1).await?;
            audit(
                tx,
                revision,
                at,
                by,
                create_action(new.rule.kind),
                Some(new.rule.subject),
                Some(revision),
                &rule_detail(new),
            )
            .await?;
            Ok(Committed {
                revision,
                rule_id: Some(RuleId(revision)),
            })
        })
        .await
    }

    /// See [`super::Store::lift`] and [`super::Store::confirm`]: one
    /// transaction that checks the stored rule (locked) and records the change.
    pub async fn update_rule(&self, id: RuleId, update: &RuleUpdate, by: &Caller) -> Result<Committed, StoreError> {
        self.write(async |tx, revision, at| {
            let stored = get_rule(tx, id).await?;
            update.check(stored.as_ref())?;
            tx.execute(
                &format!(
                    "UPDATE rules SET {} = $1, {} = $2, revision = $3 WHERE id = $4",
                    update.at_column, update.record_column
                ),
                &[
                    &at.as_nanos(),
                    &update.record(by).to_string(),
                    &(revision as i64),
                    &(id.0 as i64),
                ],
            )
            .await
            .map_err(pg)?;
            change(tx, revision, at, "rule", 0, 1).await?;
            let subject = stored.map(|s| s.rule.subject);
            audit(tx, revision, at, by, update.action, subject, Some(id.0), &update.detail).await?;
            Ok(Committed {
                revision,
                rule_id: Some(id),
            })
        })
        .await
    }

    /// See [`super::Store::import`]: `COPY` into a temporary table, then
    /// one merge under the revision lock.
    pub async fn import(&self, mut rx: mpsc::Receiver<ImportMsg>, by: &Caller) -> Result<Imported, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg)?;
        tx.batch_execute(
            "CREATE TEMPORARY TABLE staging (seq BIGINT NOT NULL, id BIGINT NOT NULL, birth_date TEXT,
                 protected BOOLEAN NOT NULL, guardians TEXT NOT NULL) ON COMMIT DROP",
        )
        .await
        .map_err(pg)?;
        let sink = tx
            .copy_in::<_, Bytes>("COPY staging (seq, id, birth_date, protected, guardians) FROM STDIN")
            .await
            .map_err(pg)?;
        let mut sink = std::pin::pin!(sink);
        let mut upserted: u64 = 0;
        let mut buf = String::with_capacity(IMPORT_BUFFER);
        loop {
            match rx.recv().await {
                Some(ImportMsg::Batch(batch)) => {
                    buf.clear();
                    for p in &batch {
                        upserted += 1;
                        copy_line(&mut buf, upserted, p);
                    }
                    sink.send(Bytes::from(std::mem::take(&mut buf))).await.map_err(pg)?;
                }
                Some(ImportMsg::End) => break,
                // Dropped without `End`: the transaction is dropped, rolled back.
                None => return Err(StoreError::Aborted),
            }
        }
        sink.as_mut().finish().await.map_err(pg)?;
        tx.batch_execute("ANALYZE staging").await.map_err(pg)?;
        let revision = next_revision(&tx).await?;
        let at = now();
        let changed = tx
            .execute(
                "WITH latest AS (
                     SELECT DISTINCT ON (id) id, birth_date, protected, guardians FROM staging ORDER BY id, seq DESC
                 ), up AS (
                     INSERT INTO persons (id, birth_date, protected, guardians, revision)
                     SELECT id, birth_date, protected, guardians, $1 FROM latest
                     ON CONFLICT (id) DO UPDATE SET birth_date = EXCLUDED.birth_date,
                         protected = EXCLUDED.protected, guardians = EXCLUDED.guardians, revision = EXCLUDED.revision
                     WHERE (persons.birth_date, persons.protected, persons.guardians)
                         IS DISTINCT FROM (EXCLUDED.birth_date, EXCLUDED.protected, EXCLUDED.guardians)
                     RETURNING id, birth_date, protected, guardians
                 )
                 INSERT INTO person_history (revision, seq, id, birth_date, protected, guardians)
                 SELECT $1, row_number() OVER (ORDER BY id), id, birth_date, protected, guardians FROM up",
                &[&(revision as i64)],
            )
            .await
            .map_err(pg)?;
        change(&tx, revision, at, "population", changed, 0).await?;
        let detail = serde_json::json!({"upserted": upserted, "changed": changed});
        audit(&tx, revision, at, by, "population", None, None, &detail).await?;
        notify(&tx, revision).await?;
        tx.commit().await.map_err(pg)?;
        Ok(Imported {
            revision,
            upserted,
            changed,
        })
    }

    /// See [`super::Store::seed`].
    pub async fn seed(&self, persons: &[PersonRecord], rules: &[NewRule], by: &Caller) -> Result<u64, StoreError> {
        let (tx_in, rx) = mpsc::channel(2);
        let batch = persons.to_vec();
        let send = async move {
            let _ = tx_in.send(ImportMsg::Batch(batch)).await;
            let _ = tx_in.send(ImportMsg::End).await;
        };
        let (imported, ()) = tokio::join!(self.import(rx, by), send);
        let mut revision = imported?.revision;
        for new in rules {
            revision = self
                .write(async |tx, revision, at| {
                    insert_rule(tx, revision, new, at, by, new.rule.lifted_at).await?;
                    change(tx, revision, at, "rule", 0, 1).await?;
                    audit(
                        tx,
                        revision,
                        at,
                        by,
                        "seed",
                        Some(new.rule.subject),
                        Some(revision),
                        &rule_detail(new),
                    )
                    .await?;
                    Ok(revision)
                })
                .await?;
        }
        Ok(revision)
    }

    async fn read_tx<T>(
        &self,
        f: impl AsyncFnOnce(&deadpool_postgres::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        // One snapshot for every statement: the change log and the rows agree.
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg)?;
        let out = f(&tx).await?;
        tx.commit().await.map_err(pg)?;
        Ok(out)
    }

    /// See [`super::Store::changes`].
    pub async fn changes(&self, after: u64, max_persons: u64) -> Result<Changes, StoreError> {
        self.read_tx(async |tx| {
            let row = tx
                .query_one("SELECT revision FROM meta WHERE id = 1", &[])
                .await
                .map_err(pg)?;
            let head: i64 = col(&row, 0)?;
            let head = head as u64;
            if head < after {
                return Err(StoreError::Corrupt(format!(
                    "the store is at revision {head}, behind this instance's {after}"
                )));
            }
            if head == after {
                return Ok(Changes::UpToDate(head));
            }
            let row = tx
                .query_one(
                    "SELECT count(*), coalesce(sum(persons), 0)::BIGINT FROM changes WHERE revision > $1",
                    &[&(after as i64)],
                )
                .await
                .map_err(pg)?;
            let (count, persons): (i64, i64) = (col(&row, 0)?, col(&row, 1)?);
            if count as u64 != head - after {
                return Err(StoreError::Corrupt("the change log has a gap".into()));
            }
            if persons as u64 > max_persons {
                return Ok(Changes::TooMany(head));
            }
            let persons = tx
                .query(
                    "SELECT id, birth_date, protected, guardians, revision FROM person_history
                     WHERE revision > $1 ORDER BY revision, seq",
                    &[&(after as i64)],
                )
                .await
                .map_err(pg)?
                .iter()
                .map(|r| person_row(r)?.record())
                .collect::<Result<Vec<_>, _>>()?;
            let rules = tx
                .query(
                    &format!("SELECT {RULE_COLUMNS} FROM rules WHERE revision > $1"),
                    &[&(after as i64)],
                )
                .await
                .map_err(pg)?
                .iter()
                .map(|r| rule_row(r)?.rule())
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Changes::Delta {
                revision: head,
                persons,
                rules,
            })
        })
        .await
    }

    /// See [`super::Store::load`]: rows are streamed, not buffered.
    pub async fn load(&self) -> Result<Loaded, StoreError> {
        self.read_tx(async |tx| {
            let row = tx
                .query_one("SELECT revision FROM meta WHERE id = 1", &[])
                .await
                .map_err(pg)?;
            let head: i64 = col(&row, 0)?;
            let row = tx.query_one("SELECT count(*) FROM persons", &[]).await.map_err(pg)?;
            let count: i64 = col(&row, 0)?;
            let mut people = PeopleBuilder::with_capacity(count as usize, count as usize);
            let rows = tx
                .query_raw(
                    "SELECT id, birth_date, protected, guardians FROM persons",
                    std::iter::empty::<i64>(),
                )
                .await
                .map_err(pg)?;
            let mut rows = std::pin::pin!(rows);
            let mut guardians = Vec::new();
            while let Some(row) = rows.next().await {
                let row = row.map_err(pg)?;
                let id = stored_pid(col(&row, 0)?)?;
                let birth = super::stored_date(col(&row, 1)?)?;
                guardians.clear();
                guardians.extend(super::parse_guardians(col::<&str>(&row, 3)?)?);
                people.person(id, birth, col(&row, 2)?, &guardians);
            }
            let rules = tx
                .query(&format!("SELECT {RULE_COLUMNS} FROM rules"), &[])
                .await
                .map_err(pg)?
                .iter()
                .map(|r| rule_row(r)?.rule())
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Loaded {
                revision: head as u64,
                people,
                rules,
            })
        })
        .await
    }

    /// See [`super::Store::person`].
    pub async fn person(&self, pid: Pid) -> Result<Option<StoredPerson>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let row = client
            .query_opt(
                "SELECT id, birth_date, protected, guardians, revision FROM persons WHERE id = $1",
                &[&pid_value(pid)],
            )
            .await
            .map_err(pg)?;
        row.map(|r| {
            let row = person_row(&r)?;
            let revision = row.revision as u64;
            Ok(StoredPerson {
                record: row.record()?,
                revision,
            })
        })
        .transpose()
    }

    /// See [`super::Store::rules_of`].
    pub async fn rules_of(&self, subject: Pid) -> Result<Vec<StoredRule>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        client
            .query(
                &format!("SELECT {RULE_COLUMNS} FROM rules WHERE subject = $1 ORDER BY valid_from, id"),
                &[&pid_value(subject)],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(|r| rule_row(r)?.stored())
            .collect()
    }

    /// See [`super::Store::audit_of`].
    pub async fn audit_of(&self, subject: Pid) -> Result<Vec<AuditEntry>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let mut out = Vec::new();
        for r in client
            .query(
                "SELECT revision, at, actor, role, action, rule_id, detail FROM audit
                 WHERE subject = $1 ORDER BY revision",
                &[&pid_value(subject)],
            )
            .await
            .map_err(pg)?
        {
            out.push(AuditEntry {
                revision: col::<i64>(&r, 0)? as u64,
                at: Instant::from_nanos(col(&r, 1)?),
                actor: col(&r, 2)?,
                role: col(&r, 3)?,
                action: col(&r, 4)?,
                subject: Some(subject),
                rule_id: col::<Option<i64>>(&r, 5)?.map(|i| i as u64),
                detail: parse_json(col(&r, 6)?)?,
            });
        }
        for r in client
            .query(
                "SELECT h.revision, a.at, a.actor, a.role, a.action, h.birth_date, h.protected, h.guardians
                 FROM person_history h JOIN audit a ON a.revision = h.revision
                 WHERE h.id = $1 ORDER BY h.revision",
                &[&pid_value(subject)],
            )
            .await
            .map_err(pg)?
        {
            let guardians: Vec<String> = super::parse_guardians(col(&r, 7)?)?
                .iter()
                .map(Pid::to_string)
                .collect();
            out.push(AuditEntry {
                revision: col::<i64>(&r, 0)? as u64,
                at: Instant::from_nanos(col(&r, 1)?),
                actor: col(&r, 2)?,
                role: col(&r, 3)?,
                action: col(&r, 4)?,
                subject: Some(subject),
                rule_id: None,
                detail: serde_json::json!({
                    "birth_date": col::<Option<String>>(&r, 5)?,
                    "protected": col::<bool>(&r, 6)?,
                    "guardians": guardians,
                }),
            });
        }
        out.sort_by_key(|e| e.revision);
        Ok(out)
    }

    /// Opens the dedicated `LISTEN` connection. `wake` is notified on every
    /// notification; the returned [`Listening`] ends when the connection does.
    pub async fn listen(&self, wake: Arc<Notify>) -> Result<Listening, StoreError> {
        let (client, mut connection) = self.config.connect(NoTls).await.map_err(pg)?;
        let (lost_tx, lost) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(tokio_postgres::AsyncMessage::Notification(_)) => wake.notify_one(),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            let _ = lost_tx.send(());
        });
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await.map_err(pg)?;
        Ok(Listening {
            _client: client,
            lost,
            task,
        })
    }
}

/// A live `LISTEN` connection.
#[derive(Debug)]
pub struct Listening {
    _client: tokio_postgres::Client,
    lost: tokio::sync::oneshot::Receiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Listening {
    /// Resolves when the connection is lost.
    pub async fn lost(&mut self) {
        let _ = (&mut self.lost).await;
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bytes of `COPY` text per message.
const IMPORT_BUFFER: usize = 256 * 1024;

/// One `COPY` text line. Every field is digits, a date, `t`/`f` or digits
/// and commas: nothing that needs escaping.
fn copy_line(buf: &mut String, seq: u64, p: &PersonRecord) {
    use std::fmt::Write as _;
    let birth = p.birth_date.map_or_else(|| "\\N".to_owned(), |d| d.to_string());
    let _ = writeln!(
        buf,
        "{seq}\t{}\t{birth}\t{}\t{}",
        p.id,
        if p.protected { 't' } else { 'f' },
        guardians_text(&p.guardians)
    );
}

async fn next_revision(tx: &deadpool_postgres::Transaction<'_>) -> Result<u64, StoreError> {
    let row = tx
        .query_one(
            "UPDATE meta SET revision = revision + 1 WHERE id = 1 RETURNING revision",
            &[],
        )
        .await
        .map_err(pg)?;
    let r: i64 = col(&row, 0)?;
    Ok(r as u64)
}

async fn notify(tx: &deadpool_postgres::Transaction<'_>, revision: u64) -> Result<(), StoreError> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &revision.to_string()])
        .await
        .map_err(pg)?;
    Ok(())
}

async fn change(
    tx: &deadpool_postgres::Transaction<'_>,
    revision: u64,
    at: Instant,
    kind: &str,
    persons: u64,
    rules: u64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO changes (revision, at, kind, persons, rules) VALUES ($1, $2, $3, $4, $5)",
        &[
            &(revision as i64),
            &at.as_nanos(),
            &kind,
            &(persons as i64),
            &(rules as i64),
        ],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn audit(
    tx: &deadpool_postgres::Transaction<'_>,
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
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &(revision as i64),
            &at.as_nanos(),
            &by.name,
            &by.role.as_str(),
            &action,
            &subject.map(pid_value),
            &rule_id.map(|i| i as i64),
            &detail.to_string(),
        ],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

async fn get_rule(tx: &deadpool_postgres::Transaction<'_>, id: RuleId) -> Result<Option<StoredRule>, StoreError> {
    let Ok(id) = i64::try_from(id.0) else { return Ok(None) };
    // FOR UPDATE: a concurrent lift of the same rule waits and then sees it lifted.
    tx.query_opt(
        &format!("SELECT {RULE_COLUMNS} FROM rules WHERE id = $1 FOR UPDATE"),
        &[&id],
    )
    .await
    .map_err(pg)?
    .map(|r| rule_row(&r)?.stored())
    .transpose()
}

async fn insert_rule(
    tx: &deadpool_postgres::Transaction<'_>,
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
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $1)",
        &[
            &(id as i64),
            &r.kind.as_str(),
            &pid_value(r.subject),
            &r.guardian.map(pid_value),
            &i64::from(r.services.bits()),
            &r.valid_from.as_nanos(),
            &r.valid_until.map(Instant::as_nanos),
            &lifted_at.map(Instant::as_nanos),
            &r.care_units.as_deref().map(units_text),
            &m.issuing_unit.as_str(),
            &m.decided_by.to_string(),
            &m.requested_by.as_ref().map(Value::to_string),
            &m.basis,
            &m.urgent,
            &m.reference,
            &at.as_nanos(),
            &by.name,
        ],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

fn rule_row(r: &Row) -> Result<RuleRow, StoreError> {
    Ok(RuleRow {
        id: col(r, 0)?,
        kind: col(r, 1)?,
        subject: col(r, 2)?,
        guardian: col(r, 3)?,
        services: col(r, 4)?,
        valid_from: col(r, 5)?,
        valid_until: col(r, 6)?,
        lifted_at: col(r, 7)?,
        care_units: col(r, 8)?,
        issuing_unit: col(r, 9)?,
        decided_by: col(r, 10)?,
        requested_by: col(r, 11)?,
        basis: col(r, 12)?,
        urgent: col(r, 13)?,
        reference: col(r, 14)?,
        created_at: col(r, 15)?,
        created_by: col(r, 16)?,
        confirmed_at: col(r, 17)?,
        confirmation: col(r, 18)?,
        lift: col(r, 19)?,
        revision: col(r, 20)?,
    })
}

fn person_row(r: &Row) -> Result<PersonRow, StoreError> {
    Ok(PersonRow {
        id: col(r, 0)?,
        birth_date: col(r, 1)?,
        protected: col(r, 2)?,
        guardians: col(r, 3)?,
        revision: col(r, 4)?,
    })
}
