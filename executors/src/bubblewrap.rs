//! The `bubblewrap` executor: runs image processes with `bwrap` in new
//! user, mount, PID, IPC and UTS namespaces, and in the network namespace
//! the server made for the container, if any. When sidewhale is uid 0 of
//! its user namespace, the container's user namespace maps every id (see
//! `userns`). Otherwise bwrap maps the image user alone, which needs no
//! privileges where the kernel allows unprivileged user namespaces.
//!
//! Process layout (bwrap 0.8.0, without `--as-pid-1`): sidewhale spawns
//! bwrap, whose child is pid 1 of the new PID namespace and reaps zombies.
//! That init forks the image's process, pid 2. `--as-pid-1` would make the
//! image's process pid 1, as under Docker, but then nothing would reap the
//! orphans of daemons. The kernel would also drop every signal that pid 1
//! has no handler for, so `docker stop` of a plain program would always
//! wait for the SIGKILL. The layout is that of `docker run --init`.
//!
//! Signals go to the image's process. When it exits, bwrap's init exits
//! with its status, and the kernel kills every process left in the
//! namespace. bwrap exits with the code, or 128 plus the signal number.
//!
//! bwrap cannot join an existing sandbox, so `exec` runs `nsenter` from
//! util-linux against bwrap's init: it enters all five namespaces, takes
//! the init's root directory (the container's `/`), changes to the working
//! dir inside it, and forks so that the program is a member of the PID
//! namespace. The program then shares everything with the main process,
//! as `docker exec` does; a second bwrap could only build look-alike
//! namespaces.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sidewhale_core::{ContainerSpec, Executor, ExecutorError, Probe, Process, ProcessSpec};
use tokio::process::{Child, Command};

use crate::control::{watch_exit, ChildControl, Scope, Tracee};
use crate::launch::{
    check_process, create_mount_points, join_network, run_with_timeout,
    CheckedProcess,
};
use crate::procfs::{LinuxProcessTable, ProcessTable};
use crate::registry::Registry;
use crate::rootfs::RootfsView;
use crate::spawn::{spawn_command, Spawned};
use crate::userns::{can_map_every_id, ContainerUserNamespace};

/// How long `start` waits for bwrap to fork the image's process.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the bubblewrap executor.
#[derive(Clone, Debug, Default)]
pub struct BubblewrapOptions {
    /// The bwrap binary. `None` looks for `bwrap` on the `PATH` of the
    /// sidewhale process.
    pub bwrap_path: Option<PathBuf>,
    /// The nsenter binary used by `exec`. `None` looks for `nsenter` on
    /// the `PATH` of the sidewhale process.
    pub nsenter_path: Option<PathBuf>,
}

/// The namespaces of a running container, as `exec` needs them.
#[derive(Clone, Copy, Debug)]
struct Sandbox {
    /// Host pid of bwrap's init, pid 1 of the container.
    init_pid: i32,
    /// The main process's user. Without `every_id_mapped` these are the
    /// only ids the container's user namespace maps, so the only ones an
    /// exec can run as.
    uid: u32,
    gid: u32,
    every_id_mapped: bool,
}

/// Runs container processes with bubblewrap.
pub struct BubblewrapExecutor {
    bwrap: PathBuf,
    nsenter: PathBuf,
    table: Arc<dyn ProcessTable>,
    registry: Registry,
    sandboxes: Arc<Mutex<HashMap<String, Sandbox>>>,
    /// Whether containers get user namespaces that map every id of
    /// sidewhale's own (see `userns`), rather than the single id bwrap's
    /// `--unshare-user` maps. Set when sidewhale is uid 0 of its user
    /// namespace; `probe` clears it when such namespaces fail here.
    every_id_mapped: AtomicBool,
}

impl BubblewrapExecutor {
    pub fn new(options: BubblewrapOptions) -> Self {
        let bwrap = options
            .bwrap_path
            .or_else(|| sidewhale_netns::find_on_path("bwrap"))
            .unwrap_or_else(|| PathBuf::from("bwrap"));
        let nsenter = options
            .nsenter_path
            .or_else(|| sidewhale_netns::find_on_path("nsenter"))
            .unwrap_or_else(|| PathBuf::from("nsenter"));

        BubblewrapExecutor {
            bwrap,
            nsenter,
            table: Arc::new(LinuxProcessTable::default()),
            registry: Registry::default(),
            sandboxes: Arc::new(Mutex::new(HashMap::new())),
            every_id_mapped: AtomicBool::new(can_map_every_id()),
        }
    }

    /// Returns whether containers get user namespaces that map every id.
    fn maps_every_id(&self) -> bool {
        self.every_id_mapped.load(Ordering::Relaxed)
    }

    /// Creates the user namespaces of a sandbox whose main process runs
    /// as `uid`, or returns `None` when bwrap maps a single id.
    async fn create_user_namespace(
        &self,
        uid: u32,
    ) -> Result<Option<ContainerUserNamespace>, ExecutorError> {
        if !self.maps_every_id() {
            return Ok(None);
        }
        let created = tokio::task::spawn_blocking(move || ContainerUserNamespace::create(uid))
            .await
            .map_err(|error| ExecutorError::Other(format!("user namespace task failed: {error}")))?
            .map_err(|error| ExecutorError::io("create the container's user namespaces", error))?;
        Ok(Some(created))
    }

    /// Checks that bwrap can run in namespaces made by
    /// `ContainerUserNamespace`, as a user other than root.
    async fn probe_every_id_mapped(&self, true_path: &Path) -> Result<(), String> {
        const NOBODY: u32 = 65534;
        let namespace = self
            .create_user_namespace(NOBODY)
            .await
            .map_err(|error| error.to_string())?
            .ok_or("sidewhale is not uid 0 of its user namespace")?;

        let mut command = Command::new(&self.bwrap);
        command
            .arg("--userns")
            .arg(namespace.inner.as_raw_fd().to_string())
            .args(SHARED_NAMESPACE_ARGS)
            .args(PROBE_MOUNT_ARGS)
            .args(["--uid", "65534", "--gid", "65534", "--"])
            .arg(true_path);
        let credentials = Credentials {
            outer_user_namespace: Some(namespace.outer.as_raw_fd()),
            inherited_fd: Some(namespace.inner.as_raw_fd()),
            groups: vec![NOBODY],
            gid: NOBODY,
            uid: Some(NOBODY),
        };
        // SAFETY: `Credentials::apply` only makes async-signal-safe system
        // calls on fds and memory prepared before the fork.
        unsafe {
            command.pre_exec(move || credentials.apply());
        }
        run_with_timeout(&mut command)
            .await
            .map_err(|error| error.to_string())
    }

    fn sandboxes(&self) -> MutexGuard<'_, HashMap<String, Sandbox>> {
        self.sandboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches a spawned bwrap or nsenter whose grandchild (bwrap) or
    /// child (nsenter) is the image's process, and returns the process.
    /// `child_pid` is taken before any `try_wait`, which may reap the
    /// child and forget its pid.
    fn finish_launch(
        &self,
        container: &ContainerSpec,
        spawned: Spawned,
        child_pid: i32,
        tracee: Tracee,
        is_main: bool,
    ) -> Result<Process, ExecutorError> {
        let Spawned {
            child,
            stdin,
            stdout,
            stderr,
            pty_master,
        } = spawned;

        let control = Arc::new(ChildControl::new(
            &container.id,
            self.table.clone(),
            Scope::Descendants,
            child_pid,
            tracee,
            pty_master,
        ));
        self.registry.register(&container.id, &control);

        let sandboxes = self.sandboxes.clone();
        let container_id = container.id.clone();
        let on_exit = self.registry.on_exit(&container.id, is_main);
        let exit = watch_exit(child, control.clone(), move |status| {
            if is_main {
                sandboxes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&container_id);
            }
            on_exit(status);
        });

        Ok(Process {
            stdin,
            stdout,
            stderr,
            control,
            exit,
        })
    }

    /// Waits until `child` has a child and returns its pid, or `None` when
    /// `child` exited first or the time ran out.
    async fn wait_for_child(&self, child: &mut Child, parent: i32) -> Option<i32> {
        let deadline = Instant::now() + START_TIMEOUT;

        while Instant::now() < deadline {
            if let Ok(children) = self.table.children(parent) {
                if let Some(pid) = children.first() {
                    return Some(*pid);
                }
            }
            if !matches!(child.try_wait(), Ok(None)) || !self.table.is_running(parent) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }

        tracing::warn!(parent, "bwrap did not start its process in time");
        None
    }
}

#[async_trait]
impl Executor for BubblewrapExecutor {
    fn name(&self) -> &str {
        "bubblewrap"
    }

    async fn probe(&self) -> Probe {
        let bwrap = self.bwrap.display().to_string();

        if let Err(error) = run_with_timeout(Command::new(&self.bwrap).arg("--version")).await {
            return Probe::Unavailable(format!(
                "cannot run {bwrap} ({error}): install bubblewrap \
                 (apt-get install bubblewrap) or set the path of the bwrap binary"
            ));
        }
        if let Err(error) = run_with_timeout(Command::new(&self.nsenter).arg("--version")).await {
            return Probe::Unavailable(format!(
                "cannot run {} ({error}), which exec needs: install util-linux \
                 (apt-get install util-linux)",
                self.nsenter.display()
            ));
        }

        // The host's own root as a read-only sandbox, with every namespace
        // that containers get.
        let Some(true_path) = sidewhale_netns::find_on_path("true") else {
            return Probe::Available;
        };
        if self.maps_every_id() {
            match self.probe_every_id_mapped(&true_path).await {
                Ok(()) => return Probe::Available,
                Err(reason) => {
                    tracing::warn!(
                        %reason,
                        "bwrap cannot run in user namespaces that map every id: \
                         containers map only their main process's user, so images \
                         that switch users fail"
                    );
                    self.every_id_mapped.store(false, Ordering::Relaxed);
                }
            }
        }
        let mut command = Command::new(&self.bwrap);
        command
            .arg("--unshare-user")
            .args(SHARED_NAMESPACE_ARGS)
            .args(PROBE_MOUNT_ARGS)
            .arg("--")
            .arg(&true_path);
        match run_with_timeout(&mut command).await {
            Ok(()) => Probe::Available,
            Err(error) => Probe::Unavailable(format!(
                "{bwrap} cannot create namespaces ({error}): {}",
                user_namespace_hint()
            )),
        }
    }

    fn supports_network_namespace(&self) -> bool {
        true
    }

    async fn start(&self, container: &ContainerSpec) -> Result<Process, ExecutorError> {
        let view = RootfsView::new(&container.rootfs, &mount_binds(container));
        let checked = check_process(&view, &container.process)?;
        create_mount_points(container, &[]);
        let user_namespace = self.create_user_namespace(checked.user.uid).await?;
        let inner_fd = user_namespace.as_ref().map(|ns| ns.inner.as_raw_fd());
        let args = bwrap_args(container, &view, &checked, inner_fd)?;

        let mut command = Command::new(&self.bwrap);
        command
            .args(args)
            .env_clear()
            .envs(checked.env.iter().map(|(key, value)| (key, value)))
            .current_dir("/");
        join_network(&mut command, container)?;
        if let Some(namespace) = &user_namespace {
            let credentials = Credentials {
                outer_user_namespace: Some(namespace.outer.as_raw_fd()),
                inherited_fd: Some(namespace.inner.as_raw_fd()),
                groups: checked.groups.clone(),
                gid: checked.user.gid,
                uid: Some(checked.user.uid),
            };
            // SAFETY: `Credentials::apply` only makes async-signal-safe
            // system calls on fds and memory prepared before the fork.
            unsafe {
                command.pre_exec(move || credentials.apply());
            }
        }
        let bwrap = self.bwrap.clone();
        let mut spawned = spawn_command(
            command,
            container.process.tty,
            container.process.console_size,
            container.process.open_stdin,
            &|error| missing_binary_error(&bwrap, "bubblewrap", error),
        )?;
        // bwrap has joined the namespaces, which now live as long as the
        // sandbox does.
        drop(user_namespace);

        let bwrap_pid = child_pid(&spawned.child)?;
        let init = self.wait_for_child(&mut spawned.child, bwrap_pid).await;
        let tracee = match init {
            Some(init) => self.wait_for_child(&mut spawned.child, init).await,
            None => None,
        };
        tracing::info!(
            container = %container.id,
            bwrap_pid,
            init_pid = ?init,
            pid = ?tracee,
            argv = ?checked.argv,
            uid = checked.user.uid,
            gid = checked.user.gid,
            every_id_mapped = inner_fd.is_some(),
            network_namespace = container.network.is_some(),
            tty = container.process.tty,
            "spawned bwrap"
        );

        if let Some(init_pid) = init {
            self.sandboxes().insert(
                container.id.clone(),
                Sandbox {
                    init_pid,
                    uid: checked.user.uid,
                    gid: checked.user.gid,
                    every_id_mapped: inner_fd.is_some(),
                },
            );
        }
        let tracee = tracee.map_or(Tracee::Exited, Tracee::Started);
        self.finish_launch(container, spawned, bwrap_pid, tracee, true)
    }

    async fn exec(
        &self,
        container: &ContainerSpec,
        process: &ProcessSpec,
    ) -> Result<Process, ExecutorError> {
        let Some(sandbox) = self.sandboxes().get(&container.id).copied() else {
            return Err(ExecutorError::Other(format!(
                "container {} is not running",
                container.id
            )));
        };

        let view = RootfsView::new(&container.rootfs, &mount_binds(container));
        let checked = check_process(&view, process)?;
        let other_user = checked.user.uid != sandbox.uid || checked.user.gid != sandbox.gid;
        if other_user && !sandbox.every_id_mapped {
            return Err(ExecutorError::Other(format!(
                "bubblewrap maps only the main process's user ({}:{}) into the \
                 container when sidewhale is not root, so exec cannot run as \
                 {}:{}; run sidewhale as root, or use the proot executor for \
                 images that switch users",
                sandbox.uid, sandbox.gid, checked.user.uid, checked.user.gid
            )));
        }

        let switch_user = sandbox.every_id_mapped.then_some(checked.user.uid);
        let mut command = Command::new(&self.nsenter);
        command
            .args(nsenter_args(sandbox.init_pid, &checked, switch_user))
            .env_clear()
            .envs(checked.env.iter().map(|(key, value)| (key, value)))
            .current_dir("/");
        join_network(&mut command, container)?;
        if sandbox.every_id_mapped {
            // sidewhale's uid 0 has every capability in the container's
            // user namespace, so nsenter joins it as root and switches to
            // the user last.
            let credentials = Credentials {
                outer_user_namespace: None,
                inherited_fd: None,
                groups: checked.groups.clone(),
                gid: checked.user.gid,
                uid: None,
            };
            // SAFETY: `Credentials::apply` only makes async-signal-safe
            // system calls on memory prepared before the fork.
            unsafe {
                command.pre_exec(move || credentials.apply());
            }
        }
        let nsenter = self.nsenter.clone();
        let mut spawned = spawn_command(command, process.tty, process.console_size, process.open_stdin, &|error| {
            missing_binary_error(&nsenter, "util-linux", error)
        })?;

        let nsenter_pid = child_pid(&spawned.child)?;
        let tracee = self.wait_for_child(&mut spawned.child, nsenter_pid).await;
        tracing::info!(
            container = %container.id,
            nsenter_pid,
            pid = ?tracee,
            argv = ?checked.argv,
            tty = process.tty,
            "spawned exec with nsenter"
        );

        let tracee = tracee.map_or(Tracee::Exited, Tracee::Started);
        self.finish_launch(container, spawned, nsenter_pid, tracee, false)
    }

    async fn cleanup(&self, container: &ContainerSpec) -> Result<(), ExecutorError> {
        self.registry.kill_and_remove(&container.id);
        self.sandboxes().remove(&container.id);
        Ok(())
    }
}

/// The namespaces bwrap creates for every container, besides the user
/// namespace. The network namespace is the one the server made for the
/// container, or the host's.
const SHARED_NAMESPACE_ARGS: [&str; 3] = ["--unshare-pid", "--unshare-ipc", "--unshare-uts"];

/// The host's own root as a read-only sandbox, for `probe`.
const PROBE_MOUNT_ARGS: [&str; 7] = ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"];

/// The credentials a process takes between fork and exec when the
/// container's user namespace maps every id.
struct Credentials {
    /// The outer namespace of `ContainerUserNamespace`, joined first so
    /// that bwrap, as the inner namespace's owner, can join that one.
    outer_user_namespace: Option<RawFd>,
    /// A descriptor the program must inherit: the inner namespace, whose
    /// number is bwrap's `--userns` argument.
    inherited_fd: Option<RawFd>,
    groups: Vec<libc::gid_t>,
    gid: libc::gid_t,
    /// The uid to switch to, after the groups. `None` stays uid 0.
    uid: Option<libc::uid_t>,
}

impl Credentials {
    /// Applies the credentials to the calling process. Only makes
    /// async-signal-safe system calls, so it may run in `pre_exec`.
    fn apply(&self) -> std::io::Result<()> {
        let check = |result: libc::c_int| {
            if result < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: every call gets descriptors and memory prepared before
        // the fork.
        unsafe {
            if let Some(namespace) = self.outer_user_namespace {
                check(libc::setns(namespace, libc::CLONE_NEWUSER))?;
            }
            check(libc::setgroups(self.groups.len(), self.groups.as_ptr()))?;
            check(libc::setresgid(self.gid, self.gid, self.gid))?;
            if let Some(uid) = self.uid {
                check(libc::setresuid(uid, uid, uid))?;
            }
            if let Some(fd) = self.inherited_fd {
                check(libc::fcntl(fd, libc::F_SETFD, 0))?;
            }
        }
        Ok(())
    }
}

/// Returns the server's mounts as `(host source, guest destination)`
/// pairs for a `RootfsView`.
fn mount_binds(container: &ContainerSpec) -> Vec<(PathBuf, String)> {
    container
        .mounts
        .iter()
        .map(|mount| (mount.source.clone(), mount.destination.clone()))
        .collect()
}

/// Returns bwrap's arguments for the main process of `container`.
/// `user_namespace` is the descriptor of a user namespace to join; `None`
/// makes bwrap create one that maps the main process's user alone.
///
/// NOTE: bwrap 0.8.0 always sets `PWD` to the working dir, so the
/// environment contains `PWD` even when the image does not set it.
fn bwrap_args(
    container: &ContainerSpec,
    view: &RootfsView,
    checked: &CheckedProcess,
    user_namespace: Option<RawFd>,
) -> Result<Vec<OsString>, ExecutorError> {
    let mut args: Vec<OsString> = match user_namespace {
        Some(fd) => vec!["--userns".into(), fd.to_string().into()],
        None => vec!["--unshare-user".into()],
    };
    args.extend(SHARED_NAMESPACE_ARGS.iter().map(OsString::from));
    args.extend(["--die-with-parent".into()]);
    if !container.process.tty {
        // A new session keeps the process from injecting input into a
        // terminal (TIOCSTI). With a TTY the process needs the session
        // that owns its terminal.
        args.push("--new-session".into());
    }

    args.extend([
        "--bind".into(),
        container.rootfs.clone().into_os_string(),
        "/".into(),
    ]);
    args.extend(["--proc".into(), "/proc".into()]);
    args.extend(["--dev".into(), "/dev".into()]);
    args.extend(["--ro-bind-try".into(), "/sys".into(), "/sys".into()]);

    for mount in &container.mounts {
        // The destination is resolved inside the rootfs first, so that a
        // symlink in the image (such as /etc/resolv.conf pointing into
        // /run) leads where the process would find it.
        let destination = view.resolve(&mount.destination, "/")?.guest;
        let option = if mount.read_only {
            "--ro-bind"
        } else {
            "--bind"
        };
        args.extend([
            option.into(),
            mount.source.clone().into_os_string(),
            destination.into(),
        ]);
    }

    args.extend(["--hostname".into(), container.hostname.clone().into()]);
    args.extend(["--chdir".into(), checked.working_dir.clone().into()]);
    args.extend(["--uid".into(), checked.user.uid.to_string().into()]);
    args.extend(["--gid".into(), checked.user.gid.to_string().into()]);
    args.push("--".into());
    args.extend(checked.argv.iter().map(OsString::from));
    Ok(args)
}

/// Returns nsenter's arguments for an exec in the sandbox of `init_pid`.
/// `--root` without a value takes the init's root, the container's `/`,
/// and `--wdns` is resolved inside it. `--preserve-credentials` keeps the
/// groups and gid set before nsenter runs, and the uid unless
/// `switch_user` names one. Without it, the host ids stay, which a
/// single-id user namespace maps to the main process's user.
fn nsenter_args(
    init_pid: i32,
    checked: &CheckedProcess,
    switch_user: Option<u32>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--target".into(),
        init_pid.to_string().into(),
        "--user".into(),
        "--mount".into(),
        "--pid".into(),
        "--ipc".into(),
        "--uts".into(),
        "--preserve-credentials".into(),
    ];
    if let Some(uid) = switch_user {
        // nsenter 2.38.1 calls setuid alone for --setuid without
        // --setgid, after joining the namespaces.
        args.extend(["--setuid".into(), uid.to_string().into()]);
    }
    args.extend([
        "--root".into(),
        // nsenter 2.38.1 takes the value of --wdns only after `=`.
        format!("--wdns={}", checked.working_dir).into(),
        "--".into(),
    ]);
    args.extend(checked.argv.iter().map(OsString::from));
    args
}

/// Explains why user namespaces may be unavailable, from the sysctls that
/// control them.
fn user_namespace_hint() -> String {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .map(|value| value.trim().to_string())
    };

    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return "unprivileged user namespaces are disabled: set the sysctl \
                kernel.unprivileged_userns_clone=1, or run sidewhale as root"
            .into();
    }
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return "user namespaces are disabled: set the sysctl \
                user.max_user_namespaces to a positive number such as 15000"
            .into();
    }
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        return "AppArmor restricts unprivileged user namespaces: set the sysctl \
                kernel.apparmor_restrict_unprivileged_userns=0, or give bwrap an \
                AppArmor profile that allows userns"
            .into();
    }
    "user namespaces may be blocked by a seccomp profile or a container \
     runtime; run sidewhale where unshare(CLONE_NEWUSER) is allowed, or use \
     the proot executor"
        .into()
}

fn missing_binary_error(binary: &Path, package: &str, error: std::io::Error) -> ExecutorError {
    if error.kind() == std::io::ErrorKind::NotFound {
        return ExecutorError::Unavailable {
            executor: "bubblewrap".into(),
            reason: format!(
                "{} not found: install {package} (apt-get install {package})",
                binary.display()
            ),
        };
    }
    ExecutorError::io(format!("run {}", binary.display()), error)
}

fn child_pid(child: &Child) -> Result<i32, ExecutorError> {
    child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .ok_or_else(|| ExecutorError::Other("the process exited before its pid was known".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user::ResolvedUser;
    use sidewhale_core::Mount;

    fn container() -> ContainerSpec {
        ContainerSpec {
            id: "c1".into(),
            rootfs: "/nonexistent/rootfs".into(),
            runtime_dir: "/nonexistent/run".into(),
            hostname: "c1host".into(),
            process: ProcessSpec::default(),
            mounts: vec![
                Mount {
                    source: "/state/hosts".into(),
                    destination: "/etc/hosts".into(),
                    read_only: false,
                },
                Mount {
                    source: "/data".into(),
                    destination: "/srv".into(),
                    read_only: true,
                },
            ],
            network: None,
            port_relocation: None,
        }
    }

    fn checked() -> CheckedProcess {
        CheckedProcess {
            working_dir: "/app".into(),
            user: ResolvedUser {
                uid: 1000,
                gid: 50,
                home: "/".into(),
            },
            groups: vec![50],
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec![],
        }
    }

    fn joined(args: Vec<OsString>) -> String {
        args.iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn bwrap_args_cover_the_container() {
        let container = container();
        let view = RootfsView::new(&container.rootfs, &mount_binds(&container));

        let args = joined(bwrap_args(&container, &view, &checked(), None).unwrap());

        assert!(args.starts_with("--unshare-user --unshare-pid --unshare-ipc --unshare-uts "));
        assert!(!args.contains("--unshare-net"), "{args}");
        assert!(args.contains(" --new-session "), "{args}");
        assert!(args.contains(" --bind /nonexistent/rootfs / "), "{args}");
        assert!(args.contains(" --bind /state/hosts /etc/hosts "), "{args}");
        assert!(args.contains(" --ro-bind /data /srv "), "{args}");
        assert!(args.contains(" --hostname c1host --chdir /app --uid 1000 --gid 50 "));
        assert!(args.ends_with(" -- sh -c echo hi"), "{args}");
    }

    #[test]
    fn tty_keeps_the_session() {
        let mut container = container();
        container.process.tty = true;
        let view = RootfsView::new(&container.rootfs, &[]);

        let args = joined(bwrap_args(&container, &view, &checked(), None).unwrap());

        assert!(!args.contains("--new-session"), "{args}");
    }

    #[test]
    fn bwrap_args_join_given_user_namespace() {
        let container = container();
        let view = RootfsView::new(&container.rootfs, &[]);

        let args = joined(bwrap_args(&container, &view, &checked(), Some(7)).unwrap());

        assert!(args.starts_with("--userns 7 --unshare-pid --unshare-ipc --unshare-uts "));
        assert!(!args.contains("--unshare-user"), "{args}");
        assert!(args.contains(" --uid 1000 --gid 50 "), "{args}");
    }

    #[test]
    fn nsenter_args_enter_every_namespace() {
        let args = joined(nsenter_args(42, &checked(), None));

        assert_eq!(
            args,
            "--target 42 --user --mount --pid --ipc --uts --preserve-credentials \
             --root --wdns=/app -- sh -c echo hi"
        );
    }

    #[test]
    fn nsenter_args_switch_user_last() {
        let args = joined(nsenter_args(42, &checked(), Some(1000)));

        assert!(
            args.contains(" --preserve-credentials --setuid 1000 --root "),
            "{args}"
        );
    }
}
