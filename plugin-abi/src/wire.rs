//! The JSON documents that cross the ABI.
//!
//! They mirror the types of `sidewhale-core` but are defined here, so that
//! the JSON a plugin sees changes only with this crate. Unknown fields are
//! ignored on both sides, and fields added within one ABI version have a
//! default.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A container: the request of `prepare`, `start` and `cleanup`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRequest {
    /// The 64-hex-digit container id.
    pub id: String,
    /// The container's writable root filesystem on the host.
    pub rootfs: PathBuf,
    /// A directory the plugin may use for its own files. It is removed
    /// with the container.
    pub runtime_dir: PathBuf,
    pub hostname: String,
    /// The main process.
    pub process: ProcessRequest,
    /// Host paths to make visible inside the container, in order.
    #[serde(default)]
    pub mounts: Vec<MountRequest>,
    /// The network namespace to run processes in; only set for plugins
    /// with `FLAG_NETWORK_NAMESPACE`.
    #[serde(default)]
    pub network: Option<NetworkRequest>,
}

/// A process to run: the container's main process or an exec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRequest {
    /// Entrypoint and command. `argv[0]` may be a bare name, which the
    /// plugin resolves with the `PATH` of `env` inside the rootfs.
    pub argv: Vec<String>,
    /// The complete environment as `KEY=VALUE` pairs.
    #[serde(default)]
    pub env: Vec<String>,
    /// Absolute path inside the rootfs; empty means `/`.
    #[serde(default)]
    pub working_dir: String,
    /// Docker's `User` syntax: empty (root), `name`, `uid`, `name:group` or
    /// `uid:gid`.
    #[serde(default)]
    pub user: String,
    /// Run on a pseudo-terminal: stdout carries both streams and there is
    /// no stderr fd.
    #[serde(default)]
    pub tty: bool,
    /// Give the host a stdin fd. Without it the process reads `/dev/null`.
    #[serde(default)]
    pub open_stdin: bool,
    /// With `tty`, the terminal's `[rows, columns]` at start. Absent from
    /// requests of hosts older than this field; plugins may ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_size: Option<[u16; 2]>,
}

/// A host file or directory made visible inside the container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRequest {
    /// Absolute host path.
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub destination: String,
    #[serde(default)]
    pub read_only: bool,
}

/// A network namespace made by sidewhale, named by a process living in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRequest {
    /// Host pid whose `/proc/PID/ns/net` is the namespace.
    pub holder_pid: u32,
    /// Whether a process must join `/proc/PID/ns/user` first.
    #[serde(default)]
    pub user_namespace: bool,
}

/// The request of `exec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub container: ContainerRequest,
    pub process: ProcessRequest,
}

/// The response of `probe`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ProbeResponse {
    Available,
    /// The reason, written so that a user knows what to change.
    Unavailable {
        reason: String,
    },
}

/// The exit status of a process, for plugins written in Rust.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PluginExit {
    Code(i32),
    Signal(i32),
}

/// The error document of a failed call. `kind` selects the variant, as in
/// `{"kind":"not_found","command":"psql"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PluginError {
    /// The executor cannot run on this host.
    #[error("not available on this host: {reason}")]
    Unavailable { reason: String },
    /// The command does not exist in the rootfs (exit code 127).
    #[error("executable file not found in $PATH: {command}")]
    NotFound { command: String },
    /// The command exists but cannot be executed (exit code 126).
    #[error("permission denied: {path} is not executable")]
    NotExecutable { path: String },
    #[error("unable to find user {user}: no matching entries in passwd file")]
    UnknownUser { user: String },
    #[error("invalid working directory {path}")]
    InvalidWorkingDir { path: String },
    /// A system call failed; `errno` is its error number when known.
    #[error("failed to {operation}: {message}")]
    Io {
        operation: String,
        message: String,
        #[serde(default)]
        errno: Option<i32>,
    },
    /// The request was malformed or named an unknown handle.
    #[error("invalid request: {message}")]
    InvalidRequest { message: String },
    /// The plugin panicked; `export` produces this from `catch_unwind`.
    #[error("{message}")]
    Panic { message: String },
    #[error("{message}")]
    Other { message: String },
}

impl PluginError {
    /// Returns an `Io` error for `operation` with the error number of
    /// `error` when it has one.
    pub fn io(operation: impl Into<String>, error: &std::io::Error) -> Self {
        PluginError::Io {
            operation: operation.into(),
            message: error.to_string(),
            errno: error.raw_os_error(),
        }
    }

    pub fn other(message: impl Into<String>) -> Self {
        PluginError::Other {
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_is_tagged_by_kind() {
        let error = PluginError::NotFound {
            command: "psql".into(),
        };

        let json = serde_json::to_string(&error).unwrap();

        assert_eq!(json, r#"{"kind":"not_found","command":"psql"}"#);
        assert_eq!(serde_json::from_str::<PluginError>(&json).unwrap(), error);
    }

    #[test]
    fn io_error_keeps_errno() {
        let error = PluginError::io("open /x", &std::io::Error::from_raw_os_error(2));

        let PluginError::Io {
            errno, operation, ..
        } = &error
        else {
            panic!("not an Io error: {error:?}");
        };
        assert_eq!(*errno, Some(2));
        assert_eq!(operation, "open /x");
    }

    #[test]
    fn probe_json_is_tagged_by_status() {
        let unavailable = ProbeResponse::Unavailable {
            reason: "no proot".into(),
        };

        let json = serde_json::to_string(&unavailable).unwrap();

        assert_eq!(json, r#"{"status":"unavailable","reason":"no proot"}"#);
        assert_eq!(
            serde_json::from_str::<ProbeResponse>(r#"{"status":"available"}"#).unwrap(),
            ProbeResponse::Available
        );
    }

    #[test]
    fn minimal_container_request_parses() {
        let json = r#"{"id":"abc","rootfs":"/r","runtime_dir":"/d","hostname":"h",
                       "process":{"argv":["sh"]},"added_later":true}"#;

        let request: ContainerRequest = serde_json::from_str(json).unwrap();

        assert_eq!(request.process.argv, vec!["sh"]);
        assert!(request.mounts.is_empty());
        assert_eq!(request.network, None);
    }
}
