//! `guardian-access serve`: flags, config file and environment merged into
//! one typed configuration, tracing installed, both listeners bound, the
//! store opened and followed, and a clean stop on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use guardian_access::auth::{self, Tokens};
use guardian_access::config::ConfigFile;
use guardian_access::fixtures::Scenario;
use guardian_access::model::{HsaId, RuleId, Settings};
use guardian_access::node::{NodeConfig, Peer};
use guardian_access::server::{AuthzHeaders, ListenerConfig};
use guardian_access::service::{self, Options};
use guardian_access::store::{Caller, NewRule, Role, RuleMeta, Store};
use hyper::header::HeaderName;
use tracing::{info, warn};

/// The unit the demo's restrictions and grants are issued by.
const DEMO_UNIT: &str = "SE2321000131-E000000000001";

/// Flags of `serve`; each can also be set in the environment
/// (`GUARDIAN_ACCESS_…`) or in the config file's `[server]` table.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Serve the demo region from a throwaway store and print ready-to-paste
    /// `curl` lines with demo tokens.
    #[arg(long, conflicts_with_all = ["scenario", "store"])]
    demo: bool,
    /// Serve a throwaway store seeded from this scenario file (JSON).
    #[arg(long, env = "GUARDIAN_ACCESS_SCENARIO", conflicts_with = "store")]
    scenario: Option<PathBuf>,
    /// Region settings and `[server]` settings (TOML).
    #[arg(long, env = "GUARDIAN_ACCESS_CONFIG")]
    config: Option<PathBuf>,
    /// Where the check listener binds [default: 127.0.0.1:7070].
    #[arg(long, env = "GUARDIAN_ACCESS_CHECK_ADDR")]
    check_addr: Option<String>,
    /// Where the admin listener binds [default: 127.0.0.1:7071].
    #[arg(long, env = "GUARDIAN_ACCESS_ADMIN_ADDR")]
    admin_addr: Option<String>,
    /// The embedded store and snapshot files [default: ./data].
    #[arg(long, env = "GUARDIAN_ACCESS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The admin tokens (JSON, SPEC §5).
    #[arg(long, env = "GUARDIAN_ACCESS_ADMIN_TOKENS")]
    admin_tokens: Option<PathBuf>,
    /// `postgres://…`: share one PostgreSQL with a fleet (else the embedded store).
    #[arg(long, env = "GUARDIAN_ACCESS_STORE")]
    store: Option<String>,
    /// A peer's admin listener (`http://host:7071`) to fetch a snapshot file
    /// from at start-up; repeatable. Its `peer` token is read from
    /// `GUARDIAN_ACCESS_PEER_TOKEN`.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Milliseconds without contact with PostgreSQL before checks answer 503 [default: 30000].
    #[arg(long, env = "GUARDIAN_ACCESS_MAX_STALENESS_MS")]
    max_staleness_ms: Option<u64>,
    /// Milliseconds a check with a `min_revision` not reached yet waits [default: 500].
    #[arg(long, env = "GUARDIAN_ACCESS_MIN_REVISION_WAIT_MS")]
    min_revision_wait_ms: Option<u64>,
    /// Most client connections at once, per listener [default: 1024].
    #[arg(long, env = "GUARDIAN_ACCESS_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Milliseconds a client has to send a request head [default: 5000].
    #[arg(long, env = "GUARDIAN_ACCESS_HEADER_READ_TIMEOUT_MS")]
    header_read_timeout_ms: Option<u64>,
    /// Milliseconds an idle keep-alive connection is kept [default: 60000].
    #[arg(long, env = "GUARDIAN_ACCESS_IDLE_TIMEOUT_MS")]
    idle_timeout_ms: Option<u64>,
    /// `text` or `json` [default: text]. The filter is `RUST_LOG` (default `info`).
    #[arg(long, env = "GUARDIAN_ACCESS_LOG_FORMAT")]
    log_format: Option<String>,
    /// Header `/v1/authz` reads the actor from [default: x-actor-id].
    #[arg(long, env = "GUARDIAN_ACCESS_AUTHZ_ACTOR_HEADER")]
    authz_actor_header: Option<String>,
    /// Header `/v1/authz` reads the subject from [default: x-subject-id].
    #[arg(long, env = "GUARDIAN_ACCESS_AUTHZ_SUBJECT_HEADER")]
    authz_subject_header: Option<String>,
    /// Header `/v1/authz` reads the service from [default: x-service].
    #[arg(long, env = "GUARDIAN_ACCESS_AUTHZ_SERVICE_HEADER")]
    authz_service_header: Option<String>,
}

/// Where the data comes from.
#[derive(Debug)]
enum Source {
    /// A throwaway store seeded from a scenario (`--demo`, `--scenario`).
    Scenario(Box<Scenario>, String),
    /// The embedded store in a directory.
    Sqlite(PathBuf),
    /// PostgreSQL.
    Postgres(String),
}

/// Everything `serve` needs, validated.
#[derive(Debug)]
struct Config {
    check_addr: SocketAddr,
    admin_addr: SocketAddr,
    listener: ListenerConfig,
    json_logs: bool,
    file: ConfigFile,
    source: Source,
    data_dir: PathBuf,
    admin_tokens: Option<PathBuf>,
    node: NodeConfig,
}

impl ServeArgs {
    fn config(&self) -> Result<Config> {
        let file = match &self.config {
            None => ConfigFile::default(),
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))?;
                ConfigFile::parse(&text).with_context(|| format!("in `{}`", path.display()))?
            }
        };
        let f = &file.server;
        let addr = |flag: &Option<String>, file: &Option<String>, default: &str, name: &str| -> Result<SocketAddr> {
            pick(flag, file, default.into())
                .parse()
                .map_err(|_| anyhow!("`{name}`: must be an address such as `{default}`"))
        };
        let check_addr = addr(&self.check_addr, &f.check_addr, "127.0.0.1:7070", "check_addr")?;
        let admin_addr = addr(&self.admin_addr, &f.admin_addr, "127.0.0.1:7071", "admin_addr")?;
        let defaults = ListenerConfig::default();
        let max_connections = pick(&self.max_connections, &f.max_connections, defaults.max_connections);
        if max_connections == 0 {
            bail!("`max_connections`: must be at least 1");
        }
        let millis = |flag: &Option<u64>, file: &Option<u64>, default: Duration, name: &str| -> Result<Duration> {
            let ms = pick(flag, file, default.as_millis() as u64);
            if ms == 0 {
                bail!("`{name}`: must be at least 1 ms");
            }
            Ok(Duration::from_millis(ms))
        };
        let header_read_timeout = millis(
            &self.header_read_timeout_ms,
            &f.header_read_timeout_ms,
            defaults.header_read_timeout,
            "header_read_timeout_ms",
        )?;
        let idle_timeout = millis(
            &self.idle_timeout_ms,
            &f.idle_timeout_ms,
            defaults.idle_timeout,
            "idle_timeout_ms",
        )?;
        let min_revision_wait = millis(
            &self.min_revision_wait_ms,
            &f.min_revision_wait_ms,
            defaults.min_revision_wait,
            "min_revision_wait_ms",
        )?;
        let json_logs = match pick(&self.log_format, &f.log_format, "text".into()).as_str() {
            "text" => false,
            "json" => true,
            _ => bail!("`log_format`: must be `text` or `json`"),
        };
        let h = f.authz_headers.as_ref();
        let d = AuthzHeaders::default();
        let header = |flag: &Option<String>, file: Option<&String>, default: HeaderName, name: &str| match flag
            .as_ref()
            .or(file)
        {
            None => Ok(default),
            Some(v) => HeaderName::try_from(v.as_str()).map_err(|_| anyhow!("`{name}`: not a valid header name")),
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
            .unwrap_or_else(|| PathBuf::from("data"));
        let store = self.store.clone().or_else(|| f.store.clone());
        let source = match (&self.scenario, self.demo, store) {
            (Some(path), _, _) => {
                Source::Scenario(Box::new(Scenario::load(path)?), format!("scenario {}", path.display()))
            }
            (None, true, _) => Source::Scenario(Box::new(Scenario::demo()?), "demo".to_owned()),
            (None, false, Some(url)) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Source::Postgres(url)
            }
            (None, false, Some(_)) => bail!("`store`: must be a `postgres://` URL (the embedded store needs no flag)"),
            (None, false, None) => Source::Sqlite(data_dir.clone()),
        };
        let fleet = matches!(source, Source::Postgres(_));
        let max_staleness = match (fleet, self.max_staleness_ms.or(f.max_staleness_ms)) {
            (_, Some(0)) => bail!("`max_staleness_ms`: must be at least 1 ms"),
            (true, ms) => Some(Duration::from_millis(ms.unwrap_or(30_000))),
            // The embedded store is in this process: it cannot be out of reach.
            (false, _) => None,
        };
        let peers: Vec<String> = if self.peers.is_empty() {
            f.peers.clone().unwrap_or_default()
        } else {
            self.peers.clone()
        };
        let peer_token = std::env::var("GUARDIAN_ACCESS_PEER_TOKEN").unwrap_or_default();
        if !peers.is_empty() && peer_token.is_empty() {
            bail!("`peers`: set `GUARDIAN_ACCESS_PEER_TOKEN` to a `peer` token the peers accept");
        }
        let poll_every = Duration::from_millis(pick(&None, &f.poll_ms, if fleet { 500 } else { 1000 }).max(1));
        let node = NodeConfig {
            fold_at: f.fold_at.unwrap_or(NodeConfig::default().fold_at).max(1),
            max_staleness,
            poll_every,
            peers: peers
                .into_iter()
                .map(|url| Peer {
                    url,
                    token: peer_token.clone(),
                })
                .collect(),
            ..NodeConfig::default()
        };
        Ok(Config {
            check_addr,
            admin_addr,
            listener: ListenerConfig {
                max_connections,
                header_read_timeout,
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
            file,
            source,
            data_dir,
            node,
        })
    }
}

/// The flag if given, else the file's value, else the default.
fn pick<T: Clone>(flag: &Option<T>, file: &Option<T>, default: T) -> T {
    flag.clone().or_else(|| file.clone()).unwrap_or(default)
}

fn install_tracing(json: bool) {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(guardian_access::logging::filter(&directives))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Tokens for every role, made up for this run of the demo.
fn demo_tokens() -> Result<Vec<(String, Caller)>> {
    let unit = HsaId::parse(DEMO_UNIT).map_err(|e| anyhow!("{e}"))?;
    let list = [
        ("Demo kontaktcenter", Role::Registrar, None),
        ("Demo vårdenhet", Role::Unit, Some(unit)),
        ("Demo folkbokföring", Role::Population, None),
        ("Demo spärr och logg", Role::Auditor, None),
    ];
    Ok(list
        .into_iter()
        .map(|(name, role, unit)| {
            (
                auth::random_token(),
                Caller {
                    name: name.to_owned(),
                    role,
                    unit,
                },
            )
        })
        .collect())
}

/// Writes a scenario's people and rules into a fresh store.
async fn seed(store: &Store, scenario: &Scenario) -> Result<()> {
    let (persons, rules) = scenario.records()?;
    let unit = HsaId::parse(DEMO_UNIT).map_err(|e| anyhow!("{e}"))?;
    let rules = rules
        .into_iter()
        .map(|rule| NewRule {
            rule: guardian_access::model::Rule { id: RuleId(0), ..rule },
            meta: RuleMeta {
                issuing_unit: unit.clone(),
                decided_by: serde_json::json!({"name": "Demo"}),
                requested_by: None,
                basis: "scenario fixture".into(),
                urgent: false,
                reference: None,
            },
        })
        .collect();
    let by = Caller {
        name: "scenario seed".into(),
        role: Role::Registrar,
        unit: None,
    };
    store.seed(persons, rules, &by).await?;
    Ok(())
}

/// Runs `serve` to completion.
pub fn main(args: ServeArgs) -> Result<()> {
    let config = args.config()?;
    install_tracing(config.json_logs);
    let settings = match (&args.config, &config.source) {
        // Settings from the config file win over the scenario's own.
        (None, Source::Scenario(s, _)) => s.settings()?,
        _ => config.file.region.to_settings()?,
    };
    let mut demo = None;
    let tokens = match (&config.admin_tokens, &config.source) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))?;
            Tokens::parse(&text).with_context(|| format!("in `{}`", path.display()))?
        }
        (None, Source::Scenario(..)) => {
            let list = demo_tokens()?;
            demo = Some(list.clone());
            Tokens::from_list(list)
        }
        (None, _) => Tokens::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("guardian-access")
        .build()?;
    runtime.block_on(async move {
        let check = tokio::net::TcpListener::bind(config.check_addr)
            .await
            .with_context(|| format!("cannot bind the check listener to {}", config.check_addr))?;
        let admin = tokio::net::TcpListener::bind(config.admin_addr)
            .await
            .with_context(|| format!("cannot bind the admin listener to {}", config.admin_addr))?;
        let (check_addr, admin_addr) = (check.local_addr()?, admin.local_addr()?);
        info!("listening check={check_addr} admin={admin_addr}");
        if tokens.is_empty() {
            warn!("no admin tokens (`--admin-tokens`): the admin API refuses every request");
        }

        // A scenario gets a throwaway store, kept until the service stops.
        let mut throwaway = None;
        let (label, data_dir, store): (String, PathBuf, Pin<Box<dyn Future<Output = _> + Send>>) = match config.source {
            Source::Scenario(scenario, label) => {
                let dir = tempfile::Builder::new().prefix("guardian-access-demo-").tempdir()?;
                let store = Store::open_sqlite(dir.path()).await?;
                seed(&store, &scenario).await?;
                let path = dir.path().to_owned();
                throwaway = Some(dir);
                (label, path, Box::pin(async move { Ok(store) }))
            }
            Source::Sqlite(dir) => (
                format!("sqlite {}", dir.display()),
                dir.clone(),
                Box::pin(async move { Store::open_sqlite(&dir).await }),
            ),
            Source::Postgres(url) => (
                "postgres".to_owned(),
                config.data_dir.clone(),
                Box::pin(async move { Ok(open_postgres(&url).await) }),
            ),
        };
        let service = service::start(
            check,
            admin,
            store,
            Options {
                listener: config.listener,
                node: NodeConfig {
                    data_dir: Some(data_dir),
                    ..config.node
                },
                settings: Arc::new(settings),
                tokens,
                source: label,
            },
        );
        if let Some(tokens) = demo {
            if service.state.wait_for_revision(1, Duration::from_secs(30)).await {
                print_curl_lines(check_addr, admin_addr, &tokens);
            } else {
                warn!("the demo store did not load in time");
            }
        }
        shutdown_signal().await;
        service.stop().await;
        drop(throwaway);
        info!("stopped");
        Ok(())
    })
}

/// Connects to PostgreSQL, retrying until it answers (the service stops
/// waiting for it when it is stopped).
async fn open_postgres(url: &str) -> Store {
    let mut backoff = Duration::from_millis(200);
    loop {
        match Store::open_postgres(url).await {
            Ok(s) => return s,
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot open the PostgreSQL store; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

fn print_curl_lines(check: SocketAddr, admin: SocketAddr, tokens: &[(String, Caller)]) {
    let token = |role: Role| {
        tokens
            .iter()
            .find(|(_, c)| c.role == role)
            .map(|(t, _)| t.as_str())
            .unwrap_or_default()
    };
    let ask = |actor: &str, subject: &str, service: &str| {
        format!(
            "curl -s http://{check}/v1/check -d '{{\"actor\": \"{actor}\", \"subject\": \"{subject}\", \"service\": \"{service}\"}}'"
        )
    };
    let (registrar, unit, population, auditor) = (
        token(Role::Registrar),
        token(Role::Unit),
        token(Role::Population),
        token(Role::Auditor),
    );
    println!(
        "\nThe demo region is served from a throwaway store. Try (Skatteverket's test numbers):\n\n\
         # a guardian sees an 11-year-old's journal\n{}\n\n\
         # a guardian blocked by a care unit\n{}\n\n\
         # a sealed journal\n{}\n\n\
         # a 13-year-old's journal: extended access for one guardian, at one unit\n{}\n\n\
         # the switch list of a guardian\n\
         curl -s http://{check}/v1/children -d '{{\"guardian\": \"198501012390\", \"service\": \"journal\"}}'\n\n\
         # for nginx auth_request\n\
         curl -si http://{check}/v1/authz -H 'x-actor-id: 197701012382' -H 'x-subject-id: 201509162390' -H 'x-service: journal'\n\n\
         # the contact center phones in an urgent block of one guardian (registrar token) ...\n\
         curl -s http://{admin}/v1/restrictions -H 'authorization: Bearer {registrar}' -d '{{\"kind\": \"block\", \"subject\": \"201509162390\", \"guardian\": \"197701012382\", \"issuing_unit\": \"{DEMO_UNIT}\", \"decided_by\": {{\"name\": \"Verksamhetschef\"}}, \"requested_by\": {{\"name\": \"Ssk på BUP\", \"phone\": \"010-000 00 00\"}}, \"basis\": \"Orosanmälan\", \"urgent\": true}}'\n\
         # ... and the same check now answers blocked:\n{}\n\n\
         # the unit lifts the demo's block (restriction 2) after the threat assessment (unit token) ...\n\
         curl -s http://{admin}/v1/restrictions/2/lift -H 'authorization: Bearer {unit}' -d '{{\"issuing_unit\": \"{DEMO_UNIT}\", \"decided_by\": {{\"name\": \"Verksamhetschef\"}}, \"basis\": \"Hotbild kontrollerad med socialtjänsten\", \"threat_assessment_done\": true}}'\n\
         # ... and that guardian sees the journal again:\n{}\n\n\
         # the population feed (NDJSON, all or nothing)\n\
         printf '%s\\n' '{{\"id\": \"201701012393\", \"protected\": false, \"guardians\": [\"197701012382\"]}}' | curl -s http://{admin}/v1/population -H 'authorization: Bearer {population}' --data-binary @-\n\n\
         # what is recorded about a child, and who wrote what (auditor token)\n\
         curl -s http://{admin}/v1/subjects -H 'x-subject-id: 201509162390' -H 'authorization: Bearer {auditor}'\n\
         curl -s http://{admin}/v1/audit -H 'x-subject-id: 201509162390' -H 'authorization: Bearer {auditor}'\n\n\
         # operations\n\
         curl -s http://{check}/v1/status; curl -s http://{check}/metrics | head\n",
        ask("197701012382", "201509162390", "journal"),
        ask("198001032385", "201801012392", "journal"),
        ask("197701022381", "201406012383", "journal"),
        ask("198501012390", "201303292385", "journal"),
        ask("197701012382", "201509162390", "journal"),
        ask("198001032385", "201801012392", "journal"),
    );
}

/// The data directory a command-line tool reads, from its flags.
pub fn data_dir(flag: Option<&Path>) -> PathBuf {
    flag.map_or_else(|| PathBuf::from("data"), Path::to_owned)
}

/// Settings for a command-line tool: the config file's, else the defaults.
pub fn settings(config: Option<&Path>) -> Result<Settings> {
    match config {
        None => Ok(Settings::default()),
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))?;
            Ok(ConfigFile::parse(&text)
                .with_context(|| format!("in `{}`", path.display()))?
                .region
                .to_settings()?)
        }
    }
}
