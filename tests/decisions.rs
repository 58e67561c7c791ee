//! Data-driven decision cases: every file in `fixtures/decisions/`, and the
//! demo region `fixtures/demo.json`, is a scenario (people, restrictions, grants) with questions and the answers
//! expected. Adding a case is adding data; `check` is the one helper.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use guardian_access::fixtures::{CaseFile, Scenario};
use guardian_access::http::wire::DecisionBody;
use guardian_access::{Snapshot, decide};

fn scenario_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/decisions");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo.json"));
    files
}

/// Runs one case; returns a description of every field that differs.
fn check(snap: &Snapshot, case: &CaseFile) -> Vec<String> {
    let query = case
        .query(snap.tz())
        .unwrap_or_else(|e| panic!("case `{}`: {e}", case.name));
    let decision = decide(snap, &query);
    let body = serde_json::to_value(DecisionBody::new(&decision, query.at, snap.tz())).unwrap();
    assert!(
        case.expect.contains_key("decision") && case.expect.contains_key("reason"),
        "case `{}` must expect `decision` and `reason`",
        case.name
    );
    let mut diffs = Vec::new();
    for (field, want) in &case.expect {
        let got = body
            .get(field)
            .unwrap_or_else(|| panic!("case `{}`: unknown field `{field}`", case.name));
        if got != want {
            diffs.push(format!("{}: `{field}` is {got}, expected {want}", case.name));
        }
    }
    // The decision and the reason must agree whatever the fixture says.
    assert_eq!(body["decision"] == "allow", decision.reason.allows());
    diffs
}

#[test]
fn every_decision_case_holds() {
    let mut total = 0;
    let mut failures = Vec::new();
    let mut reasons = std::collections::HashSet::new();
    for file in scenario_files() {
        let scenario = Scenario::load(&file).unwrap();
        let snap = scenario
            .snapshot()
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for case in &scenario.cases {
            total += 1;
            reasons.insert(case.expect["reason"].as_str().unwrap_or_default().to_owned());
            for d in check(&snap, case) {
                failures.push(format!("{}: {d}", file.file_name().unwrap().to_string_lossy()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(total >= 80, "only {total} decision cases");
    for r in guardian_access::Reason::ALL {
        assert!(reasons.contains(r.as_str()), "no case expects `{}`", r.as_str());
    }
    println!("{total} decision cases hold");
}

#[test]
fn case_names_are_unique_within_a_file() {
    for file in scenario_files() {
        let scenario = Scenario::load(&file).unwrap();
        let mut names = std::collections::HashSet::new();
        for case in &scenario.cases {
            assert!(
                names.insert(&case.name),
                "{}: duplicate case `{}`",
                file.display(),
                case.name
            );
        }
    }
}
