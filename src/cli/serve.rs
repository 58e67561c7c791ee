//! `guardian-access serve`: the merged configuration (`config`), tracing
//! installed, both listeners bound, the store opened and followed, and a
//! clean stop on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use guardian_access::actor::{Caller, Role};
use guardian_access::clock::Clock;
use guardian_access::config::{ConfigFile, DEFAULT_DATA_DIR, ListenAddr, ServeFlags, Source};
use guardian_access::core::model::{HsaId, RuleId, Settings};
use guardian_access::fixtures::Scenario;
use guardian_access::http::admin::auth::{self, Tokens};
use guardian_access::http::console::{ConsoleOptions, LoginOptions};
use guardian_access::http::grpc::GrpcListener;
use guardian_access::http::listener::Listener;
use guardian_access::http::tls::Tls;
use guardian_access::node::NodeConfig;
use guardian_access::service::{self, Options};
use guardian_access::store::{NewRule, RuleMeta, Store};
use tracing::{info, warn};

/// The unit the demo's restrictions and grants are issued by.
const DEMO_UNIT: &str = "SE2321000131-E000000000001";

/// Reads and parses the config file, if there is one.
pub fn config_file(path: Option<&Path>) -> Result<ConfigFile> {
    match path {
        None => Ok(ConfigFile::default()),
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))?;
            Ok(ConfigFile::parse(&text).with_context(|| format!("in `{}`", path.display()))?)
        }
    }
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

/// The demo login's three staff (SPEC §6): a registrar, a unit head and
/// an auditor, with made-up HSA-IDs.
fn demo_staff() -> Result<Vec<Caller>> {
    let hsa = |s: &str| HsaId::parse(s).map_err(|e| anyhow!("{e}"));
    Ok(vec![
        Caller {
            name: "Kim Kontaktcenter (demo)".into(),
            role: Role::Registrar,
            unit: None,
            hsa_id: Some(hsa("SE2321000131-P000000000901")?),
        },
        Caller {
            name: "Vera Verksamhetschef (demo)".into(),
            role: Role::Unit,
            unit: Some(hsa(DEMO_UNIT)?),
            hsa_id: Some(hsa("SE2321000131-P000000000902")?),
        },
        Caller {
            name: "Alva Logggranskare (demo)".into(),
            role: Role::Auditor,
            unit: None,
            hsa_id: Some(hsa("SE2321000131-P000000000903")?),
        },
    ])
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
                    hsa_id: None,
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
            rule: guardian_access::Rule { id: RuleId(0), ..rule },
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
        hsa_id: None,
    };
    store.seed(persons, rules, &by).await?;
    Ok(())
}

/// Runs `serve` to completion.
pub fn main(flags: ServeFlags, clock: Clock) -> Result<()> {
    let file = config_file(flags.config.as_deref())?;
    let peer_token = std::env::var("GUARDIAN_ACCESS_PEER_TOKEN").ok();
    let config = flags.resolve(&file, peer_token.as_deref())?;
    install_tracing(config.json_logs);
    let scenario = match &config.source {
        Source::Demo => Some((Scenario::demo()?, "demo".to_owned())),
        Source::Scenario(path) => Some((Scenario::load(path)?, format!("scenario {}", path.display()))),
        Source::Sqlite(_) | Source::Postgres(_) => None,
    };
    let settings = match (&flags.config, &scenario) {
        // Settings from the config file win over the scenario's own.
        (None, Some((s, _))) => s.settings()?,
        _ => file.region.to_settings()?,
    };
    let mut demo = None;
    let tokens = match (&config.admin_tokens, &scenario) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))?;
            private_tokens(path)?;
            Tokens::parse(&text).with_context(|| format!("in `{}`", path.display()))?
        }
        (None, Some(_)) => {
            let list = demo_tokens()?;
            demo = Some(list.clone());
            Tokens::from_list(list)
        }
        (None, None) => Tokens::default(),
    };
    let admin_tls = match &config.admin_tls {
        Some(files) => Some(Arc::new(Tls::load(files.clone())?)),
        None => None,
    };
    let check_tls = match &config.check_tls {
        Some(files) => Some(Arc::new(Tls::load(files.clone())?)),
        None => None,
    };
    let console = match (&config.source, &file.console) {
        (Source::Demo, c) => Some(ConsoleOptions {
            login: LoginOptions::Demo(demo_staff()?),
            smtp: c.as_ref().and_then(|c| c.smtp.as_ref()).map(|s| s.config()),
        }),
        (_, Some(c)) => Some(c.options()?),
        (_, None) => None,
    };
    if let Some(c) = &console {
        console_files(c)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("guardian-access")
        .build()?;
    runtime.block_on(async move {
        let (check, check_url) = match &config.check_addr {
            ListenAddr::Tcp(a) => {
                let l = tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot bind the check listener to {a}"))?;
                let url = format!("http://{}", l.local_addr()?);
                (Listener::Tcp(l), url)
            }
            ListenAddr::Unix(path) => {
                let url = format!("--unix-socket {} http://localhost", path.display());
                (Listener::Unix(bind_unix(path, "check")?), url)
            }
        };
        let admin = tokio::net::TcpListener::bind(config.admin_addr)
            .await
            .with_context(|| format!("cannot bind the admin listener to {}", config.admin_addr))?;
        let admin_addr = admin.local_addr()?;
        let check_addr = match &check {
            Listener::Tcp(l) => l.local_addr()?.to_string(),
            Listener::Unix(_) => config.check_addr.to_string(),
        };
        let grpc = match &config.grpc_addr {
            None => None,
            Some(addr) => Some(bind_grpc(addr).await?),
        };
        match &config.grpc_addr {
            Some(g) => info!("listening check={check_addr} admin={admin_addr} grpc={g}"),
            None => info!("listening check={check_addr} admin={admin_addr}"),
        }
        if tokens.is_empty() {
            warn!("no admin tokens (`--admin-tokens`): the admin API refuses every request");
        }

        // A scenario gets a throwaway store, kept until the service stops.
        let mut throwaway = None;
        type Opening = Pin<Box<dyn Future<Output = Result<Store, guardian_access::store::StoreError>> + Send>>;
        let (label, data_dir, store): (String, PathBuf, Opening) = match (scenario, config.source) {
            (Some((scenario, label)), _) => {
                let dir = tempfile::Builder::new().prefix("guardian-access-demo-").tempdir()?;
                let store = Store::open_sqlite(dir.path()).await?;
                seed(&store, &scenario).await?;
                let path = dir.path().to_owned();
                throwaway = Some(dir);
                (label, path, Box::pin(async move { Ok(store) }))
            }
            (None, Source::Postgres(url)) => (
                "postgres".to_owned(),
                config.data_dir.clone(),
                Box::pin(async move { Ok(open_postgres(&url).await) }),
            ),
            (None, _) => {
                let dir = config.data_dir.clone();
                (
                    format!("sqlite {}", dir.display()),
                    dir.clone(),
                    Box::pin(async move { Store::open_sqlite(&dir).await }),
                )
            }
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
                clock,
                grpc,
                admin_tls: admin_tls.clone(),
                check_tls: check_tls.clone(),
                console,
            },
        );
        for tls in [admin_tls, check_tls].into_iter().flatten() {
            tokio::spawn(reload_on_hangup(tls));
        }
        if let Some(tokens) = demo {
            if service.state.cell.wait_for_revision(1, Duration::from_secs(30)).await {
                print_curl_lines(&check_url, admin_addr, &tokens);
                open_console(admin_addr);
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

/// The console's files must be there at start, not at the first login or
/// the first e-mail: a missing secret stops the start, naming the setting.
fn console_files(c: &ConsoleOptions) -> Result<()> {
    let mut files = Vec::new();
    if let LoginOptions::Oidc(o) = &c.login {
        files.push(("console.oidc.client_secret_file", &o.client_secret_file));
    }
    if let Some(smtp) = &c.smtp {
        files.extend(smtp.ca_file.iter().map(|f| ("console.smtp.ca_file", f)));
        files.extend(smtp.password_file.iter().map(|f| ("console.smtp.password_file", f)));
    }
    for (name, path) in files {
        std::fs::File::open(path).with_context(|| format!("`{name}`: cannot read `{}`", path.display()))?;
    }
    Ok(())
}

/// Opens the demo's console in a browser when there is a desktop to open
/// one on (SPEC §6); otherwise the URL printed above is the way in.
fn open_console(admin: SocketAddr) {
    let url = format!("http://{admin}/console/");
    info!("the console (demo login): {url}");
    if std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some() {
        let opened = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Err(e) = opened {
            warn!(error = %e, "cannot open a browser; open {url} yourself");
        }
    }
}

/// Refuses a tokens file that group or others can read: whoever can read
/// it can write to the register.
fn private_tokens(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "`admin_tokens`: `{}` can be read by group or others (mode {:o}); `chmod 600` it",
            path.display(),
            mode & 0o777
        );
    }
    Ok(())
}

/// Re-reads the admin certificate and key on every SIGHUP (a renewed
/// certificate without a restart); a pair that cannot be used is logged and
/// the old one kept.
async fn reload_on_hangup(tls: Arc<Tls>) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        warn!("cannot listen for SIGHUP; the admin certificate is read at start only");
        return;
    };
    while hangups.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => info!(cert = %tls.cert_path().display(), "admin TLS certificate re-read"),
            Err(e) => warn!(error = %e, "cannot re-read the admin TLS certificate; keeping the old one"),
        }
    }
}

/// Binds Envoy's gRPC listener.
async fn bind_grpc(addr: &ListenAddr) -> Result<GrpcListener> {
    match addr {
        ListenAddr::Tcp(a) => Ok(GrpcListener::Tcp(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot bind the gRPC listener to {a}"))?,
        )),
        ListenAddr::Unix(path) => Ok(GrpcListener::Unix(bind_unix(path, "gRPC")?)),
    }
}

/// Binds a Unix socket. One left by an earlier run is replaced; the new one
/// is readable and writable by owner and group only (put the portal's
/// proxy in the group).
fn bind_unix(path: &Path, what: &str) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(path).with_context(|| format!("cannot replace `{}`", path.display()))?;
    }
    let l = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot bind the {what} listener to `{}`", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
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

fn print_curl_lines(check: &str, admin: SocketAddr, tokens: &[(String, Caller)]) {
    let token = |role: Role| {
        tokens
            .iter()
            .find(|(_, c)| c.role == role)
            .map(|(t, _)| t.as_str())
            .unwrap_or_default()
    };
    let ask = |actor: &str, subject: &str, service: &str| {
        format!(
            "curl -s {check}/v1/check -d '{{\"actor\": \"{actor}\", \"subject\": \"{subject}\", \"service\": \"{service}\"}}'"
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
         curl -s {check}/v1/children -d '{{\"guardian\": \"198501012390\", \"service\": \"journal\"}}'\n\n\
         # for nginx auth_request\n\
         curl -si {check}/v1/authz -H 'x-actor-id: 197701012382' -H 'x-subject-id: 201509162390' -H 'x-service: journal'\n\n\
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
         # the console in a browser (demo login: pick a registrar, a unit head or an auditor)\n\
         # http://{admin}/console/\n\n\
         # operations\n\
         curl -s {check}/v1/status; curl -s {check}/metrics | head\n",
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
    flag.map_or_else(|| PathBuf::from(DEFAULT_DATA_DIR), Path::to_owned)
}

/// Settings for a command-line tool: the config file's, else the defaults.
pub fn settings(config: Option<&Path>) -> Result<Settings> {
    Ok(config_file(config)?.region.to_settings()?)
}
