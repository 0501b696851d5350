//! Building the proot command line, and spawning any executor's command
//! with the process's streams.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;

use sidewhale_core::executor::{BoxedReader, BoxedWriter};
use sidewhale_core::{ExecutorError, NetworkNamespace, PortRelocation};
use tokio::process::{Child, Command};

use crate::pty::{Pty, PtyStream};
use crate::relocation::{self, ListenerChannel};
use crate::seccomp::StatxFilter;
use crate::user::ResolvedUser;

/// Everything needed to run one process under proot.
#[derive(Clone, Debug)]
pub(crate) struct LaunchSpec {
    pub proot: PathBuf,
    pub rootfs: PathBuf,
    /// `(host source, guest destination)` pairs, in the order given to
    /// proot.
    pub binds: Vec<(PathBuf, String)>,
    pub working_dir: String,
    pub user: ResolvedUser,
    /// The user's primary gid and supplementary groups.
    pub groups: Vec<u32>,
    pub argv: Vec<String>,
    /// The complete environment of the process, defaults included.
    pub env: Vec<(String, String)>,
    pub tty: bool,
    /// The terminal's `[rows, columns]` at start, with `tty`.
    pub console_size: Option<[u16; 2]>,
    pub open_stdin: bool,
    /// Set when the container's ports are relocated on the host's network.
    pub relocation: Option<PortRelocation>,
}

/// A spawned proot process and the executor's ends of its streams.
pub(crate) struct Spawned {
    pub child: Child,
    pub stdin: Option<BoxedWriter>,
    pub stdout: BoxedReader,
    pub stderr: Option<BoxedReader>,
    /// The pseudo-terminal's master, kept for window size changes.
    pub pty_master: Option<OwnedFd>,
}

/// Returns proot's arguments for `spec`:
/// `-v -1 -r ROOTFS -b HOST:GUEST… -w DIR (-0 | -i UID:GID) ARGV…`.
pub(crate) fn proot_args(spec: &LaunchSpec) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();

    // Verbosity -1 keeps proot's own notes ("can't chdir", "terminated
    // with signal") out of the container's stderr. Errors still show.
    args.extend(["-v".into(), "-1".into()]);
    args.extend(["-r".into(), spec.rootfs.clone().into_os_string()]);

    for (source, destination) in &spec.binds {
        let mut bind = source.clone().into_os_string();
        if source.as_os_str() != destination.as_str() {
            bind.push(":");
            bind.push(destination);
        }
        args.extend(["-b".into(), bind]);
    }

    args.extend(["-w".into(), spec.working_dir.clone().into()]);

    if spec.user.is_root() {
        args.push("-0".into());
    } else {
        args.push("-i".into());
        args.push(format!("{}:{}", spec.user.uid, spec.user.gid).into());
    }

    args.extend(spec.argv.iter().map(OsString::from));
    args
}

/// Spawns proot for `spec` in a new session, inside `network` when one is
/// given. With `tty` the process gets a pseudo-terminal as its
/// controlling terminal; otherwise stdout and stderr are separate pipes
/// and stdin is a pipe or `/dev/null`. With `spec.relocation`, a thread
/// relocates the ports that the processes of `container` (an id) bind.
pub(crate) fn spawn(
    spec: &LaunchSpec,
    network: Option<&NetworkNamespace>,
    container: &str,
) -> Result<Spawned, ExecutorError> {
    let mut command = Command::new(&spec.proot);
    command
        .args(proot_args(spec))
        .env_clear()
        .envs(spec.env.iter().map(|(key, value)| (key, value)))
        .current_dir("/");
    if let Some(network) = network {
        sidewhale_netns::join(&mut command, network)
            .map_err(|e| ExecutorError::io("open the container's network namespace", e))?;
    }
    if !spec.user.is_root() {
        // proot fakes the uid and gid but not the supplementary groups,
        // which the kernel reports: without this a non-root image user
        // would keep sidewhale's groups, such as root's group 0. Where
        // sidewhale may not set groups, they stay as they are.
        let groups: Vec<libc::gid_t> = spec.groups.clone();
        // SAFETY: setgroups is async-signal-safe and reads memory
        // prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                libc::setgroups(groups.len(), groups.as_ptr());
                Ok(())
            });
        }
    }
    let filter = statx_filter()?;
    // SAFETY: `install` only makes system calls on memory prepared before
    // the fork.
    unsafe {
        command.pre_exec(move || filter.install());
    }
    let channel = match &spec.relocation {
        Some(_) => Some(relocation_channel(&mut command)?),
        None => None,
    };

    let spawned = spawn_command(command, spec.tty, spec.console_size, spec.open_stdin, &|error| {
        spawn_error(spec, error)
    })?;
    if let (Some(channel), Some(ports)) = (channel, &spec.relocation) {
        match channel.receive() {
            Ok(listener) => relocation::supervise(
                listener,
                ports.clone(),
                container.to_string(),
                spec.proot.clone(),
            ),
            // The child installs the filter before it calls execve, so
            // this happens only if the kernel lost the message.
            Err(error) => tracing::warn!(container, %error, "no port relocation for this process"),
        }
    }
    Ok(spawned)
}

/// Makes `command` install the port relocation filter and send its
/// listener back.
fn relocation_channel(command: &mut Command) -> Result<ListenerChannel, ExecutorError> {
    let channel = ListenerChannel::new()
        .map_err(|e| ExecutorError::io("create the port relocation channel", e))?;
    let (sender, filter) = channel.child_end();
    // SAFETY: `install` only makes system calls on memory prepared before
    // the fork. The statx filter, installed first, has set no_new_privs
    // where the process needed it.
    unsafe {
        command.pre_exec(move || relocation::install(sender, &filter));
    }
    Ok(channel)
}

/// Returns the filter that hides `statx` from processes under proot,
/// compiled on first use.
fn statx_filter() -> Result<StatxFilter, ExecutorError> {
    static FILTER: OnceLock<Result<StatxFilter, String>> = OnceLock::new();
    FILTER
        .get_or_init(|| StatxFilter::new().map_err(|error| error.to_string()))
        .clone()
        .map_err(ExecutorError::Other)
}

/// Spawns `command` in a new session with the process's streams: with
/// `tty` a pseudo-terminal that becomes the controlling terminal,
/// otherwise pipes for stdout and stderr and a pipe or `/dev/null` for
/// stdin. `on_error` turns a failed spawn into the executor's error.
/// `pre_exec` closures already on `command` run before the session is
/// created.
pub(crate) fn spawn_command(
    command: Command,
    tty: bool,
    console_size: Option<[u16; 2]>,
    open_stdin: bool,
    on_error: &dyn Fn(std::io::Error) -> ExecutorError,
) -> Result<Spawned, ExecutorError> {
    if tty {
        spawn_with_pty(command, console_size, open_stdin, on_error)
    } else {
        spawn_with_pipes(command, open_stdin, on_error)
    }
}

fn spawn_with_pipes(
    mut command: Command,
    open_stdin: bool,
    on_error: &dyn Fn(std::io::Error) -> ExecutorError,
) -> Result<Spawned, ExecutorError> {
    let stdin = if open_stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    command
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    // SAFETY: the closure runs between fork and exec and only calls
    // setsid(2), which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()?;
            Ok(())
        });
    }

    let mut child = spawn_retrying(&mut command).map_err(on_error)?;

    let stdin = child
        .stdin
        .take()
        .map(|stdin| Box::pin(stdin) as BoxedWriter);
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| ExecutorError::Other("process started without a stdout pipe".into()))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| ExecutorError::Other("process started without a stderr pipe".into()))?;

    Ok(Spawned {
        child,
        stdin,
        stdout: Box::pin(stdout),
        stderr: Some(Box::pin(stderr)),
        pty_master: None,
    })
}

/// Spawns `command`, trying again a few times when `execve` fails with
/// `ETXTBSY`. Another thread of this process may fork while it still holds
/// a freshly copied rootfs file open for writing, and the forked child
/// keeps that descriptor until it calls `execve` itself.
fn spawn_retrying(command: &mut Command) -> std::io::Result<Child> {
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        match command.spawn() {
            Err(error) if error.raw_os_error() == Some(libc::ETXTBSY) && attempt < ATTEMPTS => {
                tracing::debug!(attempt, "executable busy, spawning again");
                std::thread::sleep(std::time::Duration::from_millis(20 * u64::from(attempt)));
                attempt += 1;
            }
            result => return result,
        }
    }
}

fn spawn_with_pty(
    mut command: Command,
    console_size: Option<[u16; 2]>,
    open_stdin: bool,
    on_error: &dyn Fn(std::io::Error) -> ExecutorError,
) -> Result<Spawned, ExecutorError> {
    let pty = Pty::open().map_err(|e| ExecutorError::io("open a pseudo-terminal", e))?;
    if let Some([rows, columns]) = console_size.filter(|[rows, columns]| *rows > 0 && *columns > 0) {
        crate::pty::set_window_size(&pty.master, rows, columns)
            .map_err(|e| ExecutorError::io("set the pseudo-terminal's size", e))?;
    }
    let clone = |fd: &OwnedFd| {
        fd.try_clone()
            .map_err(|e| ExecutorError::io("duplicate a pseudo-terminal fd", e))
    };

    command
        .stdin(Stdio::from(clone(&pty.slave)?))
        .stdout(Stdio::from(clone(&pty.slave)?))
        .stderr(Stdio::from(clone(&pty.slave)?));

    // SAFETY: the closure runs between fork and exec and only calls
    // setsid(2) and ioctl(2), both async-signal-safe. Fd 0 is the slave
    // at that point, so TIOCSCTTY makes it the controlling terminal of the
    // new session.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }

    let child = spawn_retrying(&mut command).map_err(on_error)?;

    // The parent's copies of the slave must be closed, or reading the
    // master never reaches end of file.
    drop(command);
    drop(pty.slave);

    let stream = |fd: OwnedFd| {
        PtyStream::new(fd).map_err(|e| ExecutorError::io("watch a pseudo-terminal", e))
    };
    let stdout = stream(clone(&pty.master)?)?;
    let stdin = if open_stdin {
        Some(Box::pin(stream(clone(&pty.master)?)?) as BoxedWriter)
    } else {
        None
    };

    Ok(Spawned {
        child,
        stdin,
        stdout: Box::pin(stdout),
        stderr: None,
        pty_master: Some(pty.master),
    })
}

fn spawn_error(spec: &LaunchSpec, error: std::io::Error) -> ExecutorError {
    if error.kind() == std::io::ErrorKind::NotFound {
        return ExecutorError::Unavailable {
            executor: "proot".into(),
            reason: format!(
                "{} not found: install proot (apt-get install proot) or set its path",
                spec.proot.display()
            ),
        };
    }
    ExecutorError::io(format!("run {}", spec.proot.display()), error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(uid: u32, gid: u32) -> LaunchSpec {
        LaunchSpec {
            proot: "proot".into(),
            rootfs: "/state/c/abc/rootfs".into(),
            binds: vec![
                ("/proc".into(), "/proc".into()),
                ("/state/c/abc/hosts".into(), "/etc/hosts".into()),
            ],
            working_dir: "/app".into(),
            groups: vec![gid],
            user: ResolvedUser {
                uid,
                gid,
                home: "/".into(),
            },
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec![],
            tty: false,
            console_size: None,
            open_stdin: false,
            relocation: None,
        }
    }

    fn joined(args: Vec<OsString>) -> String {
        args.iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn root_uses_fake_root() {
        assert_eq!(
            joined(proot_args(&spec(0, 0))),
            "-v -1 -r /state/c/abc/rootfs -b /proc -b /state/c/abc/hosts:/etc/hosts \
             -w /app -0 sh -c echo hi"
        );
    }

    #[test]
    fn other_user_uses_change_id() {
        let args = joined(proot_args(&spec(1000, 50)));

        assert!(args.contains(" -i 1000:50 sh "), "{args}");
        assert!(!args.contains(" -0 "), "{args}");
    }
}
