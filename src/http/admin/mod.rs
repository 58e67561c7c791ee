//! The admin listener (SPEC §5): the write path for care units, the contact
//! center and the population feed, and the read path for auditors.
//!
//! Every request needs a bearer token ([`auth`]); the role decides what it
//! may do:
//!
//! | route | registrar | unit | population | auditor | peer |
//! |---|---|---|---|---|---|
//! | `POST /v1/restrictions`, `/v1/grants`, `…/{id}/lift`, `…/{id}/confirm` | yes | own unit only | | | |
//! | `POST /v1/population` | | | yes | | |
//! | `GET /v1/subjects/{id}`, `GET /v1/audit?subject=`, `POST /v1/explain` | yes | | | yes | |
//! | `GET /v1/access-log`, `GET /v1/access-log/export` | | | | yes | |
//! | `GET /v1/snapshot` | | | | | yes |
//!
//! Every read of personal data (a subject, the audit trail, an explanation,
//! a snapshot file, the access log itself) is appended to the access log,
//! durably, before the data is shown (SPEC §8).
//!
//! This module routes and checks roles; [`validate`] turns bodies into store
//! requests, [`views`] turns stored records into answers. A write answers
//! `2xx` only after its commit is durable and the node has published it to
//! the check listener.

pub mod auth;
pub mod validate;
pub mod views;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response};
use jiff::tz::TimeZone;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tracing::{error, info};

use crate::actor::{Caller, Role};
use crate::clock::Clock;
use crate::core::decide::{Query, decide};
use crate::core::explain::Facts;
use crate::core::identity::Pid;
use crate::core::model::{RuleId, Service};
use crate::core::people::PersonRecord;
use crate::core::time::{self, Instant};
use crate::http::error::{ApiError, ErrorCode};
use crate::http::metrics::{Endpoint, Metrics};
use crate::http::tls::ClientCert;
use crate::http::{error_answer, read_body_within, respond};
use crate::ndjson;
use crate::node::Node;
use crate::store::{Access, AccessQuery, Family, IMPORT_BATCH, ImportMsg, StoreError, Subjects};
use auth::Tokens;
use validate::wrong_unit;
use views::{
    AccessEntryView, AccessLogView, AnswerView, AuditView, Created, ExplainView, ImportedView, SubjectView, Written,
};

/// The admin listener's shared state.
#[derive(Debug)]
pub struct Admin {
    pub(crate) node: Arc<Node>,
    tokens: Tokens,
    pub(crate) tz: TimeZone,
    metrics: Arc<Metrics>,
    pub(crate) clock: Clock,
    /// The console, if this instance serves one.
    pub(crate) console: Option<crate::http::console::Console>,
    /// A JSON body must arrive within this of its head.
    pub(crate) body_read_timeout: std::time::Duration,
    /// A population upload must arrive whole within this.
    import_timeout: std::time::Duration,
}

impl Admin {
    /// The admin API over `node`, accepting `tokens`, counting into
    /// `metrics`, with "now" from `clock`.
    pub fn new(
        node: Arc<Node>,
        tokens: Tokens,
        metrics: Arc<Metrics>,
        clock: Clock,
        limits: &crate::http::listener::ListenerConfig,
    ) -> Result<Admin, time::TimeError> {
        Ok(Admin {
            node,
            tokens,
            tz: time::stockholm()?,
            metrics,
            clock,
            console: None,
            body_read_timeout: limits.body_read_timeout,
            import_timeout: limits.import_timeout,
        })
    }

    /// With the console `console`.
    pub fn with_console(mut self, console: Option<crate::http::console::Console>) -> Admin {
        self.console = console;
        self
    }

    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }

    pub(crate) fn today(&self) -> jiff::civil::Date {
        time::local_date(self.now(), &self.tz)
    }
}

/// Admin answers: mostly whole JSON bodies, but a snapshot file is streamed.
pub type AdminBody = BoxBody<Bytes, std::io::Error>;
/// An admin answer.
pub type AdminAnswer = Response<AdminBody>;

pub(crate) fn whole(r: crate::http::Answer) -> AdminAnswer {
    r.map(|b| b.map_err(|never| match never {}).boxed())
}

fn json_answer(status: u16, v: &impl Serialize) -> AdminAnswer {
    whole(respond(
        status,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    ))
}

fn forbidden(role: Role) -> ApiError {
    ApiError::new(
        ErrorCode::Forbidden,
        format!("the `{}` role may not do this", role.as_str()),
        None,
    )
}

fn unknown_person() -> ApiError {
    ApiError::new(
        ErrorCode::Unauthorized,
        "the client certificate names no one this service knows (`identities` in the tokens file)",
        None,
    )
}

fn unauthorized() -> ApiError {
    ApiError::new(
        ErrorCode::Unauthorized,
        "a valid `Authorization: Bearer` token is required",
        None,
    )
}

fn no_such(family: Family) -> ApiError {
    let what = match family {
        Family::Restriction => "restriction",
        Family::Grant => "grant",
    };
    ApiError::new(ErrorCode::NotFound, format!("no such {what}"), Some("id"))
}

/// The one place a store error becomes an answer. Failures of the store are
/// logged here (the client only learns that nothing was written).
pub(crate) fn store_error(e: StoreError, family: Family) -> ApiError {
    let what = match family {
        Family::Restriction => "restriction",
        Family::Grant => "grant",
    };
    match e {
        StoreError::NotFound => no_such(family),
        StoreError::WrongUnit => wrong_unit("only the unit that issued it can do this"),
        StoreError::AlreadyLifted => {
            ApiError::new(ErrorCode::AlreadyLifted, format!("the {what} is already lifted"), None)
        }
        StoreError::NotPending => ApiError::new(
            ErrorCode::AlreadyConfirmed,
            "it is not waiting for confirmation: it was not urgent, or its form is already recorded",
            None,
        ),
        StoreError::NotGuardian => ApiError::semantic("guardian", "is not a registered guardian of the subject"),
        StoreError::TooManyRules => ApiError::semantic(
            "subject",
            &format!(
                "already has {} restrictions and grants in force or pending, the most one person may have; \
                 lift one that is no longer needed first",
                crate::store::MAX_RULES_IN_FORCE
            ),
        ),
        StoreError::Aborted => ApiError::invalid_body("the request was abandoned; nothing was written"),
        StoreError::FutureRevision(head) => ApiError::semantic(
            "as_of_revision",
            &format!("is after the store's newest revision, {head}"),
        ),
        StoreError::DiskFull(why) => {
            error!(error = %why, "the store's disk is full; nothing was written");
            ApiError::new(
                ErrorCode::NotReady,
                "the store's disk is full; nothing was written. Checks go on from memory",
                None,
            )
        }
        StoreError::Unavailable(why) => {
            error!(error = %why, "store unavailable; nothing was written");
            ApiError::new(
                ErrorCode::NotReady,
                "the store is unavailable; nothing was written",
                None,
            )
        }
        other @ (StoreError::Corrupt(_) | StoreError::Schema(_, _)) => {
            error!(error = %other, "store failure");
            ApiError::internal("the store failed; nothing was written")
        }
    }
}

/// The answer while the store is not open yet.
pub fn not_ready() -> AdminAnswer {
    let e = ApiError::new(ErrorCode::NotReady, "the store is not open yet", None);
    whole(crate::http::error::render(&e))
}

/// Answers one admin request.
pub async fn handle(admin: &Admin, req: Request<Incoming>) -> AdminAnswer {
    let started = std::time::Instant::now();
    let path = req.uri().path();
    if path == "/console" || path.starts_with("/console/") {
        let answer = crate::http::console::handle(admin, req).await;
        admin.metrics.request(Endpoint::Admin, started.elapsed());
        return answer;
    }
    let answer = match route(admin, req).await {
        Ok(a) => a,
        Err(e) => whole(error_answer(&admin.metrics, Endpoint::Admin, &e)),
    };
    admin.metrics.request(Endpoint::Admin, started.elapsed());
    answer
}

async fn route(admin: &Admin, req: Request<Incoming>) -> Result<AdminAnswer, ApiError> {
    // A person is named by their verified client certificate; a system by
    // its bearer token.
    let caller = match req.extensions().get::<ClientCert>() {
        Some(ClientCert(Some(hsa_id))) => admin.tokens.identity(hsa_id).ok_or_else(unknown_person)?.clone(),
        Some(ClientCert(None)) => return Err(unknown_person()),
        None => admin
            .tokens
            .authenticate(req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes))
            .ok_or_else(unauthorized)?
            .clone(),
    };
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let reading = Reading {
        caller: &caller,
        purpose: purpose(&req)?,
    };
    let method = req.method().clone();
    let allow = |m: Method| -> Result<(), ApiError> {
        if method == m || (m == Method::GET && method == Method::HEAD) {
            Ok(())
        } else {
            Err(ApiError::method_not_allowed(if m == Method::GET {
                "GET"
            } else {
                "POST"
            }))
        }
    };
    let writer = |c: &Caller| match c.role {
        Role::Registrar | Role::Unit => Ok(()),
        r => Err(forbidden(r)),
    };
    let reader = |c: &Caller| match c.role {
        Role::Registrar | Role::Auditor => Ok(()),
        r => Err(forbidden(r)),
    };
    let auditor = |c: &Caller| match c.role {
        Role::Auditor => Ok(()),
        r => Err(forbidden(r)),
    };
    match parts.as_slice() {
        ["v1", "restrictions"] | ["v1", "grants"] => {
            allow(Method::POST)?;
            writer(&caller)?;
            let family = if parts[1] == "grants" {
                Family::Grant
            } else {
                Family::Restriction
            };
            let body = read_json(admin, req).await?;
            create(admin, &caller, family, &body).await
        }
        [
            "v1",
            kind @ ("restrictions" | "grants"),
            id,
            action @ ("lift" | "confirm"),
        ] => {
            allow(Method::POST)?;
            writer(&caller)?;
            let family = if *kind == "grants" {
                Family::Grant
            } else {
                Family::Restriction
            };
            if *action == "confirm" && family == Family::Grant {
                return Err(ApiError::not_found());
            }
            let id = rule_id(id, family)?;
            let body = read_json(admin, req).await?;
            if *action == "lift" {
                lift(admin, &caller, family, id, &body).await
            } else {
                confirm(admin, &caller, id, &body).await
            }
        }
        ["v1", "population"] => {
            allow(Method::POST)?;
            if caller.role != Role::Population {
                return Err(forbidden(caller.role));
            }
            population(admin, &caller, req).await
        }
        ["v1", "subjects", rest @ ..] if rest.len() <= 1 => {
            allow(Method::GET)?;
            reader(&caller)?;
            let subject = subject_param(admin, &req, rest.first().copied())?;
            subject_view(admin, &reading, subject).await
        }
        ["v1", "audit"] => {
            allow(Method::GET)?;
            reader(&caller)?;
            let query = req.uri().query().unwrap_or("");
            let from_query = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("subject="))
                .map(percent_decoded);
            let subject = subject_param(admin, &req, from_query.as_deref())?;
            audit_view(admin, &reading, subject).await
        }
        ["v1", "access-log"] => {
            allow(Method::GET)?;
            auditor(&caller)?;
            let query = AccessParams::of(req.uri().query().unwrap_or(""), admin)?;
            let subject = match query.subject.as_deref().or_else(|| header_text(&req, "x-subject-id")) {
                Some(s) => Some(Pid::parse(s.trim(), admin.today()).map_err(|e| ApiError::identity("subject", e))?),
                None => None,
            };
            access_log_view(admin, &reading, subject, query).await
        }
        ["v1", "access-log", "export"] => {
            allow(Method::GET)?;
            auditor(&caller)?;
            let query = AccessParams::of(req.uri().query().unwrap_or(""), admin)?;
            access_log_export(admin, &reading, query).await
        }
        ["v1", "explain"] => {
            allow(Method::POST)?;
            reader(&caller)?;
            let body = read_json(admin, req).await?;
            explain(admin, &reading, &body).await
        }
        ["v1", "snapshot"] => {
            allow(Method::GET)?;
            if caller.role != Role::Peer {
                return Err(forbidden(caller.role));
            }
            snapshot_file(admin, &reading).await
        }
        _ => Err(ApiError::not_found()),
    }
}

/// A query parameter's value with `%XX` escapes decoded. A `+` stays a
/// `+`: in a 10-digit personnummer it is the separator of someone who has
/// turned 100, and a space is never part of a number. Anything malformed is
/// kept as it is and then refused as an identity number.
fn percent_decoded(v: &str) -> String {
    let b = v.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An id in a path: digits only; anything else is no such rule.
fn rule_id(s: &str, family: Family) -> Result<RuleId, ApiError> {
    s.parse::<u64>()
        .ok()
        .filter(|_| s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
        .map(RuleId)
        .ok_or_else(|| no_such(family))
}

/// The subject of a read: from the path or query (SPEC §5) or, to keep
/// numbers out of URLs and access logs, from the `x-subject-id` header.
fn subject_param<B>(admin: &Admin, req: &Request<B>, from_url: Option<&str>) -> Result<Pid, ApiError> {
    let header = req
        .headers()
        .get("x-subject-id")
        .map(|v| {
            std::str::from_utf8(v.as_bytes()).map_err(|_| ApiError::invalid_request("subject", "header must be text"))
        })
        .transpose()?;
    let s = from_url
        .filter(|s| !s.is_empty())
        .or(header)
        .ok_or_else(|| ApiError::invalid_request("subject", "is required"))?;
    Pid::parse(s.trim(), admin.today()).map_err(|e| ApiError::identity("subject", e))
}

/// Reads a JSON object body of at most 64 KiB.
async fn read_json(admin: &Admin, req: Request<Incoming>) -> Result<Map<String, Value>, ApiError> {
    let declared = req.body().size_hint().upper();
    let body = read_body_within(req.into_body(), declared, admin.body_read_timeout).await?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::invalid_body("the body must be a JSON object")),
        Err(_) => Err(ApiError::invalid_json()),
    }
}

/// Waits until checks on this node answer from `revision`: a `2xx` means
/// visible. If it does not happen in time the write is still committed,
/// but it answers `503` and the node refuses checks until it has caught up
/// (a portal then fails closed instead of trusting an answer that may miss
/// the write).
async fn visible(admin: &Admin, revision: u64) -> Result<(), ApiError> {
    visible_within(admin, revision, admin.node.visible_within()).await
}

/// A population import may rebuild the whole snapshot before it is
/// visible (seconds at national scale): it waits at least this long.
const IMPORT_VISIBLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(120);

/// [`visible`] with a deadline of its own.
async fn visible_within(admin: &Admin, revision: u64, within: std::time::Duration) -> Result<(), ApiError> {
    if admin.node.wait_applied_within(revision, within).await {
        return Ok(());
    }
    let within = within.as_secs_f64();
    error!(
        revision,
        within_seconds = within,
        "a committed write is not visible to checks in time: refusing checks until it is"
    );
    Err(ApiError::new(
        ErrorCode::NotReady,
        format!(
            "the write was committed as revision {revision} but is not visible to checks within {within} s; \
             this instance answers 503 to checks until it is. Do not send it again: read it back first"
        ),
        None,
    ))
}

/// The instant the subject attains the own-journal age, from the stored
/// birth date or else the number's: where a grant ends.
async fn attains_16(admin: &Admin, subject: Pid) -> Result<Option<Instant>, ApiError> {
    let stored = admin
        .node
        .store()
        .person(subject)
        .await
        .map_err(|e| store_error(e, Family::Grant))?;
    let birth = stored
        .and_then(|p| p.record.birth_date)
        .or_else(|| subject.birth_date());
    let s = admin.node.settings();
    Ok(birth.and_then(|b| time::attains_age(b, s.own_journal_age, s.leap_day, &admin.tz)))
}

/// A created rule: its revision (and id), whether it is urgent, and when
/// it ends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CreatedRule {
    pub revision: u64,
    pub urgent: bool,
    pub valid_until: Option<Instant>,
}

/// The one way a restriction or grant is created, for the API and the
/// console: validated, capped, committed (with its confirmation e-mail,
/// if any), and visible to checks before it returns.
pub(crate) async fn create_rule(
    admin: &Admin,
    caller: &Caller,
    family: Family,
    body: &Map<String, Value>,
    mail: Option<crate::store::MailDraft>,
) -> Result<CreatedRule, ApiError> {
    let new = prepare_rule(admin, caller, family, body).await?;
    let (kind, urgent, valid_until) = (new.rule.kind, new.meta.urgent, new.rule.valid_until);
    let require_guardian = new.rule.guardian.is_some();
    let committed = admin
        .node
        .store()
        .create_rule_mailing(new, require_guardian, caller, mail)
        .await
        .map_err(|e| store_error(e, family))?;
    visible(admin, committed.revision).await?;
    info!(
        action = crate::store::create_action(kind),
        kind = kind.as_str(),
        revision = committed.revision,
        by = %caller.name,
        urgent,
        "write committed"
    );
    Ok(CreatedRule {
        revision: committed.revision,
        urgent,
        valid_until,
    })
}

/// A new rule from `body`, validated and (a grant) capped at the subject's
/// 16th birthday, not written: what [`create_rule`] writes, and what the
/// console's preview shows.
pub(crate) async fn prepare_rule(
    admin: &Admin,
    caller: &Caller,
    family: Family,
    body: &Map<String, Value>,
) -> Result<crate::store::NewRule, ApiError> {
    let mut new = validate::new_rule(body, caller, family, admin.now(), &admin.tz)?;
    if new.rule.kind.is_grant() {
        let sixteen = attains_16(admin, new.rule.subject).await?;
        validate::cap_grant(&mut new, sixteen)?;
    }
    Ok(new)
}

async fn create(
    admin: &Admin,
    caller: &Caller,
    family: Family,
    body: &Map<String, Value>,
) -> Result<AdminAnswer, ApiError> {
    let c = create_rule(admin, caller, family, body, None).await?;
    Ok(json_answer(
        201,
        &Created::new(c.revision, c.urgent, c.valid_until, &admin.tz),
    ))
}

/// The one way a rule is lifted, for the API and the console.
pub(crate) async fn lift_rule(
    admin: &Admin,
    caller: &Caller,
    family: Family,
    id: RuleId,
    body: &Map<String, Value>,
    mail: Option<crate::store::MailDraft>,
) -> Result<u64, ApiError> {
    let req = validate::lift_request(body, caller, family)?;
    let committed = admin
        .node
        .store()
        .lift_mailing(id, req, caller, mail)
        .await
        .map_err(|e| store_error(e, family))?;
    visible(admin, committed.revision).await?;
    info!(action = "lift", revision = committed.revision, by = %caller.name, "write committed");
    Ok(committed.revision)
}

async fn lift(
    admin: &Admin,
    caller: &Caller,
    family: Family,
    id: RuleId,
    body: &Map<String, Value>,
) -> Result<AdminAnswer, ApiError> {
    let revision = lift_rule(admin, caller, family, id, body, None).await?;
    Ok(json_answer(200, &Written { revision }))
}

/// The one way an urgent restriction's signed form is recorded, for the
/// API and the console.
pub(crate) async fn confirm_rule(
    admin: &Admin,
    caller: &Caller,
    id: RuleId,
    body: &Map<String, Value>,
    mail: Option<crate::store::MailDraft>,
) -> Result<u64, ApiError> {
    let req = validate::confirm_request(body, caller)?;
    let committed = admin
        .node
        .store()
        .confirm_mailing(id, req, caller, mail)
        .await
        .map_err(|e| store_error(e, Family::Restriction))?;
    visible(admin, committed.revision).await?;
    info!(action = "confirm", revision = committed.revision, by = %caller.name, "write committed");
    Ok(committed.revision)
}

async fn confirm(
    admin: &Admin,
    caller: &Caller,
    id: RuleId,
    body: &Map<String, Value>,
) -> Result<AdminAnswer, ApiError> {
    let revision = confirm_rule(admin, caller, id, body, None).await?;
    Ok(json_answer(200, &Written { revision }))
}

/// `POST /v1/population`: NDJSON streamed straight into one transaction.
/// Lines are parsed as they arrive and sent on in batches; the first bad
/// line abandons the transaction, so nothing of the import is applied.
async fn population(admin: &Admin, caller: &Caller, req: Request<Incoming>) -> Result<AdminAnswer, ApiError> {
    let started = std::time::Instant::now();
    let (tx, rx) = mpsc::channel::<ImportMsg>(4);
    let store = admin.node.store().clone();
    let by = caller.clone();
    let import = tokio::spawn(async move { store.import(rx, &by).await });
    let mut reader = ndjson::Reader::new(admin.today());
    let mut body = req.into_body();
    let mut batch: Vec<PersonRecord> = Vec::with_capacity(IMPORT_BATCH);
    let feed = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| ApiError::invalid_body("the body could not be read"))?;
            let Ok(data) = frame.into_data() else { continue };
            reader.feed(&data, &mut batch)?;
            if batch.len() >= IMPORT_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(IMPORT_BATCH));
                if tx.send(ImportMsg::Batch(full)).await.is_err() {
                    // The store gave up; its error is reported below.
                    return Ok(());
                }
            }
        }
        reader.finish(&mut batch)?;
        if !batch.is_empty() {
            let _ = tx.send(ImportMsg::Batch(std::mem::take(&mut batch))).await;
        }
        let _ = tx.send(ImportMsg::End).await;
        Ok(())
    };
    // A feed that stalls for good is cut off whole: nothing is applied.
    let fed: Result<(), ApiError> = tokio::time::timeout(admin.import_timeout, feed)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the population did not arrive within {} s; nothing was applied",
                    admin.import_timeout.as_secs_f64()
                ),
                None,
            ))
        });
    // A bad line: dropping the sender without `End` rolls the import back.
    drop(tx);
    let outcome = import.await.map_err(|e| {
        error!(error = %e, "the import task failed; nothing was written");
        ApiError::internal("the import failed; nothing was written")
    })?;
    fed?;
    let imported = outcome.map_err(|e| store_error(e, Family::Restriction))?;
    let within = admin.node.visible_within().max(IMPORT_VISIBLE_WITHIN);
    visible_within(admin, imported.revision, within).await?;
    info!(
        action = "population",
        revision = imported.revision,
        upserted = imported.upserted,
        changed = imported.changed,
        seconds = started.elapsed().as_secs_f64(),
        by = %caller.name,
        "write committed"
    );
    Ok(json_answer(200, &ImportedView::from(imported)))
}

/// `GET /v1/subjects/{id}`: the person, their guardians, every restriction
/// and grant, and the answer each guardian (and the subject) gets now.
async fn subject_view(admin: &Admin, reading: &Reading<'_>, subject: Pid) -> Result<AdminAnswer, ApiError> {
    let store = admin.node.store();
    let person = store
        .person(subject)
        .await
        .map_err(|e| store_error(e, Family::Restriction))?;
    // The view shows the subject and their guardians.
    let mut shown = vec![subject];
    shown.extend(person.iter().flat_map(|p| p.record.guardians.iter().copied()));
    reading
        .log(admin, "subject_view", Subjects::Some(&shown), json!({}))
        .await?;
    let rules = store
        .rules_of(subject)
        .await
        .map_err(|e| store_error(e, Family::Restriction))?;
    let at = admin.now();
    let published = admin.node.publication().current();
    let answers = published.as_deref().map(|p| {
        let snap = &p.snapshot;
        let mut actors: Vec<Pid> = snap.people().guardians_of(subject).collect();
        actors.push(subject);
        let mut out = Vec::new();
        for actor in actors {
            for service in [Service::Journal, Service::Eservices] {
                let q = Query {
                    actor,
                    subject,
                    service,
                    at,
                };
                out.push(AnswerView::new(&decide(snap, &q), actor, service, at, snap.tz()));
            }
        }
        out
    });
    let revision = published.as_deref().map(|p| p.snapshot.revision());
    let view = SubjectView::new(subject, person.as_ref(), &rules, answers, revision, at, &admin.tz);
    Ok(json_answer(200, &view))
}

/// `POST /v1/explain`: why a question got (or gets) its answer, from the
/// facts as they stood at `as_of_revision` (today's when left out).
async fn explain(admin: &Admin, reading: &Reading<'_>, body: &Map<String, Value>) -> Result<AdminAnswer, ApiError> {
    let req = validate::explain_request(body, admin.now(), &admin.tz)?;
    let q = req.query;
    let detail = json!({"service": q.service.as_str(), "at": q.at.to_timestamp().to_string(), "as_of_revision": req.as_of_revision});
    reading
        .log(admin, "explain", Subjects::Some(&[q.subject, q.actor]), detail)
        .await?;
    let (revision, records, rules) = admin
        .node
        .store()
        .facts(q.subject, q.actor, req.as_of_revision)
        .await
        .map_err(|e| store_error(e, Family::Restriction))?;
    let facts = Facts {
        revision,
        settings: admin.node.settings().clone(),
        records,
        rules,
    };
    let explanation = crate::core::explain::explain(&facts, &q).map_err(|e| {
        error!(error = %e, "cannot build the facts of an explanation");
        ApiError::internal("the stored facts could not be put together")
    })?;
    info!(revision, as_of = req.as_of_revision.is_some(), "explained");
    Ok(json_answer(200, &ExplainView::new(&explanation, req.as_of_revision)))
}

/// `GET /v1/audit?subject=`: every write concerning the subject.
async fn audit_view(admin: &Admin, reading: &Reading<'_>, subject: Pid) -> Result<AdminAnswer, ApiError> {
    reading
        .log(admin, "audit_view", Subjects::Some(&[subject]), json!({}))
        .await?;
    let entries = admin
        .node
        .store()
        .audit_of(subject)
        .await
        .map_err(|e| store_error(e, Family::Restriction))?;
    Ok(json_answer(200, &AuditView::new(subject, &entries, &admin.tz)))
}

/// Who is reading personal data, and why: what every read leaves in the
/// access log.
pub(crate) struct Reading<'a> {
    pub caller: &'a Caller,
    pub purpose: Option<String>,
}

impl Reading<'_> {
    /// Appends the read to the access log, durably, before anything is
    /// shown; a read that cannot be logged is refused.
    pub(crate) async fn log(
        &self,
        admin: &Admin,
        action: &'static str,
        subjects: Subjects<'_>,
        detail: Value,
    ) -> Result<(), ApiError> {
        let access = Access {
            by: self.caller,
            action,
            subjects,
            purpose: self.purpose.as_deref(),
            detail,
        };
        match admin.node.store().log_access(access).await {
            Ok(_) => Ok(()),
            Err(e) => {
                error!(error = %e, action, "cannot write the access log; the read is refused");
                Err(ApiError::new(
                    ErrorCode::NotReady,
                    "the access log cannot be written; nothing is shown",
                    None,
                ))
            }
        }
    }
}

/// The purpose of a read (`x-purpose`): free text, at most 200 characters.
fn purpose<B>(req: &Request<B>) -> Result<Option<String>, ApiError> {
    let Some(v) = req.headers().get("x-purpose") else {
        return Ok(None);
    };
    let text = std::str::from_utf8(v.as_bytes())
        .map_err(|_| ApiError::invalid_request("purpose", "the `x-purpose` header must be UTF-8 text"))?
        .trim();
    if text.chars().count() > 200 {
        return Err(ApiError::invalid_request("purpose", "must be at most 200 characters"));
    }
    Ok((!text.is_empty()).then(|| text.to_owned()))
}

fn header_text<'r, B>(req: &'r Request<B>, name: &str) -> Option<&'r str> {
    req.headers()
        .get(name)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
}

/// The access log's query parameters: `from` and `to` (RFC 3339 or a
/// date), `after` (an entry number, for the next page), `limit`, `subject`.
struct AccessParams {
    from: Option<Instant>,
    to: Option<Instant>,
    after: u64,
    limit: u64,
    subject: Option<String>,
}

/// Most entries one `GET /v1/access-log` returns.
const MAX_ACCESS_PAGE: u64 = 10_000;

impl AccessParams {
    fn of(query: &str, admin: &Admin) -> Result<AccessParams, ApiError> {
        let mut p = AccessParams {
            from: None,
            to: None,
            after: 0,
            limit: 1000,
            subject: None,
        };
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let v = percent_decoded(v);
            let instant =
                |field: &'static str| time::parse_instant(&v, &admin.tz).map_err(|e| ApiError::invalid_time(field, e));
            let number = |field: &'static str| {
                v.parse::<u64>()
                    .map_err(|_| ApiError::invalid_request(field, "must be a non-negative integer"))
            };
            match k {
                "from" => p.from = Some(instant("from")?),
                "to" => p.to = Some(instant("to")?),
                "after" => p.after = number("after")?,
                "limit" => p.limit = number("limit")?.clamp(1, MAX_ACCESS_PAGE),
                "subject" => p.subject = Some(v),
                _ => {
                    return Err(ApiError::invalid_request(
                        "query",
                        "knows `from`, `to`, `after`, `limit` and `subject`",
                    ));
                }
            }
        }
        Ok(p)
    }

    fn query(&self, subject: Option<Pid>) -> AccessQuery {
        AccessQuery {
            subject,
            from: self.from.unwrap_or(Instant::from_nanos(i64::MIN)),
            to: self.to.unwrap_or(Instant::MAX),
            after: self.after,
            limit: self.limit,
        }
    }
}

/// `GET /v1/access-log`: a subject's (`x-subject-id`) or a time range's
/// reads, oldest first, a page at a time (`next` is the `after` of the
/// next page).
async fn access_log_view(
    admin: &Admin,
    reading: &Reading<'_>,
    subject: Option<Pid>,
    params: AccessParams,
) -> Result<AdminAnswer, ApiError> {
    let shown: Vec<Pid> = subject.into_iter().collect();
    let detail = json!({"from": params.from.map(|f| f.to_timestamp().to_string()), "to": params.to.map(|t| t.to_timestamp().to_string())});
    reading
        .log(admin, "access_log_view", Subjects::Some(&shown), detail)
        .await?;
    let query = params.query(subject);
    let entries = admin
        .node
        .store()
        .access_log(query)
        .await
        .map_err(|e| store_error(e, Family::Restriction))?;
    let next = (entries.len() as u64 == query.limit)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(json_answer(200, &AccessLogView::new(&entries, next, &admin.tz)))
}

/// `GET /v1/access-log/export?from=&to=`: every read in the range as NDJSON,
/// streamed page by page (a patient's log extract or the region's review).
async fn access_log_export(
    admin: &Admin,
    reading: &Reading<'_>,
    params: AccessParams,
) -> Result<AdminAnswer, ApiError> {
    let (Some(from), Some(to)) = (params.from, params.to) else {
        return Err(ApiError::invalid_request(
            "from",
            "`from` and `to` are required for an export",
        ));
    };
    let detail = json!({"from": from.to_timestamp().to_string(), "to": to.to_timestamp().to_string()});
    reading.log(admin, "access_log_export", Subjects::None, detail).await?;
    let store = admin.node.store().clone();
    let tz = admin.tz.clone();
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut after = 0;
        loop {
            let page = AccessQuery {
                subject: None,
                from,
                to,
                after,
                limit: MAX_ACCESS_PAGE,
            };
            let entries = match store.access_log(page).await {
                Ok(e) => e,
                Err(e) => {
                    error!(error = %e, "the access-log export failed part way");
                    let _ = tx.send(Err(std::io::Error::other("the export failed"))).await;
                    return;
                }
            };
            let mut out = Vec::new();
            for e in &entries {
                if serde_json::to_writer(&mut out, &AccessEntryView::new(e, &tz)).is_ok() {
                    out.push(b'\n');
                }
            }
            if !out.is_empty() && tx.send(Ok(Frame::data(Bytes::from(out)))).await.is_err() {
                return;
            }
            match entries.last() {
                Some(last) if entries.len() as u64 == MAX_ACCESS_PAGE => after = last.id,
                _ => return,
            }
        }
    });
    let frames = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// `GET /v1/snapshot`: this node's newest snapshot file, for a peer's
/// bootstrap, streamed. A checkpoint renamed over the file meanwhile does
/// not disturb it: the open file keeps the old one.
async fn snapshot_file(admin: &Admin, reading: &Reading<'_>) -> Result<AdminAnswer, ApiError> {
    let unreadable = |_| ApiError::internal("cannot read the snapshot file");
    let path = admin
        .node
        .snapshot_file()
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "this instance has no snapshot file yet", None))?;
    reading
        .log(admin, "snapshot_download", Subjects::Everyone, json!({}))
        .await?;
    let file = tokio::fs::File::open(&path).await.map_err(unreadable)?;
    let len = file.metadata().await.map_err(unreadable)?.len();
    let frames = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).map(|chunk| chunk.map(Frame::data));
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::percent_decoded;

    #[test]
    fn query_values_are_decoded_but_a_plus_stays() {
        assert_eq!(percent_decoded("20150916%2D2390"), "20150916-2390");
        assert_eq!(percent_decoded("150916%2B2390"), "150916+2390");
        assert_eq!(percent_decoded("150916+2390"), "150916+2390");
        assert_eq!(percent_decoded("1509%"), "1509%");
        assert_eq!(percent_decoded("1509%zz16"), "1509%zz16");
    }
}
