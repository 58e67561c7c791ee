//! The publication cell: the snapshot checks answer from, the revision it
//! is at, and what the node knows about following the store.
//!
//! The node is the only writer ([`Publication::publish`]); the listeners
//! and the admin path read it. Reading the snapshot is one `arc-swap` load,
//! no lock; everything else here is for waiting (`min_revision`, a write's
//! visibility) and for `/v1/status` and `/metrics`, not for the check path.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwapOption, Guard};
use tokio::sync::{Notify, watch};
use tracing::debug;

use crate::clock::Clock;
use crate::core::snapshot::Snapshot;

/// A snapshot as published.
#[derive(Debug)]
pub struct Published {
    /// What checks are answered from.
    pub snapshot: Snapshot,
    /// When it was published.
    pub loaded_at: jiff::Timestamp,
}

/// Why an instance with a published snapshot refuses to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No contact with the store for longer than `max_staleness`.
    Stale,
    /// A committed write (this revision) was not published in time.
    Behind(u64),
}

/// The cell the node publishes into and everyone else reads.
#[derive(Debug)]
pub struct Publication {
    published: ArcSwapOption<Published>,
    /// The revision checks answer from, for those who wait for one.
    revision: watch::Sender<u64>,
    /// Asks the node to catch up now (a check wants a newer revision).
    kick: Notify,
    /// No contact with the store for longer than `max_staleness`: answer 503.
    expired: AtomicBool,
    /// A committed write's revision that was not published in time: answer
    /// 503 until it is (0: none).
    held: AtomicU64,
    /// What the node reports about following the store.
    pub sync: SyncStatus,
    clock: Clock,
}

impl Publication {
    /// An empty cell: nothing published, checks answer `503`.
    pub fn new(clock: Clock) -> Publication {
        Publication {
            published: ArcSwapOption::empty(),
            revision: watch::channel(0).0,
            kick: Notify::new(),
            expired: AtomicBool::new(false),
            held: AtomicU64::new(0),
            sync: SyncStatus::default(),
            clock,
        }
    }

    /// Publishes `snapshot`: the next request answers from it. In a
    /// service the node is the only caller; a check listener on its own
    /// (tests, benches) is published into by hand.
    pub fn publish(&self, snapshot: Snapshot) {
        let revision = snapshot.revision();
        self.published.store(Some(Arc::new(Published {
            snapshot,
            loaded_at: self.clock.timestamp(),
        })));
        self.revision.send_replace(revision);
        debug!(revision, "snapshot published");
        self.release(revision);
    }

    /// Refuses checks until `revision`, a committed write, is published:
    /// the write's `2xx` was withheld because it was not visible in time.
    pub fn hold_until(&self, revision: u64) {
        self.held.fetch_max(revision, SeqCst);
        // Published meanwhile: `publish` may have looked before we held.
        self.release(self.revision());
    }

    /// Ends a hold on a revision after `head`: after a rebuild from a store
    /// whose history does not have it, it would never be published.
    pub(crate) fn forget_hold_above(&self, head: u64) {
        let held = self.held.load(SeqCst);
        if held > head && self.held.compare_exchange(held, 0, SeqCst, SeqCst).is_ok() {
            tracing::warn!(
                revision = held,
                head,
                "the held write is not in the store's history: answering again from the store's head"
            );
        }
    }

    /// Ends a hold that `published` satisfies.
    fn release(&self, published: u64) {
        let held = self.held.load(SeqCst);
        if held != 0 && held <= published && self.held.compare_exchange(held, 0, SeqCst, SeqCst).is_ok() {
            tracing::info!(revision = published, "the held write is visible: answering again");
        }
    }

    /// Why checks are refused although a snapshot is published, if they are.
    pub fn refusal(&self) -> Option<Refusal> {
        match self.held.load(SeqCst) {
            0 if self.expired.load(Relaxed) => Some(Refusal::Stale),
            0 => None,
            r => Some(Refusal::Behind(r)),
        }
    }

    /// The published snapshot, if checks are being answered (not before the
    /// first publication, not past `max_staleness`).
    pub fn current(&self) -> Option<Arc<Published>> {
        if self.is_expired() {
            return None;
        }
        self.published.load_full()
    }

    /// The hot path's one load: the published snapshot, whether or not the
    /// instance is expired (the caller checks [`Publication::is_expired`]).
    pub fn load(&self) -> Guard<Option<Arc<Published>>> {
        self.published.load()
    }

    /// The revision checks answer from (0 before anything is published).
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// Waits until a snapshot at `revision` or later is published, at most
    /// `timeout`. Asks the node to look for it first.
    pub async fn wait_for_revision(&self, revision: u64, timeout: Duration) -> bool {
        let mut rx = self.revision.subscribe();
        if *rx.borrow() >= revision {
            return true;
        }
        self.kick.notify_one();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision)).await,
            Ok(Ok(_))
        )
    }

    /// Resolves when a check asked for a newer revision (for the node).
    pub(crate) async fn kicked(&self) {
        self.kick.notified().await;
    }

    /// Marks the instance as past `max_staleness` (answering 503) or not;
    /// `true` if that changed.
    pub(crate) fn set_expired(&self, expired: bool) -> bool {
        self.expired.swap(expired, Relaxed) != expired
    }

    /// Whether the instance refuses to answer: past `max_staleness`, or
    /// behind a committed write ([`Publication::refusal`] says which).
    pub fn is_expired(&self) -> bool {
        self.expired.load(Relaxed) || self.held.load(Relaxed) != 0
    }

    /// How long ago `p` was published.
    pub fn age(&self, p: &Published) -> Duration {
        self.clock
            .timestamp()
            .duration_since(p.loaded_at)
            .try_into()
            .unwrap_or_default()
    }
}

/// What the node reports about following the store, for `/v1/status` and
/// `/metrics`. Not on the check path.
#[derive(Debug, Default)]
pub struct SyncStatus {
    head: AtomicU64,
    contact: Mutex<Option<std::time::Instant>>,
    /// Contact older than this makes the instance stale (still answering).
    stale_after_ms: AtomicU64,
    /// Contact older than this makes it stop answering; 0 = never.
    max_staleness_ms: AtomicU64,
    /// Failed reads of the store.
    pub errors: AtomicU64,
    /// Background folds done.
    pub folds: AtomicU64,
    /// Snapshot files written.
    pub checkpoints: AtomicU64,
    /// Full builds from the store.
    pub rebuilds: AtomicU64,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl SyncStatus {
    /// The store answered and is at `head`.
    pub fn contact(&self, head: u64) {
        self.head.fetch_max(head, Relaxed);
        if let Ok(mut c) = self.contact.lock() {
            *c = Some(std::time::Instant::now());
        }
    }

    /// Time since the store last answered; `None` before it ever did.
    pub fn contact_age(&self) -> Option<Duration> {
        self.contact.lock().ok().and_then(|c| c.map(|t| t.elapsed()))
    }

    /// The newest store revision seen.
    pub fn head(&self) -> u64 {
        self.head.load(Relaxed)
    }

    /// Sets how old contact may get before the instance is stale (still
    /// answering) and before it stops answering (`None`: never).
    pub fn set_limits(&self, stale_after: Duration, max_staleness: Option<Duration>) {
        self.stale_after_ms.store(millis(stale_after), Relaxed);
        self.max_staleness_ms.store(max_staleness.map_or(0, millis), Relaxed);
    }

    /// `max_staleness`, if the instance has one.
    pub fn max_staleness(&self) -> Option<Duration> {
        match self.max_staleness_ms.load(Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Whether the store has not answered for a while: the instance still
    /// answers from its last snapshot, and says so.
    pub fn is_stale(&self) -> bool {
        let after = Duration::from_millis(self.stale_after_ms.load(Relaxed));
        after > Duration::ZERO && self.contact_age().is_none_or(|a| a > after)
    }
}
