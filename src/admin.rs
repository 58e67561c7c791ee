//! The admin listener (SPEC §5): the write path for care units, the contact
//! center and the population feed, and the read path for auditors.
//!
//! Every request needs a bearer token ([`crate::auth`]); the role decides
//! what it may do:
//!
//! | route | registrar | unit | population | auditor | peer |
//! |---|---|---|---|---|---|
//! | `POST /v1/restrictions`, `/v1/grants`, `…/{id}/lift`, `…/{id}/confirm` | yes | own unit only | | | |
//! | `POST /v1/population` | | | yes | | |
//! | `GET /v1/subjects/{id}`, `GET /v1/audit?subject=` | yes | | | yes | |
//! | `GET /v1/snapshot` | | | | | yes |
//!
//! A write answers `2xx` only after its commit is durable and the node has
//! published it to the check listener. Bodies are validated the way a
//! careful registrar would: required fields, formats, dates that make sense,
//! unknown fields refused (a misspelt `valid_until` must not mean "for
//! ever"); errors name the field and never repeat a value.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use http_body_util::StreamBody;
use http_body_util::combinators::BoxBody;
use hyper::body::Frame;
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response};
use jiff::tz::TimeZone;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::api::ApiError;
use crate::auth::Tokens;
use crate::decide::{Query, decide};
use crate::identity::Pid;
use crate::metrics::Endpoint;
use crate::model::{HsaId, Rule, RuleId, RuleKind, Service, Services};
use crate::ndjson;
use crate::node::Node;
use crate::people::PersonRecord;
use crate::server::respond;
use crate::store::{
    AuditEntry, Caller, ConfirmRequest, Family, IMPORT_BATCH, ImportMsg, LiftRequest, NewRule, Role, RuleMeta,
    StoreError, StoredRule,
};
use crate::time::{self, Instant, LocalTime};
use crate::wire::DecisionBody;

/// Longest free-text field (`basis`).
const MAX_TEXT: usize = 4000;
/// Longest short field (names, references, e-mail).
const MAX_SHORT: usize = 200;

/// The admin listener's shared state.
#[derive(Debug)]
pub struct Admin {
    node: Arc<Node>,
    tokens: Tokens,
    tz: TimeZone,
    /// How long a write waits to be visible to checks before answering
    /// anyway (it is committed either way).
    visible_within: Duration,
}

impl Admin {
    /// The admin API over `node`, accepting `tokens`.
    pub fn new(node: Arc<Node>, tokens: Tokens) -> Result<Admin, crate::time::TimeError> {
        Ok(Admin {
            node,
            tokens,
            tz: time::stockholm()?,
            visible_within: Duration::from_secs(10),
        })
    }
}

/// Admin answers: mostly whole JSON bodies, but a snapshot file is streamed.
pub type AdminBody = BoxBody<Bytes, std::io::Error>;
/// An admin answer.
pub type AdminAnswer = Response<AdminBody>;

fn whole(r: crate::server::Answer) -> AdminAnswer {
    r.map(|b| b.map_err(|never| match never {}).boxed())
}

fn json_answer(status: u16, v: &Value) -> AdminAnswer {
    whole(respond(
        status,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    ))
}

fn forbidden(role: Role) -> ApiError {
    ApiError::new(
        403,
        "forbidden",
        format!("the `{}` role may not do this", role.as_str()),
        None,
    )
}

fn unauthorized() -> ApiError {
    ApiError::new(
        401,
        "unauthorized",
        "a valid `Authorization: Bearer` token is required",
        None,
    )
}

fn wrong_unit(what: &'static str) -> ApiError {
    ApiError::new(403, "wrong_unit", what, Some("issuing_unit"))
}

fn semantic(field: &'static str, what: &str) -> ApiError {
    ApiError {
        status: 422,
        ..ApiError::invalid_request(field, what)
    }
}

/// The one place a store error becomes an answer. Failures of the store are
/// logged here (the client only learns that nothing was written).
fn store_error(e: StoreError, family: Family) -> ApiError {
    let what = match family {
        Family::Restriction => "restriction",
        Family::Grant => "grant",
    };
    match e {
        StoreError::NotFound => ApiError::new(404, "not_found", format!("no such {what}"), Some("id")),
        StoreError::WrongUnit => wrong_unit("only the unit that issued it can do this"),
        StoreError::AlreadyLifted => {
            ApiError::new(409, "already_lifted", format!("the {what} is already lifted"), None)
        }
        StoreError::NotPending => ApiError::new(
            409,
            "already_confirmed",
            "it is not waiting for confirmation: it was not urgent, or its form is already recorded",
            None,
        ),
        StoreError::NotGuardian => semantic("guardian", "is not a registered guardian of the subject"),
        StoreError::Aborted => ApiError::invalid_body("the request was abandoned; nothing was written"),
        StoreError::Unavailable(why) => {
            error!(error = %why, "store unavailable; nothing was written");
            ApiError::new(503, "not_ready", "the store is unavailable; nothing was written", None)
        }
        other @ (StoreError::Corrupt(_) | StoreError::Schema(_, _)) => {
            error!(error = %other, "store failure");
            ApiError::new(500, "internal", "the store failed; nothing was written", None)
        }
    }
}

/// The answer while the store is not open yet.
pub fn not_ready() -> AdminAnswer {
    let e = ApiError::new(503, "not_ready", "the store is not open yet", None);
    whole(respond(e.status, "application/json", e.body()))
}

/// Answers one admin request.
pub async fn handle(admin: &Admin, req: Request<Incoming>) -> AdminAnswer {
    let allowed = if is_read(req.uri().path()) { "GET" } else { "POST" };
    let started = std::time::Instant::now();
    let metrics = &admin.node.state().metrics;
    let answer = match route(admin, req).await {
        Ok(a) => a,
        Err(e) => {
            metrics.error(Endpoint::Admin, e.code);
            let mut r = whole(respond(e.status, "application/json", e.body()));
            if e.status == 401 {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            if e.status == 405 {
                r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allowed));
            }
            r
        }
    };
    metrics.request(Endpoint::Admin, started.elapsed());
    answer
}

/// The routes read with `GET`; every other route is written with `POST`.
fn is_read(path: &str) -> bool {
    ["/v1/subjects", "/v1/audit", "/v1/snapshot"]
        .iter()
        .any(|r| path == *r || path.strip_prefix(r).is_some_and(|rest| rest.starts_with('/')))
}

async fn route(admin: &Admin, req: Request<Incoming>) -> Result<AdminAnswer, ApiError> {
    let caller = admin
        .tokens
        .authenticate(req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes))
        .ok_or_else(unauthorized)?
        .clone();
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    let allow = |m: Method| -> Result<(), ApiError> {
        if method == m || (m == Method::GET && method == Method::HEAD) {
            Ok(())
        } else {
            Err(ApiError::method_not_allowed())
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
    match parts.as_slice() {
        ["v1", "restrictions"] | ["v1", "grants"] => {
            allow(Method::POST)?;
            writer(&caller)?;
            let family = if parts[1] == "grants" {
                Family::Grant
            } else {
                Family::Restriction
            };
            let body = read_json(req).await?;
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
            let body = read_json(req).await?;
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
            subject_view(admin, subject).await
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
            audit_view(admin, subject).await
        }
        ["v1", "snapshot"] => {
            allow(Method::GET)?;
            if caller.role != Role::Peer {
                return Err(forbidden(caller.role));
            }
            snapshot_file(admin).await
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

fn rule_id(s: &str, family: Family) -> Result<RuleId, ApiError> {
    s.parse::<u64>()
        .ok()
        .filter(|_| s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
        .map(RuleId)
        .ok_or_else(|| store_error(StoreError::NotFound, family))
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
    Pid::parse(s.trim(), today(admin)).map_err(|e| ApiError::identity("subject", e))
}

fn now() -> Instant {
    crate::store::now()
}

fn today(admin: &Admin) -> jiff::civil::Date {
    time::local_date(now(), &admin.tz)
}

/// Reads a JSON object body of at most 64 KiB.
async fn read_json(req: Request<Incoming>) -> Result<Map<String, Value>, ApiError> {
    let declared = req.body().size_hint().upper();
    let body = crate::server::read_body(req.into_body(), declared).await?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::invalid_body("the body must be a JSON object")),
        Err(_) => Err(ApiError::invalid_json()),
    }
}

/// Typed access to a JSON object's fields, each error naming the field.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    known: &'static [&'static str],
}

impl<'a> Fields<'a> {
    /// Refuses fields the endpoint does not know; a misspelt field must not
    /// be silently ignored on the write path.
    fn new(map: &'a Map<String, Value>, known: &'static [&'static str]) -> Result<Fields<'a>, ApiError> {
        if let Some(k) = map.keys().find(|k| !known.contains(&k.as_str())) {
            // Name it only if it looks like a field name, not like data.
            let plain = k.len() <= 40 && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            return Err(if plain {
                ApiError::invalid_request("body", "is not a field of this endpoint").with_field(k.clone())
            } else {
                ApiError::invalid_body("the body has a field this endpoint does not know")
            });
        }
        Ok(Fields { map, known })
    }

    fn get(&self, name: &'static str) -> Option<&'a Value> {
        debug_assert!(self.known.contains(&name));
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn string(&self, name: &'static str, max: usize) -> Result<Option<&'a str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Err(ApiError::invalid_request(name, "must not be empty")),
            Some(Value::String(s)) if s.chars().count() > max => Err(ApiError::invalid_request(
                name,
                &format!("must be at most {max} characters"),
            )),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::invalid_request(name, "must be a string")),
        }
    }

    fn required(&self, name: &'static str, max: usize) -> Result<&'a str, ApiError> {
        self.string(name, max)?
            .ok_or_else(|| ApiError::invalid_request(name, "is required"))
    }

    fn bool(&self, name: &'static str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ApiError::invalid_request(name, "must be `true` or `false`")),
        }
    }

    fn pid(&self, name: &'static str, today: jiff::civil::Date) -> Result<Option<Pid>, ApiError> {
        self.string(name, 20)?
            .map(|s| Pid::parse(s, today).map_err(|e| ApiError::identity(name, e)))
            .transpose()
    }

    fn hsa(&self, name: &'static str) -> Result<Option<HsaId>, ApiError> {
        self.string(name, 31)?
            .map(|s| {
                HsaId::parse(s).map_err(|_| {
                    ApiError::invalid_request(name, "must be an HSA-ID such as `SE2321000131-E000000000001`")
                })
            })
            .transpose()
    }

    fn instant(&self, name: &'static str, tz: &TimeZone) -> Result<Option<Instant>, ApiError> {
        self.string(name, 64)?
            .map(|s| time::parse_instant(s, tz).map_err(|e| ApiError::invalid_time(name, e)))
            .transpose()
    }

    fn list(&self, name: &'static str) -> Result<Option<Vec<&'a str>>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(a)) if a.is_empty() => Err(ApiError::invalid_request(name, "must not be empty")),
            Some(Value::Array(a)) if a.len() > 50 => {
                Err(ApiError::invalid_request(name, "may hold at most 50 entries"))
            }
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| ApiError::invalid_request(name, "must be a list of strings"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(ApiError::invalid_request(name, "must be a list")),
        }
    }

    /// A person record (`decided_by`, `requested_by`): an object whose
    /// `name` is required and whose other keys are short strings; an
    /// `hsa_id` must be an HSA-ID.
    fn person(&self, name: &'static str, keys: &'static [&'static str]) -> Result<Option<Value>, ApiError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        let Value::Object(m) = v else {
            return Err(ApiError::invalid_request(
                name,
                "must be an object with at least `name`",
            ));
        };
        let inner = Fields::new(m, keys).map_err(|_| {
            ApiError::invalid_request(
                name,
                &format!(
                    "may hold only {}",
                    keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        let mut out = Map::new();
        for k in keys {
            let v = inner.string(k, MAX_SHORT).map_err(|_| {
                ApiError::invalid_request(
                    name,
                    &format!("`{k}` must be a non-empty string of at most {MAX_SHORT} characters"),
                )
            })?;
            if *k == "hsa_id"
                && let Some(h) = v
                && HsaId::parse(h).is_err()
            {
                return Err(ApiError::invalid_request(name, "`hsa_id` must be an HSA-ID"));
            }
            if let Some(v) = v {
                out.insert((*k).to_owned(), Value::from(v));
            }
        }
        if !out.contains_key("name") {
            return Err(ApiError::invalid_request(name, "`name` is required"));
        }
        Ok(Some(Value::Object(out)))
    }
}

const RULE_FIELDS: &[&str] = &[
    "kind",
    "subject",
    "guardian",
    "services",
    "valid_from",
    "valid_until",
    "issuing_unit",
    "decided_by",
    "requested_by",
    "basis",
    "urgent",
    "reference",
    "care_units",
];
const DECIDED_BY: &[&str] = &["name", "hsa_id"];
const REQUESTED_BY: &[&str] = &["name", "id", "email", "phone"];

/// `valid_until` is capped here for grants that end at 16: the instant the
/// subject attains the own-journal age.
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

/// Every write names the unit it is made for and who decided: the
/// `issuing_unit` (a `unit` token only as its own unit) and `decided_by`.
fn acting_as(f: &Fields<'_>, caller: &Caller) -> Result<(HsaId, Value), ApiError> {
    let unit = f
        .hsa("issuing_unit")?
        .ok_or_else(|| ApiError::invalid_request("issuing_unit", "is required"))?;
    if let (Role::Unit, Some(own)) = (&caller.role, &caller.unit)
        && *own != unit
    {
        return Err(wrong_unit("a unit token writes only as its own unit"));
    }
    let decided_by = f
        .person("decided_by", DECIDED_BY)?
        .ok_or_else(|| ApiError::invalid_request("decided_by", "is required"))?;
    Ok((unit, decided_by))
}

async fn create(
    admin: &Admin,
    caller: &Caller,
    family: Family,
    body: &Map<String, Value>,
) -> Result<AdminAnswer, ApiError> {
    let f = Fields::new(body, RULE_FIELDS)?;
    let at = now();
    let today = time::local_date(at, &admin.tz);
    let kind_name = f.required("kind", 40)?;
    let kind = RuleKind::parse(kind_name)
        .filter(|k| Family::of(*k) == family)
        .ok_or_else(|| match family {
            Family::Restriction => ApiError::invalid_request("kind", "must be `block` or `seal`"),
            Family::Grant => ApiError::invalid_request("kind", "must be `extended_access` or `early_access`"),
        })?;
    let subject = f
        .pid("subject", today)?
        .ok_or_else(|| ApiError::invalid_request("subject", "is required"))?;
    let guardian = f.pid("guardian", today)?;
    match (kind, guardian) {
        (RuleKind::Seal, Some(_)) => {
            return Err(ApiError::invalid_request(
                "guardian",
                "a seal applies to everyone: leave `guardian` out",
            ));
        }
        (RuleKind::EarlyAccess, Some(_)) => {
            return Err(ApiError::invalid_request(
                "guardian",
                "early access is the subject's own: leave `guardian` out",
            ));
        }
        (RuleKind::ExtendedAccess, None) => {
            return Err(ApiError::invalid_request("guardian", "is required for extended access"));
        }
        (_, Some(g)) if g == subject => {
            return Err(ApiError::invalid_request("guardian", "cannot be the subject"));
        }
        _ => {}
    }
    let services = match f.list("services")? {
        None => kind.default_services(),
        Some(list) => list.iter().try_fold(Services::NONE, |acc, s| {
            Service::parse(s)
                .map(|s| acc.with(s))
                .ok_or_else(|| ApiError::invalid_service("services"))
        })?,
    };
    if kind.is_grant() && services != Services::JOURNAL {
        return Err(semantic(
            "services",
            "grants cover the journal only, never the e-services",
        ));
    }
    let care_units = match f.list("care_units")? {
        None => None,
        Some(_) if kind != RuleKind::ExtendedAccess => {
            return Err(ApiError::invalid_request(
                "care_units",
                "only extended access is limited to care units",
            ));
        }
        Some(list) => Some(
            list.iter()
                .map(|u| HsaId::parse(u).map_err(|_| ApiError::invalid_request("care_units", "must be HSA-IDs")))
                .collect::<Result<Arc<[HsaId]>, _>>()?,
        ),
    };
    let valid_from = f.instant("valid_from", &admin.tz)?.unwrap_or(at);
    let mut valid_until = f.instant("valid_until", &admin.tz)?;
    if let Some(u) = valid_until {
        if u <= valid_from {
            return Err(semantic("valid_until", "must be after `valid_from`"));
        }
        if u <= at {
            return Err(semantic(
                "valid_until",
                "is already past: the decision would never apply",
            ));
        }
    }
    let (issuing_unit, decided_by) = acting_as(&f, caller)?;
    let urgent = f.bool("urgent")?.unwrap_or(false);
    let requested_by = f.person("requested_by", REQUESTED_BY)?;
    if urgent && family == Family::Grant {
        return Err(semantic(
            "urgent",
            "only restrictions are phoned in urgently; grants are never urgent",
        ));
    }
    if urgent && requested_by.is_none() {
        return Err(ApiError::invalid_request(
            "requested_by",
            "is required for an urgent restriction: who phoned it in",
        ));
    }
    let basis = f.required("basis", MAX_TEXT)?;
    let reference = f.string("reference", MAX_SHORT)?;

    // Grants end at 16 whatever they say.
    if kind.is_grant()
        && let Some(sixteen) = attains_16(admin, subject).await?
    {
        if valid_from >= sixteen {
            return Err(semantic(
                "valid_from",
                "the subject is 16 by then: the grant would never apply",
            ));
        }
        valid_until = Some(valid_until.map_or(sixteen, |u| u.min(sixteen)));
    }

    let new = NewRule {
        rule: Rule {
            id: RuleId(0),
            kind,
            subject,
            guardian,
            services,
            valid_from,
            valid_until,
            lifted_at: None,
            care_units,
        },
        meta: RuleMeta {
            issuing_unit,
            decided_by,
            requested_by,
            basis: basis.to_owned(),
            urgent,
            reference: reference.map(str::to_owned),
        },
    };
    let require_guardian = guardian.is_some();
    let committed = admin
        .node
        .store()
        .create_rule(new, require_guardian, caller)
        .await
        .map_err(|e| store_error(e, family))?;
    visible(admin, committed.revision).await;
    info!(
        action = crate::store::create_action(kind),
        kind = kind.as_str(),
        revision = committed.revision,
        by = %caller.name,
        urgent,
        "write committed"
    );
    Ok(json_answer(
        201,
        &json!({
            "id": committed.revision.to_string(),
            "revision": committed.revision,
            "confirmation_pending": urgent,
            "valid_until": valid_until.map(|u| LocalTime::new(u, &admin.tz).to_string()),
        }),
    ))
}

/// Waits until checks on this node answer from `revision`. The write is
/// committed either way; a slow publication is logged, not failed.
async fn visible(admin: &Admin, revision: u64) {
    if !admin.node.wait_applied(revision, admin.visible_within).await {
        warn!(revision, "a committed write is not yet visible to checks");
    }
}

const LIFT_FIELDS: &[&str] = &["issuing_unit", "decided_by", "basis", "threat_assessment_done"];

async fn lift(
    admin: &Admin,
    caller: &Caller,
    family: Family,
    id: RuleId,
    body: &Map<String, Value>,
) -> Result<AdminAnswer, ApiError> {
    let f = Fields::new(body, LIFT_FIELDS)?;
    let (issuing_unit, decided_by) = acting_as(&f, caller)?;
    let basis = f.required("basis", MAX_TEXT)?;
    let threat = f.bool("threat_assessment_done")?;
    // Lifting a restriction gives access back: only after the head of unit
    // has checked the threat picture with social services. Lifting a grant
    // takes access away and needs no such check.
    if family == Family::Restriction && threat != Some(true) {
        return Err(semantic(
            "threat_assessment_done",
            "must be `true`: the head of unit checks the threat picture with social services before a restriction is lifted",
        ));
    }
    let req = LiftRequest {
        family,
        issuing_unit,
        decided_by,
        basis: basis.to_owned(),
        threat_assessment_done: threat.unwrap_or(false),
    };
    let committed = admin
        .node
        .store()
        .lift(id, req, caller)
        .await
        .map_err(|e| store_error(e, family))?;
    visible(admin, committed.revision).await;
    info!(action = "lift", revision = committed.revision, by = %caller.name, "write committed");
    Ok(json_answer(200, &json!({"revision": committed.revision})))
}

const CONFIRM_FIELDS: &[&str] = &["issuing_unit", "decided_by", "form_reference"];

async fn confirm(
    admin: &Admin,
    caller: &Caller,
    id: RuleId,
    body: &Map<String, Value>,
) -> Result<AdminAnswer, ApiError> {
    let f = Fields::new(body, CONFIRM_FIELDS)?;
    let (issuing_unit, decided_by) = acting_as(&f, caller)?;
    let req = ConfirmRequest {
        issuing_unit,
        decided_by,
        form_reference: f.required("form_reference", MAX_SHORT)?.to_owned(),
    };
    let committed = admin
        .node
        .store()
        .confirm(id, req, caller)
        .await
        .map_err(|e| store_error(e, Family::Restriction))?;
    visible(admin, committed.revision).await;
    info!(action = "confirm", revision = committed.revision, by = %caller.name, "write committed");
    Ok(json_answer(200, &json!({"revision": committed.revision})))
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
    let mut reader = ndjson::Reader::new(today(admin));
    let mut body = req.into_body();
    let mut batch: Vec<PersonRecord> = Vec::with_capacity(IMPORT_BATCH);
    let fed: Result<(), ApiError> = async {
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
    }
    .await;
    // A bad line: dropping the sender without `End` rolls the import back.
    drop(tx);
    let outcome = import.await.map_err(|_| {
        store_error(
            StoreError::Unavailable("the import task failed".into()),
            Family::Restriction,
        )
    })?;
    fed?;
    let imported = outcome.map_err(|e| store_error(e, Family::Restriction))?;
    visible(admin, imported.revision).await;
    info!(
        action = "population",
        revision = imported.revision,
        upserted = imported.upserted,
        changed = imported.changed,
        seconds = started.elapsed().as_secs_f64(),
        by = %caller.name,
        "write committed"
    );
    Ok(json_answer(
        200,
        &json!({"upserted": imported.upserted, "changed": imported.changed, "revision": imported.revision}),
    ))
}

fn local(i: Instant, tz: &TimeZone) -> String {
    LocalTime::new(i, tz).to_string()
}

fn rule_view(r: &StoredRule, at: Instant, tz: &TimeZone) -> Value {
    let rule = &r.rule;
    let status = if rule.lifted_at.is_some_and(|l| l <= at) {
        "lifted"
    } else if rule.valid_until.is_some_and(|u| u <= at) {
        "expired"
    } else if rule.valid_from > at {
        "scheduled"
    } else {
        "active"
    };
    json!({
        "id": rule.id.0.to_string(),
        "kind": rule.kind.as_str(),
        "guardian": rule.guardian.map(|g| g.to_string()),
        "services": rule.services.iter().map(Service::as_str).collect::<Vec<_>>(),
        "care_units": rule.care_units.as_ref().map(|u| u.iter().map(HsaId::as_str).collect::<Vec<_>>()),
        "valid_from": local(rule.valid_from, tz),
        "valid_until": rule.valid_until.map(|u| local(u, tz)),
        "status": status,
        "confirmation_pending": r.confirmation_pending(),
        "issuing_unit": r.meta.issuing_unit.as_str(),
        "decided_by": r.meta.decided_by,
        "requested_by": r.meta.requested_by,
        "basis": r.meta.basis,
        "urgent": r.meta.urgent,
        "reference": r.meta.reference,
        "created_at": local(r.created_at, tz),
        "created_by": r.created_by,
        "confirmed_at": r.confirmed_at.map(|c| local(c, tz)),
        "confirmation": r.confirmation,
        "lifted_at": rule.lifted_at.map(|l| local(l, tz)),
        "lift": r.lift,
        "revision": r.revision,
    })
}

/// `GET /v1/subjects/{id}`: the person, their guardians, every restriction
/// and grant, and the answer each guardian (and the subject) gets now.
async fn subject_view(admin: &Admin, subject: Pid) -> Result<AdminAnswer, ApiError> {
    let store = admin.node.store();
    let person = store
        .person(subject)
        .await
        .map_err(|e| store_error(e, Family::Restriction))?;
    let rules = store
        .rules_of(subject)
        .await
        .map_err(|e| store_error(e, Family::Restriction))?;
    let at = now();
    let tz = &admin.tz;
    let (restrictions, grants): (Vec<&StoredRule>, Vec<&StoredRule>) = rules
        .iter()
        .partition(|r| Family::of(r.rule.kind) == Family::Restriction);
    let published = admin.node.state().current();
    let answers: Value = match published.as_deref() {
        None => Value::Null,
        Some(p) => {
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
                    let d = decide(snap, &q);
                    let mut v = serde_json::to_value(DecisionBody::new(&d, at, snap.tz())).unwrap_or(Value::Null);
                    v["actor"] = Value::from(actor.to_string());
                    v["service"] = Value::from(service.as_str());
                    out.push(v);
                }
            }
            Value::Array(out)
        }
    };
    let body = json!({
        "subject": subject.to_string(),
        "person": person.as_ref().map(|p| json!({
            "birth_date": p.record.birth_date.map(|d| d.to_string()),
            "protected": p.record.protected,
            "guardians": p.record.guardians.iter().map(Pid::to_string).collect::<Vec<_>>(),
            "revision": p.revision,
        })),
        "restrictions": restrictions.iter().map(|r| rule_view(r, at, tz)).collect::<Vec<_>>(),
        "grants": grants.iter().map(|r| rule_view(r, at, tz)).collect::<Vec<_>>(),
        "answers": answers,
        "revision": published.as_deref().map(|p| p.snapshot.revision()),
        "at": local(at, tz),
    });
    Ok(json_answer(200, &body))
}

fn audit_entry(e: &AuditEntry, tz: &TimeZone) -> Value {
    json!({
        "revision": e.revision,
        "at": local(e.at, tz),
        "by": e.actor,
        "role": e.role,
        "action": e.action,
        "rule_id": e.rule_id.map(|i| i.to_string()),
        "basis": e.detail.get("basis"),
        "detail": e.detail,
    })
}

/// `GET /v1/audit?subject=`: every write concerning the subject.
async fn audit_view(admin: &Admin, subject: Pid) -> Result<AdminAnswer, ApiError> {
    let entries = admin
        .node
        .store()
        .audit_of(subject)
        .await
        .map_err(|e| store_error(e, Family::Restriction))?;
    Ok(json_answer(
        200,
        &json!({
            "subject": subject.to_string(),
            "entries": entries.iter().map(|e| audit_entry(e, &admin.tz)).collect::<Vec<_>>(),
        }),
    ))
}

/// `GET /v1/snapshot`: this node's newest snapshot file, for a peer's
/// bootstrap, streamed. A checkpoint renamed over the file meanwhile does
/// not disturb it: the open file keeps the old one.
async fn snapshot_file(admin: &Admin) -> Result<AdminAnswer, ApiError> {
    let unreadable = |_| ApiError::new(500, "internal", "cannot read the snapshot file", None);
    let path = admin
        .node
        .snapshot_file()
        .ok_or_else(|| ApiError::new(404, "not_found", "this instance has no snapshot file yet", None))?;
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
