//! The sender of the console's confirmation e-mails (SPEC §9): it empties
//! the store's outbox ([`crate::store::outbox`]) over SMTP with STARTTLS
//! (`lettre`), recording every attempt; a message the server does not
//! accept is tried again later, waiting twice as long each time (from
//! `retry_min` up to `retry_max`), until it is accepted.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::clock::Clock;
use crate::core::time::Instant;
use crate::store::{QueuedMail, Store};

/// `[console.smtp]`: where confirmations are sent from.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// The relay's host name (the name its certificate carries).
    pub host: String,
    /// Its submission port (587).
    pub port: u16,
    /// The sender address.
    pub from: String,
    /// A CA to trust for the relay instead of the web's roots (a region's
    /// own CA), PEM.
    pub ca_file: Option<PathBuf>,
    /// A user name, if the relay wants one.
    pub username: Option<String>,
    /// The file holding its password.
    pub password_file: Option<PathBuf>,
    /// The first wait after a failed attempt.
    pub retry_min: Duration,
    /// The longest wait between attempts.
    pub retry_max: Duration,
}

impl SmtpConfig {
    /// The defaults for a relay at `host`: port 587, retries from 30 s up
    /// to 15 minutes.
    pub fn new(host: &str, from: &str) -> SmtpConfig {
        SmtpConfig {
            host: host.to_owned(),
            port: 587,
            from: from.to_owned(),
            ca_file: None,
            username: None,
            password_file: None,
            retry_min: Duration::from_secs(30),
            retry_max: Duration::from_secs(15 * 60),
        }
    }
}

/// The outbox's sender: wake it after queueing a message.
#[derive(Debug)]
pub struct Sender {
    wake: Notify,
}

impl Sender {
    /// Sends due messages now rather than at the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// How long after `attempts` failures the next attempt comes.
pub fn backoff(attempts: u32, min: Duration, max: Duration) -> Duration {
    min.saturating_mul(1u32 << attempts.min(20)).min(max)
}

/// Starts the sender for `store`; it stops when `stop` turns true.
pub fn start(
    config: SmtpConfig,
    store: Store,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Arc<Sender>> {
    let transport = transport(&config)?;
    let from: Mailbox = config
        .from
        .parse()
        .map_err(|e| anyhow::anyhow!("`console.smtp.from`: {e}"))?;
    let sender = Arc::new(Sender { wake: Notify::new() });
    let woken = sender.clone();
    tokio::spawn(async move {
        // Poll at least this often, for retries that fall due.
        let poll = config.retry_min.min(Duration::from_secs(5));
        loop {
            match store.claim_mail(20).await {
                Ok(due) => {
                    for mail in due {
                        deliver(&transport, &from, &store, &clock, &config, mail).await;
                    }
                }
                Err(e) => warn!(error = %e, "cannot read the mail outbox"),
            }
            tokio::select! {
                _ = woken.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    });
    Ok(sender)
}

fn transport(config: &SmtpConfig) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let mut tls = TlsParameters::builder(config.host.clone());
    if let Some(ca) = &config.ca_file {
        let pem = std::fs::read(ca).map_err(|e| anyhow::anyhow!("`console.smtp.ca_file` {}: {e}", ca.display()))?;
        let cert = Certificate::from_pem(&pem).map_err(|e| anyhow::anyhow!("`console.smtp.ca_file`: {e}"))?;
        tls = tls.certificate_store(CertificateStore::None).add_root_certificate(cert);
    }
    let tls = tls.build().map_err(|e| anyhow::anyhow!("`console.smtp`: {e}"))?;
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
        .port(config.port)
        .tls(Tls::Required(tls))
        .timeout(Some(Duration::from_secs(20)));
    if let (Some(user), Some(file)) = (&config.username, &config.password_file) {
        let password = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("`console.smtp.password_file` {}: {e}", file.display()))?;
        builder = builder.credentials(Credentials::new(user.clone(), password.trim().to_owned()));
    }
    Ok(builder.build())
}

async fn deliver(
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    from: &Mailbox,
    store: &Store,
    clock: &Clock,
    config: &SmtpConfig,
    mail: QueuedMail,
) {
    let outcome = match message(from, &mail) {
        Ok(m) => transport.send(m).await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let recorded = match outcome {
        Ok(()) => {
            info!(mail = mail.id, "confirmation e-mail accepted by the relay");
            store.mail_sent(mail.id).await
        }
        Err(why) => {
            let wait = backoff(mail.attempts, config.retry_min, config.retry_max);
            let next = Instant::from_nanos(
                clock
                    .now()
                    .as_nanos()
                    .saturating_add(i64::try_from(wait.as_nanos()).unwrap_or(i64::MAX)),
            );
            warn!(mail = mail.id, attempts = mail.attempts + 1, retry_in_seconds = wait.as_secs(), error = %why,
                "confirmation e-mail not accepted; it will be tried again");
            store.mail_failed(mail.id, next, why).await
        }
    };
    if let Err(e) = recorded {
        warn!(mail = mail.id, error = %e, "cannot record a mail attempt");
    }
}

fn message(from: &Mailbox, mail: &QueuedMail) -> Result<Message, String> {
    let mut m = Message::builder().from(from.clone()).subject(mail.subject.clone());
    for to in &mail.recipients {
        let to: Mailbox = to.parse().map_err(|e| format!("recipient: {e}"))?;
        m = m.to(to);
    }
    m.header(ContentType::TEXT_PLAIN)
        .body(mail.body.clone())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_waits_twice_as_long_up_to_the_most() {
        let (min, max) = (Duration::from_secs(30), Duration::from_secs(900));
        assert_eq!(backoff(0, min, max), Duration::from_secs(30));
        assert_eq!(backoff(1, min, max), Duration::from_secs(60));
        assert_eq!(backoff(4, min, max), Duration::from_secs(480));
        assert_eq!(backoff(5, min, max), max);
        assert_eq!(backoff(u32::MAX, min, max), max);
    }
}
