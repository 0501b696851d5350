//! A seccomp filter that makes `statx(2)` fail with `ENOSYS` under proot.
//!
//! proot 5.1.0, the release in Debian 12, predates `statx` and does not
//! translate its path: a process that calls it inspects the host's file
//! system rather than the container's. GNU coreutils' `ls` and `stat`
//! call `statx`, so `ls -l /data` reports a directory of the image as
//! missing, and shows the host's `/etc` in its place. With `ENOSYS`,
//! glibc's and musl's `statx` wrappers fall back to `fstatat`, which
//! proot translates. The filter is installed in the proot process before
//! it starts, so it covers every process of the container.

use std::collections::BTreeMap;
use std::io;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// The compiled filter, ready for `install` in a forked child.
#[derive(Clone, Debug)]
pub(crate) struct StatxFilter {
    program: BpfProgram,
}

impl StatxFilter {
    /// Compiles the filter for this machine's architecture.
    pub fn new() -> io::Result<StatxFilter> {
        let arch = TargetArch::try_from(std::env::consts::ARCH)
            .map_err(|error| io::Error::other(format!("seccomp: {error}")))?;
        let rules = BTreeMap::from([(libc::SYS_statx, Vec::new())]);
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )
        .map_err(|error| io::Error::other(format!("seccomp: {error}")))?;
        let program = BpfProgram::try_from(filter)
            .map_err(|error| io::Error::other(format!("seccomp: {error}")))?;
        Ok(StatxFilter { program })
    }

    /// Installs the filter in the calling process. Runs between fork and
    /// exec, so it makes only system calls. It first tries without
    /// `no_new_privs`, which needs `CAP_SYS_ADMIN` and keeps set-user-ID
    /// programs in the container working for root. When that fails, it
    /// sets `no_new_privs`, as any unprivileged process must.
    pub fn install(&self) -> io::Result<()> {
        // seccompiler's `sock_filter` is the kernel's `struct sock_filter`,
        // as libc's is, so the pointer may be cast.
        let program = libc::sock_fprog {
            len: u16::try_from(self.program.len()).map_err(|_| io::ErrorKind::InvalidInput)?,
            filter: self.program.as_ptr().cast::<libc::sock_filter>().cast_mut(),
        };
        if seccomp_set_filter(&program).is_ok() {
            return Ok(());
        }
        // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes plain integers.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        seccomp_set_filter(&program)
    }
}

fn seccomp_set_filter(program: &libc::sock_fprog) -> io::Result<()> {
    // SAFETY: the kernel copies the program from `program`, which points
    // to memory that outlives the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            std::ptr::from_ref(program),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
