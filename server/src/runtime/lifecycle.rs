//! Starting, stopping, killing, waiting for and removing containers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sidewhale_core::{ContainerSpec, ExecutorError, ExitStatus, PortRelocation, Process, ProcessSpec};
use tokio::sync::watch;

use super::isolation::Placement;
use super::logs::Stream;
use super::model::{ContainerRecord, Status};
use super::{files, parse_signal, ryuk, Container, Daemon, Error, Result};

/// Docker's default grace period before `stop` kills.
const DEFAULT_STOP_TIMEOUT: i64 = 10;
/// The maximum time in seconds a container may take to stop when
/// sidewhale shuts down: Docker's daemon default `shutdown-timeout`.
const SHUTDOWN_TIMEOUT: i64 = 15;

/// How long a process may keep its output pipes open after it exited,
/// for example through a daemon it started, before they are abandoned.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The `condition` of `POST /containers/{id}/wait`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitCondition {
    NotRunning,
    NextExit,
    Removed,
}

impl WaitCondition {
    pub fn parse(text: Option<&str>) -> Result<WaitCondition> {
        match text {
            None | Some("") | Some("not-running") => Ok(WaitCondition::NotRunning),
            Some("next-exit") => Ok(WaitCondition::NextExit),
            Some("removed") => Ok(WaitCondition::Removed),
            Some(other) => Err(Error::InvalidParameter(format!(
                "invalid condition: \"{other}\""
            ))),
        }
    }
}

impl Daemon {
    /// Returns what the executor needs to run the container.
    pub fn container_spec(&self, container: &Container) -> ContainerSpec {
        let record = container.record();
        ContainerSpec {
            id: record.id.clone(),
            rootfs: container.rootfs(),
            runtime_dir: container.dir.join("runtime"),
            hostname: record.hostname(),
            process: ProcessSpec {
                argv: record.argv(),
                env: record.process_env(),
                working_dir: record.config.working_dir.clone().unwrap_or_default(),
                user: record.config.user.clone().unwrap_or_default(),
                tty: record.config.tty.unwrap_or(false),
                open_stdin: record.config.open_stdin.unwrap_or(false),
                console_size: console_size(&record.host_config["ConsoleSize"]),
            },
            mounts: files::mounts(&container.dir, &record),
            network: self.isolation.namespace(&record.id),
            port_relocation: self.port_relocation(&record.id),
        }
    }

    /// Returns what the executor needs to relocate the ports of a running
    /// container on the host's network, or `None` for any other container.
    fn port_relocation(&self, container_id: &str) -> Option<PortRelocation> {
        let ports = self.isolation.relocated_ports(container_id)?;
        Some(PortRelocation {
            ports,
            peers: self.isolation.peer_lookup(),
        })
    }

    /// Starts the container's main process, with its ports listening
    /// before this returns.
    pub async fn start_container(self: &Arc<Self>, container: &Arc<Container>) -> Result<()> {
        let _lifecycle = container.lifecycle.lock().await;
        let record = container.record();
        match record.state.status {
            Status::Running => return Err(Error::NotModified),
            Status::Removing => {
                return Err(Error::Conflict(format!(
                    "container {} is marked for removal and cannot be started",
                    record.id
                )))
            }
            Status::Created | Status::Exited => {}
        }
        container.stopped_by_client.store(false, Ordering::SeqCst);
        if record.runtime == ryuk::RUNTIME {
            self.start_ryuk(container).await?;
            self.container_event(&container.record(), "start", &[]);
            return Ok(());
        }
        let executor = self.executor(&record.runtime)?;
        let mut spec = self.container_spec(container);
        std::fs::create_dir_all(&spec.runtime_dir)
            .map_err(|error| Error::internal("failed to create the runtime directory", error))?;

        let placement = self.placement(&record);
        let target = self
            .isolation
            .attach(&record.id, placement, &spec.runtime_dir, self.network_links(&record))
            .await;
        let target = match target {
            Ok(target) => target,
            Err(error) => {
                let error = ExecutorError::io("create the container's network namespace", error);
                return Err(self.record_start_failure(container, error));
            }
        };
        spec.network = self.isolation.namespace(&record.id);
        spec.port_relocation = self.port_relocation(&record.id);
        if placement == Placement::Host {
            self.check_shared_ports(&record)?;
        }
        // Where the container runs is known only now: slirp4netns may have
        // failed to start. Peers' addresses depend on where each runs.
        self.write_resolv_conf(container, self.placement(&record));
        self.write_hosts_files();

        let published = self
            .forwarder
            .publish_to(&record.id, &target, &record.port_bindings)
            .await;
        let published = match published {
            Ok(published) => published,
            Err(error) => {
                self.isolation.detach(&record.id).await;
                return Err(Error::Internal(format!(
                    "driver failed programming external connectivity on endpoint {}: {error}",
                    record.name
                )));
            }
        };

        let mut process = match executor.start(&spec).await {
            Ok(process) => process,
            Err(error) => {
                self.forwarder.unpublish(&record.id).await;
                self.isolation.detach(&record.id).await;
                return Err(self.record_start_failure(container, error));
            }
        };

        container.logs.set_live(true);
        container.set_control(Some(process.control.clone()));
        // An attached client takes stdin as soon as the state is running,
        // so it must be in place before that.
        container.set_stdin(process.stdin.take());
        let pid = process.control.pid().unwrap_or(0);
        let group_leader = process.control.group_leader().and_then(|leader| {
            super::orphans::start_time(leader).map(|start| (leader, start))
        });
        container.update(|record| {
            record.state.status = Status::Running;
            record.state.pid = pid;
            record.state.exit_code = 0;
            record.state.error.clear();
            record.state.started_at = Some(chrono::Utc::now());
            record.state.group_leader = group_leader;
            record.state.paused = false;
            record.ports = published;
        });
        tracing::info!(container = %&record.id[..12], pid, runtime = %record.runtime, "started container");
        self.container_event(&container.record(), "start", &[]);
        self.start_health_monitor(container);
        tokio::spawn(self.clone().supervise(container.clone(), process));
        Ok(())
    }

    /// Rewrites the container's `resolv.conf` for where it runs: a copy of
    /// the host's, with slirp4netns's DNS forwarder in place of loopback
    /// name servers when the container has outbound access of its own.
    fn write_resolv_conf(&self, container: &Container, placement: Placement) {
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let text = match placement {
            Placement::Namespace { outbound: true, .. } => {
                files::namespace_resolv_conf(&host, sidewhale_netns::outbound::DNS_ADDRESS)
            }
            _ => host,
        };
        if let Err(error) = files::rewrite_in_place(&container.dir.join("resolv.conf"), &text) {
            tracing::warn!(container = %&container.id[..12], %error, "failed to rewrite resolv.conf");
        }
    }

    /// Records a failed start as Docker does: the container is exited with
    /// 127 (not found) or 126 (not executable) and the error in its state.
    /// A container with `AutoRemove` is then removed, with its anonymous
    /// volumes, as Docker removes it. `docker run --rm` waits for that
    /// removal after a failed start.
    fn record_start_failure(self: &Arc<Self>, container: &Arc<Container>, error: ExecutorError) -> Error {
        let exit_code = match &error {
            ExecutorError::NotFound(_) => 127,
            ExecutorError::NotExecutable(_) => 126,
            _ => 128,
        };
        let message = format!("failed to create task for container: {error}");
        tracing::warn!(container = %&container.id[..12], %error, "container failed to start");
        container.update(|record| {
            record.state.status = Status::Exited;
            record.state.exit_code = exit_code;
            record.state.error = message.clone();
            record.state.finished_at = Some(chrono::Utc::now());
            record.state.exits += 1;
        });
        if container.record().auto_remove {
            // The caller holds the container's lifecycle lock, which
            // removal takes, so it runs once the caller returns.
            let daemon = self.clone();
            let container = container.clone();
            tokio::spawn(async move { daemon.auto_remove(&container).await });
        }
        match error {
            ExecutorError::Unavailable { .. }
            | ExecutorError::Io { .. }
            | ExecutorError::Other(_) => Error::Internal(message),
            _ => Error::InvalidParameter(message),
        }
    }

    /// Collects the output of the main process, then records its exit.
    pub(super) async fn supervise(self: Arc<Self>, container: Arc<Container>, process: Process) {
        let Process {
            stdout,
            stderr,
            control,
            exit,
            ..
        } = process;
        tokio::spawn(record_main_pid(container.clone(), control.clone()));
        let stdout_logs = container.logs.clone();
        let mut pumps = vec![tokio::spawn(async move {
            stdout_logs.pump(Stream::Stdout, stdout).await
        })];
        if let Some(stderr) = stderr {
            let stderr_logs = container.logs.clone();
            pumps.push(tokio::spawn(async move {
                stderr_logs.pump(Stream::Stderr, stderr).await
            }));
        }

        let status = exit.await;
        if let Err(error) = control.kill_all() {
            tracing::warn!(container = %&container.id[..12], %error, "failed to kill leftover processes");
        }
        for pump in pumps {
            if tokio::time::timeout(OUTPUT_DRAIN_TIMEOUT, pump)
                .await
                .is_err()
            {
                tracing::warn!(container = %&container.id[..12], "output still open after exit, abandoning it");
            }
        }
        self.finish(&container, status).await;
    }

    async fn finish(self: &Arc<Self>, container: &Arc<Container>, status: ExitStatus) {
        let record = container.record();
        self.forwarder.unpublish(&record.id).await;
        self.isolation.detach(&record.id).await;
        container.set_control(None);
        container.set_stdin(None);
        container.logs.set_live(false);
        container.update(|record| {
            record.state.status = Status::Exited;
            record.state.exit_code = status.code();
            record.state.pid = 0;
            record.state.finished_at = Some(chrono::Utc::now());
            record.state.exits += 1;
            record.state.paused = false;
            record.ports.clear();
        });
        tracing::info!(container = %&record.id[..12], ?status, exit_code = status.code(), "container exited");
        self.container_event(&record, "die", &[("exitCode", status.code().to_string())]);

        if let Ok(executor) = self.executor(&record.runtime) {
            if let Err(error) = executor.cleanup(&self.container_spec(container)).await {
                tracing::warn!(container = %&record.id[..12], %error, "executor cleanup failed");
            }
        }
        if record.auto_remove {
            self.auto_remove(container).await;
        } else {
            self.schedule_restart(container);
        }
    }

    /// Removes an exited container with `AutoRemove`, and its anonymous
    /// volumes as Docker's AutoRemove does.
    async fn auto_remove(&self, container: &Arc<Container>) {
        let record = container.record();
        match self.remove_container(container, true).await {
            Ok(()) => self.remove_anonymous_volumes(&record),
            Err(Error::Conflict(message)) => {
                // A client's DELETE owns the removal.
                tracing::debug!(container = %&record.id[..12], %message, "auto-removal left to another removal");
            }
            Err(error) => {
                tracing::warn!(container = %&record.id[..12], %error, "failed to auto-remove container");
            }
        }
    }

    /// Sends the stop signal, waits up to `timeout` seconds, then kills.
    pub async fn stop_container(
        &self,
        container: &Arc<Container>,
        timeout: Option<i64>,
        signal: Option<&str>,
    ) -> Result<()> {
        let record = container.record();
        // Also cancels a restart that the restart policy has scheduled.
        container.stopped_by_client.store(true, Ordering::SeqCst);
        if !record.state.running() {
            return Err(Error::NotModified);
        }
        let signal = match signal.or(record.config.stop_signal.as_deref()) {
            Some(signal) if !signal.is_empty() => parse_signal(signal)?,
            _ => libc::SIGTERM,
        };
        let timeout = timeout
            .or(record.config.stop_timeout)
            .unwrap_or(DEFAULT_STOP_TIMEOUT);
        let changes = container.subscribe();
        let Some(control) = container.control() else {
            return Err(Error::NotModified);
        };
        tracing::info!(container = %&record.id[..12], signal, timeout, "stopping container");
        self.resume_if_paused(container).await;

        if timeout != 0 {
            self.container_event(&record, "kill", &[("signal", signal.to_string())]);
            control.signal(signal)?;
        }
        // A negative timeout waits for as long as the process takes.
        let grace = u64::try_from(timeout).ok().map(Duration::from_secs);
        if !wait_until_stopped(container, changes.clone(), grace).await {
            tracing::info!(container = %&record.id[..12], "grace period over, killing container");
            self.container_event(&record, "kill", &[("signal", libc::SIGKILL.to_string())]);
            control.kill_all()?;
            wait_until_stopped(container, changes, Some(Duration::from_secs(30))).await;
        }
        self.container_event(&record, "stop", &[]);
        Ok(())
    }

    /// Delivers a signal to the main process.
    pub async fn kill_container(&self, container: &Container, signal: Option<&str>) -> Result<()> {
        let record = container.record();
        let signal = match signal {
            Some(signal) if !signal.is_empty() => parse_signal(signal)?,
            _ => libc::SIGKILL,
        };
        container.stopped_by_client.store(true, Ordering::SeqCst);
        let control = container
            .control()
            .filter(|_| record.state.running())
            .ok_or_else(|| Error::Conflict(format!("Container {} is not running", record.id)))?;
        tracing::info!(container = %&record.id[..12], signal, "signalling container");
        self.resume_if_paused(container).await;
        self.container_event(&record, "kill", &[("signal", signal.to_string())]);
        if signal == libc::SIGKILL {
            control.kill_all()?;
        } else {
            control.signal(signal)?;
        }
        Ok(())
    }

    /// Removes a container; a running one only with `force`, which kills it.
    pub async fn remove_container(&self, container: &Arc<Container>, force: bool) -> Result<()> {
        let record = container.record();
        let in_progress = || {
            Error::Conflict(format!("removal of container {} is already in progress", record.id))
        };
        if record.state.running() && !force {
            return Err(Error::Conflict(format!(
                "cannot remove container \"/{}\": container is running: stop the container \
                 before removing or force remove",
                record.name
            )));
        }
        // Claimed before the kill, as Docker marks the removal in progress
        // first. The exit of an AutoRemove container then leaves the
        // removal to this call, which returns success to the client.
        if container.removal_claimed.swap(true, Ordering::SeqCst) {
            return Err(in_progress());
        }
        let result = self.remove_claimed(container, &record).await;
        if result.is_err() {
            container.removal_claimed.store(false, Ordering::SeqCst);
        }
        result
    }

    /// Removes a container whose removal this caller claimed.
    async fn remove_claimed(&self, container: &Arc<Container>, record: &ContainerRecord) -> Result<()> {
        if container.record().state.running() {
            let changes = container.subscribe();
            self.resume_if_paused(container).await;
            if let Some(control) = container.control() {
                control.kill_all()?;
            }
            wait_until_stopped(container, changes, Some(Duration::from_secs(30))).await;
        }
        // The claim keeps a second removal out, so no other caller has set
        // Removing.
        let _lifecycle = container.lifecycle.lock().await;
        container.update(|record| record.state.status = Status::Removing);

        let images = self.images.clone();
        let dir = container.dir.clone();
        let removed = tokio::task::spawn_blocking(move || images.remove_rootfs(&dir)).await;
        if !matches!(removed, Ok(Ok(()))) {
            tracing::warn!(container = %&record.id[..12], ?removed, "container directory not fully removed");
        }
        self.write_containers().remove(&record.id);
        self.remove_execs_of(&record.id);
        // The names of the removed container leave its peers' hosts files.
        self.write_hosts_files();
        container.changes.send_modify(|version| *version += 1);
        tracing::info!(container = %&record.id[..12], "removed container");
        self.container_event(record, "destroy", &[]);
        Ok(())
    }

    /// Waits for `condition` and returns the exit code.
    pub async fn wait_container(
        &self,
        container: &Arc<Container>,
        condition: WaitCondition,
    ) -> i64 {
        let mut changes = container.subscribe();
        let initial_exits = container.record().state.exits;
        loop {
            let removed = self.container(&container.id).is_err();
            let record = container.record();
            let done = match condition {
                WaitCondition::NotRunning => !record.state.running(),
                WaitCondition::NextExit => record.state.exits > initial_exits,
                WaitCondition::Removed => removed,
            };
            if done || (removed && condition != WaitCondition::Removed) {
                return record.state.exit_code;
            }
            if changes.changed().await.is_err() {
                return record.state.exit_code;
            }
        }
    }
}

/// Waits until the container is not running; returns false on timeout.
async fn wait_until_stopped(
    container: &Container,
    mut changes: watch::Receiver<u64>,
    timeout: Option<Duration>,
) -> bool {
    let stopped = async {
        while container.record().state.running() {
            if changes.changed().await.is_err() {
                break;
            }
        }
    };
    match timeout {
        Some(timeout) => tokio::time::timeout(timeout, stopped).await.is_ok(),
        None => {
            stopped.await;
            true
        }
    }
}

impl Daemon {
    /// Kills every running container, so that no process outlives the
    /// server that supervises it, and waits for their exits to be saved.
    pub async fn shutdown(&self) {
        let running: Vec<_> = self
            .containers()
            .into_iter()
            .filter(|container| container.record().state.running())
            .collect();
        // As Docker's daemon does without live restore: each container gets
        // its stop signal and its stop timeout, capped at the daemon's
        // shutdown timeout, all at once, so that databases can flush.
        let stops = running.iter().map(|container| async move {
            let timeout = container
                .record()
                .config
                .stop_timeout
                .unwrap_or(DEFAULT_STOP_TIMEOUT);
            let timeout = if timeout < 0 {
                SHUTDOWN_TIMEOUT
            } else {
                timeout.min(SHUTDOWN_TIMEOUT)
            };
            if let Err(error) = self.stop_container(container, Some(timeout), None).await {
                tracing::debug!(container = %&container.id[..12], %error, "stop at shutdown");
            }
        });
        futures::future::join_all(stops).await;
        for container in running {
            if container.record().state.running() {
                let changes = container.subscribe();
                if let Some(control) = container.control() {
                    let _ = control.kill_all();
                }
                wait_until_stopped(&container, changes, Some(Duration::from_secs(10))).await;
            }
        }
    }
}

/// Reads a `ConsoleSize` of the API, `[rows, columns]` as the docker CLI
/// sends it. Returns `None` when it is missing or has a zero.
fn console_size(value: &serde_json::Value) -> Option<[u16; 2]> {
    let dimension = |index: usize| {
        value[index]
            .as_u64()
            .and_then(|number| u16::try_from(number).ok())
            .filter(|number| *number > 0)
    };
    Some([dimension(0)?, dimension(1)?])
}

/// Saves the main process's pid and start time once the executor knows
/// them, so that a restarted sidewhale can kill what a crash left running.
async fn record_main_pid(
    container: Arc<Container>,
    control: Arc<dyn sidewhale_core::ProcessControl>,
) {
    for _ in 0..100 {
        if let Some(pid) = control.pid() {
            let start = super::orphans::start_time(pid);
            container.update(|record| {
                if record.state.running() {
                    record.state.pid = pid;
                    record.state.process_start = start;
                }
            });
            return;
        }
        // A process that exits within milliseconds may never be seen.
        if !container.record().state.running() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!(container = %&container.id[..12], "main process pid not known after 2 s");
}
