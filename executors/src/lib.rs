//! Executors of sidewhale: ways of running a container's processes on a
//! host without a Docker daemon.
//!
//! `ProotExecutor` runs image entrypoints under proot, which emulates
//! `chroot`, bind mounts and user ids with ptrace, so sidewhale can run as
//! an unprivileged user. `BubblewrapExecutor` uses bwrap and Linux
//! namespaces, unprivileged where user namespaces are allowed.
//! `ChrootExecutor` uses `chroot(2)` and a mount namespace, as root.
//! `PluginExecutor` runs an executor loaded from a shared library through
//! the C ABI of `sidewhale-plugin-abi`.

mod chroot;
mod bubblewrap;
mod control;
mod launch;
mod plugin;
mod procfs;
mod registry;
mod proot;
mod pty;
mod relocation;
mod rootfs;
mod seccomp;
mod spawn;
mod user;
mod userns;

pub use bubblewrap::{BubblewrapExecutor, BubblewrapOptions};
pub use chroot::ChrootExecutor;
pub use plugin::{plugin_paths, PluginExecutor};
pub use proot::{ProotExecutor, ProotOptions};
pub use rootfs::{Resolved, RootfsView, DEFAULT_PATH};
