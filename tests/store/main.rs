//! The durable store, against SQLite and (see `postgres`) PostgreSQL: the
//! same cases, the same expectations.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cases;
#[path = "../support/pg.rs"]
mod pg;

use guardian_access::store::Store;

async fn sqlite() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(dir.path()).await.unwrap();
    (dir, store)
}

macro_rules! sqlite_cases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let (_dir, store) = super::sqlite().await;
                    super::cases::$name(store).await;
                }
            )*
        }
    };
}

sqlite_cases!(
    revisions_are_gapless_and_every_write_is_audited,
    a_block_must_name_a_registered_guardian,
    lifting_follows_the_rules,
    urgent_restrictions_wait_for_their_form,
    an_import_is_all_or_nothing,
    facts_are_taken_as_they_stood,
    the_access_log_is_kept_until_pruned,
    the_outbox_sends_each_mail_once_until_accepted,
);

#[tokio::test]
async fn sqlite_the_revision_and_everything_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    cases::the_revision_and_everything_survive_reopening(async || Store::open_sqlite(&path).await.unwrap()).await;
}

#[tokio::test]
async fn sqlite_audit_entries_can_never_change() {
    let (dir, store) = sqlite().await;
    cases::import(&store, vec![cases::family()], true).await.unwrap();
    cases::log_a_read(&store).await;
    let conn = rusqlite::Connection::open(dir.path().join(guardian_access::store::SQLITE_FILE)).unwrap();
    for sql in [
        "UPDATE audit SET actor = 'someone else'",
        "DELETE FROM audit",
        "UPDATE person_history SET protected = 1",
        "DELETE FROM person_history",
        "UPDATE access_log SET actor = 'someone else'",
        "DELETE FROM access_log",
        "DELETE FROM access_log_subjects",
    ] {
        let e = conn.execute(sql, []).unwrap_err().to_string();
        assert!(e.contains("never"), "{sql}: {e}");
    }
    let audit = store.audit_of(cases::pid(cases::KID)).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].actor, "Kontaktcenter");
}

/// The same cases against a throwaway PostgreSQL, one database each.
mod postgres {
    use guardian_access::store::Store;

    use super::{cases, pg};

    #[tokio::test]
    async fn every_case_holds_on_postgres_too() {
        let Some(cluster) = pg::Cluster::start() else { return };
        let mut n = 0;
        let mut db = async || {
            n += 1;
            Store::open_postgres(&cluster.database(&format!("case{n}")).await)
                .await
                .unwrap()
        };
        cases::revisions_are_gapless_and_every_write_is_audited(db().await).await;
        cases::a_block_must_name_a_registered_guardian(db().await).await;
        cases::lifting_follows_the_rules(db().await).await;
        cases::urgent_restrictions_wait_for_their_form(db().await).await;
        cases::an_import_is_all_or_nothing(db().await).await;
        cases::facts_are_taken_as_they_stood(db().await).await;
        cases::the_access_log_is_kept_until_pruned(db().await).await;
        cases::the_outbox_sends_each_mail_once_until_accepted(db().await).await;
        let url = cluster.database("reopen").await;
        cases::the_revision_and_everything_survive_reopening(async || Store::open_postgres(&url).await.unwrap()).await;
    }

    #[tokio::test]
    async fn postgres_audit_entries_can_never_change() {
        let Some(cluster) = pg::Cluster::start() else { return };
        let url = cluster.database("audit").await;
        let store = Store::open_postgres(&url).await.unwrap();
        cases::import(&store, vec![cases::family()], true).await.unwrap();
        cases::log_a_read(&store).await;
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        for sql in [
            "UPDATE audit SET actor = 'someone else'",
            "DELETE FROM audit",
            "TRUNCATE audit",
            "UPDATE person_history SET protected = true",
            "DELETE FROM person_history",
            "UPDATE access_log SET actor = 'someone else'",
            "DELETE FROM access_log",
            "TRUNCATE access_log",
            "DELETE FROM access_log_subjects",
        ] {
            let e = client.batch_execute(sql).await.unwrap_err();
            let msg = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
            assert!(msg.contains("never changed or removed"), "{sql}: {msg}");
        }
        assert_eq!(store.audit_of(cases::pid(cases::KID)).await.unwrap().len(), 1);
    }

    /// PostgreSQL over TLS (SPEC §8): `verify-full` with the CA works and
    /// checks who answers; `require` encrypts; plain TCP is refused by this
    /// TLS-only cluster; a certificate from another CA is refused.
    #[tokio::test]
    async fn postgres_over_tls() {
        let Some((cluster, ca)) = pg::Cluster::start_tls() else {
            return;
        };
        let url = cluster.database("tls").await;
        let verified = format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display());
        let store = Store::open_postgres(&verified).await.unwrap();
        cases::import(&store, vec![cases::family()], true).await.unwrap();
        assert_eq!(store.revision().await.unwrap(), 1);
        let encrypted = Store::open_postgres(&format!("{url}?sslmode=require")).await.unwrap();
        assert_eq!(encrypted.revision().await.unwrap(), 1);
        let plain = Store::open_postgres(&format!("{url}?sslmode=disable")).await;
        assert!(plain.is_err(), "plain TCP was accepted");
        let elsewhere = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let other = params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
        let other_ca = elsewhere.path().join("other-ca.pem");
        std::fs::write(&other_ca, other.pem()).unwrap();
        let wrong = format!("{url}?sslmode=verify-full&sslrootcert={}", other_ca.display());
        assert!(
            Store::open_postgres(&wrong).await.is_err(),
            "another CA's server was trusted"
        );
        let e = Store::open_postgres(&format!("{url}?sslmode=verify-full"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("sslrootcert"), "{e}");
    }

    #[tokio::test]
    async fn a_fleet_starting_at_once_migrates_once() {
        let Some(cluster) = pg::Cluster::start() else { return };
        let url = cluster.database("migrate").await;
        let opened = futures_util::future::join_all((0..6).map(|_| Store::open_postgres(&url))).await;
        let ids: std::collections::HashSet<String> = opened.into_iter().map(|s| s.unwrap().id().to_owned()).collect();
        assert_eq!(ids.len(), 1, "one store, one id");
    }
}
