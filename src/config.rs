//! Region settings as written in a config file (TOML) or a fixture (JSON),
//! converted once into the typed [`Settings`] with errors that name the bad
//! setting.

use serde::Deserialize;

use crate::model::{HsaId, Settings};
use crate::time::LeapDay;

/// The region-settings section as written. Every field is optional; what is
/// left out keeps its default (SPEC §3).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSettings {
    /// The two age limits.
    pub age_limits: Option<AgeLimitsFile>,
    /// `"feb28"` or `"mar1"`.
    pub leap_day_birthday: Option<String>,
    /// Whether `protected_guardian` applies.
    pub protected_guardian: Option<bool>,
    /// The text for a disabled child in the switch list.
    pub disabled_message: Option<String>,
    /// Units whose notes are never shown online.
    pub excluded_care_units: Option<Vec<String>>,
}

/// `[age_limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgeLimitsFile {
    /// From this age the journal and e-services close to guardians (13).
    pub guardian: Option<u8>,
    /// From this age the subject reads their own journal (16).
    pub own_journal: Option<u8>,
}

/// A setting that cannot be used; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `leap_day_birthday` is neither `feb28` nor `mar1`.
    #[error("`leap_day_birthday`: must be `feb28` or `mar1`")]
    LeapDay,
    /// An entry of `excluded_care_units` is not an HSA-ID.
    #[error("`excluded_care_units[{0}]`: must be an HSA-ID such as `SE2321000131-E000000000001`")]
    ExcludedUnit(usize),
    /// The age limits do not hang together.
    #[error(transparent)]
    Settings(#[from] crate::model::SettingsError),
    /// The file is not TOML of the documented shape; the message names the key.
    #[error("{0}")]
    File(String),
    /// A `[server]` setting has a value that cannot be used.
    #[error("`server.{0}`: {1}")]
    Server(&'static str, &'static str),
}

/// The config file (`--config`, TOML): the region settings at the top level
/// and an optional `[server]` table with the listener's settings. Every key
/// is optional; flags and environment variables override the file.
#[derive(Debug, Default)]
pub struct ConfigFile {
    /// The region settings.
    pub region: RegionSettings,
    /// The `[server]` table.
    pub server: ServerFile,
}

/// `[server]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Where the check listener binds.
    pub check_addr: Option<String>,
    /// Most connections open at once.
    pub max_connections: Option<usize>,
    /// Milliseconds a client has to send its request head.
    pub header_read_timeout_ms: Option<u64>,
    /// Milliseconds an idle keep-alive connection is kept.
    pub idle_timeout_ms: Option<u64>,
    /// `text` or `json`.
    pub log_format: Option<String>,
    /// Header names for `/v1/authz`.
    pub authz_headers: Option<AuthzHeadersFile>,
    /// Where the admin listener binds.
    pub admin_addr: Option<String>,
    /// The embedded store and snapshot files.
    pub data_dir: Option<String>,
    /// The admin tokens file.
    pub admin_tokens: Option<String>,
    /// `postgres://…` for fleet mode.
    pub store: Option<String>,
    /// Peers' admin listeners to fetch a snapshot file from at start-up.
    pub peers: Option<Vec<String>>,
    /// Milliseconds without contact with PostgreSQL before checks answer 503.
    pub max_staleness_ms: Option<u64>,
    /// Milliseconds a check with a newer `min_revision` waits.
    pub min_revision_wait_ms: Option<u64>,
    /// Milliseconds between reads of the change log when nothing wakes the node.
    pub poll_ms: Option<u64>,
    /// Overlay entries that start a background fold.
    pub fold_at: Option<usize>,
}

/// `[server.authz_headers]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzHeadersFile {
    /// Default `x-actor-id`.
    pub actor: Option<String>,
    /// Default `x-subject-id`.
    pub subject: Option<String>,
    /// Default `x-service`.
    pub service: Option<String>,
}

impl ConfigFile {
    /// Parses the TOML text of a config file.
    pub fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::File(e.message().to_owned()))?;
        let server = match table.remove("server") {
            None => ServerFile::default(),
            Some(v) => v
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::File(format!("`server`: {}", e.message())))?,
        };
        let region = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::File(e.message().to_owned()))?;
        Ok(ConfigFile { region, server })
    }
}

impl RegionSettings {
    /// Converts into [`Settings`], starting from the defaults.
    pub fn to_settings(&self) -> Result<Settings, ConfigError> {
        let mut s = Settings::default();
        if let Some(limits) = &self.age_limits {
            s.guardian_age_limit = limits.guardian.unwrap_or(s.guardian_age_limit);
            s.own_journal_age = limits.own_journal.unwrap_or(s.own_journal_age);
        }
        if let Some(leap) = &self.leap_day_birthday {
            s.leap_day = match leap.as_str() {
                "feb28" => LeapDay::Feb28,
                "mar1" => LeapDay::Mar1,
                _ => return Err(ConfigError::LeapDay),
            };
        }
        if let Some(p) = self.protected_guardian {
            s.protected_guardian = p;
        }
        if let Some(m) = &self.disabled_message {
            s.disabled_message = m.clone();
        }
        if let Some(units) = &self.excluded_care_units {
            s.excluded_care_units = units
                .iter()
                .enumerate()
                .map(|(i, u)| HsaId::parse(u).map_err(|_| ConfigError::ExcludedUnit(i)))
                .collect::<Result<_, _>>()?;
        }
        s.validate()?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(json: &str) -> Result<Settings, ConfigError> {
        serde_json::from_str::<RegionSettings>(json).unwrap().to_settings()
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(settings("{}"), Ok(Settings::default()));
        let s = settings(
            r#"{"leap_day_birthday": "mar1", "protected_guardian": false,
            "excluded_care_units": ["SE2321000131-E000000000123"], "age_limits": {"guardian": 12}}"#,
        )
        .unwrap();
        assert_eq!(s.leap_day, LeapDay::Mar1);
        assert!(!s.protected_guardian);
        assert_eq!(s.guardian_age_limit, 12);
        assert_eq!(s.own_journal_age, 16);
        assert_eq!(s.excluded_care_units[0].as_str(), "SE2321000131-E000000000123");
    }

    #[test]
    fn errors_name_the_setting() {
        let e = settings(r#"{"leap_day_birthday": "march"}"#).unwrap_err();
        assert!(e.to_string().starts_with("`leap_day_birthday`"), "{e}");
        let e = settings(r#"{"excluded_care_units": ["SE1-x"]}"#).unwrap_err();
        assert!(e.to_string().starts_with("`excluded_care_units[0]`"), "{e}");
        let e = settings(r#"{"age_limits": {"guardian": 16, "own_journal": 16}}"#).unwrap_err();
        assert!(e.to_string().starts_with("`age_limits`"), "{e}");
        assert!(serde_json::from_str::<RegionSettings>(r#"{"leap_day": "feb28"}"#).is_err());
    }

    #[test]
    fn a_config_file_holds_region_and_server_settings() {
        let f = ConfigFile::parse(
            r#"
            leap_day_birthday = "mar1"
            excluded_care_units = ["SE2321000131-E000000000123"]
            [age_limits]
            guardian = 13
            [server]
            check_addr = "0.0.0.0:7070"
            max_connections = 10
            [server.authz_headers]
            actor = "x-user"
            "#,
        )
        .unwrap();
        assert_eq!(f.region.to_settings().unwrap().leap_day, LeapDay::Mar1);
        assert_eq!(f.server.check_addr.as_deref(), Some("0.0.0.0:7070"));
        assert_eq!(f.server.max_connections, Some(10));
        assert_eq!(f.server.authz_headers.unwrap().actor.as_deref(), Some("x-user"));
        assert!(ConfigFile::parse("").unwrap().region.to_settings().is_ok());
    }

    #[test]
    fn config_file_errors_name_the_key() {
        let e = ConfigFile::parse("leap_day = \"feb28\"").unwrap_err().to_string();
        assert!(e.contains("`leap_day`"), "{e}");
        let e = ConfigFile::parse("[server]\nmax_conections = 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`server`") && e.contains("`max_conections`"), "{e}");
        let e = ConfigFile::parse("[server]\nmax_connections = \"many\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`server`"), "{e}");
        assert!(ConfigFile::parse("leap_day_birthday = ").is_err());
    }
}
