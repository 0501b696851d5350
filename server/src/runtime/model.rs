//! Docker's container configuration as clients send it, and the record
//! sidewhale keeps for each container.
//!
//! Every field is optional: docker-java sends `null` for whatever it does
//! not set, and other clients leave fields out. Unknown keys are ignored.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use sidewhale_core::{Mount, PortBinding, PublishedPort};

/// Accepts a JSON string or array of strings, as Docker's `StrSlice` does
/// for `Cmd` and `Entrypoint`.
pub fn string_or_list<'de, D>(deserializer: D) -> Result<Option<Vec<String>>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum StringOrList {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<StringOrList>::deserialize(deserializer)? {
        None => None,
        Some(StringOrList::One(text)) => Some(vec![text]),
        Some(StringOrList::Many(list)) => Some(list),
    })
}

/// The `Config` object of `POST /containers/create` and of inspect.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerConfig {
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub user: Option<String>,
    pub attach_stdin: Option<bool>,
    pub attach_stdout: Option<bool>,
    pub attach_stderr: Option<bool>,
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    pub tty: Option<bool>,
    pub open_stdin: Option<bool>,
    pub stdin_once: Option<bool>,
    pub env: Option<Vec<String>>,
    #[serde(deserialize_with = "string_or_list")]
    pub cmd: Option<Vec<String>>,
    pub healthcheck: Option<Value>,
    pub image: Option<String>,
    pub volumes: Option<BTreeMap<String, Value>>,
    pub working_dir: Option<String>,
    #[serde(deserialize_with = "string_or_list")]
    pub entrypoint: Option<Vec<String>>,
    pub labels: Option<BTreeMap<String, String>>,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<i64>,
}

/// One entry of `HostConfig.PortBindings`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortBindingRequest {
    pub host_ip: Option<String>,
    pub host_port: Option<String>,
}

/// The parts of `HostConfig` that sidewhale acts on. The whole object is
/// also kept as sent, for inspect.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HostConfigRequest {
    pub binds: Option<Vec<String>>,
    pub mounts: Option<Vec<MountRequest>>,
    /// Destination to `mount -t tmpfs` options, such as `size=64m`.
    pub tmpfs: Option<BTreeMap<String, String>>,
    pub port_bindings: Option<BTreeMap<String, Option<Vec<PortBindingRequest>>>>,
    pub publish_all_ports: Option<bool>,
    pub auto_remove: Option<bool>,
    pub runtime: Option<String>,
}

/// One entry of `HostConfig.Mounts`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct MountRequest {
    #[serde(rename = "Type")]
    pub kind: Option<String>,
    pub source: Option<String>,
    pub target: Option<String>,
    pub read_only: Option<bool>,
    pub volume_options: Option<VolumeOptionsRequest>,
}

/// `HostConfig.Mounts[].VolumeOptions`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct VolumeOptionsRequest {
    pub no_copy: Option<bool>,
    pub labels: Option<BTreeMap<String, String>>,
}

/// The source behind a container mount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    #[default]
    Bind,
    Volume,
    /// A fresh directory of the container's own, standing in for a tmpfs.
    Tmpfs,
}

impl MountType {
    pub fn as_str(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Volume => "volume",
            MountType::Tmpfs => "tmpfs",
        }
    }
}

/// A mount of a container, with what inspect shows of it. Records
/// written before volumes existed hold only `source`, `destination` and
/// `read_only`, and read as binds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    #[serde(default)]
    pub kind: MountType,
    /// The volume's name; empty for binds and tmpfs.
    #[serde(default)]
    pub name: String,
    /// The host directory or file.
    pub source: PathBuf,
    /// The absolute path inside the container.
    pub destination: String,
    pub read_only: bool,
    /// Inspect's `Mode`: the options of a `Binds` entry, such as `ro` or
    /// `z`, and empty for `Mounts` entries.
    #[serde(default)]
    pub mode: String,
    /// Left out of inspect's `Mounts`, as Docker leaves out the entries
    /// of `HostConfig.Tmpfs`.
    #[serde(default)]
    pub hidden: bool,
}

impl MountRecord {
    /// Returns the mount as the executor applies it.
    pub fn to_mount(&self) -> Mount {
        Mount {
            source: self.source.clone(),
            destination: self.destination.clone(),
            read_only: self.read_only,
        }
    }
}

/// The body of `POST /containers/create`.
#[derive(Debug, Default, Deserialize)]
pub struct CreateRequest {
    #[serde(flatten)]
    pub config: ContainerConfig,
    #[serde(rename = "HostConfig", default)]
    pub host_config: Option<Value>,
    /// `EndpointsConfig`: network name or id to the endpoint's settings.
    #[serde(rename = "NetworkingConfig", default)]
    pub networking_config: Option<Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
    Removing,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
            Status::Removing => "removing",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    pub status: Status,
    pub pid: u32,
    pub exit_code: i64,
    pub error: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Counts exits, so `wait?condition=next-exit` can tell a new one.
    pub exits: u64,
    /// Start time of the main process (field 22 of `/proc/PID/stat`), which
    /// tells a live process from a later one that reused its pid.
    #[serde(default)]
    pub process_start: Option<u64>,
    /// The executor's process group leader and its start time, recorded at
    /// start for the same purpose.
    #[serde(default)]
    pub group_leader: Option<(u32, u64)>,
    /// Whether the container's processes are stopped by `pause`. The
    /// status stays `Running`; inspect shows `paused`.
    #[serde(default)]
    pub paused: bool,
    /// `State.Health`, present once a container with a health check has
    /// started.
    #[serde(default)]
    pub health: Option<super::health::Health>,
}

impl State {
    pub fn created() -> State {
        State {
            status: Status::Created,
            pid: 0,
            exit_code: 0,
            error: String::new(),
            started_at: None,
            finished_at: None,
            exits: 0,
            process_start: None,
            group_leader: None,
            paused: false,
            health: None,
        }
    }

    pub fn running(&self) -> bool {
        self.status == Status::Running
    }

    /// Returns Docker's `State.Status`, which shows a paused container as
    /// `paused` rather than `running`.
    pub fn status_name(&self) -> &'static str {
        if self.running() && self.paused {
            "paused"
        } else {
            self.status.as_str()
        }
    }
}

/// The stored state of a container, kept in `container.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    /// Without Docker's leading slash.
    pub name: String,
    pub created: DateTime<Utc>,
    /// The image as the client named it.
    pub image: String,
    pub image_id: String,
    /// The configuration after merging the image's defaults.
    pub config: ContainerConfig,
    /// `HostConfig` as sent, with `Runtime` filled in.
    pub host_config: Value,
    pub port_bindings: Vec<PortBinding>,
    pub auto_remove: bool,
    pub runtime: String,
    pub mounts: Vec<MountRecord>,
    pub state: State,
    pub ports: Vec<PublishedPort>,
    pub restart_count: u64,
    /// The container's endpoints, keyed by network name. Empty in records
    /// written before networks existed, which show `NetworkMode` alone.
    #[serde(default)]
    pub networks: BTreeMap<String, super::networks::EndpointRecord>,
}

/// Returns whether the `KEY=VALUE` list `env` sets `key`.
pub fn env_has(env: &[String], key: &str) -> bool {
    env.iter().any(|entry| entry.split('=').next() == Some(key))
}

impl ContainerRecord {
    pub fn short_id(&self) -> &str {
        &self.id[..12]
    }

    /// Returns the entrypoint followed by the command.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = self.config.entrypoint.clone().unwrap_or_default();
        argv.extend(self.config.cmd.clone().unwrap_or_default());
        argv
    }

    /// Returns the environment the process sees: the configured one plus
    /// `HOSTNAME`, and `TERM` with a TTY, as Docker sets them.
    pub fn process_env(&self) -> Vec<String> {
        let mut env = self.config.env.clone().unwrap_or_default();
        if !env_has(&env, "HOSTNAME") {
            env.push(format!("HOSTNAME={}", self.hostname()));
        }
        if self.config.tty.unwrap_or(false) && !env_has(&env, "TERM") {
            env.push("TERM=xterm".to_string());
        }
        env
    }

    pub fn hostname(&self) -> String {
        match self.config.hostname.as_deref() {
            Some(name) if !name.is_empty() => name.to_string(),
            _ => self.short_id().to_string(),
        }
    }

    /// Returns every port the container exposes or publishes, as Docker's
    /// `PORT/PROTOCOL` keys.
    pub fn exposed_port_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .config
            .exposed_ports
            .iter()
            .flat_map(|ports| ports.keys().cloned())
            .collect();
        for binding in &self.port_bindings {
            keys.push(format!(
                "{}/{}",
                binding.container_port,
                binding.protocol.as_str()
            ));
        }
        keys.sort_by_key(|key| port_key_order(key));
        keys.dedup();
        keys
    }
}

/// Sorts port keys numerically, then by protocol.
pub fn port_key_order(key: &str) -> (u32, String) {
    let (port, protocol) = key.split_once('/').unwrap_or((key, "tcp"));
    (port.parse().unwrap_or(u32::MAX), protocol.to_string())
}
