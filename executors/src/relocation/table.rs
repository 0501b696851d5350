//! Copies of the `/proc` network tables in which a container's relocated
//! host ports read as its own ports.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use sidewhale_core::RelocatedPorts;

use super::{read_string, Memory, Response};

/// The maximum length of a `/proc` network table's path, with its NUL:
/// `/proc/NNNNNNN/task/NNNNNNN/net/udp6`.
const MAX_TABLE_PATH: usize = 48;

/// Responds to the opening of a `/proc` network table with a copy in which
/// the container's relocated ports read as its own. The copy is a memfd
/// that the kernel installs in the process as the call's result.
pub(super) fn open_table(
    listener: RawFd,
    request: &libc::seccomp_notif,
    path: u64,
    flags: i32,
    ports: &RelocatedPorts,
) -> Response {
    // The kernel handles a directory or path-only open itself.
    let special = libc::O_DIRECTORY | libc::O_PATH;
    if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & special != 0 {
        return Response::Continue;
    }
    let Ok(memory) = Memory::open(request.pid) else {
        return Response::Continue;
    };
    let Ok(bytes) = read_string(&memory, path, MAX_TABLE_PATH) else {
        return Response::Continue;
    };
    let Ok(path) = std::str::from_utf8(&bytes) else {
        return Response::Continue;
    };
    if !is_network_table(path) {
        return Response::Continue;
    }

    // The path is the host's, as proot translated it. The caller shares
    // sidewhale's network namespace, so both read the same table.
    let Ok(text) = std::fs::read_to_string(path) else {
        return Response::Continue;
    };
    let text = rewrite_table(&text, |port| ports.container_port(port));
    let Ok(copy) = memfd(&text) else {
        return Response::Continue;
    };
    let mut add = libc::seccomp_notif_addfd {
        id: request.id,
        flags: libc::SECCOMP_ADDFD_FLAG_SEND as u32,
        srcfd: copy.as_raw_fd() as u32,
        newfd: 0,
        newfd_flags: (flags & libc::O_CLOEXEC) as u32,
    };
    // SAFETY: SECCOMP_IOCTL_NOTIF_ADDFD reads one seccomp_notif_addfd. With
    // SECCOMP_ADDFD_FLAG_SEND it also responds to the notification.
    let result = unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_ADDFD, &mut add) };
    if result < 0 {
        return Response::Continue;
    }
    Response::Sent
}

/// Returns whether `path` names a `/proc` network table: `/proc/net/tcp`,
/// `/proc/self/net/udp6`, `/proc/PID/task/TID/net/tcp` and the like.
fn is_network_table(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/proc/") else {
        return false;
    };
    let Some((owner, table)) = rest.rsplit_once("net/") else {
        return false;
    };
    let numeric = |part: &str| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit());
    let parts: Vec<&str> = owner.trim_end_matches('/').split('/').collect();
    let owner_ok = match parts.as_slice() {
        [""] | ["self"] | ["thread-self"] => true,
        [pid] => numeric(pid),
        [pid, "task", tid] => numeric(pid) && numeric(tid),
        _ => false,
    };
    owner_ok && matches!(table, "tcp" | "tcp6" | "udp" | "udp6")
}

/// Rewrites the local and remote ports of a `/proc/net/tcp`-style table
/// with `container_port`, which returns the container port for a host
/// port. The ports are four hex digits, so every line keeps its length.
fn rewrite_table(text: &str, container_port: impl Fn(u16) -> Option<u16>) -> String {
    let mut lines = Vec::new();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        if index == 0 {
            lines.push(line.to_string());
            continue;
        }
        let mut rewritten = line.to_string();
        // Fields: `sl`, local address, remote address, then the rest.
        let mut offset = 0;
        for (field_index, field) in line.split_whitespace().take(3).enumerate() {
            let start = offset + line[offset..].find(field).unwrap_or(0);
            offset = start + field.len();
            if field_index == 0 {
                continue;
            }
            let Some((_, port)) = field.rsplit_once(':') else {
                continue;
            };
            let Some(mapped) = u16::from_str_radix(port, 16).ok().and_then(&container_port) else {
                continue;
            };
            let port_start = offset - port.len();
            rewritten.replace_range(port_start..offset, &format!("{mapped:04X}"));
        }
        lines.push(rewritten);
    }
    lines.concat()
}

fn memfd(text: &str) -> io::Result<OwnedFd> {
    use std::io::{Seek, Write};

    // SAFETY: the name is a NUL-terminated literal.
    let fd = unsafe { libc::memfd_create(c"proc-net".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is new and owned here.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(text.as_bytes())?;
    file.rewind()?;
    Ok(file.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_table_paths() {
        assert!(is_network_table("/proc/net/tcp"));
        assert!(is_network_table("/proc/self/net/tcp6"));
        assert!(is_network_table("/proc/4242/net/udp"));
        assert!(is_network_table("/proc/42/task/43/net/udp6"));
        assert!(!is_network_table("/proc/net/unix"));
        assert!(!is_network_table("/proc/net/tcpx"));
        assert!(!is_network_table("/srv/proc/net/tcp"));
        assert!(!is_network_table("/proc/x/net/tcp"));
    }

    #[test]
    fn table_shows_container_ports() {
        let table = "  sl  local_address rem_address   st\n\
                     \x20  0: 00000000:9C40 00000000:0000 0A\n\
                     \x20  1: 0100007F:1F90 0100007F:9C40 01\n";
        let rewritten = rewrite_table(table, |port| (port == 40000).then_some(6379));
        assert_eq!(
            rewritten,
            "  sl  local_address rem_address   st\n\
             \x20  0: 00000000:18EB 00000000:0000 0A\n\
             \x20  1: 0100007F:1F90 0100007F:18EB 01\n"
        );
    }
}
