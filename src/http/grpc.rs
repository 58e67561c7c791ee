//! Envoy's gRPC external authorization (SPEC §10):
//! `envoy.service.auth.v3.Authorization/Check` on `--grpc-addr`, with
//! `tonic` and the pre-compiled protos of `envoy-types`, beside the
//! standard `grpc.health.v1.Health`.
//!
//! The question is read as `GET /v1/authz` reads it: actor, subject and
//! service from the original request's headers (the configured names),
//! the service also from the route's `context_extensions["service"]`,
//! which wins (it is set in Envoy's configuration, not by the client).
//! One snapshot load per call and the same `decide`:
//!
//! - allow → `OK`, `ok_response` headers `x-access-reason`,
//!   `x-access-revision`, `x-access-valid-until` (overwriting any the client
//!   sent, so the upstream can trust them);
//! - deny → `PERMISSION_DENIED` with a `denied_response` of HTTP 403 and the
//!   same headers;
//! - bad input → `INVALID_ARGUMENT` with HTTP 400 and the error body the
//!   HTTP API would give (it names the field, never the value);
//! - not ready, or past `max_staleness` → the call fails with `UNAVAILABLE`,
//!   so Envoy with `failure_mode_allow: false` refuses: fail closed.
//!
//! The health service says `SERVING` exactly when `/readyz` would answer
//! 200. Metrics count calls under their own endpoint label, `grpc`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode,
};
use envoy_types::ext_authz::v3::{CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder};
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::core::decide::{Decision, decide};
use crate::core::snapshot::Snapshot;
use crate::core::time::LocalTime;
use crate::http::check::{State, parse};
use crate::http::error::{ApiError, ErrorCode};
use crate::http::metrics::Endpoint;

/// The names under which health is reported: the server as a whole and the
/// authorization service.
const AUTHORIZATION_SERVICE: &str = "envoy.service.auth.v3.Authorization";

/// The ext_authz service over the check listener's state.
#[derive(Debug, Clone)]
pub struct Authz {
    state: Arc<State>,
}

impl Authz {
    /// The service answering from `state`'s published snapshot.
    pub fn new(state: Arc<State>) -> Authz {
        Authz { state }
    }

    /// One call: the response, or the `UNAVAILABLE` failure.
    async fn answer(&self, req: &CheckRequest) -> Result<CheckResponse, Status> {
        let state = &self.state;
        let headers = Headers::of(req);
        let once = || -> Result<CheckResponse, ApiError> {
            if state.cell.is_expired() {
                return Err(ApiError::refused(state.cell.refusal()));
            }
            let published = state.cell.load();
            let Some(p) = published.as_deref() else {
                return Err(ApiError::not_ready());
            };
            respond(state, &p.snapshot, &headers)
        };
        let outcome = match once() {
            Err(e) => match e.wait_for {
                Some(r) if state.cell.wait_for_revision(r, state.min_revision_wait()).await => once(),
                _ => Err(e),
            },
            ok => ok,
        };
        match outcome {
            Ok(r) => Ok(r),
            Err(e) if e.code == ErrorCode::NotReady => {
                state.metrics.error(Endpoint::Grpc, e.code);
                Err(Status::unavailable(e.message.into_owned()))
            }
            Err(e) => {
                state.metrics.error(Endpoint::Grpc, e.code);
                debug!(code = e.code.as_str(), field = e.field.as_deref(), "grpc check refused");
                Ok(invalid(&e))
            }
        }
    }
}

#[tonic::async_trait]
impl Authorization for Authz {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let started = std::time::Instant::now();
        let answer = self.answer(request.get_ref()).await;
        self.state.metrics.request(Endpoint::Grpc, started.elapsed());
        answer.map(Response::new)
    }
}

/// The original request's headers and the route's context, borrowed from
/// the call.
struct Headers<'r> {
    map: Option<&'r HashMap<String, String>>,
    raw: Vec<(&'r str, &'r [u8])>,
    service: Option<&'r str>,
}

impl<'r> Headers<'r> {
    fn of(req: &'r CheckRequest) -> Headers<'r> {
        let attributes = req.attributes.as_ref();
        let http = attributes
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        // Envoy sends either the `headers` map or, with
        // `encode_raw_headers`, the `header_map` list.
        let raw = http
            .and_then(|h| h.header_map.as_ref())
            .map(|m| {
                m.headers
                    .iter()
                    .map(|h| {
                        let value = if h.raw_value.is_empty() {
                            h.value.as_bytes()
                        } else {
                            &h.raw_value[..]
                        };
                        (h.key.as_str(), value)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Headers {
            map: http.map(|h| &h.headers),
            raw,
            service: attributes
                .and_then(|a| a.context_extensions.get("service"))
                .map(String::as_str),
        }
    }

    /// A header by its (lower-case) name.
    fn get(&self, name: &str) -> Option<&'r [u8]> {
        self.map.and_then(|m| m.get(name)).map(String::as_bytes).or_else(|| {
            self.raw
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        })
    }
}

/// Decides the call's question on `snap`: an allow or a deny response, or
/// the error to refuse it with.
fn respond(state: &State, snap: &Snapshot, h: &Headers<'_>) -> Result<CheckResponse, ApiError> {
    let names = state.authz_headers();
    parse::authz_min_revision(snap, h.get("x-min-revision"))?;
    let service = h.service.map(str::as_bytes).or_else(|| h.get(names.service.as_str()));
    let q = parse::authz_query(
        h.get(names.actor.as_str()),
        h.get(names.subject.as_str()),
        service,
        snap.tz(),
        state.now(),
    )?;
    let d = decide(snap, &q);
    state.metrics.decision(Endpoint::Grpc, d.reason);
    debug!(
        actor = %state.tag(q.actor),
        subject = %state.tag(q.subject),
        reason = d.reason.as_str(),
        "grpc check"
    );
    Ok(decided(&d, snap))
}

/// The headers every answer carries: reason, revision, and until when it
/// holds (absent when nothing scheduled can change it).
fn access_headers(d: &Decision<'_>, snap: &Snapshot) -> Vec<(&'static str, String)> {
    let mut out = vec![
        ("x-access-reason", d.reason.as_str().to_owned()),
        ("x-access-revision", d.revision.to_string()),
    ];
    if let Some(until) = d.valid_until {
        out.push(("x-access-valid-until", LocalTime::new(until, snap.tz()).to_string()));
    }
    out
}

fn decided(d: &Decision<'_>, snap: &Snapshot) -> CheckResponse {
    let headers = access_headers(d, snap);
    // The client may have sent headers of these names: overwrite them.
    let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
    if d.allowed() {
        let mut ok = OkHttpResponseBuilder::new();
        for (k, v) in headers {
            ok.add_header(k, v, overwrite, false);
        }
        let mut r = CheckResponse::with_status(Status::ok(d.reason.as_str()));
        r.set_http_response(ok);
        r
    } else {
        let mut denied = DeniedHttpResponseBuilder::new();
        denied.set_http_status(HttpStatusCode::Forbidden);
        for (k, v) in headers {
            denied.add_header(k, v, overwrite, false);
        }
        let mut r = CheckResponse::with_status(Status::permission_denied(d.reason.as_str()));
        r.set_http_response(denied);
        r
    }
}

/// `INVALID_ARGUMENT` with the HTTP API's 400 body.
fn invalid(e: &ApiError) -> CheckResponse {
    let mut denied = DeniedHttpResponseBuilder::new();
    denied.set_http_status(HttpStatusCode::BadRequest);
    denied.add_header("content-type", "application/json", None, false);
    denied.set_body(String::from_utf8_lossy(&e.body()).into_owned());
    let mut r = CheckResponse::with_status(Status::invalid_argument(e.message.clone().into_owned()));
    r.set_http_response(denied);
    r
}

/// Where the gRPC server listens.
#[derive(Debug)]
pub enum GrpcListener {
    /// A TCP socket.
    Tcp(tokio::net::TcpListener),
    /// A Unix socket (the sidecar's natural transport).
    Unix(tokio::net::UnixListener),
}

/// Serves ext_authz and health on `listener` until `shutdown` resolves;
/// health follows readiness while it runs.
pub async fn run(
    listener: GrpcListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let following = tokio::spawn(follow_readiness(state.clone(), health));
    // A call (its message included) must finish within the listener's body
    // deadline, and a peer that stops answering keepalive pings is dropped.
    let config = state.listener_config();
    let router = tonic::transport::Server::builder()
        .timeout(config.body_read_timeout)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(config.write_timeout))
        .add_service(health_service)
        .add_service(AuthorizationServer::new(Authz::new(state)));
    let served = match listener {
        GrpcListener::Tcp(l) => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
            router.serve_with_incoming_shutdown(incoming, shutdown).await
        }
        GrpcListener::Unix(l) => {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(l);
            router.serve_with_incoming_shutdown(incoming, shutdown).await
        }
    };
    following.abort();
    served
}

/// Keeps the health service's answer equal to `/readyz`'s.
async fn follow_readiness(state: Arc<State>, health: tonic_health::server::HealthReporter) {
    let mut serving = None;
    loop {
        let ready = state.cell.current().is_some();
        if serving != Some(ready) {
            serving = Some(ready);
            let status = if ready {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            for name in ["", AUTHORIZATION_SERVICE] {
                health.set_service_status(name, status).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
