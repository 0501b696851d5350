//! The `chroot` executor: runs image processes with `chroot(2)` in their
//! own mount, UTS and IPC namespaces, and in the network namespace the
//! server made for the container, if any. It needs root (`CAP_SYS_ADMIN`
//! and `CAP_SYS_CHROOT`) and gives no PID namespace, so the container's
//! processes see the host's in `/proc`.
//!
//! The main process sets itself up between fork and exec: a private mount
//! namespace, the rootfs bound onto itself, `proc`, the host's `/dev` and
//! `/sys`, the server's mounts, the hostname, then `chroot`, `chdir` and
//! the drop to the image user. An exec joins the main process's
//! namespaces with `setns(2)` and takes its root directory from
//! `/proc/PID/root`. The mount namespace also identifies the container's
//! processes: `kill_all` kills every process in it, including daemons
//! that left the main process's tree.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use sidewhale_core::{ContainerSpec, Executor, ExecutorError, Probe, Process, ProcessSpec};
use tokio::process::Command;

use crate::control::{watch_exit, ChildControl, Scope, Tracee};
use crate::launch::{
    check_process, create_mount_points, join_network, CheckedProcess,
};
use crate::procfs::{LinuxProcessTable, ProcessTable};
use crate::registry::Registry;
use crate::rootfs::RootfsView;
use crate::spawn::spawn_command;

/// Host directories bound at the same path in every container, after
/// `/proc`, which gets a new `proc` mount.
const HOST_BINDS: [&str; 2] = ["/dev", "/sys"];

/// Runs container processes with `chroot`. Works only as root.
pub struct ChrootExecutor {
    table: Arc<dyn ProcessTable>,
    registry: Registry,
    /// Host pid of each running container's main process.
    mains: Arc<Mutex<HashMap<String, i32>>>,
}

impl Default for ChrootExecutor {
    fn default() -> Self {
        Self::new()
    }
}

impl ChrootExecutor {
    pub fn new() -> Self {
        ChrootExecutor {
            table: Arc::new(LinuxProcessTable::default()),
            registry: Registry::default(),
            mains: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn mains(&self) -> MutexGuard<'_, HashMap<String, i32>> {
        self.mains.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spawns `command`, whose `pre_exec` enters the container, and starts
    /// watching it. `report` is the socket on which a main process sends
    /// a descriptor of its mount namespace. `None` marks an exec.
    fn launch(
        &self,
        container: &ContainerSpec,
        command: Command,
        process: &ProcessSpec,
        checked: &CheckedProcess,
        report: Option<OwnedFd>,
    ) -> Result<Process, ExecutorError> {
        let is_main = report.is_some();
        let argv0 = checked.argv.first().cloned().unwrap_or_default();
        let spawned = spawn_command(command, process.tty, process.console_size, process.open_stdin, &|error| {
            spawn_error(&argv0, error)
        })?;
        let pid = spawned
            .child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .ok_or_else(|| {
                ExecutorError::Other("the process exited before its pid was known".into())
            })?;
        let namespace = report.map(receive_namespace).transpose()?;
        let inode = namespace.as_ref().map(|(inode, _)| *inode);
        // The kernel reuses the inode number of a freed namespace for the
        // next one, of any type. Holding the descriptor until the exit
        // handling below has killed the leftovers keeps another
        // container's namespace from taking the number.
        let pinned_namespace = namespace.map(|(_, descriptor)| descriptor);

        let scope = match inode {
            Some(namespace) => {
                self.mains().insert(container.id.clone(), pid);
                Scope::MountNamespace(namespace)
            }
            None => Scope::Tree,
        };
        tracing::info!(
            container = %container.id,
            pid,
            argv = ?checked.argv,
            uid = checked.user.uid,
            gid = checked.user.gid,
            groups = ?checked.groups,
            tty = process.tty,
            exec = !is_main,
            "spawned chroot process"
        );

        let control = Arc::new(ChildControl::new(
            &container.id,
            self.table.clone(),
            scope,
            pid,
            Tracee::Started(pid),
            spawned.pty_master,
        ));
        self.registry.register(&container.id, &control);

        let mains = self.mains.clone();
        let container_id = container.id.clone();
        let on_exit = self.registry.on_exit(&container.id, is_main);
        let exit = watch_exit(spawned.child, control.clone(), move |status| {
            if is_main {
                mains
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&container_id);
            }
            on_exit(status);
            drop(pinned_namespace);
        });

        Ok(Process {
            stdin: spawned.stdin,
            stdout: spawned.stdout,
            stderr: spawned.stderr,
            control,
            exit,
        })
    }
}

#[async_trait]
impl Executor for ChrootExecutor {
    fn name(&self) -> &str {
        "chroot"
    }

    async fn probe(&self) -> Probe {
        if !nix::unistd::geteuid().is_root() {
            return Probe::Unavailable(
                "the chroot executor requires root: run sidewhale as root, or use \
                 the proot or bubblewrap executor"
                    .into(),
            );
        }

        // Root without CAP_SYS_ADMIN (a container's root, for example)
        // cannot create namespaces, and root of a user namespace (rootless
        // mode) cannot mount proc for the host's PID namespace. Try both
        // with the host's `true`: the proc mount stays in the probe's own
        // mount namespace.
        let Some(true_path) = sidewhale_netns::find_on_path("true") else {
            return Probe::Available;
        };
        let mut command = std::process::Command::new(true_path);
        command.stdin(std::process::Stdio::null());
        // SAFETY: the closure runs between fork and exec and only calls
        // unshare(2) and mount(2), which are async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                check(libc::unshare(
                    libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC,
                ))?;
                make_mounts_private()?;
                check(libc::mount(
                    c"proc".as_ptr(),
                    c"/proc".as_ptr(),
                    c"proc".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                ))
            });
        }
        let result = tokio::task::spawn_blocking(move || command.status()).await;
        match result {
            Ok(Ok(status)) if status.success() => Probe::Available,
            Ok(Ok(status)) => Probe::Unavailable(format!(
                "a test process in a new mount namespace failed ({status})"
            )),
            Ok(Err(error)) => Probe::Unavailable(format!(
                "cannot create a mount namespace with proc mounted in it ({error}): \
                 run sidewhale as root of the host with CAP_SYS_ADMIN and \
                 CAP_SYS_CHROOT, not in rootless mode or an unprivileged container, \
                 or use the proot or bubblewrap executor"
            )),
            Err(error) => Probe::Unavailable(format!("the probe task failed: {error}")),
        }
    }

    fn supports_network_namespace(&self) -> bool {
        true
    }

    async fn start(&self, container: &ContainerSpec) -> Result<Process, ExecutorError> {
        let view = RootfsView::new(&container.rootfs, &view_binds(container));
        let checked = check_process(&view, &container.process)?;
        for dir in ["/proc", "/dev", "/sys"] {
            view.ensure_mount_point(dir, true)
                .map_err(|e| ExecutorError::io(format!("create {dir} in the rootfs"), e))?;
        }
        create_mount_points(container, &host_binds());

        let (report, report_writer) =
            socket_pair().map_err(|e| ExecutorError::io("create a socket pair", e))?;
        let setup = MainSetup {
            report: report_writer,
            mounts: mount_steps(container, &view)?,
            hostname: container.hostname.clone().into_bytes(),
            root: c_path(&container.rootfs)?,
            credentials: Credentials::new(&checked)?,
        };
        let mut command = command_for(&checked);
        join_network(&mut command, container)?;
        // SAFETY: `MainSetup::enter` only makes system calls (unshare,
        // mount, sethostname, chroot, chdir, setgroups, setgid, setuid) on
        // memory prepared before the fork; it does not allocate.
        unsafe {
            command.pre_exec(move || setup.enter());
        }
        // The command owns the socket's sending end until it is dropped
        // inside `launch`, after the spawn.
        self.launch(
            container,
            command,
            &container.process,
            &checked,
            Some(report),
        )
    }

    async fn exec(
        &self,
        container: &ContainerSpec,
        process: &ProcessSpec,
    ) -> Result<Process, ExecutorError> {
        let Some(main_pid) = self.mains().get(&container.id).copied() else {
            return Err(ExecutorError::Other(format!(
                "container {} is not running",
                container.id
            )));
        };

        let view = RootfsView::new(&container.rootfs, &view_binds(container));
        let checked = check_process(&view, process)?;

        let open = |name: &str| {
            let path = format!("/proc/{main_pid}/{name}");
            File::open(&path).map_err(|e| ExecutorError::io(format!("open {path}"), e))
        };
        let setup = ExecSetup {
            namespaces: [
                (open("ns/mnt")?, libc::CLONE_NEWNS),
                (open("ns/uts")?, libc::CLONE_NEWUTS),
                (open("ns/ipc")?, libc::CLONE_NEWIPC),
            ],
            root: open("root")?,
            credentials: Credentials::new(&checked)?,
        };
        let mut command = command_for(&checked);
        join_network(&mut command, container)?;
        // SAFETY: `ExecSetup::enter` only makes system calls (setns,
        // fchdir, chroot, chdir, setgroups, setgid, setuid) on fds and
        // memory prepared before the fork; it does not allocate.
        unsafe {
            command.pre_exec(move || setup.enter());
        }
        self.launch(container, command, process, &checked, None)
    }

    async fn cleanup(&self, container: &ContainerSpec) -> Result<(), ExecutorError> {
        self.registry.kill_and_remove(&container.id);
        self.mains().remove(&container.id);
        Ok(())
    }
}

fn host_binds() -> Vec<(PathBuf, String)> {
    HOST_BINDS
        .iter()
        .map(|path| (PathBuf::from(path), path.to_string()))
        .collect()
}

/// Returns the binds laid over the rootfs: the host's `/dev` and `/sys`,
/// then the server's mounts.
fn view_binds(container: &ContainerSpec) -> Vec<(PathBuf, String)> {
    let mut binds = host_binds();
    binds.extend(
        container
            .mounts
            .iter()
            .map(|mount| (mount.source.clone(), mount.destination.clone())),
    );
    binds
}

/// Returns a command for `checked`'s program. It runs `execvp` after the
/// `pre_exec` closures, so a bare name is looked up with the process's
/// own `PATH` inside the container.
fn command_for(checked: &CheckedProcess) -> Command {
    let mut command = Command::new(checked.argv.first().map_or("", String::as_str));
    command
        .args(checked.argv.iter().skip(1))
        .env_clear()
        .envs(checked.env.iter().map(|(key, value)| (key, value)));
    command
}

fn spawn_error(argv0: &str, error: io::Error) -> ExecutorError {
    match error.raw_os_error() {
        Some(libc::ENOENT) => ExecutorError::NotFound(argv0.to_string()),
        Some(libc::EACCES) => ExecutorError::NotExecutable(argv0.to_string()),
        _ => ExecutorError::io(format!("start {argv0} in the container"), error),
    }
}

/// One `mount(2)` call of the container's setup, with its arguments as C
/// strings made before the fork.
struct MountStep {
    source: Option<CString>,
    target: CString,
    fstype: Option<CString>,
    flags: libc::c_ulong,
    /// Remount the bind read-only afterwards.
    read_only: bool,
}

impl MountStep {
    fn bind(source: &Path, target: &Path, read_only: bool) -> Result<Self, ExecutorError> {
        Ok(MountStep {
            source: Some(c_path(source)?),
            target: c_path(target)?,
            fstype: None,
            flags: libc::MS_BIND | libc::MS_REC,
            read_only,
        })
    }

    fn apply(&self) -> io::Result<()> {
        let source = self
            .source
            .as_ref()
            .map_or(std::ptr::null(), |s| s.as_ptr());
        let fstype = self
            .fstype
            .as_ref()
            .map_or(std::ptr::null(), |s| s.as_ptr());
        // SAFETY: every pointer is null or a NUL-terminated string that
        // outlives the call.
        check(unsafe {
            libc::mount(
                source,
                self.target.as_ptr(),
                fstype,
                self.flags,
                std::ptr::null(),
            )
        })?;

        if self.read_only {
            let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
            // SAFETY: as above.
            check(unsafe {
                libc::mount(
                    std::ptr::null(),
                    self.target.as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                )
            })?;
        }
        Ok(())
    }
}

/// Returns the mounts of a container's main process, in order: the rootfs
/// onto itself, `proc`, `/dev`, `/sys` (read-only), then the server's
/// mounts. Their destinations are resolved inside the rootfs first, so a
/// symlink in the image cannot lead a mount onto a host path.
fn mount_steps(
    container: &ContainerSpec,
    view: &RootfsView,
) -> Result<Vec<MountStep>, ExecutorError> {
    let rootfs = &container.rootfs;
    let mut steps = vec![
        MountStep::bind(rootfs, rootfs, false)?,
        MountStep {
            source: Some(CString::from(c"proc")),
            target: c_path(&rootfs.join("proc"))?,
            fstype: Some(CString::from(c"proc")),
            flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            read_only: false,
        },
        MountStep::bind(Path::new("/dev"), &rootfs.join("dev"), false)?,
        MountStep::bind(Path::new("/sys"), &rootfs.join("sys"), true)?,
    ];

    for mount in &container.mounts {
        let guest = view.resolve(&mount.destination, "/")?.guest;
        let target = rootfs.join(guest.trim_start_matches('/'));
        steps.push(MountStep::bind(&mount.source, &target, mount.read_only)?);
    }
    Ok(steps)
}

/// The user a process drops to after entering the container.
struct Credentials {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    working_dir: CString,
}

impl Credentials {
    fn new(checked: &CheckedProcess) -> Result<Self, ExecutorError> {
        Ok(Credentials {
            uid: checked.user.uid,
            gid: checked.user.gid,
            groups: checked.groups.clone(),
            working_dir: c_string(checked.working_dir.as_bytes())?,
        })
    }

    /// Changes to the working dir, then to the image user. Runs after the
    /// chroot.
    fn apply(&self) -> io::Result<()> {
        // SAFETY: `working_dir` is NUL-terminated, `groups` contains
        // `groups.len()` gids, and setgid and setuid take plain integers.
        unsafe {
            check(libc::chdir(self.working_dir.as_ptr()))?;
            check(libc::setgroups(self.groups.len(), self.groups.as_ptr()))?;
            check(libc::setgid(self.gid))?;
            check(libc::setuid(self.uid))?;
        }
        Ok(())
    }
}

/// The setup a main process runs between fork and exec.
struct MainSetup {
    /// The socket on which the process sends a descriptor of its new
    /// mount namespace, which it may leave too soon for the parent to
    /// open it from `/proc`.
    report: OwnedFd,
    mounts: Vec<MountStep>,
    hostname: Vec<u8>,
    root: CString,
    credentials: Credentials,
}

impl MainSetup {
    fn enter(&self) -> io::Result<()> {
        // SAFETY: unshare takes flags only.
        check(unsafe {
            libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC)
        })?;
        make_mounts_private()?;
        self.report_namespace()?;
        for step in &self.mounts {
            step.apply()?;
        }

        // SAFETY: the pointer and length describe `hostname`; `root` is
        // NUL-terminated.
        unsafe {
            check(libc::sethostname(
                self.hostname.as_ptr().cast(),
                self.hostname.len(),
            ))?;
            check(libc::chroot(self.root.as_ptr()))?;
        }
        self.credentials.apply()
    }
}

impl MainSetup {
    /// Sends a descriptor of the process's mount namespace over `report`
    /// with `SCM_RIGHTS`. Makes only async-signal-safe calls on stack
    /// memory.
    fn report_namespace(&self) -> io::Result<()> {
        // SAFETY: the path is a NUL-terminated literal. The message points
        // to `byte` and `control`, which outlive sendmsg, and `control`
        // is aligned for `cmsghdr` and larger than
        // CMSG_SPACE(sizeof(int)), which the header macros address.
        unsafe {
            let namespace = libc::open(
                c"/proc/self/ns/mnt".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            );
            check(namespace)?;

            let mut byte = [0u8; 1];
            let mut data = libc::iovec {
                iov_base: byte.as_mut_ptr().cast(),
                iov_len: byte.len(),
            };
            let mut control = [0u64; 8];
            let mut message: libc::msghdr = std::mem::zeroed();
            message.msg_iov = &mut data;
            message.msg_iovlen = 1;
            message.msg_control = control.as_mut_ptr().cast();
            message.msg_controllen = libc::CMSG_SPACE(FD_SIZE) as _;
            let header = libc::CMSG_FIRSTHDR(&message);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(FD_SIZE) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<libc::c_int>(), namespace);

            let sent = libc::sendmsg(self.report.as_raw_fd(), &message, 0);
            let error = io::Error::last_os_error();
            libc::close(namespace);
            if sent != 1 {
                return Err(error);
            }
        }
        Ok(())
    }
}

/// The size of a descriptor in an `SCM_RIGHTS` message.
const FD_SIZE: libc::c_uint = std::mem::size_of::<libc::c_int>() as libc::c_uint;

/// Returns a connected pair of close-on-exec unix stream sockets.
fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair returns.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: socketpair returned two new descriptors that nothing else
    // owns.
    unsafe { Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))) }
}

/// Receives the mount namespace descriptor that `MainSetup` sent before
/// the exec, and returns its inode with it. `spawn` returns only after
/// the exec, so the message is there.
fn receive_namespace(report: OwnedFd) -> Result<(u64, OwnedFd), ExecutorError> {
    let failed =
        |error: io::Error| ExecutorError::io("receive the container's mount namespace", error);

    let mut byte = [0u8; 1];
    let mut data = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: the message points to `data` and `control`, which outlive
    // recvmsg, and `control` is aligned for `cmsghdr` and has room for
    // one descriptor.
    let namespace = unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut data;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = std::mem::size_of_val(&control) as _;
        let received = libc::recvmsg(report.as_raw_fd(), &mut message, libc::MSG_CMSG_CLOEXEC);
        if received < 0 {
            return Err(failed(io::Error::last_os_error()));
        }
        let header = libc::CMSG_FIRSTHDR(&message);
        if received != 1
            || header.is_null()
            || (*header).cmsg_level != libc::SOL_SOCKET
            || (*header).cmsg_type != libc::SCM_RIGHTS
        {
            return Err(failed(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the process exited before it sent its mount namespace",
            )));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(header).cast::<libc::c_int>());
        OwnedFd::from_raw_fd(fd)
    };

    let status = nix::sys::stat::fstat(namespace.as_raw_fd()).map_err(|e| failed(e.into()))?;
    Ok((status.st_ino, namespace))
}

/// The setup an exec runs between fork and exec: it joins the main
/// process's namespaces and root.
struct ExecSetup {
    namespaces: [(File, libc::c_int); 3],
    /// `/proc/PID/root` of the main process.
    root: File,
    credentials: Credentials,
}

impl ExecSetup {
    fn enter(&self) -> io::Result<()> {
        for (file, kind) in &self.namespaces {
            // SAFETY: the fd is open for the duration of the call.
            check(unsafe { libc::setns(file.as_raw_fd(), *kind) })?;
        }
        // SAFETY: the fd is open, and "." is a NUL-terminated string.
        unsafe {
            check(libc::fchdir(self.root.as_raw_fd()))?;
            check(libc::chroot(c".".as_ptr()))?;
        }
        self.credentials.apply()
    }
}

/// Stops mounts of the new namespace from propagating to the host.
fn make_mounts_private() -> io::Result<()> {
    // SAFETY: every pointer is null or a NUL-terminated literal.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn c_path(path: &Path) -> Result<CString, ExecutorError> {
    c_string(path.as_os_str().as_bytes())
}

fn c_string(bytes: &[u8]) -> Result<CString, ExecutorError> {
    CString::new(bytes).map_err(|_| {
        ExecutorError::Other(format!(
            "path {} contains a NUL byte",
            OsStr::from_bytes(bytes).to_string_lossy()
        ))
    })
}
