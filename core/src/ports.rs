//! The `PortForwarder` trait: how published ports reach a container.

use std::net::IpAddr;
use std::path::PathBuf;

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
            PortTarget::UnixSocket(_) => Err(ForwardError::UnsupportedTarget),
        }
    }

    /// Stops listening on every port of the container and closes the
    /// relayed connections. Idempotent.
    async fn unpublish(&self, container_id: &str);
}
