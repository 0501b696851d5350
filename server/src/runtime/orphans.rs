//! Processes a crashed sidewhale left running.
//!
//! Executors start each container in a process group of its own, so when
//! sidewhale restarts and finds a container recorded as running whose
//! process group still lives, it kills that group.

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{getpgid, getpgrp, Pid};

use super::model::State;

/// Reads the start time of a process in clock ticks since boot, field 22
/// of `/proc/PID/stat`.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in field 2 may contain spaces and parentheses, so
    // the fields are counted from the last closing parenthesis.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Kills what a crashed sidewhale left of a container: the executor's
/// process group, and the main process, each only while its pid still
/// names the process that was recorded.
pub fn kill_leftover(container: &str, state: &State) {
    if let Some((leader, start)) = state.group_leader {
        if let Some(leader) = live_pid(leader, Some(start)) {
            if getpgid(Some(leader)) == Ok(leader) && leader != getpgrp() {
                let _ = killpg(leader, Signal::SIGKILL);
            }
            let _ = kill(leader, Signal::SIGKILL);
            tracing::warn!(container, pid = leader.as_raw(), "killed a process group left by an earlier sidewhale");
        }
    }
    if let Some(pid) = live_pid(state.pid, state.process_start) {
        let _ = kill(pid, Signal::SIGKILL);
        tracing::warn!(container, pid = pid.as_raw(), "killed a container process left by an earlier sidewhale");
    }
}

/// Returns the pid when a process with it runs and started at `start`.
fn live_pid(pid: u32, start: Option<u64>) -> Option<Pid> {
    let start = start?;
    if pid <= 1 || start_time(pid) != Some(start) {
        return None;
    }
    i32::try_from(pid).ok().map(Pid::from_raw)
}

#[cfg(test)]
mod tests {
    #[test]
    fn start_time_of_self() {
        let start = super::start_time(std::process::id());
        assert!(start.is_some_and(|ticks| ticks > 0));
    }
}
