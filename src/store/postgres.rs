//! The fleet store: PostgreSQL through `tokio-postgres`, with a
//! `deadpool-postgres` pool for writes and reads and one dedicated
//! connection per instance for `LISTEN`.
//!
//! Same schema and protocol as the embedded store. Writers serialize on the
//! `meta` row (`UPDATE … RETURNING revision`), so revisions are gapless and
//! in commit order even with writers on many nodes; a sequence alone would
//! not give that, since transactions can commit in another order than they
//! drew their numbers. Each write also calls `pg_notify`, delivered at
//! commit, which only wakes the followers: `changes WHERE revision > last`
//! remains the truth. A population import is first copied (`COPY`) into a
//! temporary table without the revision lock, then merged under it, so an
//! urgent seal waits for the merge, not for the upload.
//!
//! What is PostgreSQL's own: the pool, the advisory lock around migrations,
//! `REPEATABLE READ` reads, notifications, and the import's `COPY` and
//! merge.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Notify;
use tokio_postgres::IsolationLevel;
use tokio_postgres::types::{IsNull, ToSql, Type};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::protocol::{self, EachRow, Param, Row, Tx, wide};
use super::sql::Dialect;
use super::{Import, ImportMsg, Imported, StoreError};
use crate::clock::Clock;
use crate::core::people::PersonRecord;
use crate::core::time::Instant;

/// The channel `pg_notify` wakes followers on.
pub const CHANNEL: &str = "guardian_access";

/// A fixed key for the advisory lock that serializes migrations when many
/// instances start at once.
const MIGRATION_LOCK: i64 = 0x6761_6363_6573_7301;

/// The PostgreSQL store. Cloning shares the pool.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    tls: MakeRustlsConnect,
    config: Arc<tokio_postgres::Config>,
    id: Arc<str>,
    key: Arc<[u8]>,
    clock: Clock,
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
        Some(db) if *db.code() == tokio_postgres::error::SqlState::DISK_FULL => {
            StoreError::DiskFull(format!("{} ({})", db.message(), db.code().code()))
        }
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

/// The TLS side of a `--store` URL (SPEC §8), as libpq spells it:
/// `sslmode=disable|prefer|require|verify-ca|verify-full` and
/// `sslrootcert=/path/ca.pem`. `sslrootcert` is read here (tokio-postgres
/// does not know it); `verify-ca` and `verify-full` need it and check the
/// server's certificate chain and name; `require` and `prefer` without it
/// encrypt without checking who answers, as libpq does. The URL given back
/// has the modes tokio-postgres knows.
fn tls_of(url: &str) -> Result<(String, MakeRustlsConnect), StoreError> {
    let bad = |what: &str| StoreError::Unavailable(format!("`store`: {what}"));
    // A URL's parameters follow `?`, joined by `&`; a key=value string's
    // are separated by spaces.
    let is_url = url.contains("://");
    let (base, query, join) = if is_url {
        let (b, q) = url.split_once('?').unwrap_or((url, ""));
        (b, q, "&")
    } else {
        ("", url, " ")
    };
    let mut kept = Vec::new();
    let (mut mode, mut root) = (None, None);
    for kv in query.split(if is_url { '&' } else { ' ' }).filter(|kv| !kv.is_empty()) {
        match kv.split_once('=') {
            Some(("sslmode", m)) => mode = Some(m.to_owned()),
            Some(("sslrootcert", p)) => root = Some(p.replace("%2F", "/").replace("%2f", "/")),
            _ => kept.push(kv),
        }
    }
    let (pg_mode, verify) = match mode.as_deref() {
        None | Some("prefer") => ("prefer", false),
        Some("disable") => ("disable", false),
        Some("require") => ("require", root.is_some()),
        Some("verify-ca" | "verify-full") => ("require", true),
        Some(_) => {
            return Err(bad(
                "`sslmode` must be disable, prefer, require, verify-ca or verify-full",
            ));
        }
    };
    if verify && root.is_none() {
        return Err(bad(
            "`sslmode=verify-full` needs `sslrootcert`, the CA of the database's certificate",
        ));
    }
    kept.push(match pg_mode {
        "disable" => "sslmode=disable",
        "require" => "sslmode=require",
        _ => "sslmode=prefer",
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e.to_string()))?;
    let config = match root.filter(|_| verify) {
        Some(path) => {
            use rustls_pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(&path)
                .map_err(|_| bad("`sslrootcert` cannot be read as PEM"))?;
            for c in certs {
                roots
                    .add(c.map_err(|_| bad("`sslrootcert` holds a damaged certificate"))?)
                    .map_err(|_| bad("`sslrootcert` holds a certificate that is not a CA"))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
    };
    let rebuilt = if is_url {
        format!("{base}?{}", kept.join(join))
    } else {
        kept.join(join)
    };
    Ok((rebuilt, MakeRustlsConnect::new(config)))
}

/// `sslmode=require` or `prefer` without `sslrootcert`: the connection is
/// encrypted, and (as with libpq) the server's certificate is not checked.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl PgStore {
    /// Connects, creating the schema (or migrating it) under an advisory
    /// lock, and reads the store id.
    pub(crate) async fn open(url: &str) -> Result<PgStore, StoreError> {
        let (url, tls) = tls_of(url)?;
        let mut config = tokio_postgres::Config::from_str(&url)
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
            tls.clone(),
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
            tls,
            config: Arc::new(config),
            id: Arc::from(""),
            key: Arc::from(Vec::new()),
            clock: Clock::system(),
        };
        let (id, key) = store.migrate().await?;
        match store.durability().await {
            Ok(d) if !d.survives_failover() => tracing::warn!(
                synchronous_commit = %d.synchronous_commit,
                synchronous_standby_names = %d.synchronous_standby_names,
                "the database does not wait for a synchronous standby: a failover can lose writes this service \
                 acknowledged (set synchronous_standby_names and synchronous_commit = on or remote_apply)"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the database's durability settings"),
        }
        Ok(PgStore {
            id: Arc::from(id.as_str()),
            key: Arc::from(key),
            ..store
        })
    }

    /// Whether a commit waits for a synchronous standby, as this service's
    /// sessions see it.
    pub async fn durability(&self) -> Result<Durability, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let show = async |name: &str| -> Result<String, StoreError> {
            let row = client.query_one(&format!("SHOW {name}"), &[]).await.map_err(pg)?;
            Ok(row.get::<_, String>(0))
        };
        Ok(Durability {
            synchronous_commit: show("synchronous_commit").await?,
            synchronous_standby_names: show("synchronous_standby_names").await?,
        })
    }

    async fn migrate(&self) -> Result<(String, Vec<u8>), StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg)?;
        let id = protocol::migrate(&mut PgTx { tx: &tx }, self.clock.now()).await?;
        tx.commit().await.map_err(pg)?;
        Ok(id)
    }

    /// The same store with commit times from `clock`.
    pub(crate) fn with_clock(self, clock: Clock) -> PgStore {
        PgStore { clock, ..self }
    }

    /// The store's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The snapshot key.
    pub(crate) fn snapshot_key(&self) -> &[u8] {
        &self.key
    }

    /// Runs one write: a transaction that takes the next revision first (the
    /// lock that orders writers), does `f`, notifies and commits.
    pub(crate) async fn write<T>(
        &self,
        f: impl AsyncFnOnce(&mut PgTx<'_>, u64, Instant) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg)?;
        let mut t = PgTx { tx: &tx };
        let revision = protocol::next_revision(&mut t).await?;
        let out = f(&mut t, revision, self.clock.now()).await?;
        notify(&tx, revision).await?;
        tx.commit().await.map_err(pg)?;
        Ok(out)
    }

    /// Runs `f` in one transaction that takes no revision and wakes no one
    /// (the access log: it changes nothing checks see).
    pub(crate) async fn append<T>(
        &self,
        f: impl AsyncFnOnce(&mut PgTx<'_>, Instant) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg)?;
        let out = f(&mut PgTx { tx: &tx }, self.clock.now()).await?;
        tx.commit().await.map_err(pg)?;
        Ok(out)
    }

    /// Runs `f` in one read-only `REPEATABLE READ` transaction: every
    /// statement sees the same snapshot, so the change log and the rows agree.
    pub(crate) async fn read<T>(
        &self,
        f: impl AsyncFnOnce(&mut PgTx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg)?;
        let out = f(&mut PgTx { tx: &tx }).await?;
        tx.commit().await.map_err(pg)?;
        Ok(out)
    }

    /// See [`super::Store::import`]: `COPY` into a temporary table, then
    /// one merge under the revision lock.
    pub(crate) async fn import(&self, import: Import<'_>) -> Result<Imported, StoreError> {
        let Import { mut rx, by, action } = import;
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
        let mut t = PgTx { tx: &tx };
        let revision = protocol::next_revision(&mut t).await?;
        let at = self.clock.now();
        let changed = tx.execute(MERGE, &[&wide(revision)?]).await.map_err(pg)?;
        protocol::record_population(&mut t, revision, at, by, action, upserted, changed).await?;
        notify(&tx, revision).await?;
        tx.commit().await.map_err(pg)?;
        Ok(Imported {
            revision,
            upserted,
            changed,
        })
    }

    /// Opens the dedicated `LISTEN` connection. `wake` is notified on every
    /// notification; the returned [`Listening`] ends when the connection does.
    pub async fn listen(&self, wake: Arc<Notify>) -> Result<Listening, StoreError> {
        let (client, mut connection) = self.config.connect(self.tls.clone()).await.map_err(pg)?;
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

/// The import's merge: the last line for each person wins; persons that
/// changed are upserted and appended to their history, in number order.
const MERGE: &str = "WITH latest AS (
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
                 SELECT $1, row_number() OVER (ORDER BY id), id, birth_date, protected, guardians FROM up";

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
        protocol::guardians_text(&p.guardians)
    );
}

async fn notify(tx: &deadpool_postgres::Transaction<'_>, revision: u64) -> Result<(), StoreError> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &revision.to_string()])
        .await
        .map_err(pg)?;
    Ok(())
}

/// The database's settings that decide whether an acknowledged write
/// survives losing the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durability {
    /// `on`, `remote_apply`, `remote_write`, `local` or `off`.
    pub synchronous_commit: String,
    /// Empty: no synchronous standby.
    pub synchronous_standby_names: String,
}

impl Durability {
    /// A commit returns only once a synchronous standby has the write on
    /// disk (`on`) or applied (`remote_apply`): promoting that standby
    /// loses nothing acknowledged. `remote_write` survives losing the
    /// primary but not both at once; `local` and `off` do not survive it.
    pub fn survives_failover(&self) -> bool {
        !self.synchronous_standby_names.trim().is_empty()
            && matches!(self.synchronous_commit.as_str(), "on" | "remote_apply")
    }
}

/// A transaction on one pooled connection.
pub(crate) struct PgTx<'t> {
    tx: &'t deadpool_postgres::Transaction<'t>,
}

impl ToSql for Param<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            Param::Int(v) => v.to_sql(ty, out),
            Param::Text(v) => v.to_sql(ty, out),
            Param::Flag(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <Option<i64>>::accepts(ty) || <Option<&str>>::accepts(ty) || bool::accepts(ty)
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            Param::Int(v) => v.to_sql_checked(ty, out),
            Param::Text(v) => v.to_sql_checked(ty, out),
            Param::Flag(b) => b.to_sql_checked(ty, out),
        }
    }
}

/// A column of the wrong type: a schema changed behind our back is an
/// error, never a panic.
fn column(i: usize) -> StoreError {
    StoreError::Corrupt(format!("column {i} has an unexpected type"))
}

impl Row for tokio_postgres::Row {
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        self.try_get(i).map_err(|_| column(i))
    }

    fn text(&self, i: usize) -> Result<Option<&str>, StoreError> {
        self.try_get(i).map_err(|_| column(i))
    }

    fn flag(&self, i: usize) -> Result<bool, StoreError> {
        self.try_get(i).map_err(|_| column(i))
    }
}

impl Tx for PgTx<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.tx.batch_execute(sql).await.map_err(pg)
    }

    async fn exec(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        let stmt = self.tx.prepare_cached(sql).await.map_err(pg)?;
        self.tx.execute_raw(&stmt, params.iter()).await.map_err(pg)
    }

    async fn each(&mut self, sql: &str, params: &[Param<'_>], each: &mut EachRow<'_>) -> Result<(), StoreError> {
        let stmt = self.tx.prepare_cached(sql).await.map_err(pg)?;
        let rows = self.tx.query_raw(&stmt, params.iter()).await.map_err(pg)?;
        let mut rows = std::pin::pin!(rows);
        while let Some(row) = rows.next().await {
            each(&row.map_err(pg)?)?;
        }
        Ok(())
    }
}
