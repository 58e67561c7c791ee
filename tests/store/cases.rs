//! Store behaviour, written once and run against every backend.

use guardian_access::PersonRecord;
use guardian_access::actor::{Caller, Role};
use guardian_access::core::identity::Pid;
use guardian_access::core::model::{HsaId, Rule, RuleId, RuleKind, Services};
use guardian_access::core::time::Instant;
use guardian_access::store::{
    Changes, ConfirmRequest, Family, ImportMsg, LiftRequest, NewRule, RuleMeta, Store, StoreError,
};
use tokio::sync::mpsc;

pub const KID: &str = "201509162390";
pub const MOTHER: &str = "197701012382";
pub const FATHER: &str = "198001022386";
pub const STRANGER: &str = "198501022381";
pub const UNIT: &str = "SE2321000131-E000000000001";
pub const OTHER_UNIT: &str = "SE2321000131-E000000000002";

pub fn pid(s: &str) -> Pid {
    Pid::parse(s, jiff::civil::date(2026, 11, 23)).unwrap()
}

pub fn registrar() -> Caller {
    Caller {
        name: "Kontaktcenter".into(),
        role: Role::Registrar,
        unit: None,
        hsa_id: None,
    }
}

pub fn family() -> Vec<PersonRecord> {
    vec![PersonRecord {
        id: pid(KID),
        birth_date: None,
        protected: false,
        guardians: vec![pid(MOTHER), pid(FATHER)],
    }]
}

pub fn block(guardian: Option<&str>, urgent: bool) -> NewRule {
    NewRule {
        rule: Rule {
            id: RuleId(0),
            kind: RuleKind::Block,
            subject: pid(KID),
            guardian: guardian.map(pid),
            services: Services::BOTH,
            valid_from: Instant::from_nanos(1_700_000_000_000_000_000),
            valid_until: None,
            lifted_at: None,
            care_units: None,
        },
        meta: RuleMeta {
            issuing_unit: HsaId::parse(UNIT).unwrap(),
            decided_by: serde_json::json!({"name": "Verksamhetschef"}),
            requested_by: None,
            basis: "orosanmälan".into(),
            urgent,
            reference: Some("Dnr 1".into()),
        },
    }
}

pub fn lift_by(unit: &str, family: Family) -> LiftRequest {
    LiftRequest {
        family,
        issuing_unit: HsaId::parse(unit).unwrap(),
        decided_by: serde_json::json!({"name": "Verksamhetschef"}),
        basis: "hotbild kontrollerad".into(),
        threat_assessment_done: true,
        unit_request_reference: Some("Blankett 1".into()),
    }
}

pub async fn import(
    store: &Store,
    batches: Vec<Vec<PersonRecord>>,
    commit: bool,
) -> Result<guardian_access::store::Imported, StoreError> {
    let (tx, rx) = mpsc::channel(4);
    let send = async move {
        for b in batches {
            tx.send(ImportMsg::Batch(b)).await.unwrap();
        }
        if commit {
            tx.send(ImportMsg::End).await.unwrap();
        }
    };
    let by = registrar();
    let (r, ()) = tokio::join!(store.import(rx, &by), send);
    r
}

pub async fn revisions_are_gapless_and_every_write_is_audited(store: Store) {
    assert_eq!(store.revision().await.unwrap(), 0);
    let imported = import(&store, vec![family()], true).await.unwrap();
    assert_eq!((imported.revision, imported.upserted, imported.changed), (1, 1, 1));
    let c = store
        .create_rule(block(Some(MOTHER), false), true, &registrar())
        .await
        .unwrap();
    assert_eq!(c.revision, 2);
    assert_eq!(
        c.rule_id,
        Some(RuleId(2)),
        "a rule's id is the revision that created it"
    );
    let Changes::Delta {
        revision,
        persons,
        rules,
        digest,
    } = store.changes(0, None, 1000).await.unwrap()
    else {
        panic!("expected a delta")
    };
    assert_eq!(revision, 2);
    // Each revision has a digest of the history up to it: the same history
    // follows on, any other is noticed.
    let digest = digest.expect("a digest of revision 2");
    assert_eq!(digest.len(), 64);
    assert!(matches!(
        store.changes(2, Some(digest.clone()), 1000).await.unwrap(),
        Changes::UpToDate(2)
    ));
    assert!(
        matches!(store.changes(2, Some("0".repeat(64)), 1000).await, Ok(Changes::Diverged(why)) if why.contains("history")),
        "another history at the same revision"
    );
    let loaded = store.load().await.unwrap();
    assert_eq!(
        loaded.digest.as_deref(),
        Some(digest.as_str()),
        "a full load carries the head's digest"
    );
    let Changes::Delta { digest: from_one, .. } = store.changes(1, None, 1000).await.unwrap() else {
        panic!("expected a delta")
    };
    assert_eq!(from_one.as_deref(), Some(digest.as_str()));

    assert_eq!(persons, family());
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].guardian, Some(pid(MOTHER)));
    assert!(matches!(
        store.changes(2, None, 1000).await.unwrap(),
        Changes::UpToDate(2)
    ));
    assert!(
        matches!(store.changes(1, None, 1000).await.unwrap(), Changes::Delta { persons, .. } if persons.is_empty())
    );
    assert!(matches!(store.changes(0, None, 0).await.unwrap(), Changes::TooMany(2)));
    assert!(
        matches!(store.changes(3, None, 1000).await, Ok(Changes::Diverged(_))),
        "a snapshot ahead of its store"
    );

    let audit = store.audit_of(pid(KID)).await.unwrap();
    let actions: Vec<(u64, &str)> = audit.iter().map(|e| (e.revision, e.action.as_str())).collect();
    assert_eq!(actions, vec![(1, "population"), (2, "create_restriction")]);
    assert_eq!(audit[1].actor, "Kontaktcenter");
    assert_eq!(audit[1].detail["basis"], "orosanmälan");
    assert_eq!(audit[0].detail["guardians"], serde_json::json!([MOTHER, FATHER]));
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded.revision, 2);
    assert_eq!(loaded.rules.len(), 1);
    assert_eq!(loaded.people.len(), 1);
}

pub async fn a_block_must_name_a_registered_guardian(store: Store) {
    import(&store, vec![family()], true).await.unwrap();
    let e = store
        .create_rule(block(Some(STRANGER), false), true, &registrar())
        .await;
    assert!(matches!(e, Err(StoreError::NotGuardian)), "{e:?}");
    assert_eq!(
        store.revision().await.unwrap(),
        1,
        "nothing was written, not even a revision"
    );
    assert!(store.rules_of(pid(KID)).await.unwrap().is_empty());
    store
        .create_rule(block(Some(FATHER), false), true, &registrar())
        .await
        .unwrap();
    store
        .create_rule(block(None, false), false, &registrar())
        .await
        .unwrap();
    assert_eq!(store.rules_of(pid(KID)).await.unwrap().len(), 2);
}

pub async fn lifting_follows_the_rules(store: Store) {
    import(&store, vec![family()], true).await.unwrap();
    let id = store
        .create_rule(block(None, false), false, &registrar())
        .await
        .unwrap()
        .rule_id
        .unwrap();
    let before = store.revision().await.unwrap();
    for (req, id, want) in [
        (lift_by(OTHER_UNIT, Family::Restriction), id, "WrongUnit"),
        (lift_by(UNIT, Family::Grant), id, "NotFound"),
        (lift_by(UNIT, Family::Restriction), RuleId(999), "NotFound"),
    ] {
        let e = store.lift(id, req, &registrar()).await.unwrap_err();
        assert_eq!(format!("{e:?}"), want);
    }
    assert_eq!(store.revision().await.unwrap(), before, "refused lifts write nothing");
    let lifted = store
        .lift(id, lift_by(UNIT, Family::Restriction), &registrar())
        .await
        .unwrap();
    assert_eq!(lifted.revision, before + 1);
    let e = store
        .lift(id, lift_by(UNIT, Family::Restriction), &registrar())
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::AlreadyLifted));
    let stored = &store.rules_of(pid(KID)).await.unwrap()[0];
    assert!(stored.rule.lifted_at.is_some());
    assert_eq!(stored.lift.as_ref().unwrap()["threat_assessment_done"], true);
    assert_eq!(stored.lift.as_ref().unwrap()["by"], "Kontaktcenter");
    assert_eq!(stored.revision, lifted.revision);
    let Changes::Delta { rules, .. } = store.changes(before, None, 10).await.unwrap() else {
        panic!()
    };
    assert_eq!(rules.len(), 1);
    assert!(
        rules[0].lifted_at.is_some(),
        "the change log carries the rule as it is now"
    );
}

pub async fn urgent_restrictions_wait_for_their_form(store: Store) {
    let confirm = |unit: &str| ConfirmRequest {
        issuing_unit: HsaId::parse(unit).unwrap(),
        decided_by: serde_json::json!({"name": "Verksamhetschef"}),
        form_reference: "Blankett 7".into(),
        unit_request_reference: None,
    };
    let plain = store
        .create_rule(block(None, false), false, &registrar())
        .await
        .unwrap()
        .rule_id
        .unwrap();
    let urgent = store
        .create_rule(block(None, true), false, &registrar())
        .await
        .unwrap()
        .rule_id
        .unwrap();
    assert!(matches!(
        store.confirm(plain, confirm(UNIT), &registrar()).await,
        Err(StoreError::NotPending)
    ));
    assert!(matches!(
        store.confirm(urgent, confirm(OTHER_UNIT), &registrar()).await,
        Err(StoreError::WrongUnit)
    ));
    let rules = store.rules_of(pid(KID)).await.unwrap();
    assert!(
        rules
            .iter()
            .find(|r| r.rule.id == urgent)
            .unwrap()
            .confirmation_pending()
    );
    store.confirm(urgent, confirm(UNIT), &registrar()).await.unwrap();
    let rules = store.rules_of(pid(KID)).await.unwrap();
    let r = rules.iter().find(|r| r.rule.id == urgent).unwrap();
    assert!(!r.confirmation_pending());
    assert_eq!(r.confirmation.as_ref().unwrap()["form_reference"], "Blankett 7");
    assert!(matches!(
        store.confirm(urgent, confirm(UNIT), &registrar()).await,
        Err(StoreError::NotPending)
    ));
}

pub async fn an_import_is_all_or_nothing(store: Store) {
    import(&store, vec![family()], true).await.unwrap();
    let changed = PersonRecord {
        protected: true,
        guardians: vec![pid(MOTHER)],
        ..family()[0].clone()
    };
    // Abandoned after a batch: nothing of it stays.
    let e = import(&store, vec![vec![changed.clone()]], false).await;
    assert!(matches!(e, Err(StoreError::Aborted)), "{e:?}");
    assert_eq!(store.revision().await.unwrap(), 1);
    assert_eq!(store.person(pid(KID)).await.unwrap().unwrap().record, family()[0]);
    // The same records again change nothing; a later line for the same
    // person wins.
    let again = import(&store, vec![family()], true).await.unwrap();
    assert_eq!((again.upserted, again.changed), (1, 0));
    let twice = import(&store, vec![vec![family()[0].clone()], vec![changed.clone()]], true)
        .await
        .unwrap();
    assert_eq!(twice.upserted, 2);
    let stored = store.person(pid(KID)).await.unwrap().unwrap();
    assert_eq!(stored.record, changed);
    assert_eq!(stored.revision, twice.revision);
    let audit = store.audit_of(pid(KID)).await.unwrap();
    assert_eq!(audit.len(), 2, "two imports changed the record, one did not: {audit:?}");
    assert_eq!(audit[1].detail["protected"], true);
}

pub async fn the_revision_and_everything_survive_reopening(open: impl AsyncFn() -> Store) {
    let store = open().await;
    import(&store, vec![family()], true).await.unwrap();
    store
        .create_rule(block(None, false), false, &registrar())
        .await
        .unwrap();
    let id = store.id().to_owned();
    drop(store);
    let store = open().await;
    assert_eq!(store.id(), id, "the store id is stable");
    assert_eq!(store.revision().await.unwrap(), 2);
    let next = store
        .create_rule(block(None, false), false, &registrar())
        .await
        .unwrap();
    assert_eq!(next.revision, 3);
    assert_eq!(store.rules_of(pid(KID)).await.unwrap().len(), 2);
}

/// The facts of a pair as they stood at each revision: the records from the
/// history, rules created later left out, lifts made later undone.
pub async fn facts_are_taken_as_they_stood(store: Store) {
    import(&store, vec![family()], true).await.unwrap(); // 1
    let id = store
        .create_rule(block(Some(MOTHER), false), true, &registrar())
        .await
        .unwrap()
        .rule_id
        .unwrap(); // 2
    store
        .lift(id, lift_by(UNIT, Family::Restriction), &registrar())
        .await
        .unwrap(); // 3
    let mut changed = family();
    changed[0].guardians = vec![pid(FATHER)];
    changed[0].protected = true;
    import(&store, vec![changed], true).await.unwrap(); // 4

    let at = |r| {
        let store = store.clone();
        async move { store.facts(pid(KID), pid(MOTHER), r).await.unwrap() }
    };
    let (revision, records, rules) = at(Some(1)).await;
    assert_eq!((revision, rules.len()), (1, 0));
    let kid = records.iter().find(|r| r.id == pid(KID)).unwrap();
    assert_eq!((kid.guardians.len(), kid.protected), (2, false));
    let (_, _, rules) = at(Some(2)).await;
    assert_eq!((rules.len(), rules[0].lifted_at), (1, None), "not lifted yet at 2");
    let (_, _, rules) = at(Some(3)).await;
    assert!(rules[0].lifted_at.is_some(), "lifted at 3");
    let (revision, records, rules) = at(None).await;
    assert_eq!(revision, 4);
    assert!(rules[0].lifted_at.is_some());
    let kid = records.iter().find(|r| r.id == pid(KID)).unwrap();
    assert_eq!((kid.guardians.clone(), kid.protected), (vec![pid(FATHER)], true));
    assert!(matches!(
        store.facts(pid(KID), pid(MOTHER), Some(5)).await,
        Err(StoreError::FutureRevision(4))
    ));
}

/// The access log: appended with its subjects, read by subject or range,
/// never changed, removed only by a pruning, which is itself logged.
pub async fn the_access_log_is_kept_until_pruned(store: Store) {
    use guardian_access::clock::Clock;
    use guardian_access::store::{Access, AccessQuery, Subjects};
    let at = |s: &str| Instant::from_timestamp(s.parse().unwrap()).unwrap();
    let old = store.clone().with_clock(Clock::manual(at("2014-05-01T08:00:00Z")));
    let new = store.clone().with_clock(Clock::manual(at("2026-11-23T09:00:00Z")));
    let by = registrar();
    let read = |subjects| Access {
        by: &by,
        action: "subject_view",
        subjects,
        purpose: Some("Ärende 12"),
        detail: serde_json::json!({}),
    };
    let (both, kid_only) = ([pid(KID), pid(MOTHER)], [pid(KID)]);
    let first = old.log_access(read(Subjects::Some(&both))).await.unwrap();
    let second = new.log_access(read(Subjects::Some(&kid_only))).await.unwrap();
    new.log_access(read(Subjects::Everyone)).await.unwrap();
    assert!(second > first);
    assert_eq!(store.revision().await.unwrap(), 0, "reads take no revision");
    let all = |subject| AccessQuery {
        subject,
        from: Instant::from_nanos(i64::MIN),
        to: Instant::MAX,
        after: 0,
        limit: 100,
    };
    let kid = store.access_log(all(Some(pid(KID)))).await.unwrap();
    assert_eq!(kid.len(), 2);
    assert_eq!(kid[0].subjects, vec![pid(KID), pid(MOTHER)]);
    assert_eq!(
        (kid[0].actor.as_str(), kid[0].purpose.as_deref()),
        ("Kontaktcenter", Some("Ärende 12"))
    );
    assert_eq!(store.access_log(all(Some(pid(MOTHER)))).await.unwrap().len(), 1);
    let everything = store.access_log(all(None)).await.unwrap();
    assert_eq!(everything.len(), 3);
    assert!(everything[2].everyone);
    let recent = AccessQuery {
        from: at("2020-01-01T00:00:00Z"),
        ..all(None)
    };
    assert_eq!(store.access_log(recent).await.unwrap().len(), 2);
    let page = AccessQuery {
        limit: 1,
        after: first,
        ..all(None)
    };
    assert_eq!(store.access_log(page).await.unwrap()[0].id, second);

    // Pruning removes what is older than the boundary, and says so.
    let removed = new.prune_access_log(at("2015-01-01T00:00:00Z"), &by).await.unwrap();
    assert_eq!(removed, 1);
    let left = store.access_log(all(None)).await.unwrap();
    assert_eq!(left.len(), 3);
    assert_eq!(left.last().unwrap().action, "prune_access_log");
    assert_eq!(store.access_log(all(Some(pid(MOTHER)))).await.unwrap().len(), 0);
}

/// One access-log entry, for the append-only checks.
pub async fn log_a_read(store: &Store) {
    let by = registrar();
    let access = guardian_access::store::Access {
        by: &by,
        action: "audit_view",
        subjects: guardian_access::store::Subjects::Some(&[pid(KID)]),
        purpose: None,
        detail: serde_json::json!({}),
    };
    store.log_access(access).await.unwrap();
}

/// The console's outbox: a mail is queued with its write and only then,
/// claimed by one sender at a time, retried after a failure, and done
/// once accepted; the worklist and a unit's list read the rules it needs.
pub async fn the_outbox_sends_each_mail_once_until_accepted(store: Store) {
    use guardian_access::store::MailDraft;
    import(&store, vec![family()], true).await.unwrap();
    let draft = MailDraft {
        to: vec!["ssk@region.example".into()],
        what: "Blockering registrerad".into(),
        reference: Some("BUP 2026-117".into()),
    };
    // A refused write queues nothing.
    let refused = store
        .create_rule_mailing(block(Some(STRANGER), true), true, &registrar(), Some(draft.clone()))
        .await;
    assert!(matches!(refused, Err(StoreError::NotGuardian)), "{refused:?}");
    assert!(store.claim_mail(10).await.unwrap().is_empty());

    let id = store
        .create_rule_mailing(block(Some(MOTHER), true), true, &registrar(), Some(draft))
        .await
        .unwrap()
        .revision;
    let queued = store.mails_of(vec![id]).await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!((queued[0].attempts, queued[0].sent_at), (0, None));

    let claimed = store.claim_mail(10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].recipients, vec!["ssk@region.example".to_owned()]);
    assert!(claimed[0].body.contains(&format!("Id: {id}")) && claimed[0].body.contains("BUP 2026-117"));
    assert!(!claimed[0].body.contains(&KID[2..]) && !claimed[0].subject.contains(&KID[2..]));
    assert!(
        store.claim_mail(10).await.unwrap().is_empty(),
        "claimed: no second sender gets it"
    );

    // A failure lets it go, to be tried again when due.
    store
        .mail_failed(claimed[0].id, Instant::from_nanos(0), "421 try later".into())
        .await
        .unwrap();
    let again = store.claim_mail(10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    store.mail_sent(again[0].id).await.unwrap();
    assert!(store.claim_mail(10).await.unwrap().is_empty(), "sent once");
    let done = store.mails_of(vec![id]).await.unwrap();
    assert!(done[0].sent_at.is_some() && done[0].attempts == 1);

    // The worklist: the urgent one until its form is recorded.
    let waiting = store.awaiting_form().await.unwrap();
    assert_eq!(waiting.iter().map(|r| r.rule.id.0).collect::<Vec<_>>(), vec![id]);
    let unit = HsaId::parse(UNIT).unwrap();
    assert_eq!(store.rules_of_unit(unit.clone(), 10).await.unwrap().len(), 1);
    assert!(
        store
            .rules_of_unit(HsaId::parse(OTHER_UNIT).unwrap(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    store
        .confirm(
            RuleId(id),
            ConfirmRequest {
                issuing_unit: unit,
                decided_by: serde_json::json!({"name": "Verksamhetschef"}),
                form_reference: "F-1".into(),
                unit_request_reference: None,
            },
            &registrar(),
        )
        .await
        .unwrap();
    assert!(store.awaiting_form().await.unwrap().is_empty());
}
