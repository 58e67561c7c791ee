//! The command line: `serve` (in [`serve`]) and the one-shot commands
//! support staff and operators use: `check`, `children` and
//! `import-population`. Part of the binary only; everything it does is the
//! library's.

pub mod serve;

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use guardian_access::actor::{Caller, Role};
use guardian_access::clock::Clock;
use guardian_access::config::{DEFAULT_ACCESS_LOG_RETENTION_YEARS, ServeFlags};
use guardian_access::core::explain::{Facts, explain};
use guardian_access::core::time::{self, Instant};
use guardian_access::fixtures::Scenario;
use guardian_access::http::admin::views::ExplainView;
use guardian_access::http::wire::{ChildrenBody, DecisionBody};
use guardian_access::node::{self, NodeConfig};
use guardian_access::store::{Access, IMPORT_BATCH, ImportMsg, Store, Subjects};
use guardian_access::{Pid, Query, Service, Snapshot, decide, ndjson};

/// A policy decision point for Swedish patient portals.
#[derive(Debug, Parser)]
#[command(name = "guardian-access", version, about)]
pub struct Cli {
    #[command(subcommand)]
    /// What to do.
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve checks (SPEC §4) and the admin API (SPEC §5) over HTTP.
    Serve(Box<ServeFlags>),
    /// One decision from the command line, for support staff: may ACTOR see
    /// SUBJECT's journal, or act for them in the e-services, at AT?
    Check {
        #[command(flatten)]
        source: Source,
        /// Who is logged in (personnummer or samordningsnummer, any accepted form).
        #[arg(long)]
        actor: String,
        /// Whose journal or e-services.
        #[arg(long)]
        subject: String,
        /// `journal` or `eservices`.
        #[arg(long, default_value = "journal")]
        service: String,
        #[command(flatten)]
        at: At,
    },
    /// The switch list: every child GUARDIAN is registered for, with the answer for each.
    Children {
        #[command(flatten)]
        source: Source,
        /// The guardian (personnummer or samordningsnummer).
        #[arg(long)]
        guardian: String,
        /// `journal` or `eservices`.
        #[arg(long, default_value = "journal")]
        service: String,
        #[command(flatten)]
        at: At,
    },
    /// Why ACTOR gets (or got) their answer about SUBJECT, for support staff:
    /// the row of the rules that decided, the data it used, and every
    /// restriction and grant with why it did or did not apply. From the store.
    Explain {
        #[command(flatten)]
        store: StoreArgs,
        /// Region settings (TOML), as for `serve`.
        #[arg(long, env = "GUARDIAN_ACCESS_CONFIG")]
        config: Option<PathBuf>,
        /// Who asked (personnummer or samordningsnummer, any accepted form).
        #[arg(long)]
        actor: String,
        /// Whose journal or e-services.
        #[arg(long)]
        subject: String,
        /// `journal` or `eservices`.
        #[arg(long, default_value = "journal")]
        service: String,
        #[command(flatten)]
        at: At,
        /// The facts as they stood at this revision (default: today's), so
        /// last Tuesday's answer is explained with last Tuesday's data.
        #[arg(long)]
        as_of_revision: Option<u64>,
    },
    /// Removes the access log from before DATE, once it is older than the
    /// retention period (`access_log_retention_years`, default 10). The
    /// removal is itself logged.
    PruneAccessLog {
        /// Remove entries before this instant (RFC 3339, or a date: local
        /// midnight in Stockholm).
        #[arg(long)]
        before: String,
        #[command(flatten)]
        store: StoreArgs,
        /// The config file (for `[server] access_log_retention_years`).
        #[arg(long, env = "GUARDIAN_ACCESS_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Bulk-loads population data (NDJSON, one person a line) into the store,
    /// all or nothing. A running service picks it up within its poll interval.
    ImportPopulation {
        /// The NDJSON file (`-` for standard input).
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Which store to use.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// The embedded store's directory [default: ./data].
    #[arg(long, env = "GUARDIAN_ACCESS_DATA_DIR", conflicts_with = "store")]
    data_dir: Option<PathBuf>,
    /// `postgres://…` instead of the embedded store.
    #[arg(long, env = "GUARDIAN_ACCESS_STORE")]
    store: Option<String>,
}

/// Where the people and rules come from.
#[derive(Debug, clap::Args)]
pub struct Source {
    /// A scenario file (people, settings, restrictions and grants as JSON)
    /// instead of the store.
    #[arg(long, conflicts_with_all = ["data_dir", "store"])]
    scenario: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
    /// Region settings (TOML), as for `serve`.
    #[arg(long, env = "GUARDIAN_ACCESS_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct At {
    /// The instant to decide at: RFC 3339 with an offset, or a date (local
    /// midnight in Stockholm). Default: now.
    #[arg(long)]
    at: Option<String>,
}

/// Runs a one-shot command; what it prints.
pub async fn run(command: Command, clock: &Clock) -> Result<String> {
    match command {
        Command::Serve(_) => Err(anyhow!("`serve` is not a one-shot command")),
        Command::Check {
            source,
            actor,
            subject,
            service,
            at,
        } => {
            let (snap, store) = source.snapshot().await?;
            let at = at.resolve(&snap, clock)?;
            let today = time::local_date(at, snap.tz());
            let query = Query {
                actor: identity(&actor, "actor", today)?,
                subject: identity(&subject, "subject", today)?,
                service: service_arg(&service)?,
                at,
            };
            logged(store.as_ref(), "cli_check", &[query.subject, query.actor], clock).await?;
            let d = decide(&snap, &query);
            Ok(serde_json::to_string_pretty(&DecisionBody::new(&d, at, snap.tz()))?)
        }
        Command::Children {
            source,
            guardian,
            service,
            at,
        } => {
            let (snap, store) = source.snapshot().await?;
            let at = at.resolve(&snap, clock)?;
            let guardian = identity(&guardian, "guardian", time::local_date(at, snap.tz()))?;
            let mut shown = vec![guardian];
            shown.extend(snap.people().children_of(guardian));
            logged(store.as_ref(), "cli_children", &shown, clock).await?;
            let body = ChildrenBody::new(&snap, guardian, service_arg(&service)?, at);
            Ok(serde_json::to_string_pretty(&body)?)
        }
        Command::ImportPopulation { file, store } => import_population(file, store, clock).await,
        Command::PruneAccessLog { before, store, config } => {
            let tz = time::stockholm()?;
            let before = time::parse_instant(&before, &tz).map_err(|e| anyhow!("`before`: {e}"))?;
            let years = serve::config_file(config.as_deref())?
                .server
                .access_log_retention_years
                .unwrap_or(DEFAULT_ACCESS_LOG_RETENTION_YEARS);
            let today = time::local_date(clock.now(), &tz);
            let limit = today
                .checked_sub(jiff::Span::new().years(i64::from(years)))
                .map_err(|_| anyhow!("`access_log_retention_years`: out of range"))?;
            let limit_at = time::local_midnight(limit, &tz).ok_or_else(|| anyhow!("no midnight on {limit}"))?;
            if before > limit_at {
                bail!("`before`: the access log is kept {years} years; the latest allowed is {limit}");
            }
            let store = store.open(false).await?.with_clock(clock.clone());
            let removed = store.prune_access_log(before, &Caller::operator()).await?;
            Ok(serde_json::to_string_pretty(&serde_json::json!({"removed": removed}))?)
        }
        Command::Explain {
            store,
            config,
            actor,
            subject,
            service,
            at,
            as_of_revision,
        } => {
            let settings = Arc::new(serve::settings(config.as_deref())?);
            let tz = time::stockholm()?;
            let at = at.instant(&tz, clock)?;
            let today = time::local_date(at, &tz);
            let query = Query {
                actor: identity(&actor, "actor", today)?,
                subject: identity(&subject, "subject", today)?,
                service: service_arg(&service)?,
                at,
            };
            let store = store.open(false).await?;
            logged(Some(&store), "cli_explain", &[query.subject, query.actor], clock).await?;
            let (revision, records, rules) = store.facts(query.subject, query.actor, as_of_revision).await?;
            let facts = Facts {
                revision,
                settings,
                records,
                rules,
            };
            let explanation = explain(&facts, &query)?;
            Ok(serde_json::to_string_pretty(&ExplainView::new(
                &explanation,
                as_of_revision,
            ))?)
        }
    }
}

impl StoreArgs {
    async fn open(&self, create: bool) -> Result<Store> {
        match &self.store {
            Some(url) => Ok(Store::open_postgres(url).await?),
            None => {
                let dir = serve::data_dir(self.data_dir.as_deref());
                let store = if create {
                    Store::open_sqlite(&dir).await
                } else {
                    Store::open_sqlite_existing(&dir).await
                };
                store.with_context(|| format!("in `{}`", dir.display()))
            }
        }
    }
}

impl Source {
    /// The snapshot to answer from, and the store it came from (none for a
    /// scenario file, which holds no one's personal data).
    async fn snapshot(&self) -> Result<(Snapshot, Option<Store>)> {
        if let Some(path) = &self.scenario {
            let scenario = Scenario::load(path)?;
            let settings = match &self.config {
                Some(c) => serve::settings(Some(c))?,
                None => scenario.settings()?,
            };
            let snap = scenario
                .snapshot_with(settings)
                .with_context(|| format!("in scenario `{}`", path.display()))?;
            return Ok((snap, None));
        }
        let store = self.store.open(false).await?;
        let settings = Arc::new(serve::settings(self.config.as_deref())?);
        let config = NodeConfig {
            data_dir: self
                .store
                .store
                .is_none()
                .then(|| serve::data_dir(self.store.data_dir.as_deref())),
            ..NodeConfig::default()
        };
        let snap = node::load_once(store.clone(), settings, config).await?;
        Ok((snap, Some(store)))
    }
}

/// Appends a command-line read of the store's personal data to the access
/// log, before anything is printed (a scenario file's reads are not).
async fn logged(store: Option<&Store>, action: &'static str, subjects: &[Pid], clock: &Clock) -> Result<()> {
    let Some(store) = store else { return Ok(()) };
    let store = store.clone().with_clock(clock.clone());
    let by = Caller::operator();
    let access = Access {
        by: &by,
        action,
        subjects: Subjects::Some(subjects),
        purpose: None,
        detail: serde_json::json!({}),
    };
    store
        .log_access(access)
        .await
        .context("cannot write the access log; nothing is shown")?;
    Ok(())
}

impl At {
    fn resolve(&self, snap: &Snapshot, clock: &Clock) -> Result<Instant> {
        self.instant(snap.tz(), clock)
    }

    fn instant(&self, tz: &jiff::tz::TimeZone, clock: &Clock) -> Result<Instant> {
        match &self.at {
            None => Ok(clock.now()),
            Some(s) => time::parse_instant(s, tz).map_err(|e| anyhow!("`at`: {e}")),
        }
    }
}

/// Parses an identity argument; the error names the field, never the input.
fn identity(input: &str, field: &str, today: jiff::civil::Date) -> Result<Pid> {
    Pid::parse(input, today).map_err(|e| anyhow!("`{field}`: {} ({e})", e.code()))
}

fn service_arg(s: &str) -> Result<Service> {
    Service::parse(s).ok_or_else(|| anyhow!("`service`: must be `journal` or `eservices`"))
}

/// Streams `file` through the NDJSON reader into one store transaction.
async fn import_population(file: PathBuf, store: StoreArgs, clock: &Clock) -> Result<String> {
    let started = std::time::Instant::now();
    let store = store.open(true).await?.with_clock(clock.clone());
    let today = time::local_date(clock.now(), &time::stockholm()?);
    let (tx, rx) = tokio::sync::mpsc::channel::<ImportMsg>(4);
    let reader = tokio::task::spawn_blocking(move || -> Result<u64> {
        let mut input: Box<dyn Read> = if file.as_os_str() == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(std::fs::File::open(&file).with_context(|| format!("cannot read `{}`", file.display()))?)
        };
        let mut lines = ndjson::Reader::new(today);
        let mut buf = vec![0u8; 1 << 20];
        let mut batch = Vec::with_capacity(IMPORT_BATCH);
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            lines
                .feed(&buf[..n], &mut batch)
                .map_err(|e| anyhow!("{}", e.message))?;
            if batch.len() >= IMPORT_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(IMPORT_BATCH));
                if tx.blocking_send(ImportMsg::Batch(full)).is_err() {
                    return Ok(lines.lines());
                }
            }
        }
        lines.finish(&mut batch).map_err(|e| anyhow!("{}", e.message))?;
        let _ = tx.blocking_send(ImportMsg::Batch(batch));
        let _ = tx.blocking_send(ImportMsg::End);
        Ok(lines.lines())
    });
    let by = Caller {
        name: "import-population (command line)".into(),
        role: Role::Population,
        unit: None,
        hsa_id: None,
    };
    let imported = store.import(rx, &by).await;
    reader.await??;
    let imported = imported?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(serde_json::to_string_pretty(&serde_json::json!({
        "upserted": imported.upserted,
        "changed": imported.changed,
        "revision": imported.revision,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "persons_per_second": (imported.upserted as f64 / seconds).round(),
    }))?)
}
