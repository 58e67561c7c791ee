//! Scenario files: people, restrictions and grants, and questions with their
//! expected answers, as JSON. The decision tests run every file in
//! `fixtures/decisions/`, and the demo and the `check` command load them too.
//!
//! The structs here are wire types; [`Scenario::snapshot`] converts them into
//! domain types, validating every field.

use std::path::Path;
use std::sync::Arc;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::Deserialize;

use crate::config::{ConfigError, RegionSettings};
use crate::core::decide::Query;
use crate::core::identity::{IdentityError, Pid};
use crate::core::model::{HsaId, Rule, RuleId, RuleKind, Service, Services, Settings};
use crate::core::snapshot::{BuildError, PeopleBuilder, PersonRecord, Rules, Snapshot};
use crate::core::time::{self, InstantError};

/// One scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What the scenario is about.
    #[serde(default)]
    pub description: String,
    /// Region settings for this scenario; defaults where left out.
    #[serde(default)]
    pub settings: Option<RegionSettings>,
    /// Population records.
    #[serde(default)]
    pub people: Vec<PersonFile>,
    /// Restrictions and grants.
    #[serde(default)]
    pub rules: Vec<RuleFile>,
    /// Questions and their expected answers.
    #[serde(default)]
    pub cases: Vec<CaseFile>,
}

/// A population record.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonFile {
    /// The person's number.
    pub id: String,
    /// The register's birth date, if it differs from the number's or the number has none.
    #[serde(default)]
    pub birth_date: Option<String>,
    /// Protected identity.
    #[serde(default)]
    pub protected: bool,
    /// Registered guardians.
    #[serde(default)]
    pub guardians: Vec<String>,
}

/// A restriction or grant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// `block`, `seal`, `extended_access` or `early_access`.
    pub kind: String,
    /// Whose journal.
    pub subject: String,
    /// The named guardian.
    #[serde(default)]
    pub guardian: Option<String>,
    /// Covered services; the kind's defaults when left out.
    #[serde(default)]
    pub services: Option<Vec<String>>,
    /// From when.
    pub valid_from: String,
    /// Until when.
    #[serde(default)]
    pub valid_until: Option<String>,
    /// When lifted.
    #[serde(default)]
    pub lifted_at: Option<String>,
    /// Extended access: limited to these units.
    #[serde(default)]
    pub care_units: Option<Vec<String>>,
}

/// A question and the answer expected.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// What the case shows.
    pub name: String,
    /// Who asks.
    pub actor: String,
    /// About whom.
    pub subject: String,
    /// Which service.
    pub service: String,
    /// When.
    pub at: String,
    /// The expected answer: `decision` and `reason` always; `listing`,
    /// `valid_until`, `care_units` and `excluded_care_units` when present.
    pub expect: serde_json::Map<String, serde_json::Value>,
}

/// A fixture that cannot be used; names the entry and field.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// The file could not be read.
    #[error("cannot read `{0}`: {1}")]
    Read(String, std::io::Error),
    /// The file is not valid JSON of the right shape.
    #[error("`{0}`: {1}")]
    Json(String, serde_json::Error),
    /// An identity number is invalid.
    #[error("`{0}`: {1}")]
    Identity(String, IdentityError),
    /// An instant or date is invalid.
    #[error("`{0}`: {1}")]
    Instant(String, InstantError),
    /// Another field is invalid.
    #[error("`{0}`: {1}")]
    Field(String, &'static str),
    /// The settings are invalid.
    #[error("`settings`: {0}")]
    Settings(#[from] ConfigError),
    /// The snapshot could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// The demo region, built into the binary so `serve --demo` works from any
/// directory.
pub const DEMO: &str = include_str!("../fixtures/demo.json");

/// The date fixtures resolve 10-digit numbers against.
const REFERENCE: Date = jiff::civil::date(2026, 11, 23);

impl Scenario {
    /// Reads a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, FixtureError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| FixtureError::Read(name.clone(), e))?;
        serde_json::from_str(&text).map_err(|e| FixtureError::Json(name, e))
    }

    /// The region settings of this scenario.
    pub fn settings(&self) -> Result<Settings, FixtureError> {
        Ok(self
            .settings
            .as_ref()
            .map(RegionSettings::to_settings)
            .transpose()?
            .unwrap_or_default())
    }

    /// The demo region.
    pub fn demo() -> Result<Scenario, FixtureError> {
        serde_json::from_str(DEMO).map_err(|e| FixtureError::Json("demo".into(), e))
    }

    /// Builds the snapshot the scenario describes, at revision 1.
    pub fn snapshot(&self) -> Result<Snapshot, FixtureError> {
        self.snapshot_with(self.settings()?)
    }

    /// Builds the snapshot the scenario describes under `settings` instead
    /// of its own, at revision 1.
    pub fn snapshot_with(&self, settings: Settings) -> Result<Snapshot, FixtureError> {
        let tz = time::stockholm().map_err(BuildError::from)?;
        let (persons, rules) = self.records()?;
        let mut people = PeopleBuilder::new();
        for p in &persons {
            people.record(p);
        }
        let people = people.build(&settings, &tz)?;
        Ok(Snapshot::new(
            1,
            Arc::new(settings),
            Arc::new(people),
            Arc::new(Rules::new(rules)),
        )?)
    }

    /// The scenario's population records and rules as domain values (rules
    /// numbered from 1 in file order), every field validated.
    pub fn records(&self) -> Result<(Vec<PersonRecord>, Vec<Rule>), FixtureError> {
        let tz = time::stockholm().map_err(BuildError::from)?;
        let mut persons = Vec::with_capacity(self.people.len());
        for (i, p) in self.people.iter().enumerate() {
            let at = |f: &str| format!("people[{i}].{f}");
            let id = pid(&p.id, &at("id"))?;
            let birth_date = match &p.birth_date {
                Some(d) => Some(
                    d.parse::<Date>()
                        .map_err(|_| FixtureError::Instant(at("birth_date"), InstantError::Format))?,
                ),
                None => None,
            };
            let guardians = p
                .guardians
                .iter()
                .enumerate()
                .map(|(j, g)| pid(g, &at(&format!("guardians[{j}]"))))
                .collect::<Result<Vec<_>, _>>()?;
            persons.push(PersonRecord {
                id,
                birth_date,
                protected: p.protected,
                guardians,
            });
        }
        let rules = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| r.to_rule(RuleId(i as u64 + 1), &format!("rules[{i}]"), &tz))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((persons, rules))
    }
}

impl RuleFile {
    fn to_rule(&self, id: RuleId, at: &str, tz: &TimeZone) -> Result<Rule, FixtureError> {
        let field = |f: &str| format!("{at}.{f}");
        let kind = RuleKind::parse(&self.kind).ok_or_else(|| FixtureError::Field(field("kind"), "unknown kind"))?;
        let services = match &self.services {
            None => kind.default_services(),
            Some(list) => list.iter().try_fold(Services::NONE, |acc, s| {
                Service::parse(s)
                    .map(|s| acc.with(s))
                    .ok_or_else(|| FixtureError::Field(field("services"), "unknown service"))
            })?,
        };
        let instant = |s: &str, f: &str| time::parse_instant(s, tz).map_err(|e| FixtureError::Instant(field(f), e));
        let opt_instant = |s: &Option<String>, f: &str| s.as_deref().map(|s| instant(s, f)).transpose();
        let care_units = match &self.care_units {
            None => None,
            Some(units) => Some(
                units
                    .iter()
                    .map(|u| HsaId::parse(u).map_err(|_| FixtureError::Field(field("care_units"), "not an HSA-ID")))
                    .collect::<Result<Arc<[HsaId]>, _>>()?,
            ),
        };
        Ok(Rule {
            id,
            kind,
            subject: pid(&self.subject, &field("subject"))?,
            guardian: self
                .guardian
                .as_deref()
                .map(|g| pid(g, &field("guardian")))
                .transpose()?,
            services,
            valid_from: instant(&self.valid_from, "valid_from")?,
            valid_until: opt_instant(&self.valid_until, "valid_until")?,
            lifted_at: opt_instant(&self.lifted_at, "lifted_at")?,
            care_units,
        })
    }
}

impl CaseFile {
    /// The question this case asks.
    pub fn query(&self, tz: &TimeZone) -> Result<Query, FixtureError> {
        Ok(Query {
            actor: pid(&self.actor, "actor")?,
            subject: pid(&self.subject, "subject")?,
            service: Service::parse(&self.service).ok_or(FixtureError::Field("service".into(), "unknown service"))?,
            at: time::parse_instant(&self.at, tz).map_err(|e| FixtureError::Instant("at".into(), e))?,
        })
    }
}

fn pid(s: &str, field: &str) -> Result<Pid, FixtureError> {
    Pid::parse(s, REFERENCE).map_err(|e| FixtureError::Identity(field.into(), e))
}
