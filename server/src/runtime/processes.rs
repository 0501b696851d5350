//! A container's processes as `/proc` shows them, for stats, top and
//! pause.
//!
//! Executors without a PID namespace leave no cgroup to read, so a
//! container's processes are its main process and that process's
//! descendants. A daemon that leaves the tree by a double fork is missed.

use std::collections::{HashMap, HashSet};

use super::{Container, Error, Result};

/// One process, from `/proc/PID/stat`, `status` and `cmdline`.
#[derive(Clone, Debug, Default)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    /// The executable name in `/proc/PID/stat`, without brackets.
    pub comm: String,
    /// The controlling terminal's device number, 0 for none.
    pub tty: u64,
    /// CPU time in clock ticks: user, system, and those of waited-for
    /// children.
    pub user_ticks: u64,
    pub system_ticks: u64,
    pub children_ticks: u64,
    /// Start time in clock ticks after boot.
    pub start_ticks: u64,
    pub threads: u64,
    pub cmdline: Vec<String>,
    /// Resident memory in bytes, split as `/proc/PID/status` splits it.
    pub rss_anon: u64,
    pub rss_file: u64,
    pub rss_shmem: u64,
    /// Bytes read from and written to storage, from `/proc/PID/io`; zero
    /// when that file is not readable.
    pub read_bytes: u64,
    pub write_bytes: u64,
}

/// Parses `/proc/PID/stat`. The command name may hold spaces and
/// brackets, so the fields after it are found from its last `)`.
fn parse_stat(pid: u32, text: &str) -> Option<ProcessInfo> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    // Fields from the third (state) on; `fields[n]` is field n + 3.
    let fields: Vec<&str> = text.get(close + 2..)?.split_whitespace().collect();
    let field = |number: usize| -> Option<u64> { fields.get(number - 3)?.parse().ok() };
    Some(ProcessInfo {
        pid,
        ppid: u32::try_from(field(4)?).ok()?,
        comm,
        tty: field(7)?,
        user_ticks: field(14)?,
        system_ticks: field(15)?,
        children_ticks: field(16)? + field(17)?,
        threads: field(20)?,
        start_ticks: field(22)?,
        ..ProcessInfo::default()
    })
}

/// Reads the value in kB of a `Key:   123 kB` line, in bytes.
fn status_kilobytes(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kilobytes| kilobytes * 1024)
}

/// Reads one process, or `None` when it has exited.
pub fn read_process(pid: u32) -> Option<ProcessInfo> {
    let dir = format!("/proc/{pid}");
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let mut info = parse_stat(pid, &stat)?;
    if let Ok(status) = std::fs::read_to_string(format!("{dir}/status")) {
        info.uid = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        info.rss_anon = status_kilobytes(&status, "RssAnon");
        info.rss_file = status_kilobytes(&status, "RssFile");
        info.rss_shmem = status_kilobytes(&status, "RssShmem");
    }
    if let Ok(cmdline) = std::fs::read(format!("{dir}/cmdline")) {
        info.cmdline = cmdline
            .split(|byte| *byte == 0)
            .filter(|part| !part.is_empty())
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect();
    }
    if let Ok(io) = std::fs::read_to_string(format!("{dir}/io")) {
        let value = |key: &str| {
            io.lines()
                .find_map(|line| line.strip_prefix(key)?.trim().parse().ok())
                .unwrap_or(0)
        };
        info.read_bytes = value("read_bytes:");
        info.write_bytes = value("write_bytes:");
    }
    Some(info)
}

/// Returns the parent of every process on the host.
fn parents() -> HashMap<u32, u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parse_stat(pid, &stat)?.ppid))
        })
        .collect()
}

/// Returns `root` and its descendants, parents before children.
pub fn descendants(root: u32) -> Vec<u32> {
    let parents = parents();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, ppid) in &parents {
        children.entry(*ppid).or_default().push(*pid);
    }
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let mut queue = std::collections::VecDeque::from([root]);
    while let Some(pid) = queue.pop_front() {
        if !seen.insert(pid) || !parents.contains_key(&pid) {
            continue;
        }
        found.push(pid);
        let mut next = children.get(&pid).cloned().unwrap_or_default();
        next.sort_unstable();
        queue.extend(next);
    }
    found
}

/// Returns the processes between sidewhale and `pid`, nearest first:
/// the executor's wrappers, such as proot or bwrap. Empty when `pid` is
/// not below sidewhale.
pub fn wrappers(pid: u32) -> Vec<u32> {
    let own = std::process::id();
    let mut chain = Vec::new();
    let mut current = pid;
    // The depth bound guards against a pid reused while walking.
    for _ in 0..16 {
        let Some(parent) = read_process(current).map(|info| info.ppid) else {
            return Vec::new();
        };
        if parent == own {
            return chain;
        }
        if parent <= 1 {
            return Vec::new();
        }
        chain.push(parent);
        current = parent;
    }
    Vec::new()
}

/// Returns the host's clock ticks per second, the unit of `/proc` times.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf reads a constant of the C library and has no
    // preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks)
        .ok()
        .filter(|ticks| *ticks > 0)
        .unwrap_or(100)
}

/// Returns the host's boot time in seconds since the epoch.
pub fn boot_time() -> i64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Returns the host's total CPU time in clock ticks, the sum of the first
/// line of `/proc/stat`.
pub fn system_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|text| {
            let line = text
                .lines()
                .find(|line| line.starts_with("cpu "))?
                .to_string();
            Some(
                line.split_whitespace()
                    .skip(1)
                    .filter_map(|field| field.parse::<u64>().ok())
                    .sum(),
            )
        })
        .unwrap_or(0)
}

/// Returns the host's total memory in bytes, from `/proc/meminfo`.
pub fn memory_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .map(|text| status_kilobytes(&text, "MemTotal"))
        .unwrap_or(0)
}

impl Container {
    /// Returns the pid of the running main process, or the conflict (409)
    /// that Docker returns for a container that is not running.
    pub fn running_pid(&self) -> Result<u32> {
        let record = self.record();
        let pid = self.control().and_then(|control| control.pid());
        match pid {
            Some(pid) if record.state.running() => Ok(pid),
            _ => Err(Error::Conflict(format!(
                "Container {} is not running",
                record.id
            ))),
        }
    }

    /// Returns the container's processes, main process first.
    pub fn processes(&self) -> Result<Vec<ProcessInfo>> {
        let pid = self.running_pid()?;
        Ok(descendants(pid)
            .into_iter()
            .filter_map(read_process)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_the_name() {
        let text = "42 (my (odd) name) S 7 42 42 34816 42 4194560 100 0 0 0 \
                    250 50 3 2 20 0 1 0 12345 1000 10 18446744073709551615";
        let info = parse_stat(42, text).unwrap();
        assert_eq!(info.comm, "my (odd) name");
        assert_eq!(info.ppid, 7);
        assert_eq!(info.tty, 34816);
        assert_eq!(info.user_ticks, 250);
        assert_eq!(info.system_ticks, 50);
        assert_eq!(info.children_ticks, 5);
        assert_eq!(info.threads, 1);
        assert_eq!(info.start_ticks, 12345);
    }

    #[test]
    fn own_process_is_read() {
        let info = read_process(std::process::id()).unwrap();
        assert_eq!(info.pid, std::process::id());
        assert!(info.rss_anon + info.rss_file > 0);
        assert!(!info.cmdline.is_empty());
        assert_eq!(descendants(std::process::id())[0], std::process::id());
    }
}
