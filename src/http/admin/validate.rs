//! Admin request bodies into store requests (SPEC §5), as pure functions
//! of a body, the caller and the instant: no socket, no store, no clock.
//!
//! Bodies are validated the way a careful registrar would: required fields,
//! formats, dates that make sense, unknown fields refused (a misspelt
//! `valid_until` must not mean "for ever"); errors name the field and never
//! repeat a value. What needs stored data (is the guardian registered, did
//! this unit issue it) is checked by the store inside the write
//! transaction.

use std::sync::Arc;

use jiff::tz::TimeZone;
use serde_json::{Map, Value};

use crate::actor::{Caller, Role};
use crate::core::decide::Query;
use crate::core::identity::Pid;
use crate::core::model::{HsaId, Rule, RuleId, RuleKind, Service, Services};
use crate::core::time::{self, Instant};
use crate::http::error::{ApiError, ErrorCode};
use crate::store::{ConfirmRequest, Family, LiftRequest, NewRule, RuleMeta};

/// Longest free-text field (`basis`).
const MAX_TEXT: usize = 4000;
/// Longest short field (names, references, e-mail).
const MAX_SHORT: usize = 200;

/// A write by a unit token for another unit.
pub(crate) fn wrong_unit(what: &'static str) -> ApiError {
    ApiError::new(ErrorCode::WrongUnit, what, Some("issuing_unit"))
}

/// Typed access to a JSON object's fields, each error naming the field.
pub(crate) struct Fields<'a> {
    map: &'a Map<String, Value>,
    known: &'static [&'static str],
}

impl<'a> Fields<'a> {
    /// Refuses fields the endpoint does not know; a misspelt field must not
    /// be silently ignored on the write path.
    pub(crate) fn new(map: &'a Map<String, Value>, known: &'static [&'static str]) -> Result<Fields<'a>, ApiError> {
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

    fn uint(&self, name: &'static str) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| ApiError::invalid_request(name, "must be a non-negative integer")),
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

/// `POST /v1/restrictions` or `/v1/grants`: a new rule from `body`, by
/// `caller`, received at `at`. A grant still has to be capped at the
/// subject's 16th birthday ([`cap_grant`]), which needs the stored birth
/// date.
pub fn new_rule(
    body: &Map<String, Value>,
    caller: &Caller,
    family: Family,
    at: Instant,
    tz: &TimeZone,
) -> Result<NewRule, ApiError> {
    let f = Fields::new(body, RULE_FIELDS)?;
    let today = time::local_date(at, tz);
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
        return Err(ApiError::semantic(
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
        Some(list) => {
            let units = list
                .iter()
                .map(|u| HsaId::parse(u).map_err(|_| ApiError::invalid_request("care_units", "must be HSA-IDs")))
                .collect::<Result<Arc<[HsaId]>, _>>()?;
            // A unit grants access to its own information only.
            if let (Role::Unit, Some(own)) = (&caller.role, &caller.unit)
                && units.iter().any(|u| u != own)
            {
                return Err(ApiError::new(
                    ErrorCode::WrongUnit,
                    "a unit token names only its own unit in `care_units`",
                    Some("care_units"),
                ));
            }
            Some(units)
        }
    };
    let valid_from = f.instant("valid_from", tz)?.unwrap_or(at);
    let valid_until = f.instant("valid_until", tz)?;
    if let Some(u) = valid_until {
        if u <= valid_from {
            return Err(ApiError::semantic("valid_until", "must be after `valid_from`"));
        }
        if u <= at {
            return Err(ApiError::semantic(
                "valid_until",
                "is already past: the decision would never apply",
            ));
        }
    }
    let (issuing_unit, decided_by) = acting_as(&f, caller)?;
    let urgent = f.bool("urgent")?.unwrap_or(false);
    let requested_by = f.person("requested_by", REQUESTED_BY)?;
    if urgent && family == Family::Grant {
        return Err(ApiError::semantic(
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
    Ok(NewRule {
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
    })
}

/// Grants end at 16 whatever they say: caps `valid_until` at `sixteen`, the
/// instant the subject attains the own-journal age (if known), and refuses
/// a grant that would start after it.
pub fn cap_grant(new: &mut NewRule, sixteen: Option<Instant>) -> Result<(), ApiError> {
    let rule = &mut new.rule;
    let Some(sixteen) = sixteen.filter(|_| rule.kind.is_grant()) else {
        return Ok(());
    };
    if rule.valid_from >= sixteen {
        return Err(ApiError::semantic(
            "valid_from",
            "the subject is 16 by then: the grant would never apply",
        ));
    }
    rule.valid_until = Some(rule.valid_until.map_or(sixteen, |u| u.min(sixteen)));
    Ok(())
}

const LIFT_FIELDS: &[&str] = &[
    "issuing_unit",
    "decided_by",
    "basis",
    "threat_assessment_done",
    "unit_request_reference",
];

/// The contact center acts for a unit only on the unit's signed request
/// (SPEC §8): a registrar lifting or confirming names it; a unit acting
/// itself needs none (and may still give one).
fn unit_request_reference(f: &Fields<'_>, caller: &Caller) -> Result<Option<String>, ApiError> {
    let reference = f.string("unit_request_reference", MAX_SHORT)?;
    if caller.role == Role::Registrar && reference.is_none() {
        return Err(ApiError::semantic(
            "unit_request_reference",
            "is required when the contact center acts for a unit: the reference of the unit's signed request",
        ));
    }
    Ok(reference.map(str::to_owned))
}

/// `POST /v1/{restrictions,grants}/{id}/lift`.
pub fn lift_request(body: &Map<String, Value>, caller: &Caller, family: Family) -> Result<LiftRequest, ApiError> {
    let f = Fields::new(body, LIFT_FIELDS)?;
    let (issuing_unit, decided_by) = acting_as(&f, caller)?;
    let basis = f.required("basis", MAX_TEXT)?;
    let threat = f.bool("threat_assessment_done")?;
    // Lifting a restriction gives access back: only after the head of unit
    // has checked the threat picture with social services. Lifting a grant
    // takes access away and needs no such check.
    if family == Family::Restriction && threat != Some(true) {
        return Err(ApiError::semantic(
            "threat_assessment_done",
            "must be `true`: the head of unit checks the threat picture with social services before a restriction is lifted",
        ));
    }
    Ok(LiftRequest {
        family,
        issuing_unit,
        decided_by,
        basis: basis.to_owned(),
        threat_assessment_done: threat.unwrap_or(false),
        unit_request_reference: unit_request_reference(&f, caller)?,
    })
}

const CONFIRM_FIELDS: &[&str] = &["issuing_unit", "decided_by", "form_reference", "unit_request_reference"];

/// `POST /v1/restrictions/{id}/confirm`: the signed form of an urgent one.
pub fn confirm_request(body: &Map<String, Value>, caller: &Caller) -> Result<ConfirmRequest, ApiError> {
    let f = Fields::new(body, CONFIRM_FIELDS)?;
    let (issuing_unit, decided_by) = acting_as(&f, caller)?;
    Ok(ConfirmRequest {
        issuing_unit,
        decided_by,
        form_reference: f.required("form_reference", MAX_SHORT)?.to_owned(),
        unit_request_reference: unit_request_reference(&f, caller)?,
    })
}

const EXPLAIN_FIELDS: &[&str] = &["actor", "subject", "service", "at", "as_of_revision"];

/// `POST /v1/explain`: a question, and the revision whose facts to use.
#[derive(Debug, Clone, PartialEq)]
pub struct ExplainRequest {
    /// The question (`at` defaults to now).
    pub query: Query,
    /// Explain with the facts as they stood at this revision; today's when
    /// `None`.
    pub as_of_revision: Option<u64>,
}

/// The explain body, received at `now`.
pub fn explain_request(body: &Map<String, Value>, now: Instant, tz: &TimeZone) -> Result<ExplainRequest, ApiError> {
    let f = Fields::new(body, EXPLAIN_FIELDS)?;
    let at = f.instant("at", tz)?.unwrap_or(now);
    let today = time::local_date(at, tz);
    let actor = f
        .pid("actor", today)?
        .ok_or_else(|| ApiError::invalid_request("actor", "is required"))?;
    let subject = f
        .pid("subject", today)?
        .ok_or_else(|| ApiError::invalid_request("subject", "is required"))?;
    let service = match f.string("service", 20)? {
        None => Service::Journal,
        Some(s) => Service::parse(s).ok_or_else(|| ApiError::invalid_service("service"))?,
    };
    Ok(ExplainRequest {
        query: Query {
            actor,
            subject,
            service,
            at,
        },
        as_of_revision: f.uint("as_of_revision")?,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const UNIT: &str = "SE2321000131-E000000000001";
    const KID: &str = "201509162390";
    const MOTHER: &str = "197701012382";

    fn at() -> Instant {
        Instant::from_timestamp("2026-11-23T09:00:00Z".parse().unwrap()).unwrap()
    }

    fn tz() -> TimeZone {
        time::stockholm().unwrap()
    }

    fn registrar() -> Caller {
        Caller {
            name: "Kontaktcenter".into(),
            role: Role::Registrar,
            unit: None,
            hsa_id: None,
        }
    }

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn block() -> Value {
        json!({
            "kind": "block", "subject": KID, "guardian": MOTHER, "issuing_unit": UNIT,
            "decided_by": {"name": "Verksamhetschef"}, "basis": "Orosanmälan"
        })
    }

    fn refused(v: Value, family: Family) -> (&'static str, Option<String>, u16) {
        let e = new_rule(&body(v), &registrar(), family, at(), &tz()).unwrap_err();
        (e.code.as_str(), e.field.as_deref().map(str::to_owned), e.status())
    }

    #[test]
    fn a_block_starts_now_and_records_the_decision() {
        let new = new_rule(&body(block()), &registrar(), Family::Restriction, at(), &tz()).unwrap();
        assert_eq!(new.rule.kind, RuleKind::Block);
        assert_eq!(new.rule.valid_from, at());
        assert_eq!(new.rule.valid_until, None);
        assert_eq!(new.rule.services, RuleKind::Block.default_services());
        assert_eq!(new.meta.issuing_unit.as_str(), UNIT);
        assert_eq!(new.meta.decided_by, json!({"name": "Verksamhetschef"}));
        assert!(!new.meta.urgent);
    }

    #[test]
    fn each_mistake_is_named() {
        let with = |f: &dyn Fn(&mut Value)| {
            let mut b = block();
            f(&mut b);
            b
        };
        let r = Family::Restriction;
        assert_eq!(
            refused(with(&|b| b["kind"] = "seal".into()), r).1.as_deref(),
            Some("guardian")
        );
        assert_eq!(
            refused(with(&|b| b["kind"] = "early_access".into()), r).1.as_deref(),
            Some("kind")
        );
        assert_eq!(
            refused(with(&|b| b["valid_untill"] = "2030-01-01".into()), r)
                .1
                .as_deref(),
            Some("valid_untill")
        );
        assert_eq!(
            refused(with(&|b| b["valid_until"] = "2020-01-01".into()), r),
            ("invalid_request", Some("valid_until".into()), 422)
        );
        assert_eq!(
            refused(with(&|b| b["urgent"] = true.into()), r).1.as_deref(),
            Some("requested_by")
        );
        assert_eq!(
            refused(with(&|b| b["subject"] = "201509162391".into()), r).0,
            "invalid_identifier"
        );
        assert_eq!(
            refused(with(&|b| b["guardian"] = KID.into()), r).1.as_deref(),
            Some("guardian")
        );
        let e = refused(with(&|b| b["issuing_unit"] = "SE-nope".into()), r);
        assert_eq!(e.1.as_deref(), Some("issuing_unit"));
    }

    #[test]
    fn a_unit_token_writes_only_as_its_own_unit() {
        let other = Caller {
            name: "Barnahus".into(),
            role: Role::Unit,
            unit: Some(HsaId::parse("SE2321000131-E000000000002").unwrap()),
            hsa_id: None,
        };
        let e = new_rule(&body(block()), &other, Family::Restriction, at(), &tz()).unwrap_err();
        assert_eq!((e.code, e.status()), (ErrorCode::WrongUnit, 403));
        let e = lift_request(&body(json!({"issuing_unit": UNIT, "decided_by": {"name": "X"}, "basis": "b", "threat_assessment_done": true})), &other, Family::Restriction).unwrap_err();
        assert_eq!(e.code, ErrorCode::WrongUnit);
    }

    #[test]
    fn grants_are_journal_only_and_end_at_sixteen() {
        let grant = json!({
            "kind": "extended_access", "subject": KID, "guardian": MOTHER, "issuing_unit": UNIT,
            "decided_by": {"name": "Verksamhetschef"}, "basis": "Behov", "valid_until": "2035-01-01"
        });
        let mut new = new_rule(&body(grant.clone()), &registrar(), Family::Grant, at(), &tz()).unwrap();
        let sixteen = Instant::from_timestamp("2031-09-15T22:00:00Z".parse().unwrap()).unwrap();
        cap_grant(&mut new, Some(sixteen)).unwrap();
        assert_eq!(new.rule.valid_until, Some(sixteen));
        let mut late = grant.clone();
        late["valid_from"] = "2032-01-01".into();
        let mut new = new_rule(&body(late), &registrar(), Family::Grant, at(), &tz()).unwrap();
        let e = cap_grant(&mut new, Some(sixteen)).unwrap_err();
        assert_eq!((e.field.as_deref(), e.status()), (Some("valid_from"), 422));
        let mut both = grant;
        both["services"] = json!(["journal", "eservices"]);
        assert_eq!(refused(both, Family::Grant).1.as_deref(), Some("services"));
    }

    #[test]
    fn the_contact_center_acts_for_a_unit_only_on_its_signed_request() {
        let unit = Caller {
            name: "BUP".into(),
            role: Role::Unit,
            unit: Some(HsaId::parse(UNIT).unwrap()),
            hsa_id: None,
        };
        let lift =
            json!({"issuing_unit": UNIT, "decided_by": {"name": "X"}, "basis": "b", "threat_assessment_done": true});
        let e = lift_request(&body(lift.clone()), &registrar(), Family::Restriction).unwrap_err();
        assert_eq!((e.field.as_deref(), e.status()), (Some("unit_request_reference"), 422));
        let own = lift_request(&body(lift), &unit, Family::Restriction).unwrap();
        assert_eq!(own.unit_request_reference, None, "a unit acting itself needs none");
        let confirm = json!({"issuing_unit": UNIT, "decided_by": {"name": "X"}, "form_reference": "F 1"});
        let e = confirm_request(&body(confirm.clone()), &registrar()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("unit_request_reference"));
        assert!(confirm_request(&body(confirm), &unit).is_ok());
    }

    #[test]
    fn a_unit_names_only_itself_in_care_units() {
        let unit = Caller {
            name: "BUP".into(),
            role: Role::Unit,
            unit: Some(HsaId::parse(UNIT).unwrap()),
            hsa_id: None,
        };
        let grant = |units: Value| {
            body(json!({
                "kind": "extended_access", "subject": KID, "guardian": MOTHER, "issuing_unit": UNIT,
                "decided_by": {"name": "V"}, "basis": "b", "care_units": units
            }))
        };
        let e = new_rule(
            &grant(json!([UNIT, "SE2321000131-E000000000002"])),
            &unit,
            Family::Grant,
            at(),
            &tz(),
        )
        .unwrap_err();
        assert_eq!((e.code, e.field.as_deref()), (ErrorCode::WrongUnit, Some("care_units")));
        assert!(new_rule(&grant(json!([UNIT])), &unit, Family::Grant, at(), &tz()).is_ok());
        let other = json!(["SE2321000131-E000000000002"]);
        assert!(
            new_rule(&grant(other), &registrar(), Family::Grant, at(), &tz()).is_ok(),
            "the registrar may"
        );
    }

    #[test]
    fn an_explain_question_defaults_to_now_and_the_journal() {
        let r = explain_request(&body(json!({"actor": MOTHER, "subject": KID})), at(), &tz()).unwrap();
        assert_eq!(
            (r.query.at, r.query.service, r.as_of_revision),
            (at(), Service::Journal, None)
        );
        let r = explain_request(
            &body(json!({"actor": MOTHER, "subject": KID, "service": "eservices", "at": "2026-11-17T10:00:00+01:00", "as_of_revision": 7})),
            at(),
            &tz(),
        )
        .unwrap();
        assert_eq!((r.query.service, r.as_of_revision), (Service::Eservices, Some(7)));
        assert!(r.query.at < at());
        let e = explain_request(
            &body(json!({"actor": MOTHER, "subject": KID, "as_of_revision": -1})),
            at(),
            &tz(),
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("as_of_revision"));
        let e = explain_request(&body(json!({"actor": MOTHER})), at(), &tz()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("subject"));
    }

    #[test]
    fn a_lift_of_a_restriction_needs_the_threat_assessment() {
        let lift = json!({"issuing_unit": UNIT, "decided_by": {"name": "X"}, "basis": "Hotbild kontrollerad",
                          "unit_request_reference": "Blankett 12"});
        let e = lift_request(&body(lift.clone()), &registrar(), Family::Restriction).unwrap_err();
        assert_eq!((e.field.as_deref(), e.status()), (Some("threat_assessment_done"), 422));
        let ok = lift_request(&body(lift), &registrar(), Family::Grant).unwrap();
        assert!(!ok.threat_assessment_done);
        assert_eq!(ok.unit_request_reference.as_deref(), Some("Blankett 12"));
        let e = confirm_request(
            &body(json!({"issuing_unit": UNIT, "decided_by": {"name": "X"}, "unit_request_reference": "B 12"})),
            &registrar(),
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("form_reference"));
    }
}
