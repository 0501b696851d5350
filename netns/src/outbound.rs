//! Outbound network for a namespace through slirp4netns.
//!
//! slirp4netns runs in the server's network namespace, creates the tap
//! device `tap0` inside the container's namespace and forwards its
//! traffic through ordinary sockets of the host. With `--configure` the
//! namespace gets 10.0.2.100/24, a default route via 10.0.2.2 and a DNS
//! forwarder at 10.0.2.3. Connections to 10.0.2.2 reach the host's
//! loopback, because host loopback access is left enabled.
//!
//! The server keeps the write end of a pipe whose read end is
//! slirp4netns's `--exit-fd`. Killing the server closes that pipe, so
//! slirp4netns exits with it even when nothing stops it explicitly.

use std::io::{self, Read};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sidewhale_core::NetworkNamespace;
use tokio::process::{Child, Command};

/// The program's name, looked up in `PATH`.
pub const PROGRAM: &str = "slirp4netns";

/// The address of the host's loopback as seen from the namespace.
pub const HOST_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

/// slirp4netns's DNS forwarder.
pub const DNS_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);

/// The namespace's own address on `tap0`.
pub const GUEST_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);

/// The MTU of `tap0`; large frames make loopback-like throughput possible.
const MTU: u32 = 65520;

/// How long `Outbound::start` waits for slirp4netns to configure `tap0`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Returns the path of slirp4netns in `PATH`, if it is installed.
pub fn find_program() -> Option<PathBuf> {
    crate::find_on_path(PROGRAM)
}

/// A running slirp4netns attached to one namespace. Dropping it kills the
/// process.
pub struct Outbound {
    child: Child,
    /// The write end of the `--exit-fd` pipe.
    _exit: OwnedFd,
}

/// Returns a pipe as (read end, write end), both close-on-exec.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by
    // nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Clears close-on-exec on `fd`. Async-signal-safe, for `pre_exec`.
fn inherit(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with F_SETFD takes no pointers; an invalid fd is
    // reported as an error.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Outbound {
    /// Starts `program` (slirp4netns) for `namespace` and waits until
    /// `tap0` is configured inside it.
    pub async fn start(program: &Path, namespace: &NetworkNamespace) -> io::Result<Outbound> {
        let (ready_read, ready_write) = pipe()?;
        let (exit_read, exit_write) = pipe()?;
        let ready_fd = ready_write.as_raw_fd();
        let exit_fd = exit_read.as_raw_fd();
        let pid = namespace.holder_pid;

        let mut command = Command::new(program);
        command
            .arg("--configure")
            .arg(format!("--mtu={MTU}"))
            .arg(format!("--ready-fd={ready_fd}"))
            .arg(format!("--exit-fd={exit_fd}"));
        if namespace.user_namespace {
            command.arg(format!("--userns-path=/proc/{pid}/ns/user"));
        }
        command
            .arg(pid.to_string())
            .arg("tap0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: the closure only calls fcntl(2), which is
        // async-signal-safe, on descriptors that stay open until spawn
        // returns.
        unsafe {
            command.pre_exec(move || {
                inherit(ready_fd)?;
                inherit(exit_fd)
            });
        }
        let mut child = command.spawn()?;
        // Only slirp4netns may hold these ends: the ready pipe reports end
        // of file once it exits, and the exit pipe stays quiet.
        drop(ready_write);
        drop(exit_read);

        let wait = tokio::task::spawn_blocking(move || {
            let mut file = std::fs::File::from(ready_read);
            let mut byte = [0u8; 1];
            file.read(&mut byte)
                .map(|read| read == 1 && byte[0] == b'1')
        });
        let ready = match tokio::time::timeout(READY_TIMEOUT, wait).await {
            Ok(Ok(Ok(ready))) => ready,
            Ok(Ok(Err(error))) => return Err(error),
            Ok(Err(error)) => return Err(io::Error::other(error)),
            Err(_) => {
                let _ = child.start_kill();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{PROGRAM} did not configure tap0 within {READY_TIMEOUT:?}"),
                ));
            }
        };
        if !ready {
            let _ = child.start_kill();
            let output = child.wait_with_output().await?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(io::Error::other(format!(
                "{PROGRAM} exited before configuring tap0 ({}): {}",
                output.status,
                stderr.trim()
            )));
        }
        // Its later messages are not needed, but the pipe must keep being
        // read so that slirp4netns never blocks on a full one.
        if let Some(mut stderr) = child.stderr.take() {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
            });
        }
        Ok(Outbound {
            child,
            _exit: exit_write,
        })
    }

    /// Kills slirp4netns and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}
