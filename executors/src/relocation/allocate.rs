//! The choice of host ports for relocated container ports.
//!
//! A host port is chosen below the kernel's ephemeral range
//! (`net.ipv4.ip_local_port_range`), where neither outgoing connections nor
//! binds to port 0 land, and never while any container of this process
//! has it recorded. A container that closes a relocated socket and binds
//! the port again so finds its host port still free, unless a process
//! outside sidewhale took it in between.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use sidewhale_core::RelocatedPorts;

/// The start of the ephemeral range when `/proc` does not show it.
const DEFAULT_EPHEMERAL_START: u16 = 32768;

/// The lowest host port handed out.
const LOWEST: u16 = 1024;

/// How many candidates `free_port` tries before it gives up.
const ATTEMPTS: u32 = 256;

/// The tables of every container whose ports this process relocates.
static TABLES: Mutex<Vec<Weak<RelocatedPorts>>> = Mutex::new(Vec::new());

/// The offset at which the search for a free port resumes, so that ports
/// freed by one container are not handed straight to the next.
static CURSOR: AtomicU32 = AtomicU32::new(0);

/// Adds a container's table to those whose host ports are taken.
pub(super) fn register(table: &Arc<RelocatedPorts>) {
    let mut tables = TABLES.lock().unwrap_or_else(PoisonError::into_inner);
    tables.retain(|known| known.strong_count() > 0);
    if !tables
        .iter()
        .any(|known| std::ptr::eq(known.as_ptr(), Arc::as_ptr(table)))
    {
        tables.push(Arc::downgrade(table));
    }
}

/// Returns the host ports that the tables of running containers record.
fn taken() -> HashSet<u16> {
    let tables = TABLES.lock().unwrap_or_else(PoisonError::into_inner);
    tables
        .iter()
        .filter_map(Weak::upgrade)
        .flat_map(|table| table.entries().into_iter().map(|(_, host_port)| host_port))
        .collect()
}

/// Returns a host port that no container has recorded and that is free
/// for TCP and UDP, on IPv4 and IPv6. It stays free until the container
/// binds it, unless a process outside sidewhale takes it in between.
pub(super) fn free_port() -> io::Result<u16> {
    let taken = taken();
    let end = ephemeral_start();
    let start = (end / 2).max(LOWEST);
    if start >= end {
        return kernel_port(&taken);
    }
    let span = u32::from(end - start);
    for _ in 0..ATTEMPTS {
        let offset = CURSOR.fetch_add(1, Ordering::Relaxed) % span;
        let candidate = start + offset as u16;
        if !taken.contains(&candidate) && is_free(candidate) {
            return Ok(candidate);
        }
    }
    kernel_port(&taken)
}

/// Returns a port of the kernel's choice, in the ephemeral range, where
/// the range below it is exhausted.
fn kernel_port(taken: &HashSet<u16>) -> io::Result<u16> {
    for _ in 0..ATTEMPTS {
        let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0))
            .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)))?;
        let port = listener.local_addr()?.port();
        drop(listener);
        if !taken.contains(&port) && is_free(port) {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no port free for both TCP and UDP in {ATTEMPTS} attempts"),
    ))
}

/// Returns whether `port` can be bound for TCP and UDP. A socket on `::`
/// also takes the IPv4 port, unless the host has no IPv6 at all.
fn is_free(port: u16) -> bool {
    let tcp = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
        .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)));
    let udp = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port))
        .or_else(|_| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)));
    tcp.is_ok() && udp.is_ok()
}

/// Returns the first port of the kernel's ephemeral range.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_takes_tcp_and_udp() {
        let port = free_port().unwrap();
        assert!(port >= LOWEST, "{port}");
        assert!(port < ephemeral_start(), "{port}");
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap();
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap();
    }

    #[test]
    fn recorded_port_is_not_handed_out() {
        let table = Arc::new(RelocatedPorts::default());
        register(&table);
        let first = free_port().unwrap();
        table.insert(80, first);
        // The socket bound to `first` is closed: only the record keeps it.
        for _ in 0..ATTEMPTS {
            assert_ne!(free_port().unwrap(), first);
        }
    }
}
