//! Conversions between the wire types and `sidewhale-core`'s types, with
//! the `core` feature. The host uses them, and so can a plugin that wraps
//! an existing `Executor`.

use sidewhale_core::{
    ContainerSpec, ExecutorError, ExitStatus, Mount, NetworkNamespace, ProcessSpec,
};

use crate::{
    ContainerRequest, MountRequest, NetworkRequest, PluginError, PluginExit, ProcessRequest,
};

impl From<&ProcessSpec> for ProcessRequest {
    fn from(process: &ProcessSpec) -> Self {
        ProcessRequest {
            argv: process.argv.clone(),
            env: process.env.clone(),
            working_dir: process.working_dir.clone(),
            user: process.user.clone(),
            tty: process.tty,
            open_stdin: process.open_stdin,
            console_size: process.console_size,
        }
    }
}

impl From<ProcessRequest> for ProcessSpec {
    fn from(process: ProcessRequest) -> Self {
        ProcessSpec {
            argv: process.argv,
            env: process.env,
            working_dir: process.working_dir,
            user: process.user,
            tty: process.tty,
            open_stdin: process.open_stdin,
            console_size: process.console_size,
        }
    }
}

impl From<&ContainerSpec> for ContainerRequest {
    fn from(container: &ContainerSpec) -> Self {
        ContainerRequest {
            id: container.id.clone(),
            rootfs: container.rootfs.clone(),
            runtime_dir: container.runtime_dir.clone(),
            hostname: container.hostname.clone(),
            process: ProcessRequest::from(&container.process),
            mounts: container
                .mounts
                .iter()
                .map(|mount| MountRequest {
                    source: mount.source.clone(),
                    destination: mount.destination.clone(),
                    read_only: mount.read_only,
                })
                .collect(),
            network: container.network.map(|network| NetworkRequest {
                holder_pid: network.holder_pid,
                user_namespace: network.user_namespace,
            }),
        }
    }
}

impl From<ContainerRequest> for ContainerSpec {
    fn from(container: ContainerRequest) -> Self {
        ContainerSpec {
            id: container.id,
            rootfs: container.rootfs,
            runtime_dir: container.runtime_dir,
            hostname: container.hostname,
            process: container.process.into(),
            mounts: container
                .mounts
                .into_iter()
                .map(|mount| Mount {
                    source: mount.source,
                    destination: mount.destination,
                    read_only: mount.read_only,
                })
                .collect(),
            network: container.network.map(|network| NetworkNamespace {
                holder_pid: network.holder_pid,
                user_namespace: network.user_namespace,
            }),
            port_relocation: None,
        }
    }
}

impl From<ExitStatus> for PluginExit {
    fn from(status: ExitStatus) -> Self {
        match status {
            ExitStatus::Code(code) => PluginExit::Code(code),
            ExitStatus::Signal(signal) => PluginExit::Signal(signal),
        }
    }
}

impl From<PluginExit> for ExitStatus {
    fn from(exit: PluginExit) -> Self {
        match exit {
            PluginExit::Code(code) => ExitStatus::Code(code),
            PluginExit::Signal(signal) => ExitStatus::Signal(signal),
        }
    }
}

impl From<ExecutorError> for PluginError {
    fn from(error: ExecutorError) -> Self {
        match error {
            ExecutorError::Unavailable { executor, reason } => PluginError::Unavailable {
                reason: format!("{executor}: {reason}"),
            },
            ExecutorError::NotFound(command) => PluginError::NotFound { command },
            ExecutorError::NotExecutable(path) => PluginError::NotExecutable { path },
            ExecutorError::UnknownUser(user) => PluginError::UnknownUser { user },
            ExecutorError::InvalidWorkingDir(path) => PluginError::InvalidWorkingDir { path },
            ExecutorError::Io { operation, source } => PluginError::io(operation, &source),
            ExecutorError::Other(message) => PluginError::Other { message },
        }
    }
}

impl PluginError {
    /// Converts the error of a call to plugin executor `executor` into the
    /// host's error. Errors without a counterpart in `ExecutorError` name
    /// the plugin, so that a user can tell where they came from.
    pub fn into_executor_error(self, executor: &str) -> ExecutorError {
        match self {
            PluginError::Unavailable { reason } => ExecutorError::Unavailable {
                executor: executor.to_string(),
                reason,
            },
            PluginError::NotFound { command } => ExecutorError::NotFound(command),
            PluginError::NotExecutable { path } => ExecutorError::NotExecutable(path),
            PluginError::UnknownUser { user } => ExecutorError::UnknownUser(user),
            PluginError::InvalidWorkingDir { path } => ExecutorError::InvalidWorkingDir(path),
            PluginError::Io {
                operation,
                message,
                errno,
            } => {
                let source = match errno {
                    Some(errno) => std::io::Error::from_raw_os_error(errno),
                    None => std::io::Error::other(message),
                };
                ExecutorError::Io { operation, source }
            }
            PluginError::InvalidRequest { message } => ExecutorError::Other(format!(
                "executor plugin {executor} rejected the request as invalid: {message}"
            )),
            PluginError::Panic { message } => {
                ExecutorError::Other(format!("executor plugin {executor} failed: {message}"))
            }
            PluginError::Other { message } => {
                ExecutorError::Other(format!("executor plugin {executor}: {message}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_round_trip() {
        let spec = ContainerSpec {
            id: "abc".into(),
            rootfs: "/state/c/abc/rootfs".into(),
            runtime_dir: "/state/c/abc/run".into(),
            hostname: "abc".into(),
            process: ProcessSpec {
                argv: vec!["sh".into(), "-c".into(), "true".into()],
                env: vec!["PATH=/bin".into()],
                working_dir: "/app".into(),
                user: "1000:1000".into(),
                tty: true,
                open_stdin: true,
                console_size: Some([24, 80]),
            },
            mounts: vec![Mount {
                source: "/host/data".into(),
                destination: "/data".into(),
                read_only: true,
            }],
            network: Some(NetworkNamespace {
                holder_pid: 42,
                user_namespace: true,
            }),
            port_relocation: None,
        };

        let json = serde_json::to_string(&ContainerRequest::from(&spec)).unwrap();
        let back: ContainerSpec = serde_json::from_str::<ContainerRequest>(&json)
            .unwrap()
            .into();

        assert_eq!(back.id, spec.id);
        assert_eq!(back.rootfs, spec.rootfs);
        assert_eq!(back.process.argv, spec.process.argv);
        assert_eq!(back.process.user, spec.process.user);
        assert!(back.process.tty);
        assert!(back.process.open_stdin);
        assert_eq!(back.mounts, spec.mounts);
        assert_eq!(back.network, spec.network);
    }

    #[test]
    fn executor_errors_survive_the_wire() {
        let cases = [
            ExecutorError::NotFound("psql".into()),
            ExecutorError::NotExecutable("/etc/passwd".into()),
            ExecutorError::UnknownUser("nobody".into()),
            ExecutorError::InvalidWorkingDir("/x".into()),
        ];
        for error in cases {
            let expected = error.to_string();

            let json = serde_json::to_string(&PluginError::from(error)).unwrap();
            let back = serde_json::from_str::<PluginError>(&json)
                .unwrap()
                .into_executor_error("example");

            assert_eq!(back.to_string(), expected);
        }
    }

    #[test]
    fn io_error_keeps_kind() {
        let error = ExecutorError::io("open /x", std::io::Error::from_raw_os_error(libc_enoent()));

        let back = PluginError::from(error).into_executor_error("example");

        let ExecutorError::Io { source, operation } = back else {
            panic!("not an Io error");
        };
        assert_eq!(operation, "open /x");
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn panic_names_the_plugin() {
        let error = PluginError::Panic {
            message: "start panicked: boom".into(),
        };

        let message = error.into_executor_error("example").to_string();

        assert_eq!(
            message,
            "executor plugin example failed: start panicked: boom"
        );
    }

    /// ENOENT, which is 2 on every Linux architecture.
    fn libc_enoent() -> i32 {
        2
    }
}
