//! The check listener: hyper 1.x over tokio, answering from the published
//! snapshot (SPEC §4).
//!
//! [`run`] takes an already-bound listener, so tests bind port 0. Every
//! request loads the published snapshot exactly once and answers from it;
//! before one is published every check answers `503 not_ready` (fail
//! closed). Connections are limited in number, must send their request head
//! within a timeout, and are drained on shutdown.

use std::convert::Infallible;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tracing::{Instrument, debug, info, warn};

use crate::api::{self, ApiError, MAX_BODY};
use crate::identity::Pid;
use crate::metrics::{Endpoint, Metrics, SnapshotGauges};
use crate::snapshot::Snapshot;
use crate::time::Instant;

/// A snapshot as published to the check listener.
#[derive(Debug)]
pub struct Published {
    /// What checks are answered from.
    pub snapshot: Snapshot,
    /// When it was published.
    pub loaded_at: jiff::Timestamp,
}

/// The header names `GET /v1/authz` reads.
#[derive(Debug, Clone)]
pub struct AuthzHeaders {
    /// Who is logged in (default `x-actor-id`).
    pub actor: HeaderName,
    /// Whose journal (default `x-subject-id`).
    pub subject: HeaderName,
    /// Which service (default `x-service`).
    pub service: HeaderName,
}

impl Default for AuthzHeaders {
    fn default() -> Self {
        AuthzHeaders {
            actor: HeaderName::from_static("x-actor-id"),
            subject: HeaderName::from_static("x-subject-id"),
            service: HeaderName::from_static("x-service"),
        }
    }
}

/// How the check listener treats its clients.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Most connections open at once; more are closed on accept.
    pub max_connections: usize,
    /// A client must send a whole request head within this.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// How long in-flight requests may take to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Header names for `/v1/authz`.
    pub authz: AuthzHeaders,
    /// How long a check carrying a `min_revision` this instance has not
    /// reached waits for it before answering `503`.
    pub min_revision_wait: Duration,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            authz: AuthzHeaders::default(),
            min_revision_wait: Duration::from_millis(500),
        }
    }
}

/// Everything the listener shares between connections.
#[derive(Debug)]
pub struct State {
    published: ArcSwapOption<Published>,
    /// The revision checks answer from, for those who wait for one.
    revision: watch::Sender<u64>,
    /// Asks the node to catch up now (a check wants a newer revision).
    kick: Notify,
    /// No contact with the store for longer than `max_staleness`: answer 503.
    expired: AtomicBool,
    /// What the node reports about following the store.
    pub sync: SyncStatus,
    /// The counters behind `/metrics`.
    pub metrics: Metrics,
    config: ListenerConfig,
    source: String,
    log_key: RandomState,
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
        self.stale_after_ms.store(stale_after.as_millis() as u64, Relaxed);
        self.max_staleness_ms
            .store(max_staleness.map_or(0, |d| d.as_millis() as u64), Relaxed);
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

/// A keyed hash of an identity number, for correlating log lines without
/// logging the number. The key is random per process.
#[derive(Debug, Clone, Copy)]
pub struct Tag(u64);

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl State {
    /// A listener state with nothing published yet; `source` says where
    /// snapshots come from, for `/v1/status`.
    pub fn new(config: ListenerConfig, source: impl Into<String>) -> State {
        State {
            published: ArcSwapOption::empty(),
            revision: watch::channel(0).0,
            kick: Notify::new(),
            expired: AtomicBool::new(false),
            sync: SyncStatus::default(),
            metrics: Metrics::default(),
            config,
            source: source.into(),
            log_key: RandomState::new(),
        }
    }

    /// Publishes `snapshot`: the next request answers from it.
    pub fn publish(&self, snapshot: Snapshot) {
        let revision = snapshot.revision();
        self.published.store(Some(Arc::new(Published {
            snapshot,
            loaded_at: jiff::Timestamp::now(),
        })));
        self.revision.send_replace(revision);
        debug!(revision, "snapshot published");
    }

    /// The published snapshot, if checks are being answered.
    pub fn current(&self) -> Option<Arc<Published>> {
        if self.expired.load(Relaxed) {
            return None;
        }
        self.published.load_full()
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
    pub async fn kicked(&self) {
        self.kick.notified().await;
    }

    /// Marks the instance as past `max_staleness` (answering 503) or not;
    /// `true` if that changed.
    pub fn set_expired(&self, expired: bool) -> bool {
        self.expired.swap(expired, Relaxed) != expired
    }

    /// Whether the instance is past `max_staleness` and refuses to answer.
    pub fn is_expired(&self) -> bool {
        self.expired.load(Relaxed)
    }

    /// The tag logs use for `pid`.
    pub fn tag(&self, pid: Pid) -> Tag {
        Tag(self.log_key.hash_one(pid.get()))
    }

    fn gauges(&self, p: Option<&Published>) -> SnapshotGauges {
        let sync = &self.sync;
        SnapshotGauges {
            ready: p.is_some() && !self.is_expired(),
            stale: sync.is_stale(),
            revision: p.map_or(0, |p| p.snapshot.revision()),
            age_seconds: p.map_or(0.0, |p| age(p).as_secs_f64()),
            overlay: p.map_or(0, |p| p.snapshot.overlay_len() as u64),
            store_revision: sync.head(),
            contact_age_seconds: sync.contact_age().map(|d| d.as_secs_f64()),
            store_errors: sync.errors.load(Relaxed),
            folds: sync.folds.load(Relaxed),
            checkpoints: sync.checkpoints.load(Relaxed),
            rebuilds: sync.rebuilds.load(Relaxed),
        }
    }
}

fn age(p: &Published) -> Duration {
    jiff::Timestamp::now()
        .duration_since(p.loaded_at)
        .try_into()
        .unwrap_or_default()
}

fn now() -> Instant {
    Instant::from_timestamp(jiff::Timestamp::now()).unwrap_or(Instant::MAX)
}

/// A whole answer.
pub type Answer = Response<Full<Bytes>>;

/// An answer with a status, a content type and a body.
pub fn respond(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(body: Vec<u8>) -> Answer {
    respond(200, "application/json", body)
}

/// The one place an error becomes an HTTP answer. Client errors are logged
/// at debug only: they are the client's business, not an operator's.
fn error(state: &State, endpoint: Endpoint, e: &ApiError) -> Answer {
    state.metrics.error(endpoint, e.code);
    debug!(
        code = e.code,
        field = e.field.as_deref(),
        status = e.status,
        "error answer"
    );
    let mut r = respond(e.status, "application/json", e.body());
    if e.status == 405 {
        let allow = if endpoint == Endpoint::Authz || endpoint == Endpoint::Operations {
            "GET"
        } else {
            "POST"
        };
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    r
}

/// Reads the whole body, refusing more than [`MAX_BODY`]. The usual body
/// arrives as one frame and is returned as is, without copying.
pub(crate) async fn read_body<B>(body: B, declared: Option<u64>) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(ApiError::body_too_large());
    }
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut more: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ApiError::invalid_body("the body could not be read"))?;
        let Ok(data) = frame.into_data() else { continue };
        // `more`, once started, holds the first frame too.
        let so_far = if more.is_empty() {
            first.as_ref().map_or(0, Bytes::len)
        } else {
            more.len()
        };
        let len = so_far + data.len();
        if len > MAX_BODY {
            return Err(ApiError::body_too_large());
        }
        match &first {
            None => first = Some(data),
            Some(f) => {
                if more.is_empty() {
                    more.extend_from_slice(f);
                }
                more.extend_from_slice(&data);
            }
        }
    }
    Ok(if more.is_empty() {
        first.unwrap_or_default()
    } else {
        Bytes::from(more)
    })
}

/// Answers one request.
pub async fn handle<B>(state: &State, req: Request<B>) -> Answer
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let started = std::time::Instant::now();
    let (endpoint, answer) = route(state, req).await;
    state.metrics.request(endpoint, started.elapsed());
    answer
}

async fn route<B>(state: &State, req: Request<B>) -> (Endpoint, Answer)
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let endpoint = match req.uri().path() {
        "/v1/check" => Endpoint::Check,
        "/v1/check/batch" => Endpoint::Batch,
        "/v1/children" => Endpoint::Children,
        "/v1/authz" => Endpoint::Authz,
        "/healthz" | "/readyz" | "/metrics" | "/v1/status" => Endpoint::Operations,
        _ => return (Endpoint::Other, error(state, Endpoint::Other, &ApiError::not_found())),
    };
    let wanted = match endpoint {
        Endpoint::Authz | Endpoint::Operations => Method::GET,
        _ => Method::POST,
    };
    if req.method() != wanted && !(wanted == Method::GET && req.method() == Method::HEAD) {
        return (endpoint, error(state, endpoint, &ApiError::method_not_allowed()));
    }
    let answer = match endpoint {
        Endpoint::Operations => Ok(operations(state, req.uri().path())),
        Endpoint::Authz => read_your_writes(state, || authz(state, &req)).await,
        _ => {
            let declared = req.body().size_hint().upper();
            match read_body(req.into_body(), declared).await {
                Ok(body) => read_your_writes(state, || decision(state, endpoint, &body)).await,
                Err(e) => Err(e),
            }
        }
    }
    .unwrap_or_else(|e| error(state, endpoint, &e));
    (endpoint, answer)
}

/// Answers with `answer`; if the request asked for a revision this
/// instance has not published yet (`min_revision`), waits a little for it
/// and asks once more.
async fn read_your_writes(state: &State, answer: impl Fn() -> Result<Answer, ApiError>) -> Result<Answer, ApiError> {
    match answer() {
        Err(e) => match e.wait_for {
            Some(r) if state.wait_for_revision(r, state.config.min_revision_wait).await => answer(),
            _ => Err(e),
        },
        ok => ok,
    }
}

/// `/v1/check`, `/v1/check/batch`, `/v1/children`: one snapshot load each.
fn decision(state: &State, endpoint: Endpoint, body: &[u8]) -> Result<Answer, ApiError> {
    if state.expired.load(Relaxed) {
        return Err(ApiError::stale());
    }
    let published = state.published.load();
    let Some(p) = published.as_deref() else {
        return Err(ApiError::not_ready());
    };
    let snap = &p.snapshot;
    let out = match endpoint {
        Endpoint::Check => {
            let (q, d, out) = api::check(snap, body, now())?;
            state.metrics.decision(endpoint, d.reason);
            debug!(
                actor = %state.tag(q.actor),
                subject = %state.tag(q.subject),
                service = q.service.as_str(),
                reason = d.reason.as_str(),
                revision = d.revision,
                "check"
            );
            out
        }
        Endpoint::Batch => {
            let b = api::batch(snap, body, now())?;
            for o in &b.outcomes {
                match o {
                    Ok(d) => state.metrics.decision(endpoint, d.reason),
                    Err(e) => state.metrics.error(endpoint, e.code),
                }
            }
            debug!(checks = b.outcomes.len(), revision = snap.revision(), "batch");
            b.body
        }
        _ => {
            let out = api::children(snap, body, now())?;
            debug!(revision = snap.revision(), "children");
            out
        }
    };
    Ok(json(out))
}

/// `GET /v1/authz`: for nginx `auth_request` and Envoy `ext_authz`.
fn authz<B>(state: &State, req: &Request<B>) -> Result<Answer, ApiError> {
    if state.expired.load(Relaxed) {
        return Err(ApiError::stale());
    }
    let published = state.published.load();
    let Some(p) = published.as_deref() else {
        return Err(ApiError::not_ready());
    };
    let snap = &p.snapshot;
    let h = &state.config.authz;
    let get = |name: &HeaderName| req.headers().get(name).map(HeaderValue::as_bytes);
    api::authz_min_revision(snap, req.headers().get("x-min-revision").map(HeaderValue::as_bytes))?;
    let q = api::authz_query(get(&h.actor), get(&h.subject), get(&h.service), snap.tz(), now())?;
    let d = crate::decide::decide(snap, &q);
    state.metrics.decision(Endpoint::Authz, d.reason);
    debug!(
        actor = %state.tag(q.actor),
        subject = %state.tag(q.subject),
        reason = d.reason.as_str(),
        "authz"
    );
    let mut r = respond(if d.allowed() { 200 } else { 403 }, "text/plain", Bytes::new());
    let headers = r.headers_mut();
    headers.insert("x-access-reason", HeaderValue::from_static(d.reason.as_str()));
    headers.insert("x-access-revision", HeaderValue::from(d.revision));
    Ok(r)
}

fn operations(state: &State, path: &str) -> Answer {
    let published = state.published.load();
    let p = published.as_deref();
    let ready = p.is_some() && !state.is_expired();
    match path {
        "/healthz" => respond(200, "text/plain", "ok\n"),
        "/readyz" => match p {
            Some(p) if ready => json(
                serde_json::to_vec(&serde_json::json!({"ready": true, "revision": p.snapshot.revision()}))
                    .unwrap_or_default(),
            ),
            _ if state.is_expired() => error(state, Endpoint::Operations, &ApiError::stale()),
            _ => error(state, Endpoint::Operations, &ApiError::not_ready()),
        },
        "/metrics" => respond(200, "text/plain; version=0.0.4", state.metrics.render(state.gauges(p))),
        _ => {
            let sync = &state.sync;
            let store = serde_json::json!({
                "revision": sync.head(),
                "behind": sync.head().saturating_sub(p.map_or(0, |p| p.snapshot.revision())),
                "lag_seconds": sync.contact_age().map(|d| d.as_secs_f64()),
                "stale": sync.is_stale(),
                "expired": state.is_expired(),
                "max_staleness_seconds": sync.max_staleness().map(|d| d.as_secs_f64()),
                "errors": sync.errors.load(Relaxed),
                "folds": sync.folds.load(Relaxed),
                "checkpoints": sync.checkpoints.load(Relaxed),
                "rebuilds": sync.rebuilds.load(Relaxed),
            });
            let body = match p {
                None => serde_json::json!({"ready": false, "revision": null, "source": state.source, "store": store}),
                Some(p) => {
                    let s = &p.snapshot;
                    serde_json::json!({
                        "ready": ready,
                        "revision": s.revision(),
                        "loaded_at": p.loaded_at.to_string(),
                        "age_seconds": age(p).as_secs_f64(),
                        "persons": s.people().len(),
                        "links": s.people().links(),
                        "rules": s.rules().len(),
                        "overlay": s.overlay_len(),
                        "source": state.source,
                        "lag_seconds": sync.contact_age().map(|d| d.as_secs_f64()),
                        "store": store,
                    })
                }
            };
            json(serde_json::to_vec(&body).unwrap_or_default())
        }
    }
}

/// Serves checks on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish (up to the configured grace) and returns.
pub async fn run(listener: TcpListener, state: Arc<State>, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let config = state.config.clone();
    let svc = state.clone();
    serve(listener, &config, state, shutdown, move |req| {
        let state = svc.clone();
        async move { handle(&state, req).await }
    })
    .await
}

/// The accept loop both listeners share: at most `max_connections`
/// connections (more are closed at once and counted), a request head within
/// `header_read_timeout`, idle connections closed, and on `shutdown` no new
/// connections while in-flight requests finish. Connections of both
/// listeners are counted in `state`'s metrics.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    config: &ListenerConfig,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
    handler: H,
) -> std::io::Result<()>
where
    H: Fn(Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            state.metrics.connection_refused();
            debug!(%peer, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        state.metrics.connection_opened();
        let io = TokioIo::new(IdleTimeout::new(stream, config.idle_timeout));
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |req| {
            let fut = handler(req);
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let conn = graceful.watch(http.serve_connection(io, service));
        let conn_state = state.clone();
        tokio::spawn(
            async move {
                if let Err(e) = conn.await {
                    debug!(error = %e, "connection ended with an error");
                }
                conn_state.metrics.connection_closed();
                drop(permit);
            }
            .instrument(tracing::debug_span!("conn", peer = %Peer(peer))),
        );
    }
    drop(listener);
    info!("shutting down: finishing in-flight requests");
    if tokio::time::timeout(config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("shutdown grace elapsed; closing remaining connections");
    }
    Ok(())
}

/// A peer address in logs.
struct Peer(SocketAddr);

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

pub use idle::IdleTimeout;

mod idle {
    //! A stream that fails reads once it has been idle too long, so that a
    //! client holding a connection open without asking anything gives its
    //! slot back.
    //!
    //! Cheap on the hot path: I/O only sets a flag. The timer is checked when
    //! it fires: if there was activity since, it is re-armed, so an idle
    //! connection closes between one and two timeouts after its last byte,
    //! and a busy one costs one timer reset per timeout, not per request.

    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::time::{Instant, Sleep};

    /// A stream with an idle deadline.
    #[derive(Debug)]
    pub struct IdleTimeout<S> {
        inner: S,
        timeout: Duration,
        deadline: Pin<Box<Sleep>>,
        active: bool,
    }

    impl<S> IdleTimeout<S> {
        /// Wraps `inner`.
        pub fn new(inner: S, timeout: Duration) -> Self {
            IdleTimeout {
                inner,
                timeout,
                deadline: Box::pin(tokio::time::sleep(timeout)),
                active: false,
            }
        }

        fn touch(&mut self) {
            self.active = true;
        }

        /// Whether the connection has been idle for a whole timeout.
        fn expired(&mut self, cx: &mut Context<'_>) -> bool {
            while self.deadline.as_mut().poll(cx).is_ready() {
                if !self.active {
                    return true;
                }
                self.active = false;
                let next = Instant::now() + self.timeout;
                self.deadline.as_mut().reset(next);
            }
            false
        }
    }

    impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            match Pin::new(&mut self.inner).poll_read(cx, buf) {
                Poll::Ready(r) => {
                    if buf.filled().len() > before {
                        self.touch();
                    }
                    Poll::Ready(r)
                }
                Poll::Pending if self.expired(cx) => {
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")))
                }
                Poll::Pending => Poll::Pending,
            }
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let r = Pin::new(&mut self.inner).poll_write(cx, buf);
            if let Poll::Ready(Ok(n)) = r
                && n > 0
            {
                self.touch();
            }
            r
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
            if let Poll::Ready(Ok(n)) = r
                && n > 0
            {
                self.touch();
            }
            r
        }

        fn is_write_vectored(&self) -> bool {
            self.inner.is_write_vectored()
        }
    }
}
