//! The daemon: containers, execs and their lifecycles, independent of HTTP.

pub mod archive;
mod create;
pub mod error;
pub mod events;
pub mod exec;
pub mod extract;
mod files;
pub mod health;
pub mod isolation;
mod lifecycle;
mod orphans;
pub mod logs;
pub mod model;
mod mounts;
pub mod networks;
mod pause;
mod restart;
pub mod ports;
pub mod processes;
pub mod prune;
pub mod ryuk;
mod shared_ports;
mod signals;
pub mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use sidewhale_config::Config;
use sidewhale_core::executor::BoxedWriter;
use sidewhale_core::{Executor, PortForwarder, Probe, ProcessControl};
use sidewhale_images::ImageStore;
use tokio::sync::watch;

pub use error::{Error, Result};
pub use exec::ExecInstance;
pub use lifecycle::WaitCondition;
use logs::LogBuffer;
use model::{ContainerRecord, Status};
pub use signals::parse_signal;

/// One container: its stored record, its output and its running process.
pub struct Container {
    pub id: String,
    pub dir: PathBuf,
    record: Mutex<ContainerRecord>,
    /// Bumped on every state change, for `wait` and followers.
    changes: watch::Sender<u64>,
    pub logs: LogBuffer,
    control: Mutex<Option<Arc<dyn ProcessControl>>>,
    /// The main process's stdin while it runs with `OpenStdin`, until an
    /// attached client takes it.
    stdin: Mutex<Option<BoxedWriter>>,
    /// Serialises start, stop and remove of this container.
    lifecycle: tokio::sync::Mutex<()>,
    /// Set by the removal that owns this container, before it kills a
    /// running process, so that the exit's auto-removal skips it.
    removal_claimed: std::sync::atomic::AtomicBool,
    /// Set when a client stops or kills the container, which its restart
    /// policy then leaves stopped; cleared when it starts.
    stopped_by_client: std::sync::atomic::AtomicBool,
    /// The delay before the last restart by the restart policy.
    restart_delay: Mutex<Option<std::time::Duration>>,
}

impl Container {
    fn new(dir: PathBuf, record: ContainerRecord) -> Container {
        let logs = LogBuffer::open(&dir.join("log.json"));
        Container {
            id: record.id.clone(),
            dir,
            record: Mutex::new(record),
            changes: watch::channel(0).0,
            logs,
            control: Mutex::new(None),
            stdin: Mutex::new(None),
            lifecycle: tokio::sync::Mutex::new(()),
            removal_claimed: std::sync::atomic::AtomicBool::new(false),
            stopped_by_client: std::sync::atomic::AtomicBool::new(false),
            restart_delay: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ContainerRecord> {
        // The record is plain data that every writer leaves consistent, so
        // a lock poisoned by a panic elsewhere is still safe to use.
        self.record
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Returns a copy of the container's record. The executor may learn
    /// the main process's pid only after start returned, so a missing pid
    /// is filled in from the running process.
    pub fn record(&self) -> ContainerRecord {
        let mut record = self.lock().clone();
        if record.state.running() && record.state.pid == 0 {
            record.state.pid = self
                .control()
                .and_then(|control| control.pid())
                .unwrap_or(0);
        }
        record
    }

    /// Changes the record, writes it to disk and wakes waiters.
    fn update<T>(&self, change: impl FnOnce(&mut ContainerRecord) -> T) -> T {
        let (result, record) = {
            let mut record = self.lock();
            let result = change(&mut record);
            (result, record.clone())
        };
        if let Err(error) = save_record(&self.dir, &record) {
            tracing::error!(container = %record.short_id(), %error, "failed to save container state");
        }
        self.changes.send_modify(|version| *version += 1);
        result
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    fn control(&self) -> Option<Arc<dyn ProcessControl>> {
        self.control
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    fn set_control(&self, control: Option<Arc<dyn ProcessControl>>) {
        *self
            .control
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = control;
    }

    fn set_stdin(&self, stdin: Option<BoxedWriter>) {
        *self
            .stdin
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = stdin;
    }

    /// Gives back a stdin taken by an attach that ended, for the next one.
    /// Does nothing once the process has exited.
    pub fn return_stdin(&self, stdin: BoxedWriter) {
        if self.lock().state.running() {
            self.set_stdin(Some(stdin));
        }
    }

    /// Takes the main process's stdin, leaving none for a later attach.
    pub fn take_stdin(&self) -> Option<BoxedWriter> {
        self.stdin
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

fn save_record(dir: &Path, record: &ContainerRecord) -> std::io::Result<()> {
    let temporary = dir.join("container.json.tmp");
    let text = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, dir.join("container.json"))
}

/// The state shared by every API handler.
pub struct Daemon {
    pub config: Config,
    pub images: Arc<ImageStore>,
    pub executors: BTreeMap<String, (Arc<dyn Executor>, Probe)>,
    forwarder: Arc<dyn PortForwarder>,
    containers: RwLock<HashMap<String, Arc<Container>>>,
    execs: Mutex<HashMap<String, Arc<ExecInstance>>>,
    containers_dir: PathBuf,
    pub volumes: volumes::VolumeStore,
    networks: networks::NetworkStore,
    pub isolation: isolation::Isolation,
    pub events: events::EventLog,
}

impl Daemon {
    /// Opens the state directory and loads the containers a previous run
    /// left. Containers that were running are marked as exited, because
    /// their processes did not survive the restart of their supervisor.
    pub fn open(
        config: Config,
        images: Arc<ImageStore>,
        executors: BTreeMap<String, (Arc<dyn Executor>, Probe)>,
        forwarder: Arc<dyn PortForwarder>,
    ) -> anyhow::Result<Arc<Daemon>> {
        // Container directories use the 12-digit id to keep paths short:
        // a unix socket created inside a rootfs must fit in 108 bytes.
        let containers_dir = config.state_dir.join("c");
        std::fs::create_dir_all(&containers_dir)?;
        let volumes = volumes::VolumeStore::open(config.state_dir.join("volumes"))?;
        let networks = networks::NetworkStore::open(config.state_dir.join("networks"))?;
        let isolation =
            isolation::Isolation::new(config.network.isolation, config.state_dir.join("networks"))?;
        let daemon = Daemon {
            config,
            images,
            executors,
            forwarder,
            containers: RwLock::new(HashMap::new()),
            execs: Mutex::new(HashMap::new()),
            containers_dir,
            volumes,
            networks,
            isolation,
            events: events::EventLog::default(),
        };
        daemon.load_containers()?;
        Ok(Arc::new(daemon))
    }

    fn load_containers(&self) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(&self.containers_dir)? {
            let dir = entry?.path();
            let Ok(text) = std::fs::read(dir.join("container.json")) else {
                tracing::warn!(dir = %dir.display(), "removing container directory without a record");
                let _ = self.images.remove_rootfs(&dir);
                continue;
            };
            let mut record: ContainerRecord = match serde_json::from_slice(&text) {
                Ok(record) => record,
                Err(error) => {
                    tracing::error!(dir = %dir.display(), %error, "container record is unreadable, skipping it");
                    continue;
                }
            };
            if matches!(record.state.status, Status::Running | Status::Removing) {
                orphans::kill_leftover(record.short_id(), &record.state);
                record.state.status = Status::Exited;
                record.state.exit_code = 255;
                record.state.pid = 0;
                record.state.error = "sidewhale stopped while the container was running".into();
                record.state.finished_at = Some(chrono::Utc::now());
                record.state.exits += 1;
                record.ports.clear();
                save_record(&dir, &record)?;
            }
            tracing::info!(container = %record.short_id(), name = %record.name, "loaded container");
            let container = Arc::new(Container::new(dir, record));
            self.write_containers()
                .insert(container.id.clone(), container);
        }
        Ok(())
    }

    fn read_containers(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn write_containers(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Finds a container by full id, name (with or without the leading
    /// slash) or unique id prefix, in that order, as Docker does.
    pub fn container(&self, name_or_id: &str) -> Result<Arc<Container>> {
        let containers = self.read_containers();
        if let Some(container) = containers.get(name_or_id) {
            return Ok(container.clone());
        }
        let name = name_or_id.strip_prefix('/').unwrap_or(name_or_id);
        if let Some(container) = containers.values().find(|c| c.lock().name == name) {
            return Ok(container.clone());
        }
        let mut matches = containers.values().filter(|c| c.id.starts_with(name_or_id));
        match (matches.next(), matches.next()) {
            (Some(container), None) if !name_or_id.is_empty() => Ok(container.clone()),
            (Some(_), Some(_)) => Err(Error::NotFound(format!(
                "multiple IDs found with provided prefix: {name_or_id}"
            ))),
            _ => Err(Error::no_such_container(name_or_id)),
        }
    }

    /// Returns every container, newest first.
    pub fn containers(&self) -> Vec<Arc<Container>> {
        let mut list: Vec<Arc<Container>> = self.read_containers().values().cloned().collect();
        list.sort_by_key(|container| std::cmp::Reverse(container.lock().created));
        list
    }

    /// Returns whether any container was created from the image.
    pub fn containers_using_image(&self, image_id: &str) -> Vec<ContainerRecord> {
        self.read_containers()
            .values()
            .map(|container| container.record())
            .filter(|record| record.image_id == image_id)
            .collect()
    }

    pub fn executor(&self, name: &str) -> Result<Arc<dyn Executor>> {
        match self.executors.get(name) {
            Some((executor, Probe::Available)) => Ok(executor.clone()),
            Some((_, Probe::Unavailable(reason))) => Err(Error::InvalidParameter(format!(
                "runtime {name} is not available on this host: {reason}"
            ))),
            None => Err(Error::InvalidParameter(format!(
                "unknown or invalid runtime name: {name}"
            ))),
        }
    }
}
