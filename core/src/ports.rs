//! The `PortForwarder` trait: how published ports reach a container.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// Parses the protocol part of a Docker port key such as `6379/tcp`.
    pub fn parse(text: &str) -> Option<Protocol> {
        match text {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "sctp" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// A request to publish a container port on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    pub container_port: u16,
    pub protocol: Protocol,
    /// Host address to listen on; `0.0.0.0` means every IPv4 address.
    pub host_ip: IpAddr,
    /// Host port; 0 asks for an ephemeral port.
    pub host_port: u16,
}

/// A port binding after the forwarder is listening.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    pub container_port: u16,
    pub protocol: Protocol,
    pub host_ip: IpAddr,
    /// The port actually bound, never 0.
    pub host_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("failed to bind {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("protocol {0} is not supported by this port forwarder")]
    UnsupportedProtocol(&'static str),
    #[error("this port forwarder cannot reach a container network namespace")]
    UnsupportedTarget,
}

/// The route from the server to the container's own listeners.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortTarget {
    /// The container shares a network with the server: connect to this
    /// address on the container port.
    Ip(IpAddr),
    /// The container has its own network namespace, and a relay inside it
    /// serves this unix socket. A client writes the container port as two
    /// big-endian bytes and reads one status byte: 0 when the relay
    /// connected to the port inside, anything else when it did not. The
    /// stream then carries the connection's bytes.
    UnixSocket(PathBuf),
    /// The container shares the host's network, but its executor moved
    /// each port it listens on to another host port: connect to loopback
    /// on the host port that `RelocatedPorts` records for the container
    /// port.
    Relocated(Arc<RelocatedPorts>),
}

/// The host ports that replace a container's own ports when the
/// container shares the host's network. Where the host allows no network
/// namespaces, an executor can still keep two containers that listen on
/// the same port apart: it binds each listener to a free host port
/// instead, records the pair here, and sends the container's own
/// connections to the port it asked for to the host port. A pair applies
/// to TCP and UDP alike.
#[derive(Debug, Default)]
pub struct RelocatedPorts {
    ports: Mutex<BTreeMap<u16, u16>>,
}

impl RelocatedPorts {
    /// Returns the host port that replaces `container_port`, once the
    /// container has bound it.
    pub fn host_port(&self, container_port: u16) -> Option<u16> {
        self.lock().get(&container_port).copied()
    }

    /// Returns the container port that `host_port` replaces, if any.
    pub fn container_port(&self, host_port: u16) -> Option<u16> {
        self.lock()
            .iter()
            .find(|(_, &recorded)| recorded == host_port)
            .map(|(&container_port, _)| container_port)
    }

    /// Records that `host_port` replaces `container_port`.
    pub fn insert(&self, container_port: u16, host_port: u16) {
        self.lock().insert(container_port, host_port);
    }

    /// Returns every `(container port, host port)` pair recorded.
    pub fn entries(&self) -> Vec<(u16, u16)> {
        self.lock()
            .iter()
            .map(|(&container_port, &host_port)| (container_port, host_port))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u16, u16>> {
        self.ports.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PartialEq for RelocatedPorts {
    /// Two tables are equal when they are the same table.
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for RelocatedPorts {}

/// Finds the ports of another container that shares the host's network
/// by the loopback address its names resolve to.
pub type PeerLookup = dyn Fn(Ipv4Addr) -> Option<Arc<RelocatedPorts>> + Send + Sync;

/// The tables an executor needs to relocate a container's ports: the
/// container's own, and a lookup of its peers'.
#[derive(Clone)]
pub struct PortRelocation {
    pub ports: Arc<RelocatedPorts>,
    /// Returns the table of the peer at a loopback address other than
    /// 127.0.0.1, or `None` when no relocated container has that address.
    pub peers: Arc<PeerLookup>,
}

impl fmt::Debug for PortRelocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortRelocation")
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

/// Serves a container's published ports on the host.
///
/// `publish` must return only once every listener is bound, so that a
/// client connecting right after `docker start` returns is never refused.
/// Each accepted connection is relayed to `target` (the address at which
/// the container's own listeners are reachable) on the container port.
#[async_trait]
pub trait PortForwarder: Send + Sync {
    async fn publish(
        &self,
        container_id: &str,
        target: IpAddr,
        bindings: &[PortBinding],
    ) -> Result<Vec<PublishedPort>, ForwardError>;

    /// Publishes like `publish`, to any `PortTarget`. The default handles
    /// `PortTarget::Ip` only, so forwarders written before network
    /// namespaces keep working for containers that share the host's
    /// network.
    async fn publish_to(
        &self,
        container_id: &str,
        target: &PortTarget,
        bindings: &[PortBinding],
    ) -> Result<Vec<PublishedPort>, ForwardError> {
        match target {
            PortTarget::Ip(address) => self.publish(container_id, *address, bindings).await,
            PortTarget::UnixSocket(_) | PortTarget::Relocated(_) => {
                Err(ForwardError::UnsupportedTarget)
            }
        }
    }

    /// Stops listening on every port of the container and closes the
    /// relayed connections. Idempotent.
    async fn unpublish(&self, container_id: &str);
}
