//! The console's confirmation e-mails (SPEC §9): a durable outbox.
//!
//! A message is written in the same transaction as the write it confirms,
//! so a committed block always has its mail waiting, and a write that is
//! rolled back leaves none. The sender ([`crate::mail`]) claims due
//! messages, sends them, and records every attempt in `mail_attempts`
//! (append-only); a failed one waits longer each time and is tried again
//! until the server accepts it.
//!
//! A message carries the case reference, the rule id, what was done and
//! when. It never carries an identity number or a name: [`compose`] takes
//! nothing else.

use jiff::tz::TimeZone;

use super::protocol;
use super::protocol::{Param, Row, Tx, narrow, wide};
use super::{Committed, NewRule, RuleUpdate, StoreError};
use crate::actor::Caller;
use crate::core::model::RuleId;
use crate::core::time::Instant;

/// A confirmation to send once the write it belongs to commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailDraft {
    /// The requester's address(es).
    pub to: Vec<String>,
    /// What was done, in Swedish ("Spärr registrerad").
    pub what: String,
    /// The unit's case reference, if any.
    pub reference: Option<String>,
}

/// A message claimed for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMail {
    /// Its number in the outbox.
    pub id: u64,
    /// Where it goes.
    pub recipients: Vec<String>,
    /// Its subject line.
    pub subject: String,
    /// Its text.
    pub body: String,
    /// Failed attempts so far.
    pub attempts: u32,
}

/// Where a rule's confirmation stands, for the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailStatus {
    /// Its number in the outbox.
    pub id: u64,
    /// The rule it confirms.
    pub rule_id: u64,
    /// What it says was done.
    pub subject: String,
    /// When it was queued.
    pub created_at: Instant,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When the server accepted it.
    pub sent_at: Option<Instant>,
}

/// How long a claimed message is left to its sender before another
/// instance may take it.
const CLAIM_NS: i64 = 120 * 1_000_000_000;

const INSERT: &str = "INSERT INTO outbox (created_at, rule_id, recipients, subject, body, attempts, next_at) \
     VALUES ($1, $2, $3, $4, $5, 0, $1) RETURNING id";
const DUE: &str = "SELECT id FROM outbox WHERE sent_at IS NULL AND next_at <= $1 \
     AND (claimed_until IS NULL OR claimed_until <= $1) ORDER BY next_at, id LIMIT $2";
const CLAIM: &str = "UPDATE outbox SET claimed_until = $1 WHERE id = $2 AND sent_at IS NULL \
     AND (claimed_until IS NULL OR claimed_until <= $3)";
const READ: &str = "SELECT id, recipients, subject, body, attempts FROM outbox WHERE id = $1";
const SENT: &str = "UPDATE outbox SET sent_at = $1, claimed_until = NULL WHERE id = $2";
const FAILED: &str = "UPDATE outbox SET attempts = attempts + 1, next_at = $1, claimed_until = NULL WHERE id = $2";
const ATTEMPT: &str = "INSERT INTO mail_attempts (mail, at, outcome, detail) VALUES ($1, $2, $3, $4)";
const OF_RULE: &str = "SELECT id, rule_id, subject, created_at, attempts, sent_at FROM outbox WHERE rule_id = $1 \
     ORDER BY id";

/// The subject and text of a confirmation: reference, rule id, what and
/// when, in Stockholm time. Nothing else goes in.
pub fn compose(rule_id: u64, at: Instant, what: &str, reference: Option<&str>, tz: &TimeZone) -> (String, String) {
    let when = tz.to_datetime(at.to_timestamp()).strftime("%Y-%m-%d %H:%M").to_string();
    let reference = reference.unwrap_or("(inget angivet)");
    let subject = format!("{what}: id {rule_id}, ärende {reference}");
    let body = format!(
        "Kontaktcentret bekräftar:\r\n\r\n\
         Åtgärd: {what}\r\n\
         Id: {rule_id}\r\n\
         Ärendenummer: {reference}\r\n\
         Tidpunkt: {when}\r\n\r\n\
         Uppgifter om barnet och vårdnadshavarna finns i konsolen, inte i e-post.\r\n"
    );
    (subject, body)
}

/// Queues `draft` for the rule `rule_id`, written at `at` (inside the
/// write's transaction).
pub(crate) async fn enqueue<T: Tx>(
    tx: &mut T,
    at: Instant,
    rule_id: u64,
    draft: &MailDraft,
    tz: &TimeZone,
) -> Result<(), StoreError> {
    if draft.to.is_empty() {
        return Ok(());
    }
    let (subject, body) = compose(rule_id, at, &draft.what, draft.reference.as_deref(), tz);
    let recipients = draft.to.join(",");
    tx.first(
        INSERT,
        &[
            Param::Int(Some(at.as_nanos())),
            Param::Int(Some(wide(rule_id)?)),
            Param::Text(Some(&recipients)),
            Param::Text(Some(&subject)),
            Param::Text(Some(&body)),
        ],
        |r| r.req_int(0),
    )
    .await?;
    Ok(())
}

/// A new rule and its confirmation, in one transaction.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn create_rule<T: Tx>(
    tx: &mut T,
    revision: u64,
    at: Instant,
    new: &NewRule,
    require_guardian: bool,
    by: &Caller,
    mail: Option<&MailDraft>,
    tz: &TimeZone,
) -> Result<Committed, StoreError> {
    let committed = protocol::create_rule(tx, revision, at, new, require_guardian, by).await?;
    if let Some(mail) = mail {
        enqueue(tx, at, revision, mail, tz).await?;
    }
    Ok(committed)
}

/// A lift or confirmation and its confirmation e-mail, in one transaction.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn update_rule<T: Tx>(
    tx: &mut T,
    revision: u64,
    at: Instant,
    id: RuleId,
    update: &RuleUpdate,
    by: &Caller,
    mail: Option<&MailDraft>,
    tz: &TimeZone,
) -> Result<Committed, StoreError> {
    let committed = protocol::update_rule(tx, revision, at, id, update, by).await?;
    if let Some(mail) = mail {
        enqueue(tx, at, id.0, mail, tz).await?;
    }
    Ok(committed)
}

/// Claims up to `limit` messages due at `at`, for this sender only.
pub(crate) async fn claim_due<T: Tx>(tx: &mut T, at: Instant, limit: u64) -> Result<Vec<QueuedMail>, StoreError> {
    let now = Param::Int(Some(at.as_nanos()));
    let ids = tx
        .all(DUE, &[now, Param::Int(Some(wide(limit)?))], |r| r.req_int(0))
        .await?;
    let until = Param::Int(Some(at.as_nanos().saturating_add(CLAIM_NS)));
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if tx.exec(CLAIM, &[until, Param::Int(Some(id)), now]).await? != 1 {
            continue;
        }
        if let Some(m) = tx.first(READ, &[Param::Int(Some(id))], queued).await? {
            out.push(m);
        }
    }
    Ok(out)
}

fn queued(r: &dyn Row) -> Result<QueuedMail, StoreError> {
    Ok(QueuedMail {
        id: narrow(r.req_int(0)?)?,
        recipients: r.req_text(1)?.split(',').map(str::to_owned).collect(),
        subject: r.req_text(2)?.to_owned(),
        body: r.req_text(3)?.to_owned(),
        attempts: u32::try_from(r.req_int(4)?).unwrap_or(u32::MAX),
    })
}

/// Records that the server accepted message `id`.
pub(crate) async fn sent<T: Tx>(tx: &mut T, at: Instant, id: u64) -> Result<(), StoreError> {
    let key = Param::Int(Some(wide(id)?));
    tx.exec(SENT, &[Param::Int(Some(at.as_nanos())), key]).await?;
    tx.exec(
        ATTEMPT,
        &[
            key,
            Param::Int(Some(at.as_nanos())),
            Param::Text(Some("sent")),
            Param::Text(Some("")),
        ],
    )
    .await?;
    Ok(())
}

/// Records a failed attempt at message `id`; it is tried again at `next`.
pub(crate) async fn failed<T: Tx>(
    tx: &mut T,
    at: Instant,
    id: u64,
    next: Instant,
    why: &str,
) -> Result<(), StoreError> {
    let key = Param::Int(Some(wide(id)?));
    tx.exec(FAILED, &[Param::Int(Some(next.as_nanos())), key]).await?;
    tx.exec(
        ATTEMPT,
        &[
            key,
            Param::Int(Some(at.as_nanos())),
            Param::Text(Some("failed")),
            Param::Text(Some(why)),
        ],
    )
    .await?;
    Ok(())
}

/// The confirmations of the rules `ids`, oldest first.
pub(crate) async fn of_rules<T: Tx>(tx: &mut T, ids: &[u64]) -> Result<Vec<MailStatus>, StoreError> {
    let mut out = Vec::new();
    for &id in ids {
        let mut rows = tx
            .all(OF_RULE, &[Param::Int(Some(wide(id)?))], |r| {
                Ok(MailStatus {
                    id: narrow(r.req_int(0)?)?,
                    rule_id: narrow(r.req_int(1)?)?,
                    subject: r.req_text(2)?.to_owned(),
                    created_at: Instant::from_nanos(r.req_int(3)?),
                    attempts: u32::try_from(r.req_int(4)?).unwrap_or(u32::MAX),
                    sent_at: r.int(5)?.map(Instant::from_nanos),
                })
            })
            .await?;
        out.append(&mut rows);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confirmation_says_what_and_when_and_nothing_else() {
        let tz = crate::core::time::stockholm().unwrap();
        let at = Instant::from_timestamp("2026-11-23T02:05:00Z".parse().unwrap()).unwrap();
        let (subject, body) = compose(42, at, "Spärr registrerad (akut)", Some("BUP 2026-117"), &tz);
        assert_eq!(subject, "Spärr registrerad (akut): id 42, ärende BUP 2026-117");
        assert!(body.contains("Tidpunkt: 2026-11-23 03:05"), "{body}");
        assert!(body.contains("Id: 42") && body.contains("Ärendenummer: BUP 2026-117"));
        let (_, none) = compose(7, at, "Spärr hävd", None, &tz);
        assert!(none.contains("Ärendenummer: (inget angivet)"));
    }
}
