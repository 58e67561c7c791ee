//! OPA's Rego through `regorus` (Microsoft's Rego interpreter in Rust), in
//! process: the data as an OPA bundle's `data.json` (`add_data`), the policy
//! `policies/guardian.rego`, and per check `set_input` + `eval_rule`.
//!
//! Rego can quantify over a subject's rules (`some r in rules`), so unlike
//! Cedar nothing about the rules is precomputed: the data is the rules as
//! stored. Only the two age instants per person are precomputed, as for
//! every engine here (our snapshot too): OPA's `time.*` builtins could
//! derive them from a birth date, but the leap-day rule would have to be
//! written by hand, and it would cost every check a time-zone conversion.

use std::fmt::Write as _;

use guardian_access::{Reason, Service};
use regorus::{Engine, Value};

use crate::data::{Case, Rows};

/// The policy.
pub const POLICY: &str = include_str!("../policies/guardian.rego");
/// The rule each check evaluates.
pub const RULE: &str = "data.guardian.decision";

/// The data document as JSON.
pub fn data_json(rows: &Rows) -> String {
    let mut out = String::with_capacity(rows.persons.len() * 130 + rows.rules.len() * 200);
    out.push_str(r#"{"settings":{"protected_guardian":true},"people":{"#);
    for (i, p) in rows.persons.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, r#""{}":{{"protected":{}"#, p.pid, p.protected);
        if let Some((a13, a16)) = p.attains {
            let _ = write!(out, r#","attains13":{a13},"attains16":{a16}"#);
        }
        if !p.guardians.is_empty() {
            out.push_str(r#","guardians":["#);
            for (j, g) in p.guardians.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                let _ = write!(out, r#""{g}""#);
            }
            out.push(']');
        }
        out.push('}');
    }
    out.push_str(r#"},"rules":{"#);
    // Grouped by subject, in the rules' order.
    let mut by_subject: Vec<(u64, usize)> = rows
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| (r.subject.get(), i))
        .collect();
    by_subject.sort_unstable();
    let mut last = None;
    for (subject, i) in by_subject {
        let r = &rows.rules[i];
        if last != Some(subject) {
            if last.is_some() {
                out.push_str("],");
            }
            let _ = write!(out, r#""{}":["#, r.subject);
            last = Some(subject);
        } else {
            out.push(',');
        }
        let _ = write!(out, r#"{{"kind":"{}","valid_from":{}"#, r.kind.as_str(), r.valid_from);
        if let Some(u) = r.valid_until {
            let _ = write!(out, r#","valid_until":{u}"#);
        }
        if let Some(l) = r.lifted_at {
            let _ = write!(out, r#","lifted_at":{l}"#);
        }
        if let Some(g) = r.guardian {
            let _ = write!(out, r#","guardian":"{g}""#);
        }
        out.push_str(r#","services":["#);
        for (j, s) in r.services.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            let _ = write!(out, r#""{}""#, s.as_str());
        }
        out.push(']');
        if let Some(units) = &r.care_units {
            out.push_str(r#","care_units":["#);
            for (j, u) in units.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                let _ = write!(out, r#""{u}""#);
            }
            out.push(']');
        }
        out.push('}');
    }
    if last.is_some() {
        out.push(']');
    }
    out.push_str("}}");
    out
}

/// A loaded regorus engine.
pub struct Rego {
    engine: Engine,
    allow_key: Value,
    reason_key: Value,
}

impl Rego {
    /// Parses the data and the policy: the load step. The first evaluation
    /// also prepares the engine (analysis, scheduling), so one is done here.
    pub fn load(data_json: &str) -> Rego {
        let mut engine = Engine::new();
        let data = Value::from_json_str(data_json).unwrap_or_else(|e| panic!("Rego data does not parse: {e}"));
        engine
            .add_data(data)
            .unwrap_or_else(|e| panic!("regorus add_data: {e}"));
        engine
            .add_policy("guardian.rego".into(), POLICY.into())
            .unwrap_or_else(|e| panic!("Rego policy does not compile: {e}"));
        engine.set_input(
            Value::from_json_str(r#"{"actor":"x","subject":"x","service":"journal","at":0}"#).expect("input"),
        );
        engine
            .eval_rule(RULE.into())
            .unwrap_or_else(|e| panic!("Rego first evaluation: {e}"));
        Rego {
            engine,
            allow_key: Value::from("allow"),
            reason_key: Value::from("reason"),
        }
    }

    /// The input document for a case.
    pub fn input(case: &Case) -> Value {
        let q = &case.query;
        let svc = match q.service {
            Service::Journal => "journal",
            Service::Eservices => "eservices",
        };
        Value::from_json_str(&format!(
            r#"{{"actor":"{}","subject":"{}","service":"{svc}","at":{}}}"#,
            q.actor, q.subject, case.at
        ))
        .expect("Rego input")
    }

    fn eval(&mut self, input: &Value) -> Value {
        self.engine.set_input(input.clone());
        self.engine
            .eval_rule(RULE.into())
            .unwrap_or_else(|e| panic!("Rego evaluation failed: {e}"))
    }

    /// One check: allowed?
    #[inline]
    pub fn allowed(&mut self, input: &Value) -> bool {
        let v = self.eval(input);
        v[&self.allow_key] == Value::Bool(true)
    }

    /// One check with its reason.
    pub fn explain(&mut self, input: &Value) -> (bool, Option<Reason>) {
        let v = self.eval(input);
        let allowed = v[&self.allow_key] == Value::Bool(true);
        let reason = match &v[&self.reason_key] {
            Value::String(s) => crate::data::parse_reason(s),
            _ => None,
        };
        (allowed, reason)
    }
}
