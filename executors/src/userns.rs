//! User namespaces that map every id of sidewhale's own user namespace,
//! for executors that run as uid 0 there (real root, or root of a user
//! namespace with a subordinate id range).
//!
//! Each container gets two nested namespaces. The outer one is owned by
//! uid 0 and maps every id sidewhale's namespace maps, each to itself.
//! The inner one is a child of the outer one, owned by the container's
//! user, with the same identity map. A process that enters the outer
//! namespace and switches to that user has all capabilities in the inner
//! one as its owner, so bwrap 0.8.0 can set up the sandbox there without
//! changing its uid (`--userns` makes bwrap call `setuid` before the
//! mounts, which drops the capabilities of any other user).
//!
//! Only processes in the outer namespace hold the owner's rights over
//! the inner one, and no long-lived process stays there, so a host
//! process that happens to run as the same uid gains nothing.
//!
//! A namespace lives as long as a process or an open descriptor refers
//! to it. The processes forked here end before `create` returns, and the
//! returned descriptors keep both namespaces until the sandbox's own
//! processes have joined them.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The descriptors of a container's two user namespaces.
#[derive(Debug)]
pub(crate) struct ContainerUserNamespace {
    /// Owned by uid 0 of sidewhale's namespace.
    pub outer: OwnedFd,
    /// Owned by the container's user, a child of `outer`.
    pub inner: OwnedFd,
}

impl ContainerUserNamespace {
    /// Creates both namespaces for a sandbox whose processes start as
    /// `uid`. Blocks while the helper processes run, for a few
    /// milliseconds.
    pub fn create(uid: u32) -> io::Result<ContainerUserNamespace> {
        let uid_map = identity_map(&std::fs::read_to_string("/proc/self/uid_map")?)?;
        let gid_map = identity_map(&std::fs::read_to_string("/proc/self/gid_map")?)?;

        let outer_keeper = Keeper::spawn(None)?;
        let outer_path = format!("/proc/{}", outer_keeper.pid);
        std::fs::write(format!("{outer_path}/uid_map"), &uid_map)
            .map_err(|e| annotate(e, "write the outer user namespace's uid_map"))?;
        std::fs::write(format!("{outer_path}/gid_map"), &gid_map)
            .map_err(|e| annotate(e, "write the outer user namespace's gid_map"))?;
        let outer = OwnedFd::from(File::open(format!("{outer_path}/ns/user"))?);

        let inner_keeper = Keeper::spawn(Some((outer.as_raw_fd(), uid)))?;
        let inner_path = format!("/proc/{}", inner_keeper.pid);
        // Only a process inside the outer namespace may write the maps of
        // its child namespace.
        write_maps_from(
            outer.as_raw_fd(),
            &[
                (format!("{inner_path}/uid_map"), uid_map),
                (format!("{inner_path}/gid_map"), gid_map),
            ],
        )?;
        let inner = OwnedFd::from(File::open(format!("{inner_path}/ns/user"))?);

        Ok(ContainerUserNamespace { outer, inner })
    }
}

/// Returns whether this process can create namespaces with `create`,
/// that is whether it is uid 0 of its user namespace with the
/// capabilities to write arbitrary id maps and to join namespaces.
pub(crate) fn can_map_every_id() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return false;
    }
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let Some(effective) = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    else {
        return false;
    };
    // Capability numbers from linux/capability.h.
    const CAP_SETGID: u32 = 6;
    const CAP_SETUID: u32 = 7;
    const CAP_SYS_ADMIN: u32 = 21;
    [CAP_SETUID, CAP_SETGID, CAP_SYS_ADMIN]
        .iter()
        .all(|cap| effective & (1u64 << cap) != 0)
}

/// Returns the map that sends each id of the `/proc/self/uid_map` (or
/// `gid_map`) text `own_map` to itself: `inside inside count` per line.
fn identity_map(own_map: &str) -> io::Result<String> {
    let mut map = String::new();
    for line in own_map.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [inside, _outside, count] = fields[..] else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("invalid id map line {line:?}"),
            ));
        };
        map.push_str(&format!("{inside} {inside} {count}\n"));
    }
    if map.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "this process's user namespace maps no ids",
        ));
    }
    Ok(map)
}

fn annotate(error: io::Error, action: &str) -> io::Error {
    io::Error::new(error.kind(), format!("{action}: {error}"))
}

/// A forked process that has created a user namespace and waits until it
/// is dropped. It dies with the thread that forked it, so a crash of
/// sidewhale leaves none behind.
struct Keeper {
    pid: libc::pid_t,
}

impl Keeper {
    /// Forks a keeper. With `parent = Some((fd, uid))` it first joins the
    /// user namespace `fd` and switches to `uid` there, so that the new
    /// namespace is a child of `fd`'s and owned by `uid`.
    fn spawn(parent: Option<(RawFd, u32)>) -> io::Result<Keeper> {
        let (ready_read, ready_write) = pipe()?;

        // SAFETY: the child only makes async-signal-safe system calls
        // (prctl, setns, setresuid, unshare, write, pause, _exit) on
        // values prepared before the fork; it does not allocate.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(annotate(io::Error::last_os_error(), "fork a keeper"));
        }
        if pid == 0 {
            // SAFETY: see above; the child never returns.
            unsafe { keeper_main(parent, ready_write.as_raw_fd()) }
        }
        let keeper = Keeper { pid };
        drop(ready_write);

        let mut byte = [0u8; 1];
        let read = retry_eintr(|| {
            // SAFETY: `byte` is a valid buffer of one byte.
            unsafe { libc::read(ready_read.as_raw_fd(), byte.as_mut_ptr().cast(), 1) }
        });
        match read {
            1 => Ok(keeper),
            _ => {
                let status = keeper.reap();
                Err(io::Error::other(format!(
                    "failed to create a user namespace: the keeper process exited \
                     ({}) before it was ready",
                    describe_helper_status(status, KEEPER_STEPS)
                )))
            }
        }
    }

    /// Kills the keeper and reaps it. Returns its wait status.
    fn reap(mut self) -> libc::c_int {
        let status = self.kill_and_wait();
        // The pid may be reused once reaped, so `drop` must not kill it.
        self.pid = 0;
        status
    }

    fn kill_and_wait(&mut self) -> libc::c_int {
        let mut status = 0;
        // SAFETY: `pid` is a child of this process that nobody else reaps.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            retry_eintr(|| libc::waitpid(self.pid, &mut status, 0) as isize);
        }
        status
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        if self.pid > 0 {
            self.kill_and_wait();
        }
    }
}

/// The steps of `keeper_main`, by the exit code that reports their
/// failure.
const KEEPER_STEPS: &[&str] = &[
    "",
    "prctl",
    "setns",
    "setresuid",
    "unshare",
    "write",
    "prctl(PR_SET_DUMPABLE)",
];

/// The body of a keeper: see `Keeper::spawn`. Exits with the number of
/// the step that failed.
unsafe fn keeper_main(parent: Option<(RawFd, u32)>, ready: RawFd) -> ! {
    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
        libc::_exit(1);
    }
    if let Some((namespace, uid)) = parent {
        if libc::setns(namespace, libc::CLONE_NEWUSER) != 0 {
            libc::_exit(2);
        }
        if libc::setresuid(uid, uid, uid) != 0 {
            libc::_exit(3);
        }
    }
    // Changing ids (here, or in a rootless sidewhale before the fork)
    // clears the dumpable flag. The keeper's /proc files would then belong
    // to the host's root, which the map writer cannot open unless
    // sidewhale is the host's root.
    if libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) != 0 {
        libc::_exit(6);
    }
    if libc::unshare(libc::CLONE_NEWUSER) != 0 {
        libc::_exit(4);
    }
    if libc::write(ready, b"r".as_ptr().cast(), 1) != 1 {
        libc::_exit(5);
    }
    loop {
        libc::pause();
    }
}

/// The steps of `writer_main`, by the exit code that reports their
/// failure. Codes from 10 on are `10 + 2 * file + (0 for open, 1 for
/// write)`.
const WRITER_STEPS: &[&str] = &["", "prctl", "setns"];

/// Writes `files` (path and contents) from a forked process that has
/// joined the user namespace `namespace`.
fn write_maps_from(namespace: RawFd, files: &[(String, String)]) -> io::Result<()> {
    let files: Vec<(CString, &[u8])> = files
        .iter()
        .map(|(path, contents)| {
            CString::new(path.as_str())
                .map(|path| (path, contents.as_bytes()))
                .map_err(|_| io::Error::other(format!("path {path:?} contains a NUL byte")))
        })
        .collect::<io::Result<_>>()?;

    // SAFETY: the child only makes async-signal-safe system calls
    // (prctl, setns, open, write, close, _exit) on values prepared before
    // the fork; it does not allocate.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(annotate(
            io::Error::last_os_error(),
            "fork an id map writer",
        ));
    }
    if pid == 0 {
        // SAFETY: see above; the child never returns.
        unsafe { writer_main(namespace, &files) }
    }

    let mut status = 0;
    // SAFETY: `pid` is a child of this process that nobody else reaps.
    retry_eintr(|| unsafe { libc::waitpid(pid, &mut status, 0) as isize });
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        return Ok(());
    }
    let code = libc::WEXITSTATUS(status);
    let step = if code >= 10 {
        let index = usize::try_from(code - 10).unwrap_or(usize::MAX);
        let action = if index % 2 == 0 { "open" } else { "write" };
        match files.get(index / 2) {
            Some((path, _)) => format!("{action} {}", path.to_string_lossy()),
            None => format!("step {code}"),
        }
    } else {
        describe_helper_status(status, WRITER_STEPS)
    };
    Err(io::Error::other(format!(
        "failed to write the id maps of a container's user namespace ({step})"
    )))
}

unsafe fn writer_main(namespace: RawFd, files: &[(CString, &[u8])]) -> ! {
    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
        libc::_exit(1);
    }
    if libc::setns(namespace, libc::CLONE_NEWUSER) != 0 {
        libc::_exit(2);
    }
    for (index, (path, contents)) in files.iter().enumerate() {
        let code = 10 + 2 * index as libc::c_int;
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            libc::_exit(code);
        }
        // An id map must arrive in a single write.
        let written = libc::write(fd, contents.as_ptr().cast(), contents.len());
        if usize::try_from(written).ok() != Some(contents.len()) {
            libc::_exit(code + 1);
        }
        libc::close(fd);
    }
    libc::_exit(0)
}

/// Names the failed step of a helper from its wait status.
fn describe_helper_status(status: libc::c_int, steps: &[&str]) -> String {
    if libc::WIFSIGNALED(status) {
        return format!("killed by signal {}", libc::WTERMSIG(status));
    }
    let code = libc::WEXITSTATUS(status);
    match usize::try_from(code).ok().and_then(|code| steps.get(code)) {
        Some(step) if !step.is_empty() => format!("{step} failed"),
        _ => format!("exit code {code}"),
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    unsafe { Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))) }
}

fn retry_eintr(mut call: impl FnMut() -> isize) -> isize {
    loop {
        let result = call();
        if result >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return result;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_map_of_initial_namespace() {
        let map = identity_map("         0          0 4294967295\n").unwrap();

        assert_eq!(map, "0 0 4294967295\n");
    }

    #[test]
    fn identity_map_of_subordinate_range() {
        let own = "         0       1000          1\n         1     100000      65536\n";

        let map = identity_map(own).unwrap();

        assert_eq!(map, "0 0 1\n1 1 65536\n");
    }

    #[test]
    fn identity_map_rejects_invalid_line() {
        assert!(identity_map("0 0\n").is_err());
    }
}
