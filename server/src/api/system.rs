//! `/_ping`, `/version` and `/info`.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use sidewhale_core::Probe;

use super::{AppState, API_VERSION, MIN_API_VERSION};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn api_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Api-Version", HeaderValue::from_static(API_VERSION));
    headers.insert("Docker-Experimental", HeaderValue::from_static("false"));
    headers.insert("Ostype", HeaderValue::from_static("linux"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store, must-revalidate"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers
}

pub async fn ping(method: Method) -> Response {
    let mut headers = api_headers();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if method == Method::HEAD {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        return (headers, "").into_response();
    }
    (headers, "OK").into_response()
}

fn kernel_version() -> String {
    nix::sys::utsname::uname()
        .map(|name| name.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub async fn version() -> impl IntoResponse {
    let body = json!({
        "Platform": {"Name": "sidewhale"},
        "Components": [{
            "Name": "Engine",
            "Version": VERSION,
            "Details": {
                "ApiVersion": API_VERSION,
                "MinAPIVersion": MIN_API_VERSION,
                "Os": "linux",
                "Arch": architecture(),
                "KernelVersion": kernel_version(),
            }
        }],
        "Version": VERSION,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "",
        "Os": "linux",
        "Arch": architecture(),
        "KernelVersion": kernel_version(),
        "BuildTime": "",
    });
    (api_headers(), Json(body))
}

pub async fn info(State(daemon): State<AppState>) -> impl IntoResponse {
    let containers = daemon.containers();
    let count = |status: &str| {
        containers.iter().filter(|c| c.record().state.status.as_str() == status).count()
    };
    let running = count("running");
    let runtimes: serde_json::Map<String, Value> = daemon
        .executors
        .iter()
        .map(|(name, (_, probe))| {
            let status = match probe {
                Probe::Available => json!({"available": "true"}),
                Probe::Unavailable(reason) => json!({"available": "false", "reason": reason}),
            };
            (name.clone(), json!({"path": name, "status": status}))
        })
        .collect();
    let hostname = nix::unistd::gethostname()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let memory = memory_total();
    let body = json!({
        "ID": "sidewhale",
        "Containers": containers.len(),
        "ContainersRunning": running,
        "ContainersPaused": 0,
        "ContainersStopped": containers.len() - running,
        "Images": daemon.images.list().len(),
        "Driver": "sidewhale",
        "DriverStatus": [],
        "DockerRootDir": daemon.config.state_dir,
        "Plugins": {"Volume": ["local"], "Network": ["host"], "Log": ["json-file"]},
        "MemoryLimit": false,
        "SwapLimit": false,
        "CpuCfsPeriod": false,
        "CpuCfsQuota": false,
        "IPv4Forwarding": false,
        "Debug": false,
        "NFd": 0,
        "NGoroutines": 0,
        "SystemTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "LoggingDriver": "json-file",
        "CgroupDriver": "none",
        "CgroupVersion": "",
        "KernelVersion": kernel_version(),
        "OperatingSystem": "sidewhale",
        "OSVersion": VERSION,
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "NCPU": std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        "MemTotal": memory,
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {
            "Mirrors": daemon.config.registry_mirrors,
            "InsecureRegistryCIDRs": [],
            "IndexConfigs": {},
        },
        "HttpProxy": "",
        "HttpsProxy": "",
        "NoProxy": "",
        "Name": hostname,
        "Labels": [],
        "ExperimentalBuild": false,
        "ServerVersion": VERSION,
        "Runtimes": runtimes,
        "DefaultRuntime": daemon.config.executor.default,
        "Swarm": {"LocalNodeState": "inactive", "NodeID": "", "NodeAddr": ""},
        "LiveRestoreEnabled": false,
        "Isolation": "",
        "SecurityOptions": security_options(&daemon),
        "Warnings": [],
    });
    (api_headers(), Json(body))
}

/// Returns `/info`'s `SecurityOptions`: the network isolation mode and,
/// in rootless mode, `name=rootless` as Docker's rootless daemon reports.
/// The mode is `relocated` where containers share the host's network and
/// the default executor relocates their ports.
fn security_options(daemon: &AppState) -> Vec<String> {
    let relocates = daemon
        .executor(&daemon.config.executor.default)
        .is_ok_and(|executor| executor.supports_port_relocation());
    let mode = match daemon.isolation.mode() {
        "host" if relocates => "relocated",
        mode => mode,
    };
    let mut options = vec![format!("name=netns,mode={mode}")];
    if crate::rootless::active().is_some() {
        options.push("name=rootless".to_string());
    }
    options
}

/// Reads `MemTotal` from `/proc/meminfo`, in bytes.
fn memory_total() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}
