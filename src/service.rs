//! The whole service on two already-bound listeners: the check listener,
//! the admin listener, the store and the node that follows it. `serve`
//! calls [`start`] after binding; tests bind port 0 and call it too.

use std::sync::{Arc, OnceLock};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::error;

use crate::clock::Clock;
use crate::core::model::Settings;
use crate::http::admin::auth::Tokens;
use crate::http::admin::{self, Admin};
use crate::http::check::{self, State};
use crate::http::console::{Console, ConsoleOptions};
use crate::http::grpc::{self, GrpcListener};
use crate::http::listener::{self, Listener, ListenerConfig};
use crate::http::metrics::Metrics;
use crate::http::tls::Tls;
use crate::node::{Node, NodeConfig, Publication};
use crate::store::{Store, StoreError};

/// What the service is started with.
#[derive(Debug)]
pub struct Options {
    /// Both listeners' limits and the check listener's settings.
    pub listener: ListenerConfig,
    /// How the node follows the store.
    pub node: NodeConfig,
    /// The region settings.
    pub settings: Arc<Settings>,
    /// The admin tokens.
    pub tokens: Tokens,
    /// Where the data comes from, for `/v1/status`.
    pub source: String,
    /// TLS for the admin listener (`--admin-tls-cert/-key`), if any.
    pub admin_tls: Option<Arc<Tls>>,
    /// TLS for the check listener (`--check-tls-cert/-key`), if any.
    pub check_tls: Option<Arc<Tls>>,
    /// Envoy's gRPC ext_authz listener (`--grpc-addr`), if any.
    pub grpc: Option<GrpcListener>,
    /// Where "now" comes from: checks without `at`, commit times, the
    /// admin write path. The binary passes [`Clock::system`].
    pub clock: Clock,
    /// The console on the admin listener (SPEC §9), if on.
    pub console: Option<ConsoleOptions>,
}

/// A running service.
#[derive(Debug)]
pub struct Service {
    /// The check listener's state (published snapshot, metrics).
    pub state: Arc<State>,
    node: Arc<OnceLock<Arc<Node>>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts serving on `check` and `admin` at once: checks answer `503` and
/// admin requests `503` until `store` is open and the node has caught up.
pub fn start(
    check: impl Into<Listener>,
    admin: impl Into<Listener>,
    store: impl Future<Output = Result<Store, StoreError>> + Send + 'static,
    options: Options,
) -> Service {
    start_opening(check.into(), admin.into(), Box::pin(store), options)
}

/// The store on its way to being open.
type Opening = std::pin::Pin<Box<dyn Future<Output = Result<Store, StoreError>> + Send>>;

/// [`start`], not generic: the service's tasks are compiled once, in this
/// crate, rather than again in every binary and example that starts one.
fn start_opening(check: Listener, admin: Listener, store: Opening, mut options: Options) -> Service {
    let cell = Arc::new(Publication::new(options.clock.clone()));
    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(State::new(
        cell.clone(),
        metrics.clone(),
        options.listener.clone(),
        options.source.clone(),
        options.clock.clone(),
    ));
    let (stop, _) = watch::channel(false);
    let stopped = {
        let stop = stop.clone();
        move || {
            let mut rx = stop.subscribe();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        }
    };
    let slot: Arc<OnceLock<Arc<Admin>>> = Arc::new(OnceLock::new());
    let node_slot: Arc<OnceLock<Arc<Node>>> = Arc::new(OnceLock::new());
    let mut tasks = Vec::new();

    let handler_slot = slot.clone();
    let admin_metrics = metrics.clone();
    let admin_tls = options.admin_tls.clone();
    let admin_listener = options.listener.clone();
    let admin_stopped = stopped();
    tasks.push(tokio::spawn(async move {
        let served = listener::serve(
            admin,
            &admin_listener,
            admin_metrics,
            admin_tls,
            admin_stopped,
            move |req| {
                let slot = handler_slot.clone();
                async move {
                    match slot.get() {
                        Some(a) => admin::handle(a, req).await,
                        None => admin::not_ready(),
                    }
                }
            },
        );
        if let Err(e) = served.await {
            error!(error = %e, "the admin listener failed");
        }
    }));
    if let Some(listener) = options.grpc.take() {
        let served = grpc::run(listener, state.clone(), stopped());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = served.await {
                error!(error = %e, "the gRPC listener failed");
            }
        }));
    }
    let check_server = check::run_tls(check, state.clone(), options.check_tls.clone(), stopped());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = check_server.await {
            error!(error = %e, "the check listener failed");
        }
    }));

    let limits = options.listener.clone();
    let secure_console = options.admin_tls.is_some();
    let console_stop = stop.subscribe();
    let Options {
        node: node_config,
        settings,
        tokens,
        clock,
        console,
        ..
    } = options;
    let opening_nodes = node_slot.clone();
    let mut stopping = stop.subscribe();
    tasks.push(tokio::spawn(async move {
        let store = tokio::select! {
            s = store => s,
            _ = stopping.wait_for(|s| *s) => return,
        };
        let store = match store {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "cannot open the store; checks answer 503");
                return;
            }
        };
        let node = Arc::new(Node::start(
            store.with_clock(clock.clone()),
            cell,
            settings,
            node_config,
        ));
        let _ = opening_nodes.set(node.clone());
        let console = match console {
            Some(c) => match Console::start(c, node.store().clone(), clock.clone(), secure_console, console_stop).await
            {
                Ok(c) => Some(c),
                Err(e) => {
                    error!(error = %e, "cannot start the console; /console/ answers that it is off");
                    None
                }
            },
            None => None,
        };
        match Admin::new(node, tokens, metrics, clock, &limits) {
            Ok(a) => {
                let _ = slot.set(Arc::new(a.with_console(console)));
            }
            Err(e) => error!(error = %e, "cannot start the admin API"),
        }
    }));
    Service {
        state,
        node: node_slot,
        stop,
        tasks,
    }
}

impl Service {
    /// The node, once the store is open.
    pub fn node(&self) -> Option<&Arc<Node>> {
        self.node.get()
    }

    /// Stops accepting, lets in-flight requests finish, stops the node.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(node) = self.node.get() {
            node.stop().await;
        }
    }
}
