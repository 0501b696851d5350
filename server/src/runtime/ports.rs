//! The TCP port forwarder: one listener per published port, relaying each
//! connection to the container's port.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use async_trait::async_trait;
use sidewhale_core::{ForwardError, PortBinding, PortForwarder, Protocol, PublishedPort};
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

#[async_trait]
impl PortForwarder for TcpPortForwarder {
    async fn publish(
        &self,
        container_id: &str,
        target: IpAddr,
        bindings: &[PortBinding],
    ) -> Result<Vec<PublishedPort>, ForwardError> {
        let mut listeners = Vec::new();
        for binding in bindings {
            if binding.protocol != Protocol::Tcp {
                return Err(ForwardError::UnsupportedProtocol(binding.protocol.as_str()));
            }
            let address = SocketAddr::new(binding.host_ip, binding.host_port);
            let listener = TcpListener::bind(address)
                .await
                .map_err(|source| ForwardError::Bind { address: address.to_string(), source })?;
            let local = listener
                .local_addr()
                .map_err(|source| ForwardError::Bind { address: address.to_string(), source })?;
            listeners.push((binding.clone(), listener, local.port()));
        }

        let mut tasks = JoinSet::new();
        let mut published = Vec::new();
        for (binding, listener, host_port) in listeners {
            let upstream = SocketAddr::new(target, binding.container_port);
            tracing::info!(container = %&container_id[..12], host_port, %upstream, "publishing port");
            tasks.spawn(accept_loop(listener, upstream));
            published.push(PublishedPort {
                container_port: binding.container_port,
                protocol: binding.protocol,
                host_ip: binding.host_ip,
                host_port,
            });
        }
        let mut relays = self.relays.lock().unwrap_or_else(|poison| poison.into_inner());
        relays.insert(container_id.to_string(), tasks);
        Ok(published)
    }

    async fn unpublish(&self, container_id: &str) {
        let tasks = {
            let mut relays = self.relays.lock().unwrap_or_else(|poison| poison.into_inner());
            relays.remove(container_id)
        };
        // Dropping a JoinSet aborts its tasks, which closes the listeners
        // and, through the relay tasks they own, every relayed connection.
        drop(tasks);
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr) {
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
        connections.spawn(relay(client, peer, upstream));
    }
}

async fn relay(mut client: TcpStream, peer: SocketAddr, upstream: SocketAddr) {
    let mut server = match TcpStream::connect(upstream).await {
        Ok(server) => server,
        Err(error) => {
            tracing::debug!(%peer, %upstream, %error, "container port not reachable, closing connection");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
        tracing::debug!(%peer, %upstream, %error, "relayed connection ended with an error");
    }
}
