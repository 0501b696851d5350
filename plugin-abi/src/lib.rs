//! The C ABI between sidewhale and executor plugins.
//!
//! An executor plugin is a shared library that exports one function,
//! [`ENTRY_SYMBOL`], of type [`EntryFunction`]. sidewhale calls it once
//! after loading the library and gets a [`PluginTable`]: the ABI version,
//! the executor's name and the `extern "C"` functions that implement the
//! executor. A Rust trait object cannot cross this boundary because its
//! layout differs between compiler versions, so everything here is
//! `#[repr(C)]`, plain C types, or JSON in UTF-8 buffers.
//!
//! Plugins written in Rust implement [`export::ExecutorPlugin`] and call
//! [`export_executor!`], which generates the entry function and wraps every
//! exported function in `catch_unwind`. `docs/plugins.md` in the sidewhale
//! repository describes the contract in full.
//!
//! The rules every function of the table follows:
//!
//! - It returns [`STATUS_OK`] or [`STATUS_ERROR`]. On error it stores a
//!   JSON [`PluginError`] in its `error` (or `response`) out-buffer.
//! - Requests are JSON in buffers that the host owns and that stay valid
//!   only for the duration of the call.
//! - Buffers that the plugin stores in an out-parameter belong to the
//!   plugin; the host copies them and passes them to `free_buffer`.
//! - File descriptors returned in a [`StartedProcess`] belong to the host
//!   from then on.
//! - Functions may be called from any thread, concurrently.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod export;
pub mod wire;

#[cfg(feature = "core")]
mod core_conversions;

pub use wire::{
    ContainerRequest, ExecRequest, MountRequest, NetworkRequest, PluginError, PluginExit,
    ProbeResponse, ProcessRequest,
};

/// The ABI version this crate describes. It changes whenever the table's
/// layout or a function's meaning changes incompatibly. New optional JSON
/// fields do not change it: both sides ignore fields they do not know.
pub const ABI_VERSION: u32 = 1;

/// The name of the entry function. It carries no version, so that sidewhale
/// can load a plugin of any version and report a mismatch by number.
pub const ENTRY_SYMBOL: &str = "sidewhale_executor_plugin";

/// The entry function. `host_abi_version` is the host's [`ABI_VERSION`], so
/// a plugin that supports several versions can return the matching table.
/// The returned table must live as long as the library stays loaded, and
/// its first field must be `abi_version: u32` in every version, because
/// the host reads that field before anything else. Null means the plugin
/// could not initialise.
pub type EntryFunction = unsafe extern "C" fn(host_abi_version: u32) -> *const PluginTable;

/// The function succeeded and its out-parameters are set.
pub const STATUS_OK: i32 = 0;
/// The function failed and stored a JSON [`PluginError`] in its error
/// buffer. Its other out-parameters are left untouched.
pub const STATUS_ERROR: i32 = 1;

/// [`PluginTable::flags`] bit: `start` and `exec` run their processes in
/// `ContainerRequest::network` when one is given. Without it, the host
/// never sets a network namespace.
pub const FLAG_NETWORK_NAMESPACE: u32 = 1;

/// [`PluginExitStatus::kind`]: the process called `exit` with `value`.
pub const EXIT_CODE: u32 = 0;
/// [`PluginExitStatus::kind`]: the process was killed by signal `value`.
pub const EXIT_SIGNAL: u32 = 1;

/// A byte buffer allocated by the plugin and handed to the host, which
/// copies it and returns it through `PluginTable::free_buffer`. An empty
/// buffer has a null `data` and needs no freeing.
#[repr(C)]
#[derive(Debug)]
pub struct PluginBuffer {
    pub data: *mut u8,
    pub len: usize,
}

impl PluginBuffer {
    /// Returns an empty buffer, for the host to pass as an out-parameter.
    pub const fn empty() -> Self {
        PluginBuffer {
            data: std::ptr::null_mut(),
            len: 0,
        }
    }

    /// Moves `bytes` into a buffer that [`PluginBuffer::free`] releases.
    /// This is how [`export`] allocates; a plugin written in another
    /// language uses its own allocator and its own `free_buffer`.
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        if bytes.is_empty() {
            return PluginBuffer::empty();
        }
        let boxed: Box<[u8]> = bytes.into_boxed_slice();
        let len = boxed.len();
        let data = Box::into_raw(boxed).cast::<u8>();
        PluginBuffer { data, len }
    }

    /// Releases a buffer made by [`PluginBuffer::from_vec`].
    ///
    /// # Safety
    ///
    /// `self` must come from `from_vec` in this same library and must not
    /// have been freed before.
    pub unsafe fn free(self) {
        if self.data.is_null() {
            return;
        }
        let slice = std::ptr::slice_from_raw_parts_mut(self.data, self.len);
        // SAFETY: the caller guarantees that `data` and `len` come from
        // `Box::into_raw` on a boxed slice of exactly `len` bytes in
        // `from_vec`, and that it is freed once.
        drop(unsafe { Box::from_raw(slice) });
    }
}

/// The result of `start` and `exec`: the plugin's id of the process and
/// the host's ends of its streams. Each fd must be a pipe, socket or
/// pseudo-terminal master (something `epoll` can watch), distinct from the
/// others, and owned by the host from the moment the function returns
/// [`STATUS_OK`]. -1 means no stream.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartedProcess {
    /// The plugin's id of the process, passed to `signal`, `kill_all`,
    /// `resize`, `pid`, `wait` and `release`. It stays valid until
    /// `release`.
    pub handle: u64,
    /// The write end of the process's stdin: -1 unless the process spec
    /// set `open_stdin`. Closing it must close the process's stdin.
    pub stdin_fd: i32,
    /// The read end of stdout, and of stderr too with a TTY. It must reach
    /// end of file once the process and everything that inherited its
    /// stdout have exited (a pseudo-terminal master's `EIO` counts).
    pub stdout_fd: i32,
    /// The read end of stderr: -1 with a TTY, required without one.
    pub stderr_fd: i32,
}

impl StartedProcess {
    /// Returns a value with no handle and no fds, for the host to pass as
    /// an out-parameter.
    pub const fn empty() -> Self {
        StartedProcess {
            handle: 0,
            stdin_fd: -1,
            stdout_fd: -1,
            stderr_fd: -1,
        }
    }
}

/// The exit status of a process, as returned by `wait`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginExitStatus {
    /// [`EXIT_CODE`] or [`EXIT_SIGNAL`].
    pub kind: u32,
    /// The exit code or the signal number.
    pub value: i32,
}

/// Returns the executor's availability as a JSON [`ProbeResponse`] in
/// `response` (or a [`PluginError`] on error). It must not leave processes
/// behind.
pub type ProbeFunction = unsafe extern "C" fn(response: *mut PluginBuffer) -> i32;

/// A call that takes a JSON request and returns nothing: `prepare` and
/// `cleanup` take a [`ContainerRequest`].
pub type RequestFunction =
    unsafe extern "C" fn(request: *const u8, request_len: usize, error: *mut PluginBuffer) -> i32;

/// `start` (a [`ContainerRequest`]) and `exec` (an [`ExecRequest`]).
pub type StartFunction = unsafe extern "C" fn(
    request: *const u8,
    request_len: usize,
    process: *mut StartedProcess,
    error: *mut PluginBuffer,
) -> i32;

/// `signal`: delivers a signal number to the process as the image sees it.
/// Succeeds when the process has already exited.
pub type SignalFunction =
    unsafe extern "C" fn(handle: u64, signal: i32, error: *mut PluginBuffer) -> i32;

/// `kill_all`: kills every process the process started, daemons included.
/// Idempotent.
pub type KillAllFunction = unsafe extern "C" fn(handle: u64, error: *mut PluginBuffer) -> i32;

/// `resize`: sets the window size of the process's pseudo-terminal, or
/// does nothing without one.
pub type ResizeFunction =
    unsafe extern "C" fn(handle: u64, rows: u16, columns: u16, error: *mut PluginBuffer) -> i32;

/// `pid`: stores the host pid of the process as the image sees it, or -1
/// while it is unknown.
pub type PidFunction =
    unsafe extern "C" fn(handle: u64, pid: *mut i64, error: *mut PluginBuffer) -> i32;

/// `wait`: blocks until the process has exited and the plugin has written
/// all of its output to the stream fds, then stores how it ended. The host
/// calls it once per handle, on a thread of its own.
pub type WaitFunction = unsafe extern "C" fn(
    handle: u64,
    status: *mut PluginExitStatus,
    error: *mut PluginBuffer,
) -> i32;

/// `release`: drops the plugin's record of a handle. The host calls it once, after `wait` has
/// returned or when it no longer needs the process.
pub type ReleaseFunction = unsafe extern "C" fn(handle: u64);

/// `free_buffer`: releases a buffer that the plugin allocated.
pub type FreeBufferFunction = unsafe extern "C" fn(buffer: PluginBuffer);

/// The functions and facts of one plugin, version 1. The host rejects a
/// table with any function missing (null).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PluginTable {
    /// [`ABI_VERSION`] of the crate the plugin was built with. Always the
    /// first field.
    pub abi_version: u32,
    /// Bits such as [`FLAG_NETWORK_NAMESPACE`].
    pub flags: u32,
    /// The executor's name in UTF-8, without a NUL: what clients pass to
    /// `docker run --runtime`. It must stay valid while the library is
    /// loaded.
    pub name: *const u8,
    pub name_len: usize,
    pub free_buffer: Option<FreeBufferFunction>,
    pub probe: Option<ProbeFunction>,
    pub prepare: Option<RequestFunction>,
    pub start: Option<StartFunction>,
    pub exec: Option<StartFunction>,
    pub signal: Option<SignalFunction>,
    pub kill_all: Option<KillAllFunction>,
    pub resize: Option<ResizeFunction>,
    pub pid: Option<PidFunction>,
    pub wait: Option<WaitFunction>,
    pub release: Option<ReleaseFunction>,
    pub cleanup: Option<RequestFunction>,
}

// SAFETY: a table contains function pointers and a pointer to the name,
// which the ABI requires to be immutable and valid while the library is
// loaded, so sharing it between threads reads only immutable data.
unsafe impl Send for PluginTable {}
// SAFETY: as for `Send`: nothing behind the pointers is ever written.
unsafe impl Sync for PluginTable {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_round_trip() {
        let buffer = PluginBuffer::from_vec(b"{\"a\":1}".to_vec());

        assert_eq!(buffer.len, 7);
        // SAFETY: `data` points to `len` bytes written by `from_vec`.
        let bytes = unsafe { std::slice::from_raw_parts(buffer.data, buffer.len) };
        assert_eq!(bytes, b"{\"a\":1}");
        // SAFETY: the buffer comes from `from_vec` and is freed once.
        unsafe { buffer.free() };
    }

    #[test]
    fn empty_vec_makes_null_buffer() {
        let buffer = PluginBuffer::from_vec(Vec::new());

        assert!(buffer.data.is_null());
        assert_eq!(buffer.len, 0);
        // SAFETY: freeing a null buffer does nothing.
        unsafe { buffer.free() };
    }

    #[test]
    fn version_is_first_field() {
        assert_eq!(std::mem::offset_of!(PluginTable, abi_version), 0);
    }
}
