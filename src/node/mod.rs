//! The node: the one task that turns the store's committed changes into
//! published snapshots, on one instance.
//!
//! - **Bootstrap**: the newest snapshot file it can get (its own checkpoint
//!   in `--data-dir`, then a peer's `GET /v1/snapshot`), else a full build
//!   from the store; then the change log after that file's revision. Nothing
//!   is published until it has caught up with the store: a stale file could
//!   miss a seal.
//! - **Following**: woken by a local write, a PostgreSQL notification, a
//!   check that asks for a newer revision, or a poll tick, it reads
//!   `changes` after the published revision and applies them as a small
//!   overlay on the current snapshot (off the async workers), or rebuilds
//!   from the store when too many persons changed. The change log is the
//!   truth; notifications only wake it.
//! - **Folding and checkpoints**: when the overlay grows past `fold_at`, or
//!   an hour has passed with changes, it folds in the background, publishes
//!   the folded snapshot (same answers, fresh bases) and writes it as the
//!   new snapshot file.
//! - **Staleness**: every successful read of the store is contact. Past
//!   `max_staleness` without contact, checks answer `503 not_ready`.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::clock::Clock;
use crate::core::model::Settings;
pub mod peer;
mod publication;
pub mod snapfile;

use crate::core::snapshot::{BuildError, Rules, Snapshot};
use crate::store::{Changes, Loaded, Store, StoreError};
pub use publication::{Publication, Published, Refusal, SyncStatus};
use snapfile::SnapFileError;

/// The snapshot file's name inside `--data-dir`.
pub const SNAPSHOT_FILE: &str = "snapshot";

/// How the node follows the store.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where snapshot files are kept (`--data-dir`); `None` keeps none.
    pub data_dir: Option<PathBuf>,
    /// Overlay entries (persons plus subjects with changed rules) that
    /// start a background fold.
    pub fold_at: usize,
    /// With changes pending in the overlay, fold and checkpoint at least
    /// this often, so that a restart replays little.
    pub checkpoint_every: Duration,
    /// More changed persons than this are loaded by a full rebuild instead
    /// of as an overlay.
    pub max_delta_persons: u64,
    /// How often the store is asked for changes without being woken.
    pub poll_every: Duration,
    /// Without contact with the store for longer than this, checks answer
    /// `503`. `None`: never (the embedded store is in-process).
    pub max_staleness: Option<Duration>,
    /// Peers to fetch a snapshot file from at bootstrap.
    pub peers: Vec<Peer>,
    /// A write's `2xx` waits this long for checks to see it; past it, the
    /// write answers `503` and checks answer `503` until they see it.
    pub visible_within: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: None,
            fold_at: 10_000,
            checkpoint_every: Duration::from_secs(3600),
            max_delta_persons: 100_000,
            poll_every: Duration::from_secs(1),
            max_staleness: None,
            peers: Vec::new(),
            visible_within: Duration::from_secs(10),
        }
    }
}

/// Another instance to fetch a snapshot file from.
#[derive(Clone)]
pub struct Peer {
    /// `https://host:port` (or `http://` on a private network) of its admin
    /// listener.
    pub url: String,
    /// A `peer` token valid there.
    pub token: String,
    /// The CA that issued the peers' admin certificates (`--peer-ca`),
    /// needed for `https`.
    pub ca: Option<PathBuf>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("url", &self.url).finish_non_exhaustive()
    }
}

/// A running node. Dropping it does not stop it: call [`Node::stop`].
#[derive(Debug)]
pub struct Node {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
    watchdog: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Shared {
    store: Store,
    cell: Arc<Publication>,
    settings: Arc<Settings>,
    config: NodeConfig,
    /// A local write committed: catch up now.
    kick: Notify,
    /// A PostgreSQL notification arrived.
    wake: Arc<Notify>,
    stop: watch::Sender<bool>,
    /// The store's digests of the revisions this node read.
    history: History,
}

/// The store's digests of the newest revisions this node has caught up to:
/// on the next catch-up the store must still have the same digest at the
/// node's revision, or its history is not the one the node followed (an
/// asynchronous standby promoted after a failover lost what the node had
/// read) and the node rebuilds instead of carrying on.
#[derive(Debug, Default)]
struct History {
    digests: Mutex<std::collections::VecDeque<(u64, String)>>,
    /// Counts resets: a fold started before one belongs to a history that
    /// may no longer be the store's, and is thrown away.
    generation: std::sync::atomic::AtomicU64,
}

impl History {
    /// How many revisions are remembered (a fold in the background
    /// catches up from a revision a little behind the newest).
    const KEEP: usize = 64;

    /// Forgets everything: a rebuild or a snapshot file starts afresh.
    fn reset(&self, revision: u64, digest: Option<String>) {
        self.generation.fetch_add(1, Relaxed);
        if let Ok(mut h) = self.digests.lock() {
            h.clear();
            if let Some(d) = digest {
                h.push_back((revision, d));
            }
        }
    }

    /// The store's digest of `revision`, read on a catch-up.
    fn remember(&self, revision: u64, digest: Option<String>) {
        let Some(d) = digest else { return };
        if let Ok(mut h) = self.digests.lock() {
            if h.back().is_some_and(|(r, _)| *r >= revision) {
                return;
            }
            h.push_back((revision, d));
            while h.len() > Self::KEEP {
                h.pop_front();
            }
        }
    }

    /// The digest this node read for `revision`, if it remembers one.
    fn of(&self, revision: u64) -> Option<String> {
        let h = self.digests.lock().ok()?;
        h.iter().rev().find(|(r, _)| *r == revision).map(|(_, d)| d.clone())
    }

    /// How many resets there have been.
    fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }
}

/// Why a bootstrap or catch-up failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The snapshot could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A blocking task failed.
    #[error("a background task failed: {0}")]
    Task(String),
}

impl Node {
    /// Starts following `store` and publishing into `cell`. Returns at once;
    /// checks answer `503` until the bootstrap has caught up.
    pub fn start(store: Store, cell: Arc<Publication>, settings: Arc<Settings>, config: NodeConfig) -> Node {
        let shared = Arc::new(Shared::new(store, cell, settings, config));
        shared
            .cell
            .sync
            .set_limits(stale_after(&shared.config), shared.config.max_staleness);
        let task = tokio::spawn(run(shared.clone()));
        let watchdog = tokio::spawn(watchdog(shared.clone()));
        Node {
            shared,
            task: Mutex::new(Some(task)),
            watchdog: Mutex::new(Some(watchdog)),
        }
    }

    /// The store this node follows.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The cell it publishes into.
    pub fn publication(&self) -> &Arc<Publication> {
        &self.shared.cell
    }

    /// The region settings.
    pub fn settings(&self) -> &Arc<Settings> {
        &self.shared.settings
    }

    /// Waits until checks answer from `revision` or later (a write this
    /// node just committed), at most `visible_within`. If it did not happen
    /// in time, checks are refused until it does (a `2xx` means visible, or
    /// the node stops answering) and `false` is returned; the write is
    /// committed either way.
    pub async fn wait_applied(&self, revision: u64) -> bool {
        self.wait_applied_within(revision, self.shared.config.visible_within)
            .await
    }

    /// [`Node::wait_applied`] with another deadline (a population import
    /// that rebuilds the snapshot takes longer than a restriction).
    pub async fn wait_applied_within(&self, revision: u64, within: Duration) -> bool {
        self.shared.kick.notify_one();
        let cell = &self.shared.cell;
        if cell.wait_for_revision(revision, within).await {
            return true;
        }
        cell.hold_until(revision);
        cell.revision() >= revision
    }

    /// How long a write waits to be visible before it answers `503`.
    pub fn visible_within(&self) -> Duration {
        self.shared.config.visible_within
    }

    /// The snapshot file, if this node has written one.
    pub fn snapshot_file(&self) -> Option<PathBuf> {
        let path = self.shared.config.data_dir.as_ref()?.join(SNAPSHOT_FILE);
        path.exists().then_some(path)
    }

    /// Stops following and waits for the task (and any checkpoint being
    /// written) to end.
    pub async fn stop(&self) {
        self.shared.stop.send_replace(true);
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = task {
            let _ = t.await;
        }
        let watchdog = self.watchdog.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = watchdog {
            t.abort();
        }
    }
}

/// The current snapshot, once, without following: the snapshot file in
/// `config.data_dir` (or a full build) brought up to the store's head. For
/// the command line.
pub async fn load_once(store: Store, settings: Arc<Settings>, config: NodeConfig) -> Result<Snapshot, NodeError> {
    // Nothing is published from here, so the cell's clock is never read.
    let cell = Arc::new(Publication::new(Clock::system()));
    let shared = Shared::new(store, cell, settings, config);
    let snap = shared.initial().await?;
    shared.catch_up(snap, None).await
}

/// Runs a CPU-bound step off the async workers (the check listener shares
/// them).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NodeError::Task(e.to_string()))
}

fn build(loaded: Loaded, settings: Arc<Settings>) -> Result<Snapshot, BuildError> {
    let tz = crate::core::time::stockholm()?;
    let people = loaded.people.build(&settings, &tz)?;
    Snapshot::new(
        loaded.revision,
        settings,
        Arc::new(people),
        Arc::new(Rules::new(loaded.rules)),
    )
}

impl Shared {
    fn new(store: Store, cell: Arc<Publication>, settings: Arc<Settings>, config: NodeConfig) -> Shared {
        Shared {
            store,
            cell,
            settings,
            config,
            kick: Notify::new(),
            wake: Arc::new(Notify::new()),
            stop: watch::channel(false).0,
            history: History::default(),
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    fn snapshot_path(&self) -> Option<PathBuf> {
        self.config.data_dir.as_ref().map(|d| d.join(SNAPSHOT_FILE))
    }

    /// A full build from the store.
    async fn rebuild(&self) -> Result<Snapshot, NodeError> {
        let started = std::time::Instant::now();
        let loaded = self.store.load().await?;
        let (revision, digest) = (loaded.revision, loaded.digest.clone());
        let settings = self.settings.clone();
        let snap = blocking(move || build(loaded, settings)).await??;
        self.history.reset(revision, digest);
        self.cell.sync.rebuilds.fetch_add(1, Relaxed);
        info!(
            revision = snap.revision(),
            persons = snap.people().len(),
            rules = snap.rules().len(),
            seconds = started.elapsed().as_secs_f64(),
            "built the snapshot from the store"
        );
        Ok(snap)
    }

    /// The snapshot to start from: our own file, a peer's, or a full build.
    async fn initial(&self) -> Result<Snapshot, NodeError> {
        if let Some(dir) = &self.config.data_dir
            && let Err(e) = crate::store::private_dir(dir)
        {
            warn!(error = %e, "cannot create the data directory; no snapshot files");
        }
        if let Some(path) = self.snapshot_path() {
            match self.read_file(&path).await {
                Ok(s) => {
                    info!(revision = s.revision(), "loaded the snapshot file");
                    return Ok(s);
                }
                Err(SnapFileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!(error = %e, "the snapshot file is refused; it will be rebuilt"),
            }
            for peer in &self.config.peers {
                match peer::fetch(peer, &path).await {
                    Ok(()) => match self.read_file(&path).await {
                        Ok(s) => {
                            info!(revision = s.revision(), peer = %peer.url, "loaded a peer's snapshot file");
                            return Ok(s);
                        }
                        Err(e) => warn!(error = %e, peer = %peer.url, "a peer's snapshot file is refused"),
                    },
                    Err(e) => warn!(error = %e, peer = %peer.url, "cannot fetch a snapshot file from a peer"),
                }
            }
        }
        self.rebuild().await
    }

    /// Reads a snapshot file; its digest becomes what the store's history
    /// must match on the first catch-up.
    async fn read_file(&self, path: &Path) -> Result<Snapshot, SnapFileError> {
        let path = path.to_owned();
        let id = self.store.id().to_owned();
        let settings = self.settings.clone();
        let key = self.store.snapshot_key().to_vec();
        let (snap, digest) =
            tokio::task::spawn_blocking(move || snapfile::read_with_digest(&path, &id, &key, settings))
                .await
                .map_err(|e| SnapFileError::Io(std::io::Error::other(e.to_string())))??;
        self.history.reset(snap.revision(), digest);
        Ok(snap)
    }

    /// Brings `snap` up to the store's head: a delta applied as an overlay,
    /// or a full build when too much changed, the file is ahead of the
    /// store (a restored backup) or the store's history is not the one
    /// `snap` was made from (`known`, else the digest remembered for its
    /// revision).
    async fn catch_up(&self, snap: Snapshot, known: Option<String>) -> Result<Snapshot, NodeError> {
        let after = snap.revision();
        let expect = known.or_else(|| self.history.of(after));
        match self.store.changes(after, expect, self.config.max_delta_persons).await {
            Ok(Changes::UpToDate(_)) => Ok(snap),
            Ok(Changes::Delta {
                revision,
                persons,
                rules,
                digest,
            }) => {
                self.history.remember(revision, digest);
                let n = persons.len();
                let next = blocking(move || snap.apply(revision, &persons, &rules)).await??;
                debug!(from = after, to = revision, persons = n, "applied changes");
                Ok(next)
            }
            Ok(Changes::TooMany(head)) => {
                info!(
                    from = after,
                    to = head,
                    "many persons changed: rebuilding from the store"
                );
                self.rebuild().await
            }
            Ok(Changes::Diverged(why)) => {
                warn!(reason = %why, "the snapshot does not follow the store: rebuilding");
                let rebuilt = self.rebuild().await?;
                // A write held for publication that this store does not
                // have will never be published: its client was told to
                // read it back.
                self.cell.forget_hold_above(rebuilt.revision());
                Ok(rebuilt)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Publishes `snap`, which is caught up with the store: only now is the
    /// instance in contact (and fresh) again.
    fn publish(&self, snap: Snapshot) {
        let revision = snap.revision();
        self.cell.publish(snap);
        self.cell.sync.contact(revision);
    }

    /// Folds `snap` and writes it as the snapshot file, in the background.
    /// A fold that a rebuild overtook (another history, perhaps) is thrown
    /// away, checkpoint and all.
    fn fold_in_background(self: &Arc<Self>, snap: Snapshot) -> Fold {
        let shared = self.clone();
        let generation = self.history.generation();
        let digest = self.history.of(snap.revision());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let folded = match blocking(move || snap.fold()).await {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => {
                    error!(error = %e, "folding failed");
                    return None;
                }
                Err(e) => {
                    error!(error = %e, "folding failed");
                    return None;
                }
            };
            shared.cell.sync.folds.fetch_add(1, Relaxed);
            debug!(
                revision = folded.revision(),
                seconds = started.elapsed().as_secs_f64(),
                "folded"
            );
            if shared.history.generation() != generation {
                info!("the snapshot was rebuilt while folding: the fold is discarded");
                return None;
            }
            shared.checkpoint(folded.clone(), digest.clone()).await;
            Some(Folded {
                snapshot: folded,
                digest,
                generation,
            })
        })
    }

    /// Writes `snap` (folded) as the snapshot file, with the store's digest
    /// of its revision.
    async fn checkpoint(&self, snap: Snapshot, digest: Option<String>) {
        let Some(path) = self.snapshot_path() else { return };
        let id = self.store.id().to_owned();
        let revision = snap.revision();
        let started = std::time::Instant::now();
        let key = self.store.snapshot_key().to_vec();
        match blocking(move || snapfile::write(&path, &snap, &id, &key, digest.as_deref())).await {
            Ok(Ok(bytes)) => {
                self.cell.sync.checkpoints.fetch_add(1, Relaxed);
                info!(
                    revision,
                    bytes,
                    seconds = started.elapsed().as_secs_f64(),
                    "checkpoint written"
                );
            }
            Ok(Err(e)) => error!(error = %e, "cannot write the snapshot file"),
            Err(e) => error!(error = %e, "cannot write the snapshot file"),
        }
    }
}

/// What woke the node.
enum Event {
    /// Something may have changed: catch up.
    Work,
    /// The notification connection was lost.
    Lost,
    /// A background fold finished (`None` if it failed or was discarded).
    Folded(Option<Folded>),
    /// Stop.
    Stop,
}

/// A finished fold: the folded snapshot, the store's digest of its
/// revision, and the history generation it was made in.
struct Folded {
    snapshot: Snapshot,
    digest: Option<String>,
    generation: u64,
}

type Fold = JoinHandle<Option<Folded>>;

/// Waits for something to do: a kick, a notification, a check that wants a
/// newer revision, the poll tick, a finished fold, or the stop signal.
async fn wait(
    shared: &Shared,
    listening: &mut Option<crate::store::postgres::Listening>,
    fold: &mut Option<Fold>,
) -> Event {
    let mut stop = shared.stop.subscribe();
    if *stop.borrow() {
        return Event::Stop;
    }
    tokio::select! {
        () = shared.kick.notified() => Event::Work,
        () = shared.wake.notified() => Event::Work,
        () = shared.cell.kicked() => Event::Work,
        () = async { if let Some(l) = listening.as_mut() { l.lost().await } else { std::future::pending().await } } => Event::Lost,
        done = async { if let Some(f) = fold.as_mut() { f.await } else { std::future::pending().await } } => {
            Event::Folded(done.ok().flatten())
        }
        () = tokio::time::sleep(shared.config.poll_every) => Event::Work,
        _ = stop.changed() => Event::Stop,
    }
}

async fn run(shared: Arc<Shared>) {
    // Bootstrap: retry until the store answers; checks answer 503 meanwhile.
    let mut backoff = Duration::from_millis(100);
    let mut current = loop {
        if shared.stopping() {
            return;
        }
        let attempt = async {
            let snap = shared.initial().await?;
            shared.catch_up(snap, None).await
        };
        match attempt.await {
            Ok(s) => break s,
            Err(e) => {
                shared.cell.sync.errors.fetch_add(1, Relaxed);
                warn!(error = %e, retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX), "bootstrap failed; retrying");
                let mut stop = shared.stop.subscribe();
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    shared.publish(current.clone());
    let mut fold: Option<Fold> = None;
    let mut last_checkpoint = std::time::Instant::now();
    // Anything built from the store (at bootstrap or when too much changed)
    // is written as a checkpoint, so the next start need not build again.
    let rebuilds = || shared.cell.sync.rebuilds.load(Relaxed);
    let mut checkpointed_rebuilds = rebuilds();
    if checkpointed_rebuilds > 0 || current.overlay_len() > 0 {
        fold = Some(shared.fold_in_background(current.clone()));
    }

    let mut listening: Option<crate::store::postgres::Listening> = None;
    loop {
        if listening.is_none()
            && let Store::Postgres(pg) = &shared.store
        {
            match pg.listen(shared.wake.clone()).await {
                // Notifications sent before LISTEN took effect are lost:
                // the catch-up below reads them from the log.
                Ok(l) => listening = Some(l),
                Err(e) => debug!(error = %e, "cannot listen for notifications yet"),
            }
        }
        let mut base = current.clone();
        let mut known = None;
        let mut folded_now = false;
        match wait(&shared, &mut listening, &mut fold).await {
            Event::Stop => break,
            Event::Work => {}
            Event::Lost => {
                warn!("lost the notification connection to the store; polling until it is back");
                listening = None;
            }
            Event::Folded(done) => {
                fold = None;
                last_checkpoint = std::time::Instant::now();
                // Same answers on fresh bases; what committed meanwhile is
                // applied on top of it below.
                // A rebuild since the fold started may have found another
                // history: then the fold is stale (its task discards it
                // too, but a rebuild may come after it finished).
                if let Some(f) = done
                    && f.generation == shared.history.generation()
                {
                    base = f.snapshot;
                    known = f.digest;
                    folded_now = true;
                }
            }
        }

        match shared.catch_up(base.clone(), known).await {
            Ok(next) => {
                if folded_now || next.revision() != current.revision() {
                    current = next;
                    shared.publish(current.clone());
                } else {
                    // Nothing new: still in contact, still caught up.
                    shared.cell.sync.contact(current.revision());
                }
            }
            Err(e) => {
                shared.cell.sync.errors.fetch_add(1, Relaxed);
                warn!(error = %e, "cannot read changes from the store");
                continue;
            }
        }

        let due = current.overlay_len() > 0 && last_checkpoint.elapsed() >= shared.config.checkpoint_every;
        let rebuilt = rebuilds() != checkpointed_rebuilds;
        if fold.is_none() && (current.overlay_len() >= shared.config.fold_at || due || rebuilt) {
            checkpointed_rebuilds = rebuilds();
            fold = Some(shared.fold_in_background(current.clone()));
        }
    }
    // Let a checkpoint being written finish: a torn file is never renamed
    // into place, but a finished one saves the next start a rebuild.
    if let Some(f) = fold {
        let _ = f.await;
    }
}

/// How old contact with the store may get before the instance says it is
/// stale (it still answers): a few missed polls.
fn stale_after(config: &NodeConfig) -> Duration {
    (config.poll_every * 3).max(Duration::from_secs(1))
}

/// Stops the instance answering when it has had no contact with the store
/// for longer than `max_staleness`, and lets it answer again once it has
/// caught up. Logs when it becomes stale and when it is fresh again.
async fn watchdog(shared: Arc<Shared>) {
    let max = shared.config.max_staleness;
    let every = max
        .map_or(Duration::from_millis(500), |m| m / 10)
        .clamp(Duration::from_millis(10), Duration::from_millis(500));
    let mut was_stale = false;
    loop {
        tokio::time::sleep(every).await;
        let sync = &shared.cell.sync;
        let stale = sync.is_stale() && shared.cell.revision() > 0;
        if stale != was_stale {
            was_stale = stale;
            if stale {
                warn!("no contact with the store: answering from the last snapshot");
            } else {
                info!("contact with the store is back");
            }
        }
        let Some(max) = max else { continue };
        let expired = sync.contact_age().is_none_or(|age| age > max);
        if shared.cell.set_expired(expired) {
            if expired {
                error!(
                    max_staleness_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX),
                    "no contact with the store for too long: answering 503"
                );
            } else {
                info!("caught up with the store: answering again");
            }
        }
    }
}
