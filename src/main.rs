//! The `guardian-access` binary: parses flags and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::{Parser, Subcommand};
use guardian_access::fixtures::Scenario;
use guardian_access::time::{self, Instant};
use guardian_access::wire::{ChildrenBody, DecisionBody};
use guardian_access::{Pid, Query, Service, Snapshot, decide};

mod serve;
use serve::ServeArgs;

/// A policy decision point for Swedish patient portals.
#[derive(Debug, Parser)]
#[command(name = "guardian-access", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve checks over HTTP (SPEC §4) from the demo region or a scenario file.
    Serve(Box<ServeArgs>),
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
}

/// Where the people and rules come from.
#[derive(Debug, clap::Args)]
struct Source {
    /// A scenario file (people, settings, restrictions and grants as JSON).
    #[arg(long, default_value = "fixtures/demo.json")]
    scenario: PathBuf,
}

#[derive(Debug, clap::Args)]
struct At {
    /// The instant to decide at: RFC 3339 with an offset, or a date (local
    /// midnight in Stockholm). Default: now.
    #[arg(long)]
    at: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Serve(args) = cli.command {
        return match serve::main(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    match run(cli.command) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> Result<String> {
    match command {
        Command::Serve(_) => Err(anyhow!("`serve` is not a one-shot command")),
        Command::Check {
            source,
            actor,
            subject,
            service,
            at,
        } => {
            let snap = source.snapshot()?;
            let at = at.resolve(&snap)?;
            let today = time::local_date(at, snap.tz());
            let query = Query {
                actor: identity(&actor, "actor", today)?,
                subject: identity(&subject, "subject", today)?,
                service: service_arg(&service)?,
                at,
            };
            let d = decide(&snap, &query);
            Ok(serde_json::to_string_pretty(&DecisionBody::new(&d, at, snap.tz()))?)
        }
        Command::Children {
            source,
            guardian,
            service,
            at,
        } => {
            let snap = source.snapshot()?;
            let at = at.resolve(&snap)?;
            let guardian = identity(&guardian, "guardian", time::local_date(at, snap.tz()))?;
            let body = ChildrenBody::new(&snap, guardian, service_arg(&service)?, at);
            Ok(serde_json::to_string_pretty(&body)?)
        }
    }
}

impl Source {
    fn snapshot(&self) -> Result<Snapshot> {
        let scenario = Scenario::load(&self.scenario)?;
        scenario
            .snapshot()
            .with_context(|| format!("in scenario `{}`", self.scenario.display()))
    }
}

impl At {
    fn resolve(&self, snap: &Snapshot) -> Result<Instant> {
        match &self.at {
            None => Instant::from_timestamp(jiff::Timestamp::now()).ok_or_else(|| anyhow!("the clock is out of range")),
            Some(s) => time::parse_instant(s, snap.tz()).map_err(|e| anyhow!("`at`: {e}")),
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
