//! The plugin side: a safe trait and the `extern "C"` functions that
//! expose it.
//!
//! A plugin implements [`ExecutorPlugin`] and calls
//! [`export_executor!`](crate::export_executor) once. Every generated
//! function catches panics with [`guarded`], so a panic becomes a
//! [`PluginError::Panic`] for that call instead of unwinding into the host,
//! which Rust turns into an abort. Plugins that write their own
//! `extern "C"` functions can use [`guarded`], [`read_request`] and
//! [`write_json`] directly.

use std::any::Any;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{
    ContainerRequest, ExecRequest, PluginBuffer, PluginError, PluginExit, PluginExitStatus,
    PluginTable, ProbeResponse, StartedProcess, ABI_VERSION, EXIT_CODE, EXIT_SIGNAL,
    FLAG_NETWORK_NAMESPACE, STATUS_ERROR, STATUS_OK,
};

/// A started process as a plugin returns it: its handle and the host's
/// ends of its streams, which the ABI hands over to the host.
#[derive(Debug)]
pub struct PluginProcess {
    /// The plugin's id of the process, unique among live processes.
    pub handle: u64,
    /// Present when `open_stdin` was requested.
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    /// `None` with a TTY.
    pub stderr: Option<OwnedFd>,
}

/// An executor that runs in a plugin. The methods mirror the functions of
/// [`PluginTable`] and are called from any host thread, concurrently.
/// `wait` blocks, and the others should return quickly, because the host
/// calls `signal`, `kill_all`, `resize` and `pid` from async tasks.
pub trait ExecutorPlugin: Send + Sync + 'static {
    /// The name clients select the executor by.
    fn name(&self) -> &str;

    /// Whether `start` and `exec` honour `ContainerRequest::network`.
    fn supports_network_namespace(&self) -> bool {
        false
    }

    fn probe(&self) -> ProbeResponse;

    fn prepare(&self, _container: ContainerRequest) -> Result<(), PluginError> {
        Ok(())
    }

    fn start(&self, container: ContainerRequest) -> Result<PluginProcess, PluginError>;

    fn exec(&self, request: ExecRequest) -> Result<PluginProcess, PluginError>;

    fn signal(&self, handle: u64, signal: i32) -> Result<(), PluginError>;

    fn kill_all(&self, handle: u64) -> Result<(), PluginError>;

    fn resize(&self, _handle: u64, _rows: u16, _columns: u16) -> Result<(), PluginError> {
        Ok(())
    }

    fn pid(&self, handle: u64) -> Result<Option<u32>, PluginError>;

    /// Blocks until the process has exited and its output is written.
    fn wait(&self, handle: u64) -> Result<PluginExit, PluginError>;

    fn release(&self, handle: u64);

    fn cleanup(&self, _container: ContainerRequest) -> Result<(), PluginError> {
        Ok(())
    }
}

/// Names the plugin instance that the generated functions call. The
/// [`export_executor!`](crate::export_executor) macro implements it.
pub trait Instance {
    fn plugin() -> &'static dyn ExecutorPlugin;
}

/// Runs `body`, turning a panic into [`PluginError::Panic`], and stores
/// the error, if any, as JSON in `error`. Returns the status to pass back
/// to the host.
///
/// # Safety
///
/// `error` must be null or point to a writable [`PluginBuffer`], as the
/// host passes it.
pub unsafe fn guarded(
    operation: &str,
    error: *mut PluginBuffer,
    body: impl FnOnce() -> Result<(), PluginError>,
) -> i32 {
    let outcome = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        Err(PluginError::Panic {
            message: format!("{operation} panicked: {}", panic_message(payload.as_ref())),
        })
    });
    match outcome {
        Ok(()) => STATUS_OK,
        Err(failure) => {
            // This runs outside the caught body, so it gets a
            // `catch_unwind` of its own.
            // SAFETY: the caller guarantees that `error` is null or valid.
            let _ = catch_unwind(AssertUnwindSafe(|| unsafe { write_json(error, &failure) }));
            STATUS_ERROR
        }
    }
}

/// Returns the text of a panic payload: the `&str` or `String` given to
/// `panic!`, or a placeholder.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        return (*text).to_string();
    }
    if let Some(text) = payload.downcast_ref::<String>() {
        return text.clone();
    }
    "a panic without a message".to_string()
}

/// Parses the JSON request of a call.
///
/// # Safety
///
/// `data` must point to `len` readable bytes for the duration of the call,
/// or be null with `len` 0.
pub unsafe fn read_request<T: DeserializeOwned>(
    data: *const u8,
    len: usize,
) -> Result<T, PluginError> {
    if data.is_null() {
        return Err(PluginError::InvalidRequest {
            message: "the request is null".into(),
        });
    }
    // SAFETY: the caller guarantees `len` readable bytes at `data`.
    let bytes = unsafe { std::slice::from_raw_parts(data, len) };
    serde_json::from_slice(bytes).map_err(|error| PluginError::InvalidRequest {
        message: error.to_string(),
    })
}

/// Stores `value` as JSON in `out`. Nothing is stored when `out` is null.
///
/// # Safety
///
/// `out` must be null or point to a writable [`PluginBuffer`], which the
/// host frees with `free_buffer`.
pub unsafe fn write_json(out: *mut PluginBuffer, value: &impl Serialize) {
    if out.is_null() {
        return;
    }
    let bytes = match serde_json::to_vec(value) {
        Ok(bytes) => bytes,
        Err(error) => {
            let fallback = PluginError::other(format!("failed to serialise a response: {error}"));
            serde_json::to_vec(&fallback).unwrap_or_default()
        }
    };
    // SAFETY: `out` is non-null, so the caller guarantees that it is
    // writable.
    unsafe { out.write(PluginBuffer::from_vec(bytes)) };
}

/// Stores `value` in `out`, or fails when `out` is null.
///
/// # Safety
///
/// `out` must be null or point to a writable `T`.
unsafe fn store<T>(out: *mut T, value: T) -> Result<(), PluginError> {
    if out.is_null() {
        return Err(PluginError::InvalidRequest {
            message: "an out-parameter is null".into(),
        });
    }
    // SAFETY: `out` is non-null, so the caller guarantees that it is
    // writable.
    unsafe { out.write(value) };
    Ok(())
}

/// Hands `process`'s fds over to the host through `out`, or fails when
/// `out` is null (the fds are closed then).
///
/// # Safety
///
/// `out` must be null or point to a writable [`StartedProcess`].
unsafe fn store_process(
    out: *mut StartedProcess,
    process: PluginProcess,
) -> Result<(), PluginError> {
    if out.is_null() {
        return Err(PluginError::InvalidRequest {
            message: "an out-parameter is null".into(),
        });
    }
    let raw = StartedProcess {
        handle: process.handle,
        stdin_fd: process.stdin.map_or(-1, IntoRawFd::into_raw_fd),
        stdout_fd: process.stdout.into_raw_fd(),
        stderr_fd: process.stderr.map_or(-1, IntoRawFd::into_raw_fd),
    };
    // SAFETY: `out` is non-null, so the caller guarantees that it is
    // writable.
    unsafe { store(out, raw) }
}

/// Builds the table for the plugin of `E`. Called by the entry function
/// that [`export_executor!`](crate::export_executor) generates.
pub fn table<E: Instance>() -> PluginTable {
    let plugin = E::plugin();
    let name = plugin.name();
    let flags = if plugin.supports_network_namespace() {
        FLAG_NETWORK_NAMESPACE
    } else {
        0
    };
    PluginTable {
        abi_version: ABI_VERSION,
        flags,
        name: name.as_ptr(),
        name_len: name.len(),
        free_buffer: Some(free_buffer),
        probe: Some(probe::<E>),
        prepare: Some(prepare::<E>),
        start: Some(start::<E>),
        exec: Some(exec::<E>),
        signal: Some(signal::<E>),
        kill_all: Some(kill_all::<E>),
        resize: Some(resize::<E>),
        pid: Some(pid::<E>),
        wait: Some(wait::<E>),
        release: Some(release::<E>),
        cleanup: Some(cleanup::<E>),
    }
}

/// Returns the table in `cell`, building it on the first call; null when
/// building it panicked.
pub fn entry<E: Instance>(cell: &'static std::sync::OnceLock<PluginTable>) -> *const PluginTable {
    catch_unwind(|| cell.get_or_init(table::<E>) as *const PluginTable).unwrap_or(std::ptr::null())
}

unsafe extern "C" fn free_buffer(buffer: PluginBuffer) {
    // SAFETY: the host passes back only buffers that this library made
    // with `PluginBuffer::from_vec`, each once.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe { buffer.free() }));
}

unsafe extern "C" fn probe<E: Instance>(response: *mut PluginBuffer) -> i32 {
    let body = || {
        let result = E::plugin().probe();
        // SAFETY: the host passes a valid `response` out-parameter.
        unsafe { write_json(response, &result) };
        Ok(())
    };
    // SAFETY: as above; the same buffer receives an error.
    unsafe { guarded("probe", response, body) }
}

unsafe extern "C" fn prepare<E: Instance>(
    request: *const u8,
    request_len: usize,
    error: *mut PluginBuffer,
) -> i32 {
    let body = || {
        // SAFETY: the host passes `request_len` readable bytes.
        let container = unsafe { read_request(request, request_len) }?;
        E::plugin().prepare(container)
    };
    // SAFETY: the host passes a valid `error` out-parameter.
    unsafe { guarded("prepare", error, body) }
}

unsafe extern "C" fn start<E: Instance>(
    request: *const u8,
    request_len: usize,
    process: *mut StartedProcess,
    error: *mut PluginBuffer,
) -> i32 {
    let body = || {
        // SAFETY: the host passes `request_len` readable bytes.
        let container = unsafe { read_request(request, request_len) }?;
        let started = E::plugin().start(container)?;
        // SAFETY: the host passes a valid `process` out-parameter.
        unsafe { store_process(process, started) }
    };
    // SAFETY: the host passes a valid `error` out-parameter.
    unsafe { guarded("start", error, body) }
}

unsafe extern "C" fn exec<E: Instance>(
    request: *const u8,
    request_len: usize,
    process: *mut StartedProcess,
    error: *mut PluginBuffer,
) -> i32 {
    let body = || {
        // SAFETY: the host passes `request_len` readable bytes.
        let request = unsafe { read_request(request, request_len) }?;
        let started = E::plugin().exec(request)?;
        // SAFETY: the host passes a valid `process` out-parameter.
        unsafe { store_process(process, started) }
    };
    // SAFETY: the host passes a valid `error` out-parameter.
    unsafe { guarded("exec", error, body) }
}

unsafe extern "C" fn signal<E: Instance>(
    handle: u64,
    signal: i32,
    error: *mut PluginBuffer,
) -> i32 {
    let body = || E::plugin().signal(handle, signal);
    // SAFETY: the host passes a valid `error` out-parameter.
    unsafe { guarded("signal", error, body) }
}

unsafe extern "C" fn kill_all<E: Instance>(handle: u64, error: *mut PluginBuffer) -> i32 {
    let body = || E::plugin().kill_all(handle);
    // SAFETY: the host passes a valid `error` out-parameter.
    unsafe { guarded("kill_all", error, body) }
}

unsafe extern "C" fn resize<E: Instance>(
    handle: u64,
    rows: u16,
    columns: u16,
    error: *mut PluginBuffer,
) -> i32 {
    let body = || E::plugin().resize(handle, rows, columns);
    // SAFETY: the host passes a valid `error` out-parameter.
    unsafe { guarded("resize", error, body) }
}

unsafe extern "C" fn pid<E: Instance>(handle: u64, pid: *mut i64, error: *mut PluginBuffer) -> i32 {
    let body = || {
        let known = E::plugin().pid(handle)?;
        // SAFETY: the host passes a valid `pid` out-parameter.
        unsafe { store(pid, known.map_or(-1, i64::from)) }
    };
    // SAFETY: the host passes a valid `error` out-parameter.
    unsafe { guarded("pid", error, body) }
}

unsafe extern "C" fn wait<E: Instance>(
    handle: u64,
    status: *mut PluginExitStatus,
    error: *mut PluginBuffer,
) -> i32 {
    let body = || {
        let exit = match E::plugin().wait(handle)? {
            PluginExit::Code(code) => PluginExitStatus {
                kind: EXIT_CODE,
                value: code,
            },
            PluginExit::Signal(signal) => PluginExitStatus {
                kind: EXIT_SIGNAL,
                value: signal,
            },
        };
        // SAFETY: the host passes a valid `status` out-parameter.
        unsafe { store(status, exit) }
    };
    // SAFETY: the host passes a valid `error` out-parameter.
    unsafe { guarded("wait", error, body) }
}

unsafe extern "C" fn release<E: Instance>(handle: u64) {
    // `release` has no error channel: a panic is dropped here.
    let _ = catch_unwind(|| E::plugin().release(handle));
}

unsafe extern "C" fn cleanup<E: Instance>(
    request: *const u8,
    request_len: usize,
    error: *mut PluginBuffer,
) -> i32 {
    let body = || {
        // SAFETY: the host passes `request_len` readable bytes.
        let container = unsafe { read_request(request, request_len) }?;
        E::plugin().cleanup(container)
    };
    // SAFETY: the host passes a valid `error` out-parameter.
    unsafe { guarded("cleanup", error, body) }
}

/// Exports an [`ExecutorPlugin`](crate::export::ExecutorPlugin) as the
/// plugin's entry function. The argument is an expression that builds the
/// plugin. It is evaluated once, on the first call, and must not fail: a
/// plugin that cannot initialise stores the reason and reports it from
/// `probe`.
///
/// ```ignore
/// sidewhale_plugin_abi::export_executor!(MyExecutor::new());
/// ```
#[macro_export]
macro_rules! export_executor {
    ($constructor:expr) => {
        /// The entry function sidewhale calls after loading this library.
        #[no_mangle]
        pub extern "C" fn sidewhale_executor_plugin(
            _host_abi_version: u32,
        ) -> *const $crate::PluginTable {
            static TABLE: ::std::sync::OnceLock<$crate::PluginTable> = ::std::sync::OnceLock::new();
            static PLUGIN: ::std::sync::OnceLock<
                ::std::boxed::Box<dyn $crate::export::ExecutorPlugin>,
            > = ::std::sync::OnceLock::new();

            struct Exported;
            impl $crate::export::Instance for Exported {
                fn plugin() -> &'static dyn $crate::export::ExecutorPlugin {
                    PLUGIN
                        .get_or_init(|| ::std::boxed::Box::new($constructor))
                        .as_ref()
                }
            }

            $crate::export::entry::<Exported>(&TABLE)
        }
    };
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::{NetworkRequest, ProcessRequest};

    /// A plugin whose `start` writes `argv[0]` to a pipe and whose other
    /// calls panic or fail, to exercise the generated functions.
    struct FakePlugin;

    /// The handle of the last `release` call.
    static RELEASED: AtomicU64 = AtomicU64::new(0);

    impl ExecutorPlugin for FakePlugin {
        fn name(&self) -> &str {
            "fake"
        }

        fn supports_network_namespace(&self) -> bool {
            true
        }

        fn probe(&self) -> ProbeResponse {
            ProbeResponse::Available
        }

        fn prepare(&self, container: ContainerRequest) -> Result<(), PluginError> {
            Err(PluginError::NotFound {
                command: container.process.argv.join(" "),
            })
        }

        fn start(&self, container: ContainerRequest) -> Result<PluginProcess, PluginError> {
            let (read, mut write) =
                UnixStream::pair().map_err(|e| PluginError::io("create a socket pair", &e))?;
            write
                .write_all(container.process.argv[0].as_bytes())
                .map_err(|e| PluginError::io("write", &e))?;
            Ok(PluginProcess {
                handle: 7,
                stdin: None,
                stdout: read.into(),
                stderr: None,
            })
        }

        fn exec(&self, _request: ExecRequest) -> Result<PluginProcess, PluginError> {
            panic!("exec is broken");
        }

        fn signal(&self, _handle: u64, signal: i32) -> Result<(), PluginError> {
            std::panic::panic_any(format!("signal {signal}"));
        }

        fn kill_all(&self, _handle: u64) -> Result<(), PluginError> {
            Ok(())
        }

        fn pid(&self, handle: u64) -> Result<Option<u32>, PluginError> {
            Ok((handle == 7).then_some(4242))
        }

        fn wait(&self, _handle: u64) -> Result<PluginExit, PluginError> {
            Ok(PluginExit::Signal(15))
        }

        fn release(&self, handle: u64) {
            RELEASED.store(handle, Ordering::SeqCst);
        }
    }

    crate::export_executor!(FakePlugin);

    fn table() -> PluginTable {
        let table = sidewhale_executor_plugin(ABI_VERSION);
        assert!(!table.is_null());
        // SAFETY: the entry returns a pointer to a table in a static.
        unsafe { *table }
    }

    /// Takes the JSON out of a buffer that the table's functions filled.
    fn take_json(table: &PluginTable, buffer: PluginBuffer) -> serde_json::Value {
        assert!(!buffer.data.is_null());
        // SAFETY: the buffer was filled by `write_json` with `len` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(buffer.data, buffer.len) }.to_vec();
        // SAFETY: the buffer comes from this table and is freed once.
        unsafe { table.free_buffer.unwrap()(buffer) };
        serde_json::from_slice(&bytes).unwrap()
    }

    fn request(container: &ContainerRequest) -> Vec<u8> {
        serde_json::to_vec(container).unwrap()
    }

    fn container(argv0: &str) -> ContainerRequest {
        ContainerRequest {
            process: ProcessRequest {
                argv: vec![argv0.into()],
                ..ProcessRequest::default()
            },
            network: Some(NetworkRequest {
                holder_pid: 1,
                user_namespace: false,
            }),
            ..ContainerRequest::default()
        }
    }

    #[test]
    fn table_describes_plugin() {
        let table = table();

        // SAFETY: the name points to `name_len` bytes of a `&'static str`.
        let name = unsafe { std::slice::from_raw_parts(table.name, table.name_len) };
        assert_eq!(name, b"fake");
        assert_eq!(table.abi_version, ABI_VERSION);
        assert_eq!(table.flags, FLAG_NETWORK_NAMESPACE);
    }

    #[test]
    fn probe_writes_json() {
        let table = table();
        let mut response = PluginBuffer::empty();

        // SAFETY: `response` is a valid out-parameter.
        let status = unsafe { table.probe.unwrap()(&mut response) };

        assert_eq!(status, STATUS_OK);
        assert_eq!(
            take_json(&table, response),
            serde_json::json!({"status": "available"})
        );
    }

    #[test]
    fn start_hands_over_fds() {
        let table = table();
        let body = request(&container("hello"));
        let mut process = StartedProcess::empty();
        let mut error = PluginBuffer::empty();

        // SAFETY: the request and the out-parameters are valid.
        let status =
            unsafe { table.start.unwrap()(body.as_ptr(), body.len(), &mut process, &mut error) };

        assert_eq!(status, STATUS_OK);
        assert!(error.data.is_null());
        assert_eq!(process.handle, 7);
        assert_eq!(process.stdin_fd, -1);
        assert_eq!(process.stderr_fd, -1);
        // SAFETY: the fd was handed over to this caller by `start`.
        let mut stdout = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(process.stdout_fd) });
        let mut text = String::new();
        stdout.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello");
    }

    #[test]
    fn plugin_error_becomes_json() {
        let table = table();
        let body = request(&container("psql"));
        let mut error = PluginBuffer::empty();

        // SAFETY: the request and the out-parameter are valid.
        let status = unsafe { table.prepare.unwrap()(body.as_ptr(), body.len(), &mut error) };

        assert_eq!(status, STATUS_ERROR);
        assert_eq!(
            take_json(&table, error),
            serde_json::json!({"kind": "not_found", "command": "psql"})
        );
    }

    #[test]
    fn panic_becomes_error() {
        let table = table();
        let body = serde_json::to_vec(&ExecRequest::default()).unwrap();
        let mut process = StartedProcess::empty();
        let mut error = PluginBuffer::empty();

        // SAFETY: the request and the out-parameters are valid.
        let status =
            unsafe { table.exec.unwrap()(body.as_ptr(), body.len(), &mut process, &mut error) };

        assert_eq!(status, STATUS_ERROR);
        assert_eq!(process, StartedProcess::empty());
        let json = take_json(&table, error);
        assert_eq!(json["kind"], "panic");
        assert_eq!(json["message"], "exec panicked: exec is broken");
    }

    #[test]
    fn formatted_panic_keeps_message() {
        let table = table();
        let mut error = PluginBuffer::empty();

        // SAFETY: the out-parameter is valid.
        let status = unsafe { table.signal.unwrap()(7, 15, &mut error) };

        assert_eq!(status, STATUS_ERROR);
        assert_eq!(
            take_json(&table, error)["message"],
            "signal panicked: signal 15"
        );
    }

    #[test]
    fn malformed_request_is_invalid() {
        let table = table();
        let body = b"{not json";
        let mut error = PluginBuffer::empty();

        // SAFETY: the request and the out-parameter are valid.
        let status = unsafe { table.cleanup.unwrap()(body.as_ptr(), body.len(), &mut error) };

        assert_eq!(status, STATUS_ERROR);
        assert_eq!(take_json(&table, error)["kind"], "invalid_request");
    }

    #[test]
    fn pid_and_wait_use_plain_types() {
        let table = table();
        let mut pid = 0i64;
        let mut status = PluginExitStatus { kind: 99, value: 0 };
        let mut error = PluginBuffer::empty();

        // SAFETY: the out-parameters are valid.
        unsafe {
            assert_eq!(table.pid.unwrap()(7, &mut pid, &mut error), STATUS_OK);
            assert_eq!(pid, 4242);
            assert_eq!(table.pid.unwrap()(8, &mut pid, &mut error), STATUS_OK);
            assert_eq!(pid, -1);
            assert_eq!(table.wait.unwrap()(7, &mut status, &mut error), STATUS_OK);
        }
        assert_eq!(
            status,
            PluginExitStatus {
                kind: EXIT_SIGNAL,
                value: 15
            }
        );
    }

    #[test]
    fn null_out_parameter_is_an_error() {
        let table = table();
        let mut error = PluginBuffer::empty();

        // SAFETY: a null `pid` is allowed and must be reported.
        let status = unsafe { table.pid.unwrap()(7, std::ptr::null_mut(), &mut error) };

        assert_eq!(status, STATUS_ERROR);
        assert_eq!(take_json(&table, error)["kind"], "invalid_request");
    }

    #[test]
    fn release_reaches_plugin() {
        let table = table();

        // SAFETY: `release` takes a plain handle.
        unsafe { table.release.unwrap()(9) };

        assert_eq!(RELEASED.load(Ordering::SeqCst), 9);
    }
}
