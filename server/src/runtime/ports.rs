//! The TCP port forwarder: one listener per published port, relaying each
//! connection to the container's port, directly, through the relay of
//! the container's network namespace, or to the host port that replaces
//! it.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sidewhale_core::{
    ForwardError, PortBinding, PortForwarder, PortTarget, Protocol, PublishedPort, RelocatedPorts,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Relays TCP connections from host ports to container ports.
///
/// A connection accepted while nothing listens in the container yet is
/// closed at once, as Docker's userland proxy does, so clients retry.
#[derive(Default)]
pub struct TcpPortForwarder {
    relays: Mutex<HashMap<String, JoinSet<()>>>,
}

/// Where one published port's connections go.
#[derive(Clone, Debug)]
enum Upstream {
    Tcp(SocketAddr),
    /// A port inside a network namespace, through its relay socket.
    Relay {
        socket: PathBuf,
        port: u16,
    },
    /// A container port on the host's network, moved to the host port that
    /// `ports` records once the container listens.
    Relocated {
        ports: Arc<RelocatedPorts>,
        port: u16,
    },
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Tcp(address) => write!(f, "{address}"),
            Upstream::Relay { socket, port } => write!(f, "{}#{port}", socket.display()),
            Upstream::Relocated { port, .. } => write!(f, "relocated port {port}"),
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Upstream {
    async fn connect(&self) -> std::io::Result<Box<dyn Stream>> {
        match self {
            Upstream::Tcp(address) => {
                let stream = TcpStream::connect(address).await?;
                let _ = stream.set_nodelay(true);
                Ok(Box::new(stream))
            }
            Upstream::Relay { socket, port } => Ok(Box::new(
                sidewhale_netns::relay::connect(socket, *port).await?,
            )),
            Upstream::Relocated { ports, port } => {
                let host_port = ports.host_port(*port).ok_or_else(|| {
                    std::io::Error::from(std::io::ErrorKind::ConnectionRefused)
                })?;
                let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, host_port)).await?;
                let _ = stream.set_nodelay(true);
                Ok(Box::new(stream))
            }
        }
    }
}

#[async_trait]
impl PortForwarder for TcpPortForwarder {
    async fn publish(
        &self,
        container_id: &str,
        target: IpAddr,
        bindings: &[PortBinding],
    ) -> Result<Vec<PublishedPort>, ForwardError> {
        self.publish_to(container_id, &PortTarget::Ip(target), bindings)
            .await
    }

    async fn publish_to(
        &self,
        container_id: &str,
        target: &PortTarget,
        bindings: &[PortBinding],
    ) -> Result<Vec<PublishedPort>, ForwardError> {
        let mut listeners = Vec::new();
        for binding in bindings {
            if binding.protocol != Protocol::Tcp {
                return Err(ForwardError::UnsupportedProtocol(binding.protocol.as_str()));
            }
            let address = SocketAddr::new(binding.host_ip, binding.host_port);
            let listener =
                TcpListener::bind(address)
                    .await
                    .map_err(|source| ForwardError::Bind {
                        address: address.to_string(),
                        source,
                    })?;
            let local = listener.local_addr().map_err(|source| ForwardError::Bind {
                address: address.to_string(),
                source,
            })?;
            listeners.push((binding.clone(), listener, local.port()));
        }

        let mut tasks = JoinSet::new();
        let mut published = Vec::new();
        for (binding, listener, host_port) in listeners {
            let upstream = match target {
                PortTarget::Ip(address) => {
                    Upstream::Tcp(SocketAddr::new(*address, binding.container_port))
                }
                PortTarget::UnixSocket(socket) => Upstream::Relay {
                    socket: socket.clone(),
                    port: binding.container_port,
                },
                PortTarget::Relocated(ports) => Upstream::Relocated {
                    ports: ports.clone(),
                    port: binding.container_port,
                },
            };
            tracing::info!(container = %&container_id[..12], host_port, %upstream, "publishing port");
            tasks.spawn(accept_loop(listener, upstream));
            published.push(PublishedPort {
                container_port: binding.container_port,
                protocol: binding.protocol,
                host_ip: binding.host_ip,
                host_port,
            });
        }
        let mut relays = self
            .relays
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        relays.insert(container_id.to_string(), tasks);
        Ok(published)
    }

    async fn unpublish(&self, container_id: &str) {
        let tasks = {
            let mut relays = self
                .relays
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            relays.remove(container_id)
        };
        // Dropping a JoinSet aborts its tasks, which closes the listeners
        // and, through the relay tasks they own, every relayed connection.
        drop(tasks);
    }
}

async fn accept_loop(listener: TcpListener, upstream: Upstream) {
    let mut connections = JoinSet::new();
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, %upstream, "failed to accept a connection");
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(relay(client, peer, upstream.clone()));
    }
}

async fn relay(mut client: TcpStream, peer: SocketAddr, upstream: Upstream) {
    let mut server = match upstream.connect().await {
        Ok(server) => server,
        Err(error) => {
            tracing::debug!(%peer, %upstream, %error, "container port not reachable, closing connection");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
        tracing::debug!(%peer, %upstream, %error, "relayed connection ended with an error");
    }
}
