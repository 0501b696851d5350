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

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use sidewhale_core::{PortRelocation, RelocatedPorts};

/// `AUDIT_ARCH_*` of the architecture sidewhale runs on.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// The maximum length of a socket address that the supervisor reads.
const MAX_ADDRESS: usize = 128;

/// The system calls the supervisor is notified of.
#[cfg(target_arch = "x86_64")]
const NOTIFIED: [libc::c_long; 6] = [
    libc::SYS_bind,
    libc::SYS_connect,
    libc::SYS_openat,
    libc::SYS_prctl,
    libc::SYS_seccomp,
    libc::SYS_open,
];
#[cfg(not(target_arch = "x86_64"))]
const NOTIFIED: [libc::c_long; 5] = [
    libc::SYS_bind,
    libc::SYS_connect,
    libc::SYS_openat,
    libc::SYS_prctl,
    libc::SYS_seccomp,
];

/// The maximum length of a `/proc` network table's path, with its NUL:
/// `/proc/NNNNNNN/task/NNNNNNN/net/udp6`.
const MAX_TABLE_PATH: usize = 48;

/// Builds the filter, which notifies the supervisor of the `NOTIFIED` calls
/// of this architecture and allows everything else.
fn program() -> Vec<libc::sock_filter> {
    let load = |offset: u32| libc::sock_filter {
        code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
        jt: 0,
        jf: 0,
        k: offset,
    };
    let jump_if_equal = |value: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k: value,
    };
    let ret = |action: u32| libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: action,
    };
    // Offsets in `struct seccomp_data`: nr at 0, arch at 4. After the
    // calls' jumps come ALLOW, then USER_NOTIF.
    let count = NOTIFIED.len() as u8;
    let mut program = vec![load(4), jump_if_equal(AUDIT_ARCH, 0, count + 1), load(0)];
    for (index, number) in NOTIFIED.iter().enumerate() {
        let to_notify = count - index as u8;
        program.push(jump_if_equal(*number as u32, to_notify, 0));
    }
    program.push(ret(libc::SECCOMP_RET_ALLOW));
    program.push(ret(libc::SECCOMP_RET_USER_NOTIF));
    program
}

/// The two ends of the socket pair that carries the filter's listener
/// from the forked child to sidewhale.
pub(crate) struct ListenerChannel {
    receiver: OwnedFd,
    sender: OwnedFd,
    /// The filter, built before the fork.
    filter: Vec<libc::sock_filter>,
}

impl ListenerChannel {
    pub fn new() -> io::Result<ListenerChannel> {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into `fds`.
        let result = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned here.
        let (receiver, sender) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(ListenerChannel {
            receiver,
            sender,
            filter: program(),
        })
    }

    /// Returns what the child needs: the descriptor it sends the listener
    /// on, and the filter.
    pub fn child_end(&self) -> (RawFd, Vec<libc::sock_filter>) {
        (self.sender.as_raw_fd(), self.filter.clone())
    }

    /// Returns the listener the child sent, once it has called `execve`.
    /// Closes the sender, which only the child needed.
    pub fn receive(self) -> io::Result<OwnedFd> {
        drop(self.sender);
        receive_fd(&self.receiver)
    }
}

/// Installs the filter in the calling process and sends its listener on
/// `sender`. Runs between fork and exec: it makes only system calls on
/// memory prepared before the fork. The process must already have
/// `no_new_privs` set or `CAP_SYS_ADMIN`.
pub(crate) fn install(sender: RawFd, filter: &[libc::sock_filter]) -> io::Result<()> {
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: the kernel copies the program, which outlives the call.
    let listener = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            std::ptr::from_ref(&program),
        )
    };
    if listener < 0 {
        return Err(io::Error::last_os_error());
    }
    let listener = listener as RawFd;
    let sent = send_fd(sender, listener);
    // SAFETY: the listener was returned above and is closed once: the
    // child must not keep it.
    unsafe { libc::close(listener) };
    sent
}

/// Sends `fd` as `SCM_RIGHTS` with one byte of data. Allocates nothing.
fn send_fd(socket: RawFd, fd: RawFd) -> io::Result<()> {
    // Room for one cmsghdr with one descriptor, suitably aligned.
    let mut control = [0u64; 4];
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: every pointer refers to a local that outlives sendmsg, and
    // the control buffer is large enough for CMSG_SPACE of one int.
    unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as usize;
        let header = libc::CMSG_FIRSTHDR(&message);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<RawFd>(), fd);
        if libc::sendmsg(socket, &message, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives one descriptor sent by `send_fd`, without waiting.
fn receive_fd(socket: &OwnedFd) -> io::Result<OwnedFd> {
    let mut control = [0u64; 4];
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: as in `send_fd`. The received descriptor is owned here.
    unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = size_of_val(&control);
        let received = libc::recvmsg(
            socket.as_raw_fd(),
            &mut message,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        );
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        let header = libc::CMSG_FIRSTHDR(&message);
        if header.is_null() || (*header).cmsg_type != libc::SCM_RIGHTS {
            return Err(io::Error::other("the child sent no seccomp listener"));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(header).cast::<RawFd>());
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Returns whether this host lets sidewhale relocate ports, which needs
/// seccomp listeners. Checked once, with a short-lived child that
/// installs the filter.
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| match check() {
        Ok(()) => true,
        Err(error) => {
            tracing::info!(%error, "port relocation is not available on this host");
            false
        }
    })
}

fn check() -> io::Result<()> {
    use std::os::unix::process::CommandExt;

    let program = sidewhale_netns::find_on_path("true")
        .ok_or_else(|| io::Error::other("`true` is not on PATH"))?;
    let channel = ListenerChannel::new()?;
    let (sender, filter) = channel.child_end();
    let mut command = std::process::Command::new(program);
    // SAFETY: the closure only makes system calls on memory prepared
    // before the fork.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            install(sender, &filter)
        });
    }
    let mut child = command.spawn()?;
    // Closing the listener makes the child's notified calls fail, so that
    // it exits without a supervisor.
    let received = channel.receive().map(drop);
    child.wait()?;
    received
}

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
        tracing::debug!(container = %short(&self.container), "port relocation ended");
    }

    fn respond(&self, listener: RawFd, request: &libc::seccomp_notif) -> Response {
        let args = request.data.args;
        match i64::from(request.data.nr) {
            libc::SYS_prctl | libc::SYS_seccomp => self.filter_install(request),
            libc::SYS_bind | libc::SYS_connect => self.socket_call(listener, request),
            // `openat(dirfd, path, flags)`.
            libc::SYS_openat => open_table(
                listener,
                request,
                args[1],
                args[2] as i32,
                &self.relocation.ports,
            ),
            // `open(path, flags)`.
            _ => open_table(
                listener,
                request,
                args[0],
                args[1] as i32,
                &self.relocation.ports,
            ),
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
                    container = %short(&self.container),
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
        let host_port = match ports.host_port(address.port) {
            Some(host_port) => host_port,
            None => self.relocate(address.port)?,
        };
        set_port(&mut bytes, host_port);
        Some(bytes)
    }

    /// Records a free host port for `container_port` and returns it.
    fn relocate(&self, container_port: u16) -> Option<u16> {
        let container = short(&self.container);
        match free_port() {
            Ok(host_port) => {
                self.relocation.ports.insert(container_port, host_port);
                tracing::info!(%container, container_port, host_port, "relocated a port");
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

/// Returns a port that is free for TCP and UDP, on IPv4 and IPv6, as the
/// kernel chooses it. It stays free until the caller binds it, unless
/// another process takes it in between.
fn free_port() -> io::Result<u16> {
    const ATTEMPTS: usize = 16;
    for _ in 0..ATTEMPTS {
        // A socket on `::` also takes the IPv4 port, unless the host has
        // no IPv6 at all.
        let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0))
            .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)))?;
        let port = listener.local_addr()?.port();
        let udp = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port))
            .or_else(|_| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)));
        if udp.is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no port free for both TCP and UDP in {ATTEMPTS} attempts"),
    ))
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
    // SAFETY: SECCOMP_IOCTL_NOTIF_SEND reads one seccomp_notif_resp. It
    // fails only when the process is gone, which needs no response.
    unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_SEND, &reply) };
}

/// Responds to the opening of a `/proc` network table with a copy in which
/// the container's relocated ports read as its own. The copy is a memfd
/// that the kernel installs in the process as the call's result.
fn open_table(
    listener: RawFd,
    request: &libc::seccomp_notif,
    path: u64,
    flags: i32,
    ports: &RelocatedPorts,
) -> Response {
    if flags & libc::O_ACCMODE != libc::O_RDONLY {
        return Response::Continue;
    }
    let Ok(memory) = Memory::open(request.pid) else {
        return Response::Continue;
    };
    let Ok(bytes) = read_string(&memory, path, MAX_TABLE_PATH) else {
        return Response::Continue;
    };
    let Ok(path) = std::str::from_utf8(&bytes) else {
        return Response::Continue;
    };
    if !is_network_table(path) {
        return Response::Continue;
    }

    // The path is the host's, as proot translated it. The caller shares
    // sidewhale's network namespace, so both read the same table.
    let Ok(text) = std::fs::read_to_string(path) else {
        return Response::Continue;
    };
    let entries = ports.entries();
    let text = rewrite_table(&text, |port| {
        entries
            .iter()
            .find(|(_, host_port)| *host_port == port)
            .map(|(container_port, _)| *container_port)
    });
    let Ok(copy) = memfd(&text) else {
        return Response::Continue;
    };
    let mut add = libc::seccomp_notif_addfd {
        id: request.id,
        flags: libc::SECCOMP_ADDFD_FLAG_SEND as u32,
        srcfd: copy.as_raw_fd() as u32,
        newfd: 0,
        newfd_flags: (flags & libc::O_CLOEXEC) as u32,
    };
    // SAFETY: SECCOMP_IOCTL_NOTIF_ADDFD reads one seccomp_notif_addfd. With
    // SECCOMP_ADDFD_FLAG_SEND it also responds to the notification.
    let result = unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_ADDFD, &mut add) };
    if result < 0 {
        return Response::Continue;
    }
    Response::Sent
}

/// Returns whether `path` names a `/proc` network table: `/proc/net/tcp`,
/// `/proc/self/net/udp6`, `/proc/PID/task/TID/net/tcp` and the like.
fn is_network_table(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/proc/") else {
        return false;
    };
    let Some((owner, table)) = rest.rsplit_once("net/") else {
        return false;
    };
    let numeric = |part: &str| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit());
    let parts: Vec<&str> = owner.trim_end_matches('/').split('/').collect();
    let owner_ok = match parts.as_slice() {
        [""] | ["self"] | ["thread-self"] => true,
        [pid] => numeric(pid),
        [pid, "task", tid] => numeric(pid) && numeric(tid),
        _ => false,
    };
    owner_ok && matches!(table, "tcp" | "tcp6" | "udp" | "udp6")
}

/// Rewrites the local and remote ports of a `/proc/net/tcp`-style table
/// with `container_port`, which returns the container port for a host
/// port. The ports are four hex digits, so every line keeps its length.
fn rewrite_table(text: &str, container_port: impl Fn(u16) -> Option<u16>) -> String {
    let mut lines = Vec::new();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        if index == 0 {
            lines.push(line.to_string());
            continue;
        }
        let mut rewritten = line.to_string();
        // Fields: `sl`, local address, remote address, then the rest.
        let mut offset = 0;
        for (field_index, field) in line.split_whitespace().take(3).enumerate() {
            let start = offset + line[offset..].find(field).unwrap_or(0);
            offset = start + field.len();
            if field_index == 0 {
                continue;
            }
            let Some((_, port)) = field.rsplit_once(':') else {
                continue;
            };
            let Some(mapped) = u16::from_str_radix(port, 16).ok().and_then(&container_port) else {
                continue;
            };
            let port_start = offset - port.len();
            rewritten.replace_range(port_start..offset, &format!("{mapped:04X}"));
        }
        lines.push(rewritten);
    }
    lines.concat()
}

fn memfd(text: &str) -> io::Result<OwnedFd> {
    use std::io::{Seek, Write};

    // SAFETY: the name is a NUL-terminated literal.
    let fd = unsafe { libc::memfd_create(c"proc-net".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is new and owned here.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(text.as_bytes())?;
    file.rewind()?;
    Ok(file.into())
}

/// The kind of host a socket address names, for relocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Host {
    /// 127.0.0.1, `::1` or the unspecified address: the container itself.
    Own,
    /// Another loopback address, which may belong to a peer.
    Peer(Ipv4Addr),
    Elsewhere,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SocketAddress {
    host: Host,
    port: u16,
}

impl SocketAddress {
    /// Parses a `sockaddr_in` or `sockaddr_in6`, and returns `None` for any
    /// other family.
    fn parse(bytes: &[u8]) -> Option<SocketAddress> {
        let family = i32::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
        let ipv4 = match family {
            libc::AF_INET if bytes.len() >= size_of::<libc::sockaddr_in>() => {
                Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7])
            }
            libc::AF_INET6 if bytes.len() >= size_of::<libc::sockaddr_in6>() => {
                let octets: [u8; 16] = bytes[8..24].try_into().ok()?;
                let ipv6 = Ipv6Addr::from(octets);
                if ipv6.is_loopback() || ipv6.is_unspecified() {
                    Ipv4Addr::LOCALHOST
                } else {
                    match ipv6.to_ipv4_mapped() {
                        Some(ipv4) => ipv4,
                        None => Ipv4Addr::BROADCAST,
                    }
                }
            }
            _ => return None,
        };
        let host = if ipv4 == Ipv4Addr::LOCALHOST || ipv4.is_unspecified() {
            Host::Own
        } else if ipv4.is_loopback() {
            Host::Peer(ipv4)
        } else {
            Host::Elsewhere
        };
        Some(SocketAddress {
            host,
            port: u16::from_be_bytes([bytes[2], bytes[3]]),
        })
    }
}

/// Writes `port` into a `sockaddr_in` or `sockaddr_in6`, where both keep it.
fn set_port(bytes: &mut [u8], port: u16) {
    bytes[2..4].copy_from_slice(&port.to_be_bytes());
}

/// Points a socket address at 127.0.0.1, or at `::ffff:127.0.0.1` for an
/// IPv6 one, where a peer's relocated listener is reachable.
fn set_loopback(bytes: &mut [u8]) {
    let family = i32::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
    if family == libc::AF_INET {
        bytes[4..8].copy_from_slice(&Ipv4Addr::LOCALHOST.octets());
    } else {
        bytes[8..24].copy_from_slice(&Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets());
    }
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

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(address: Ipv4Addr, port: u16) -> Vec<u8> {
        let mut bytes = vec![0u8; size_of::<libc::sockaddr_in>()];
        bytes[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        bytes[2..4].copy_from_slice(&port.to_be_bytes());
        bytes[4..8].copy_from_slice(&address.octets());
        bytes
    }

    fn ipv6(address: Ipv6Addr, port: u16) -> Vec<u8> {
        let mut bytes = vec![0u8; size_of::<libc::sockaddr_in6>()];
        bytes[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        bytes[2..4].copy_from_slice(&port.to_be_bytes());
        bytes[8..24].copy_from_slice(&address.octets());
        bytes
    }

    #[test]
    fn loopback_addresses_are_own() {
        for bytes in [
            ipv4(Ipv4Addr::LOCALHOST, 6379),
            ipv4(Ipv4Addr::UNSPECIFIED, 6379),
            ipv6(Ipv6Addr::LOCALHOST, 6379),
            ipv6(Ipv6Addr::UNSPECIFIED, 6379),
            ipv6(Ipv4Addr::LOCALHOST.to_ipv6_mapped(), 6379),
        ] {
            let address = SocketAddress::parse(&bytes).unwrap();
            assert_eq!(
                address,
                SocketAddress {
                    host: Host::Own,
                    port: 6379
                }
            );
        }
    }

    #[test]
    fn other_loopback_addresses_are_peers() {
        let peer = Ipv4Addr::new(127, 18, 0, 2);
        let address = SocketAddress::parse(&ipv4(peer, 5432)).unwrap();
        assert_eq!(address.host, Host::Peer(peer));
        let address = SocketAddress::parse(&ipv6(peer.to_ipv6_mapped(), 5432)).unwrap();
        assert_eq!(address.host, Host::Peer(peer));
    }

    #[test]
    fn other_addresses_left_alone() {
        let address = SocketAddress::parse(&ipv4(Ipv4Addr::new(10, 0, 2, 2), 80)).unwrap();
        assert_eq!(address.host, Host::Elsewhere);
        let address = SocketAddress::parse(&ipv6("fd00::1".parse().unwrap(), 80)).unwrap();
        assert_eq!(address.host, Host::Elsewhere);
        let mut unix = vec![0u8; 20];
        unix[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(SocketAddress::parse(&unix), None);
        assert_eq!(
            SocketAddress::parse(&ipv4(Ipv4Addr::LOCALHOST, 1)[..8]),
            None
        );
    }

    #[test]
    fn network_table_paths() {
        assert!(is_network_table("/proc/net/tcp"));
        assert!(is_network_table("/proc/self/net/tcp6"));
        assert!(is_network_table("/proc/4242/net/udp"));
        assert!(is_network_table("/proc/42/task/43/net/udp6"));
        assert!(!is_network_table("/proc/net/unix"));
        assert!(!is_network_table("/proc/net/tcpx"));
        assert!(!is_network_table("/srv/proc/net/tcp"));
        assert!(!is_network_table("/proc/x/net/tcp"));
    }

    #[test]
    fn free_port_takes_tcp_and_udp() {
        let port = free_port().unwrap();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap();
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap();
    }

    #[test]
    fn table_shows_container_ports() {
        let table = "  sl  local_address rem_address   st\n\
                     \x20  0: 00000000:9C40 00000000:0000 0A\n\
                     \x20  1: 0100007F:1F90 0100007F:9C40 01\n";
        let rewritten = rewrite_table(table, |port| (port == 40000).then_some(6379));
        assert_eq!(
            rewritten,
            "  sl  local_address rem_address   st\n\
             \x20  0: 00000000:18EB 00000000:0000 0A\n\
             \x20  1: 0100007F:1F90 0100007F:18EB 01\n"
        );
    }

    #[test]
    fn filter_notifies_listed_calls() {
        let program = program();
        // load arch, check arch, load nr, one jump per call, two returns.
        assert_eq!(program.len(), 3 + NOTIFIED.len() + 2);
        let notify = program.len() - 1;
        for (index, number) in NOTIFIED.iter().enumerate() {
            let position = 3 + index;
            let jump = &program[position];
            assert_eq!(jump.k, *number as u32);
            assert_eq!(position + 1 + usize::from(jump.jt), notify);
        }
        assert_eq!(program[1].jf as usize + 2, notify - 1);
        assert_eq!(program[notify].k, libc::SECCOMP_RET_USER_NOTIF);
    }

    #[test]
    fn peer_address_rewritten_to_loopback() {
        let mut bytes = ipv6(Ipv4Addr::new(127, 18, 0, 2).to_ipv6_mapped(), 5432);
        set_loopback(&mut bytes);
        set_port(&mut bytes, 40000);
        let address = SocketAddress::parse(&bytes).unwrap();
        assert_eq!(
            address,
            SocketAddress {
                host: Host::Own,
                port: 40000
            }
        );
    }
}
