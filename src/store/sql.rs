//! Every statement the protocol runs, written once in PostgreSQL's
//! spelling (`$1`, `$2` …). SQLite runs the same text with its numbered
//! parameters (`?1`, `?2` …, see [`for_sqlite`]); the few statements that
//! really differ between the dialects are functions of the [`Dialect`].
//! The schema itself is in `schema`.

use std::borrow::Cow;

/// Which SQL to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// The statement for SQLite: `$N` placeholders become `?N`. Statements
/// here hold no `$` otherwise (a test checks).
pub(crate) fn for_sqlite(sql: &str) -> Cow<'_, str> {
    if sql.contains('$') {
        Cow::Owned(sql.replace('$', "?"))
    } else {
        Cow::Borrowed(sql)
    }
}

/// The columns of a `rules` row, in the order the protocol reads them.
macro_rules! rule_columns {
    () => {
        "id, kind, subject, guardian, services, valid_from, valid_until, lifted_at, care_units, issuing_unit, \
         decided_by, requested_by, basis, urgent, reference, created_at, created_by, confirmed_at, confirmation, \
         lift, revision"
    };
}

/// The columns of a person row, in the order the protocol reads them.
macro_rules! person_columns {
    () => {
        "id, birth_date, protected, guardians, revision"
    };
}

pub(crate) const MIGRATIONS_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)";
pub(crate) const SCHEMA_VERSION: &str = "SELECT coalesce(max(version), 0) FROM schema_migrations";
pub(crate) const MIGRATION_APPLIED: &str = "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)";
pub(crate) const META_CREATE: &str =
    "INSERT INTO meta (id, store_id, revision) SELECT 1, $1, 0 WHERE NOT EXISTS (SELECT 1 FROM meta)";
pub(crate) const STORE_ID: &str = "SELECT store_id, snapshot_key FROM meta WHERE id = 1";
pub(crate) const SNAPSHOT_KEY_CREATE: &str = "UPDATE meta SET snapshot_key = $1 WHERE id = 1 AND snapshot_key IS NULL";

pub(crate) const REVISION: &str = "SELECT revision FROM meta WHERE id = 1";
pub(crate) const NEXT_REVISION: &str = "UPDATE meta SET revision = revision + 1 WHERE id = 1 RETURNING revision";
pub(crate) const INSERT_CHANGE: &str =
    "INSERT INTO changes (revision, at, kind, persons, rules, digest) VALUES ($1, $2, $3, $4, $5, $6)";
/// The digest of one revision (`NULL`: written before digests, or none).
pub(crate) const DIGEST_AT: &str = "SELECT digest FROM changes WHERE revision = $1";
pub(crate) const INSERT_AUDIT: &str = "INSERT INTO audit (revision, at, actor, role, action, subject, rule_id, detail, \
     actor_hsa_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

pub(crate) const INSERT_RULE: &str = "INSERT INTO rules (id, kind, subject, guardian, services, valid_from, \
     valid_until, lifted_at, care_units, issuing_unit, decided_by, requested_by, basis, urgent, reference, \
     created_at, created_by, revision) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $1)";
pub(crate) const GUARDIANS_OF: &str = "SELECT guardians FROM persons WHERE id = $1";

/// One rule by id, locked for the rest of the write where the dialect
/// can: in PostgreSQL a concurrent lift of the same rule then waits and
/// sees it lifted. (SQLite's single writer already serializes writes.)
pub(crate) fn rule_for_update(d: Dialect) -> String {
    let lock = match d {
        Dialect::Sqlite => "",
        Dialect::Postgres => " FOR UPDATE",
    };
    format!(concat!("SELECT ", rule_columns!(), " FROM rules WHERE id = $1{}"), lock)
}

/// A lift or a confirmation: its instant and record columns (fixed names
/// from `RuleUpdate`, never input).
pub(crate) fn update_rule(at_column: &str, record_column: &str) -> String {
    format!("UPDATE rules SET {at_column} = $1, {record_column} = $2, revision = $3 WHERE id = $4")
}

pub(crate) const CHANGES_SINCE: &str =
    "SELECT count(*), CAST(coalesce(sum(persons), 0) AS BIGINT) FROM changes WHERE revision > $1";
pub(crate) const PERSON_HISTORY_SINCE: &str = concat!(
    "SELECT ",
    person_columns!(),
    " FROM person_history WHERE revision > $1 ORDER BY revision, seq"
);
pub(crate) const RULES_SINCE: &str = concat!("SELECT ", rule_columns!(), " FROM rules WHERE revision > $1");

/// Rules on a subject not lifted and not ended at `$2`.
pub(crate) const RULES_IN_FORCE: &str =
    "SELECT count(*) FROM rules WHERE subject = $1 AND lifted_at IS NULL AND (valid_until IS NULL OR valid_until > $2)";

pub(crate) const COUNT_PERSONS: &str = "SELECT count(*) FROM persons";
pub(crate) const ALL_PERSONS: &str = "SELECT id, birth_date, protected, guardians FROM persons";
pub(crate) const ALL_RULES: &str = concat!("SELECT ", rule_columns!(), " FROM rules");

pub(crate) const PERSON: &str = concat!("SELECT ", person_columns!(), " FROM persons WHERE id = $1");
pub(crate) const RULES_OF: &str = concat!(
    "SELECT ",
    rule_columns!(),
    " FROM rules WHERE subject = $1 ORDER BY valid_from, id"
);
/// Urgent restrictions not lifted and without their signed form (`$1` is
/// true), oldest first.
pub(crate) const AWAITING_FORM: &str = concat!(
    "SELECT ",
    rule_columns!(),
    " FROM rules WHERE urgent = $1 AND confirmed_at IS NULL AND lifted_at IS NULL ORDER BY created_at, id"
);
/// A unit's rules, newest first.
pub(crate) const RULES_OF_UNIT: &str = concat!(
    "SELECT ",
    rule_columns!(),
    " FROM rules WHERE issuing_unit = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
);
pub(crate) const AUDIT_OF: &str = "SELECT revision, at, actor, role, action, rule_id, detail, actor_hsa_id \
     FROM audit WHERE subject = $1 ORDER BY revision";
pub(crate) const POPULATION_AUDIT_OF: &str = "SELECT h.revision, a.at, a.actor, a.role, a.action, h.birth_date, \
     h.protected, h.guardians, a.actor_hsa_id FROM person_history h JOIN audit a ON a.revision = h.revision \
     WHERE h.id = $1 ORDER BY h.revision";

/// A person's record as it stood at a revision: their last history row at
/// or before it.
pub(crate) const PERSON_AT: &str = concat!(
    "SELECT ",
    person_columns!(),
    " FROM person_history WHERE id = $1 AND revision <= $2 ORDER BY revision DESC, seq DESC LIMIT 1"
);

/// A subject's rules created at or before a revision, each with the
/// revision of its lift, if it was lifted by a write of its own (a seeded
/// rule comes lifted from its creation).
pub(crate) const RULES_AT: &str = concat!(
    "SELECT ",
    rule_columns!(),
    ", (SELECT min(a.revision) FROM audit a WHERE a.subject = rules.subject AND a.rule_id = rules.id \
     AND a.action = 'lift') FROM rules WHERE subject = $1 AND id <= $2 ORDER BY valid_from, id"
);

pub(crate) const INSERT_ACCESS: &str = "INSERT INTO access_log (at, actor, hsa_id, role, action, subjects, purpose, \
     detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id";
pub(crate) const INSERT_ACCESS_SUBJECT: &str =
    "INSERT INTO access_log_subjects (subject, entry) VALUES ($1, $2) ON CONFLICT DO NOTHING";

/// The columns of an access-log row, in the order the protocol reads them.
macro_rules! access_columns {
    () => {
        "l.id, l.at, l.actor, l.hsa_id, l.role, l.action, l.subjects, l.purpose, l.detail"
    };
}

/// A subject's access-log entries in `[from, to)`, after entry `$4`, oldest first.
pub(crate) const ACCESS_OF: &str = concat!(
    "SELECT ",
    access_columns!(),
    " FROM access_log_subjects s JOIN access_log l ON l.id = s.entry WHERE s.subject = $1 AND l.at >= $2 \
     AND l.at < $3 AND l.id > $4 ORDER BY l.id LIMIT $5"
);
/// Every access-log entry in `[from, to)`, after entry `$3`, oldest first.
pub(crate) const ACCESS_BETWEEN: &str = concat!(
    "SELECT ",
    access_columns!(),
    " FROM access_log l WHERE l.at >= $1 AND l.at < $2 AND l.id > $3 ORDER BY l.id LIMIT $4"
);
pub(crate) const INSERT_PRUNE: &str = "INSERT INTO access_log_prunes (before, at, actor) VALUES ($1, $2, $3)";
pub(crate) const PRUNE_SUBJECTS: &str =
    "DELETE FROM access_log_subjects WHERE entry IN (SELECT id FROM access_log WHERE at < $1)";
pub(crate) const PRUNE_ACCESS: &str = "DELETE FROM access_log WHERE at < $1";

/// Inserts one person into `person_history` (both dialects' imports).
pub(crate) const INSERT_HISTORY: &str = "INSERT INTO person_history (revision, seq, id, birth_date, protected, \
     guardians) VALUES ($1, $2, $3, $4, $5, $6)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_the_only_dollars() {
        for sql in [
            META_CREATE,
            SNAPSHOT_KEY_CREATE,
            MIGRATION_APPLIED,
            INSERT_CHANGE,
            DIGEST_AT,
            INSERT_AUDIT,
            INSERT_RULE,
            GUARDIANS_OF,
            CHANGES_SINCE,
            PERSON_HISTORY_SINCE,
            RULES_SINCE,
            RULES_IN_FORCE,
            PERSON,
            RULES_OF,
            AWAITING_FORM,
            RULES_OF_UNIT,
            AUDIT_OF,
            POPULATION_AUDIT_OF,
            INSERT_HISTORY,
            PERSON_AT,
            RULES_AT,
            INSERT_ACCESS,
            INSERT_ACCESS_SUBJECT,
            ACCESS_OF,
            ACCESS_BETWEEN,
            INSERT_PRUNE,
            PRUNE_SUBJECTS,
            PRUNE_ACCESS,
            &rule_for_update(Dialect::Sqlite),
            &update_rule("lifted_at", "lift"),
        ] {
            let bytes = sql.as_bytes();
            for (i, b) in bytes.iter().enumerate() {
                if *b == b'$' {
                    assert!(bytes.get(i + 1).is_some_and(u8::is_ascii_digit), "{sql}");
                }
            }
            assert!(!for_sqlite(sql).contains('$'));
        }
        assert_eq!(for_sqlite("VALUES ($1, $12)"), "VALUES (?1, ?12)");
        assert!(rule_for_update(Dialect::Postgres).ends_with("FOR UPDATE"));
    }
}
