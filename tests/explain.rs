//! Explanations (SPEC §10): data-driven cases in `fixtures/explain/`
//! through one helper; every decision fixture explained to the same answer
//! `decide` gives; and `POST /v1/explain` with `as_of_revision` answering,
//! for every revision of a pair whose answer changed, exactly what checks
//! answered at that revision.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use guardian_access::core::explain::{Explanation, Facts, explain};
use guardian_access::decide;
use guardian_access::fixtures::{CaseFile, Scenario};
use guardian_access::http::wire::DecisionBody;
use guardian_access::store::Store;
use serde_json::{Value, json};
use support::{AUDITOR, POPULATION, REGISTRAR, UNIT, quick_node};

fn files(dir: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    out.sort();
    out
}

/// The explanation of a case, on the facts of the scenario it is in.
fn explained(scenario: &Scenario, case: &CaseFile) -> Explanation {
    let (records, rules) = scenario.records().unwrap();
    let facts = Facts {
        revision: 1,
        settings: Arc::new(scenario.settings().unwrap()),
        records,
        rules,
    };
    let snap = scenario.snapshot().unwrap();
    let q = case.query(snap.tz()).unwrap();
    explain(&facts, &q).unwrap()
}

/// One case: the answer as `decide` gives it on the whole scenario, and the
/// expected row, data and verdicts; the differences, as text.
fn check(scenario: &Scenario, case: &CaseFile) -> Vec<String> {
    let e = explained(scenario, case);
    let snap = scenario.snapshot().unwrap();
    let q = *e.query();
    let whole = serde_json::to_value(DecisionBody::new(&decide(&snap, &q), q.at, snap.tz())).unwrap();
    let answer = serde_json::to_value(DecisionBody::new(&e.decision(), q.at, e.snapshot().tz())).unwrap();
    let mut diffs = Vec::new();
    if whole != answer {
        diffs.push(format!("{}: explained {answer}, decided {whole}", case.name));
    }
    for field in ["decision", "reason"] {
        if answer[field] != case.expect[field] {
            diffs.push(format!(
                "{}: `{field}` is {}, expected {}",
                case.name, answer[field], case.expect[field]
            ));
        }
    }
    let Some(want) = case.expect.get("explain") else {
        return diffs;
    };
    let row = format!("{} {}", if e.row.own { "own" } else { "guardian" }, e.row.number);
    if want["row"] != row.as_str() {
        diffs.push(format!("{}: row {row}, expected {}", case.name, want["row"]));
    }
    if let Some(age) = want.get("age")
        && Some(age.as_u64().unwrap()) != e.data.age.map(u64::from)
    {
        diffs.push(format!("{}: age {:?}, expected {age}", case.name, e.data.age));
    }
    if let Some(source) = want.get("birth_date_source")
        && source != e.data.birth_source.as_str()
    {
        diffs.push(format!("{}: birth date from {:?}", case.name, e.data.birth_source));
    }
    for (id, why) in want.get("rules").and_then(Value::as_object).into_iter().flatten() {
        let got = e
            .rules
            .iter()
            .find(|(r, _)| r.id.0.to_string() == *id)
            .map(|(_, w)| w.as_str());
        if got != why.as_str() {
            diffs.push(format!("{}: rule {id} {got:?}, expected {why}", case.name));
        }
    }
    diffs
}

#[test]
fn every_explanation_case_holds() {
    let mut failures = Vec::new();
    let mut total = 0;
    for file in files("fixtures/explain") {
        let scenario = Scenario::load(&file).unwrap();
        for case in &scenario.cases {
            failures.extend(check(&scenario, case));
            total += 1;
        }
    }
    assert!(total >= 12, "{total}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every decision fixture, explained: the same answer, field for field, and
/// a row that belongs to the reason.
#[test]
fn every_decision_case_is_explained_with_its_own_answer() {
    let mut failures = Vec::new();
    let mut reasons = std::collections::BTreeSet::new();
    let mut dirs = files("fixtures/decisions");
    dirs.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo.json"));
    for file in dirs {
        let scenario = Scenario::load(&file).unwrap();
        for case in &scenario.cases {
            failures.extend(check(&scenario, case));
            let e = explained(&scenario, case);
            let reason = e.decision().reason;
            reasons.insert(reason.as_str());
            let decided: Vec<_> = e.rules.iter().filter(|(_, w)| w.as_str() == "decided").collect();
            // A rule decided exactly when the reason names a rule's kind.
            let by_rule = matches!(
                reason.as_str(),
                "sealed" | "blocked" | "extended_access" | "early_access"
            );
            if by_rule == decided.is_empty() {
                failures.push(format!(
                    "{}: {reason:?} with {} deciding rules",
                    case.name,
                    decided.len()
                ));
            }
        }
    }
    assert_eq!(reasons.len(), 12, "every reason is explained: {reasons:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// Skatteverket's test numbers.
const KID: &str = "201509162390";
const MOTHER: &str = "197701012382";
const FATHER: &str = "198001022386";

fn person(guardians: &[&str]) -> String {
    format!("{}\n", json!({"id": KID, "protected": false, "guardians": guardians}))
}

/// A pair whose answer changes revision by revision (a block placed and
/// lifted, the guardianship changed): each revision's explanation is that
/// revision's answer, as checks gave it then.
#[tokio::test]
async fn as_of_revision_explains_each_revision_with_its_own_facts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(dir.path()).await.unwrap();
    let i = support::Instance::start(store, quick_node(None)).await;
    let mut answered: Vec<(u64, String)> = Vec::new();
    let at = "2026-11-23T10:00:00+01:00";
    let ask = async |i: &support::Instance| {
        let a = i
            .check(support::pid_of(MOTHER), support::pid_of(KID), "journal", at)
            .await;
        (
            a["revision"].as_u64().unwrap(),
            a["reason"].as_str().unwrap().to_owned(),
        )
    };

    let r = i
        .admin_post(POPULATION, "/v1/population", &person(&[MOTHER, FATHER]))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    answered.push(ask(&i).await);
    let block = json!({"kind": "block", "subject": KID, "guardian": MOTHER, "issuing_unit": UNIT,
        "decided_by": {"name": "Verksamhetschef"}, "basis": "Orosanmälan"});
    let r = i.admin_post(REGISTRAR, "/v1/restrictions", &block.to_string()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    answered.push(ask(&i).await);
    let lift = json!({"issuing_unit": UNIT, "decided_by": {"name": "Verksamhetschef"},
        "basis": "Hotbild kontrollerad", "threat_assessment_done": true,
        "unit_request_reference": "Begäran 1"});
    let r = i
        .admin_post(REGISTRAR, &format!("/v1/restrictions/{id}/lift"), &lift.to_string())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    answered.push(ask(&i).await);
    let r = i.admin_post(POPULATION, "/v1/population", &person(&[FATHER])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    answered.push(ask(&i).await);
    let reasons: Vec<&str> = answered.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(reasons, ["guardian", "blocked", "guardian", "not_guardian"]);

    for (revision, reason) in &answered {
        let body = json!({"actor": MOTHER, "subject": KID, "at": at, "as_of_revision": revision});
        let r = i.admin_post(AUDITOR, "/v1/explain", &body.to_string()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["answer"]["reason"], reason.as_str(), "revision {revision}: {v}");
        assert_eq!(v["answer"]["revision"], *revision);
        assert_eq!(v["as_of_revision"], *revision);
        let rules = v["rules"].as_array().unwrap();
        match (*revision, reason.as_str()) {
            (1, _) => assert!(rules.is_empty(), "no block yet at revision 1: {v}"),
            (_, "blocked") => assert_eq!(rules[0]["why"], "decided", "{v}"),
            (3, "guardian") => {
                assert_eq!(rules[0]["why"], "lifted", "{v}");
                assert!(rules[0]["lifted_at"].is_string());
            }
            _ => {}
        }
        let guardians = v["data"]["guardians"].as_array().unwrap().len();
        assert_eq!(guardians, if *revision == 4 { 1 } else { 2 }, "{v}");
        assert_eq!(v["data"]["actor_is_guardian"], *revision != 4);
    }
    // The block, as it stood at revision 2, was not lifted yet.
    let body = json!({"actor": MOTHER, "subject": KID, "at": at, "as_of_revision": 2});
    let v = i.admin_post(REGISTRAR, "/v1/explain", &body.to_string()).await.json();
    assert!(v["rules"][0]["lifted_at"].is_null(), "{v}");
    assert_eq!(
        v["row"],
        json!({"table": "guardian", "number": 7, "text": "an active block covering the service and this guardian"})
    );

    // Today's facts when no revision is named; none from the future.
    let body = json!({"actor": MOTHER, "subject": KID});
    let v = i.admin_post(AUDITOR, "/v1/explain", &body.to_string()).await.json();
    assert_eq!(
        (v["answer"]["reason"].as_str(), v["as_of_revision"].is_null()),
        (Some("not_guardian"), true)
    );
    let body = json!({"actor": MOTHER, "subject": KID, "as_of_revision": 99});
    let r = i.admin_post(AUDITOR, "/v1/explain", &body.to_string()).await;
    assert_eq!((r.status, r.error().1.as_deref()), (422, Some("as_of_revision")));
    // Explanations are for the registrar and auditors only.
    let r = i.admin_post(POPULATION, "/v1/explain", &body.to_string()).await;
    assert_eq!(r.status, 403);
    let r = i
        .admin_post(AUDITOR, "/v1/explain", r#"{"actor": "197701012382"}"#)
        .await;
    assert_eq!((r.status, r.error().1.as_deref()), (400, Some("subject")));
    i.stop().await;
}
