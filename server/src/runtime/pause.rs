//! Pausing, resuming and resizing the terminal of a running container.
//!
//! Without a freezer cgroup, pause sends `SIGSTOP` to the executor's
//! wrapper processes (proot traces the container's processes, so stopping
//! it blocks them at their next system call) and to every process of the
//! container, and unpause sends `SIGCONT` to the same set.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::processes::{descendants, wrappers};
use super::{Container, Daemon, Error, Result};

/// How long after the first `SIGCONT` the container's processes get a
/// second one. A tracee that proot put into a stop only after the first
/// `SIGCONT` reached it would otherwise stay stopped.
const RESUME_REPEAT_DELAY: Duration = Duration::from_millis(50);

/// Sends `signal` to each pid, ignoring processes that have exited.
fn signal_all(container: &str, pids: &[u32], signal: Signal) {
    for pid in pids {
        let Ok(raw) = i32::try_from(*pid) else {
            continue;
        };
        match kill(Pid::from_raw(raw), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(error) => {
                tracing::warn!(container, pid, ?signal, %error, "failed to signal a container process");
            }
        }
    }
}

/// Sends `SIGCONT` to the container's processes and their wrappers, twice.
async fn resume_processes(container: &str, main_pid: u32) {
    let processes = descendants(main_pid);
    signal_all(container, &processes, Signal::SIGCONT);
    signal_all(container, &wrappers(main_pid), Signal::SIGCONT);
    tokio::time::sleep(RESUME_REPEAT_DELAY).await;
    signal_all(container, &descendants(main_pid), Signal::SIGCONT);
}

impl Daemon {
    pub async fn pause_container(&self, container: &Container) -> Result<()> {
        let pid = container.running_pid()?;
        let record = container.record();
        if record.state.paused {
            return Err(Error::Conflict(format!(
                "Container {} is already paused",
                record.id
            )));
        }
        let wrappers = wrappers(pid);
        signal_all(record.short_id(), &wrappers, Signal::SIGSTOP);
        let processes = descendants(pid);
        signal_all(record.short_id(), &processes, Signal::SIGSTOP);
        container.update(|record| record.state.paused = true);
        tracing::info!(container = %record.short_id(), processes = processes.len(), wrappers = wrappers.len(), "paused container");
        self.container_event(&record, "pause", &[]);
        Ok(())
    }

    pub async fn unpause_container(&self, container: &Container) -> Result<()> {
        let pid = container.running_pid()?;
        let record = container.record();
        if !record.state.paused {
            return Err(Error::Conflict(format!(
                "Container {} is not paused",
                record.id
            )));
        }
        resume_processes(record.short_id(), pid).await;
        container.update(|record| record.state.paused = false);
        tracing::info!(container = %record.short_id(), "unpaused container");
        self.container_event(&record, "unpause", &[]);
        Ok(())
    }

    /// Resumes a paused container before it is stopped, killed or removed,
    /// because its wrapper must run to deliver the signal and reap the
    /// processes. The container keeps running afterwards.
    pub(super) async fn resume_if_paused(&self, container: &Container) {
        let record = container.record();
        if !record.state.paused {
            return;
        }
        if let Ok(pid) = container.running_pid() {
            resume_processes(record.short_id(), pid).await;
        }
        container.update(|record| record.state.paused = false);
        tracing::info!(container = %record.short_id(), "resumed paused container to signal it");
    }

    /// Resizes the terminal of the container's main process.
    pub fn resize_container(&self, container: &Container, rows: u16, columns: u16) -> Result<()> {
        container.running_pid()?;
        let Some(control) = container.control() else {
            return Err(Error::Conflict(format!(
                "Container {} is not running",
                container.id
            )));
        };
        control.resize(rows, columns)?;
        tracing::debug!(container = %&container.id[..12], rows, columns, "resized container terminal");
        Ok(())
    }
}
