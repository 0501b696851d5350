//! `sidewhale`: serves the Docker Engine API on TCP and a unix socket, and
//! runs containers with the configured executors.

#![recursion_limit = "256"]

mod api;
mod rootless;
mod runtime;
mod state;
mod stdcopy;

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use sidewhale_config::{
    Config, ExecutorOverrides, NetworkIsolation, NetworkOverrides, Overrides, UserNamespaceMode,
};
use sidewhale_core::{Executor, Probe};
use sidewhale_executors::{
    plugin_paths, BubblewrapExecutor, BubblewrapOptions, ChrootExecutor, PluginExecutor,
    ProotExecutor,
};
use sidewhale_images::{ImageStore, RegistryOptions};

use crate::runtime::ports::TcpPortForwarder;
use crate::runtime::Daemon;

/// A Docker Engine API server that runs Testcontainers workloads without a
/// Docker daemon.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// TCP address to serve the API on; repeat for several.
    /// [default: 127.0.0.1:23750]
    #[arg(long, value_name = "HOST:PORT")]
    listen: Vec<String>,
    /// Unix socket to serve the API on. [default: STATE_DIR/docker.sock]
    #[arg(long, value_name = "PATH")]
    listen_unix: Option<PathBuf>,
    /// Directory for images, containers and logs.
    /// [default: /var/lib/sidewhale for root, ~/.local/share/sidewhale otherwise]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Registry tried before Docker Hub for docker.io images; repeat for
    /// several. Plain http:// URLs are allowed.
    #[arg(long, value_name = "URL")]
    registry_mirror: Vec<String>,
    /// Registry reached over plain HTTP; repeat for several.
    #[arg(long, value_name = "HOST:PORT")]
    insecure_registry: Vec<String>,
    /// Executor used when neither the request nor a rule names one.
    /// [default: proot]
    #[arg(long, value_name = "NAME")]
    executor: Option<String>,
    /// Executor plugin (a shared library) to load at start-up; repeat for
    /// several. Replaces the list of executor.plugins.
    #[arg(long = "executor-plugin", value_name = "PATH")]
    executor_plugin: Vec<PathBuf>,
    /// Network isolation: `auto` gives each container its own network
    /// namespace where the host allows it, `namespace` requires that,
    /// `host` shares the host's network. [default: auto]
    #[arg(long, value_name = "MODE", value_parser = parse_isolation)]
    network_isolation: Option<NetworkIsolation>,
    /// Rootless mode, for a sidewhale started by a user other than root.
    /// `auto` runs it as root in a user namespace that maps the user's
    /// ranges from /etc/subuid and /etc/subgid, when the host allows it.
    /// `required` fails start-up when it does not. `off` keeps the single
    /// user id. [default: auto]
    #[arg(long, value_name = "MODE", value_parser = parse_user_namespace)]
    user_namespace: Option<UserNamespaceMode>,
}

fn parse_isolation(text: &str) -> Result<NetworkIsolation, String> {
    match text {
        "auto" => Ok(NetworkIsolation::Auto),
        "namespace" => Ok(NetworkIsolation::Namespace),
        "host" => Ok(NetworkIsolation::Host),
        _ => Err(format!(
            "invalid mode {text:?}: expected auto, namespace or host"
        )),
    }
}

fn parse_user_namespace(text: &str) -> Result<UserNamespaceMode, String> {
    match text {
        "auto" => Ok(UserNamespaceMode::Auto),
        "required" => Ok(UserNamespaceMode::Required),
        "off" => Ok(UserNamespaceMode::Off),
        _ => Err(format!(
            "invalid mode {text:?}: expected auto, required or off"
        )),
    }
}

impl Cli {
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            listen_unix: self.listen_unix.clone(),
            state_dir: self.state_dir.clone(),
            registry_mirrors: self.registry_mirror.clone(),
            insecure_registries: self.insecure_registry.clone(),
            executor: (self.executor.is_some() || !self.executor_plugin.is_empty()).then(|| {
                ExecutorOverrides {
                    default: self.executor.clone(),
                    plugins: self.executor_plugin.clone(),
                }
            }),
            network: self.network_isolation.map(|isolation| NetworkOverrides {
                isolation: Some(isolation),
            }),
            user_namespace: self.user_namespace,
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIDEWHALE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// Creates every built-in executor, loads the configured plugins, and
/// probes them all. Fails when a plugin cannot be loaded or reuses a name.
async fn executors(
    config: &Config,
) -> anyhow::Result<BTreeMap<String, (Arc<dyn Executor>, Probe)>> {
    let proot = sidewhale_executors::ProotOptions { proot_path: config.executor.proot_path.clone() };
    let mut candidates: Vec<Arc<dyn Executor>> = vec![
        Arc::new(ProotExecutor::new(proot)),
        Arc::new(BubblewrapExecutor::new(BubblewrapOptions::default())),
        Arc::new(ChrootExecutor::new()),
    ];
    let plugins = plugin_paths(&config.executor.plugins, config.executor.plugin_dir.as_deref())?;
    for path in plugins {
        let plugin = PluginExecutor::load(&path)?;
        if candidates.iter().any(|executor| executor.name() == plugin.name()) {
            anyhow::bail!(
                "executor plugin {} is named {:?}, which another executor already uses",
                path.display(),
                plugin.name()
            );
        }
        candidates.push(Arc::new(plugin));
    }
    let mut executors = BTreeMap::new();
    for executor in candidates {
        let probe = executor.probe().await;
        match &probe {
            Probe::Available => tracing::info!(executor = executor.name(), "executor available"),
            Probe::Unavailable(reason) => {
                tracing::warn!(executor = executor.name(), %reason, "executor unavailable")
            }
        }
        executors.insert(executor.name().to_string(), (executor, probe));
    }
    Ok(executors)
}

fn main() -> anyhow::Result<()> {
    // The hidden holder mode runs inside a container's network namespace;
    // see `sidewhale_netns`.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|arg| arg == sidewhale_netns::HOLDER_ARGUMENT) {
        init_tracing();
        let Some(socket) = args.get(2) else {
            anyhow::bail!("{} needs a socket path", sidewhale_netns::HOLDER_ARGUMENT);
        };
        return tokio_runtime()?
            .block_on(sidewhale_netns::run_holder(std::path::Path::new(socket)))
            .context("network namespace holder failed");
    }
    let cli = Cli::parse();
    init_tracing();
    let config = Config::load(cli.config.as_deref(), &cli.overrides())?;
    // Before the runtime starts its threads: a multithreaded process
    // cannot enter a new user namespace.
    rootless::enter(config.user_namespace)?;
    tokio_runtime()?.block_on(serve(config))
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")
}

/// Opens the state directory and the image store, probes the executors
/// and serves the API until a listener fails or a signal arrives.
async fn serve(config: Config) -> anyhow::Result<()> {
    let _state_lock = state::prepare(&config.state_dir)?;
    // Root of a rootless user namespace holds only the user's own rights.
    let real_root = nix::unistd::geteuid().is_root() && rootless::active().is_none();
    if !config.listen.is_empty() && real_root {
        tracing::warn!(
            "serving the API over TCP as root: any local user who can connect gets root's \
             privileges through it; prefer running sidewhale as an ordinary user"
        );
    }

    let executors = executors(&config).await?;
    match executors.get(&config.executor.default) {
        Some((_, Probe::Available)) => {}
        Some((_, Probe::Unavailable(reason))) => anyhow::bail!(
            "the default executor {} cannot run on this host: {reason}",
            config.executor.default
        ),
        None => anyhow::bail!(
            "executor.default: unknown executor {:?}; available: {}",
            config.executor.default,
            executors.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    }

    let options = RegistryOptions {
        mirrors: config.registry_mirrors.clone(),
        insecure_registries: config.insecure_registries.clone(),
        ..RegistryOptions::default()
    };
    let images = Arc::new(
        ImageStore::open(config.state_dir.join("images"), options)
            .context("failed to open the image store")?,
    );
    let daemon = Daemon::open(config.clone(), images, executors, Arc::new(TcpPortForwarder::default()))?;
    let app = api::router(daemon.clone());

    let mut servers = tokio::task::JoinSet::new();
    for address in &config.listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("failed to listen on {address}"))?;
        tracing::info!(%address, "serving the Docker API over TCP");
        servers.spawn(axum::serve(listener, app.clone()).into_future());
    }
    let socket = config.unix_socket();
    if socket.exists() {
        std::fs::remove_file(&socket)
            .with_context(|| format!("failed to remove stale socket {}", socket.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("failed to listen on {}", socket.display()))?;
    tracing::info!(path = %socket.display(), "serving the Docker API on a unix socket");
    servers.spawn(axum::serve(listener, app.clone()).into_future());

    tokio::select! {
        finished = servers.join_next() => {
            if let Some(Ok(Err(error))) = finished {
                return Err(error).context("API server failed");
            }
        }
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    daemon.shutdown().await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}
