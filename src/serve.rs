//! `guardian-access serve`: flags, config file and environment merged into
//! one typed configuration, tracing installed, the listener bound, the
//! snapshot published, and a clean stop on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use guardian_access::config::ConfigFile;
use guardian_access::fixtures::Scenario;
use guardian_access::server::{self, AuthzHeaders, ListenerConfig, State};
use hyper::header::HeaderName;
use tracing::info;

/// Flags of `serve`; each can also be set in the environment
/// (`GUARDIAN_ACCESS_…`) or in the config file's `[server]` table.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Serve the demo region and print ready-to-paste `curl` lines.
    #[arg(long, conflicts_with = "scenario")]
    demo: bool,
    /// Serve the people and rules of this scenario file (JSON).
    #[arg(long, env = "GUARDIAN_ACCESS_SCENARIO")]
    scenario: Option<PathBuf>,
    /// Region settings and `[server]` settings (TOML).
    #[arg(long, env = "GUARDIAN_ACCESS_CONFIG")]
    config: Option<PathBuf>,
    /// Where the check listener binds [default: 127.0.0.1:7070].
    #[arg(long, env = "GUARDIAN_ACCESS_CHECK_ADDR")]
    check_addr: Option<String>,
    /// Most client connections at once [default: 1024].
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

/// Everything `serve` needs, validated.
#[derive(Debug)]
struct Config {
    check_addr: SocketAddr,
    listener: ListenerConfig,
    json_logs: bool,
    file: ConfigFile,
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
        let check_addr = pick(&self.check_addr, &f.check_addr, "127.0.0.1:7070".into());
        let check_addr = check_addr
            .parse()
            .map_err(|_| anyhow!("`check_addr`: must be an address such as `127.0.0.1:7070`"))?;
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
        Ok(Config {
            check_addr,
            listener: ListenerConfig {
                max_connections,
                header_read_timeout,
                idle_timeout,
                authz,
                ..defaults
            },
            json_logs,
            file,
        })
    }
}

/// The flag if given, else the file's value, else the default.
fn pick<T: Clone>(flag: &Option<T>, file: &Option<T>, default: T) -> T {
    flag.clone().or_else(|| file.clone()).unwrap_or(default)
}

fn install_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs `serve` to completion.
pub fn main(args: ServeArgs) -> Result<()> {
    let config = args.config()?;
    install_tracing(config.json_logs);
    let (scenario, source) = match (&args.scenario, args.demo) {
        (Some(path), _) => (Scenario::load(path)?, format!("scenario {}", path.display())),
        (None, true) => (Scenario::demo()?, "demo".to_owned()),
        (None, false) => bail!("nothing to serve: pass `--demo` or `--scenario FILE`"),
    };
    // Settings from the config file win over the scenario's own.
    let settings = match &args.config {
        Some(_) => config.file.region.to_settings()?,
        None => scenario.settings()?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("guardian-access")
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.check_addr)
            .await
            .with_context(|| format!("cannot bind the check listener to {}", config.check_addr))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::new(config.listener, source));
        info!("listening check={addr}");
        // Checks answer 503 until the snapshot is published.
        let snapshot = tokio::task::spawn_blocking(move || scenario.snapshot_with(settings)).await??;
        state.publish(snapshot);
        if args.demo {
            print_curl_lines(addr);
        }
        server::run(listener, state, shutdown_signal()).await?;
        info!("stopped");
        Ok(())
    })
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

fn print_curl_lines(addr: SocketAddr) {
    let check = |actor: &str, subject: &str, service: &str| {
        format!(
            "curl -s http://{addr}/v1/check -d '{{\"actor\": \"{actor}\", \"subject\": \"{subject}\", \"service\": \"{service}\"}}'"
        )
    };
    println!(
        "\nThe demo region is served. Try (Skatteverket's test numbers):\n\n\
         # a guardian sees an 11-year-old's journal\n{}\n\n\
         # a guardian blocked by a care unit\n{}\n\n\
         # a sealed journal\n{}\n\n\
         # a 13-year-old's journal: extended access for one guardian, at one unit\n{}\n\n\
         # the switch list of a guardian\n\
         curl -s http://{addr}/v1/children -d '{{\"guardian\": \"198501012390\", \"service\": \"journal\"}}'\n\n\
         # for nginx auth_request\n\
         curl -si http://{addr}/v1/authz -H 'x-actor-id: 197701012382' -H 'x-subject-id: 201509162390' -H 'x-service: journal'\n\n\
         # operations\n\
         curl -s http://{addr}/v1/status; curl -s http://{addr}/metrics | head\n",
        check("197701012382", "201509162390", "journal"),
        check("198001032385", "201801012392", "journal"),
        check("197701022381", "201406012383", "journal"),
        check("198501012390", "201303292385", "journal"),
    );
}
