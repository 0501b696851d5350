//! Network isolation: whether a container gets its own network namespace,
//! the holders that keep those namespaces alive while containers run, the
//! slirp4netns processes that give them outbound access, and the bridges
//! that connect the members of each user-defined network.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sidewhale_config::NetworkIsolation;
use sidewhale_core::{NetworkNamespace, PeerLookup, PortTarget, RelocatedPorts};
use sidewhale_netns::bridge::{Bridge, InterfaceAddress};
use sidewhale_netns::outbound::{self, Outbound};
use sidewhale_netns::{Holder, Strategy};

/// The relay socket's name in the container's runtime directory.
const RELAY_SOCKET: &str = "net.sock";

/// Built-in networks. Every other network is user-defined.
const BUILT_IN_NETWORKS: [&str; 3] = ["bridge", "host", "none"];

/// The network namespace a container's processes run in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// In the host's network namespace.
    Host,
    /// In the host's network namespace, where the executor moves each port
    /// the container listens on to a free host port: the container did not
    /// ask for the host's network, but cannot have a namespace.
    Relocated,
    /// In a namespace of its own. `outbound` when slirp4netns connects it
    /// to the host, `bridged` when it joins the bridges of its
    /// user-defined networks.
    Namespace { outbound: bool, bridged: bool },
}

impl Placement {
    /// Returns the address where the host's loopback is reachable from the
    /// container: 10.0.2.2 through slirp4netns, or 127.0.0.1 itself.
    pub fn host_address(&self) -> Ipv4Addr {
        match self {
            Placement::Namespace { outbound: true, .. } => outbound::HOST_ADDRESS,
            _ => Ipv4Addr::LOCALHOST,
        }
    }
}

/// An endpoint on a user-defined network that a container's namespace
/// joins: its address, the network's gateway and the MAC address.
#[derive(Clone, Debug)]
pub struct NetworkLink {
    pub network_id: String,
    pub address: InterfaceAddress,
    pub gateway: InterfaceAddress,
    pub mac: String,
}

/// A container's namespace: its holder, its slirp4netns, and its veth
/// interface on each bridge, by network id.
struct Sandbox {
    holder: Holder,
    outbound: Option<Outbound>,
    ports: BTreeMap<String, BridgePort>,
}

/// The two ends of a veth pair: `port` on the bridge, `interface` in the
/// container.
#[derive(Clone, Debug)]
struct BridgePort {
    port: String,
    interface: String,
}

/// The relocated ports of a running container, and the loopback
/// addresses of its endpoints on user-defined networks, where its peers
/// reach it.
struct Relocation {
    ports: Arc<RelocatedPorts>,
    addresses: Vec<Ipv4Addr>,
}

type Relocations = Arc<Mutex<HashMap<String, Relocation>>>;

/// The isolation mode in force, after probing the host.
pub struct Isolation {
    /// `None` when every container shares the host's network.
    strategy: Option<Strategy>,
    /// slirp4netns, when namespaces get outbound access.
    slirp: Option<PathBuf>,
    /// The directory for the relay sockets of bridge holders.
    bridge_dir: PathBuf,
    holders: Mutex<HashMap<String, Sandbox>>,
    relocations: Relocations,
    bridges: Mutex<HashMap<String, Arc<Bridge>>>,
    /// Serialises bridge creation, so that two members that start at the
    /// same time do not both create their network's bridge.
    bridge_creation: tokio::sync::Mutex<()>,
    /// Set after the first failed slirp4netns start was logged as a
    /// warning; later failures are logged at debug level.
    outbound_failure_logged: AtomicBool,
}

impl Isolation {
    /// Resolves `network.isolation` against what the host allows. Fails
    /// only for `namespace` on a host that cannot create namespaces.
    /// `bridge_dir` receives the relay sockets of network bridges.
    pub fn new(configured: NetworkIsolation, bridge_dir: PathBuf) -> anyhow::Result<Isolation> {
        let strategy = match configured {
            NetworkIsolation::Host => None,
            NetworkIsolation::Auto if Strategy::for_current_user().user_namespace => {
                tracing::info!(
                    "network.isolation = \"auto\" shares the host's network when \
                     sidewhale is not root: a user namespace maps only sidewhale's own \
                     user, so entrypoints that chown files to other users fail \
                     (EINVAL); set network.isolation = \"namespace\" to isolate anyway. \
                     The proot executor relocates container ports on the host's network"
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
                            "containers share the host's network: the proot executor \
                             relocates their ports, but under other executors two \
                             containers cannot listen on the same port"
                        );
                        None
                    }
                }
            }
        };
        let slirp = match strategy {
            Some(_) => {
                let found = outbound::find_program();
                if found.is_none() {
                    tracing::warn!(
                        program = outbound::PROGRAM,
                        "slirp4netns is not installed: containers in network namespaces \
                         have no outbound network and cannot reach host.docker.internal"
                    );
                }
                found
            }
            None => None,
        };
        let isolation = Isolation {
            strategy,
            slirp,
            bridge_dir,
            holders: Mutex::new(HashMap::new()),
            relocations: Arc::new(Mutex::new(HashMap::new())),
            bridges: Mutex::new(HashMap::new()),
            bridge_creation: tokio::sync::Mutex::new(()),
            outbound_failure_logged: AtomicBool::new(false),
        };
        tracing::info!(
            configured = configured.as_str(),
            mode = isolation.mode(),
            user_namespace = isolation.user_namespace(),
            outbound = isolation.slirp.is_some(),
            user_networks_bridged = isolation.bridges_user_networks(),
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

    /// Returns whether containers on user-defined networks get namespaces
    /// joined by bridges. Namespaces that each own a user namespace cannot be
    /// joined by one bridge, so their containers share the host's network
    /// instead.
    pub fn bridges_user_networks(&self) -> bool {
        self.strategy
            .is_some_and(|strategy| !strategy.user_namespace)
    }

    /// Returns where a container with endpoints on `networks` (names) runs
    /// under an executor that can, or cannot, join namespaces and relocate
    /// ports.
    pub fn placement<'a>(
        &self,
        networks: impl Iterator<Item = &'a str>,
        supports_namespace: bool,
        supports_relocation: bool,
    ) -> Placement {
        let mut user_defined = false;
        let mut host = false;
        let mut only_none = true;
        for name in networks {
            user_defined |= !BUILT_IN_NETWORKS.contains(&name);
            host |= name == "host";
            only_none &= name == "none";
        }
        // `--network host` requests the host's network.
        if host {
            return Placement::Host;
        }
        let isolated = self.strategy.is_some()
            && supports_namespace
            && (!user_defined || self.bridges_user_networks());
        if !isolated {
            return match supports_relocation {
                true => Placement::Relocated,
                false => Placement::Host,
            };
        }
        Placement::Namespace {
            // `--network none` means no network beyond `lo`.
            outbound: self.slirp.is_some() && !only_none,
            bridged: user_defined,
        }
    }

    fn holders(&self) -> MutexGuard<'_, HashMap<String, Sandbox>> {
        self.holders
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn bridges(&self) -> MutexGuard<'_, HashMap<String, Arc<Bridge>>> {
        self.bridges
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Gives the container a network namespace when `placement` requires one,
    /// with outbound access and its user-defined networks' `links`.
    /// Returns where published ports reach it.
    pub async fn attach(
        &self,
        container_id: &str,
        placement: Placement,
        runtime_dir: &Path,
        links: Vec<NetworkLink>,
    ) -> std::io::Result<PortTarget> {
        let shared = PortTarget::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let short_id = short(container_id);
        if placement == Placement::Relocated {
            let ports = Arc::new(RelocatedPorts::default());
            // The hosts files, rewritten before the container's process
            // starts, fill in its addresses.
            let relocation = Relocation {
                ports: ports.clone(),
                addresses: Vec::new(),
            };
            lock(&self.relocations).insert(container_id.to_string(), relocation);
            tracing::debug!(container = %short_id, "container shares the host's network with relocated ports");
            return Ok(PortTarget::Relocated(ports));
        }
        let (Some(strategy), Placement::Namespace { outbound, bridged }) = (self.strategy, placement)
        else {
            tracing::debug!(container = %short_id, "container shares the host's network");
            return Ok(shared);
        };

        let socket = runtime_dir.join(RELAY_SOCKET);
        let holder = Holder::spawn(Path::new("/proc/self/exe"), &socket, strategy).await?;
        tracing::info!(
            container = %short_id,
            holder_pid = holder.namespace().holder_pid,
            "created the container's network namespace"
        );
        let outbound = match (&self.slirp, outbound) {
            (Some(program), true) => self.start_outbound(program, &holder, short_id).await,
            _ => None,
        };
        let sandbox = Sandbox {
            holder,
            outbound,
            ports: BTreeMap::new(),
        };
        let previous = self.holders().insert(container_id.to_string(), sandbox);
        if let Some(previous) = previous {
            stop_sandbox(previous).await;
        }
        if bridged {
            for link in links {
                if let Err(error) = self.connect(container_id, &link).await {
                    self.detach(container_id).await;
                    return Err(error);
                }
            }
        }
        Ok(PortTarget::UnixSocket(socket))
    }

    /// Starts slirp4netns for the holder's namespace. Logs a failure, as a
    /// warning the first time, and returns `None` for it: the container
    /// then runs without outbound access.
    async fn start_outbound(&self, program: &Path, holder: &Holder, short_id: &str) -> Option<Outbound> {
        match Outbound::start(program, &holder.namespace()).await {
            Ok(outbound) => {
                tracing::debug!(container = %short_id, "started slirp4netns");
                Some(outbound)
            }
            Err(error) => {
                if self.outbound_failure_logged.swap(true, Ordering::Relaxed) {
                    tracing::debug!(container = %short_id, %error, "slirp4netns failed to start");
                } else {
                    tracing::warn!(
                        container = %short_id,
                        %error,
                        "slirp4netns failed to start: the container has no outbound network \
                         (later failures are logged at debug level)"
                    );
                }
                None
            }
        }
    }

    /// Returns the bridge of a network, creating it on first use.
    async fn bridge(&self, link: &NetworkLink) -> std::io::Result<Arc<Bridge>> {
        if let Some(bridge) = self.bridges().get(&link.network_id) {
            return Ok(bridge.clone());
        }
        let _creating = self.bridge_creation.lock().await;
        if let Some(bridge) = self.bridges().get(&link.network_id) {
            return Ok(bridge.clone());
        }
        std::fs::create_dir_all(&self.bridge_dir)?;
        let socket = self.bridge_socket(&link.network_id);
        let bridge = Bridge::create(Path::new("/proc/self/exe"), &socket, link.gateway).await?;
        tracing::info!(
            network = %short(&link.network_id),
            gateway = %link.gateway,
            holder_pid = bridge.namespace().holder_pid,
            "created the network's bridge"
        );
        let bridge = Arc::new(bridge);
        self.bridges()
            .insert(link.network_id.clone(), bridge.clone());
        Ok(bridge)
    }

    fn bridge_socket(&self, network_id: &str) -> PathBuf {
        self.bridge_dir.join(format!("{}.sock", short(network_id)))
    }

    /// Connects a running container's namespace to a network's bridge.
    /// Does nothing for a container without a namespace, or one already
    /// connected to that network.
    pub async fn connect(&self, container_id: &str, link: &NetworkLink) -> std::io::Result<()> {
        let member = {
            let holders = self.holders();
            let Some(sandbox) = holders.get(container_id) else {
                return Ok(());
            };
            if sandbox.ports.contains_key(&link.network_id) {
                return Ok(());
            }
            sandbox.holder.namespace()
        };
        let bridge = self.bridge(link).await?;
        // Interface names follow the order of connection, as Docker's do,
        // reusing the lowest free number.
        let interface = {
            let holders = self.holders();
            let used: Vec<&str> = holders
                .get(container_id)
                .map(|sandbox| sandbox.ports.values().map(|port| port.interface.as_str()).collect())
                .unwrap_or_default();
            (0..)
                .map(|index| format!("eth{index}"))
                .find(|name| !used.contains(&name.as_str()))
                .unwrap_or_default()
        };
        // Bridge port names must be unique on the bridge and fit in 15
        // bytes; a container has at most one endpoint on a network.
        let port = format!("sw{}", short(container_id));
        bridge
            .connect(&member, &port, &interface, link.address, &link.mac)
            .await?;
        tracing::info!(
            container = %short(container_id),
            network = %short(&link.network_id),
            %interface,
            address = %link.address,
            "connected the container's namespace to the network's bridge"
        );
        let mut holders = self.holders();
        match holders.get_mut(container_id) {
            Some(sandbox) => {
                sandbox
                    .ports
                    .insert(link.network_id.clone(), BridgePort { port, interface });
            }
            None => {
                // The container stopped meanwhile, and its namespace took
                // the veth pair with it.
                tracing::debug!(container = %short(container_id), "container stopped while connecting");
            }
        }
        Ok(())
    }

    /// Removes a running container's interface on a network. Idempotent.
    pub async fn disconnect(&self, container_id: &str, network_id: &str) -> std::io::Result<()> {
        let port = self
            .holders()
            .get_mut(container_id)
            .and_then(|sandbox| sandbox.ports.remove(network_id));
        let Some(port) = port else {
            return Ok(());
        };
        let bridge = self.bridges().get(network_id).cloned();
        if let Some(bridge) = bridge {
            bridge.disconnect(&port.port).await?;
            tracing::info!(
                container = %short(container_id),
                network = %short(network_id),
                interface = %port.interface,
                "disconnected the container's namespace from the network's bridge"
            );
        }
        Ok(())
    }

    /// Stops a network's bridge, when it has one. Idempotent.
    pub fn remove_network(&self, network_id: &str) {
        // Dropping the last reference kills the bridge's holder.
        if self.bridges().remove(network_id).is_some() {
            let _ = std::fs::remove_file(self.bridge_socket(network_id));
            tracing::info!(network = %short(network_id), "removed the network's bridge");
        }
    }

    /// Returns whether slirp4netns runs for the container's namespace, or
    /// `None` when the container has no namespace.
    pub fn outbound_running(&self, container_id: &str) -> Option<bool> {
        self.holders()
            .get(container_id)
            .map(|sandbox| sandbox.outbound.is_some())
    }

    /// Returns the relocated ports of a running container on the host's
    /// network.
    pub fn relocated_ports(&self, container_id: &str) -> Option<Arc<RelocatedPorts>> {
        lock(&self.relocations)
            .get(container_id)
            .map(|relocation| relocation.ports.clone())
    }

    /// Sets the endpoint addresses of a container with relocated ports,
    /// each time the hosts files are rewritten: before its process starts
    /// and after it joins or leaves a network. Does nothing for other
    /// containers.
    pub fn update_relocated_addresses(&self, container_id: &str, addresses: Vec<Ipv4Addr>) {
        if let Some(relocation) = lock(&self.relocations).get_mut(container_id) {
            relocation.addresses = addresses;
        }
    }

    /// Returns how an executor finds the relocated ports of a peer by the
    /// loopback address of one of its endpoints.
    pub fn peer_lookup(&self) -> Arc<PeerLookup> {
        let relocations = self.relocations.clone();
        Arc::new(move |address| {
            lock(&relocations)
                .values()
                .find(|relocation| relocation.addresses.contains(&address))
                .map(|relocation| relocation.ports.clone())
        })
    }

    /// Returns the namespace of a running container, if it has one.
    pub fn namespace(&self, container_id: &str) -> Option<NetworkNamespace> {
        self.holders()
            .get(container_id)
            .map(|sandbox| sandbox.holder.namespace())
    }

    /// Stops the container's holder, its slirp4netns and its bridge ports.
    /// Idempotent.
    pub async fn detach(&self, container_id: &str) {
        lock(&self.relocations).remove(container_id);
        let sandbox = self.holders().remove(container_id);
        let Some(sandbox) = sandbox else {
            return;
        };
        for (network_id, port) in &sandbox.ports {
            let bridge = self.bridges().get(network_id).cloned();
            if let Some(bridge) = bridge {
                if let Err(error) = bridge.disconnect(&port.port).await {
                    tracing::warn!(container = %short(container_id), network = %short(network_id),
                        %error, "failed to remove the container's bridge port");
                }
            }
        }
        stop_sandbox(sandbox).await;
        tracing::debug!(
            container = %short(container_id),
            "stopped the network namespace holder"
        );
    }
}

async fn stop_sandbox(sandbox: Sandbox) {
    if let Some(outbound) = sandbox.outbound {
        outbound.stop().await;
    }
    sandbox.holder.stop().await;
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn lock(relocations: &Relocations) -> MutexGuard<'_, HashMap<String, Relocation>> {
    relocations
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
}
