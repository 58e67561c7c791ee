//! The check API's wire side (SPEC §4): request bodies, their validation
//! into domain queries, and the answers' bytes.
//!
//! Nothing here echoes client input in an error: a body may carry a real
//! person's number in any field, so messages say what is wrong with a field
//! and name it, never quote it.

use std::borrow::Cow;

use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::core::decide::{self, Query};
use crate::core::identity::Pid;
use crate::core::model::Service;
use crate::core::snapshot::Snapshot;
use crate::core::time::{self, Instant};
use crate::http::error::{ApiError, ErrorView};
use crate::http::wire::{ChildrenBody, DecisionBody};

/// Largest accepted request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Most checks in one batch.
pub const MAX_BATCH: usize = 1000;

/// A check body as sent. Every field is kept raw so that a field of the
/// wrong type gets an error naming it, and unknown fields are ignored so the
/// portal can add some without breaking.
#[derive(Debug, Deserialize)]
struct CheckBody<'a> {
    #[serde(borrow, default)]
    actor: Option<&'a RawValue>,
    #[serde(borrow, default)]
    subject: Option<&'a RawValue>,
    #[serde(borrow, default)]
    service: Option<&'a RawValue>,
    #[serde(borrow, default)]
    at: Option<&'a RawValue>,
    #[serde(borrow, default)]
    min_revision: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow, default)]
    checks: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    min_revision: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct ChildrenRequest<'a> {
    #[serde(borrow, default)]
    guardian: Option<&'a RawValue>,
    #[serde(borrow, default)]
    service: Option<&'a RawValue>,
    #[serde(borrow, default)]
    at: Option<&'a RawValue>,
    #[serde(borrow, default)]
    min_revision: Option<&'a RawValue>,
}

/// A string that borrows from the body unless it had escapes.
#[derive(Debug, Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

/// Parses `body` as a JSON object of shape `T`.
fn object<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    // Derived structs also accept a JSON array; only an object will do.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Ok(_) => ApiError::invalid_body("the body must be a JSON object"),
            Err(_) => ApiError::invalid_json(),
        });
    }
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::invalid_body("the body must be a JSON object of the documented shape")
        }
        _ => ApiError::invalid_json(),
    })
}

/// A string field; `null` counts as absent.
fn string<'a>(raw: Option<&'a RawValue>, field: &'static str) -> Result<Option<Cow<'a, str>>, ApiError> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => serde_json::from_str::<Str<'a>>(raw.get())
            .map(|s| Some(s.0))
            .map_err(|_| ApiError::invalid_request(field, "must be a string")),
    }
}

/// `min_revision`: a non-negative integer, or absent / `null`.
fn revision(raw: Option<&RawValue>) -> Result<Option<u64>, ApiError> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => serde_json::from_str::<u64>(raw.get())
            .map(Some)
            .map_err(|_| ApiError::invalid_request("min_revision", "must be a non-negative integer")),
    }
}

/// Refuses to answer from `snap` when the request asked for a later revision.
fn at_least(snap: &Snapshot, min_revision: Option<u64>) -> Result<(), ApiError> {
    match min_revision {
        Some(min) if min > snap.revision() => Err(ApiError::behind(min)),
        _ => Ok(()),
    }
}

fn required<'a>(raw: Option<&'a RawValue>, field: &'static str) -> Result<Cow<'a, str>, ApiError> {
    string(raw, field)?.ok_or_else(|| ApiError::invalid_request(field, "is required"))
}

/// The instant in `at`, or `now` when it is left out.
fn instant(at: Option<&str>, tz: &TimeZone, now: Instant) -> Result<Instant, ApiError> {
    match at {
        None => Ok(now),
        Some(s) => time::parse_instant(s, tz).map_err(|e| ApiError::invalid_time("at", e)),
    }
}

/// An identity number, its 10-digit century resolved against `at`'s year.
fn identity(s: &str, field: &'static str, at: Instant, tz: &TimeZone) -> Result<Pid, ApiError> {
    Pid::parse_with(s, || time::local_date(at, tz).year()).map_err(|e| ApiError::identity(field, e))
}

fn service(s: &str) -> Result<Service, ApiError> {
    Service::parse(s).ok_or_else(|| ApiError::invalid_service("service"))
}

/// The one place a check's four strings become a [`Query`], whichever way
/// they were read.
fn query(
    actor: &str,
    subject: &str,
    service_name: &str,
    at: Option<&str>,
    tz: &TimeZone,
    now: Instant,
) -> Result<Query, ApiError> {
    let at = instant(at, tz, now)?;
    Ok(Query {
        actor: identity(actor, "actor", at, tz)?,
        subject: identity(subject, "subject", at, tz)?,
        service: service(service_name)?,
        at,
    })
}

/// The common, well-formed check body, read in one pass with borrowed
/// strings. A body it does not fit (a field missing or not a string) is
/// read again as a [`CheckBody`], which names the field.
#[derive(Debug, Deserialize)]
struct WellFormedCheck<'a> {
    #[serde(borrow)]
    actor: Cow<'a, str>,
    #[serde(borrow)]
    subject: Cow<'a, str>,
    #[serde(borrow)]
    service: Cow<'a, str>,
    #[serde(borrow, default)]
    at: Option<Cow<'a, str>>,
    #[serde(default)]
    min_revision: Option<u64>,
}

/// Reads a `/v1/check` body (or one check of a batch) into a query.
pub fn parse_check(body: &[u8], tz: &TimeZone, now: Instant) -> Result<Query, ApiError> {
    parse_check_min(body, tz, now).map(|(q, _)| q)
}

/// [`parse_check`] that also returns the body's `min_revision`, if any:
/// the revision the caller needs the answer to reflect (read-your-writes).
pub fn parse_check_min(body: &[u8], tz: &TimeZone, now: Instant) -> Result<(Query, Option<u64>), ApiError> {
    if body.trim_ascii_start().first() == Some(&b'{')
        && let Ok(c) = serde_json::from_slice::<WellFormedCheck>(body)
    {
        return Ok((
            query(&c.actor, &c.subject, &c.service, c.at.as_deref(), tz, now)?,
            c.min_revision,
        ));
    }
    let c: CheckBody = object(body)?;
    let at = string(c.at, "at")?;
    let min_revision = revision(c.min_revision)?;
    let q = query(
        &required(c.actor, "actor")?,
        &required(c.subject, "subject")?,
        &required(c.service, "service")?,
        at.as_deref(),
        tz,
        now,
    )?;
    Ok((q, min_revision))
}

/// Answers a `/v1/check` body from `snap`, unless it asks for a later revision.
pub fn check<'s>(
    snap: &'s Snapshot,
    body: &[u8],
    now: Instant,
) -> Result<(Query, decide::Decision<'s>, Vec<u8>), ApiError> {
    let (q, min_revision) = parse_check_min(body, snap.tz(), now)?;
    at_least(snap, min_revision)?;
    let (d, out) = check_answer(snap, &q);
    Ok((q, d, out))
}

/// The answer to one check, as JSON.
pub fn check_answer<'s>(snap: &'s Snapshot, q: &Query) -> (decide::Decision<'s>, Vec<u8>) {
    let d = decide::decide(snap, q);
    // Room for a whole answer up front: `to_vec` would grow it twice.
    let mut body = Vec::with_capacity(384);
    if serde_json::to_writer(&mut body, &DecisionBody::new(&d, q.at, snap.tz())).is_err() {
        body.clear();
    }
    (d, body)
}

/// One entry of a batch answer.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum BatchEntry<'a> {
    Answer(DecisionBody<'a>),
    Error { error: ErrorView<'a> },
}

/// The outcome of a batch: its body, and each check's decision or error
/// (for metrics).
#[derive(Debug)]
pub struct Batch<'s> {
    /// The JSON answer.
    pub body: Vec<u8>,
    /// One entry per check, in order.
    pub outcomes: Vec<Result<decide::Decision<'s>, ApiError>>,
}

/// Answers a `/v1/check/batch` body: every check against the same snapshot.
pub fn batch<'s>(snap: &'s Snapshot, body: &[u8], now: Instant) -> Result<Batch<'s>, ApiError> {
    let req: BatchBody = object(body)?;
    let batch_min = revision(req.min_revision)?;
    let checks = req
        .checks
        .ok_or_else(|| ApiError::invalid_request("checks", "is required"))?;
    if checks.len() > MAX_BATCH {
        return Err(ApiError::invalid_request("checks", "may hold at most 1000 checks"));
    }
    let tz = snap.tz();
    let parsed: Vec<Result<(Query, Option<u64>), ApiError>> = checks
        .iter()
        .map(|raw| {
            // An error about the check as a whole, not one of its fields.
            parse_check_min(raw.get().as_bytes(), tz, now).map_err(|e| match e.field {
                Some(_) => e,
                None => ApiError::invalid_body("each check must be a JSON object"),
            })
        })
        .collect();
    // A check's own `min_revision` is honoured for the whole batch: every
    // answer comes from one snapshot, at least as new as any check asks.
    let wanted = parsed.iter().filter_map(|p| p.as_ref().ok()?.1).chain(batch_min).max();
    at_least(snap, wanted)?;
    // Decided together, so that their memory reads overlap.
    let queries: Vec<Query> = parsed.iter().filter_map(|p| Some(p.as_ref().ok()?.0)).collect();
    let mut decisions = Vec::new();
    decide::decide_batch(snap, &queries, &mut decisions);
    let mut decided = queries.into_iter().zip(decisions);
    let outcomes: Vec<Result<(Query, decide::Decision<'s>), ApiError>> = parsed
        .into_iter()
        .map(|p| {
            p.and_then(|_| {
                decided
                    .next()
                    .ok_or_else(|| ApiError::internal("a batch check without its decision"))
            })
        })
        .collect();
    #[derive(Serialize)]
    struct Out<'a> {
        results: Vec<BatchEntry<'a>>,
        revision: u64,
    }
    let results = outcomes
        .iter()
        .map(|o| match o {
            Ok((q, d)) => BatchEntry::Answer(DecisionBody::new(d, q.at, tz)),
            Err(e) => BatchEntry::Error { error: e.view() },
        })
        .collect();
    let body = serde_json::to_vec(&Out {
        results,
        revision: snap.revision(),
    })
    .unwrap_or_default();
    Ok(Batch {
        body,
        outcomes: outcomes.into_iter().map(|o| o.map(|(_, d)| d)).collect(),
    })
}

/// Answers a `/v1/children` body: the guardian's switch list.
pub fn children(snap: &Snapshot, body: &[u8], now: Instant) -> Result<Vec<u8>, ApiError> {
    let req: ChildrenRequest = object(body)?;
    at_least(snap, revision(req.min_revision)?)?;
    let tz = snap.tz();
    let at = instant(string(req.at, "at")?.as_deref(), tz, now)?;
    let guardian = identity(&required(req.guardian, "guardian")?, "guardian", at, tz)?;
    let service = service(&required(req.service, "service")?)?;
    Ok(serde_json::to_vec(&ChildrenBody::new(snap, guardian, service, at)).unwrap_or_default())
}

/// The `x-min-revision` header of `/v1/authz`, if sent.
pub fn authz_min_revision(snap: &Snapshot, value: Option<&[u8]>) -> Result<(), ApiError> {
    let Some(v) = value else { return Ok(()) };
    let min = std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| ApiError::invalid_request("min_revision", "header must be a non-negative integer"))?;
    at_least(snap, Some(min))
}

/// Reads an `/v1/authz` question from three header values.
pub fn authz_query(
    actor: Option<&[u8]>,
    subject: Option<&[u8]>,
    service_value: Option<&[u8]>,
    tz: &TimeZone,
    now: Instant,
) -> Result<Query, ApiError> {
    let actor = header(actor, "actor")?;
    let subject = header(subject, "subject")?;
    let service_value = header(service_value, "service")?;
    query(actor.trim(), subject.trim(), service_value.trim(), None, tz, now)
}

fn header<'a>(v: Option<&'a [u8]>, field: &'static str) -> Result<&'a str, ApiError> {
    let v = v.ok_or_else(|| ApiError::invalid_request(field, "header is required"))?;
    std::str::from_utf8(v).map_err(|_| ApiError::invalid_request(field, "header must be text"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::Scenario;

    fn tz() -> TimeZone {
        time::stockholm().unwrap()
    }

    fn now() -> Instant {
        time::parse_instant("2026-11-23T10:00:00+01:00", &tz()).unwrap()
    }

    fn err(body: &str) -> ApiError {
        parse_check(body.as_bytes(), &tz(), now()).unwrap_err()
    }

    #[test]
    fn a_check_body_becomes_a_query() {
        let q = parse_check(
            br#"{"actor": "19770101-2382", "subject": "201509162390", "service": "journal", "extra": 1}"#,
            &tz(),
            now(),
        )
        .unwrap();
        assert_eq!(q.actor.to_string(), "197701012382");
        assert_eq!(q.subject.to_string(), "201509162390");
        assert_eq!(q.service, Service::Journal);
        assert_eq!(q.at, now(), "`at` left out means now");
    }

    #[test]
    fn escaped_strings_are_read() {
        let q = parse_check(
            br#"{"actor": "\u0031977\u00301012382", "subject": "201509162390", "service": "eservices", "at": null}"#,
            &tz(),
            now(),
        )
        .unwrap();
        assert_eq!(q.actor.to_string(), "197701012382");
    }

    #[test]
    fn every_error_names_its_field_and_never_the_input() {
        let cases = [
            (
                r#"{"actor": "197701012383", "subject": "201509162390", "service": "journal"}"#,
                "invalid_identifier",
                Some("actor"),
            ),
            (
                r#"{"actor": "197701012382", "subject": "19810829M071", "service": "journal"}"#,
                "unsupported_identifier",
                Some("subject"),
            ),
            (
                r#"{"actor": 197701012382, "subject": "201509162390", "service": "journal"}"#,
                "invalid_request",
                Some("actor"),
            ),
            (
                r#"{"subject": "201509162390", "service": "journal"}"#,
                "invalid_request",
                Some("actor"),
            ),
            (
                r#"{"actor": "197701012382", "subject": "201509162390"}"#,
                "invalid_request",
                Some("service"),
            ),
            (
                r#"{"actor": "197701012382", "subject": "201509162390", "service": "Journal"}"#,
                "invalid_service",
                Some("service"),
            ),
            (
                r#"{"actor": "197701012382", "subject": "201509162390", "service": "journal", "at": "2026-11-23T10:00"}"#,
                "invalid_time",
                Some("at"),
            ),
            (
                r#"{"actor": "197701012382", "subject": "201509162390", "service": "journal", "at": 5}"#,
                "invalid_request",
                Some("at"),
            ),
            (r#"{"actor": "1977010123"#, "invalid_json", None),
            (r#"["197701012382"]"#, "invalid_request", None),
            ("", "invalid_json", None),
        ];
        for (body, code, field) in cases {
            let e = err(body);
            assert_eq!((e.code.as_str(), e.field.as_deref()), (code, field), "{body}");
            assert_eq!(e.status(), 400);
            let text = String::from_utf8(e.body()).unwrap();
            assert!(!text.contains("0101238"), "{text}");
            assert!(!text.contains("M071"), "{text}");
            if let Some(f) = field {
                assert!(text.contains(&format!("`{f}`")), "{text}");
            }
        }
    }

    #[test]
    fn the_error_body_has_the_documented_shape() {
        let e = err(r#"{"actor": "197701012383", "subject": "201509162390", "service": "journal"}"#);
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"code": "invalid_identifier", "message": "`actor`: check digit does not match", "field": "actor"}})
        );
    }

    fn demo() -> Snapshot {
        let scenario: Scenario = serde_json::from_str(include_str!("../../../fixtures/demo.json")).unwrap();
        scenario.snapshot().unwrap()
    }

    #[test]
    fn a_batch_answers_each_check_in_order_with_errors_in_place() {
        let snap = demo();
        let b = batch(
            &snap,
            br#"{"checks": [
                {"actor": "197701012382", "subject": "201509162390", "service": "journal"},
                {"actor": "197701012383", "subject": "201509162390", "service": "journal"},
                {"actor": "198001032385", "subject": "201801012392", "service": "journal"},
                ["197701012382", "201509162390", "journal"]
            ]}"#,
            now(),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b.body).unwrap();
        assert_eq!(v["revision"], 1);
        assert_eq!(v["results"][0]["reason"], "guardian");
        assert_eq!(v["results"][1]["error"]["code"], "invalid_identifier");
        assert_eq!(v["results"][1]["error"]["field"], "actor");
        assert_eq!(v["results"][2]["reason"], "blocked");
        assert_eq!(v["results"][3]["error"]["code"], "invalid_request");
        assert_eq!(b.outcomes.len(), 4);
    }

    #[test]
    fn a_batch_over_the_limit_is_refused() {
        let snap = demo();
        let one = r#"{"actor": "197701012382", "subject": "201509162390", "service": "journal"}"#;
        let body = format!(r#"{{"checks": [{}]}}"#, vec![one; MAX_BATCH + 1].join(","));
        let e = batch(&snap, body.as_bytes(), now()).unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.field.as_deref()),
            ("invalid_request", Some("checks"))
        );
        let body = format!(r#"{{"checks": [{}]}}"#, vec![one; MAX_BATCH].join(","));
        assert_eq!(batch(&snap, body.as_bytes(), now()).unwrap().outcomes.len(), MAX_BATCH);
    }

    proptest::proptest! {
        /// Whatever arrives, every reader answers with a value or an error
        /// whose message carries no digit run from the input.
        #[test]
        fn no_input_panics_or_leaks(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            actor in "[0-9+\\- M]{0,14}",
            field in "(actor|subject|service|at|checks|guardian|x)",
        ) {
            let snap = demo();
            let tz = tz();
            let _ = parse_check(&bytes, &tz, now());
            let _ = batch(&snap, &bytes, now());
            let _ = children(&snap, &bytes, now());
            let _ = authz_query(Some(&bytes), Some(actor.as_bytes()), Some(b"journal"), &tz, now());
            let body = format!(r#"{{"{field}": "{actor}", "subject": "201509162390", "service": "journal"}}"#);
            if let Err(e) = parse_check(body.as_bytes(), &tz, now()) {
                let digits: String = actor.chars().filter(char::is_ascii_digit).collect();
                if digits.len() >= 6 {
                    let text = String::from_utf8(e.body()).unwrap();
                    proptest::prop_assert!(!text.contains(&digits), "{}", text);
                }
            }
            let wrapped = format!(r#"{{"checks": [{body}, {body}]}}"#);
            let _ = batch(&snap, wrapped.as_bytes(), now());
        }
    }

    #[test]
    fn authz_reads_headers() {
        let q = authz_query(
            Some(b"197701012382"),
            Some(b"201509162390"),
            Some(b"journal"),
            &tz(),
            now(),
        )
        .unwrap();
        assert_eq!(q.subject.to_string(), "201509162390");
        let e = authz_query(Some(b"197701012382"), None, Some(b"journal"), &tz(), now()).unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.field.as_deref()),
            ("invalid_request", Some("subject"))
        );
        let e = authz_query(Some(b"x"), Some(b"201509162390"), Some(b"journal"), &tz(), now()).unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.field.as_deref()),
            ("invalid_identifier", Some("actor"))
        );
    }
}
