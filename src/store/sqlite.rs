//! The embedded store: SQLite through `rusqlite` (bundled), in WAL mode
//! with `synchronous = FULL`, so a commit is on disk before it returns.
//!
//! One writer connection behind a mutex (SQLite has one writer anyway) and a
//! small pool of reader connections, which in WAL mode read a consistent
//! snapshot while the writer commits. Every call runs on tokio's blocking
//! pool; the protocol's futures are driven there with the runtime's
//! `block_on` (they only wait for an import's next batch).
//!
//! What is SQLite's own: connections and pragmas, transactions
//! (`IMMEDIATE` for writes), and the population import's per-row upsert.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::runtime::Handle;

use super::protocol::{self, EachRow, Param, Row, Tx, wide};
use super::spool::Spool;
use super::sql::{self, Dialect};
use super::{Import, ImportMsg, Imported, StoreError};
use crate::clock::Clock;
use crate::core::people::PersonRecord;
use crate::core::time::Instant;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::DiskFull(e.to_string()),
            _ => StoreError::Unavailable(e.to_string()),
        }
    }
}

/// The embedded store. Cloning shares it.
#[derive(Clone)]
pub struct SqliteStore {
    db: Arc<Db>,
    clock: Clock,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.db.path).finish()
    }
}

/// The connections.
struct Db {
    path: PathBuf,
    id: String,
    key: Vec<u8>,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

fn connect(path: &std::path::Path, create: bool) -> Result<Connection, StoreError> {
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

/// Makes the database file readable by the service's user only (`0600`),
/// creating it empty first if needed: SQLite gives its WAL and
/// shared-memory files the database file's permissions, so they follow.
fn private_files(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    drop(
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?,
    );
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = std::path::PathBuf::from(name);
        if file.exists() && std::fs::metadata(&file)?.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a half-done transaction:
    // rusqlite rolls back on drop. The connection is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `f` in one transaction on `conn`, driving its future to the end on
/// this (blocking) thread; commits if it succeeds.
fn transaction<T>(
    conn: &mut Connection,
    behavior: TransactionBehavior,
    runtime: &Handle,
    f: impl AsyncFnOnce(&mut SqliteTx<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let tx = conn.transaction_with_behavior(behavior)?;
    let out = runtime.block_on(f(&mut SqliteTx { conn: &tx }))?;
    tx.commit()?;
    Ok(out)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce(Handle) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let runtime = Handle::current();
    tokio::task::spawn_blocking(move || f(runtime))
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
}

impl SqliteStore {
    /// Opens the store at `path`, creating (if `create`) and migrating it.
    pub(crate) async fn open(path: PathBuf, create: bool) -> Result<SqliteStore, StoreError> {
        let clock = Clock::system();
        let at = clock.now();
        let db = blocking(move |runtime| {
            if create {
                if let Some(dir) = path.parent() {
                    super::private_dir(dir)
                        .map_err(|e| StoreError::Unavailable(format!("cannot create the data directory: {e}")))?;
                }
                private_files(&path)
                    .map_err(|e| StoreError::Unavailable(format!("cannot make the store's files private: {e}")))?;
            } else if !path.exists() {
                return Err(StoreError::Unavailable(format!("no store at `{}`", path.display())));
            }
            let mut writer = connect(&path, create)?;
            let (id, key) = transaction(&mut writer, TransactionBehavior::Immediate, &runtime, async |tx| {
                protocol::migrate(tx, at).await
            })?;
            Ok(Db {
                path,
                id,
                key,
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
            })
        })
        .await?;
        Ok(SqliteStore {
            db: Arc::new(db),
            clock,
        })
    }

    /// The same store with commit times from `clock`.
    pub(crate) fn with_clock(self, clock: Clock) -> SqliteStore {
        SqliteStore { clock, ..self }
    }

    /// The store's id.
    pub fn id(&self) -> &str {
        &self.db.id
    }

    /// The snapshot key.
    pub(crate) fn snapshot_key(&self) -> &[u8] {
        &self.db.key
    }

    /// Runs one write: a transaction on the writer that takes the next
    /// revision first, then does `f` at the clock's instant, and commits.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        f: impl AsyncFnOnce(&mut SqliteTx<'_>, u64, Instant) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        let clock = self.clock.clone();
        blocking(move |runtime| {
            let mut conn = lock(&db.writer);
            transaction(&mut conn, TransactionBehavior::Immediate, &runtime, async |tx| {
                let revision = protocol::next_revision(tx).await?;
                f(tx, revision, clock.now()).await
            })
        })
        .await
    }

    /// Runs `f` in one write transaction on the writer that takes no
    /// revision (the access log: it changes nothing checks see), at the
    /// clock's instant; durable before it returns, like every write.
    pub(crate) async fn append<T: Send + 'static>(
        &self,
        f: impl AsyncFnOnce(&mut SqliteTx<'_>, Instant) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        let clock = self.clock.clone();
        blocking(move |runtime| {
            let mut conn = lock(&db.writer);
            transaction(&mut conn, TransactionBehavior::Immediate, &runtime, async |tx| {
                f(tx, clock.now()).await
            })
        })
        .await
    }

    /// Runs `f` in one read transaction on a reader connection: every
    /// statement sees the same committed state.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl AsyncFnOnce(&mut SqliteTx<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        blocking(move |runtime| {
            let mut conn = match lock(&db.readers).pop() {
                Some(c) => c,
                None => {
                    let conn = connect(&db.path, false)?;
                    // Readers follow the change log (recent, appended pages)
                    // or scan whole tables (a rebuild): a small cache will
                    // do, and keeps the process's memory flat.
                    conn.pragma_update(None, "cache_size", -READER_CACHE_KIB)?;
                    conn
                }
            };
            let out = transaction(&mut conn, TransactionBehavior::Deferred, &runtime, f);
            let mut pool = lock(&db.readers);
            if pool.len() < 4 {
                pool.push(conn);
            }
            out
        })
        .await
    }

    /// See [`super::Store::import`]. The upload is spooled to a private
    /// file beside the database as it arrives, without the writer: a feed
    /// that stalls holds a file, not the lock an urgent block needs. Only
    /// then does one write transaction merge it, in number order.
    ///
    /// In arrival order a new person would land at a random place in
    /// `persons` and in the by-person history index, and a national import
    /// would spend its time re-reading pages (or need a page cache of
    /// hundreds of MB, which the allocator keeps after the import).
    pub(crate) async fn import(&self, import: Import<'_>) -> Result<Imported, StoreError> {
        let Import { mut rx, by, action } = import;
        let by = by.clone();
        let dir = self.db.path.parent().map(std::path::Path::to_owned).unwrap_or_default();
        let mut spool = Spool::create(&dir)?;
        loop {
            match rx.recv().await {
                // Written off the async workers (the check listener shares
                // them): a slow or full disk must not stall a check.
                Some(ImportMsg::Batch(batch)) => {
                    spool = tokio::task::spawn_blocking(move || spool.write(batch).map(|()| spool))
                        .await
                        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))??;
                }
                Some(ImportMsg::End) => break,
                // Dropped without `End`: nothing was applied; the spool
                // file is removed.
                None => return Err(StoreError::Aborted),
            }
        }
        self.write(async move |tx, revision, at| {
            // On the blocking pool: its last run is sorted and written here.
            let mut spooled = spool.finish()?;
            let mut writer = PersonWriter::new(tx.conn, revision)?;
            let (upserted, mut changed) = (spooled.records, 0u64);
            // In number order (the spool merges its sorted runs): the
            // upserts walk `persons` and the history's by-person index
            // from one end to the other.
            while let Some(batch) = spooled.next_batch()? {
                for p in &batch {
                    changed += u64::from(writer.write(p)?);
                }
            }
            drop(writer);
            protocol::record_population(tx, revision, at, &by, action, upserted, changed).await?;
            Ok(Imported {
                revision,
                upserted,
                changed,
            })
        })
        .await
    }
}

/// Page cache of the writer, in KiB. Imports need no more: they arrive
/// sorted (see `spool`).
const CACHE_KIB: i64 = 64 * 1024;
/// Page cache of each reader connection, in KiB.
const READER_CACHE_KIB: i64 = 8 * 1024;

/// A transaction on one SQLite connection.
pub(crate) struct SqliteTx<'c> {
    conn: &'c Connection,
}

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match *self {
            Param::Int(Some(n)) => ToSqlOutput::from(n),
            Param::Text(Some(s)) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Param::Int(None) | Param::Text(None) => ToSqlOutput::Borrowed(ValueRef::Null),
            Param::Flag(b) => ToSqlOutput::from(b),
        })
    }
}

impl Row for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.get_ref(i)? {
            ValueRef::Null => Ok(None),
            ValueRef::Integer(n) => Ok(Some(n)),
            _ => Err(StoreError::Corrupt(format!("column {i} is not an integer"))),
        }
    }

    fn text(&self, i: usize) -> Result<Option<&str>, StoreError> {
        match self.get_ref(i)? {
            ValueRef::Null => Ok(None),
            ValueRef::Text(t) => std::str::from_utf8(t)
                .map(Some)
                .map_err(|_| StoreError::Corrupt(format!("column {i} is not UTF-8"))),
            _ => Err(StoreError::Corrupt(format!("column {i} is not text"))),
        }
    }

    fn flag(&self, i: usize) -> Result<bool, StoreError> {
        Ok(self
            .int(i)?
            .ok_or_else(|| StoreError::Corrupt(format!("column {i} is NULL")))?
            != 0)
    }
}

impl Tx for SqliteTx<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self.conn.execute_batch(sql)?)
    }

    async fn exec(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        let mut stmt = self.conn.prepare(&sql::for_sqlite(sql))?;
        let n = stmt.execute(rusqlite::params_from_iter(params))?;
        Ok(u64::try_from(n).unwrap_or(u64::MAX))
    }

    async fn each(&mut self, sql: &str, params: &[Param<'_>], each: &mut EachRow<'_>) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare(&sql::for_sqlite(sql))?;
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        while let Some(row) = rows.next()? {
            each(row)?;
        }
        Ok(())
    }
}

/// Upserts persons at one revision; a record that changed anything is also
/// appended to `person_history`.
struct PersonWriter<'t> {
    upsert: rusqlite::Statement<'t>,
    history: rusqlite::Statement<'t>,
    revision: i64,
    /// The line within the write: history is keyed by `(revision, seq)`,
    /// so it is appended in order rather than inserted at random.
    seq: i64,
    /// Reused for every record: a national import writes millions.
    guardians: String,
    birth: String,
}

impl<'t> PersonWriter<'t> {
    fn new(conn: &'t Connection, revision: u64) -> Result<PersonWriter<'t>, StoreError> {
        Ok(PersonWriter {
            upsert: conn.prepare(
                "INSERT INTO persons (id, birth_date, protected, guardians, revision) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO UPDATE SET birth_date = excluded.birth_date, protected = excluded.protected,
                     guardians = excluded.guardians, revision = excluded.revision
                 WHERE persons.birth_date IS NOT excluded.birth_date OR persons.protected IS NOT excluded.protected
                     OR persons.guardians IS NOT excluded.guardians",
            )?,
            history: conn.prepare(&sql::for_sqlite(sql::INSERT_HISTORY))?,
            revision: wide(revision)?,
            seq: 0,
            guardians: String::new(),
            birth: String::new(),
        })
    }

    fn write(&mut self, p: &PersonRecord) -> Result<bool, StoreError> {
        self.guardians.clear();
        protocol::push_guardians_text(&mut self.guardians, &p.guardians);
        self.birth.clear();
        let birth = match p.birth_date {
            Some(d) => {
                use std::fmt::Write;
                let _ = write!(self.birth, "{d}");
                Some(self.birth.as_str())
            }
            None => None,
        };
        let id = wide(p.id.get())?;
        let n = self
            .upsert
            .execute(rusqlite::params![id, birth, p.protected, self.guardians, self.revision])?;
        if n == 0 {
            return Ok(false);
        }
        self.seq += 1;
        self.history.execute(rusqlite::params![
            self.revision,
            self.seq,
            id,
            birth,
            p.protected,
            self.guardians
        ])?;
        Ok(true)
    }
}
