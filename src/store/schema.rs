//! The schema, written once for both backends: the tables are the same;
//! only a few spellings differ (SQLite's rowid key and `WITHOUT ROWID`,
//! and how an append-only trigger is written).

pub(crate) use super::sql::Dialect;

/// The migrations, one entry per schema version; never change a released
/// one, add one.
pub(crate) fn migrations(d: Dialect) -> Vec<String> {
    vec![
        version_1(d),
        version_2(d),
        version_3(d),
        version_4(d),
        version_5(d),
        version_6(d),
    ]
}

/// The console's confirmation e-mails (SPEC §9): an outbox written in the
/// same transaction as the write it confirms, and every attempt to send
/// one, appended to `mail_attempts` (never changed or removed). A message
/// holds a case reference, a rule id, what and when: never a number or a
/// name. `claimed_until` keeps two instances of a fleet from sending the
/// same message at once.
fn version_6(d: Dialect) -> String {
    let (id, int) = match d {
        Dialect::Sqlite => ("id INTEGER PRIMARY KEY", "INTEGER"),
        Dialect::Postgres => ("id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "BIGINT"),
    };
    let mut sql = format!(
        r#"
CREATE TABLE outbox (
    {id},
    created_at {int} NOT NULL,
    rule_id {int} NOT NULL,
    recipients TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts {int} NOT NULL,
    next_at {int} NOT NULL,
    claimed_until {int},
    sent_at {int}
);
CREATE INDEX outbox_due ON outbox (sent_at, next_at);
CREATE INDEX outbox_by_rule ON outbox (rule_id);
CREATE TABLE mail_attempts (
    {id},
    mail {int} NOT NULL,
    at {int} NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX mail_attempts_by_mail ON mail_attempts (mail);
"#
    );
    sql.push_str(&append_only(d, &["mail_attempts"], false));
    sql
}

/// Each revision's digest, chained from the one before (SHA-256 of the
/// previous digest and this revision's change and audit records): a node
/// compares the digest of the revision it is at with the store's on every
/// catch-up, so a store whose history differs from what the node read (an
/// asynchronous standby promoted after a failover) is noticed. Revisions
/// written before this version have none; the chain starts after them.
fn version_5(_d: Dialect) -> String {
    "ALTER TABLE changes ADD COLUMN digest TEXT;\n".to_owned()
}

/// Writes by people identified by a client certificate record their HSA-ID
/// beside their name (SPEC §8).
fn version_4(_d: Dialect) -> String {
    "ALTER TABLE audit ADD COLUMN actor_hsa_id TEXT;\n".to_owned()
}

/// The key that authenticates this store's snapshot files (SPEC §8): made
/// at migration, kept only here.
fn version_3(_d: Dialect) -> String {
    "ALTER TABLE meta ADD COLUMN snapshot_key TEXT;\n".to_owned()
}

/// The access log (SPEC §8, Patientdatalagen 4 kap. 3 §): one row for every
/// read of personal data, its subjects indexed for a patient's log extract.
/// Rows are never changed; they are removed only by `prune-access-log`,
/// which first records the boundary in `access_log_prunes` (the triggers
/// refuse any other removal).
fn version_2(d: Dialect) -> String {
    let (id, int) = match d {
        Dialect::Sqlite => ("id INTEGER PRIMARY KEY", "INTEGER"),
        Dialect::Postgres => ("id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "BIGINT"),
    };
    let without_rowid = if d == Dialect::Sqlite { " WITHOUT ROWID" } else { "" };
    let mut sql = format!(
        r#"
CREATE TABLE access_log (
    {id},
    at {int} NOT NULL,
    actor TEXT NOT NULL,
    hsa_id TEXT,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    subjects TEXT NOT NULL,
    purpose TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX access_log_by_at ON access_log (at);
CREATE TABLE access_log_subjects (
    subject {int} NOT NULL,
    entry {int} NOT NULL,
    PRIMARY KEY (subject, entry)
){without_rowid};
CREATE TABLE access_log_prunes (
    before {int} NOT NULL,
    at {int} NOT NULL,
    actor TEXT NOT NULL
);
"#
    );
    // Removal is allowed only below the newest pruning boundary.
    let kept = "coalesce((SELECT max(before) FROM access_log_prunes), 0)";
    match d {
        Dialect::Sqlite => {
            for t in ["access_log", "access_log_subjects"] {
                sql.push_str(&format!(
                    "CREATE TRIGGER {t}_never_changes BEFORE UPDATE ON {t}\n    \
                     BEGIN SELECT RAISE(ABORT, 'access log entries are never changed or removed'); END;\n"
                ));
            }
            sql.push_str(&format!(
                "CREATE TRIGGER access_log_kept BEFORE DELETE ON access_log WHEN old.at >= {kept}\n    \
                 BEGIN SELECT RAISE(ABORT, 'access log entries are never changed or removed before they are pruned'); END;\n\
                 CREATE TRIGGER access_log_subjects_kept BEFORE DELETE ON access_log_subjects\n    \
                 WHEN (SELECT at FROM access_log WHERE id = old.entry) >= {kept}\n    \
                 BEGIN SELECT RAISE(ABORT, 'access log entries are never changed or removed before they are pruned'); END;\n"
            ));
        }
        Dialect::Postgres => {
            sql.push_str(&format!(
                "CREATE FUNCTION guardian_access_access_log_kept() RETURNS trigger LANGUAGE plpgsql AS $$\n\
                 BEGIN\n\
                 IF TG_OP <> 'DELETE' THEN RAISE EXCEPTION 'access log entries are never changed or removed'; END IF;\n\
                 IF TG_TABLE_NAME = 'access_log' THEN\n\
                   IF OLD.at >= {kept} THEN RAISE EXCEPTION 'access log entries are never changed or removed before they are pruned'; END IF;\n\
                 ELSIF (SELECT at FROM access_log WHERE id = OLD.entry) >= {kept} THEN\n\
                   RAISE EXCEPTION 'access log entries are never changed or removed before they are pruned';\n\
                 END IF;\n\
                 RETURN OLD;\nEND $$;\n"
            ));
            for t in ["access_log", "access_log_subjects"] {
                sql.push_str(&format!(
                    "CREATE TRIGGER {t}_kept BEFORE UPDATE OR DELETE ON {t}\n    \
                     FOR EACH ROW EXECUTE FUNCTION guardian_access_access_log_kept();\n\
                     CREATE TRIGGER {t}_no_truncate BEFORE TRUNCATE ON {t}\n    \
                     FOR EACH STATEMENT EXECUTE FUNCTION guardian_access_append_only();\n"
                ));
            }
        }
    }
    sql.push_str(&append_only(d, &["access_log_prunes"], false));
    sql
}

fn version_1(d: Dialect) -> String {
    // In SQLite only `INTEGER PRIMARY KEY` is the rowid itself (no second
    // index); in PostgreSQL a key wants `BIGINT`.
    let (key, int, bool_, without_rowid) = match d {
        Dialect::Sqlite => ("INTEGER", "INTEGER", "INTEGER", " WITHOUT ROWID"),
        Dialect::Postgres => ("BIGINT", "BIGINT", "BOOLEAN", ""),
    };
    let mut sql = format!(
        r#"
CREATE TABLE meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    store_id TEXT NOT NULL,
    revision {int} NOT NULL
);
CREATE TABLE changes (
    revision {key} PRIMARY KEY,
    at {int} NOT NULL,
    kind TEXT NOT NULL,
    persons {int} NOT NULL,
    rules {int} NOT NULL
);
CREATE TABLE persons (
    id {key} PRIMARY KEY,
    birth_date TEXT,
    protected {bool_} NOT NULL,
    guardians TEXT NOT NULL,
    revision {int} NOT NULL
);
CREATE TABLE person_history (
    revision {int} NOT NULL,
    seq {int} NOT NULL,
    id {int} NOT NULL,
    birth_date TEXT,
    protected {bool_} NOT NULL,
    guardians TEXT NOT NULL,
    PRIMARY KEY (revision, seq)
){without_rowid};
CREATE INDEX person_history_by_person ON person_history (id, revision);
CREATE TABLE rules (
    id {key} PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('block', 'seal', 'extended_access', 'early_access')),
    subject {int} NOT NULL,
    guardian {int},
    services {int} NOT NULL,
    valid_from {int} NOT NULL,
    valid_until {int},
    lifted_at {int},
    care_units TEXT,
    issuing_unit TEXT NOT NULL,
    decided_by TEXT NOT NULL,
    requested_by TEXT,
    basis TEXT NOT NULL,
    urgent {bool_} NOT NULL,
    reference TEXT,
    created_at {int} NOT NULL,
    created_by TEXT NOT NULL,
    confirmed_at {int},
    confirmation TEXT,
    lift TEXT,
    revision {int} NOT NULL
);
CREATE INDEX rules_by_subject ON rules (subject);
CREATE INDEX rules_by_revision ON rules (revision);
CREATE TABLE audit (
    revision {key} PRIMARY KEY,
    at {int} NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    subject {int},
    rule_id {int},
    detail TEXT NOT NULL
);
CREATE INDEX audit_by_subject ON audit (subject, revision);
"#
    );
    sql.push_str(&append_only(d, &["audit", "person_history"], true));
    sql
}

/// Triggers that refuse to change or remove rows of `tables` (and, in
/// PostgreSQL, to truncate them).
fn append_only(d: Dialect, tables: &[&str], define: bool) -> String {
    let mut sql = String::new();
    if d == Dialect::Postgres && define {
        sql.push_str(
            "CREATE FUNCTION guardian_access_append_only() RETURNS trigger LANGUAGE plpgsql AS $$\n\
             BEGIN\n    RAISE EXCEPTION '% entries are never changed or removed', TG_TABLE_NAME;\nEND $$;\n",
        );
    }
    for t in tables {
        match d {
            Dialect::Sqlite => sql.push_str(&format!(
                "CREATE TRIGGER {t}_never_changes BEFORE UPDATE ON {t}\n    \
                 BEGIN SELECT RAISE(ABORT, '{t} entries are never changed or removed'); END;\n\
                 CREATE TRIGGER {t}_never_removed BEFORE DELETE ON {t}\n    \
                 BEGIN SELECT RAISE(ABORT, '{t} entries are never changed or removed'); END;\n"
            )),
            Dialect::Postgres => sql.push_str(&format!(
                "CREATE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE ON {t}\n    \
                 FOR EACH ROW EXECUTE FUNCTION guardian_access_append_only();\n\
                 CREATE TRIGGER {t}_no_truncate BEFORE TRUNCATE ON {t}\n    \
                 FOR EACH STATEMENT EXECUTE FUNCTION guardian_access_append_only();\n"
            )),
        }
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_dialects_create_the_same_tables_and_columns() {
        // Every table with its columns' names, whatever their types.
        let columns = |sql: &str| -> Vec<String> {
            let mut out = Vec::new();
            let mut in_table = false;
            for line in sql.lines() {
                if line.starts_with("CREATE TABLE") {
                    in_table = true;
                    out.push(line.to_owned());
                } else if line.starts_with(')') {
                    in_table = false;
                } else if in_table {
                    out.push(line.split_whitespace().next().unwrap_or_default().to_owned());
                }
            }
            out
        };
        let (s, p) = (migrations(Dialect::Sqlite), migrations(Dialect::Postgres));
        assert_eq!(s.len(), p.len());
        for (s, p) in s.iter().zip(&p) {
            assert_eq!(columns(s), columns(p));
        }
        assert!(
            s[0].contains("id INTEGER PRIMARY KEY,"),
            "the rowid is the person's number"
        );
        assert!(s[0].contains("RAISE(ABORT") && p[0].contains("BEFORE TRUNCATE"));
    }
}
