//! The `Executor` trait: how a container's processes are run.
//!
//! An executor receives a prepared root filesystem and a process
//! description, and runs that process "inside" the rootfs by whatever means
//! it has (ptrace emulation, namespaces, chroot). The server owns every
//! Docker concept above that: state, logs, restarts, port publishing.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

/// A process to run inside a container: the main process or an exec.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// Entrypoint and command, already joined. `argv[0]` may be a bare
    /// name, which the executor resolves with the `PATH` in `env` against
    /// the container's rootfs, as Docker does.
    pub argv: Vec<String>,
    /// `KEY=VALUE` pairs: the complete environment of the process.
    pub env: Vec<String>,
    /// Absolute path inside the rootfs; empty means `/`.
    pub working_dir: String,
    /// Docker's `User` syntax: empty (root), `name`, `uid`, `name:group`
    /// or `uid:gid`. Numeric ids need no entry in the image's passwd file.
    pub user: String,
    /// Allocate a pseudo-terminal: stdout carries both streams and
    /// `Process::stderr` is `None`.
    pub tty: bool,
    /// Keep stdin open as a pipe. Without it the process reads from
    /// `/dev/null`.
    pub open_stdin: bool,
    /// With `tty`, the terminal's `[rows, columns]` from the process's
    /// start, so that a program reading its size at once gets the
    /// client's. `None` leaves the size to a later resize.
    #[serde(default)]
    pub console_size: Option<[u16; 2]>,
}

/// A host path made visible inside the container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute host path of a file or directory.
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub destination: String,
    pub read_only: bool,
}

/// Everything an executor needs to know about a container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// The 64-hex-digit container id.
    pub id: String,
    /// The container's own writable root filesystem on the host.
    pub rootfs: PathBuf,
    /// A directory the executor may use for its own files (sockets, pid
    /// files). It is removed with the container.
    pub runtime_dir: PathBuf,
    pub hostname: String,
    /// The main process.
    pub process: ProcessSpec,
    /// Mounts in the order they are applied. The server always provides
    /// `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf` and `/dev/shm`.
    pub mounts: Vec<Mount>,
    /// The network namespace every process of the container joins; `None`
    /// shares the host's network. The server sets it only for executors
    /// whose `supports_network_namespace` returns true.
    #[serde(default)]
    pub network: Option<NetworkNamespace>,
    /// Set when the container shares the host's network although it did
    /// not ask for it (no `--network host`), and the executor's
    /// `supports_port_relocation` returns true: the executor then moves
    /// the container's listeners to free host ports and records them here.
    #[serde(skip)]
    pub port_relocation: Option<crate::PortRelocation>,
}

/// A network namespace made by the server for one container, named by a
/// process that lives in it for as long as the container runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkNamespace {
    /// Host pid of the process whose `/proc/PID/ns/net` is the namespace.
    pub holder_pid: u32,
    /// Whether the namespace is owned by a user namespace of its own
    /// (`/proc/PID/ns/user`), which a process must join first. That is
    /// the case when sidewhale runs unprivileged.
    pub user_namespace: bool,
}

/// The end of a process: its exit code or the signal that killed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// The process called `exit` with this code.
    Code(i32),
    /// The process was killed by this signal number.
    Signal(i32),
}

impl ExitStatus {
    /// Returns the exit code Docker reports: the code itself, or 128 plus
    /// the signal number for a process killed by a signal.
    pub fn code(&self) -> i64 {
        match *self {
            ExitStatus::Code(code) => i64::from(code),
            ExitStatus::Signal(signal) => 128 + i64::from(signal),
        }
    }
}

/// Signals and terminal control for a running process.
///
/// Implementations must be callable from any task while another task
/// awaits `Process::exit`.
pub trait ProcessControl: Send + Sync {
    /// Delivers `signal` to the container's main process as the image sees
    /// it (not to a wrapper such as proot). Returns `Ok` when the process
    /// has already exited.
    fn signal(&self, signal: i32) -> Result<(), ExecutorError>;

    /// Kills every process the container started, including daemons that
    /// left the main process's session. Idempotent.
    fn kill_all(&self) -> Result<(), ExecutorError>;

    /// Resizes the pseudo-terminal. Does nothing without a TTY.
    fn resize(&self, _rows: u16, _columns: u16) -> Result<(), ExecutorError> {
        Ok(())
    }

    /// Returns the host pid of the main process as the image sees it, once
    /// it is known.
    fn pid(&self) -> Option<u32>;

    /// Returns the host pid of the first process the executor spawned (a
    /// wrapper such as proot, or the main process itself), known as soon as
    /// `start` returns. It must lead a process group holding the container's
    /// processes, so that a restarted server can kill what a crashed one
    /// left running. `None` when the executor has no such process.
    fn group_leader(&self) -> Option<u32> {
        None
    }
}

pub type BoxedReader = Pin<Box<dyn AsyncRead + Send>>;
pub type BoxedWriter = Pin<Box<dyn AsyncWrite + Send>>;

/// A started process: its streams, its control and its exit.
pub struct Process {
    /// Present when `ProcessSpec::open_stdin` was set. Dropping it closes
    /// the process's stdin.
    pub stdin: Option<BoxedWriter>,
    pub stdout: BoxedReader,
    /// `None` with a TTY, where stderr is merged into stdout.
    pub stderr: Option<BoxedReader>,
    pub control: Arc<dyn ProcessControl>,
    /// Resolves once the main process has exited and its output pipes are
    /// drained by the executor's side. It never fails: an executor that
    /// loses track of its process reports `ExitStatus::Signal(9)`.
    pub exit: BoxFuture<'static, ExitStatus>,
}

/// Whether an executor can run on this host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Probe {
    Available,
    /// The reason, written so that a user knows what to change.
    Unavailable(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("executor {executor} is not available on this host: {reason}")]
    Unavailable { executor: String, reason: String },
    /// The entrypoint or exec command does not exist in the rootfs
    /// (Docker's exit code 127).
    #[error("executable file not found in $PATH: {0}")]
    NotFound(String),
    /// The entrypoint exists but cannot be executed (exit code 126).
    #[error("permission denied: {0} is not executable")]
    NotExecutable(String),
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    #[error("invalid working directory {0}")]
    InvalidWorkingDir(String),
    #[error("failed to {operation}: {source}")]
    Io {
        operation: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl ExecutorError {
    pub fn io(operation: impl Into<String>, source: std::io::Error) -> Self {
        ExecutorError::Io { operation: operation.into(), source }
    }
}

/// A way of running container processes.
///
/// The server calls `probe` once at start-up, then `prepare` when a
/// container is created, `start` for its main process, `exec` for further
/// processes while it runs, and `cleanup` when it is removed. `sidewhale`
/// ships `proot`, which needs no privileges. Implement this trait for a
/// host where another mechanism runs images better or faster.
#[async_trait]
pub trait Executor: Send + Sync {
    /// The name clients select it by, as in `docker run --runtime NAME`.
    fn name(&self) -> &str;

    /// Checks whether this executor can run here. Must be cheap enough to
    /// call at start-up and must not leave processes behind.
    async fn probe(&self) -> Probe;

    /// Whether `start` and `exec` run their processes in
    /// `ContainerSpec::network`. An executor that returns false always
    /// gets `None` there, and its containers share the host's network.
    fn supports_network_namespace(&self) -> bool {
        false
    }

    /// Returns whether `start` and `exec` honour
    /// `ContainerSpec::port_relocation` on this host. An executor that returns false always gets `None`
    /// there.
    fn supports_port_relocation(&self) -> bool {
        false
    }

    /// Prepares a created container before it starts. Clients copy files
    /// into the rootfs between create and start, so this must not assume
    /// the rootfs is final.
    async fn prepare(&self, _container: &ContainerSpec) -> Result<(), ExecutorError> {
        Ok(())
    }

    /// Starts the container's main process. The process's streams must be
    /// read by the caller, or the process blocks on a full pipe.
    async fn start(&self, container: &ContainerSpec) -> Result<Process, ExecutorError>;

    /// Starts a further process in the running container.
    async fn exec(
        &self,
        container: &ContainerSpec,
        process: &ProcessSpec,
    ) -> Result<Process, ExecutorError>;

    /// Releases everything `prepare` and `start` set up. Called after the
    /// main process has exited; must succeed when called twice.
    async fn cleanup(&self, _container: &ContainerSpec) -> Result<(), ExecutorError> {
        Ok(())
    }
}
