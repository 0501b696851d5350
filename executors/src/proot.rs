//! The `proot` executor: runs image processes under proot, which emulates
//! `chroot`, bind mounts and user ids with ptrace and needs no privileges.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sidewhale_core::{
    ContainerSpec, Executor, ExecutorError, ExitStatus, Probe, Process, ProcessSpec,
};
use tokio::process::{Child, Command};

use crate::control::{watch_exit, ChildControl, Scope, Tracee};
use crate::launch::{check_process, create_mount_points, run_with_timeout};
use crate::procfs::{container_processes, LinuxProcessTable, ProcessTable};
use crate::rootfs::RootfsView;
use crate::spawn::{spawn, LaunchSpec};

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
    processes: Arc<Mutex<HashMap<String, Vec<Arc<ChildControl>>>>>,
}

impl ProotExecutor {
    pub fn new(options: ProotOptions) -> Self {
        let proot = options
            .proot_path
            .or_else(|| sidewhale_netns::find_on_path("proot"))
            .unwrap_or_else(|| PathBuf::from("proot"));

        ProotExecutor {
            proot,
            table: Arc::new(LinuxProcessTable::default()),
            processes: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Returns the path of the proot binary this executor runs.
    pub fn proot_path(&self) -> &Path {
        &self.proot
    }

    fn registry(&self) -> MutexGuard<'_, HashMap<String, Vec<Arc<ChildControl>>>> {
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

        let mut spawned = spawn(&launch, container.network.as_ref(), &container.id)?;
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
        let control = Arc::new(ChildControl::new(
            &container.id,
            self.table.clone(),
            Scope::Traced,
            proot_pid,
            tracee,
            spawned.pty_master.take(),
        ));
        self.register(&container.id, &control);

        let exit = watch_exit(
            spawned.child,
            control.clone(),
            self.on_exit(container, is_main),
        );

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
        let checked = check_process(&view, process)?;

        create_mount_points(container, &host_binds());
        warn_on_long_rootfs(container);

        Ok(LaunchSpec {
            proot: self.proot.clone(),
            rootfs: container.rootfs.clone(),
            binds,
            working_dir: checked.working_dir,
            user: checked.user,
            groups: checked.groups,
            argv: checked.argv,
            env: checked.env,
            tty: process.tty,
            console_size: process.console_size,
            open_stdin: process.open_stdin,
            relocation: container.port_relocation.clone(),
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

    fn register(&self, container_id: &str, control: &Arc<ChildControl>) {
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
        let Some(true_path) = sidewhale_netns::find_on_path("true") else {
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

    fn supports_network_namespace(&self) -> bool {
        true
    }

    fn supports_port_relocation(&self) -> bool {
        crate::relocation::available()
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
    processes: &Mutex<HashMap<String, Vec<Arc<ChildControl>>>>,
) -> MutexGuard<'_, HashMap<String, Vec<Arc<ChildControl>>>> {
    processes.lock().unwrap_or_else(PoisonError::into_inner)
}

fn kill_controls(container_id: &str, controls: &[Arc<ChildControl>]) {
    use sidewhale_core::ProcessControl;

    for control in controls.iter().filter(|c| !c.has_exited()) {
        if let Err(error) = control.kill_all() {
            tracing::warn!(
                container = %container_id,
                proot_pid = control.child_pid(),
                %error,
                "failed to kill a container process"
            );
        }
    }
}

fn host_binds() -> Vec<(PathBuf, String)> {
    HOST_BINDS
        .iter()
        .map(|path| (PathBuf::from(path), path.to_string()))
        .collect()
}

/// Returns the binds of a container: the host's `/proc`, `/dev` and
/// `/sys`, then the server's mounts. proot picks the bind with the
/// longest matching guest path, so `/dev/shm` wins over `/dev`.
fn container_binds(container: &ContainerSpec) -> Result<Vec<(PathBuf, String)>, ExecutorError> {
    let mut binds = host_binds();

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

fn child_pid(child: &Child) -> Result<i32, ExecutorError> {
    child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .ok_or_else(|| ExecutorError::Other("proot exited before its pid was known".into()))
}
