//! An example executor plugin for sidewhale, named `example`.
//!
//! It runs containers with `sidewhale-executors`' proot executor and
//! exposes it through the plugin ABI. That shows what any plugin has to
//! do: run async code on a runtime of its own, keep a table of processes
//! by handle, and hand the host one fd per stream. The proot executor's
//! streams are async readers and writers, not fds, so this plugin copies
//! them through pipes. A plugin that spawns processes itself can return
//! its pipe ends directly.
//!
//! Build it with `cargo build -p sidewhale-example-executor` and load
//! `target/debug/libsidewhale_example_executor.so` with
//! `sidewhale --executor-plugin`.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::future::BoxFuture;
use sidewhale_core::executor::{BoxedReader, BoxedWriter};
use sidewhale_core::{ContainerSpec, Executor, Process, ProcessControl};
use sidewhale_executors::{ProotExecutor, ProotOptions};
use sidewhale_plugin_abi::export::{ExecutorPlugin, PluginProcess};
use sidewhale_plugin_abi::{ContainerRequest, ExecRequest, PluginError, PluginExit, ProbeResponse};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

sidewhale_plugin_abi::export_executor!(ExamplePlugin::new());

/// Worker threads of the plugin's runtime. The work is copying streams
/// and waiting for processes, which needs little CPU.
const WORKER_THREADS: usize = 2;

struct ExamplePlugin {
    /// The plugin's own Tokio runtime. The host's runtime is a different
    /// copy of Tokio, linked into the sidewhale binary, and cannot run
    /// this library's futures. `Err` contains why it could not be built.
    runtime: Result<Runtime, String>,
    proot: ProotExecutor,
    processes: Mutex<HashMap<u64, Arc<Tracked>>>,
    next_handle: AtomicU64,
}

/// A started process, by handle.
struct Tracked {
    control: Arc<dyn ProcessControl>,
    /// Taken by the one `wait` call.
    exit: Mutex<Option<BoxFuture<'static, sidewhale_core::ExitStatus>>>,
    /// Copies stdout and stderr into the host's pipes; `wait` returns
    /// after they finish, so the host has all output once it has the exit
    /// status.
    output_copies: Mutex<Vec<JoinHandle<()>>>,
    /// Copies the host's stdin pipe into the process; stopped on release.
    input_copy: Option<JoinHandle<()>>,
}

impl ExamplePlugin {
    fn new() -> Self {
        init_logging();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("example-plugin")
            .enable_all()
            .build()
            .map_err(|error| format!("failed to start the plugin's Tokio runtime: {error}"));
        ExamplePlugin {
            runtime,
            proot: ProotExecutor::new(ProotOptions::default()),
            processes: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
        }
    }

    fn runtime(&self) -> Result<&Runtime, PluginError> {
        self.runtime
            .as_ref()
            .map_err(|reason| PluginError::Unavailable {
                reason: reason.clone(),
            })
    }

    fn processes(&self) -> MutexGuard<'_, HashMap<u64, Arc<Tracked>>> {
        self.processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn tracked(&self, handle: u64) -> Result<Arc<Tracked>, PluginError> {
        self.processes()
            .get(&handle)
            .cloned()
            .ok_or_else(|| PluginError::InvalidRequest {
                message: format!("unknown handle {handle}"),
            })
    }

    /// Connects a started process's streams to new pipes and records it.
    fn track(&self, runtime: &Runtime, process: Process) -> Result<PluginProcess, PluginError> {
        let Process {
            stdin,
            stdout,
            stderr,
            control,
            exit,
        } = process;
        let _entered = runtime.enter();

        let mut output_copies = Vec::new();
        let (stdout_fd, copy) = copy_out(stdout)?;
        output_copies.push(copy);
        let stderr_fd = match stderr {
            Some(stderr) => {
                let (fd, copy) = copy_out(stderr)?;
                output_copies.push(copy);
                Some(fd)
            }
            None => None,
        };
        let (stdin_fd, input_copy) = match stdin {
            Some(stdin) => {
                let (fd, copy) = copy_in(stdin)?;
                (Some(fd), Some(copy))
            }
            None => (None, None),
        };

        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let tracked = Tracked {
            control,
            exit: Mutex::new(Some(exit)),
            output_copies: Mutex::new(output_copies),
            input_copy,
        };
        self.processes().insert(handle, Arc::new(tracked));

        Ok(PluginProcess {
            handle,
            stdin: stdin_fd,
            stdout: stdout_fd,
            stderr: stderr_fd,
        })
    }
}

impl ExecutorPlugin for ExamplePlugin {
    fn name(&self) -> &str {
        "example"
    }

    fn supports_network_namespace(&self) -> bool {
        self.proot.supports_network_namespace()
    }

    fn probe(&self) -> ProbeResponse {
        let runtime = match self.runtime() {
            Ok(runtime) => runtime,
            Err(error) => {
                return ProbeResponse::Unavailable {
                    reason: error.to_string(),
                }
            }
        };
        match runtime.block_on(self.proot.probe()) {
            sidewhale_core::Probe::Available => ProbeResponse::Available,
            sidewhale_core::Probe::Unavailable(reason) => ProbeResponse::Unavailable { reason },
        }
    }

    fn prepare(&self, container: ContainerRequest) -> Result<(), PluginError> {
        let container = ContainerSpec::from(container);
        Ok(self.runtime()?.block_on(self.proot.prepare(&container))?)
    }

    fn start(&self, container: ContainerRequest) -> Result<PluginProcess, PluginError> {
        let runtime = self.runtime()?;
        let container = ContainerSpec::from(container);
        let process = runtime.block_on(self.proot.start(&container))?;
        self.track(runtime, process)
    }

    fn exec(&self, request: ExecRequest) -> Result<PluginProcess, PluginError> {
        let runtime = self.runtime()?;
        let container = ContainerSpec::from(request.container);
        let process = request.process.into();
        let process = runtime.block_on(self.proot.exec(&container, &process))?;
        self.track(runtime, process)
    }

    fn signal(&self, handle: u64, signal: i32) -> Result<(), PluginError> {
        let _entered = self.runtime()?.enter();
        Ok(self.tracked(handle)?.control.signal(signal)?)
    }

    fn kill_all(&self, handle: u64) -> Result<(), PluginError> {
        let _entered = self.runtime()?.enter();
        Ok(self.tracked(handle)?.control.kill_all()?)
    }

    fn resize(&self, handle: u64, rows: u16, columns: u16) -> Result<(), PluginError> {
        let _entered = self.runtime()?.enter();
        Ok(self.tracked(handle)?.control.resize(rows, columns)?)
    }

    fn pid(&self, handle: u64) -> Result<Option<u32>, PluginError> {
        Ok(self.tracked(handle)?.control.pid())
    }

    fn wait(&self, handle: u64) -> Result<PluginExit, PluginError> {
        let runtime = self.runtime()?;
        let tracked = self.tracked(handle)?;
        let exit = lock(&tracked.exit)
            .take()
            .ok_or_else(|| PluginError::InvalidRequest {
                message: format!("wait was already called for handle {handle}"),
            })?;
        let copies = std::mem::take(&mut *lock(&tracked.output_copies));

        let status = runtime.block_on(async move {
            let status = exit.await;
            for copy in copies {
                // A copy that failed has logged why, and the exit status
                // is still valid.
                let _ = copy.await;
            }
            status
        });
        Ok(status.into())
    }

    fn release(&self, handle: u64) {
        let Some(tracked) = self.processes().remove(&handle) else {
            return;
        };
        if let Some(copy) = &tracked.input_copy {
            copy.abort();
        }
    }

    fn cleanup(&self, container: ContainerRequest) -> Result<(), PluginError> {
        let container = ContainerSpec::from(container);
        Ok(self.runtime()?.block_on(self.proot.cleanup(&container))?)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Returns the read end of a new pipe and a task that copies `reader`
/// into its write end until end of file or until the host closes the read
/// end. Must run inside the plugin's runtime.
fn copy_out(mut reader: BoxedReader) -> Result<(OwnedFd, JoinHandle<()>), PluginError> {
    let (read, write) = pipe()?;
    let mut sender = tokio::net::unix::pipe::Sender::from_owned_fd(write)
        .map_err(|error| PluginError::io("watch an output pipe", &error))?;
    let copy = tokio::spawn(async move {
        if let Err(error) = tokio::io::copy(&mut reader, &mut sender).await {
            // EPIPE: the host closed its end and wants no more output.
            if error.kind() != std::io::ErrorKind::BrokenPipe {
                tracing::warn!(%error, "failed to copy process output to the host");
            }
        }
    });
    Ok((read, copy))
}

/// Returns the write end of a new pipe and a task that copies its read
/// end into `writer` until the host closes the write end. Dropping
/// `writer` at the end closes the process's stdin.
fn copy_in(mut writer: BoxedWriter) -> Result<(OwnedFd, JoinHandle<()>), PluginError> {
    let (read, write) = pipe()?;
    let mut receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(read)
        .map_err(|error| PluginError::io("watch the stdin pipe", &error))?;
    let copy = tokio::spawn(async move {
        if let Err(error) = tokio::io::copy(&mut receiver, &mut writer).await {
            tracing::debug!(%error, "stopped copying stdin to the process");
        }
    });
    Ok((write, copy))
}

/// Creates a pipe whose ends are closed on `exec`, so that processes the
/// proot executor spawns later do not hold them open.
fn pipe() -> Result<(OwnedFd, OwnedFd), PluginError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|errno| PluginError::io("create a pipe", &std::io::Error::from(errno)))
}

/// Sends this library's `tracing` events to stderr with the filter in
/// `SIDEWHALE_LOG`, as sidewhale does for its own. The library has its own
/// copy of `tracing`, which sidewhale's subscriber does not see.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIDEWHALE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
