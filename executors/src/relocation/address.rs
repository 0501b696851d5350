//! Socket addresses as the supervisor reads and rewrites them in a
//! caller's memory: `sockaddr_in` and `sockaddr_in6`.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The shortest `sockaddr_in6` the kernel accepts.
const SOCKADDR_IN6_MIN: usize = 24;

/// The kind of host a socket address names, for relocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Host {
    /// 127.0.0.1, `::1` or the unspecified address: the container itself.
    Own,
    /// Another loopback address, which may belong to a peer.
    Peer(Ipv4Addr),
    Elsewhere,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SocketAddress {
    pub host: Host,
    pub port: u16,
}

impl SocketAddress {
    /// Parses a `sockaddr_in` or `sockaddr_in6`, and returns `None` for any
    /// other family.
    pub fn parse(bytes: &[u8]) -> Option<SocketAddress> {
        let family = i32::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
        let ipv4 = match family {
            libc::AF_INET if bytes.len() >= size_of::<libc::sockaddr_in>() => {
                Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7])
            }
            // The kernel accepts a `sockaddr_in6` without its last field,
            // `sin6_scope_id`, of 24 bytes (RFC 2133).
            libc::AF_INET6 if bytes.len() >= SOCKADDR_IN6_MIN => {
                let octets: [u8; 16] = bytes[8..24].try_into().ok()?;
                let ipv6 = Ipv6Addr::from(octets);
                if ipv6.is_loopback() || ipv6.is_unspecified() {
                    Ipv4Addr::LOCALHOST
                } else {
                    match ipv6.to_ipv4_mapped() {
                        Some(ipv4) => ipv4,
                        None => Ipv4Addr::BROADCAST,
                    }
                }
            }
            _ => return None,
        };
        let host = if ipv4 == Ipv4Addr::LOCALHOST || ipv4.is_unspecified() {
            Host::Own
        } else if ipv4.is_loopback() {
            Host::Peer(ipv4)
        } else {
            Host::Elsewhere
        };
        Some(SocketAddress {
            host,
            port: u16::from_be_bytes([bytes[2], bytes[3]]),
        })
    }
}

/// Writes `port` into a `sockaddr_in` or `sockaddr_in6`, where both keep it.
pub(super) fn set_port(bytes: &mut [u8], port: u16) {
    bytes[2..4].copy_from_slice(&port.to_be_bytes());
}

/// Points a socket address at 127.0.0.1, or at `::ffff:127.0.0.1` for an
/// IPv6 one, where a peer's relocated listener is reachable.
pub(super) fn set_loopback(bytes: &mut [u8]) {
    let family = i32::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
    if family == libc::AF_INET {
        bytes[4..8].copy_from_slice(&Ipv4Addr::LOCALHOST.octets());
    } else {
        bytes[8..24].copy_from_slice(&Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets());
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Returns a `sockaddr_in` for `address` and `port`.
    pub(in crate::relocation) fn ipv4(address: Ipv4Addr, port: u16) -> Vec<u8> {
        let mut bytes = vec![0u8; size_of::<libc::sockaddr_in>()];
        bytes[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        bytes[2..4].copy_from_slice(&port.to_be_bytes());
        bytes[4..8].copy_from_slice(&address.octets());
        bytes
    }

    fn ipv6(address: Ipv6Addr, port: u16) -> Vec<u8> {
        let mut bytes = vec![0u8; size_of::<libc::sockaddr_in6>()];
        bytes[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        bytes[2..4].copy_from_slice(&port.to_be_bytes());
        bytes[8..24].copy_from_slice(&address.octets());
        bytes
    }

    #[test]
    fn loopback_addresses_are_own() {
        for bytes in [
            ipv4(Ipv4Addr::LOCALHOST, 6379),
            ipv4(Ipv4Addr::UNSPECIFIED, 6379),
            ipv6(Ipv6Addr::LOCALHOST, 6379),
            ipv6(Ipv6Addr::UNSPECIFIED, 6379),
            ipv6(Ipv4Addr::LOCALHOST.to_ipv6_mapped(), 6379),
        ] {
            let address = SocketAddress::parse(&bytes).unwrap();
            assert_eq!(
                address,
                SocketAddress {
                    host: Host::Own,
                    port: 6379
                }
            );
        }
    }

    #[test]
    fn short_ipv6_address_parsed() {
        let bytes = ipv6(Ipv6Addr::UNSPECIFIED, 9090);
        let address = SocketAddress::parse(&bytes[..SOCKADDR_IN6_MIN]).unwrap();
        assert_eq!(address.port, 9090);
        assert_eq!(SocketAddress::parse(&bytes[..SOCKADDR_IN6_MIN - 1]), None);
    }

    #[test]
    fn other_loopback_addresses_are_peers() {
        let peer = Ipv4Addr::new(127, 18, 0, 2);
        let address = SocketAddress::parse(&ipv4(peer, 5432)).unwrap();
        assert_eq!(address.host, Host::Peer(peer));
        let address = SocketAddress::parse(&ipv6(peer.to_ipv6_mapped(), 5432)).unwrap();
        assert_eq!(address.host, Host::Peer(peer));
    }

    #[test]
    fn other_addresses_left_alone() {
        let address = SocketAddress::parse(&ipv4(Ipv4Addr::new(10, 0, 2, 2), 80)).unwrap();
        assert_eq!(address.host, Host::Elsewhere);
        let address = SocketAddress::parse(&ipv6("fd00::1".parse().unwrap(), 80)).unwrap();
        assert_eq!(address.host, Host::Elsewhere);
        let mut unix = vec![0u8; 20];
        unix[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(SocketAddress::parse(&unix), None);
        assert_eq!(
            SocketAddress::parse(&ipv4(Ipv4Addr::LOCALHOST, 1)[..8]),
            None
        );
    }

    #[test]
    fn peer_address_rewritten_to_loopback() {
        let mut bytes = ipv6(Ipv4Addr::new(127, 18, 0, 2).to_ipv6_mapped(), 5432);
        set_loopback(&mut bytes);
        set_port(&mut bytes, 40000);
        let address = SocketAddress::parse(&bytes).unwrap();
        assert_eq!(
            address,
            SocketAddress {
                host: Host::Own,
                port: 40000
            }
        );
    }
}
