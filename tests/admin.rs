//! The admin listener over real sockets: every endpoint, every auth rule,
//! the registrar's validation, visibility to checks before the `2xx`,
//! all-or-nothing imports, restarts and snapshot files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use guardian_access::store::Store;
use serde_json::{Value, json};
use support::{
    AUDITOR, Instance, OTHER_UNIT, OTHER_UNIT_TOKEN, PEER, POPULATION, REGISTRAR, UNIT, UNIT_TOKEN, quick_node,
};

// Skatteverket's test numbers.
const KID: &str = "201509162390"; // 11 in 2026
const MOTHER: &str = "197701012382";
const FATHER: &str = "198001022386";
const TEEN: &str = "201303292385"; // 13 since 2026-03-29
const TEEN_G1: &str = "198501012390";
const TEEN_G2: &str = "197701012390";
const STRANGER: &str = "198501022381";

fn family() -> String {
    [
        json!({"id": KID, "protected": false, "guardians": [MOTHER, FATHER]}),
        json!({"id": TEEN, "protected": false, "guardians": [TEEN_G1, TEEN_G2]}),
    ]
    .iter()
    .map(|l| format!("{l}\n"))
    .collect()
}

async fn instance() -> (tempfile::TempDir, Instance) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(dir.path()).await.unwrap();
    let i = Instance::start(store, quick_node(Some(dir.path().to_owned()))).await;
    let r = i.admin_post(POPULATION, "/v1/population", &family()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    (dir, i)
}

/// A check at the current instant (no `at`), as the portal asks.
async fn now_check(i: &Instance, actor: &str, subject: &str, service: &str) -> Value {
    let body = json!({"actor": actor, "subject": subject, "service": service}).to_string();
    let r = support::send(i.check, "POST", "/v1/check", &[], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn block(guardian: Option<&str>) -> Value {
    let mut b = json!({
        "kind": "block", "subject": KID,
        "issuing_unit": UNIT,
        "decided_by": {"name": "Verksamhetschef", "hsa_id": "SE2321000131-P000000000001"},
        "basis": "Orosanmälan", "reference": "Dnr 2026-17"
    });
    if let Some(g) = guardian {
        b["guardian"] = g.into();
    }
    b
}

#[tokio::test]
async fn tokens_and_roles_are_enforced() {
    let (_dir, i) = instance().await;
    // No token, a wrong token, another scheme: 401 with a challenge.
    for auth in [
        None,
        Some("Bearer not-a-token-of-ours-0000000000"),
        Some(&*format!("Basic {REGISTRAR}")),
    ] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
        let r = support::send(i.admin, "POST", "/v1/restrictions", &headers, block(None).to_string()).await;
        assert_eq!(r.status, 401, "{auth:?}");
        assert_eq!(r.error().0, "unauthorized");
        assert_eq!(r.headers.get("www-authenticate").unwrap(), "Bearer");
    }
    // Roles that may not: 403.
    let body = block(None).to_string();
    for token in [POPULATION, AUDITOR, PEER] {
        let r = i.admin_post(token, "/v1/restrictions", &body).await;
        assert_eq!((r.status, r.error().0.as_str()), (403, "forbidden"), "{token}");
    }
    for token in [REGISTRAR, UNIT_TOKEN, AUDITOR] {
        let r = i.admin_post(token, "/v1/population", &family()).await;
        assert_eq!(r.status, 403, "{token}");
    }
    for token in [UNIT_TOKEN, POPULATION, PEER] {
        assert_eq!(
            i.admin_get(token, &format!("/v1/subjects/{KID}")).await.status,
            403,
            "{token}"
        );
        assert_eq!(
            i.admin_get(token, &format!("/v1/audit?subject={KID}")).await.status,
            403,
            "{token}"
        );
    }
    for token in [REGISTRAR, AUDITOR] {
        assert_eq!(i.admin_get(token, "/v1/snapshot").await.status, 403, "{token}");
    }
    // A unit writes only as itself.
    let r = i.admin_post(OTHER_UNIT_TOKEN, "/v1/restrictions", &body).await;
    assert_eq!(
        (r.status, r.error()),
        (403, ("wrong_unit".into(), Some("issuing_unit".into())))
    );
    // Unknown routes and wrong methods, with a valid token.
    assert_eq!(i.admin_get(REGISTRAR, "/v1/nothing").await.status, 404);
    let r = i.admin_get(REGISTRAR, "/v1/restrictions").await;
    assert_eq!((r.status, r.error().0.as_str()), (405, "method_not_allowed"));
    assert_eq!(r.headers.get("allow").unwrap(), "POST");
    let r = i.admin_post(AUDITOR, &format!("/v1/subjects/{KID}"), "{}").await;
    assert_eq!(
        (r.status, r.headers.get("allow").map(|v| v.to_str().unwrap())),
        (405, Some("GET"))
    );
    assert_eq!(i.revision(), 1, "nothing refused was written");
    i.stop().await;
}

#[tokio::test]
async fn a_block_is_visible_to_checks_before_its_201() {
    let (_dir, i) = instance().await;
    assert_eq!(now_check(&i, MOTHER, KID, "journal").await["reason"], "guardian");
    let r = i
        .admin_post(UNIT_TOKEN, "/v1/restrictions", &block(Some(MOTHER)).to_string())
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    let revision = created["revision"].as_u64().unwrap();
    assert_eq!(created["id"], revision.to_string());
    assert_eq!(created["confirmation_pending"], false);
    // The very next check, on a new connection, sees it.
    let after = now_check(&i, MOTHER, KID, "journal").await;
    assert_eq!(
        (after["reason"].as_str(), after["listing"].as_str()),
        (Some("blocked"), Some("disabled"))
    );
    assert!(after["revision"].as_u64().unwrap() >= revision);
    assert_eq!(now_check(&i, MOTHER, KID, "eservices").await["listing"], "hidden");
    assert_eq!(
        now_check(&i, FATHER, KID, "journal").await["reason"],
        "guardian",
        "the other guardian is not blocked"
    );

    // A block of all guardians, scheduled from tomorrow, with an end.
    let mut later = block(None);
    later["valid_from"] = "2027-01-01".into();
    later["valid_until"] = "2027-02-01".into();
    let r = i.admin_post(REGISTRAR, "/v1/restrictions", &later.to_string()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let father = i
        .check(pid(FATHER), pid(KID), "journal", "2027-01-15T12:00:00+01:00")
        .await;
    assert_eq!(
        (father["reason"].as_str(), father["valid_until"].as_str()),
        (Some("blocked"), Some("2027-02-01T00:00:00+01:00"))
    );
    assert_eq!(
        i.check(pid(FATHER), pid(KID), "journal", "2027-02-01T00:00:00+01:00")
            .await["reason"],
        "guardian"
    );
    i.stop().await;
}

fn pid(s: &str) -> guardian_access::Pid {
    guardian_access::Pid::parse(s, jiff::civil::date(2026, 11, 23)).unwrap()
}

#[tokio::test]
async fn bad_writes_name_the_field_and_write_nothing() {
    let (_dir, i) = instance().await;
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = block(Some(MOTHER));
        f(&mut b);
        b.to_string()
    };
    let cases: Vec<(String, u16, &str, Option<&str>)> = vec![
        (
            with(&|b| {
                b.as_object_mut().unwrap().remove("issuing_unit");
            }),
            400,
            "invalid_request",
            Some("issuing_unit"),
        ),
        (
            with(&|b| b["issuing_unit"] = "SE-not-an-hsa-id".into()),
            400,
            "invalid_request",
            Some("issuing_unit"),
        ),
        (
            with(&|b| {
                b.as_object_mut().unwrap().remove("decided_by");
            }),
            400,
            "invalid_request",
            Some("decided_by"),
        ),
        (
            with(&|b| b["decided_by"] = json!({"hsa_id": "SE2321000131-P1"})),
            400,
            "invalid_request",
            Some("decided_by"),
        ),
        (
            with(&|b| b["decided_by"] = json!({"name": "x", "hsa_id": "nope"})),
            400,
            "invalid_request",
            Some("decided_by"),
        ),
        (
            with(&|b| b["basis"] = "   ".into()),
            400,
            "invalid_request",
            Some("basis"),
        ),
        (
            with(&|b| {
                b.as_object_mut().unwrap().remove("basis");
            }),
            400,
            "invalid_request",
            Some("basis"),
        ),
        (
            with(&|b| b["kind"] = "extended_access".into()),
            400,
            "invalid_request",
            Some("kind"),
        ),
        (
            with(&|b| b["kind"] = "seal".into()),
            400,
            "invalid_request",
            Some("guardian"),
        ),
        (
            with(&|b| b["subject"] = "201509162391".into()),
            400,
            "invalid_identifier",
            Some("subject"),
        ),
        (
            with(&|b| b["guardian"] = "19810829M071".into()),
            400,
            "unsupported_identifier",
            Some("guardian"),
        ),
        (
            with(&|b| b["guardian"] = STRANGER.into()),
            422,
            "invalid_request",
            Some("guardian"),
        ),
        (
            with(&|b| b["services"] = json!(["journal", "xray"])),
            400,
            "invalid_service",
            Some("services"),
        ),
        (
            with(&|b| b["services"] = json!([])),
            400,
            "invalid_request",
            Some("services"),
        ),
        (
            with(&|b| b["valid_from"] = "2026-13-01".into()),
            400,
            "invalid_time",
            Some("valid_from"),
        ),
        (
            with(&|b| {
                b["valid_from"] = "2030-02-01".into();
                b["valid_until"] = "2030-01-01".into();
            }),
            422,
            "invalid_request",
            Some("valid_until"),
        ),
        (
            with(&|b| b["valid_until"] = "2020-01-01".into()),
            422,
            "invalid_request",
            Some("valid_until"),
        ),
        (
            with(&|b| b["urgent"] = true.into()),
            400,
            "invalid_request",
            Some("requested_by"),
        ),
        (
            with(&|b| b["urgent"] = "yes".into()),
            400,
            "invalid_request",
            Some("urgent"),
        ),
        (
            with(&|b| b["gaurdian"] = MOTHER.into()),
            400,
            "invalid_request",
            Some("gaurdian"),
        ),
        (with(&|b| b["201509162390"] = 1.into()), 400, "invalid_request", None),
        ("[1, 2]".into(), 400, "invalid_request", None),
        ("{\"kind\": ".into(), 400, "invalid_json", None),
    ];
    for (body, status, code, field) in &cases {
        let r = i.admin_post(REGISTRAR, "/v1/restrictions", body).await;
        assert_eq!(
            (r.status, r.error()),
            (*status, (code.to_string(), field.map(str::to_owned))),
            "{body}"
        );
        for digits in ["2015091623", "1977010123", "1985010223", "M071"] {
            assert!(!r.text().contains(digits), "{}", r.text());
        }
    }
    // Grants have their own rules.
    let grant = |f: &dyn Fn(&mut Value)| {
        let mut g = json!({"kind": "extended_access", "subject": TEEN, "guardian": TEEN_G1, "issuing_unit": UNIT,
                           "decided_by": {"name": "Verksamhetschef"}, "basis": "Mognadsbedömning"});
        f(&mut g);
        g.to_string()
    };
    for (body, status, field) in [
        (
            grant(&|g| g["services"] = json!(["journal", "eservices"])),
            422,
            "services",
        ),
        (
            grant(&|g| {
                g.as_object_mut().unwrap().remove("guardian");
            }),
            400,
            "guardian",
        ),
        (grant(&|g| g["urgent"] = true.into()), 422, "urgent"),
        (grant(&|g| g["kind"] = "block".into()), 400, "kind"),
        (
            grant(&|g| {
                g["kind"] = "early_access".into();
            }),
            400,
            "guardian",
        ),
        (grant(&|g| g["care_units"] = json!(["not-a-unit"])), 400, "care_units"),
        (grant(&|g| g["subject"] = "201010252383".into()), 422, "valid_from"),
    ] {
        let r = i.admin_post(REGISTRAR, "/v1/grants", &body).await;
        assert_eq!(
            (r.status, r.error().1.as_deref()),
            (status, Some(field)),
            "{body}: {}",
            r.text()
        );
    }
    assert_eq!(i.revision(), 1, "not one refused write left a revision behind");
    let subject = i.admin_get(AUDITOR, &format!("/v1/subjects/{KID}")).await.json();
    assert_eq!(subject["restrictions"], json!([]));
    i.stop().await;
}

#[tokio::test]
async fn extended_access_ends_at_16_and_keeps_a_13_year_olds_journal_open() {
    let (_dir, i) = instance().await;
    assert_eq!(now_check(&i, TEEN_G1, TEEN, "journal").await["reason"], "aged_out");
    let body = json!({"kind": "extended_access", "subject": TEEN, "guardian": TEEN_G1, "issuing_unit": UNIT,
                      "care_units": [UNIT], "valid_until": "2035-01-01",
                      "decided_by": {"name": "Verksamhetschef"}, "basis": "Förlängd åtkomst efter bedömning"});
    let r = i.admin_post(REGISTRAR, "/v1/grants", &body.to_string()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.json()["valid_until"],
        "2029-03-29T00:00:00+02:00",
        "capped at the 16th birthday"
    );
    let a = now_check(&i, TEEN_G1, TEEN, "journal").await;
    assert_eq!(
        (a["reason"].as_str(), a["care_units"].clone()),
        (Some("extended_access"), json!([UNIT]))
    );
    assert_eq!(now_check(&i, TEEN_G1, TEEN, "eservices").await["reason"], "aged_out");
    assert_eq!(now_check(&i, TEEN_G2, TEEN, "journal").await["reason"], "aged_out");
    // A guardian who is not registered cannot be granted anything.
    let mut other = body.clone();
    other["guardian"] = STRANGER.into();
    assert_eq!(
        i.admin_post(REGISTRAR, "/v1/grants", &other.to_string()).await.status,
        422
    );
    // Lifting a grant takes access away: no threat assessment needed.
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let lift = json!({"issuing_unit": UNIT, "decided_by": {"name": "Verksamhetschef"}, "basis": "Avslutad"});
    let r = i
        .admin_post(UNIT_TOKEN, &format!("/v1/grants/{id}/lift"), &lift.to_string())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(now_check(&i, TEEN_G1, TEEN, "journal").await["reason"], "aged_out");
    i.stop().await;
}

#[tokio::test]
async fn lifting_follows_the_seed_documents() {
    let (_dir, i) = instance().await;
    let r = i
        .admin_post(UNIT_TOKEN, "/v1/restrictions", &block(None).to_string())
        .await;
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/restrictions/{id}/lift");
    let lift = |unit: &str, done: Value| {
        json!({"issuing_unit": unit, "decided_by": {"name": "Verksamhetschef"}, "basis": "Hotbild kontrollerad",
               "threat_assessment_done": done, "unit_request_reference": "Begäran 2026-9"})
        .to_string()
    };
    let before = i.revision();
    let r = i.admin_post(UNIT_TOKEN, &path, &lift(UNIT, false.into())).await;
    assert_eq!(
        (r.status, r.error().1.as_deref()),
        (422, Some("threat_assessment_done"))
    );
    let r = i.admin_post(UNIT_TOKEN, &path, &lift(UNIT, Value::Null)).await;
    assert_eq!(r.status, 422);
    // Another unit, through the registrar or its own token: wrong unit.
    let r = i.admin_post(REGISTRAR, &path, &lift(OTHER_UNIT, true.into())).await;
    assert_eq!((r.status, r.error().0.as_str()), (403, "wrong_unit"));
    let r = i
        .admin_post(OTHER_UNIT_TOKEN, &path, &lift(OTHER_UNIT, true.into()))
        .await;
    assert_eq!((r.status, r.error().0.as_str()), (403, "wrong_unit"));
    // Unknown ids, and a restriction's id on the grants endpoint.
    for p in [
        "/v1/restrictions/99999/lift",
        "/v1/restrictions/abc/lift",
        &format!("/v1/grants/{id}/lift"),
    ] {
        let r = i.admin_post(REGISTRAR, p, &lift(UNIT, true.into())).await;
        assert_eq!((r.status, r.error().0.as_str()), (404, "not_found"), "{p}");
    }
    assert_eq!(i.revision(), before, "refused lifts write nothing");
    assert_eq!(now_check(&i, MOTHER, KID, "journal").await["reason"], "blocked");
    // Through the contact center, the unit's signed request must be named.
    let unsigned = json!({"issuing_unit": UNIT, "decided_by": {"name": "Verksamhetschef"},
                          "basis": "Hotbild kontrollerad", "threat_assessment_done": true});
    let r = i.admin_post(REGISTRAR, &path, &unsigned.to_string()).await;
    assert_eq!(
        (r.status, r.error().1.as_deref()),
        (422, Some("unit_request_reference"))
    );
    assert_eq!(i.revision(), before, "and nothing is written");
    // The issuing unit, through the registrar, with the assessment: lifted.
    let r = i.admin_post(REGISTRAR, &path, &lift(UNIT, true.into())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(now_check(&i, MOTHER, KID, "journal").await["reason"], "guardian");
    let r = i.admin_post(UNIT_TOKEN, &path, &lift(UNIT, true.into())).await;
    assert_eq!((r.status, r.error().0.as_str()), (409, "already_lifted"));
    // The lifted block stays in history, and answers about the past keep it.
    let subject = i.admin_get(AUDITOR, &format!("/v1/subjects/{KID}")).await.json();
    let b = &subject["restrictions"][0];
    assert_eq!(
        (b["status"].as_str(), b["lift"]["threat_assessment_done"].as_bool()),
        (Some("lifted"), Some(true))
    );
    assert_eq!(b["lift"]["unit_request_reference"], "Begäran 2026-9");
    i.stop().await;
}

#[tokio::test]
async fn an_urgent_seal_takes_effect_at_once_and_waits_for_its_form() {
    let (_dir, i) = instance().await;
    let seal = json!({"kind": "seal", "subject": KID, "services": ["journal", "eservices"], "urgent": true,
                      "issuing_unit": UNIT, "decided_by": {"name": "Verksamhetschef"},
                      "requested_by": {"name": "Sjuksköterska", "id": "VGR-ID 123", "email": "ssk@example.org", "phone": "010-000 00 00"},
                      "basis": "Polisärende"});
    let r = i.admin_post(REGISTRAR, "/v1/restrictions", &seal.to_string()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(r.json()["confirmation_pending"], true);
    // Every guardian, both services; the 11-year-old's own journal is
    // closed by age before the seal is even looked at.
    for (actor, service, reason) in [
        (MOTHER, "journal", "sealed"),
        (FATHER, "journal", "sealed"),
        (FATHER, "eservices", "sealed"),
        (KID, "journal", "below_age"),
    ] {
        assert_eq!(
            now_check(&i, actor, KID, service).await["reason"],
            reason,
            "{actor} {service}"
        );
    }
    let confirm = json!({"issuing_unit": UNIT, "decided_by": {"name": "Verksamhetschef"},
                         "form_reference": "Blankett 2026-3", "unit_request_reference": "Begäran 2026-4"});
    let path = format!("/v1/restrictions/{id}/confirm");
    let r = i
        .admin_post(
            OTHER_UNIT_TOKEN,
            &path,
            &json!({"issuing_unit": OTHER_UNIT, "decided_by": {"name": "x"}, "form_reference": "y"}).to_string(),
        )
        .await;
    assert_eq!(r.error().0, "wrong_unit");
    assert_eq!(i.admin_post(REGISTRAR, &path, &confirm.to_string()).await.status, 200);
    let r = i.admin_post(REGISTRAR, &path, &confirm.to_string()).await;
    assert_eq!((r.status, r.error().0.as_str()), (409, "already_confirmed"));
    assert_eq!(
        i.admin_post(REGISTRAR, &format!("/v1/grants/{id}/confirm"), &confirm.to_string())
            .await
            .status,
        404
    );
    let subject = i.admin_get(REGISTRAR, &format!("/v1/subjects/{KID}")).await.json();
    let s = &subject["restrictions"][0];
    assert_eq!(
        (
            s["confirmation_pending"].as_bool(),
            s["confirmation"]["form_reference"].as_str()
        ),
        (Some(false), Some("Blankett 2026-3"))
    );
    assert_eq!(s["requested_by"]["phone"], "010-000 00 00");
    i.stop().await;
}

#[tokio::test]
async fn population_imports_are_all_or_nothing_and_stream_many_lines() {
    let (_dir, i) = instance().await;
    let before = i.revision();
    // A good line, then a bad one: nothing of it is applied.
    let bad = format!(
        "{}\n{}\n",
        json!({"id": KID, "protected": true, "guardians": [MOTHER]}),
        json!({"id": TEEN, "protected": false, "guardians": ["197701012383"]}),
    );
    let r = i.admin_post(POPULATION, "/v1/population", &bad).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let e = r.json();
    assert_eq!(
        (e["error"]["line"].as_u64(), e["error"]["field"].as_str()),
        (Some(2), Some("guardians[0]"))
    );
    assert!(!r.text().contains("19770101238"), "{}", r.text());
    assert_eq!(i.revision(), before);
    assert_eq!(
        now_check(&i, MOTHER, KID, "journal").await["reason"],
        "guardian",
        "the first line was not applied"
    );

    // 20,000 generated families (numbers made at run time), streamed.
    let mut body = String::new();
    for n in 0..20_000u32 {
        let kid = support::pid(
            2016,
            1 + (n % 12) as u8,
            1 + (n / 12 % 28) as u8,
            1 + (n / 336) as u16 % 999,
        );
        let parent = support::pid(
            1985,
            1 + (n % 12) as u8,
            1 + (n / 12 % 28) as u8,
            1 + (n / 336) as u16 % 999,
        );
        body.push_str(
            &json!({"id": kid.to_string(), "protected": n % 100 == 0, "guardians": [parent.to_string()]}).to_string(),
        );
        body.push('\n');
    }
    let r = i.admin_post(POPULATION, "/v1/population", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let out = r.json();
    assert_eq!(out["upserted"], 20_000);
    let kid = support::pid(2016, 2, 1, 1);
    let parent = support::pid(1985, 2, 1, 1);
    let a = i.check(parent, kid, "journal", "2026-11-23T10:00:00+01:00").await;
    assert_eq!(a["reason"], "guardian");
    let status = support::get(i.check, "/v1/status", &[]).await.json();
    assert!(status["persons"].as_u64().unwrap() > 40_000, "{status}");
    i.stop().await;
}

#[tokio::test]
async fn subjects_and_audit_show_everything_to_auditors() {
    let (_dir, i) = instance().await;
    i.admin_post(UNIT_TOKEN, "/v1/restrictions", &block(Some(MOTHER)).to_string())
        .await;
    let by_path = i.admin_get(AUDITOR, &format!("/v1/subjects/{KID}")).await;
    assert_eq!(by_path.status, 200);
    let by_header = support::get(
        i.admin,
        "/v1/subjects",
        &[("authorization", &format!("Bearer {AUDITOR}")), ("x-subject-id", KID)],
    )
    .await;
    let (a, b) = (by_path.json(), by_header.json());
    assert_eq!(a["restrictions"], b["restrictions"]);
    assert_eq!(a["person"]["guardians"], json!([MOTHER, FATHER]));
    let r = &a["restrictions"][0];
    assert_eq!(
        (r["kind"].as_str(), r["guardian"].as_str(), r["status"].as_str()),
        (Some("block"), Some(MOTHER), Some("active"))
    );
    assert_eq!(
        (r["issuing_unit"].as_str(), r["created_by"].as_str()),
        (Some(UNIT), Some("BUP"))
    );
    let answers = a["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 6, "two guardians and the subject, two services each");
    let mother_journal = answers
        .iter()
        .find(|x| x["actor"] == MOTHER && x["service"] == "journal")
        .unwrap();
    assert_eq!(mother_journal["reason"], "blocked");
    let own = answers
        .iter()
        .find(|x| x["actor"] == KID && x["service"] == "journal")
        .unwrap();
    assert_eq!(own["reason"], "below_age");

    let audit = i.admin_get(AUDITOR, &format!("/v1/audit?subject={KID}")).await.json();
    let entries = audit["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, vec!["population", "create_restriction"]);
    assert_eq!(
        (entries[1]["by"].as_str(), entries[1]["basis"].as_str()),
        (Some("BUP"), Some("Orosanmälan"))
    );
    assert_eq!(entries[0]["by"], "Navet");
    // Errors: a bad number, none at all.
    let r = i.admin_get(AUDITOR, "/v1/subjects/201509162391").await;
    assert_eq!(
        (r.status, r.error()),
        (400, ("invalid_identifier".into(), Some("subject".into())))
    );
    assert_eq!(
        i.admin_get(AUDITOR, "/v1/audit").await.error().1.as_deref(),
        Some("subject")
    );
    // Someone unknown: no person, no rules, answers still given.
    let unknown = i.admin_get(AUDITOR, &format!("/v1/subjects/{STRANGER}")).await.json();
    assert_eq!(
        (unknown["person"].clone(), unknown["restrictions"].clone()),
        (Value::Null, json!([]))
    );
    i.stop().await;
}

#[tokio::test]
async fn everything_survives_a_restart_and_the_snapshot_file_is_served_to_peers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(dir.path()).await.unwrap();
    let i = Instance::start(store, quick_node(Some(dir.path().to_owned()))).await;
    i.admin_post(POPULATION, "/v1/population", &family()).await;
    let r = i
        .admin_post(UNIT_TOKEN, "/v1/restrictions", &block(Some(MOTHER)).to_string())
        .await;
    assert_eq!(r.status, 201);
    let revision = i.revision();
    // The first start built from the store and wrote a checkpoint.
    for _ in 0..100 {
        if dir.path().join("snapshot").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let file = i.admin_get(PEER, "/v1/snapshot").await;
    assert_eq!(file.status, 200);
    let copy = dir.path().join("copy");
    std::fs::write(&copy, &file.body).unwrap();
    let store = i.service.node().unwrap().store();
    let (id, key) = (store.id().to_owned(), store.snapshot_key().to_vec());
    assert!(key.len() >= 32, "a 256-bit key");
    assert!(
        !file.body.windows(key.len()).any(|w| w == key.as_slice()),
        "the key is never in the file"
    );
    let settings = std::sync::Arc::new(Default::default());
    let snap = guardian_access::node::snapfile::read(&copy, &id, &key, settings).unwrap();
    assert!(snap.revision() <= revision);
    i.stop().await;

    let store = Store::open_sqlite(dir.path()).await.unwrap();
    let i = Instance::start(store, quick_node(Some(dir.path().to_owned()))).await;
    assert_eq!(i.revision(), revision, "the revision survives a restart");
    assert_eq!(now_check(&i, MOTHER, KID, "journal").await["reason"], "blocked");
    let r = i
        .admin_post(UNIT_TOKEN, "/v1/restrictions", &block(Some(FATHER)).to_string())
        .await;
    assert_eq!(r.json()["revision"], revision + 1, "revisions continue where they were");
    let status = support::get(i.check, "/v1/status", &[]).await.json();
    assert_eq!(
        status["store"]["rebuilds"], 0,
        "started from the snapshot file: {status}"
    );
    i.stop().await;
}

#[tokio::test]
async fn a_damaged_snapshot_file_is_refused_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(dir.path()).await.unwrap();
    let i = Instance::start(store, quick_node(Some(dir.path().to_owned()))).await;
    i.admin_post(POPULATION, "/v1/population", &family()).await;
    i.admin_post(UNIT_TOKEN, "/v1/restrictions", &block(Some(MOTHER)).to_string())
        .await;
    i.stop().await;
    let path = dir.path().join("snapshot");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let store = Store::open_sqlite(dir.path()).await.unwrap();
    let i = Instance::start(store, quick_node(Some(dir.path().to_owned()))).await;
    assert_eq!(now_check(&i, MOTHER, KID, "journal").await["reason"], "blocked");
    let status = support::get(i.check, "/v1/status", &[]).await.json();
    assert_eq!(status["store"]["rebuilds"], 1, "{status}");
    i.stop().await;
}

#[tokio::test]
async fn a_check_can_ask_to_read_its_writes() {
    let (_dir, i) = instance().await;
    let now = i.revision();
    let ask =
        |min: u64| json!({"actor": MOTHER, "subject": KID, "service": "journal", "min_revision": min}).to_string();
    let r = support::send(i.check, "POST", "/v1/check", &[], ask(now)).await;
    assert_eq!(r.status, 200);
    let started = std::time::Instant::now();
    let r = support::send(i.check, "POST", "/v1/check", &[], ask(now + 5)).await;
    assert_eq!(
        (r.status, r.error()),
        (503, ("not_ready".into(), Some("min_revision".into())))
    );
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "it waited before giving up"
    );
    // However far ahead it asks, it waits no longer than the setting
    // (200 ms here), with room for a slow machine.
    let started = std::time::Instant::now();
    let r = support::send(i.check, "POST", "/v1/check", &[], ask(u64::MAX)).await;
    assert_eq!(r.status, 503);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    // A batch honours each check's own `min_revision`: not reached, the
    // whole batch is refused ...
    let batch = |min: u64| {
        json!({"checks": [
            {"actor": FATHER, "subject": KID, "service": "journal"},
            {"actor": MOTHER, "subject": KID, "service": "journal", "min_revision": min},
        ]})
        .to_string()
    };
    let r = support::send(i.check, "POST", "/v1/check/batch", &[], batch(now + 5)).await;
    assert_eq!((r.status, r.error().1.as_deref()), (503, Some("min_revision")));
    // ... and a revision committed while it waits is waited for, so the
    // answer reflects the write it names.
    let admin = i.admin;
    let write = tokio::spawn(async move {
        let r = support::send(
            admin,
            "POST",
            "/v1/restrictions",
            &[("authorization", &format!("Bearer {UNIT_TOKEN}"))],
            block(Some(MOTHER)).to_string(),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
    });
    let r = support::send(i.check, "POST", "/v1/check/batch", &[], batch(now + 1)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["results"][1]["reason"], "blocked");
    assert_eq!(r.json()["revision"], now + 1);
    write.await.unwrap();
    let now = i.revision();
    let r = support::send(
        i.check,
        "POST",
        "/v1/check",
        &[],
        r#"{"actor": "197701012382", "subject": "201509162390", "service": "journal", "min_revision": "5"}"#,
    )
    .await;
    assert_eq!((r.status, r.error().1.as_deref()), (400, Some("min_revision")));
    let r = support::get(
        i.check,
        "/v1/authz",
        &[
            ("x-actor-id", MOTHER),
            ("x-subject-id", KID),
            ("x-service", "journal"),
            ("x-min-revision", &(now + 5).to_string()),
        ],
    )
    .await;
    assert_eq!(r.status, 503);
    i.stop().await;
}

#[tokio::test]
async fn a_growing_overlay_is_folded_in_the_background_with_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(dir.path()).await.unwrap();
    let config = guardian_access::node::NodeConfig {
        fold_at: 3,
        ..quick_node(Some(dir.path().to_owned()))
    };
    let i = Instance::start(store, config).await;
    assert_eq!(i.admin_post(POPULATION, "/v1/population", &family()).await.status, 200);
    let before = support::get(i.check, "/v1/status", &[]).await.json()["store"]["folds"]
        .as_u64()
        .unwrap();
    // Restrictions on three subjects and a population change: past fold_at.
    for subject in [KID, TEEN, STRANGER] {
        let mut b = block(None);
        b["subject"] = subject.into();
        assert_eq!(
            i.admin_post(REGISTRAR, "/v1/restrictions", &b.to_string()).await.status,
            201
        );
    }
    let mut folded = Value::Null;
    for _ in 0..200 {
        folded = support::get(i.check, "/v1/status", &[]).await.json();
        if folded["store"]["folds"].as_u64().unwrap() > before && folded["overlay"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(folded["store"]["folds"].as_u64().unwrap() > before, "{folded}");
    assert_eq!(folded["overlay"], 0, "{folded}");
    assert_eq!(folded["rules"], 3);
    assert_eq!(now_check(&i, MOTHER, KID, "journal").await["reason"], "blocked");
    assert_eq!(now_check(&i, TEEN_G1, TEEN, "journal").await["reason"], "aged_out");
    // Writes after the fold land on the new base.
    let r = i
        .admin_post(
            UNIT_TOKEN,
            "/v1/restrictions/2/lift",
            &json!({"issuing_unit": UNIT, "decided_by": {"name": "x"}, "basis": "y", "threat_assessment_done": true})
                .to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(now_check(&i, MOTHER, KID, "journal").await["reason"], "guardian");
    i.stop().await;
}

#[tokio::test]
async fn an_import_too_big_for_an_overlay_is_rebuilt_and_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    let config = || guardian_access::node::NodeConfig {
        max_delta_persons: 10,
        ..quick_node(Some(dir.path().to_owned()))
    };
    let i = Instance::start(Store::open_sqlite(dir.path()).await.unwrap(), config()).await;
    let status = || async { support::get(i.check, "/v1/status", &[]).await.json() };
    let at_start = status().await;
    let mut body = family();
    for n in 0..30u16 {
        let kid = support::pid(2016, 7, 1 + (n % 28) as u8, 1 + n);
        let parent = support::pid(1986, 7, 1 + (n % 28) as u8, 1 + n);
        body.push_str(&format!(
            "{}\n",
            json!({"id": kid.to_string(), "protected": false, "guardians": [parent.to_string()]})
        ));
    }
    let r = i.admin_post(POPULATION, "/v1/population", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let revision = r.json()["revision"].as_u64().unwrap();
    assert_eq!(
        now_check(&i, MOTHER, KID, "journal").await["reason"],
        "guardian",
        "visible at once"
    );
    let mut s = Value::Null;
    for _ in 0..200 {
        s = status().await;
        if s["store"]["checkpoints"].as_u64() > at_start["store"]["checkpoints"].as_u64() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        s["store"]["rebuilds"].as_u64() > at_start["store"]["rebuilds"].as_u64(),
        "rebuilt, not overlaid: {s}"
    );
    assert!(
        s["store"]["checkpoints"].as_u64() > at_start["store"]["checkpoints"].as_u64(),
        "and checkpointed: {s}"
    );
    i.stop().await;
    let i = Instance::start(Store::open_sqlite(dir.path()).await.unwrap(), config()).await;
    let s = support::get(i.check, "/v1/status", &[]).await.json();
    assert_eq!(
        (s["revision"].as_u64(), s["store"]["rebuilds"].as_u64()),
        (Some(revision), Some(0)),
        "{s}"
    );
    i.stop().await;
}

/// The data directory holds the population and the audit trail: it is
/// created `0700` and every file in it is `0600`, SQLite's WAL and
/// shared-memory files and the snapshot file included.
#[tokio::test]
async fn the_data_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = Store::open_sqlite(&data).await.unwrap();
    let i = Instance::start(store, quick_node(Some(data.clone()))).await;
    let r = i.admin_post(POPULATION, "/v1/population", &family()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for _ in 0..200 {
        if data.join("snapshot").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mode(&data), 0o700);
    let mut files = 0;
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        files += 1;
    }
    assert!(
        files >= 4,
        "the database, its WAL and SHM, and the snapshot file: {files}"
    );
    i.stop().await;
    // A directory and a database made too open by hand are closed again.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = data.join(guardian_access::store::SQLITE_FILE);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(Store::open_sqlite(&data).await.unwrap());
    assert_eq!((mode(&data), mode(&db)), (0o700, 0o600));
}

/// Every read of personal data leaves exactly one access-log row naming the
/// reader, the role, the purpose and the subjects; the log is read by
/// auditors only, by subject or time range, and exported as NDJSON.
#[tokio::test]
async fn every_read_of_personal_data_is_in_the_access_log() {
    let (dir, i) = instance().await;
    for _ in 0..200 {
        if dir.path().join("snapshot").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let read = async |token: &str, method: &str, path: &str, body: &str| {
        let headers = [
            ("authorization", format!("Bearer {token}")),
            ("x-purpose", "Ärende 2026-51".to_owned()),
            ("x-subject-id", KID.to_owned()),
        ];
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        support::send(i.admin, method, path, &headers, body.to_owned()).await
    };
    assert_eq!(read(REGISTRAR, "GET", "/v1/subjects", "").await.status, 200);
    assert_eq!(read(AUDITOR, "GET", "/v1/audit", "").await.status, 200);
    let ask = json!({"actor": MOTHER, "subject": KID}).to_string();
    assert_eq!(read(AUDITOR, "POST", "/v1/explain", &ask).await.status, 200);
    assert_eq!(read(PEER, "GET", "/v1/snapshot", "").await.status, 200);
    // Refused reads show nothing and log nothing.
    assert_eq!(read(REGISTRAR, "GET", "/v1/access-log", "").await.status, 403);
    assert_eq!(read(UNIT_TOKEN, "GET", "/v1/subjects", "").await.status, 403);

    let r = read(AUDITOR, "GET", "/v1/access-log", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let entries = r.json()["entries"].as_array().unwrap().clone();
    let seen: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["by"].as_str().unwrap(),
                e["role"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("subject_view", "Kontaktcenter", "registrar"),
            ("audit_view", "Spärr och logg", "auditor"),
            ("explain", "Spärr och logg", "auditor"),
            ("access_log_view", "Spärr och logg", "auditor"),
        ],
        "one row per read, the reading of the log included"
    );
    assert_eq!(
        entries[0]["subjects"],
        json!([KID, MOTHER, FATHER]),
        "the view shows the guardians too"
    );
    assert_eq!(entries[2]["subjects"], json!([KID, MOTHER]));
    assert!(entries.iter().all(|e| e["purpose"] == "Ärende 2026-51"));
    assert_eq!(entries[0]["at"], "2026-11-23T10:00:00+01:00");

    // The whole range, as NDJSON: the snapshot download is there, for everyone.
    let r = read(
        AUDITOR,
        "GET",
        "/v1/access-log/export?from=2026-11-23&to=2026-11-24",
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = r.text().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let actions: Vec<&str> = lines.iter().map(|l| l["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "subject_view",
            "audit_view",
            "explain",
            "snapshot_download",
            "access_log_view",
            "access_log_export"
        ]
    );
    assert_eq!(lines[3]["subjects"], "*");
    let r = read(
        AUDITOR,
        "GET",
        "/v1/access-log/export?from=2026-11-24&to=2026-11-25",
        "",
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, ""), "nothing outside the range");
    let r = read(AUDITOR, "GET", "/v1/access-log/export", "").await;
    assert_eq!((r.status, r.error().1.as_deref()), (400, Some("from")));
    let r = read(AUDITOR, "GET", "/v1/access-log?from=yesterday", "").await;
    assert_eq!((r.status, r.error().1.as_deref()), (400, Some("from")));
    i.stop().await;
}

/// A check walks its subject's rules to find when its answer changes; a
/// unit's token must not be able to make that walk long. The cap counts
/// rules in force or pending, so a lifted or ended one frees its place.
#[tokio::test]
async fn one_subject_has_at_most_sixteen_rules_in_force() {
    let (_dir, i) = instance().await;
    let limit = guardian_access::store::MAX_RULES_IN_FORCE;
    let mut ids = Vec::new();
    for n in 0..limit {
        let mut b = block(Some(if n % 2 == 0 { MOTHER } else { FATHER }));
        b["reference"] = format!("Dnr 2026-{n}").into();
        let r = i.admin_post(UNIT_TOKEN, "/v1/restrictions", &b.to_string()).await;
        assert_eq!(r.status, 201, "{}", r.text());
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    let before = i.revision();
    let r = i
        .admin_post(UNIT_TOKEN, "/v1/restrictions", &block(Some(MOTHER)).to_string())
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    let (code, field) = r.error();
    assert_eq!((code.as_str(), field.as_deref()), ("invalid_request", Some("subject")));
    assert!(r.text().contains("16"), "{}", r.text());
    assert_eq!(i.revision(), before, "a refused rule writes nothing");
    // Another subject is not affected.
    let mut teen = block(Some(TEEN_G1));
    teen["subject"] = TEEN.into();
    assert_eq!(
        i.admin_post(UNIT_TOKEN, "/v1/restrictions", &teen.to_string())
            .await
            .status,
        201
    );
    // Lifting one frees its place.
    let lift = json!({"issuing_unit": UNIT, "decided_by": {"name": "Verksamhetschef"}, "basis": "Hotbild kontrollerad",
                      "threat_assessment_done": true, "unit_request_reference": "Begäran 2026-9"});
    let r = i
        .admin_post(
            UNIT_TOKEN,
            &format!("/v1/restrictions/{}/lift", ids[0]),
            &lift.to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = i
        .admin_post(UNIT_TOKEN, "/v1/restrictions", &block(Some(MOTHER)).to_string())
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(now_check(&i, MOTHER, KID, "journal").await["reason"], "blocked");
}
