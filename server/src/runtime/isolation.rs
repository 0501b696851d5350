//! Network isolation: whether a container gets its own network namespace,
//! and the holders that keep those namespaces alive while containers run.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Mutex;

use sidewhale_config::NetworkIsolation;
use sidewhale_core::{Executor, NetworkNamespace, PortTarget};
use sidewhale_netns::{Holder, Strategy};

use super::model::ContainerRecord;

/// The relay socket's name in the container's runtime directory.
const RELAY_SOCKET: &str = "net.sock";

/// Networks whose members stay in their own namespace. Peers on a
/// user-defined network reach each other through aliases that resolve to
/// 127.0.0.1, which only works when they share the host's network.
const ISOLATED_NETWORKS: [&str; 2] = ["bridge", "none"];

/// The isolation mode in force, after probing the host.
pub struct Isolation {
    /// `None` when every container shares the host's network.
    strategy: Option<Strategy>,
    holders: Mutex<HashMap<String, Holder>>,
}

impl Isolation {
    /// Resolves `network.isolation` against what the host allows. Fails
    /// only for `namespace` on a host that cannot create namespaces.
    pub fn new(configured: NetworkIsolation) -> anyhow::Result<Isolation> {
        let strategy = match configured {
            NetworkIsolation::Host => None,
            NetworkIsolation::Auto if Strategy::for_current_user().user_namespace => {
                tracing::info!(
                    "network.isolation = \"auto\" shares the host's network when \
                     sidewhale is not root: a user namespace maps only sidewhale's own \
                     user, so entrypoints that chown files to other users fail \
                     (EINVAL); set network.isolation = \"namespace\" to isolate anyway"
                );
                None
            }
            NetworkIsolation::Namespace | NetworkIsolation::Auto => {
                let strategy = Strategy::for_current_user();
                match strategy.probe() {
                    Ok(()) => Some(strategy),
                    Err(reason) if configured == NetworkIsolation::Namespace => {
                        anyhow::bail!("network.isolation = \"namespace\": {reason}")
                    }
                    Err(reason) => {
                        tracing::warn!(
                            %reason,
                            "containers share the host's network: two containers \
                             cannot listen on the same port"
                        );
                        None
                    }
                }
            }
        };
        let isolation = Isolation {
            strategy,
            holders: Mutex::new(HashMap::new()),
        };
        tracing::info!(
            configured = configured.as_str(),
            mode = isolation.mode(),
            user_namespace = isolation.user_namespace(),
            "network isolation"
        );
        Ok(isolation)
    }

    /// Returns the mode in force, `namespace` or `host`, as shown in the
    /// start-up log and in `/info`.
    pub fn mode(&self) -> &'static str {
        match &self.strategy {
            Some(_) => "namespace",
            None => "host",
        }
    }

    /// Whether each namespace comes with a user namespace of its own.
    pub fn user_namespace(&self) -> bool {
        self.strategy
            .is_some_and(|strategy| strategy.user_namespace)
    }

    fn holders(&self) -> std::sync::MutexGuard<'_, HashMap<String, Holder>> {
        self.holders
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Gives the container a network namespace when the mode, its
    /// networks and its executor allow one. Returns where published ports
    /// reach it.
    pub async fn attach(
        &self,
        record: &ContainerRecord,
        runtime_dir: &Path,
        executor: &dyn Executor,
    ) -> std::io::Result<PortTarget> {
        let shared = PortTarget::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let Some(strategy) = self.strategy else {
            return Ok(shared);
        };
        let user_defined = record
            .networks
            .keys()
            .any(|name| !ISOLATED_NETWORKS.contains(&name.as_str()));
        if user_defined || !executor.supports_network_namespace() {
            tracing::debug!(
                container = %record.short_id(),
                user_defined,
                executor = executor.name(),
                "container shares the host's network"
            );
            return Ok(shared);
        }

        let socket = runtime_dir.join(RELAY_SOCKET);
        let holder = Holder::spawn(Path::new("/proc/self/exe"), &socket, strategy).await?;
        tracing::info!(
            container = %record.short_id(),
            holder_pid = holder.namespace().holder_pid,
            "created the container's network namespace"
        );
        let previous = self.holders().insert(record.id.clone(), holder);
        if let Some(previous) = previous {
            previous.stop().await;
        }
        Ok(PortTarget::UnixSocket(socket))
    }

    /// Returns the namespace of a running container, if it has one.
    pub fn namespace(&self, container_id: &str) -> Option<NetworkNamespace> {
        self.holders().get(container_id).map(Holder::namespace)
    }

    /// Stops the container's holder. Idempotent.
    pub async fn detach(&self, container_id: &str) {
        let holder = self.holders().remove(container_id);
        if let Some(holder) = holder {
            holder.stop().await;
            tracing::debug!(
                container = %container_id.get(..12).unwrap_or(container_id),
                "stopped the network namespace holder"
            );
        }
    }
}
