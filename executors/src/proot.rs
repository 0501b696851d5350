//! The `proot` executor: runs image processes under proot, which emulates
//! `chroot`, bind mounts and user ids with ptrace and needs no privileges.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sidewhale_core::{
    ContainerSpec, ExecutorError, Executor, ExitStatus, Probe, Process, ProcessSpec,
};
use tokio::process::{Child, Command};

use crate::control::{watch_exit, ProotControl, Tracee};
use crate::procfs::{container_processes, LinuxProcessTable, ProcessTable};
use crate::rootfs::{RootfsView, DEFAULT_PATH};
use crate::spawn::{spawn, LaunchSpec};
use crate::user::{resolve_user, ResolvedUser};

/// Host paths bound at the same path in every container.
const HOST_BINDS: [&str; 3] = ["/proc", "/dev", "/sys"];

/// How long `start` waits for proot to fork the image's process.
const TRACEE_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Unix socket paths hold at most 107 bytes plus a NUL. proot moves a
/// socket whose host path is longer to /tmp, where other proot instances
/// (execs) cannot find it. This leaves room for postgres's
/// `/var/run/postgresql/.s.PGSQL.5432` (33 bytes).
const MAX_ROOTFS_PATH_FOR_SOCKETS: usize = 107 - 33;

/// Settings of the proot executor.
#[derive(Clone, Debug, Default)]
pub struct ProotOptions {
    /// The proot binary. `None` looks for `proot` on the `PATH` of the
    /// sidewhale process.
    pub proot_path: Option<PathBuf>,
}

/// Runs container processes under proot. Works as an unprivileged user.
pub struct ProotExecutor {
    proot: PathBuf,
    table: Arc<dyn ProcessTable>,
    /// Live proot processes by container id: the main process and execs.
    processes: Arc<Mutex<HashMap<String, Vec<Arc<ProotControl>>>>>,
}

impl ProotExecutor {
    pub fn new(options: ProotOptions) -> Self {
        let proot = options
            .proot_path
            .or_else(|| find_on_host_path("proot"))
            .unwrap_or_else(|| PathBuf::from("proot"));

        ProotExecutor {
            proot,
            table: Arc::new(LinuxProcessTable::default()),
            processes: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The proot binary this executor runs.
    pub fn proot_path(&self) -> &Path {
        &self.proot
    }

    fn registry(&self) -> MutexGuard<'_, HashMap<String, Vec<Arc<ProotControl>>>> {
        lock_registry(&self.processes)
    }

    /// Validates `process`, spawns proot for it and starts watching it.
    async fn launch(
        &self,
        container: &ContainerSpec,
        process: &ProcessSpec,
        is_main: bool,
    ) -> Result<Process, ExecutorError> {
        let launch = self.prepare_launch(container, process)?;

        let mut spawned = spawn(&launch)?;
        let proot_pid = child_pid(&spawned.child)?;
        tracing::info!(
            container = %container.id,
            proot_pid,
            argv = ?process.argv,
            user = %process.user,
            uid = launch.user.uid,
            gid = launch.user.gid,
            tty = process.tty,
            exec = !is_main,
            "spawned proot"
        );

        let tracee = self.wait_for_tracee(&mut spawned.child, proot_pid).await;
        let control = Arc::new(ProotControl::new(
            &container.id,
            self.table.clone(),
            proot_pid,
            tracee,
            spawned.pty_master.take(),
        ));
        self.register(&container.id, &control);

        let exit = watch_exit(spawned.child, control.clone(), self.on_exit(container, is_main));

        Ok(Process {
            stdin: spawned.stdin,
            stdout: spawned.stdout,
            stderr: spawned.stderr,
            control,
            exit,
        })
    }

    /// Checks what Docker checks before running a process and builds the
    /// proot invocation.
    fn prepare_launch(
        &self,
        container: &ContainerSpec,
        process: &ProcessSpec,
    ) -> Result<LaunchSpec, ExecutorError> {
        let binds = container_binds(container)?;
        let view = RootfsView::new(&container.rootfs, &binds);

        let working_dir = match process.working_dir.as_str() {
            "" => "/".to_string(),
            dir => dir.to_string(),
        };
        view.ensure_working_dir(&working_dir)?;

        let passwd = view.read_to_string("/etc/passwd")?;
        let group = view.read_to_string("/etc/group")?;
        let user = resolve_user(&process.user, passwd.as_deref(), group.as_deref())?;

        let env = process_env(&process.env, &user);
        let search_path = env
            .iter()
            .find(|(key, _)| key == "PATH")
            .map_or(DEFAULT_PATH, |(_, value)| value.as_str());
        let Some(argv0) = process.argv.first() else {
            return Err(ExecutorError::Other("no command specified".into()));
        };
        view.find_executable(argv0, search_path, &working_dir)?;

        create_mount_points(container);
        warn_on_long_rootfs(container);

        Ok(LaunchSpec {
            proot: self.proot.clone(),
            rootfs: container.rootfs.clone(),
            binds,
            working_dir,
            user,
            argv: process.argv.clone(),
            env,
            tty: process.tty,
            open_stdin: process.open_stdin,
        })
    }

    /// Waits until proot has forked the image's process and returns its
    /// pid. A main process that exits within microseconds may already be
    /// reaped by proot when we look; leftover tracees then show it is gone.
    async fn wait_for_tracee(&self, child: &mut Child, proot_pid: i32) -> Tracee {
        let deadline = Instant::now() + TRACEE_START_TIMEOUT;

        while Instant::now() < deadline {
            // Scan before reading the children: a tracee seen first means
            // the first child was forked, so no child afterwards means it
            // has exited.
            let tracees = container_processes(self.table.as_ref(), proot_pid);
            if let Ok(children) = self.table.children(proot_pid) {
                if let Some(pid) = children.first() {
                    return Tracee::Started(*pid);
                }
            }
            if tracees.is_ok_and(|pids| !pids.is_empty()) {
                return Tracee::Exited;
            }
            if !matches!(child.try_wait(), Ok(None)) {
                return Tracee::Exited;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }

        tracing::warn!(proot_pid, "proot did not start its process in time");
        Tracee::Exited
    }

    fn register(&self, container_id: &str, control: &Arc<ProotControl>) {
        let mut registry = self.registry();
        let controls = registry.entry(container_id.to_string()).or_default();
        controls.retain(|control| !control.has_exited());
        controls.push(control.clone());
    }

    /// Returns what runs when a main process has been reaped: stopping the
    /// container's execs, as Docker does when a container stops.
    fn on_exit(&self, container: &ContainerSpec, is_main: bool) -> impl FnOnce(ExitStatus) {
        let processes = self.processes.clone();
        let container_id = container.id.clone();

        move |_status| {
            if !is_main {
                return;
            }
            let controls = lock_registry(&processes)
                .get(&container_id)
                .cloned()
                .unwrap_or_default();
            kill_controls(&container_id, &controls);
        }
    }
}

#[async_trait]
impl Executor for ProotExecutor {
    fn name(&self) -> &str {
        "proot"
    }

    async fn probe(&self) -> Probe {
        let proot = self.proot.display().to_string();

        let version = run_with_timeout(Command::new(&self.proot).arg("--version")).await;
        if let Err(error) = version {
            return Probe::Unavailable(format!(
                "cannot run {proot} ({error}): install proot (apt-get install proot) \
                 or set the path of the proot binary"
            ));
        }

        // Run a host program with the host as rootfs: this fails where
        // ptrace is forbidden (seccomp profiles, kernel.yama.ptrace_scope=3).
        let Some(true_path) = find_on_host_path("true") else {
            return Probe::Available;
        };
        let mut command = Command::new(&self.proot);
        command.args(["-v", "-1", "-r", "/"]).arg(&true_path);
        match run_with_timeout(&mut command).await {
            Ok(()) => Probe::Available,
            Err(error) => Probe::Unavailable(format!(
                "{proot} cannot trace a process ({error}): allow ptrace for this user, \
                 e.g. run outside a seccomp profile that blocks it or set \
                 kernel.yama.ptrace_scope to 1 or lower"
            )),
        }
    }

    async fn start(&self, container: &ContainerSpec) -> Result<Process, ExecutorError> {
        self.launch(container, &container.process, true).await
    }

    async fn exec(
        &self,
        container: &ContainerSpec,
        process: &ProcessSpec,
    ) -> Result<Process, ExecutorError> {
        self.launch(container, process, false).await
    }

    async fn cleanup(&self, container: &ContainerSpec) -> Result<(), ExecutorError> {
        let controls = self.registry().remove(&container.id).unwrap_or_default();
        kill_controls(&container.id, &controls);
        Ok(())
    }
}

fn lock_registry(
    processes: &Mutex<HashMap<String, Vec<Arc<ProotControl>>>>,
) -> MutexGuard<'_, HashMap<String, Vec<Arc<ProotControl>>>> {
    processes.lock().unwrap_or_else(PoisonError::into_inner)
}

fn kill_controls(container_id: &str, controls: &[Arc<ProotControl>]) {
    use sidewhale_core::ProcessControl;

    for control in controls.iter().filter(|c| !c.has_exited()) {
        if let Err(error) = control.kill_all() {
            tracing::warn!(
                container = %container_id,
                proot_pid = control.proot_pid(),
                %error,
                "failed to kill a container process"
            );
        }
    }
}

/// Returns the binds of a container: the host's `/proc`, `/dev` and
/// `/sys`, then the server's mounts. proot picks the bind with the
/// longest matching guest path, so `/dev/shm` wins over `/dev`.
fn container_binds(container: &ContainerSpec) -> Result<Vec<(PathBuf, String)>, ExecutorError> {
    let mut binds: Vec<(PathBuf, String)> = HOST_BINDS
        .iter()
        .map(|path| (PathBuf::from(path), path.to_string()))
        .collect();

    for mount in &container.mounts {
        // proot splits `-b HOST:GUEST` at the first colon.
        if mount.source.to_string_lossy().contains(':') {
            return Err(ExecutorError::Other(format!(
                "mount source {} contains a colon, which proot cannot bind",
                mount.source.display()
            )));
        }
        if mount.read_only {
            // NOTE: proot has no read-only binds; the process can write
            // through this mount.
            tracing::debug!(
                container = %container.id,
                destination = %mount.destination,
                "read-only mount is bound writable"
            );
        }
        binds.push((mount.source.clone(), mount.destination.clone()));
    }
    Ok(binds)
}

/// Creates missing mount destinations in the rootfs, as Docker does. A
/// failure is not fatal: proot then makes a temporary entry itself.
fn create_mount_points(container: &ContainerSpec) {
    let host_binds: Vec<(PathBuf, String)> = HOST_BINDS
        .iter()
        .map(|path| (PathBuf::from(path), path.to_string()))
        .collect();
    let view = RootfsView::new(&container.rootfs, &host_binds);

    for mount in &container.mounts {
        let is_dir = mount.source.is_dir();
        if let Err(error) = view.ensure_mount_point(&mount.destination, is_dir) {
            tracing::debug!(
                container = %container.id,
                destination = %mount.destination,
                %error,
                "cannot create mount point"
            );
        }
    }
}

fn warn_on_long_rootfs(container: &ContainerSpec) {
    let length = container.rootfs.as_os_str().len();
    if length > MAX_ROOTFS_PATH_FOR_SOCKETS {
        tracing::warn!(
            container = %container.id,
            rootfs = %container.rootfs.display(),
            length,
            max = MAX_ROOTFS_PATH_FOR_SOCKETS,
            "rootfs path is long: Unix sockets created in the container may be \
             unreachable from docker exec"
        );
    }
}

/// Builds the process environment: exactly `env`, plus `PATH` and `HOME`
/// when absent, as Docker does. Entries without `=` are skipped.
fn process_env(env: &[String], user: &ResolvedUser) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for entry in env {
        match entry.split_once('=') {
            Some((key, value)) if !key.is_empty() => {
                pairs.retain(|(existing, _)| existing != key);
                pairs.push((key.to_string(), value.to_string()));
            }
            _ => tracing::debug!(entry = %entry, "skipping environment entry without '='"),
        }
    }

    if !pairs.iter().any(|(key, _)| key == "PATH") {
        pairs.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    if !pairs.iter().any(|(key, _)| key == "HOME") {
        pairs.push(("HOME".into(), user.home.clone()));
    }
    pairs
}

fn child_pid(child: &Child) -> Result<i32, ExecutorError> {
    child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .ok_or_else(|| ExecutorError::Other("proot exited before its pid was known".into()))
}

fn find_on_host_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Runs `command` with no stdin, output captured, and at most 10 seconds.
async fn run_with_timeout(command: &mut Command) -> Result<(), String> {
    command
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);

    let output = tokio::time::timeout(Duration::from_secs(10), command.output())
        .await
        .map_err(|_| "timed out after 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        return Ok(());
    }

    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(format!("{}: {}", output.status, stderr.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> ResolvedUser {
        ResolvedUser {
            uid: 0,
            gid: 0,
            home: "/root".into(),
        }
    }

    #[test]
    fn env_gets_docker_defaults() {
        let env = process_env(&["A=1".into()], &root());

        assert_eq!(
            env,
            vec![
                ("A".to_string(), "1".to_string()),
                ("PATH".to_string(), DEFAULT_PATH.to_string()),
                ("HOME".to_string(), "/root".to_string()),
            ]
        );
    }

    #[test]
    fn env_keeps_given_path_and_home() {
        let env = process_env(&["PATH=/x".into(), "HOME=/h".into(), "NOEQ".into()], &root());

        assert_eq!(
            env,
            vec![
                ("PATH".to_string(), "/x".to_string()),
                ("HOME".to_string(), "/h".to_string()),
            ]
        );
    }
}
