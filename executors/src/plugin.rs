//! Executors loaded from shared libraries through the C ABI of
//! `sidewhale-plugin-abi`.
//!
//! A plugin runs inside the sidewhale process, so a crash or `abort` in it
//! ends sidewhale. Everything else a plugin can do wrong (return an error,
//! panic, return malformed JSON or invalid fds) fails only the request
//! that caused it.

use std::os::fd::{FromRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt;
use serde::Serialize;
use sidewhale_core::executor::{BoxedReader, BoxedWriter};
use sidewhale_core::{
    ContainerSpec, Executor, ExecutorError, ExitStatus, Probe, Process, ProcessControl, ProcessSpec,
};
use sidewhale_plugin_abi::{
    ContainerRequest, EntryFunction, ExecRequest, FreeBufferFunction, KillAllFunction, PidFunction,
    PluginBuffer, PluginError, PluginExitStatus, PluginTable, ProbeFunction, ProbeResponse,
    ReleaseFunction, RequestFunction, ResizeFunction, SignalFunction, StartFunction,
    StartedProcess, WaitFunction, ABI_VERSION, ENTRY_SYMBOL, EXIT_CODE, EXIT_SIGNAL,
    FLAG_NETWORK_NAMESPACE, STATUS_ERROR, STATUS_OK,
};

use crate::pty::PtyStream;

/// The maximum number of characters kept from a plugin error that cannot
/// be parsed.
const MAX_RAW_ERROR_CHARS: usize = 500;

/// An executor implemented by a plugin library.
pub struct PluginExecutor {
    plugin: Arc<LoadedPlugin>,
}

/// A loaded library and its checked function table.
struct LoadedPlugin {
    name: String,
    path: PathBuf,
    network_namespace: bool,
    functions: Functions,
    /// Kept so the handle is not closed. The library is opened with
    /// `RTLD_NODELETE`, so it stays mapped even after that: threads the
    /// plugin started may still run its code.
    _library: libloading::os::unix::Library,
}

/// The functions of a version 1 table, checked to be non-null.
#[derive(Clone, Copy)]
struct Functions {
    free_buffer: FreeBufferFunction,
    probe: ProbeFunction,
    prepare: RequestFunction,
    start: StartFunction,
    exec: StartFunction,
    signal: SignalFunction,
    kill_all: KillAllFunction,
    resize: ResizeFunction,
    pid: PidFunction,
    wait: WaitFunction,
    release: ReleaseFunction,
    cleanup: RequestFunction,
}

impl PluginExecutor {
    /// Loads the plugin library at `path`, checks that it speaks this
    /// sidewhale's ABI version and that its table is complete.
    pub fn load(path: impl AsRef<Path>) -> Result<PluginExecutor, ExecutorError> {
        let path = path.as_ref();
        let failed = |reason: String| {
            ExecutorError::Other(format!(
                "failed to load executor plugin {}: {reason}",
                path.display()
            ))
        };

        // dlopen searches the library path for a name without a slash, so
        // pass an absolute path; this also reports a missing file plainly.
        let absolute = std::fs::canonicalize(path).map_err(|error| failed(error.to_string()))?;
        let flags =
            libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL | libc::RTLD_NODELETE;
        // SAFETY: loading a library runs its initialisers, which is as
        // safe as calling unknown foreign code. The operator vouches for a
        // plugin by configuring it, as for any code loaded in-process.
        let library = unsafe { libloading::os::unix::Library::open(Some(&absolute), flags) }
            .map_err(|error| failed(error.to_string()))?;

        // SAFETY: the symbol is declared with the `EntryFunction` type by
        // the ABI; a library that exports it with another type breaks the
        // ABI, which cannot be checked from here.
        let entry =
            unsafe { library.get::<EntryFunction>(ENTRY_SYMBOL.as_bytes()) }.map_err(|error| {
                failed(format!(
                    "not a sidewhale executor plugin: it does not export {ENTRY_SYMBOL} ({error})"
                ))
            })?;
        let entry: EntryFunction = *entry;
        // SAFETY: `entry` has the ABI's signature and takes a plain integer.
        let table_pointer = catch_unwind(|| unsafe { entry(ABI_VERSION) })
            .map_err(|_| failed(format!("{ENTRY_SYMBOL} panicked")))?;
        if table_pointer.is_null() {
            return Err(failed(format!(
                "{ENTRY_SYMBOL} returned no table: the plugin could not initialise"
            )));
        }

        // SAFETY: the ABI requires every version's table to start with a
        // `u32` version, so reading one `u32` is valid whatever the
        // plugin's version is.
        let version = unsafe { table_pointer.cast::<u32>().read() };
        if version != ABI_VERSION {
            return Err(ExecutorError::Other(format!(
                "executor plugin {} speaks ABI v{version}, this sidewhale speaks \
                 v{ABI_VERSION}: rebuild the plugin against sidewhale-plugin-abi for ABI \
                 v{ABI_VERSION}",
                path.display()
            )));
        }
        // SAFETY: the version is ours, so the pointer refers to a complete
        // version 1 table, which must outlive the (never unloaded) library.
        let table: PluginTable = unsafe { table_pointer.read() };

        let functions = Functions::from_table(&table).map_err(failed)?;
        let name = table_name(&table).map_err(failed)?;

        tracing::info!(
            executor = %name,
            path = %path.display(),
            abi_version = version,
            "loaded executor plugin"
        );
        Ok(PluginExecutor {
            plugin: Arc::new(LoadedPlugin {
                name,
                path: path.to_path_buf(),
                network_namespace: table.flags & FLAG_NETWORK_NAMESPACE != 0,
                functions,
                _library: library,
            }),
        })
    }

    /// Returns the path the plugin was loaded from.
    pub fn path(&self) -> &Path {
        &self.plugin.path
    }

    /// Runs `start` or `exec` on a blocking thread and wraps the process
    /// the plugin returns.
    async fn launch(
        &self,
        operation: &'static str,
        function: StartFunction,
        request: Vec<u8>,
        process: &ProcessSpec,
    ) -> Result<Process, ExecutorError> {
        let plugin = self.plugin.clone();
        let started = tokio::task::spawn_blocking(move || {
            let mut started = StartedProcess::empty();
            plugin.call(operation, |error| {
                // SAFETY: the request buffer and both out-parameters are
                // valid for the duration of the call.
                unsafe { function(request.as_ptr(), request.len(), &mut started, error) }
            })?;
            Ok::<_, ExecutorError>(started)
        })
        .await
        .map_err(|error| self.plugin.failure(operation, error.to_string()))??;

        let handle = Arc::new(ProcessHandle {
            plugin: self.plugin.clone(),
            handle: started.handle,
        });
        match self.wrap(operation, &handle, started, process) {
            Ok(process) => Ok(process),
            Err(error) => {
                // The plugin started a process the host cannot use: stop
                // it. `handle` releases it when dropped.
                if let Err(kill_error) = handle.kill_all() {
                    tracing::warn!(
                        executor = %self.plugin.name,
                        error = %kill_error,
                        "failed to kill a process whose streams were rejected"
                    );
                }
                Err(error)
            }
        }
    }

    /// Takes ownership of the fds in `started` and builds the `Process`.
    fn wrap(
        &self,
        operation: &str,
        handle: &Arc<ProcessHandle>,
        started: StartedProcess,
        process: &ProcessSpec,
    ) -> Result<Process, ExecutorError> {
        let [stdin, stdout, stderr] = self.take_fds(operation, &started)?;

        let stdout = stdout.ok_or_else(|| {
            self.plugin
                .failure(operation, "the plugin returned no stdout fd".into())
        })?;
        let stderr = match (process.tty, stderr) {
            (true, _) => None,
            (false, Some(stderr)) => Some(stderr),
            (false, None) => {
                return Err(self.plugin.failure(
                    operation,
                    "the plugin returned no stderr fd for a process without a TTY".into(),
                ))
            }
        };
        let stdin = if process.open_stdin { stdin } else { None };

        let stdin = stdin
            .map(|fd| {
                self.stream(operation, fd)
                    .map(|s| Box::pin(s) as BoxedWriter)
            })
            .transpose()?;
        let stdout = Box::pin(self.stream(operation, stdout)?) as BoxedReader;
        let stderr = stderr
            .map(|fd| {
                self.stream(operation, fd)
                    .map(|s| Box::pin(s) as BoxedReader)
            })
            .transpose()?;

        let exit = wait_for_exit(handle.clone())?;
        Ok(Process {
            stdin,
            stdout,
            stderr,
            control: Arc::new(PluginControl {
                handle: handle.clone(),
            }),
            exit,
        })
    }

    /// Takes ownership of the stdin, stdout and stderr fds that the plugin
    /// handed over, after checking that each is open and that none
    /// repeats. An fd that fails a check is left alone, because it may not
    /// belong to the plugin; the valid ones are closed on error.
    fn take_fds(
        &self,
        operation: &str,
        started: &StartedProcess,
    ) -> Result<[Option<OwnedFd>; 3], ExecutorError> {
        let raw = [started.stdin_fd, started.stdout_fd, started.stderr_fd];
        let mut checked = [None, None, None];
        let mut problem = None;

        for (index, fd) in raw.iter().copied().enumerate() {
            if fd < 0 {
                continue;
            }
            if raw[..index].contains(&fd) {
                problem = Some(format!("the plugin returned fd {fd} for two streams"));
                continue;
            }
            // SAFETY: F_GETFD only reads the fd's flags and fails with
            // EBADF for a closed fd.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                problem = Some(format!("the plugin returned fd {fd}, which is not open"));
                continue;
            }
            // SAFETY: the fd is open, and the ABI transfers its ownership to
            // the host with a successful `start` or `exec`. The check above
            // ensures that no other `OwnedFd` here takes the same fd.
            checked[index] = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }

        match problem {
            Some(problem) => Err(self.plugin.failure(operation, problem)),
            None => Ok(checked),
        }
    }

    fn stream(&self, operation: &str, fd: OwnedFd) -> Result<PtyStream, ExecutorError> {
        // `PtyStream` reads and writes any pollable fd, and also turns the
        // `EIO` of a pseudo-terminal master into end of file.
        PtyStream::new(fd).map_err(|error| {
            self.plugin.failure(
                operation,
                format!("the plugin returned an fd that cannot be polled ({error})"),
            )
        })
    }

    /// Calls `prepare` or `cleanup` with the container on a blocking
    /// thread.
    async fn call_with_container(
        &self,
        operation: &'static str,
        function: RequestFunction,
        container: &ContainerSpec,
    ) -> Result<(), ExecutorError> {
        let request = self
            .plugin
            .encode(operation, &ContainerRequest::from(container))?;
        let plugin = self.plugin.clone();
        tokio::task::spawn_blocking(move || {
            plugin.call(operation, |error| {
                // SAFETY: the request buffer and the out-parameter are
                // valid for the duration of the call.
                unsafe { function(request.as_ptr(), request.len(), error) }
            })
        })
        .await
        .map_err(|error| self.plugin.failure(operation, error.to_string()))?
        .map(|_| ())
    }
}

impl Functions {
    fn from_table(table: &PluginTable) -> Result<Functions, String> {
        fn required<T>(function: Option<T>, name: &str) -> Result<T, String> {
            function.ok_or_else(|| format!("its function table lacks `{name}` (null)"))
        }
        Ok(Functions {
            free_buffer: required(table.free_buffer, "free_buffer")?,
            probe: required(table.probe, "probe")?,
            prepare: required(table.prepare, "prepare")?,
            start: required(table.start, "start")?,
            exec: required(table.exec, "exec")?,
            signal: required(table.signal, "signal")?,
            kill_all: required(table.kill_all, "kill_all")?,
            resize: required(table.resize, "resize")?,
            pid: required(table.pid, "pid")?,
            wait: required(table.wait, "wait")?,
            release: required(table.release, "release")?,
            cleanup: required(table.cleanup, "cleanup")?,
        })
    }
}

/// Returns the executor name of `table`, checked to be a usable runtime
/// name.
fn table_name(table: &PluginTable) -> Result<String, String> {
    if table.name.is_null() || table.name_len == 0 {
        return Err("its table has no executor name".into());
    }
    // SAFETY: the ABI requires `name` to point to `name_len` bytes that
    // stay valid while the library is loaded.
    let bytes = unsafe { std::slice::from_raw_parts(table.name, table.name_len) };
    let name =
        std::str::from_utf8(bytes).map_err(|_| "its executor name is not UTF-8".to_string())?;
    let valid = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(format!(
            "its executor name {name:?} is invalid: use letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(name.to_string())
}

impl LoadedPlugin {
    /// Calls one function of the table with an error out-buffer and
    /// returns the buffer's contents: the response on success (possibly
    /// empty), or the plugin's error turned into an `ExecutorError`.
    fn call(
        &self,
        operation: &str,
        function: impl FnOnce(*mut PluginBuffer) -> i32,
    ) -> Result<Vec<u8>, ExecutorError> {
        let mut buffer = PluginBuffer::empty();
        // A panic that unwinds out of a plugin aborts the process, so this
        // catches the host's own panics around the call.
        let status = catch_unwind(AssertUnwindSafe(|| function(&mut buffer)))
            .map_err(|_| self.failure(operation, "the call panicked".into()))?;
        let bytes = self.take_buffer(buffer);

        match status {
            STATUS_OK => Ok(bytes),
            STATUS_ERROR => Err(self.decode_error(operation, &bytes)),
            other => Err(self.failure(operation, format!("the plugin returned status {other}"))),
        }
    }

    /// Copies a plugin buffer and hands it back to the plugin to free.
    fn take_buffer(&self, buffer: PluginBuffer) -> Vec<u8> {
        if buffer.data.is_null() {
            return Vec::new();
        }
        // SAFETY: the ABI requires a non-null buffer from the plugin to
        // hold `len` initialised bytes until it is passed to
        // `free_buffer`, which happens right after this copy.
        let bytes = unsafe { std::slice::from_raw_parts(buffer.data, buffer.len) }.to_vec();
        // SAFETY: the buffer was allocated by this plugin and is freed
        // once, here.
        unsafe { (self.functions.free_buffer)(buffer) };
        bytes
    }

    fn decode_error(&self, operation: &str, bytes: &[u8]) -> ExecutorError {
        match serde_json::from_slice::<PluginError>(bytes) {
            Ok(error) => error.into_executor_error(&self.name),
            Err(parse_error) => {
                let text: String = String::from_utf8_lossy(bytes)
                    .chars()
                    .take(MAX_RAW_ERROR_CHARS)
                    .collect();
                self.failure(
                    operation,
                    format!("the plugin returned an unreadable error ({parse_error}): {text}"),
                )
            }
        }
    }

    fn encode(&self, operation: &str, request: &impl Serialize) -> Result<Vec<u8>, ExecutorError> {
        serde_json::to_vec(request).map_err(|error| {
            self.failure(operation, format!("failed to encode the request: {error}"))
        })
    }

    /// Returns the error of a call that failed on the host's side of the
    /// boundary.
    fn failure(&self, operation: &str, reason: String) -> ExecutorError {
        ExecutorError::Other(format!(
            "executor plugin {} ({}) failed in {operation}: {reason}",
            self.name,
            self.path.display()
        ))
    }
}

#[async_trait]
impl Executor for PluginExecutor {
    fn name(&self) -> &str {
        &self.plugin.name
    }

    async fn probe(&self) -> Probe {
        let plugin = self.plugin.clone();
        let probe = plugin.functions.probe;
        let response = tokio::task::spawn_blocking(move || {
            plugin.call("probe", |response| {
                // SAFETY: `response` is a valid out-parameter.
                unsafe { probe(response) }
            })
        })
        .await;

        let bytes = match response {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(error)) => return Probe::Unavailable(error.to_string()),
            Err(error) => return Probe::Unavailable(format!("the probe failed: {error}")),
        };
        match serde_json::from_slice::<ProbeResponse>(&bytes) {
            Ok(ProbeResponse::Available) => Probe::Available,
            Ok(ProbeResponse::Unavailable { reason }) => Probe::Unavailable(reason),
            Err(error) => Probe::Unavailable(format!(
                "executor plugin {} returned an unreadable probe response: {error}",
                self.plugin.name
            )),
        }
    }

    fn supports_network_namespace(&self) -> bool {
        self.plugin.network_namespace
    }

    async fn prepare(&self, container: &ContainerSpec) -> Result<(), ExecutorError> {
        let prepare = self.plugin.functions.prepare;
        self.call_with_container("prepare", prepare, container)
            .await
    }

    async fn start(&self, container: &ContainerSpec) -> Result<Process, ExecutorError> {
        let request = self
            .plugin
            .encode("start", &ContainerRequest::from(container))?;
        let start = self.plugin.functions.start;
        self.launch("start", start, request, &container.process)
            .await
    }

    async fn exec(
        &self,
        container: &ContainerSpec,
        process: &ProcessSpec,
    ) -> Result<Process, ExecutorError> {
        let request = ExecRequest {
            container: ContainerRequest::from(container),
            process: process.into(),
        };
        let request = self.plugin.encode("exec", &request)?;
        let exec = self.plugin.functions.exec;
        self.launch("exec", exec, request, process).await
    }

    async fn cleanup(&self, container: &ContainerSpec) -> Result<(), ExecutorError> {
        let cleanup = self.plugin.functions.cleanup;
        self.call_with_container("cleanup", cleanup, container)
            .await
    }
}

/// A process the plugin started. Dropping the last reference releases it
/// in the plugin.
struct ProcessHandle {
    plugin: Arc<LoadedPlugin>,
    handle: u64,
}

impl ProcessHandle {
    fn kill_all(&self) -> Result<(), ExecutorError> {
        let kill_all = self.plugin.functions.kill_all;
        self.plugin
            .call("kill_all", |error| {
                // SAFETY: `error` is a valid out-parameter.
                unsafe { kill_all(self.handle, error) }
            })
            .map(|_| ())
    }

    /// Blocks until the process has exited.
    fn wait(&self) -> Result<ExitStatus, ExecutorError> {
        let wait = self.plugin.functions.wait;
        let mut status = PluginExitStatus {
            kind: u32::MAX,
            value: 0,
        };
        self.plugin.call("wait", |error| {
            // SAFETY: `status` and `error` are valid out-parameters.
            unsafe { wait(self.handle, &mut status, error) }
        })?;
        match status.kind {
            EXIT_CODE => Ok(ExitStatus::Code(status.value)),
            EXIT_SIGNAL => Ok(ExitStatus::Signal(status.value)),
            kind => Err(self
                .plugin
                .failure("wait", format!("unknown exit status kind {kind}"))),
        }
    }
}

impl Drop for ProcessHandle {
    fn drop(&mut self) {
        let release = self.plugin.functions.release;
        // SAFETY: `release` takes a plain handle, and this is the only
        // call for it: the handle is dropped once.
        let released = catch_unwind(|| unsafe { release(self.handle) });
        if released.is_err() {
            tracing::warn!(executor = %self.plugin.name, "releasing a plugin process panicked");
        }
    }
}

/// Returns the exit future of a process: a thread of its own calls the
/// plugin's blocking `wait`. It is a plain thread rather than Tokio's
/// blocking pool, so that a process that never exits cannot hold up the
/// runtime's shutdown.
fn wait_for_exit(
    handle: Arc<ProcessHandle>,
) -> Result<futures::future::BoxFuture<'static, ExitStatus>, ExecutorError> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let waiter = handle.clone();
    std::thread::Builder::new()
        .name(format!("plugin-wait-{}", handle.handle))
        .spawn(move || {
            let _ = sender.send(waiter.wait());
        })
        .map_err(|error| ExecutorError::io("start a thread to wait for a plugin process", error))?;

    let executor = handle.plugin.name.clone();
    Ok(async move {
        match receiver.await {
            Ok(Ok(status)) => status,
            Ok(Err(error)) => {
                tracing::warn!(
                    %executor,
                    %error,
                    "lost track of a plugin process; reporting it killed"
                );
                ExitStatus::Signal(libc::SIGKILL)
            }
            Err(_) => {
                tracing::warn!(%executor, "the wait thread of a plugin process ended early");
                ExitStatus::Signal(libc::SIGKILL)
            }
        }
    }
    .boxed())
}

/// Signals and terminal control through the plugin.
struct PluginControl {
    handle: Arc<ProcessHandle>,
}

impl ProcessControl for PluginControl {
    fn signal(&self, signal: i32) -> Result<(), ExecutorError> {
        let function = self.handle.plugin.functions.signal;
        self.handle
            .plugin
            .call("signal", |error| {
                // SAFETY: `error` is a valid out-parameter.
                unsafe { function(self.handle.handle, signal, error) }
            })
            .map(|_| ())
    }

    fn kill_all(&self) -> Result<(), ExecutorError> {
        self.handle.kill_all()
    }

    fn resize(&self, rows: u16, columns: u16) -> Result<(), ExecutorError> {
        let function = self.handle.plugin.functions.resize;
        self.handle
            .plugin
            .call("resize", |error| {
                // SAFETY: `error` is a valid out-parameter.
                unsafe { function(self.handle.handle, rows, columns, error) }
            })
            .map(|_| ())
    }

    fn pid(&self) -> Option<u32> {
        let function = self.handle.plugin.functions.pid;
        let mut pid = -1i64;
        let result = self.handle.plugin.call("pid", |error| {
            // SAFETY: `pid` and `error` are valid out-parameters.
            unsafe { function(self.handle.handle, &mut pid, error) }
        });
        match result {
            Ok(_) => u32::try_from(pid).ok().filter(|pid| *pid > 0),
            Err(error) => {
                tracing::warn!(executor = %self.handle.plugin.name, %error, "pid failed");
                None
            }
        }
    }
}

/// Returns the plugin libraries to load: `files` in order, then every
/// `*.so` file in `dir` sorted by name.
pub fn plugin_paths(files: &[PathBuf], dir: Option<&Path>) -> Result<Vec<PathBuf>, ExecutorError> {
    let mut paths = files.to_vec();
    let Some(dir) = dir else {
        return Ok(paths);
    };

    let entries = std::fs::read_dir(dir).map_err(|error| {
        ExecutorError::io(
            format!("read the plugin directory {}", dir.display()),
            error,
        )
    })?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| {
            ExecutorError::io(
                format!("read the plugin directory {}", dir.display()),
                error,
            )
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|extension| extension == "so") && path.is_file() {
            found.push(path);
        }
    }
    found.sort();
    paths.extend(found);
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_paths_lists_shared_libraries_sorted() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.so", "a.so", "notes.txt", "c.so.1"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        std::fs::create_dir(dir.path().join("d.so")).unwrap();

        let paths = plugin_paths(&[PathBuf::from("/opt/x.so")], Some(dir.path())).unwrap();

        assert_eq!(
            paths,
            vec![
                PathBuf::from("/opt/x.so"),
                dir.path().join("a.so"),
                dir.path().join("b.so"),
            ]
        );
    }

    #[test]
    fn missing_plugin_dir_is_an_error() {
        let error = plugin_paths(&[], Some(Path::new("/nonexistent/plugins"))).unwrap_err();

        assert!(
            error.to_string().contains("/nonexistent/plugins"),
            "{error}"
        );
    }

    #[test]
    fn missing_library_names_the_file() {
        let Err(error) = PluginExecutor::load("/nonexistent/libplugin.so") else {
            panic!("a missing file was loaded");
        };

        let message = error.to_string();
        assert!(message.contains("/nonexistent/libplugin.so"), "{message}");
        assert!(message.contains("No such file"), "{message}");
    }
}
