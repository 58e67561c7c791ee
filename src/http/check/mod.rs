//! The check listener (SPEC §4): hyper 1.x over tokio, answering from the
//! published snapshot.
//!
//! [`run`] takes an already-bound listener, so tests bind port 0. Every
//! request loads the published snapshot exactly once and answers from it;
//! before one is published every check answers `503 not_ready` (fail
//! closed).

pub mod parse;

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use hyper::body::Body;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request};
use serde::Serialize;
use tracing::debug;

use crate::clock::Clock;
use crate::core::identity::Pid;
use crate::core::snapshot::Snapshot;
use crate::core::time::LocalTime;
use crate::http::error::ApiError;
use crate::http::listener::{Listener, ListenerConfig, serve};
use crate::http::metrics::{Endpoint, Metrics, SnapshotGauges};
use crate::http::tls::Tls;
use crate::http::{Answer, error_answer, json, read_body_within, respond};
use crate::node::{Publication, Published};

/// Everything the check listener shares between connections.
#[derive(Debug)]
pub struct State {
    /// The cell the node publishes into.
    pub cell: Arc<Publication>,
    /// The counters behind `/metrics` (both listeners).
    pub metrics: Arc<Metrics>,
    config: ListenerConfig,
    source: String,
    log_key: RandomState,
    clock: Clock,
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
    /// The check listener over `cell`; `source` says where snapshots come
    /// from (for `/v1/status`); `clock` is "now" for checks without `at`.
    pub fn new(
        cell: Arc<Publication>,
        metrics: Arc<Metrics>,
        config: ListenerConfig,
        source: impl Into<String>,
        clock: Clock,
    ) -> State {
        State {
            cell,
            metrics,
            config,
            source: source.into(),
            log_key: RandomState::new(),
            clock,
        }
    }

    /// A check listener with a cell and metrics of its own, for serving a
    /// snapshot published by hand (tests, benches, the load tool) rather
    /// than by a node.
    pub fn detached(config: ListenerConfig, source: impl Into<String>, clock: Clock) -> State {
        let cell = Arc::new(Publication::new(clock.clone()));
        State::new(cell, Arc::new(Metrics::default()), config, source, clock)
    }

    /// The revision checks answer from (0 before anything is published).
    pub fn revision(&self) -> u64 {
        self.cell.revision()
    }

    /// The header names `/v1/authz` (and gRPC ext_authz) read.
    pub(crate) fn authz_headers(&self) -> &crate::http::listener::AuthzHeaders {
        &self.config.authz
    }

    /// The listener's limits.
    pub(crate) fn listener_config(&self) -> &ListenerConfig {
        &self.config
    }

    /// How long a check waits for a `min_revision` this instance has not
    /// reached.
    pub(crate) fn min_revision_wait(&self) -> std::time::Duration {
        self.config.min_revision_wait
    }

    /// "Now", for questions without an instant.
    pub(crate) fn now(&self) -> crate::core::time::Instant {
        self.clock.now()
    }

    /// The tag logs use for `pid`.
    pub fn tag(&self, pid: Pid) -> Tag {
        Tag(self.log_key.hash_one(pid.get()))
    }

    fn gauges(&self, p: Option<&Published>) -> SnapshotGauges {
        let sync = &self.cell.sync;
        SnapshotGauges {
            ready: p.is_some() && !self.cell.is_expired(),
            stale: sync.is_stale(),
            revision: p.map_or(0, |p| p.snapshot.revision()),
            age_seconds: p.map_or(0.0, |p| self.cell.age(p).as_secs_f64()),
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

/// Serves checks on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish (up to the configured grace) and returns.
pub async fn run(
    listener: impl Into<Listener>,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    run_tls(listener, state, None, shutdown).await
}

/// [`run`], over TLS when `tls` is given (a check listener reached from
/// another host, which a sidecar normally is not).
pub async fn run_tls(
    listener: impl Into<Listener>,
    state: Arc<State>,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let config = state.config.clone();
    let metrics = state.metrics.clone();
    serve(listener, &config, metrics, tls, shutdown, move |req| {
        let state = state.clone();
        async move { handle(&state, req).await }
    })
    .await
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
        // Envoy's HTTP ext_authz sends the original method and the original
        // path after its `path_prefix` (`POST /v1/authz/journal/123`):
        // every path below `/v1/authz` is the same question, whatever the
        // method, and its body is never read.
        p if p == "/v1/authz" || p.starts_with("/v1/authz/") => Endpoint::Authz,
        "/healthz" | "/readyz" | "/metrics" | "/v1/status" => Endpoint::Operations,
        _ => {
            return (
                Endpoint::Other,
                error_answer(&state.metrics, Endpoint::Other, &ApiError::not_found()),
            );
        }
    };
    let wanted = match endpoint {
        Endpoint::Operations => Method::GET,
        _ => Method::POST,
    };
    if endpoint != Endpoint::Authz && req.method() != wanted && !(wanted == Method::GET && req.method() == Method::HEAD)
    {
        let e = ApiError::method_not_allowed(if wanted == Method::GET { "GET" } else { "POST" });
        return (endpoint, error_answer(&state.metrics, endpoint, &e));
    }
    let answer = match endpoint {
        Endpoint::Operations => Ok(operations(state, req.uri().path())),
        Endpoint::Authz => read_your_writes(state, || authz(state, &req)).await,
        _ => {
            let declared = req.body().size_hint().upper();
            match read_body_within(req.into_body(), declared, state.config.body_read_timeout).await {
                Ok(body) => read_your_writes(state, || decision(state, endpoint, &body)).await,
                Err(e) => Err(e),
            }
        }
    }
    .unwrap_or_else(|e| error_answer(&state.metrics, endpoint, &e));
    (endpoint, answer)
}

/// Answers with `answer`; if the request asked for a revision this
/// instance has not published yet (`min_revision`), waits a little for it
/// and asks once more.
async fn read_your_writes(state: &State, answer: impl Fn() -> Result<Answer, ApiError>) -> Result<Answer, ApiError> {
    match answer() {
        Err(e) => match e.wait_for {
            Some(r) if state.cell.wait_for_revision(r, state.config.min_revision_wait).await => answer(),
            _ => Err(e),
        },
        ok => ok,
    }
}

/// Answers from the published snapshot, loaded once; `503` while there is
/// none or the instance is past `max_staleness` (fail closed).
fn from_snapshot(
    state: &State,
    answer: impl FnOnce(&Snapshot) -> Result<Answer, ApiError>,
) -> Result<Answer, ApiError> {
    if state.cell.is_expired() {
        return Err(ApiError::refused(state.cell.refusal()));
    }
    let published = state.cell.load();
    match published.as_deref() {
        Some(p) => answer(&p.snapshot),
        None => Err(ApiError::not_ready()),
    }
}

/// `/v1/check`, `/v1/check/batch`, `/v1/children`: one snapshot load each.
fn decision(state: &State, endpoint: Endpoint, body: &[u8]) -> Result<Answer, ApiError> {
    from_snapshot(state, |snap| decide_body(state, snap, endpoint, body))
}

fn decide_body(state: &State, snap: &Snapshot, endpoint: Endpoint, body: &[u8]) -> Result<Answer, ApiError> {
    let out = match endpoint {
        Endpoint::Check => {
            let (q, d, out) = parse::check(snap, body, state.clock.now())?;
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
            let b = parse::batch(snap, body, state.clock.now())?;
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
            let out = parse::children(snap, body, state.clock.now())?;
            debug!(revision = snap.revision(), "children");
            out
        }
    };
    Ok(json(out))
}

/// `GET /v1/authz`: for nginx `auth_request` and Envoy `ext_authz`.
fn authz<B>(state: &State, req: &Request<B>) -> Result<Answer, ApiError> {
    from_snapshot(state, |snap| authz_answer(state, snap, req))
}

fn authz_answer<B>(state: &State, snap: &Snapshot, req: &Request<B>) -> Result<Answer, ApiError> {
    let h = &state.config.authz;
    let get = |name: &HeaderName| req.headers().get(name).map(HeaderValue::as_bytes);
    parse::authz_min_revision(snap, req.headers().get("x-min-revision").map(HeaderValue::as_bytes))?;
    let q = parse::authz_query(
        get(&h.actor),
        get(&h.subject),
        get(&h.service),
        snap.tz(),
        state.clock.now(),
    )?;
    let d = crate::core::decide::decide(snap, &q);
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
    if let Some(until) = d.valid_until
        && let Ok(v) = HeaderValue::from_str(LocalTime::new(until, snap.tz()).as_str())
    {
        headers.insert("x-access-valid-until", v);
    }
    Ok(r)
}

fn operations(state: &State, path: &str) -> Answer {
    let published = state.cell.load();
    let p = published.as_deref();
    let ready = p.is_some() && !state.cell.is_expired();
    let failed = |e: ApiError| error_answer(&state.metrics, Endpoint::Operations, &e);
    match path {
        "/healthz" => respond(200, "text/plain", "ok\n"),
        "/readyz" => match p {
            Some(p) if ready => json(
                serde_json::to_vec(&Ready {
                    ready: true,
                    revision: p.snapshot.revision(),
                })
                .unwrap_or_default(),
            ),
            _ if state.cell.is_expired() => failed(ApiError::refused(state.cell.refusal())),
            _ => failed(ApiError::not_ready()),
        },
        "/metrics" => respond(200, "text/plain; version=0.0.4", state.metrics.render(state.gauges(p))),
        _ => json(serde_json::to_vec(&status(state, p, ready)).unwrap_or_default()),
    }
}

/// `/readyz` when ready.
#[derive(Debug, Serialize)]
struct Ready {
    ready: bool,
    revision: u64,
}

/// `/v1/status`.
#[derive(Debug, Serialize)]
struct Status<'a> {
    ready: bool,
    revision: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    loaded_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    age_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    persons: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    links: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rules: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    overlay: Option<usize>,
    source: &'a str,
    /// Kept at the top level for earlier clients; the same as `store.lag_seconds`.
    #[serde(skip_serializing_if = "Option::is_none")]
    lag_seconds: Option<Option<f64>>,
    store: StoreStatus,
}

/// `/v1/status`'s `store`: following the store.
#[derive(Debug, Serialize)]
struct StoreStatus {
    revision: u64,
    behind: u64,
    lag_seconds: Option<f64>,
    stale: bool,
    expired: bool,
    max_staleness_seconds: Option<f64>,
    errors: u64,
    folds: u64,
    checkpoints: u64,
    rebuilds: u64,
}

fn status<'a>(state: &'a State, p: Option<&Published>, ready: bool) -> Status<'a> {
    let sync = &state.cell.sync;
    let lag = sync.contact_age().map(|d| d.as_secs_f64());
    let store = StoreStatus {
        revision: sync.head(),
        behind: sync.head().saturating_sub(p.map_or(0, |p| p.snapshot.revision())),
        lag_seconds: lag,
        stale: sync.is_stale(),
        expired: state.cell.is_expired(),
        max_staleness_seconds: sync.max_staleness().map(|d| d.as_secs_f64()),
        errors: sync.errors.load(Relaxed),
        folds: sync.folds.load(Relaxed),
        checkpoints: sync.checkpoints.load(Relaxed),
        rebuilds: sync.rebuilds.load(Relaxed),
    };
    let s = p.map(|p| &p.snapshot);
    Status {
        ready,
        revision: s.map(|s| s.revision()),
        loaded_at: p.map(|p| p.loaded_at.to_string()),
        age_seconds: p.map(|p| state.cell.age(p).as_secs_f64()),
        persons: s.map(|s| s.people().len()),
        links: s.map(|s| s.people().links()),
        rules: s.map(|s| s.rules().len()),
        overlay: s.map(|s| s.overlay_len()),
        source: &state.source,
        lag_seconds: p.map(|_| lag),
        store,
    }
}
