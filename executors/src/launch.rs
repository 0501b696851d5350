//! Checks shared by every executor before it spawns a process: the working
//! dir, the user, the environment and the program, resolved against the
//! container's root filesystem as Docker's runtime resolves them.

use std::path::PathBuf;

use sidewhale_core::{ContainerSpec, ExecutorError, ProcessSpec};
use tokio::process::Command;

use crate::rootfs::{RootfsView, DEFAULT_PATH};
use crate::user::{resolve_user, supplementary_groups, ResolvedUser};

/// A process that passed Docker's checks, ready to be spawned.
#[derive(Clone, Debug)]
pub(crate) struct CheckedProcess {
    /// Absolute path inside the container; `/` when none was given.
    pub working_dir: String,
    pub user: ResolvedUser,
    /// The user's primary gid and the groups that list it as a member.
    pub groups: Vec<u32>,
    pub argv: Vec<String>,
    /// The complete environment of the process, defaults included.
    pub env: Vec<(String, String)>,
}

/// Checks what Docker checks before running `process` in the container
/// `view` shows: creates a missing working dir, resolves the user and
/// finds the program with the process's `PATH`. Fails with `NotFound` or
/// `NotExecutable` before anything is spawned.
pub(crate) fn check_process(
    view: &RootfsView,
    process: &ProcessSpec,
) -> Result<CheckedProcess, ExecutorError> {
    let working_dir = match process.working_dir.as_str() {
        "" => "/".to_string(),
        dir => dir.to_string(),
    };
    view.ensure_working_dir(&working_dir)?;

    let passwd = view.read_to_string("/etc/passwd")?;
    let group = view.read_to_string("/etc/group")?;
    let user = resolve_user(&process.user, passwd.as_deref(), group.as_deref())?;
    let groups = supplementary_groups(&user, passwd.as_deref(), group.as_deref());

    let env = process_env(&process.env, &user);
    let search_path = env
        .iter()
        .find(|(key, _)| key == "PATH")
        .map_or(DEFAULT_PATH, |(_, value)| value.as_str());
    let Some(argv0) = process.argv.first() else {
        return Err(ExecutorError::Other("no command specified".into()));
    };
    view.find_executable(argv0, search_path, &working_dir)?;

    Ok(CheckedProcess {
        working_dir,
        user,
        groups,
        argv: process.argv.clone(),
        env,
    })
}

/// Builds the process environment: exactly `env`, plus `PATH` and `HOME`
/// when absent, as Docker does. Entries without `=` are skipped.
pub(crate) fn process_env(env: &[String], user: &ResolvedUser) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for entry in env {
        match entry.split_once('=') {
            Some((key, value)) if !key.is_empty() => {
                pairs.retain(|(existing, _)| existing != key);
                pairs.push((key.to_string(), value.to_string()));
            }
            _ => tracing::debug!(entry = %entry, "skipping environment entry without '='"),
        }
    }

    if !pairs.iter().any(|(key, _)| key == "PATH") {
        pairs.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    if !pairs.iter().any(|(key, _)| key == "HOME") {
        pairs.push(("HOME".into(), user.home.clone()));
    }
    pairs
}

/// Creates missing mount destinations in the rootfs, as Docker does, with
/// `host_binds` (such as `/dev`) laid over the rootfs. A failure is only
/// logged: proot then makes a temporary entry itself, and bwrap and
/// chroot report the missing destination when they mount.
pub(crate) fn create_mount_points(container: &ContainerSpec, host_binds: &[(PathBuf, String)]) {
    let view = RootfsView::new(&container.rootfs, host_binds);

    for mount in &container.mounts {
        let is_dir = mount.source.is_dir();
        if let Err(error) = view.ensure_mount_point(&mount.destination, is_dir) {
            tracing::debug!(
                container = %container.id,
                destination = %mount.destination,
                %error,
                "cannot create mount point"
            );
        }
    }
}

/// Runs `command` with no stdin, output captured, and at most 10 seconds.
/// Returns the exit status and stderr on failure.
pub(crate) async fn run_with_timeout(command: &mut tokio::process::Command) -> Result<(), String> {
    command
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);

    let output = tokio::time::timeout(std::time::Duration::from_secs(10), command.output())
        .await
        .map_err(|_| "timed out after 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        return Ok(());
    }

    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(format!("{}: {}", output.status, stderr.trim()))
}

/// Makes `command` start in the container's network namespace, if the
/// server made one. Register this before any `pre_exec` that drops
/// privileges: joining needs `CAP_SYS_ADMIN` over the namespace.
pub(crate) fn join_network(
    command: &mut Command,
    container: &ContainerSpec,
) -> Result<(), ExecutorError> {
    if let Some(network) = &container.network {
        sidewhale_netns::join(command, network)
            .map_err(|e| ExecutorError::io("open the container's network namespace", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> ResolvedUser {
        ResolvedUser {
            uid: 0,
            gid: 0,
            home: "/root".into(),
        }
    }

    #[test]
    fn env_gets_docker_defaults() {
        let env = process_env(&["A=1".into()], &root());

        assert_eq!(
            env,
            vec![
                ("A".to_string(), "1".to_string()),
                ("PATH".to_string(), DEFAULT_PATH.to_string()),
                ("HOME".to_string(), "/root".to_string()),
            ]
        );
    }

    #[test]
    fn env_keeps_given_path_and_home() {
        let env = process_env(
            &["PATH=/x".into(), "HOME=/h".into(), "NOEQ".into()],
            &root(),
        );

        assert_eq!(
            env,
            vec![
                ("PATH".to_string(), "/x".to_string()),
                ("HOME".to_string(), "/h".to_string()),
            ]
        );
    }
}
