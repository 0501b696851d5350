//! Executors of sidewhale: ways of running a container's processes on a
//! host without a Docker daemon.
//!
//! `ProotExecutor` runs image entrypoints under proot, which emulates
//! `chroot`, bind mounts and user ids with ptrace, so sidewhale can run as
//! an unprivileged user.

mod control;
mod procfs;
mod proot;
mod pty;
mod rootfs;
mod spawn;
mod user;

pub use proot::{ProotExecutor, ProotOptions};
pub use rootfs::DEFAULT_PATH;
