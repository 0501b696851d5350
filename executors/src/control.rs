//! Control of a spawned container process: signals, killing, window size,
//! and the exit status.
//!
//! The spawned child is proot, bwrap or nsenter wrapping the image's
//! process, or (with chroot) the image's process itself. `Scope` says how
//! the processes that belong to it are found.
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

use crate::procfs::{
    container_processes, descendants, kills_by_default, mount_namespace_members, ProcessTable,
};
use crate::pty::set_window_size;

/// How long a wrapper (proot, bwrap, nsenter) may take to exit after its
/// processes were killed before it is killed itself.
const PROOT_EXIT_GRACE: Duration = Duration::from_secs(3);

/// Rounds of "find the container's processes, kill them" in `kill_all`.
/// More than one catches processes forked while the first round ran.
const KILL_ROUNDS: usize = 5;

/// The state of the image's process (proot's or a wrapper's child) when
/// `start` looked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tracee {
    /// Running (or exited but not yet reaped) with this host pid.
    Started(i32),
    /// Already gone, or never started, by the time proot was looked at.
    Exited,
}

/// Which processes belong to a spawned child, for `kill_all`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The child is proot: its descendants and the processes it traces,
    /// without proot itself, which exits once they are gone.
    Traced,
    /// The child is a wrapper such as bwrap or nsenter: its descendants,
    /// without the wrapper, which exits once they are gone.
    Descendants,
    /// The child is the image's process: it and its descendants.
    Tree,
    /// The child is the image's process: every process in this mount
    /// namespace (by inode), which catches daemons that left the tree.
    MountNamespace(u64),
}

/// The control of one spawned child: a container's main process or an
/// exec.
pub(crate) struct ChildControl {
    container_id: String,
    table: Arc<dyn ProcessTable>,
    scope: Scope,
    /// The host pid of the process sidewhale spawned.
    child_pid: i32,
    /// The process the image sees as its own. `None` when it had exited
    /// before it was found.
    tracee_pid: Option<i32>,
    pty_master: Option<OwnedFd>,
    state: Mutex<ControlState>,
}

#[derive(Debug, Default)]
struct ControlState {
    child_exited: bool,
    /// The first signal sent that the tracee can neither catch, ignore nor
    /// block: the signal it dies of.
    fatal_signal: Option<i32>,
}

impl ChildControl {
    pub fn new(
        container_id: &str,
        table: Arc<dyn ProcessTable>,
        scope: Scope,
        child_pid: i32,
        tracee: Tracee,
        pty_master: Option<OwnedFd>,
    ) -> Self {
        let tracee_pid = match tracee {
            Tracee::Started(pid) => Some(pid),
            Tracee::Exited => None,
        };
        ChildControl {
            container_id: container_id.to_string(),
            table,
            scope,
            child_pid,
            tracee_pid,
            pty_master,
            state: Mutex::new(ControlState::default()),
        }
    }

    pub fn child_pid(&self) -> i32 {
        self.child_pid
    }

    pub fn has_exited(&self) -> bool {
        self.lock().child_exited
    }

    fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns the live processes that belong to the child, as `scope`
    /// defines them.
    fn members(&self) -> io::Result<std::collections::BTreeSet<i32>> {
        let table = self.table.as_ref();
        match self.scope {
            Scope::Traced => container_processes(table, self.child_pid),
            Scope::Descendants => descendants(table, self.child_pid),
            Scope::Tree => {
                let mut members = descendants(table, self.child_pid)?;
                if table.is_running(self.child_pid) {
                    members.insert(self.child_pid);
                }
                Ok(members)
            }
            Scope::MountNamespace(namespace) => {
                let mut members = mount_namespace_members(table, namespace, self.child_pid)?;
                if !table.is_running(self.child_pid) {
                    members.remove(&self.child_pid);
                }
                Ok(members)
            }
        }
    }

    /// Sends SIGKILL to every process that belongs to the child (see
    /// `Scope`). Returns how many processes were signalled.
    pub fn kill_tracees(&self) -> io::Result<usize> {
        let mut killed = 0;

        for _ in 0..KILL_ROUNDS {
            let processes = self.members()?;
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

    /// Records that the child has exited, so that later signals are not
    /// sent to pids the kernel may have reused.
    fn mark_exited(&self) {
        self.lock().child_exited = true;
    }

    /// Translates the child's exit status into the image process's. bwrap
    /// exits with 128 plus the signal number when its child was killed;
    /// the recorded fatal signal turns that back into a signal too.
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

/// Kills what is left when the last handle goes away while the child still
/// runs: the executor was dropped and the runtime that watched the child
/// has shut down, so nothing else would stop these processes.
impl Drop for ChildControl {
    fn drop(&mut self) {
        if self.has_exited() {
            return;
        }
        if let Err(error) = self.kill_tracees() {
            tracing::warn!(
                container = %self.container_id,
                child_pid = self.child_pid,
                %error,
                "failed to kill processes of a dropped container process"
            );
        }
    }
}

impl ProcessControl for ChildControl {
    fn signal(&self, signal: i32) -> Result<(), ExecutorError> {
        let Some(pid) = self.tracee_pid else {
            return Ok(());
        };

        {
            let mut state = self.lock();
            if state.child_exited {
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
            if state.child_exited {
                return Ok(());
            }
            state.fatal_signal.get_or_insert(libc::SIGKILL);
        }

        let killed = self
            .kill_tracees()
            .map_err(|e| ExecutorError::io("kill the container's processes", e))?;
        tracing::info!(
            container = %self.container_id,
            child_pid = self.child_pid,
            killed,
            "killed all processes"
        );

        // A wrapper exits by itself once its processes are gone; the exit
        // watcher kills it if it does not.
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

    fn group_leader(&self) -> Option<u32> {
        u32::try_from(self.child_pid).ok()
    }
}

/// Starts a task that waits for `child` and returns a future of the image
/// process's exit status. `on_exit` runs in that task once the child has
/// been reaped, so no zombie stays behind even if the future is dropped.
pub(crate) fn watch_exit(
    child: Child,
    control: Arc<ChildControl>,
    on_exit: impl FnOnce(ExitStatus) + Send + 'static,
) -> BoxFuture<'static, ExitStatus> {
    let (sender, receiver) = oneshot::channel();

    tokio::spawn(async move {
        let status = wait_for_exit(child, &control).await;
        tracing::info!(
            container = %control.container_id,
            child_pid = control.child_pid,
            ?status,
            code = status.code(),
            "process exited"
        );
        if control.scope == Scope::Traced {
            remove_proot_temp_files(control.child_pid);
        }
        on_exit(status);
        // The receiver is gone when no caller awaits this status.
        let _ = sender.send(status);
    });

    async move { receiver.await.unwrap_or(ExitStatus::Signal(libc::SIGKILL)) }.boxed()
}

async fn wait_for_exit(mut child: Child, control: &ChildControl) -> ExitStatus {
    let proot_status = match (control.scope, control.tracee_pid) {
        (Scope::Traced, Some(tracee_pid)) => {
            tokio::select! {
                status = child.wait() => status,
                () = tracee_exited(tracee_pid, control.table.as_ref()) => {
                    kill_leftovers(control);
                    wait_with_grace(&mut child, control).await
                }
            }
        }
        (Scope::Traced, None) => {
            kill_leftovers(control);
            wait_with_grace(&mut child, control).await
        }
        // bwrap and nsenter exit by themselves once the image's process
        // has exited. Killing bwrap's init here would replace the
        // process's exit code with 137.
        _ => child.wait().await,
    };

    // Without a wrapper nothing waits for the image's daemons, so they are
    // killed here, as Docker does when the main process exits.
    if matches!(control.scope, Scope::MountNamespace(_)) {
        kill_leftovers(control);
    }
    control.mark_exited();

    match proot_status {
        Ok(status) => control.exit_status(status),
        Err(error) => {
            tracing::warn!(
                container = %control.container_id,
                child_pid = control.child_pid,
                %error,
                "lost track of the child; reporting the process as killed"
            );
            ExitStatus::Signal(libc::SIGKILL)
        }
    }
}

/// Kills what the main process left running, as `--kill-on-exit` would
/// in newer proot versions.
fn kill_leftovers(control: &ChildControl) {
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
    control: &ChildControl,
) -> io::Result<std::process::ExitStatus> {
    if let Ok(status) = tokio::time::timeout(PROOT_EXIT_GRACE, child.wait()).await {
        return status;
    }

    tracing::warn!(
        container = %control.container_id,
        child_pid = control.child_pid,
        "the child did not exit after the image's process; killing it"
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
    let prefixes = [
        format!("proot-{proot_pid}-"),
        format!("prooted-{proot_pid}-"),
    ];
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

    fn control(table: Arc<FakeProcessTable>) -> ChildControl {
        ChildControl::new("c1", table, Scope::Traced, 100, Tracee::Started(101), None)
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
    fn mount_namespace_scope_kills_reparented_daemon() {
        // 100 is the chroot main process, 101 its child, 102 a daemon
        // reparented to host pid 1, 300 a stranger in another namespace.
        let table = Arc::new(FakeProcessTable::with(&[
            (1, 0, 0),
            (100, 1, 0),
            (101, 100, 0),
            (102, 1, 0),
            (300, 1, 0),
        ]));
        table
            .namespaces
            .lock()
            .unwrap()
            .extend([(100, 7), (101, 7), (102, 7), (300, 8)]);
        let control = ChildControl::new(
            "c1",
            table.clone(),
            Scope::MountNamespace(7),
            100,
            Tracee::Started(100),
            None,
        );

        control.kill_all().unwrap();

        let mut killed: Vec<i32> = table
            .sent
            .lock()
            .unwrap()
            .iter()
            .map(|(pid, _)| *pid)
            .collect();
        killed.sort_unstable();
        assert_eq!(killed, vec![100, 101, 102]);
    }

    #[test]
    fn descendants_scope_spares_wrapper() {
        let table = Arc::new(FakeProcessTable::with(&[
            (100, 1, 0),
            (101, 100, 0),
            (102, 101, 0),
        ]));
        let control = ChildControl::new(
            "c1",
            table.clone(),
            Scope::Descendants,
            100,
            Tracee::Started(102),
            None,
        );

        control.kill_all().unwrap();

        let sent = table.sent.lock().unwrap().clone();
        assert_eq!(sent, vec![(101, libc::SIGKILL), (102, libc::SIGKILL)]);
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
