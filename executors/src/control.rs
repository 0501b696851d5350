//! Control of a running proot process: signals, killing, window size, and
//! the exit status.
//!
//! proot (5.1.0, as shipped by Debian 12) is the process sidewhale spawns,
//! but the image's main process is proot's only child, "the tracee".
//! Three proot behaviours shape this module:
//!
//! - proot ignores SIGTERM, SIGINT, SIGHUP and most other signals, so
//!   signals go to the tracee directly.
//! - proot exits only when every tracee has exited, and 5.1.0 has no
//!   `--kill-on-exit`, so daemons left behind by the main process are
//!   killed here once the main process exits.
//! - proot's exit code is that of the last tracee that called `exit`. A
//!   tracee killed by a signal leaves no code, and proot then exits with
//!   255 (or with an earlier child's code). How the main process ended is
//!   therefore worked out from the signals sent through this module.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use sidewhale_core::{ExecutorError, ExitStatus, ProcessControl};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::process::Child;
use tokio::sync::oneshot;

use crate::procfs::{container_processes, kills_by_default, ProcessTable};
use crate::pty::set_window_size;

/// How long proot may take to exit after its tracees were killed before it
/// is killed itself.
const PROOT_EXIT_GRACE: Duration = Duration::from_secs(3);

/// Rounds of "find the container's processes, kill them" in `kill_all`.
/// More than one catches processes forked while the first round ran.
const KILL_ROUNDS: usize = 5;

/// What `start` found out about proot's child, the image's process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tracee {
    /// Running (or exited but not yet reaped) with this host pid.
    Started(i32),
    /// Already gone, or never started, by the time proot was looked at.
    Exited,
}

/// The control of one proot process: a container's main process or an
/// exec.
pub(crate) struct ProotControl {
    container_id: String,
    table: Arc<dyn ProcessTable>,
    proot_pid: i32,
    /// proot's child, the process the image sees as its own. `None` when
    /// it had exited before it was found.
    tracee_pid: Option<i32>,
    pty_master: Option<OwnedFd>,
    state: Mutex<ControlState>,
}

#[derive(Debug, Default)]
struct ControlState {
    proot_exited: bool,
    /// The first signal sent that the tracee can neither catch, ignore nor
    /// block: the signal it dies of.
    fatal_signal: Option<i32>,
}

impl ProotControl {
    pub fn new(
        container_id: &str,
        table: Arc<dyn ProcessTable>,
        proot_pid: i32,
        tracee: Tracee,
        pty_master: Option<OwnedFd>,
    ) -> Self {
        let tracee_pid = match tracee {
            Tracee::Started(pid) => Some(pid),
            Tracee::Exited => None,
        };
        ProotControl {
            container_id: container_id.to_string(),
            table,
            proot_pid,
            tracee_pid,
            pty_master,
            state: Mutex::new(ControlState::default()),
        }
    }

    pub fn proot_pid(&self) -> i32 {
        self.proot_pid
    }

    pub fn has_exited(&self) -> bool {
        self.lock().proot_exited
    }

    fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends SIGKILL to every process of this proot instance except proot,
    /// which exits by itself once it has no tracee left. Returns how many
    /// processes were signalled.
    pub fn kill_tracees(&self) -> io::Result<usize> {
        let mut killed = 0;

        for _ in 0..KILL_ROUNDS {
            let processes = container_processes(self.table.as_ref(), self.proot_pid)?;
            if processes.is_empty() {
                break;
            }

            for pid in &processes {
                self.table.kill(*pid, libc::SIGKILL)?;
            }
            killed += processes.len();

            // Give the kernel a moment to finish the kills before looking
            // for processes forked in the meantime.
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(killed)
    }

    /// Records that proot has exited, so that later signals are not sent
    /// to pids the kernel may have reused.
    fn mark_exited(&self) {
        self.lock().proot_exited = true;
    }

    /// Translates proot's exit status into the main process's.
    fn exit_status(&self, proot_status: std::process::ExitStatus) -> ExitStatus {
        if let Some(signal) = proot_status.signal() {
            return ExitStatus::Signal(signal);
        }
        if let Some(signal) = self.lock().fatal_signal {
            return ExitStatus::Signal(signal);
        }

        // NOTE: a main process killed by a signal that did not come
        // through `signal` or `kill_all` (a crash, `kill $$`, a signal
        // from another process) shows up as proot's code: 255, or the
        // code of a child that exited earlier.
        ExitStatus::Code(proot_status.code().unwrap_or(255))
    }
}

/// Kills what is left when the last handle goes away while proot still
/// runs: the executor was dropped and the runtime that watched proot has
/// shut down, so nothing else would stop these processes.
impl Drop for ProotControl {
    fn drop(&mut self) {
        if self.has_exited() {
            return;
        }
        if let Err(error) = self.kill_tracees() {
            tracing::warn!(
                container = %self.container_id,
                proot_pid = self.proot_pid,
                %error,
                "failed to kill processes of a dropped container process"
            );
        }
    }
}

impl ProcessControl for ProotControl {
    fn signal(&self, signal: i32) -> Result<(), ExecutorError> {
        let Some(pid) = self.tracee_pid else {
            return Ok(());
        };

        {
            let mut state = self.lock();
            if state.proot_exited {
                return Ok(());
            }
            // A process that is already gone has no masks; the kill below
            // then does nothing.
            if let Ok(masks) = self.table.signal_masks(pid) {
                if kills_by_default(&masks, signal) && state.fatal_signal.is_none() {
                    state.fatal_signal = Some(signal);
                }
            }
        }

        tracing::info!(container = %self.container_id, pid, signal, "sending signal");
        self.table
            .kill(pid, signal)
            .map_err(|e| ExecutorError::io(format!("send signal {signal} to pid {pid}"), e))
    }

    fn kill_all(&self) -> Result<(), ExecutorError> {
        {
            let mut state = self.lock();
            if state.proot_exited {
                return Ok(());
            }
            state.fatal_signal.get_or_insert(libc::SIGKILL);
        }

        let killed = self
            .kill_tracees()
            .map_err(|e| ExecutorError::io("kill the container's processes", e))?;
        tracing::info!(
            container = %self.container_id,
            proot_pid = self.proot_pid,
            killed,
            "killed all processes"
        );

        // proot exits by itself once its tracees are gone; the exit watcher
        // kills it if it does not.
        Ok(())
    }

    fn resize(&self, rows: u16, columns: u16) -> Result<(), ExecutorError> {
        let Some(master) = &self.pty_master else {
            return Ok(());
        };
        set_window_size(master, rows, columns)
            .map_err(|e| ExecutorError::io("set the terminal window size", e))
    }

    fn pid(&self) -> Option<u32> {
        self.tracee_pid.and_then(|pid| u32::try_from(pid).ok())
    }
}

/// Starts a task that waits for `child` (proot) and returns a future of
/// the main process's exit status. `on_exit` runs in that task once proot
/// has been reaped, so no zombie stays behind even if the future is
/// dropped.
pub(crate) fn watch_exit(
    child: Child,
    control: Arc<ProotControl>,
    on_exit: impl FnOnce(ExitStatus) + Send + 'static,
) -> BoxFuture<'static, ExitStatus> {
    let (sender, receiver) = oneshot::channel();

    tokio::spawn(async move {
        let status = wait_for_exit(child, &control).await;
        tracing::info!(
            container = %control.container_id,
            proot_pid = control.proot_pid,
            ?status,
            code = status.code(),
            "process exited"
        );
        remove_proot_temp_files(control.proot_pid);
        on_exit(status);
        // The receiver may be gone: nobody waits for this status.
        let _ = sender.send(status);
    });

    async move { receiver.await.unwrap_or(ExitStatus::Signal(libc::SIGKILL)) }.boxed()
}

async fn wait_for_exit(mut child: Child, control: &ProotControl) -> ExitStatus {
    let proot_status = match control.tracee_pid {
        Some(tracee_pid) => {
            tokio::select! {
                status = child.wait() => status,
                () = tracee_exited(tracee_pid, control.table.as_ref()) => {
                    kill_leftovers(control);
                    wait_with_grace(&mut child, control).await
                }
            }
        }
        None => {
            kill_leftovers(control);
            wait_with_grace(&mut child, control).await
        }
    };
    control.mark_exited();

    match proot_status {
        Ok(status) => control.exit_status(status),
        Err(error) => {
            tracing::warn!(
                container = %control.container_id,
                proot_pid = control.proot_pid,
                %error,
                "lost track of proot; reporting the process as killed"
            );
            ExitStatus::Signal(libc::SIGKILL)
        }
    }
}

/// Kills what the main process left running, as `--kill-on-exit` would
/// in newer proot versions.
fn kill_leftovers(control: &ProotControl) {
    match control.kill_tracees() {
        Ok(0) => {}
        Ok(killed) => tracing::debug!(
            container = %control.container_id,
            killed,
            "killed processes left by the main process"
        ),
        Err(error) => tracing::warn!(
            container = %control.container_id,
            %error,
            "failed to kill processes left by the main process"
        ),
    }
}

async fn wait_with_grace(
    child: &mut Child,
    control: &ProotControl,
) -> io::Result<std::process::ExitStatus> {
    if let Ok(status) = tokio::time::timeout(PROOT_EXIT_GRACE, child.wait()).await {
        return status;
    }

    tracing::warn!(
        container = %control.container_id,
        proot_pid = control.proot_pid,
        "proot did not exit after its main process; killing it"
    );
    kill_leftovers(control);
    child.start_kill()?;
    child.wait().await
}

/// Resolves once `pid` has exited. Uses a pidfd, which works for processes
/// that are not our children, and polls `/proc` on kernels without one.
async fn tracee_exited(pid: i32, table: &dyn ProcessTable) {
    match open_pidfd(pid) {
        Ok(pidfd) => {
            // SAFETY: an `OwnedFd` always returns the same fd from
            // `as_raw_fd` and keeps it open until the `AsyncFd` is dropped.
            let registered = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) };
            if let Ok(pidfd) = registered {
                // An error here means the fd cannot be polled at all; fall
                // back to polling /proc below.
                if pidfd.readable().await.is_ok() {
                    return;
                }
            }
        }
        Err(error) if error.raw_os_error() == Some(libc::ESRCH) => return,
        Err(_) => {}
    }

    while table.is_running(pid) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Removes the files proot 5.1.0 keeps in /tmp (`proot-PID-*` for
/// relocated Unix sockets and bind glue, `prooted-PID-*` for its loader).
/// proot deletes them itself unless it was killed.
fn remove_proot_temp_files(proot_pid: i32) {
    let prefixes = [format!("proot-{proot_pid}-"), format!("prooted-{proot_pid}-")];
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };

    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !prefixes.iter().any(|prefix| name.starts_with(prefix)) {
            continue;
        }
        let path = entry.path();
        let result = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(error) = result {
            tracing::debug!(path = %path.display(), %error, "cannot remove proot temp file");
        }
    }
}

fn open_pidfd(pid: i32) -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;

    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or
    // -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }

    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: `fd` was just returned by pidfd_open and is owned by no one
    // else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::fake::FakeProcessTable;
    use crate::procfs::SignalMasks;

    fn control(table: Arc<FakeProcessTable>) -> ProotControl {
        ProotControl::new("c1", table, 100, Tracee::Started(101), None)
    }

    fn exited(code: i32) -> std::process::ExitStatus {
        std::process::ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn signal_goes_to_tracee() {
        let table = Arc::new(FakeProcessTable::with(&[(100, 1, 0), (101, 100, 100)]));
        let control = control(table.clone());

        control.signal(libc::SIGTERM).unwrap();

        assert_eq!(*table.sent.lock().unwrap(), vec![(101, libc::SIGTERM)]);
    }

    #[test]
    fn uncaught_signal_becomes_exit_status() {
        let table = Arc::new(FakeProcessTable::with(&[(100, 1, 0), (101, 100, 100)]));
        let control = control(table);

        control.signal(libc::SIGTERM).unwrap();

        assert_eq!(control.exit_status(exited(255)), ExitStatus::Signal(15));
    }

    #[test]
    fn caught_signal_keeps_exit_code() {
        let table = Arc::new(FakeProcessTable::with(&[(100, 1, 0), (101, 100, 100)]));
        let masks = SignalMasks {
            caught: 1 << (libc::SIGTERM - 1),
            ..SignalMasks::default()
        };
        table.masks.lock().unwrap().insert(101, masks);
        let control = control(table);

        control.signal(libc::SIGTERM).unwrap();

        assert_eq!(control.exit_status(exited(0)), ExitStatus::Code(0));
    }

    #[test]
    fn killed_proot_reports_signal() {
        let table = Arc::new(FakeProcessTable::with(&[]));
        let control = control(table);

        let status = std::process::ExitStatus::from_raw(libc::SIGKILL);

        assert_eq!(control.exit_status(status), ExitStatus::Signal(9));
    }

    #[test]
    fn kill_all_spares_proot_and_strangers() {
        let table = Arc::new(FakeProcessTable::with(&[
            (1, 0, 0),
            (100, 1, 0),
            (101, 100, 100),
            (102, 1, 100),
            (300, 1, 0),
        ]));
        let control = control(table.clone());

        control.kill_all().unwrap();

        let sent = table.sent.lock().unwrap().clone();
        assert_eq!(sent, vec![(101, libc::SIGKILL), (102, libc::SIGKILL)]);
        assert_eq!(control.exit_status(exited(255)), ExitStatus::Signal(9));
    }

    #[test]
    fn signal_after_exit_is_ignored() {
        let table = Arc::new(FakeProcessTable::with(&[(100, 1, 0), (101, 100, 100)]));
        let control = control(table.clone());
        control.mark_exited();

        control.signal(libc::SIGTERM).unwrap();
        control.kill_all().unwrap();

        assert!(table.sent.lock().unwrap().is_empty());
    }
}
