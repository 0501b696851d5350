//! System calls that run between fork and exec: creating the namespaces,
//! writing the id maps and bringing the loopback interface up.

use std::io;
use std::os::fd::RawFd;

/// The steps a new holder takes before exec. Every buffer is built before
/// the fork, because only async-signal-safe calls may run after it.
pub(crate) struct NamespaceSetup {
    user_namespace: bool,
    /// `0 UID 1`: the current user becomes root in the user namespace.
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
}

impl NamespaceSetup {
    pub(crate) fn new(user_namespace: bool) -> NamespaceSetup {
        // SAFETY: geteuid and getegid have no preconditions and cannot
        // fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        NamespaceSetup {
            user_namespace,
            uid_map: format!("0 {uid} 1\n").into_bytes(),
            gid_map: format!("0 {gid} 1\n").into_bytes(),
        }
    }

    /// Moves the calling process into new namespaces and brings `lo` up.
    /// Runs in the forked child, before exec.
    pub(crate) fn enter(&self) -> io::Result<()> {
        let mut flags = libc::CLONE_NEWNET;
        if self.user_namespace {
            flags |= libc::CLONE_NEWUSER;
        }
        // SAFETY: unshare(2) takes no pointers; the child has one thread,
        // as unsharing a user namespace requires.
        if unsafe { libc::unshare(flags) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if self.user_namespace {
            // An unprivileged process may map only its own ids, and its
            // gid only after giving up setgroups(2).
            write_file(c"/proc/self/setgroups", b"deny")?;
            write_file(c"/proc/self/uid_map", &self.uid_map)?;
            write_file(c"/proc/self/gid_map", &self.gid_map)?;
        }
        bring_loopback_up()
    }
}

fn write_file(path: &std::ffi::CStr, contents: &[u8]) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated and `contents` outlives the call.
    // open, write and close are async-signal-safe.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let written = libc::write(fd, contents.as_ptr().cast(), contents.len());
        let error = io::Error::last_os_error();
        libc::close(fd);
        if written < 0 || written as usize != contents.len() {
            return Err(error);
        }
    }
    Ok(())
}

/// Sets `IFF_UP` on `lo` with the `SIOCSIFFLAGS` ioctl. A new network
/// namespace starts with `lo` down, so even 127.0.0.1 is unreachable.
fn bring_loopback_up() -> io::Result<()> {
    // SAFETY: socket, ioctl and close are async-signal-safe. `request` is
    // a zeroed `ifreq` with a NUL-terminated name, valid for both ioctls,
    // and lives across them.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut request: libc::ifreq = std::mem::zeroed();
        request.ifr_name[0] = b'l' as libc::c_char;
        request.ifr_name[1] = b'o' as libc::c_char;
        let mut result = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut request);
        if result == 0 {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            result = libc::ioctl(fd, libc::SIOCSIFFLAGS, &request);
        }
        let error = io::Error::last_os_error();
        libc::close(fd);
        if result != 0 {
            return Err(error);
        }
    }
    Ok(())
}

/// Joins the namespace that `fd` refers to. Async-signal-safe.
pub(crate) fn setns(fd: RawFd, kind: libc::c_int) -> io::Result<()> {
    // SAFETY: setns(2) takes no pointers. An invalid fd is reported as an
    // error.
    if unsafe { libc::setns(fd, kind) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Explains why namespaces may be unavailable, from the sysctls that
/// restrict them.
pub(crate) fn user_namespace_hint(user_namespace: bool) -> String {
    if !user_namespace {
        return "creating a network namespace needs CAP_SYS_ADMIN; a seccomp \
                profile or container runtime may block unshare(CLONE_NEWNET)"
            .into();
    }
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .map(|text| text.trim().to_string())
    };
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return "unprivileged user namespaces are disabled: set the sysctl \
                kernel.unprivileged_userns_clone=1, or set network.isolation = \"host\""
            .into();
    }
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return "user namespaces are disabled: set the sysctl user.max_user_namespaces \
                to a positive number, or set network.isolation = \"host\""
            .into();
    }
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        return "AppArmor restricts unprivileged user namespaces: set the sysctl \
                kernel.apparmor_restrict_unprivileged_userns=0, or set \
                network.isolation = \"host\""
            .into();
    }
    "a seccomp profile or container runtime may block unshare(CLONE_NEWUSER); \
     set network.isolation = \"host\" to share the host's network"
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_maps_name_current_user() {
        let setup = NamespaceSetup::new(true);
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };

        assert_eq!(setup.uid_map, format!("0 {uid} 1\n").into_bytes());
        assert!(setup.user_namespace);
    }

    #[test]
    fn write_file_reports_missing_path() {
        let error = write_file(c"/nonexistent/sidewhale-netns-test", b"x").unwrap_err();

        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }
}
