//! Configuration, parsed once at start-up into typed values with errors
//! that name the bad setting: the region settings as written in a config
//! file (TOML) or a fixture (JSON), converted into [`Settings`]; and
//! `serve`'s flags, environment and `[server]` table merged into one
//! [`ServeConfig`] ([`ServeFlags::resolve`], pure, unit-tested here).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hyper::header::HeaderName;
use serde::Deserialize;

use crate::core::model::{HsaId, Settings};
use crate::core::time::LeapDay;
use crate::http::listener::{AuthzHeaders, ListenerConfig};
use crate::http::tls::TlsFiles;
use crate::node::{NodeConfig, Peer};

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
    Settings(#[from] crate::core::model::SettingsError),
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
    /// The `[console]` table, if the console is on.
    pub console: Option<ConsoleFile>,
}

/// `[console]` as written (SPEC §9).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleFile {
    /// `[console.oidc]`: the identity provider.
    pub oidc: Option<OidcFile>,
    /// `[console.smtp]`: where confirmation e-mails go out.
    pub smtp: Option<SmtpFile>,
}

/// `[console.oidc]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcFile {
    /// The issuer URL.
    pub issuer: String,
    /// The console's client id.
    pub client_id: String,
    /// The file holding the client secret.
    pub client_secret_file: String,
    /// `https://…/console/callback`.
    pub redirect_uri: String,
    /// The claim with the HSA-ID (default `employeeHsaId`).
    pub hsa_id_claim: Option<String>,
    /// The claim with the care unit (default `healthCareUnitHsaId`).
    pub unit_claim: Option<String>,
    /// The claim with the name (default `name`).
    pub name_claim: Option<String>,
    /// The claim with the role.
    pub role_claim: String,
    /// The role claim's values: `registrar`, `unit` or `auditor` each.
    pub roles: std::collections::BTreeMap<String, String>,
    /// Scopes beside `openid` (default `["profile"]`).
    pub scopes: Option<Vec<String>>,
}

/// `[console.smtp]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpFile {
    /// The relay's host name.
    pub host: String,
    /// Its submission port (default 587); STARTTLS is always required.
    pub port: Option<u16>,
    /// The sender address.
    pub from: String,
    /// A CA to trust for the relay (PEM) instead of the web's roots.
    pub ca_file: Option<String>,
    /// A user name, if the relay wants one.
    pub username: Option<String>,
    /// The file holding its password.
    pub password_file: Option<String>,
    /// Seconds before the first retry (default 30); each retry waits twice as long.
    pub retry_min_seconds: Option<u64>,
    /// The longest wait between retries, in seconds (default 900).
    pub retry_max_seconds: Option<u64>,
}

impl ConsoleFile {
    /// The console's options: OIDC login, and mail if configured.
    pub fn options(&self) -> Result<crate::http::console::ConsoleOptions, SettingError> {
        use crate::actor::Role;
        use crate::http::console::{ConsoleOptions, LoginOptions};
        let o = self
            .oidc
            .as_ref()
            .ok_or_else(|| bad("console.oidc", "is required (or run `serve --demo` for the demo login)"))?;
        let mut roles = Vec::new();
        for (value, role) in &o.roles {
            let role = match role.as_str() {
                "registrar" => Role::Registrar,
                "unit" => Role::Unit,
                "auditor" => Role::Auditor,
                _ => {
                    return Err(bad(
                        "console.oidc.roles",
                        "each value must be `registrar`, `unit` or `auditor`",
                    ));
                }
            };
            roles.push((value.clone(), role));
        }
        if roles.is_empty() {
            return Err(bad("console.oidc.roles", "must map at least one role claim value"));
        }
        let login = LoginOptions::Oidc(crate::http::console::oidc::OidcConfig {
            issuer: o.issuer.clone(),
            client_id: o.client_id.clone(),
            client_secret_file: PathBuf::from(&o.client_secret_file),
            redirect_uri: o.redirect_uri.clone(),
            hsa_id_claim: o.hsa_id_claim.clone().unwrap_or_else(|| "employeeHsaId".into()),
            unit_claim: o.unit_claim.clone().unwrap_or_else(|| "healthCareUnitHsaId".into()),
            name_claim: o.name_claim.clone().unwrap_or_else(|| "name".into()),
            role_claim: o.role_claim.clone(),
            roles,
            scopes: o.scopes.clone().unwrap_or_else(|| vec!["profile".into()]),
        });
        Ok(ConsoleOptions {
            login,
            smtp: self.smtp.as_ref().map(SmtpFile::config),
        })
    }
}

impl SmtpFile {
    /// The sender's settings.
    pub fn config(&self) -> crate::mail::SmtpConfig {
        let mut c = crate::mail::SmtpConfig::new(&self.host, &self.from);
        c.port = self.port.unwrap_or(587);
        c.ca_file = self.ca_file.as_ref().map(PathBuf::from);
        c.username = self.username.clone();
        c.password_file = self.password_file.as_ref().map(PathBuf::from);
        if let Some(s) = self.retry_min_seconds {
            c.retry_min = Duration::from_secs(s.max(1));
        }
        if let Some(s) = self.retry_max_seconds {
            c.retry_max = Duration::from_secs(s.max(1));
        }
        c
    }
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
    /// Milliseconds a request body has to arrive after its head.
    pub body_read_timeout_ms: Option<u64>,
    /// Milliseconds a client may leave an answer unread.
    pub write_timeout_ms: Option<u64>,
    /// Milliseconds a population upload has to arrive whole.
    pub import_timeout_ms: Option<u64>,
    /// Milliseconds a write waits to be visible to checks before it
    /// answers 503 and the instance stops answering until it is.
    pub visible_within_ms: Option<u64>,
    /// `text` or `json`.
    pub log_format: Option<String>,
    /// Header names for `/v1/authz`.
    pub authz_headers: Option<AuthzHeadersFile>,
    /// Where the admin listener binds.
    pub admin_addr: Option<String>,
    /// Envoy's gRPC ext_authz: `HOST:PORT` or `unix:/PATH`.
    pub grpc_addr: Option<String>,
    /// The admin listener's TLS certificate chain (PEM).
    pub admin_tls_cert: Option<String>,
    /// The admin listener's TLS private key (PEM).
    pub admin_tls_key: Option<String>,
    /// Plain HTTP on a non-loopback admin address, on purpose.
    pub admin_insecure: Option<bool>,
    /// The CA of staff's client certificates (PEM).
    pub admin_client_ca: Option<String>,
    /// The check listener's TLS certificate chain (PEM).
    pub check_tls_cert: Option<String>,
    /// The check listener's TLS private key (PEM).
    pub check_tls_key: Option<String>,
    /// The CA of the peers' admin certificates (PEM).
    pub peer_ca: Option<String>,
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
    /// Years the access log is kept before `prune-access-log` may remove it.
    pub access_log_retention_years: Option<u16>,
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
        let console = match table.remove("console") {
            None => None,
            Some(v) => Some(
                v.try_into()
                    .map_err(|e: toml::de::Error| ConfigError::File(format!("`console`: {}", e.message())))?,
            ),
        };
        let region = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::File(e.message().to_owned()))?;
        Ok(ConfigFile {
            region,
            server,
            console,
        })
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

/// Flags of `serve`; each can also be set in the environment
/// (`GUARDIAN_ACCESS_…`) or in the config file's `[server]` table.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeFlags {
    /// Serve the demo region from a throwaway store and print ready-to-paste
    /// `curl` lines with demo tokens.
    #[arg(long, conflicts_with_all = ["scenario", "store"])]
    pub demo: bool,
    /// Serve a throwaway store seeded from this scenario file (JSON).
    #[arg(long, env = "GUARDIAN_ACCESS_SCENARIO", conflicts_with = "store")]
    pub scenario: Option<PathBuf>,
    /// Region settings and `[server]` settings (TOML).
    #[arg(long, env = "GUARDIAN_ACCESS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the check listener binds [default: 127.0.0.1:7070].
    #[arg(long, env = "GUARDIAN_ACCESS_CHECK_ADDR")]
    pub check_addr: Option<String>,
    /// The admin listener's TLS certificate chain (PEM); with `--admin-tls-key`
    /// it serves HTTPS, re-reading both on SIGHUP.
    #[arg(long, env = "GUARDIAN_ACCESS_ADMIN_TLS_CERT")]
    pub admin_tls_cert: Option<PathBuf>,
    /// The admin listener's TLS private key (PEM).
    #[arg(long, env = "GUARDIAN_ACCESS_ADMIN_TLS_KEY")]
    pub admin_tls_key: Option<PathBuf>,
    /// The check listener's TLS certificate chain (PEM), for a check
    /// listener reached from another host; with `--check-tls-key`.
    #[arg(long, env = "GUARDIAN_ACCESS_CHECK_TLS_CERT")]
    pub check_tls_cert: Option<PathBuf>,
    /// The check listener's TLS private key (PEM).
    #[arg(long, env = "GUARDIAN_ACCESS_CHECK_TLS_KEY")]
    pub check_tls_key: Option<PathBuf>,
    /// The CA of staff's client certificates (PEM, e.g. SITHS): with it the
    /// admin listener asks for one, and its HSA-ID names the person
    /// (`identities` in the tokens file). Needs the admin TLS files.
    #[arg(long, env = "GUARDIAN_ACCESS_ADMIN_CLIENT_CA")]
    pub admin_client_ca: Option<PathBuf>,
    /// Serve the admin API as plain HTTP on a non-loopback address anyway
    /// (tokens and personal data cross the network in clear).
    #[arg(long, env = "GUARDIAN_ACCESS_ADMIN_INSECURE")]
    pub admin_insecure: bool,
    /// Envoy's gRPC ext_authz: `HOST:PORT` or `unix:/PATH` [default: off].
    #[arg(long, env = "GUARDIAN_ACCESS_GRPC_ADDR")]
    pub grpc_addr: Option<String>,
    /// Where the admin listener binds [default: 127.0.0.1:7071].
    #[arg(long, env = "GUARDIAN_ACCESS_ADMIN_ADDR")]
    pub admin_addr: Option<String>,
    /// The embedded store and snapshot files [default: ./data].
    #[arg(long, env = "GUARDIAN_ACCESS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The admin tokens (JSON, SPEC §5).
    #[arg(long, env = "GUARDIAN_ACCESS_ADMIN_TOKENS")]
    pub admin_tokens: Option<PathBuf>,
    /// `postgres://…`: share one PostgreSQL with a fleet (else the embedded store).
    #[arg(long, env = "GUARDIAN_ACCESS_STORE")]
    pub store: Option<String>,
    /// A peer's admin listener (`http://host:7071`) to fetch a snapshot file
    /// from at start-up; repeatable. Its `peer` token is read from
    /// `GUARDIAN_ACCESS_PEER_TOKEN`.
    #[arg(long = "peer")]
    pub peers: Vec<String>,
    /// The CA of the peers' admin certificates (PEM), for `https` peers.
    #[arg(long, env = "GUARDIAN_ACCESS_PEER_CA")]
    pub peer_ca: Option<PathBuf>,
    /// Milliseconds without contact with PostgreSQL before checks answer 503 [default: 30000].
    #[arg(long, env = "GUARDIAN_ACCESS_MAX_STALENESS_MS")]
    pub max_staleness_ms: Option<u64>,
    /// Milliseconds a check with a `min_revision` not reached yet waits [default: 500].
    #[arg(long, env = "GUARDIAN_ACCESS_MIN_REVISION_WAIT_MS")]
    pub min_revision_wait_ms: Option<u64>,
    /// Most client connections at once, per listener [default: 1024].
    #[arg(long, env = "GUARDIAN_ACCESS_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Milliseconds a client has to send a request head [default: 5000].
    #[arg(long, env = "GUARDIAN_ACCESS_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// Milliseconds an idle keep-alive connection is kept [default: 60000].
    #[arg(long, env = "GUARDIAN_ACCESS_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Milliseconds a request body has to arrive after its head (else 408)
    /// [default: 10000].
    #[arg(long, env = "GUARDIAN_ACCESS_BODY_READ_TIMEOUT_MS")]
    pub body_read_timeout_ms: Option<u64>,
    /// Milliseconds a client may leave an answer unread before its
    /// connection is closed [default: 10000].
    #[arg(long, env = "GUARDIAN_ACCESS_WRITE_TIMEOUT_MS")]
    pub write_timeout_ms: Option<u64>,
    /// Milliseconds a population upload has to arrive whole (else 408,
    /// nothing applied) [default: 1800000].
    #[arg(long, env = "GUARDIAN_ACCESS_IMPORT_TIMEOUT_MS")]
    pub import_timeout_ms: Option<u64>,
    /// Milliseconds a write waits to be visible to checks; past it the write
    /// answers 503 and checks answer 503 until it is [default: 10000; a
    /// population import at least 120000].
    #[arg(long, env = "GUARDIAN_ACCESS_VISIBLE_WITHIN_MS")]
    pub visible_within_ms: Option<u64>,
    /// `text` or `json` [default: text]. The filter is `RUST_LOG` (default `info`).
    #[arg(long, env = "GUARDIAN_ACCESS_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Header `/v1/authz` reads the actor from [default: x-actor-id].
    #[arg(long, env = "GUARDIAN_ACCESS_AUTHZ_ACTOR_HEADER")]
    pub authz_actor_header: Option<String>,
    /// Header `/v1/authz` reads the subject from [default: x-subject-id].
    #[arg(long, env = "GUARDIAN_ACCESS_AUTHZ_SUBJECT_HEADER")]
    pub authz_subject_header: Option<String>,
    /// Header `/v1/authz` reads the service from [default: x-service].
    #[arg(long, env = "GUARDIAN_ACCESS_AUTHZ_SERVICE_HEADER")]
    pub authz_service_header: Option<String>,
}

/// Where the check listener binds unless told otherwise.
pub const DEFAULT_CHECK_ADDR: &str = "127.0.0.1:7070";
/// Where the admin listener binds unless told otherwise.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:7071";
/// The data directory unless told otherwise.
pub const DEFAULT_DATA_DIR: &str = "data";

/// An address to listen on: TCP, or a Unix socket (`unix:/PATH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `HOST:PORT`.
    Tcp(SocketAddr),
    /// `unix:/PATH`.
    Unix(PathBuf),
}

impl ListenAddr {
    fn parse(s: &str, name: &'static str) -> Result<ListenAddr, SettingError> {
        match s.strip_prefix("unix:") {
            Some(path) if path.starts_with('/') => Ok(ListenAddr::Unix(PathBuf::from(path))),
            Some(_) => Err(bad(
                name,
                "a Unix socket must be an absolute path: `unix:/run/guardian-access/grpc.sock`",
            )),
            None => s
                .parse()
                .map(ListenAddr::Tcp)
                .map_err(|_| bad(name, "must be an address such as `127.0.0.1:7070` or `unix:/PATH`")),
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Where `serve` gets its data from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The demo region in a throwaway store (`--demo`).
    Demo,
    /// A throwaway store seeded from a scenario file (`--scenario`).
    Scenario(PathBuf),
    /// The embedded store in a directory.
    Sqlite(PathBuf),
    /// PostgreSQL, by URL.
    Postgres(String),
}

/// Everything `serve` needs, merged and validated: flags (and their
/// environment variables) over the config file's `[server]` table over the
/// defaults. Built by [`ServeFlags::resolve`], without I/O.
#[derive(Debug)]
pub struct ServeConfig {
    /// Where the check listener binds: TCP, or a Unix socket.
    pub check_addr: ListenAddr,
    /// Where the admin listener binds.
    pub admin_addr: SocketAddr,
    /// Where Envoy's gRPC ext_authz listens, if anywhere.
    pub grpc_addr: Option<ListenAddr>,
    /// The admin listener's certificate and key, if it serves HTTPS.
    pub admin_tls: Option<TlsFiles>,
    /// The check listener's certificate and key, if it serves HTTPS.
    pub check_tls: Option<TlsFiles>,
    /// Both listeners' limits and the check listener's settings.
    pub listener: ListenerConfig,
    /// JSON log lines instead of text.
    pub json_logs: bool,
    /// Where the data comes from.
    pub source: Source,
    /// The data directory (snapshot files; the embedded store).
    pub data_dir: PathBuf,
    /// The admin tokens file, if any.
    pub admin_tokens: Option<PathBuf>,
    /// How the node follows the store (its `data_dir` is set from
    /// [`ServeConfig::data_dir`] when the store is opened).
    pub node: NodeConfig,
}

/// A flag or setting that cannot be used; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{name}`: {what}")]
pub struct SettingError {
    /// The setting's name, as in the config file.
    pub name: &'static str,
    /// What is wrong with it.
    pub what: String,
}

fn bad(name: &'static str, what: impl Into<String>) -> SettingError {
    SettingError {
        name,
        what: what.into(),
    }
}

/// A certificate and its key, both or neither; the setting missing named.
fn tls_pair(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    (cert_name, key_name): (&'static str, &'static str),
) -> Result<Option<TlsFiles>, SettingError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert,
            key,
            client_ca: None,
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(bad(key_name, format!("is required with `{cert_name}`"))),
        (None, Some(_)) => Err(bad(cert_name, format!("is required with `{key_name}`"))),
    }
}

/// The flag if given, else the file's value, else the default.
fn pick<T: Clone>(flag: &Option<T>, file: &Option<T>, default: T) -> T {
    flag.clone().or_else(|| file.clone()).unwrap_or(default)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ServeFlags {
    /// Merges these flags over `file` (the parsed `--config`) over the
    /// defaults. `peer_token` is `GUARDIAN_ACCESS_PEER_TOKEN`, needed when
    /// peers are named.
    pub fn resolve(&self, file: &ConfigFile, peer_token: Option<&str>) -> Result<ServeConfig, SettingError> {
        let f = &file.server;
        let addr = |flag: &Option<String>, file: &Option<String>, default: &str, name: &'static str| {
            pick(flag, file, default.into())
                .parse::<SocketAddr>()
                .map_err(|_| bad(name, format!("must be an address such as `{default}`")))
        };
        let check_addr = ListenAddr::parse(
            &pick(&self.check_addr, &f.check_addr, DEFAULT_CHECK_ADDR.to_owned()),
            "check_addr",
        )?;
        let admin_addr = addr(&self.admin_addr, &f.admin_addr, DEFAULT_ADMIN_ADDR, "admin_addr")?;
        // A path: the flag, else the file's.
        let path =
            |flag: &Option<PathBuf>, file: &Option<String>| flag.clone().or_else(|| file.as_ref().map(PathBuf::from));
        let client_ca = path(&self.admin_client_ca, &f.admin_client_ca);
        let admin_tls = tls_pair(
            path(&self.admin_tls_cert, &f.admin_tls_cert),
            path(&self.admin_tls_key, &f.admin_tls_key),
            ("admin_tls_cert", "admin_tls_key"),
        )?
        .map(|files| TlsFiles {
            client_ca: client_ca.clone(),
            ..files
        });
        if admin_tls.is_none() && client_ca.is_some() {
            return Err(bad("admin_client_ca", "needs `admin_tls_cert` and `admin_tls_key`"));
        }
        let check_tls = tls_pair(
            path(&self.check_tls_cert, &f.check_tls_cert),
            path(&self.check_tls_key, &f.check_tls_key),
            ("check_tls_cert", "check_tls_key"),
        )?;
        let insecure = self.admin_insecure || f.admin_insecure.unwrap_or(false);
        if admin_tls.is_none() && !admin_addr.ip().is_loopback() && !insecure {
            return Err(bad(
                "admin_addr",
                "is reachable from other hosts: give `admin_tls_cert` and `admin_tls_key`, \
                 or `admin_insecure` to serve tokens and personal data in clear on purpose",
            ));
        }
        let grpc_addr = self
            .grpc_addr
            .as_ref()
            .or(f.grpc_addr.as_ref())
            .map(|a| ListenAddr::parse(a, "grpc_addr"))
            .transpose()?;
        let defaults = ListenerConfig::default();
        let max_connections = pick(&self.max_connections, &f.max_connections, defaults.max_connections);
        if max_connections == 0 {
            return Err(bad("max_connections", "must be at least 1"));
        }
        let ms = |flag: &Option<u64>, file: &Option<u64>, default: Duration, name: &'static str| match pick(
            flag,
            file,
            millis(default),
        ) {
            0 => Err(bad(name, "must be at least 1 ms")),
            ms => Ok(Duration::from_millis(ms)),
        };
        let header_read_timeout = ms(
            &self.header_read_timeout_ms,
            &f.header_read_timeout_ms,
            defaults.header_read_timeout,
            "header_read_timeout_ms",
        )?;
        let body_read_timeout = ms(
            &self.body_read_timeout_ms,
            &f.body_read_timeout_ms,
            defaults.body_read_timeout,
            "body_read_timeout_ms",
        )?;
        let write_timeout = ms(
            &self.write_timeout_ms,
            &f.write_timeout_ms,
            defaults.write_timeout,
            "write_timeout_ms",
        )?;
        let import_timeout = ms(
            &self.import_timeout_ms,
            &f.import_timeout_ms,
            defaults.import_timeout,
            "import_timeout_ms",
        )?;
        let idle_timeout = ms(
            &self.idle_timeout_ms,
            &f.idle_timeout_ms,
            defaults.idle_timeout,
            "idle_timeout_ms",
        )?;
        let min_revision_wait = ms(
            &self.min_revision_wait_ms,
            &f.min_revision_wait_ms,
            defaults.min_revision_wait,
            "min_revision_wait_ms",
        )?;
        let json_logs = match pick(&self.log_format, &f.log_format, "text".into()).as_str() {
            "text" => false,
            "json" => true,
            _ => return Err(bad("log_format", "must be `text` or `json`")),
        };
        let h = f.authz_headers.as_ref();
        let d = AuthzHeaders::default();
        let header = |flag: &Option<String>, file: Option<&String>, default: HeaderName, name: &'static str| match flag
            .as_ref()
            .or(file)
        {
            None => Ok(default),
            Some(v) => HeaderName::try_from(v.as_str()).map_err(|_| bad(name, "not a valid header name")),
        };
        let authz = AuthzHeaders {
            actor: header(
                &self.authz_actor_header,
                h.and_then(|h| h.actor.as_ref()),
                d.actor,
                "authz_actor_header",
            )?,
            subject: header(
                &self.authz_subject_header,
                h.and_then(|h| h.subject.as_ref()),
                d.subject,
                "authz_subject_header",
            )?,
            service: header(
                &self.authz_service_header,
                h.and_then(|h| h.service.as_ref()),
                d.service,
                "authz_service_header",
            )?,
        };

        let data_dir = self
            .data_dir
            .clone()
            .or_else(|| f.data_dir.as_ref().map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let store = self.store.clone().or_else(|| f.store.clone());
        let source = match (&self.scenario, self.demo, store) {
            (Some(path), _, _) => Source::Scenario(path.clone()),
            (None, true, _) => Source::Demo,
            (None, false, Some(url)) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Source::Postgres(url)
            }
            (None, false, Some(_)) => {
                return Err(bad(
                    "store",
                    "must be a `postgres://` URL (the embedded store needs no flag)",
                ));
            }
            (None, false, None) => Source::Sqlite(data_dir.clone()),
        };
        let fleet = matches!(source, Source::Postgres(_));
        // The embedded store is in this process, but reading it can still
        // fail (a damaged file, a full disk): past this, checks answer 503
        // there too rather than carry on from a snapshot that may miss a
        // committed write.
        let max_staleness = match self.max_staleness_ms.or(f.max_staleness_ms) {
            Some(0) => return Err(bad("max_staleness_ms", "must be at least 1 ms")),
            ms => Some(Duration::from_millis(ms.unwrap_or(DEFAULT_MAX_STALENESS_MS))),
        };
        let peers: Vec<String> = if self.peers.is_empty() {
            f.peers.clone().unwrap_or_default()
        } else {
            self.peers.clone()
        };
        let peer_token = peer_token.unwrap_or_default();
        let peer_ca = self.peer_ca.clone().or_else(|| f.peer_ca.as_ref().map(PathBuf::from));
        if peers.iter().any(|p| p.starts_with("https://")) && peer_ca.is_none() {
            return Err(bad(
                "peer_ca",
                "is required for `https` peers: the CA of the fleet's admin certificates",
            ));
        }
        if !peers.is_empty() && peer_token.is_empty() {
            return Err(bad(
                "peers",
                "set `GUARDIAN_ACCESS_PEER_TOKEN` to a `peer` token the peers accept",
            ));
        }
        let poll_ms = f.poll_ms.unwrap_or(if fleet { 500 } else { 1000 }).max(1);
        let node_defaults = NodeConfig::default();
        let visible_within = ms(
            &self.visible_within_ms,
            &f.visible_within_ms,
            node_defaults.visible_within,
            "visible_within_ms",
        )?;
        let node = NodeConfig {
            visible_within,
            fold_at: f.fold_at.unwrap_or(node_defaults.fold_at).max(1),
            max_staleness,
            poll_every: Duration::from_millis(poll_ms),
            peers: peers
                .into_iter()
                .map(|url| Peer {
                    url,
                    token: peer_token.to_owned(),
                    ca: peer_ca.clone(),
                })
                .collect(),
            ..node_defaults
        };
        Ok(ServeConfig {
            check_addr,
            admin_addr,
            admin_tls,
            check_tls,
            grpc_addr,
            listener: ListenerConfig {
                max_connections,
                header_read_timeout,
                body_read_timeout,
                write_timeout,
                import_timeout,
                idle_timeout,
                authz,
                min_revision_wait,
                ..defaults
            },
            json_logs,
            admin_tokens: self
                .admin_tokens
                .clone()
                .or_else(|| f.admin_tokens.as_ref().map(PathBuf::from)),
            source,
            data_dir,
            node,
        })
    }
}

/// Years the access log is kept unless the config file says otherwise.
pub const DEFAULT_ACCESS_LOG_RETENTION_YEARS: u16 = 10;

/// Without contact with PostgreSQL for this long, checks answer `503`.
pub const DEFAULT_MAX_STALENESS_MS: u64 = 30_000;

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

    fn resolve(flags: &ServeFlags, file: &str) -> Result<ServeConfig, SettingError> {
        flags.resolve(&ConfigFile::parse(file).unwrap(), None)
    }

    #[test]
    fn serve_defaults_come_from_one_place() {
        let c = resolve(&ServeFlags::default(), "").unwrap();
        assert_eq!(c.check_addr.to_string(), DEFAULT_CHECK_ADDR);
        assert_eq!(c.admin_addr.to_string(), DEFAULT_ADMIN_ADDR);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.source, Source::Sqlite(PathBuf::from(DEFAULT_DATA_DIR)));
        let l = ListenerConfig::default();
        assert_eq!(c.listener.max_connections, l.max_connections);
        assert_eq!(c.listener.idle_timeout, l.idle_timeout);
        assert_eq!(
            c.node.max_staleness,
            Some(Duration::from_millis(DEFAULT_MAX_STALENESS_MS)),
            "failing to read even the embedded store stops the answers"
        );
        assert_eq!(c.node.poll_every, Duration::from_secs(1));
        assert!(!c.json_logs);
        assert_eq!(c.admin_tokens, None);
        assert_eq!(c.grpc_addr, None, "gRPC is off unless asked for");
    }

    #[test]
    fn an_admin_listener_off_the_host_needs_tls_or_says_insecure() {
        let off_host = |more: ServeFlags| ServeFlags {
            admin_addr: Some("0.0.0.0:7071".into()),
            ..more
        };
        let e = resolve(&off_host(ServeFlags::default()), "").unwrap_err();
        assert_eq!(e.name, "admin_addr");
        let tls = off_host(ServeFlags {
            admin_tls_cert: Some("/etc/ga/cert.pem".into()),
            admin_tls_key: Some("/etc/ga/key.pem".into()),
            ..ServeFlags::default()
        });
        let c = resolve(&tls, "").unwrap();
        assert_eq!(c.admin_tls.unwrap().key, PathBuf::from("/etc/ga/key.pem"));
        let insecure = off_host(ServeFlags {
            admin_insecure: true,
            ..ServeFlags::default()
        });
        assert!(resolve(&insecure, "").unwrap().admin_tls.is_none());
        let c = resolve(
            &ServeFlags::default(),
            "[server]\nadmin_addr = \"10.1.2.3:7071\"\nadmin_insecure = true",
        )
        .unwrap();
        assert!(c.admin_tls.is_none());
        let half = ServeFlags {
            admin_tls_cert: Some("/etc/ga/cert.pem".into()),
            ..ServeFlags::default()
        };
        assert_eq!(resolve(&half, "").unwrap_err().name, "admin_tls_key");
        assert!(
            resolve(&ServeFlags::default(), "").unwrap().admin_tls.is_none(),
            "loopback may be plain"
        );
    }

    #[test]
    fn the_grpc_listener_is_tcp_or_a_unix_socket() {
        let on = |a: &str| ServeFlags {
            grpc_addr: Some(a.into()),
            ..ServeFlags::default()
        };
        let c = resolve(&on("127.0.0.1:7072"), "").unwrap();
        assert_eq!(c.grpc_addr, Some(ListenAddr::Tcp("127.0.0.1:7072".parse().unwrap())));
        let c = resolve(&on("unix:/run/ga/grpc.sock"), "").unwrap();
        assert_eq!(c.grpc_addr, Some(ListenAddr::Unix("/run/ga/grpc.sock".into())));
        let c = resolve(&ServeFlags::default(), "[server]\ngrpc_addr = \"unix:/tmp/g.sock\"").unwrap();
        let check = ServeFlags {
            check_addr: Some("unix:/run/ga/check.sock".into()),
            ..ServeFlags::default()
        };
        assert_eq!(
            resolve(&check, "").unwrap().check_addr.to_string(),
            "unix:/run/ga/check.sock"
        );
        assert_eq!(c.grpc_addr, Some(ListenAddr::Unix("/tmp/g.sock".into())));
        assert_eq!(resolve(&on("unix:relative.sock"), "").unwrap_err().name, "grpc_addr");
        assert_eq!(resolve(&on("somewhere"), "").unwrap_err().name, "grpc_addr");
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let file = "[server]\ncheck_addr = \"0.0.0.0:9000\"\nmax_connections = 10\nidle_timeout_ms = 1500\nwrite_timeout_ms = 2500\n\
                    log_format = \"json\"\nstore = \"postgres://db/ga\"\n[server.authz_headers]\nactor = \"x-user\"";
        let flags = ServeFlags {
            max_connections: Some(20),
            ..ServeFlags::default()
        };
        let c = resolve(&flags, file).unwrap();
        assert_eq!(c.check_addr.to_string(), "0.0.0.0:9000");
        assert_eq!(c.listener.max_connections, 20);
        assert_eq!(c.listener.idle_timeout, Duration::from_millis(1500));
        assert_eq!(c.listener.write_timeout, Duration::from_millis(2500));
        assert_eq!(
            c.listener.body_read_timeout,
            ListenerConfig::default().body_read_timeout
        );
        assert_eq!(c.listener.authz.actor.as_str(), "x-user");
        assert_eq!(c.listener.authz.subject.as_str(), "x-subject-id");
        assert!(c.json_logs);
        assert_eq!(c.source, Source::Postgres("postgres://db/ga".into()));
        assert_eq!(
            c.node.max_staleness,
            Some(Duration::from_millis(DEFAULT_MAX_STALENESS_MS))
        );
        assert_eq!(c.node.poll_every, Duration::from_millis(500), "a fleet polls faster");
        let demo = ServeFlags {
            demo: true,
            ..ServeFlags::default()
        };
        assert_eq!(resolve(&demo, "").unwrap().source, Source::Demo);
    }

    #[test]
    fn bad_serve_settings_are_named() {
        let name = |flags: ServeFlags, file: &str| resolve(&flags, file).unwrap_err().name;
        let d = ServeFlags::default;
        assert_eq!(
            name(
                ServeFlags {
                    check_addr: Some("nowhere".into()),
                    ..d()
                },
                ""
            ),
            "check_addr"
        );
        assert_eq!(name(d(), "[server]\nmax_connections = 0"), "max_connections");
        assert_eq!(
            name(
                ServeFlags {
                    idle_timeout_ms: Some(0),
                    ..d()
                },
                ""
            ),
            "idle_timeout_ms"
        );
        assert_eq!(
            name(
                ServeFlags {
                    log_format: Some("xml".into()),
                    ..d()
                },
                ""
            ),
            "log_format"
        );
        assert_eq!(
            name(
                ServeFlags {
                    store: Some("mysql://x".into()),
                    ..d()
                },
                ""
            ),
            "store"
        );
        assert_eq!(
            name(
                ServeFlags {
                    authz_actor_header: Some("bad header".into()),
                    ..d()
                },
                ""
            ),
            "authz_actor_header"
        );
        assert_eq!(
            name(
                ServeFlags {
                    max_staleness_ms: Some(0),
                    ..d()
                },
                ""
            ),
            "max_staleness_ms"
        );
        let peers = ServeFlags {
            peers: vec!["http://10.0.0.2:7071".into()],
            ..d()
        };
        assert_eq!(name(peers.clone(), ""), "peers");
        let https = ServeFlags {
            peers: vec!["https://10.0.0.2:7071".into()],
            ..d()
        };
        let e = https
            .resolve(&ConfigFile::default(), Some("a-peer-token-0000000000000"))
            .unwrap_err();
        assert_eq!(e.name, "peer_ca");
        let c = peers
            .resolve(&ConfigFile::default(), Some("a-peer-token-0000000000000"))
            .unwrap();
        assert_eq!(c.node.peers.len(), 1);
        let e = resolve(
            &ServeFlags {
                check_addr: Some("x".into()),
                ..d()
            },
            "",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "`check_addr`: must be an address such as `127.0.0.1:7070` or `unix:/PATH`"
        );
    }

    #[test]
    fn the_console_tables_are_read_and_checked() {
        let text = r#"
[console.oidc]
issuer = "https://idp.example/oidc"
client_id = "ga"
client_secret_file = "/etc/ga/secret"
redirect_uri = "https://ga.example:7071/console/callback"
role_claim = "systemRole"
[console.oidc.roles]
"GA;Kontaktcenter" = "registrar"
"GA;Verksamhetschef" = "unit"
[console.smtp]
host = "smtp.example"
from = "kc@example"
retry_min_seconds = 10
"#;
        let file = ConfigFile::parse(text).unwrap();
        let console = file.console.unwrap();
        let options = console.options().unwrap();
        let crate::http::console::LoginOptions::Oidc(o) = options.login else {
            panic!("not OIDC")
        };
        assert_eq!(o.hsa_id_claim, "employeeHsaId");
        assert_eq!(o.unit_claim, "healthCareUnitHsaId");
        assert_eq!(o.roles.len(), 2);
        let smtp = options.smtp.unwrap();
        assert_eq!((smtp.port, smtp.retry_min), (587, Duration::from_secs(10)));

        let bad_role = text.replace("= \"unit\"", "= \"admin\"");
        let e = ConfigFile::parse(&bad_role)
            .unwrap()
            .console
            .unwrap()
            .options()
            .unwrap_err();
        assert_eq!(e.name, "console.oidc.roles");
        let typo = text.replace("role_claim", "role_claims");
        assert!(
            ConfigFile::parse(&typo)
                .unwrap_err()
                .to_string()
                .contains("role_claims")
        );
        let no_oidc = ConfigFile::parse("[console.smtp]\nhost = \"h\"\nfrom = \"f@e\"\n").unwrap();
        assert_eq!(no_oidc.console.unwrap().options().unwrap_err().name, "console.oidc");
    }
}
