//! The seccomp filter that hands a container's calls to the supervisor,
//! and the socket pair that carries its listener from the forked child to
//! sidewhale.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

/// `AUDIT_ARCH_*` of the architecture sidewhale runs on.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

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

/// Runs `call` with a message of one byte whose control buffer has room
/// for one `cmsghdr` with one descriptor, suitably aligned. Allocates
/// nothing, so that it may run between fork and exec.
fn with_message<T>(call: impl FnOnce(&mut libc::msghdr) -> T) -> T {
    let mut control = [0u64; 4];
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = size_of_val(&control);
    call(&mut message)
}

/// Sends `fd` as `SCM_RIGHTS` with one byte of data. Allocates nothing.
fn send_fd(socket: RawFd, fd: RawFd) -> io::Result<()> {
    with_message(|message| {
        // SAFETY: the message's pointers refer to buffers that outlive
        // sendmsg, and its control buffer is larger than CMSG_SPACE of
        // one int.
        unsafe {
            message.msg_controllen = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as usize;
            let header = libc::CMSG_FIRSTHDR(message);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<RawFd>(), fd);
            if libc::sendmsg(socket, message, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    })
}

/// Receives one descriptor sent by `send_fd`, without waiting.
fn receive_fd(socket: &OwnedFd) -> io::Result<OwnedFd> {
    with_message(|message| {
        // SAFETY: as in `send_fd`. The received descriptor is owned here.
        unsafe {
            let flags = libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
            if libc::recvmsg(socket.as_raw_fd(), message, flags) < 0 {
                return Err(io::Error::last_os_error());
            }
            let header = libc::CMSG_FIRSTHDR(message);
            if header.is_null() || (*header).cmsg_type != libc::SCM_RIGHTS {
                return Err(io::Error::other("the child sent no seccomp listener"));
            }
            let fd = std::ptr::read_unaligned(libc::CMSG_DATA(header).cast::<RawFd>());
            Ok(OwnedFd::from_raw_fd(fd))
        }
    })
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
    // The child fails to load its libraries once the listener is closed,
    // and prints that error on stderr.
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
