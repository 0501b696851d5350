//! Network namespaces for containers, so that two containers can listen on
//! the same port.
//!
//! For each container the server starts a holder: sidewhale itself, run
//! with `HOLDER_ARGUMENT`, in a new network namespace (and, when sidewhale
//! is unprivileged, a new user namespace that maps its user to root). The
//! holder keeps the namespace alive and runs the relay (see `relay`): it
//! serves a unix socket in the container's directory and connects to
//! ports on its own loopback, which is the container's. Unix sockets on
//! the filesystem are reachable from every network namespace, so the
//! server's TCP listeners reach the container through that socket.
//!
//! The executor starts the container's processes in the holder's
//! namespaces with `join`, which calls `setns(2)` between fork and exec.

pub mod bridge;
pub mod outbound;
pub mod relay;
mod sys;

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Returns the first executable file called `name` in a directory of the
/// `PATH` of the sidewhale process, as `execvp(3)` would choose it.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

use sidewhale_core::NetworkNamespace;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// The hidden first argument that makes the sidewhale binary run as a
/// holder: `sidewhale __netns-holder SOCKET`.
pub const HOLDER_ARGUMENT: &str = "__netns-holder";

/// The line a holder prints on stdout once its socket is listening.
const READY_LINE: &str = "ready";

/// How long `Holder::spawn` waits for the holder's ready line.
const HOLDER_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Unix socket paths hold at most 107 bytes plus a NUL.
const MAX_SOCKET_PATH: usize = 107;

/// The kind of namespaces a holder gets on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strategy {
    /// Create a user namespace too, mapping the current user to root in
    /// it. Needed without `CAP_SYS_ADMIN`, that is when not root.
    pub user_namespace: bool,
}

impl Strategy {
    /// Returns the strategy for this process: a plain network namespace
    /// as root, a user and network namespace otherwise.
    pub fn for_current_user() -> Strategy {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let is_root = unsafe { libc::geteuid() } == 0;
        Strategy {
            user_namespace: !is_root,
        }
    }

    /// Checks that namespaces can be made here by running `true` in new
    /// ones. Returns a reason a user can act on when they cannot.
    pub fn probe(&self) -> Result<(), String> {
        let program = ["/usr/bin/true", "/bin/true"]
            .into_iter()
            .find(|path| Path::new(path).is_file())
            .ok_or("no `true` program found in /usr/bin or /bin")?;
        let mut command = std::process::Command::new(program);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let setup = sys::NamespaceSetup::new(self.user_namespace);
        // SAFETY: `NamespaceSetup::enter` only makes system calls on
        // buffers prepared before the fork, as `pre_exec` requires.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || setup.enter());
        }
        let output = command
            .output()
            .map_err(|error| format!("cannot create a network namespace: {error}"))?;
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "cannot create a network namespace ({}): {}",
            output.status,
            sys::user_namespace_hint(self.user_namespace)
        ))
    }
}

/// A running holder: the process that owns a container's network
/// namespace and relays connections into it. Dropping it kills the holder.
pub struct Holder {
    child: Child,
    /// Closing this pipe tells the holder to exit, also when the server
    /// dies without dropping the `Holder`.
    _stdin: ChildStdin,
    namespace: NetworkNamespace,
    socket: PathBuf,
}

impl Holder {
    /// Starts `program HOLDER_ARGUMENT socket` in new namespaces made with
    /// `strategy` and waits until its socket listens. `program` is
    /// normally `/proc/self/exe`, the running sidewhale.
    pub async fn spawn(program: &Path, socket: &Path, strategy: Strategy) -> io::Result<Holder> {
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "relay socket path {} is longer than {MAX_SOCKET_PATH} bytes: \
                     choose a shorter state directory",
                    socket.display()
                ),
            ));
        }
        let mut command = Command::new(program);
        command
            .arg(HOLDER_ARGUMENT)
            .arg(socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let setup = sys::NamespaceSetup::new(strategy.user_namespace);
        // SAFETY: `NamespaceSetup::enter` only makes system calls on
        // buffers prepared before the fork, as `pre_exec` requires.
        unsafe {
            command.pre_exec(move || setup.enter());
        }
        let mut child = command.spawn()?;

        let missing = |name: &str| io::Error::other(format!("holder started without {name}"));
        let stdin = child.stdin.take().ok_or_else(|| missing("a stdin pipe"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| missing("a stdout pipe"))?;
        let pid = child.id().ok_or_else(|| missing("a pid"))?;

        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        let read = tokio::time::timeout(HOLDER_START_TIMEOUT, reader.read_line(&mut line)).await;
        match read {
            Ok(Ok(_)) if line.trim_end() == READY_LINE => {}
            Ok(Ok(_)) => {
                return Err(io::Error::other(format!(
                    "holder exited before its relay socket listened (output {:?})",
                    line.trim_end()
                )))
            }
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("holder did not listen within {HOLDER_START_TIMEOUT:?}"),
                ))
            }
        }

        Ok(Holder {
            child,
            _stdin: stdin,
            namespace: NetworkNamespace {
                holder_pid: pid,
                user_namespace: strategy.user_namespace,
            },
            socket: socket.to_path_buf(),
        })
    }

    pub fn namespace(&self) -> NetworkNamespace {
        self.namespace
    }

    /// The relay's unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Kills the holder and waits for it. The namespace itself lives on
    /// while container processes are still in it.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Runs the holder's side: serves the relay on `socket` until stdin
/// reaches end of file. Called by the sidewhale binary for
/// `HOLDER_ARGUMENT`, already inside the container's namespaces.
pub async fn run_holder(socket: &Path) -> io::Result<()> {
    allow_unprivileged_ports();
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)?;
    println!("{READY_LINE}");

    let mut stdin = tokio::io::stdin();
    let mut buffer = [0u8; 64];
    let parent_gone = async move {
        // Anything other than end of file (which is unexpected) is ignored.
        while !matches!(stdin.read(&mut buffer).await, Ok(0) | Err(_)) {}
    };
    tokio::select! {
        _ = relay::serve(listener) => {}
        _ = parent_gone => {}
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}

/// The sysctl, per network namespace, that sets the lowest port that
/// needs `CAP_NET_BIND_SERVICE`.
const UNPRIVILEGED_PORT_START: &str = "/proc/sys/net/ipv4/ip_unprivileged_port_start";

/// Lets every process of the current network namespace bind any port, as
/// Docker does for its containers, so that an image's non-root user can
/// listen on port 80. Only warns on failure, because a namespace without
/// it still serves ports from 1024 up.
fn allow_unprivileged_ports() {
    if let Err(error) = std::fs::write(UNPRIVILEGED_PORT_START, "0") {
        tracing::warn!(
            %error,
            sysctl = UNPRIVILEGED_PORT_START,
            "failed to let unprivileged processes bind ports below 1024"
        );
    }
}

/// Makes `command` start in `namespace`: it joins the holder's user
/// namespace (when there is one) and then its network namespace between
/// fork and exec. Fails when the holder is gone.
pub fn join(command: &mut Command, namespace: &NetworkNamespace) -> io::Result<()> {
    let pid = namespace.holder_pid;
    let net = File::open(format!("/proc/{pid}/ns/net"))?;
    let user = if namespace.user_namespace {
        Some(File::open(format!("/proc/{pid}/ns/user"))?)
    } else {
        None
    };
    // SAFETY: the closure only calls setns(2), which is async-signal-safe,
    // on descriptors opened before the fork. They are close-on-exec, so
    // the new program does not inherit them.
    unsafe {
        command.pre_exec(move || {
            if let Some(user) = &user {
                sys::setns(user.as_raw_fd(), libc::CLONE_NEWUSER)?;
            }
            sys::setns(net.as_raw_fd(), libc::CLONE_NEWNET)
        });
    }
    Ok(())
}
