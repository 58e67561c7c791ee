//! The durable store, against SQLite and (see `postgres`) PostgreSQL: the
//! same cases, the same expectations.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cases;

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
    let conn = rusqlite::Connection::open(dir.path().join(guardian_access::store::SQLITE_FILE)).unwrap();
    for sql in [
        "UPDATE audit SET actor = 'someone else'",
        "DELETE FROM audit",
        "UPDATE person_history SET protected = 1",
        "DELETE FROM person_history",
    ] {
        let e = conn.execute(sql, []).unwrap_err().to_string();
        assert!(e.contains("never"), "{sql}: {e}");
    }
    let audit = store.audit_of(cases::pid(cases::KID)).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].actor, "Kontaktcenter");
}
