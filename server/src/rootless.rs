//! Rootless mode: an unprivileged sidewhale moves itself into a new user
//! namespace that maps its own user to root and its subordinate ids
//! (`/etc/subuid`, `/etc/subgid`) to ids 1 and up.
//!
//! Inside, sidewhale is root with every capability over the namespaces it
//! creates, so container entrypoints may chown files to other users and
//! each container can get its own network namespace. The server's TCP
//! listeners stay in the host's network namespace.
//!
//! Only root may write a map with more than the caller's own id, so the
//! maps are written by the setuid helpers `newuidmap` and `newgidmap`
//! (Debian package `uidmap`), which check the subordinate ranges. A
//! process cannot run them on itself after `unshare(CLONE_NEWUSER)`,
//! because it then no longer runs as its user in the host's namespace.
//! So sidewhale forks a helper first: the parent unshares and signals the
//! helper through a pipe, the helper (still outside) runs both programs on
//! the parent's pid and exits, and the parent continues as the server with
//! the same pid.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Gid, Pid, Uid};
use sidewhale_config::UserNamespaceMode;

/// The largest number of subordinate ranges used per map. Kernels before
/// 4.15 accept at most five lines in `uid_map`, one of which maps the
/// user itself.
const MAX_SUBORDINATE_RANGES: usize = 4;

/// The fix logged when rootless mode is unavailable.
const FIX: &str = "add NAME:100000:65536 to /etc/subuid and /etc/subgid (NAME is the \
                   user running sidewhale) and install newuidmap and newgidmap (Debian \
                   package uidmap), or set user_namespace = \"off\"";

/// One line of `uid_map` or `gid_map`: ids `inside..inside + count` in the
/// namespace are ids `outside..outside + count` on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// The id maps of the user namespace sidewhale runs in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdMaps {
    pub uid_map: Vec<IdRange>,
    pub gid_map: Vec<IdRange>,
}

impl IdMaps {
    /// Returns the number of ids mapped, from the uid map.
    pub fn uid_count(&self) -> u64 {
        self.uid_map.iter().map(|range| u64::from(range.count)).sum()
    }
}

/// Everything needed to enter the namespace, gathered before any fork.
#[derive(Debug)]
struct Plan {
    newuidmap: PathBuf,
    newgidmap: PathBuf,
    maps: IdMaps,
}

static ACTIVE: OnceLock<IdMaps> = OnceLock::new();

/// Returns the maps when rootless mode is active.
pub fn active() -> Option<&'static IdMaps> {
    ACTIVE.get()
}

/// Applies the `user_namespace` key: moves this process into a new user
/// namespace when it is unprivileged and the mode allows it. Must run
/// before any thread starts, because `unshare(CLONE_NEWUSER)` fails in a
/// multithreaded process.
///
/// Fails when the mode is `required` and the namespace cannot be made, or
/// when entering it fails halfway, which leaves the process in an
/// unusable namespace.
pub fn enter(mode: UserNamespaceMode) -> anyhow::Result<()> {
    let uid = Uid::effective();
    if uid.is_root() {
        if mode == UserNamespaceMode::Required {
            tracing::info!(
                "user_namespace = \"required\" has no effect: sidewhale runs as root"
            );
        }
        return Ok(());
    }
    if mode == UserNamespaceMode::Off {
        tracing::debug!("rootless mode is off (user_namespace = \"off\")");
        return Ok(());
    }

    let required = mode == UserNamespaceMode::Required;
    let unavailable = |reason: String| -> anyhow::Result<()> {
        if required {
            anyhow::bail!("user_namespace = \"required\": {reason}; {FIX}");
        }
        tracing::warn!(
            %reason,
            fix = FIX,
            "rootless mode unavailable: sidewhale runs with a single user id, so \
             containers share the host's network and entrypoints that chown files \
             to other users fail"
        );
        Ok(())
    };

    let plan = match Plan::new(uid, Gid::effective()) {
        Ok(plan) => plan,
        Err(reason) => return unavailable(reason),
    };
    if !single_threaded() {
        anyhow::bail!("internal error: rootless mode must be set up before any thread starts");
    }
    // A failure after unshare cannot be undone, so a throwaway child runs
    // the whole procedure first. `auto` then falls back cleanly.
    if let Err(reason) = probe(&plan) {
        return unavailable(reason);
    }
    enter_namespace(&plan).map_err(anyhow::Error::msg).context(
        "failed to enter the user namespace after a successful trial; \
         set user_namespace = \"off\" to run without it",
    )?;
    become_root()?;
    check_maps(&plan.maps)?;

    tracing::info!(
        uid_map = %format_map(&plan.maps.uid_map),
        gid_map = %format_map(&plan.maps.gid_map),
        ids = plan.maps.uid_count(),
        "rootless mode: running as root in a user namespace"
    );
    let _ = ACTIVE.set(plan.maps);
    Ok(())
}

impl Plan {
    /// Finds the helpers and the subordinate ranges of the user `uid`.
    /// Returns a reason for the log when something is missing.
    fn new(uid: Uid, gid: Gid) -> Result<Plan, String> {
        let newuidmap = find_program("newuidmap")?;
        let newgidmap = find_program("newgidmap")?;
        let name = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|user| user.name);
        let subuid = read_ranges(Path::new("/etc/subuid"), name.as_deref(), uid.as_raw())?;
        let subgid = read_ranges(Path::new("/etc/subgid"), name.as_deref(), uid.as_raw())?;
        let user = name.unwrap_or_else(|| uid.to_string());
        Ok(Plan {
            newuidmap,
            newgidmap,
            maps: IdMaps {
                uid_map: build_map(uid.as_raw(), &subuid)
                    .ok_or_else(|| format!("user {user} has no range in /etc/subuid"))?,
                gid_map: build_map(gid.as_raw(), &subgid)
                    .ok_or_else(|| format!("user {user} has no range in /etc/subgid"))?,
            },
        })
    }
}

/// Looks `name` up on `PATH`, then in `/usr/bin` and `/bin`.
fn find_program(name: &str) -> Result<PathBuf, String> {
    sidewhale_netns::find_on_path(name)
        .or_else(|| {
            ["/usr/bin", "/bin"]
                .map(|dir| Path::new(dir).join(name))
                .into_iter()
                .find(|candidate| candidate.is_file())
        })
        .ok_or_else(|| format!("{name} is not installed"))
}

fn read_ranges(path: &Path, name: Option<&str>, uid: u32) -> Result<Vec<(u32, u32)>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse_subordinate_ranges(&text, name, uid)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(format!("cannot read {}: {error}", path.display())),
    }
}

/// Parses `/etc/subuid` or `/etc/subgid` (`NAME_OR_UID:START:COUNT` per
/// line, see subuid(5)) and returns the `(start, count)` ranges of the
/// user given by `name` or `uid`, in file order. Malformed lines and empty
/// ranges are skipped.
// NOTE: ranges served by an NSS `subid` module (libsubid) are not read.
fn parse_subordinate_ranges(text: &str, name: Option<&str>, uid: u32) -> Vec<(u32, u32)> {
    let uid = uid.to_string();
    text.lines()
        .filter_map(|line| {
            let mut fields = line.trim().split(':');
            let owner = fields.next()?;
            let start = fields.next()?.parse::<u32>().ok()?;
            let count = fields.next()?.parse::<u32>().ok()?;
            let matches = owner == uid || name.is_some_and(|name| owner == name);
            (matches && fields.next().is_none() && count > 0).then_some((start, count))
        })
        .collect()
}

/// Builds a map with `own` as 0 and the subordinate ranges from 1 up.
/// Returns `None` without subordinate ranges.
fn build_map(own: u32, ranges: &[(u32, u32)]) -> Option<Vec<IdRange>> {
    if ranges.is_empty() {
        return None;
    }
    let mut map = vec![IdRange {
        inside: 0,
        outside: own,
        count: 1,
    }];
    let mut next_inside: u32 = 1;
    for &(start, count) in ranges.iter().take(MAX_SUBORDINATE_RANGES) {
        // The kernel rejects a map whose inside ids pass u32::MAX.
        let count = count.min(u32::MAX - next_inside);
        if count == 0 {
            break;
        }
        map.push(IdRange {
            inside: next_inside,
            outside: start,
            count,
        });
        next_inside += count;
    }
    Some(map)
}

fn format_map(map: &[IdRange]) -> String {
    map.iter()
        .map(|range| format!("{}:{}:{}", range.inside, range.outside, range.count))
        .collect::<Vec<_>>()
        .join(",")
}

/// Returns `newuidmap`'s or `newgidmap`'s arguments for `pid`:
/// `PID INSIDE OUTSIDE COUNT…`.
fn helper_args(pid: Pid, map: &[IdRange]) -> Vec<OsString> {
    let mut args = vec![OsString::from(pid.to_string())];
    for range in map {
        for value in [range.inside, range.outside, range.count] {
            args.push(value.to_string().into());
        }
    }
    args
}

/// Runs the whole procedure in a forked child that exits afterwards.
/// Returns why it failed.
fn probe(plan: &Plan) -> Result<(), String> {
    let (reader, writer) = pipe()?;
    // SAFETY: `enter` checked that the process has one thread, so the
    // child may allocate and run any code.
    let child = match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            drop(reader);
            let result = enter_namespace(plan);
            let mut writer = File::from(writer);
            if let Err(reason) = &result {
                let _ = writer.write_all(reason.as_bytes());
            }
            // SAFETY: _exit skips the parent's atexit handlers and
            // buffers, which the child must not run.
            unsafe { libc::_exit(i32::from(result.is_err())) }
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(error) => return Err(format!("fork failed: {error}")),
    };
    drop(writer);
    let reason = read_all(reader);
    let status = waitpid(child, None).map_err(|error| format!("waitpid failed: {error}"))?;
    match status {
        WaitStatus::Exited(_, 0) if reason.is_empty() => Ok(()),
        _ if !reason.is_empty() => Err(reason),
        other => Err(format!("the trial of the user namespace ended with {other:?}")),
    }
}

/// Moves the calling process into a new user namespace whose maps the
/// forked helper writes. Returns why it failed.
fn enter_namespace(plan: &Plan) -> Result<(), String> {
    if !single_threaded() {
        return Err("the process already runs several threads".into());
    }
    let parent = nix::unistd::getpid();
    let (ready_reader, ready_writer) = pipe()?;
    let (result_reader, result_writer) = pipe()?;
    // SAFETY: the process has one thread, so the child may allocate and
    // run any code.
    let helper = match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            drop(ready_writer);
            drop(result_reader);
            let outcome = write_maps(plan, parent, ready_reader);
            let mut writer = File::from(result_writer);
            if let Err(reason) = &outcome {
                let _ = writer.write_all(reason.as_bytes());
            }
            // SAFETY: as in `probe`.
            unsafe { libc::_exit(i32::from(outcome.is_err())) }
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(error) => return Err(format!("fork failed: {error}")),
    };
    drop(ready_reader);
    drop(result_writer);

    let unshared = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER);
    if unshared.is_ok() {
        let _ = File::from(ready_writer).write_all(b"1");
    } else {
        // Closing the pipe without a byte makes the helper exit.
        drop(ready_writer);
    }
    let reason = read_all(result_reader);
    let status = waitpid(helper, None);
    if let Err(error) = unshared {
        return Err(format!("unshare(CLONE_NEWUSER) failed: {error}"));
    }
    match status {
        Ok(WaitStatus::Exited(_, 0)) if reason.is_empty() => Ok(()),
        _ if !reason.is_empty() => Err(reason),
        Ok(other) => Err(format!("the id map helper ended with {other:?}")),
        Err(error) => Err(format!("waitpid failed: {error}")),
    }
}

/// Runs in the helper: waits for the parent's byte, then writes its maps.
fn write_maps(plan: &Plan, parent: Pid, ready: OwnedFd) -> Result<(), String> {
    let mut byte = [0u8; 1];
    match File::from(ready).read(&mut byte) {
        Ok(1) => {}
        _ => return Err(String::new()),
    }
    run_helper(&plan.newuidmap, &helper_args(parent, &plan.maps.uid_map))?;
    run_helper(&plan.newgidmap, &helper_args(parent, &plan.maps.gid_map))
}

fn run_helper(program: &Path, args: &[OsString]) -> Result<(), String> {
    let shown = || {
        let args: Vec<_> = args.iter().map(|arg| arg.to_string_lossy()).collect();
        format!("{} {}", program.display(), args.join(" "))
    };
    let output = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|error| format!("cannot run {}: {error}", shown()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(format!("{} failed ({}): {}", shown(), output.status, stderr.trim()))
}

/// Sets every user and group id to 0, the namespace's root. Without it
/// the saved ids could still name the unprivileged user.
fn become_root() -> anyhow::Result<()> {
    let root_gid = Gid::from_raw(0);
    let root_uid = Uid::from_raw(0);
    nix::unistd::setresgid(root_gid, root_gid, root_gid)
        .context("setresgid(0) in the user namespace failed")?;
    nix::unistd::setresuid(root_uid, root_uid, root_uid)
        .context("setresuid(0) in the user namespace failed")?;
    // Changing ids clears the dumpable flag, which children inherit. Their
    // /proc files then belong to the host's root, and sidewhale could not
    // write the id maps of the user namespaces its children create. The
    // process still runs as the same host user, so nothing is exposed.
    // SAFETY: prctl with PR_SET_DUMPABLE takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error())
            .context("prctl(PR_SET_DUMPABLE) in the user namespace failed");
    }
    Ok(())
}

/// Compares `/proc/self/uid_map` and `gid_map` with the planned maps.
fn check_maps(expected: &IdMaps) -> anyhow::Result<()> {
    for (file, map) in [("uid_map", &expected.uid_map), ("gid_map", &expected.gid_map)] {
        let path = format!("/proc/self/{file}");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let found = parse_proc_map(&text);
        if &found != map {
            anyhow::bail!(
                "{path} is {:?} after entering the user namespace, expected {:?}",
                format_map(&found),
                format_map(map)
            );
        }
    }
    Ok(())
}

/// Parses the lines of `/proc/PID/uid_map`: `INSIDE OUTSIDE COUNT`.
fn parse_proc_map(text: &str) -> Vec<IdRange> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace().map(|field| field.parse::<u32>());
            match (fields.next(), fields.next(), fields.next()) {
                (Some(Ok(inside)), Some(Ok(outside)), Some(Ok(count))) => Some(IdRange {
                    inside,
                    outside,
                    count,
                }),
                _ => None,
            }
        })
        .collect()
}

fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| tasks.count() == 1)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|error| format!("pipe failed: {error}"))
}

fn read_all(fd: OwnedFd) -> String {
    let mut text = String::new();
    let _ = File::from(fd).read_to_string(&mut text);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBUID: &str = "\
alice:100000:65536
# a comment
1001:200000:1000
bob:300000:65536
alice:400000:0
alice:x:5
carol:500000:10:extra
";

    #[test]
    fn ranges_match_name_or_uid() {
        let ranges = parse_subordinate_ranges(SUBUID, Some("alice"), 1001);

        assert_eq!(ranges, vec![(100000, 65536), (200000, 1000)]);
    }

    #[test]
    fn ranges_skip_malformed_lines() {
        assert!(parse_subordinate_ranges(SUBUID, Some("carol"), 7).is_empty());
        assert!(parse_subordinate_ranges(SUBUID, None, 7).is_empty());
    }

    #[test]
    fn map_puts_own_id_at_zero() {
        let map = build_map(1001, &[(100000, 65536), (200000, 1000)]).unwrap();

        assert_eq!(
            map,
            vec![
                IdRange { inside: 0, outside: 1001, count: 1 },
                IdRange { inside: 1, outside: 100000, count: 65536 },
                IdRange { inside: 65537, outside: 200000, count: 1000 },
            ]
        );
    }

    #[test]
    fn map_needs_subordinate_range() {
        assert_eq!(build_map(1001, &[]), None);
    }

    #[test]
    fn map_limits_range_count() {
        let ranges: Vec<(u32, u32)> = (0..10).map(|i| (100000 + i * 10, 10)).collect();

        let map = build_map(1001, &ranges).unwrap();

        assert_eq!(map.len(), 1 + MAX_SUBORDINATE_RANGES);
    }

    #[test]
    fn helper_args_list_triples() {
        let map = build_map(1001, &[(100000, 65536)]).unwrap();

        let args = helper_args(Pid::from_raw(42), &map);

        assert_eq!(args, ["42", "0", "1001", "1", "1", "100000", "65536"]);
    }

    #[test]
    fn proc_map_round_trips() {
        let text = "         0       1001          1\n         1     100000      65536\n";

        let map = parse_proc_map(text);

        assert_eq!(map, build_map(1001, &[(100000, 65536)]).unwrap());
    }
}
