//! The process table: reading `/proc` and sending signals.
//!
//! Everything the executor learns about running processes goes through
//! the `ProcessTable` trait, so the logic that decides whom to signal and
//! how a process ended can be tested with a table built in memory.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::PathBuf;

/// One process as `/proc/PID/status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcessInfo {
    pub pid: i32,
    pub ppid: i32,
    /// The pid of the process tracing this one, 0 for none.
    pub tracer_pid: i32,
    /// Exited but not yet reaped by its parent.
    pub zombie: bool,
}

/// Signal dispositions of a process, as bit masks where bit `n - 1`
/// stands for signal `n` (the `SigBlk`, `SigIgn` and `SigCgt` lines).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SignalMasks {
    pub blocked: u64,
    pub ignored: u64,
    pub caught: u64,
}

/// Access to the host's processes.
pub(crate) trait ProcessTable: Send + Sync {
    /// Returns the direct children of `pid`.
    fn children(&self, pid: i32) -> io::Result<Vec<i32>>;

    /// Returns every process currently visible.
    fn processes(&self) -> io::Result<Vec<ProcessInfo>>;

    /// Returns the signal dispositions of `pid`.
    fn signal_masks(&self, pid: i32) -> io::Result<SignalMasks>;

    /// Returns whether `pid` exists and is not a zombie.
    fn is_running(&self, pid: i32) -> bool;

    /// Sends `signal` to `pid`. A process that no longer exists is not an
    /// error.
    fn kill(&self, pid: i32, signal: i32) -> io::Result<()>;

    /// Returns the inode number of the mount namespace of `pid`, which
    /// identifies the namespace on this host.
    fn mount_namespace(&self, pid: i32) -> io::Result<u64>;
}

/// The real process table of this host, read from `/proc`.
#[derive(Clone, Debug)]
pub(crate) struct LinuxProcessTable {
    proc_root: PathBuf,
}

impl Default for LinuxProcessTable {
    fn default() -> Self {
        LinuxProcessTable {
            proc_root: PathBuf::from("/proc"),
        }
    }
}

impl LinuxProcessTable {
    fn status(&self, pid: i32) -> io::Result<HashMap<String, String>> {
        let text = fs::read_to_string(self.proc_root.join(pid.to_string()).join("status"))?;
        Ok(parse_status(&text))
    }
}

impl ProcessTable for LinuxProcessTable {
    fn children(&self, pid: i32) -> io::Result<Vec<i32>> {
        let tasks = fs::read_dir(self.proc_root.join(pid.to_string()).join("task"))?;
        let mut children = Vec::new();
        for task in tasks {
            let path = task?.path().join("children");
            match fs::read_to_string(&path) {
                Ok(text) => children.extend(
                    text.split_whitespace()
                        .filter_map(|pid| pid.parse::<i32>().ok()),
                ),
                // A thread that ended while we read the directory.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(children)
    }

    fn processes(&self) -> io::Result<Vec<ProcessInfo>> {
        let mut processes = Vec::new();
        for entry in fs::read_dir(&self.proc_root)? {
            let Ok(pid) = entry?.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            // Processes that exit between readdir and read are skipped.
            let Ok(status) = self.status(pid) else {
                continue;
            };
            processes.push(ProcessInfo {
                pid,
                ppid: field(&status, "PPid").unwrap_or(0),
                tracer_pid: field(&status, "TracerPid").unwrap_or(0),
                zombie: is_zombie(&status),
            });
        }
        Ok(processes)
    }

    fn signal_masks(&self, pid: i32) -> io::Result<SignalMasks> {
        let status = self.status(pid)?;
        let mask = |name: &str| {
            status
                .get(name)
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                .unwrap_or(0)
        };
        Ok(SignalMasks {
            blocked: mask("SigBlk"),
            ignored: mask("SigIgn"),
            caught: mask("SigCgt"),
        })
    }

    fn is_running(&self, pid: i32) -> bool {
        match self.status(pid) {
            Ok(status) => !is_zombie(&status),
            Err(_) => false,
        }
    }

    fn kill(&self, pid: i32, signal: i32) -> io::Result<()> {
        // SAFETY: kill(2) has no memory-safety preconditions.
        let result = unsafe { libc::kill(pid, signal) };
        if result == 0 {
            return Ok(());
        }

        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        Err(error)
    }

    fn mount_namespace(&self, pid: i32) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;

        let path = self.proc_root.join(pid.to_string()).join("ns/mnt");
        Ok(fs::metadata(path)?.ino())
    }
}

fn parse_status(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.to_string(), value.trim().to_string()))
        .collect()
}

fn is_zombie(status: &HashMap<String, String>) -> bool {
    status
        .get("State")
        .is_some_and(|state| state.starts_with('Z') || state.starts_with('X'))
}

fn field(status: &HashMap<String, String>, name: &str) -> Option<i32> {
    status.get(name)?.parse().ok()
}

/// Finds every process that belongs to the proot instance `proot_pid`:
/// its descendants, plus the processes it traces. The second set matters
/// because a daemon whose parent exited is reparented to a host process
/// outside the tree, but proot keeps tracing it. Neither `proot_pid` nor
/// zombies are included.
pub(crate) fn container_processes(
    table: &dyn ProcessTable,
    proot_pid: i32,
) -> io::Result<BTreeSet<i32>> {
    let processes = table.processes()?;

    let traced: BTreeSet<i32> = processes
        .iter()
        .filter(|process| process.tracer_pid == proot_pid)
        .map(|process| process.pid)
        .collect();
    let mut found = with_descendants(&processes, proot_pid, traced);

    found.remove(&proot_pid);
    Ok(found)
}

/// Finds the descendants of `pid`, without `pid` itself and without
/// zombies.
pub(crate) fn descendants(table: &dyn ProcessTable, pid: i32) -> io::Result<BTreeSet<i32>> {
    let processes = table.processes()?;
    let mut found = with_descendants(&processes, pid, BTreeSet::new());
    found.remove(&pid);
    Ok(found)
}

/// Finds every live process in the mount namespace `namespace`, plus the
/// descendants of `pid`. A process whose namespace cannot be read (it
/// exited, or belongs to another user) is left out.
pub(crate) fn mount_namespace_members(
    table: &dyn ProcessTable,
    namespace: u64,
    pid: i32,
) -> io::Result<BTreeSet<i32>> {
    let processes = table.processes()?;
    let members: BTreeSet<i32> = processes
        .iter()
        .filter(|process| table.mount_namespace(process.pid).ok() == Some(namespace))
        .map(|process| process.pid)
        .chain(std::iter::once(pid))
        .collect();
    let mut found = with_descendants(&processes, pid, members);
    // A container never shares sidewhale's mount namespace, but guard
    // against signalling sidewhale itself.
    if let Ok(own_pid) = i32::try_from(std::process::id()) {
        found.remove(&own_pid);
    }
    Ok(found)
}

/// Adds to `found` the descendants of `root` and of every process already
/// in `found`, then removes zombies.
fn with_descendants(
    processes: &[ProcessInfo],
    root: i32,
    mut found: BTreeSet<i32>,
) -> BTreeSet<i32> {
    loop {
        let before = found.len();
        for process in processes {
            if process.ppid == root || found.contains(&process.ppid) {
                found.insert(process.pid);
            }
        }
        if found.len() == before {
            break;
        }
    }

    for process in processes.iter().filter(|process| process.zombie) {
        found.remove(&process.pid);
    }
    found
}

/// Returns whether delivering `signal` to a process with these
/// dispositions kills it right away: the signal is neither caught, ignored
/// nor blocked, and its default action is to terminate. `SIGKILL` always
/// kills.
pub(crate) fn kills_by_default(masks: &SignalMasks, signal: i32) -> bool {
    if signal == libc::SIGKILL {
        return true;
    }
    if !(1..=64).contains(&signal) || !terminates_by_default(signal) {
        return false;
    }

    let bit = 1u64 << (signal - 1);
    (masks.blocked | masks.ignored | masks.caught) & bit == 0
}

/// Returns false for the signals whose default action (signal(7)) is not
/// to terminate.
fn terminates_by_default(signal: i32) -> bool {
    !matches!(
        signal,
        libc::SIGCHLD
            | libc::SIGCONT
            | libc::SIGSTOP
            | libc::SIGTSTP
            | libc::SIGTTIN
            | libc::SIGTTOU
            | libc::SIGURG
            | libc::SIGWINCH
    )
}

#[cfg(test)]
pub(crate) mod fake {
    //! An in-memory process table for unit tests.

    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct FakeProcessTable {
        pub processes: Mutex<Vec<ProcessInfo>>,
        pub masks: Mutex<HashMap<i32, SignalMasks>>,
        pub sent: Mutex<Vec<(i32, i32)>>,
        /// Mount namespace inodes by pid; missing pids have none.
        pub namespaces: Mutex<HashMap<i32, u64>>,
    }

    impl FakeProcessTable {
        pub fn with(processes: &[(i32, i32, i32)]) -> Self {
            let table = FakeProcessTable::default();
            *table.processes.lock().unwrap() = processes
                .iter()
                .map(|&(pid, ppid, tracer_pid)| ProcessInfo {
                    pid,
                    ppid,
                    tracer_pid,
                    zombie: false,
                })
                .collect();
            table
        }
    }

    impl ProcessTable for FakeProcessTable {
        fn children(&self, pid: i32) -> io::Result<Vec<i32>> {
            let processes = self.processes.lock().unwrap();
            Ok(processes
                .iter()
                .filter(|p| p.ppid == pid)
                .map(|p| p.pid)
                .collect())
        }

        fn processes(&self) -> io::Result<Vec<ProcessInfo>> {
            Ok(self.processes.lock().unwrap().clone())
        }

        fn signal_masks(&self, pid: i32) -> io::Result<SignalMasks> {
            Ok(self
                .masks
                .lock()
                .unwrap()
                .get(&pid)
                .copied()
                .unwrap_or_default())
        }

        fn is_running(&self, pid: i32) -> bool {
            self.processes.lock().unwrap().iter().any(|p| p.pid == pid)
        }

        fn mount_namespace(&self, pid: i32) -> io::Result<u64> {
            self.namespaces
                .lock()
                .unwrap()
                .get(&pid)
                .copied()
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }

        /// Records the signal; SIGKILL also removes the process.
        fn kill(&self, pid: i32, signal: i32) -> io::Result<()> {
            self.sent.lock().unwrap().push((pid, signal));
            if signal == libc::SIGKILL {
                self.processes.lock().unwrap().retain(|p| p.pid != pid);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeProcessTable;
    use super::*;

    #[test]
    fn tree_includes_reparented_tracees() {
        // 100 is proot, 101 its tracee, 102 a child of 101, 103 a daemon
        // reparented to host pid 1 but still traced, 200 unrelated.
        let table = FakeProcessTable::with(&[
            (1, 0, 0),
            (100, 50, 0),
            (101, 100, 100),
            (102, 101, 100),
            (103, 1, 100),
            (104, 103, 100),
            (200, 1, 0),
        ]);

        let found = container_processes(&table, 100).unwrap();

        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            vec![101, 102, 103, 104]
        );
    }

    #[test]
    fn default_signal_kills_uncaught() {
        let masks = SignalMasks::default();

        assert!(kills_by_default(&masks, libc::SIGTERM));
        assert!(kills_by_default(&masks, libc::SIGKILL));
        assert!(!kills_by_default(&masks, libc::SIGCHLD));
        assert!(!kills_by_default(&masks, libc::SIGWINCH));
    }

    #[test]
    fn caught_or_blocked_signal_does_not_kill() {
        let bit = 1u64 << (libc::SIGTERM - 1);
        let caught = SignalMasks {
            caught: bit,
            ..SignalMasks::default()
        };
        let blocked = SignalMasks {
            blocked: bit,
            ..SignalMasks::default()
        };

        assert!(!kills_by_default(&caught, libc::SIGTERM));
        assert!(!kills_by_default(&blocked, libc::SIGTERM));
        assert!(kills_by_default(&caught, libc::SIGKILL));
    }

    #[test]
    fn status_file_fields_parse() {
        let status = parse_status("Name:\tsh\nState:\tS (sleeping)\nPPid:\t7\nTracerPid:\t5\n");

        assert_eq!(field(&status, "PPid"), Some(7));
        assert_eq!(field(&status, "TracerPid"), Some(5));
    }

    #[test]
    fn real_table_sees_this_process() {
        let table = LinuxProcessTable::default();
        let me = std::process::id() as i32;

        let processes = table.processes().unwrap();

        assert!(processes.iter().any(|p| p.pid == me));
        assert!(table.is_running(me));
    }
}
