//! Port relocation for containers that share the host's network.
//!
//! Where sidewhale can create no network namespace, every container binds
//! its ports on the host, so two containers that listen on the same port
//! collide. Relocation keeps them apart without privileges: a seccomp
//! filter hands each `bind(2)` and `connect(2)` of the container's
//! processes to sidewhale (`SECCOMP_RET_USER_NOTIF`), which rewrites the
//! socket address in the caller's memory (`/proc/PID/mem`) before the
//! kernel runs the call:
//!
//! - a `bind` to an IPv4 or IPv6 port P binds a free host port H instead,
//!   and H is recorded for P in the container's `RelocatedPorts`;
//! - a `connect` to P on loopback (or the unspecified address) goes to H
//!   when the container has relocated P, so that `nc -z localhost P` and
//!   bash's `/dev/tcp/localhost/P` from inside still find the listener;
//! - a `connect` to another loopback address goes to the relocated port of
//!   the peer that owns that address, which is where its names resolve.
//!
//! The caller's own socket address then contains H after the call. Taking
//! a copy of the socket with `pidfd_getfd(2)` would avoid that, but the
//! default seccomp profiles of Docker and containerd allow that call only
//! with `CAP_SYS_PTRACE`, which the strictest pods do not grant.
//!
//! Opening `/proc/net/tcp`, `tcp6`, `udp` or `udp6` returns a copy in which
//! each relocated host port reads as the container port, so that checks
//! that look for a listener there still find the port the image asked for.
//!
//! Every other call, Unix sockets included, continues unchanged. The
//! kernel stops a traced process for ptrace before it runs the seccomp
//! filter, so proot has already translated a Unix socket's path when the
//! filter runs. proot must then run without its own seccomp filter, whose
//! `SECCOMP_RET_TRACE` would lose to the notification and leave those
//! paths untranslated. Setting `PROOT_NO_SECCOMP` would put that variable
//! in the container's environment, so the supervisor rejects proot's
//! attempt to install its filter instead, and proot falls back to tracing
//! every call. Filters that the container's own programs install are left
//! alone, because the process that installs proot's still runs the proot
//! binary, which no container process does.

mod address;
mod allocate;
mod filter;
mod table;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use sidewhale_core::PortRelocation;

use address::{set_loopback, set_port, Host, SocketAddress};
pub(crate) use filter::{available, install, ListenerChannel};
use table::open_table;

/// The maximum length of a socket address that the supervisor reads.
const MAX_ADDRESS: usize = 128;

/// How many relocated ports of one container are logged at info level.
const LOGGED_RELOCATIONS: usize = 16;

/// Serves the filter's notifications on a thread of its own until no
/// process uses the filter any more. `proot` is the proot binary, whose
/// own seccomp filter is refused.
pub(crate) fn supervise(
    listener: OwnedFd,
    relocation: PortRelocation,
    container: String,
    proot: PathBuf,
) {
    let spawned = std::thread::Builder::new()
        .name("port-relocation".into())
        .spawn(move || {
            allocate::register(&relocation.ports);
            let supervisor = Supervisor {
                relocation,
                container,
                proot: std::fs::canonicalize(&proot).unwrap_or(proot),
            };
            supervisor.serve(&listener);
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "failed to start the port relocation thread");
    }
}

/// The supervisor's response to one notification.
#[derive(Debug, PartialEq, Eq)]
enum Response {
    /// Let the kernel run the call as the process made it.
    Continue,
    /// The call was made on the process's behalf: 0, or minus an errno.
    Return(i32),
    /// The response was already sent, with a descriptor.
    Sent,
}

/// The state of the thread that serves one listener.
struct Supervisor {
    relocation: PortRelocation,
    container: String,
    proot: PathBuf,
}

impl Supervisor {
    fn serve(&self, listener: &OwnedFd) {
        let fd = listener.as_raw_fd();
        loop {
            let mut poll = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll reads and writes one pollfd.
            let ready = unsafe { libc::poll(&mut poll, 1, -1) };
            if ready < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            if poll.revents & libc::POLLIN == 0 {
                // POLLHUP: every process that used the filter has exited.
                break;
            }
            // SAFETY: the kernel requires a zeroed request and fills it.
            let mut request: libc::seccomp_notif = unsafe { std::mem::zeroed() };
            // SAFETY: SECCOMP_IOCTL_NOTIF_RECV writes one seccomp_notif.
            if unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut request) } != 0 {
                // ENOENT: the process was killed before it was received.
                continue;
            }
            let response = self.respond(fd, &request);
            send(fd, request.id, response);
        }
        tracing::debug!(container = %self.container, "port relocation ended");
    }

    fn respond(&self, listener: RawFd, request: &libc::seccomp_notif) -> Response {
        let args = request.data.args;
        match i64::from(request.data.nr) {
            libc::SYS_prctl | libc::SYS_seccomp => self.filter_install(request),
            libc::SYS_bind | libc::SYS_connect => self.socket_call(listener, request),
            number => {
                // `openat(dirfd, path, flags)` or `open(path, flags)`.
                let (path, flags) = match number {
                    libc::SYS_openat => (args[1], args[2]),
                    _ => (args[0], args[1]),
                };
                open_table(
                    listener,
                    request,
                    path,
                    flags as i32,
                    &self.relocation.ports,
                )
            }
        }
    }

    /// Points a `bind` or `connect` at a relocated port by rewriting the
    /// caller's socket address, and lets the call go on.
    fn socket_call(&self, listener: RawFd, request: &libc::seccomp_notif) -> Response {
        let args = request.data.args;
        let length = args[2] as usize;
        if !(2..=MAX_ADDRESS).contains(&length) {
            return Response::Continue;
        }
        // The pid names the caller only while its request is pending, so
        // the memory is opened first and the request checked after: the
        // open file stays with the process it was opened for.
        let Ok(memory) = Memory::open(request.pid) else {
            return Response::Continue;
        };
        let Ok(bytes) = memory.read(args[1], length) else {
            return Response::Continue;
        };
        // SAFETY: SECCOMP_IOCTL_NOTIF_ID_VALID reads one u64.
        if unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &request.id) } != 0 {
            return Response::Continue;
        }
        let Some(address) = SocketAddress::parse(&bytes) else {
            return Response::Continue;
        };

        let rewritten = match i64::from(request.data.nr) {
            libc::SYS_bind => self.bind_destination(bytes, address),
            _ => connect_destination(bytes, address, &self.relocation),
        };
        if let Some(rewritten) = rewritten {
            if let Err(error) = memory.write(args[1], &rewritten) {
                tracing::warn!(
                    container = %self.container,
                    pid = request.pid,
                    %error,
                    "failed to rewrite a socket address"
                );
            }
        }
        Response::Continue
    }

    /// Returns the address a `bind` to `address` uses instead: the host
    /// port recorded for its port, or a free one, recorded now. `None`
    /// for port 0, which the kernel chooses anyway.
    fn bind_destination(&self, mut bytes: Vec<u8>, address: SocketAddress) -> Option<Vec<u8>> {
        if address.port == 0 {
            return None;
        }
        let ports = &self.relocation.ports;
        // A caller that binds again with the address it bound before now
        // passes the host port, which needs no relocation.
        if ports.container_port(address.port).is_some() {
            return None;
        }
        let host_port = match ports.host_port(address.port) {
            Some(host_port) => host_port,
            None => self.relocate(address.port)?,
        };
        set_port(&mut bytes, host_port);
        Some(bytes)
    }

    /// Records a free host port for `container_port` and returns it.
    fn relocate(&self, container_port: u16) -> Option<u16> {
        let container = &self.container;
        match allocate::free_port() {
            Ok(host_port) => {
                let ports = &self.relocation.ports;
                ports.insert(container_port, host_port);
                // A container that binds many ports would flood the log.
                let count = ports.entries().len();
                if count <= LOGGED_RELOCATIONS {
                    tracing::info!(%container, container_port, host_port, "relocated a port");
                } else {
                    tracing::debug!(%container, container_port, host_port, "relocated a port");
                }
                if count == LOGGED_RELOCATIONS {
                    tracing::info!(%container, "further relocated ports are logged at debug level");
                }
                Some(host_port)
            }
            Err(error) => {
                tracing::warn!(%container, container_port, %error, "failed to relocate a port");
                None
            }
        }
    }

    /// Rejects a seccomp filter that proot installs for its tracee with
    /// `EINVAL`, and lets every other `prctl` and `seccomp` call through.
    fn filter_install(&self, request: &libc::seccomp_notif) -> Response {
        let args = request.data.args;
        let installs_filter = match i64::from(request.data.nr) {
            libc::SYS_prctl => args[0] == libc::PR_SET_SECCOMP as u64,
            _ => args[0] == u64::from(libc::SECCOMP_SET_MODE_FILTER),
        };
        if !installs_filter {
            return Response::Continue;
        }
        let exe = std::fs::read_link(format!("/proc/{}/exe", request.pid));
        if exe.is_ok_and(|exe| exe == self.proot) {
            return Response::Return(-libc::EINVAL);
        }
        Response::Continue
    }
}

/// Returns the address a `connect` to `address` uses instead: the
/// relocated port of the container itself or of the peer at that address.
/// `None` when the call goes on unchanged.
fn connect_destination(
    mut bytes: Vec<u8>,
    address: SocketAddress,
    relocation: &PortRelocation,
) -> Option<Vec<u8>> {
    let ports = match address.host {
        Host::Own => relocation.ports.clone(),
        Host::Peer(peer) => {
            let ports = (relocation.peers)(peer)?;
            set_loopback(&mut bytes);
            ports
        }
        Host::Elsewhere => return None,
    };
    let host_port = ports.host_port(address.port)?;
    set_port(&mut bytes, host_port);
    Some(bytes)
}

/// Sends `response` to the notification `id`, unless it was already sent.
fn send(listener: RawFd, id: u64, response: Response) {
    let mut reply = libc::seccomp_notif_resp {
        id,
        val: 0,
        error: 0,
        flags: 0,
    };
    match response {
        Response::Continue => reply.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
        Response::Return(result) => reply.error = result,
        Response::Sent => return,
    }
    // SAFETY: SECCOMP_IOCTL_NOTIF_SEND reads one seccomp_notif_resp. Its
    // result is ignored: the expected error, ENOENT, means the process is
    // gone.
    unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_SEND, &reply) };
}

/// The memory of a process, through `/proc/PID/mem`, which needs the
/// same access as ptrace and no capability.
struct Memory {
    file: std::fs::File,
}

impl Memory {
    fn open(pid: u32) -> io::Result<Memory> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))?;
        Ok(Memory { file })
    }

    fn read(&self, address: u64, length: usize) -> io::Result<Vec<u8>> {
        let mut bytes = vec![0u8; length];
        self.file.read_exact_at(&mut bytes, address)?;
        Ok(bytes)
    }

    fn write(&self, address: u64, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, address)
    }
}

/// Reads a NUL-terminated string of at most `limit` bytes, the NUL
/// included. The read stops at a page boundary where the string does.
fn read_string(memory: &Memory, address: u64, limit: usize) -> io::Result<Vec<u8>> {
    const PAGE: u64 = 4096;
    let to_page_end = (PAGE - address % PAGE) as usize;
    let mut bytes = memory.read(address, to_page_end.min(limit))?;
    if !bytes.contains(&0) && bytes.len() < limit {
        let rest = memory.read(address + bytes.len() as u64, limit - bytes.len())?;
        bytes.extend(rest);
    }
    let end = bytes
        .iter()
        .position(|byte| *byte == 0)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?;
    bytes.truncate(end);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    use sidewhale_core::RelocatedPorts;

    use super::*;

    fn supervisor() -> Supervisor {
        Supervisor {
            relocation: PortRelocation {
                ports: Arc::new(RelocatedPorts::default()),
                peers: Arc::new(|_| None),
            },
            container: "0123456789ab".into(),
            proot: "/usr/bin/proot".into(),
        }
    }

    fn bind(supervisor: &Supervisor, port: u16) -> Option<u16> {
        let bytes = address::tests::ipv4(Ipv4Addr::UNSPECIFIED, port);
        let address = SocketAddress::parse(&bytes).unwrap();
        let rewritten = supervisor.bind_destination(bytes, address)?;
        Some(u16::from_be_bytes([rewritten[2], rewritten[3]]))
    }

    #[test]
    fn bind_records_host_port() {
        let supervisor = supervisor();
        let host_port = bind(&supervisor, 80).unwrap();
        assert_ne!(host_port, 80);
        assert_eq!(supervisor.relocation.ports.host_port(80), Some(host_port));
        // A second bind of the same port gets the same host port.
        assert_eq!(bind(&supervisor, 80), Some(host_port));
    }

    #[test]
    fn bind_of_own_host_port_unchanged() {
        let supervisor = supervisor();
        let host_port = bind(&supervisor, 53).unwrap();
        assert_eq!(bind(&supervisor, host_port), None);
        assert_eq!(supervisor.relocation.ports.entries(), vec![(53, host_port)]);
    }

    #[test]
    fn bind_of_port_zero_unchanged() {
        let supervisor = supervisor();
        assert_eq!(bind(&supervisor, 0), None);
        assert!(supervisor.relocation.ports.entries().is_empty());
    }
}
