//! The built-in Ryuk: containers of the `testcontainers/ryuk` image run no
//! process. sidewhale serves Ryuk's protocol on their published ports
//! itself, so Testcontainers clients clean up after a crashed test run
//! without pulling or running the image.
//!
//! The protocol, as Testcontainers clients use it: a client connects and
//! sends lines of URL-encoded filters such as
//! `label=org.testcontainers.sessionId%3Dabc&label=other`, and the server
//! replies `ACK\n` to each line. Parameters of one line must all match,
//! and any line may match. Once every client has disconnected and none
//! reconnected within `RYUK_RECONNECTION_TIMEOUT`, the server removes
//! every container, network and volume that a filter matches, then stops.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sidewhale_core::{
    ExecutorError, ExitStatus, ImageConfig, ImageRecord, Process, ProcessControl, Protocol,
    PublishedPort, Reference,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::model::Status;
use super::{Container, Daemon, Error, Result};

/// The runtime name recorded for Ryuk containers; no executor has it.
pub const RUNTIME: &str = "sidewhale-ryuk";

/// The image id reported for every Ryuk image: the SHA-256 digest of the
/// text `sidewhale built-in Ryuk`.
const IMAGE_ID: &str = "sha256:ef960c7ac25c8fd5dd77de438704c04e6e1a2e55c51dff437e1db0d2f21f8558";

/// The port the Ryuk image exposes.
const PORT: &str = "8080/tcp";

/// Ryuk's defaults for how long it waits for the first client, and for a
/// client to come back after the last one left.
const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_RECONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// The maximum length of a filter line, in bytes.
const MAX_LINE: usize = 64 * 1024;

/// Returns whether an image reference names Ryuk: repository
/// `testcontainers/ryuk` with any tag, on any registry or under any
/// mirror prefix.
pub fn is_ryuk_image(image: &str) -> bool {
    let Ok(reference) = Reference::parse(image) else {
        return false;
    };
    let repository = reference.repository.as_str();
    repository == "testcontainers/ryuk" || repository.ends_with("/testcontainers/ryuk")
}

/// Returns the image record shown for a Ryuk image, which sidewhale
/// never pulls.
pub fn image_record(image: &str) -> ImageRecord {
    let familiar = Reference::parse(image)
        .map(|reference| reference.familiar())
        .unwrap_or_else(|_| image.to_string());
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    ImageRecord {
        id: IMAGE_ID.to_string(),
        repo_tags: vec![familiar],
        repo_digests: Vec::new(),
        created: None,
        architecture: architecture.to_string(),
        os: "linux".to_string(),
        config: ImageConfig {
            exposed_ports: Some(BTreeMap::from([(PORT.to_string(), serde_json::json!({}))])),
            env: Some(vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ]),
            entrypoint: Some(vec!["/bin/ryuk".to_string()]),
            ..ImageConfig::default()
        },
        layers: Vec::new(),
        diff_ids: Vec::new(),
        size: 0,
        history: Vec::new(),
    }
}

/// Parses a Go duration such as `10s`, `1m30s`, `1.5h` or `250ms`.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * seconds;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Reads a duration setting from the container's environment, falling
/// back to Ryuk's default for a missing or invalid value.
fn duration_setting(env: &[String], key: &str, default: Duration) -> Duration {
    let value = env
        .iter()
        .rev()
        .find_map(|entry| entry.strip_prefix(key)?.strip_prefix('='));
    match value {
        None | Some("") => default,
        Some(text) => parse_go_duration(text).unwrap_or_else(|| {
            tracing::warn!(
                setting = key,
                value = text,
                ?default,
                "invalid duration for the built-in Ryuk, using the default"
            );
            default
        }),
    }
}

/// Decodes `%XX` escapes and `+` as a space, as in a query string.
fn percent_decode(text: &str) -> std::result::Result<String, String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' => {
                let hex = text.get(index + 1..index + 3).ok_or("truncated %-escape")?;
                let byte =
                    u8::from_str_radix(hex, 16).map_err(|_| format!("invalid %-escape %{hex}"))?;
                decoded.push(byte);
                index += 3;
            }
            b'+' => {
                decoded.push(b' ');
                index += 1;
            }
            byte => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(decoded).map_err(|_| "filter is not UTF-8".to_string())
}

/// One line of filters: Docker-style filter values grouped by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterSet {
    filters: BTreeMap<String, Vec<String>>,
}

impl FilterSet {
    /// Parses a line such as `label=a%3Db&label=c&name=web`. Only the
    /// `label`, `name` and `id` filters are known.
    pub fn parse(line: &str) -> std::result::Result<FilterSet, String> {
        let mut filters: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for parameter in line.split('&').filter(|parameter| !parameter.is_empty()) {
            let (key, value) = parameter.split_once('=').unwrap_or((parameter, ""));
            let key = percent_decode(key)?;
            let value = percent_decode(value)?;
            if !matches!(key.as_str(), "label" | "name" | "id") {
                return Err(format!(
                    "unsupported filter {key:?}; supported are label, name and id"
                ));
            }
            if value.is_empty() {
                return Err(format!("filter {key} has no value"));
            }
            filters.entry(key).or_default().push(value);
        }
        if filters.is_empty() {
            return Err("no filters".to_string());
        }
        Ok(FilterSet { filters })
    }

    /// Returns whether a resource matches: every `label` value, and any
    /// value of each other key, as Docker's filters do.
    pub fn matches(&self, labels: &BTreeMap<String, String>, name: &str, id: &str) -> bool {
        self.filters.iter().all(|(key, values)| match key.as_str() {
            "label" => values.iter().all(|filter| match filter.split_once('=') {
                Some((key, value)) => labels.get(key).is_some_and(|actual| actual == value),
                None => labels.contains_key(filter),
            }),
            "name" => values
                .iter()
                .any(|value| name.contains(value.trim_start_matches('/'))),
            "id" => values.iter().any(|value| id.starts_with(value.as_str())),
            _ => false,
        })
    }
}

/// The kind of stop requested for a Ryuk container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// `SIGTERM` and the like: remove what the filters match, unless a
    /// client is still connected, then exit.
    Terminate,
    /// `SIGKILL`: exit at once.
    Kill,
}

struct ReaperControl {
    stop: watch::Sender<Option<Stop>>,
}

impl ProcessControl for ReaperControl {
    fn signal(&self, signal: i32) -> std::result::Result<(), ExecutorError> {
        match signal {
            libc::SIGKILL => self.stop.send_replace(Some(Stop::Kill)),
            libc::SIGTERM | libc::SIGINT | libc::SIGQUIT | libc::SIGHUP => {
                self.stop.send_replace(Some(Stop::Terminate))
            }
            _ => None,
        };
        Ok(())
    }

    fn kill_all(&self) -> std::result::Result<(), ExecutorError> {
        self.stop.send_replace(Some(Stop::Kill));
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        None
    }
}

/// The state one running Ryuk container shares with its connections.
struct Reaper {
    id: String,
    filters: Mutex<Vec<FilterSet>>,
    /// The number of connected clients.
    clients: watch::Sender<usize>,
    /// The container's output, read by its log pump.
    output: tokio::sync::Mutex<DuplexStream>,
}

impl Reaper {
    fn short_id(&self) -> &str {
        &self.id[..12]
    }

    /// Writes a line to the container's log.
    async fn log(&self, message: &str) {
        let time = chrono::Utc::now().format("%Y/%m/%d %H:%M:%S");
        let line = format!("{time} {message}\n");
        if let Err(error) = self.output.lock().await.write_all(line.as_bytes()).await {
            tracing::debug!(container = %self.short_id(), %error, "Ryuk log line dropped");
        }
    }

    fn filters(&self) -> Vec<FilterSet> {
        self.filters
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    fn add_filter(&self, filter: FilterSet) {
        let mut filters = self
            .filters
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if !filters.contains(&filter) {
            filters.push(filter);
        }
    }
}

impl Daemon {
    /// Starts a Ryuk container: listens on its published ports and serves
    /// the protocol until it stops.
    pub(super) async fn start_ryuk(self: &Arc<Self>, container: &Arc<Container>) -> Result<()> {
        let record = container.record();
        let env = record.process_env();
        let connection_timeout =
            duration_setting(&env, "RYUK_CONNECTION_TIMEOUT", DEFAULT_CONNECTION_TIMEOUT);
        let reconnection_timeout = duration_setting(
            &env,
            "RYUK_RECONNECTION_TIMEOUT",
            DEFAULT_RECONNECTION_TIMEOUT,
        );

        let mut listeners = Vec::new();
        let mut published = Vec::new();
        for binding in &record.port_bindings {
            if binding.protocol != Protocol::Tcp {
                tracing::warn!(container = %record.short_id(), port = binding.container_port,
                    "the built-in Ryuk serves TCP only, leaving a UDP binding unpublished");
                continue;
            }
            let address = SocketAddr::new(binding.host_ip, binding.host_port);
            let bound = TcpListener::bind(address).await.and_then(|listener| {
                let port = listener.local_addr()?.port();
                Ok((listener, port))
            });
            let (listener, host_port) = bound.map_err(|error| {
                Error::Internal(format!(
                    "driver failed programming external connectivity on endpoint {}: \
                     failed to bind {address}: {error}",
                    record.name
                ))
            })?;
            listeners.push(listener);
            published.push(PublishedPort {
                container_port: binding.container_port,
                protocol: binding.protocol,
                host_ip: binding.host_ip,
                host_port,
            });
        }
        if listeners.is_empty() {
            tracing::warn!(container = %record.short_id(),
                "the built-in Ryuk has no published port, so no client can reach it");
        }

        let (stop, stop_requests) = watch::channel(None);
        let (output, stdout) = tokio::io::duplex(64 * 1024);
        let reaper = Arc::new(Reaper {
            id: record.id.clone(),
            filters: Mutex::new(Vec::new()),
            clients: watch::channel(0).0,
            output: tokio::sync::Mutex::new(output),
        });
        let ports: Vec<u16> = published.iter().map(|port| port.host_port).collect();
        let task = tokio::spawn(self.clone().run_reaper(
            reaper,
            listeners,
            stop_requests,
            connection_timeout,
            reconnection_timeout,
        ));
        let process = Process {
            stdin: None,
            stdout: Box::pin(stdout),
            stderr: None,
            control: Arc::new(ReaperControl { stop }),
            exit: Box::pin(async move { task.await.unwrap_or(ExitStatus::Signal(libc::SIGKILL)) }),
        };

        container.logs.set_live(true);
        container.set_control(Some(process.control.clone()));
        container.update(|record| {
            record.state.status = Status::Running;
            record.state.pid = 0;
            record.state.exit_code = 0;
            record.state.error.clear();
            record.state.started_at = Some(chrono::Utc::now());
            record.ports = published;
        });
        tracing::info!(container = %record.short_id(), ?ports, ?reconnection_timeout,
            "started the built-in Ryuk");
        tokio::spawn(self.clone().supervise(container.clone(), process));
        Ok(())
    }

    /// Serves clients until the reconnection timeout passes with none
    /// connected, or a stop, and returns the exit status.
    async fn run_reaper(
        self: Arc<Self>,
        reaper: Arc<Reaper>,
        listeners: Vec<TcpListener>,
        mut stop: watch::Receiver<Option<Stop>>,
        connection_timeout: Duration,
        reconnection_timeout: Duration,
    ) -> ExitStatus {
        // Dropping the set when this returns closes the listeners and
        // every connection.
        let mut tasks = JoinSet::new();
        for listener in listeners {
            tasks.spawn(accept_loop(reaper.clone(), listener));
        }
        reaper
            .log(&format!(
                "sidewhale built-in Ryuk, reconnection timeout {reconnection_timeout:?}: Started!"
            ))
            .await;

        let mut clients = reaper.clients.subscribe();
        tokio::select! {
            _ = until_clients(&mut clients, true) => {}
            _ = tokio::time::sleep(connection_timeout) => {
                tracing::info!(container = %reaper.short_id(), ?connection_timeout,
                    "no client connected to the built-in Ryuk, stopping it");
                reaper.log("no client connected within the connection timeout, stopping").await;
                return ExitStatus::Code(0);
            }
            requested = stop_requested(&mut stop) => {
                return self.stop_reaper(&reaper, requested).await;
            }
        }

        loop {
            tokio::select! {
                _ = until_clients(&mut clients, false) => {}
                requested = stop_requested(&mut stop) => {
                    return self.stop_reaper(&reaper, requested).await;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(reconnection_timeout) => {
                    tracing::info!(container = %reaper.short_id(), ?reconnection_timeout,
                        "every Ryuk client left and none came back");
                    self.reap(&reaper).await;
                    return ExitStatus::Code(0);
                }
                _ = until_clients(&mut clients, true) => {}
                requested = stop_requested(&mut stop) => {
                    return self.stop_reaper(&reaper, requested).await;
                }
            }
        }
    }

    async fn stop_reaper(&self, reaper: &Reaper, stop: Stop) -> ExitStatus {
        if stop == Stop::Kill {
            tracing::info!(container = %reaper.short_id(), "the built-in Ryuk was killed");
            return ExitStatus::Signal(libc::SIGKILL);
        }
        if *reaper.clients.borrow() == 0 {
            self.reap(reaper).await;
        } else {
            tracing::info!(container = %reaper.short_id(),
                "the built-in Ryuk was stopped while clients are connected, removing nothing");
            reaper
                .log("stopped while clients are connected, removing nothing")
                .await;
        }
        ExitStatus::Code(0)
    }

    /// Removes every container, network and volume that a filter matches.
    async fn reap(&self, reaper: &Reaper) {
        let filters = reaper.filters();
        if filters.is_empty() {
            reaper.log("no filters received, removing nothing").await;
            return;
        }
        let matches = |labels: &BTreeMap<String, String>, name: &str, id: &str| {
            filters
                .iter()
                .any(|filter| filter.matches(labels, name, id))
        };

        let mut containers = 0;
        for container in self.containers() {
            let record = container.record();
            let labels = record.config.labels.clone().unwrap_or_default();
            if record.id == reaper.id || !matches(&labels, &record.name, &record.id) {
                continue;
            }
            // Ryuk removes containers with RemoveVolumes, which takes
            // their anonymous volumes with them.
            match self.remove_container(&container, true).await {
                Ok(()) => {
                    self.remove_anonymous_volumes(&record);
                    containers += 1;
                }
                Err(error) => {
                    tracing::warn!(container = %reaper.short_id(), target = %record.short_id(), %error,
                        "the built-in Ryuk failed to remove a container");
                }
            }
        }

        let mut networks = 0;
        for network in self.networks() {
            if network.built_in || !matches(&network.labels, &network.name, &network.id) {
                continue;
            }
            match self.remove_network(&network.id) {
                Ok(()) => networks += 1,
                Err(error) => {
                    tracing::warn!(container = %reaper.short_id(), network = %network.name, %error,
                        "the built-in Ryuk failed to remove a network");
                }
            }
        }

        let mut volumes = 0;
        for volume in self.volumes.list() {
            if !matches(&volume.labels, &volume.name, &volume.name) {
                continue;
            }
            match self.remove_volume(&volume.name, false) {
                Ok(()) => volumes += 1,
                Err(error) => {
                    tracing::warn!(container = %reaper.short_id(), volume = %volume.name, %error,
                        "the built-in Ryuk failed to remove a volume");
                }
            }
        }

        tracing::info!(container = %reaper.short_id(), containers, networks, volumes,
            "the built-in Ryuk removed the resources its filters match");
        reaper
            .log(&format!(
                "removed {containers} containers, {networks} networks and {volumes} volumes"
            ))
            .await;
    }
}

/// Waits until at least one client is connected, or none is.
async fn until_clients(clients: &mut watch::Receiver<usize>, connected: bool) {
    if clients
        .wait_for(|count| (*count > 0) == connected)
        .await
        .is_err()
    {
        // The reaper owns the sender, so it outlives this wait.
        std::future::pending::<()>().await;
    }
}

/// Waits for a stop of the container.
async fn stop_requested(stop: &mut watch::Receiver<Option<Stop>>) -> Stop {
    let requested = stop
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|stop| *stop);
    match requested {
        Some(stop) => stop,
        // The container keeps the sender until the reaper exits.
        None => std::future::pending().await,
    }
}

async fn accept_loop(reaper: Arc<Reaper>, listener: TcpListener) {
    let mut connections = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                connections.spawn(serve_client(reaper.clone(), stream, peer));
            }
            Err(error) => {
                tracing::warn!(container = %reaper.short_id(), %error, "Ryuk accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
}

/// Counts a client as connected from creation until drop.
struct ClientGuard(Arc<Reaper>);

impl ClientGuard {
    fn new(reaper: Arc<Reaper>) -> ClientGuard {
        reaper.clients.send_modify(|count| *count += 1);
        ClientGuard(reaper)
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0
            .clients
            .send_modify(|count| *count = count.saturating_sub(1));
    }
}

/// Reads filter lines from one client and acknowledges each valid one.
async fn serve_client(reaper: Arc<Reaper>, stream: TcpStream, peer: SocketAddr) {
    let _guard = ClientGuard::new(reaper.clone());
    tracing::info!(container = %reaper.short_id(), %peer, "Ryuk client connected");
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await;
        match read {
            Ok(0) => break,
            Ok(_) if line.len() > MAX_LINE => {
                tracing::warn!(container = %reaper.short_id(), %peer,
                    "Ryuk filter line longer than {MAX_LINE} bytes, closing the connection");
                break;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(container = %reaper.short_id(), %peer, %error, "Ryuk client read failed");
                break;
            }
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        match FilterSet::parse(text) {
            Ok(filter) => {
                tracing::info!(container = %reaper.short_id(), %peer, filter = %text, "Ryuk filter received");
                reaper.log(&format!("adding filter {text}")).await;
                reaper.add_filter(filter);
                if writer.write_all(b"ACK\n").await.is_err() {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(container = %reaper.short_id(), %peer, filter = %text, %error,
                    "Ryuk filter rejected");
                reaper
                    .log(&format!("rejected filter {text}: {error}"))
                    .await;
            }
        }
    }
    tracing::info!(container = %reaper.short_id(), %peer, "Ryuk client disconnected");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ryuk_images_recognised() {
        assert!(is_ryuk_image("testcontainers/ryuk:0.8.1"));
        assert!(is_ryuk_image("docker.io/testcontainers/ryuk"));
        assert!(is_ryuk_image(
            "mirror.example:5000/hub/testcontainers/ryuk:0.5.1"
        ));
        assert!(!is_ryuk_image("testcontainers/sshd:1.2.0"));
        assert!(!is_ryuk_image("redis:7"));
        assert!(!is_ryuk_image("notcontainers/ryuk"));
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("s"), None);
        assert_eq!(parse_go_duration("5d"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn filter_lines_parse_and_match() {
        let filter =
            FilterSet::parse("label=org.testcontainers.sessionId%3Dabc&label=org.testcontainers")
                .unwrap();
        let mut labels = BTreeMap::from([
            (
                "org.testcontainers.sessionId".to_string(),
                "abc".to_string(),
            ),
            ("org.testcontainers".to_string(), "true".to_string()),
        ]);
        assert!(filter.matches(&labels, "web", "0123"));
        labels.insert("org.testcontainers.sessionId".into(), "other".into());
        assert!(!filter.matches(&labels, "web", "0123"));

        let plain = FilterSet::parse("label=org.testcontainers.session-id=x").unwrap();
        let labels =
            BTreeMap::from([("org.testcontainers.session-id".to_string(), "x".to_string())]);
        assert!(plain.matches(&labels, "db", "abcd"));

        let by_name = FilterSet::parse("name=web&name=db").unwrap();
        assert!(by_name.matches(&BTreeMap::new(), "db", "1"));
        assert!(!by_name.matches(&BTreeMap::new(), "cache", "1"));
    }

    #[test]
    fn invalid_filter_lines_rejected() {
        assert!(FilterSet::parse("").is_err());
        assert!(FilterSet::parse("status=running").is_err());
        assert!(FilterSet::parse("label=").is_err());
        assert!(FilterSet::parse("label=%zz").is_err());
    }

    #[test]
    fn settings_read_from_env() {
        let env = vec![
            "RYUK_RECONNECTION_TIMEOUT=2s".to_string(),
            "OTHER=1".to_string(),
        ];
        let timeout = duration_setting(
            &env,
            "RYUK_RECONNECTION_TIMEOUT",
            DEFAULT_RECONNECTION_TIMEOUT,
        );
        assert_eq!(timeout, Duration::from_secs(2));
        let missing = duration_setting(&env, "RYUK_CONNECTION_TIMEOUT", DEFAULT_CONNECTION_TIMEOUT);
        assert_eq!(missing, DEFAULT_CONNECTION_TIMEOUT);
        let invalid = vec!["RYUK_RECONNECTION_TIMEOUT=soon".to_string()];
        let fallback = duration_setting(
            &invalid,
            "RYUK_RECONNECTION_TIMEOUT",
            DEFAULT_RECONNECTION_TIMEOUT,
        );
        assert_eq!(fallback, DEFAULT_RECONNECTION_TIMEOUT);
    }
}
