//! Networks: Docker's built-in `bridge`, `host` and `none`, user-defined
//! networks stored under `<state-dir>/networks`, the endpoints containers
//! have on them, and the `/etc/hosts` entries those endpoints imply.
//!
//! Each user-defined network has an IPv4 subnet and each endpoint an
//! address in it. Where containers on user-defined networks get network
//! namespaces of their own (see `isolation`), the subnets are Docker's
//! defaults (172.18.0.0/16 to 172.31.0.0/16, then 192.168.N.0/20) or the
//! one the request names, and each member reaches its peers at their
//! addresses over the network's bridge. Otherwise containers share the
//! host's network and the subnet is `127.N.0.0/16`. Where the executor
//! relocates their ports, each member has its address there, and the
//! executor routes connections to it to the member's relocated ports.
//! Otherwise the address is shown by inspect only, and every name of a
//! peer resolves to 127.0.0.1, where its ports listen.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sidewhale_images::fsutil;

use sidewhale_netns::bridge::InterfaceAddress;

use super::isolation::{NetworkLink, Placement};
use super::model::ContainerRecord;
use super::{files, Container, Daemon, Error, Result};

/// Docker's built-in networks and their drivers. Their ids are their
/// names, as sidewhale has always reported them.
pub const BUILT_IN: [(&str, &str); 3] = [("bridge", "bridge"), ("host", "host"), ("none", "null")];

/// The only driver of user-defined networks.
const BRIDGE_DRIVER: &str = "bridge";

/// A network: built in, or created with `POST /networks/create`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    pub name: String,
    pub driver: String,
    pub created: DateTime<Utc>,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    pub internal: bool,
    pub attachable: bool,
    pub enable_ipv6: bool,
    /// The second octet N of the subnet `127.N.0.0/16` of a network made
    /// while containers shared the host's network. Built-in networks and
    /// networks with a bridge store 0.
    pub subnet_octet: u8,
    /// The subnet and gateway. `None` for built-in networks and in records
    /// written before it was stored, which use `127.N.0.0/16`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Ipam>,
    #[serde(skip)]
    pub built_in: bool,
}

/// An IPv4 subnet and its gateway address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipam {
    pub subnet: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

impl Ipam {
    /// The subnet `127.N.0.0/16` of networks whose members share the
    /// host's network.
    fn loopback(octet: u8) -> Ipam {
        Ipam {
            subnet: Ipv4Addr::new(127, octet, 0, 0),
            prefix_len: 16,
            gateway: Ipv4Addr::new(127, octet, 0, 1),
        }
    }

    fn mask(&self) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0)
    }

    fn contains(&self, address: Ipv4Addr) -> bool {
        u32::from(address) & self.mask() == u32::from(self.subnet)
    }

    fn overlaps(&self, other: &Ipam) -> bool {
        self.contains(other.subnet) || other.contains(self.subnet)
    }

    /// Returns the host addresses in order, without the network and
    /// broadcast addresses and the gateway.
    fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let first = u32::from(self.subnet) + 1;
        let broadcast = u32::from(self.subnet) | !self.mask();
        (first..broadcast)
            .map(Ipv4Addr::from)
            .filter(|address| *address != self.gateway)
    }

    /// Parses `IPAM.Config[0]` of a create request: `Subnet` in CIDR
    /// notation and an optional `Gateway`, by default the first host.
    fn from_request(config: &Value) -> Result<Ipam> {
        let invalid = |message: String| Error::InvalidParameter(message);
        let subnet_text = config["Subnet"].as_str().unwrap_or_default();
        let (address, prefix) = subnet_text
            .split_once('/')
            .ok_or_else(|| invalid(format!("invalid subnet {subnet_text:?}: expected CIDR notation")))?;
        let address: Ipv4Addr = address
            .parse()
            .map_err(|_| invalid(format!("invalid subnet {subnet_text:?}: only IPv4 subnets are supported")))?;
        let prefix_len: u8 = prefix
            .parse()
            .ok()
            .filter(|prefix| (1..=30).contains(prefix))
            .ok_or_else(|| invalid(format!("invalid subnet {subnet_text:?}: the prefix length must be 1 to 30")))?;
        let mut ipam = Ipam {
            subnet: address,
            prefix_len,
            gateway: address,
        };
        ipam.subnet = Ipv4Addr::from(u32::from(address) & ipam.mask());
        ipam.gateway = Ipv4Addr::from(u32::from(ipam.subnet) + 1);
        if let Some(gateway) = config["Gateway"].as_str().filter(|text| !text.is_empty()) {
            let gateway: Ipv4Addr = gateway
                .parse()
                .map_err(|_| invalid(format!("invalid gateway {gateway:?}")))?;
            if !ipam.contains(gateway) {
                return Err(invalid(format!(
                    "no matching subnet for gateway {gateway} in {subnet_text}"
                )));
            }
            ipam.gateway = gateway;
        }
        Ok(ipam)
    }

    /// Returns Docker's default pools in order: 172.18.0.0/16 to
    /// 172.31.0.0/16 (172.17.0.0/16 is the default bridge's), then
    /// 192.168.N.0/20.
    fn default_pools() -> impl Iterator<Item = Ipam> {
        let wide = (18..=31).map(|octet| Ipam {
            subnet: Ipv4Addr::new(172, octet, 0, 0),
            prefix_len: 16,
            gateway: Ipv4Addr::new(172, octet, 0, 1),
        });
        let narrow = (0..16u8).map(|index| Ipam {
            subnet: Ipv4Addr::new(192, 168, index * 16, 0),
            prefix_len: 20,
            gateway: Ipv4Addr::new(192, 168, index * 16, 1),
        });
        wide.chain(narrow)
    }
}

impl NetworkRecord {
    fn built_in(name: &str, driver: &str) -> NetworkRecord {
        NetworkRecord {
            id: name.to_string(),
            name: name.to_string(),
            driver: driver.to_string(),
            created: DateTime::<Utc>::UNIX_EPOCH,
            labels: BTreeMap::new(),
            options: BTreeMap::new(),
            internal: false,
            attachable: false,
            enable_ipv6: false,
            subnet_octet: 0,
            ipam: None,
            built_in: true,
        }
    }

    /// Returns the subnet and gateway of a user-defined network.
    pub fn user_ipam(&self) -> Option<Ipam> {
        if self.built_in {
            return None;
        }
        Some(self.ipam.unwrap_or(Ipam::loopback(self.subnet_octet)))
    }

    /// Returns the subnet and gateway inspect shows in `IPAM.Config`.
    pub fn subnet_and_gateway(&self) -> Option<(String, String)> {
        if self.built_in {
            return (self.name == "bridge").then(|| ("127.0.0.0/8".into(), "127.0.0.1".into()));
        }
        self.user_ipam().map(|ipam| {
            (
                format!("{}/{}", ipam.subnet, ipam.prefix_len),
                ipam.gateway.to_string(),
            )
        })
    }
}

/// A container's endpoint on one network, stored in its record under the
/// network's name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub network_id: String,
    pub endpoint_id: String,
    /// The aliases exactly as the client sent them.
    pub aliases: Vec<String>,
    /// `EndpointConfig.Links` of a connect, as `name:alias`.
    pub links: Vec<String>,
    /// The address shown for the endpoint. `None` on built-in networks,
    /// where inspect shows the container at 127.0.0.1.
    pub ip_address: Option<Ipv4Addr>,
    /// The network's gateway and prefix length. Records written before
    /// they were stored have `None` and 0, meaning `a.b.0.1` and 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub prefix_len: u8,
}

impl EndpointRecord {
    /// Returns the MAC address Docker would derive from the address.
    pub fn mac_address(&self) -> String {
        match self.ip_address {
            Some(ip) => {
                let [a, b, c, d] = ip.octets();
                format!("02:42:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
            }
            None => String::new(),
        }
    }

    /// Returns the prefix length of the endpoint's address.
    pub fn prefix_len(&self) -> u8 {
        if self.prefix_len == 0 {
            16
        } else {
            self.prefix_len
        }
    }
}

/// `EndpointsConfig` entries of a create and `EndpointConfig` of a connect.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointRequest {
    pub aliases: Option<Vec<String>>,
    pub links: Option<Vec<String>>,
}

/// The body of `POST /networks/create`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateNetworkRequest {
    pub name: Option<String>,
    pub driver: Option<String>,
    pub internal: Option<bool>,
    pub attachable: Option<bool>,
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: Option<bool>,
    pub options: Option<BTreeMap<String, String>>,
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "IPAM")]
    pub ipam: Option<Value>,
}

/// The user-defined networks of one state directory. The map is the
/// authority while the server runs; `<id>.json` files are its persistent
/// copy. Its lock also serialises every change to endpoints and hosts
/// files, so that two connects cannot take the same address.
pub struct NetworkStore {
    dir: PathBuf,
    networks: Mutex<BTreeMap<String, NetworkRecord>>,
}

impl NetworkStore {
    /// Opens `dir`, loading every network a previous run left there.
    pub fn open(dir: PathBuf) -> std::io::Result<NetworkStore> {
        std::fs::create_dir_all(&dir)?;
        let mut networks = BTreeMap::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|extension| extension != "json") {
                continue;
            }
            let record = std::fs::read(&path)
                .map_err(|error| error.to_string())
                .and_then(|text| {
                    serde_json::from_slice::<NetworkRecord>(&text).map_err(|e| e.to_string())
                });
            match record {
                Ok(record) => {
                    tracing::info!(network = %short(&record.id), name = %record.name, "loaded network");
                    networks.insert(record.id.clone(), record);
                }
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "network record is unreadable, skipping it");
                }
            }
        }
        Ok(NetworkStore {
            dir,
            networks: Mutex::new(networks),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, NetworkRecord>> {
        // Every change is a single insert or remove, so a lock poisoned by
        // a panic elsewhere still guards a consistent map.
        self.networks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn save(&self, record: &NetworkRecord) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        fsutil::write_atomic(
            &self.dir,
            &self.dir.join(format!("{}.json", record.id)),
            &text,
        )
    }

    fn delete(&self, id: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.dir.join(format!("{id}.json"))) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn not_found(name: &str) -> Error {
    Error::NotFound(format!("network {name} not found"))
}

/// Finds a network among `networks` by exact id, exact name, then unique
/// id prefix, as Docker does.
fn find<'a>(
    networks: &'a BTreeMap<String, NetworkRecord>,
    name_or_id: &str,
) -> Result<&'a NetworkRecord> {
    if let Some(network) = networks.get(name_or_id) {
        return Ok(network);
    }
    if let Some(network) = networks.values().find(|network| network.name == name_or_id) {
        return Ok(network);
    }
    let mut matches = networks
        .values()
        .filter(|network| network.id.starts_with(name_or_id));
    match (matches.next(), matches.next()) {
        (Some(network), None) if !name_or_id.is_empty() => Ok(network),
        (Some(_), Some(_)) => Err(Error::NotFound(format!(
            "network {name_or_id} is ambiguous ({} matches found based on ID prefix)",
            networks
                .values()
                .filter(|network| network.id.starts_with(name_or_id))
                .count()
        ))),
        _ => Err(not_found(name_or_id)),
    }
}

fn built_in(name_or_id: &str) -> Option<NetworkRecord> {
    BUILT_IN
        .iter()
        .find(|(name, _)| *name == name_or_id)
        .map(|(name, driver)| NetworkRecord::built_in(name, driver))
}

/// Returns whether a record's endpoint is active: Docker creates
/// endpoints when a container starts and deletes them when it stops.
fn is_active(record: &ContainerRecord) -> bool {
    record.state.running()
}

/// Parses a link, `name:alias`, `name` or the `/name:/container/alias` form
/// that Docker stores, into the linked container's name and the alias.
pub fn parse_link(link: &str) -> (String, String) {
    let (name, alias) = link.split_once(':').unwrap_or((link, link));
    let name = name.trim_start_matches('/');
    let alias = alias.rsplit('/').next().unwrap_or(alias);
    (name.to_string(), alias.to_string())
}

/// A network that a new container joins, with the endpoint settings of
/// its request, before addresses exist.
pub struct EndpointPlan {
    network: NetworkRecord,
    request: EndpointRequest,
}

impl Daemon {
    /// Returns where the container's processes run, network-wise, from its
    /// networks and executor. Containers of unknown executors, such as
    /// Ryuk's, which sidewhale serves itself, run in the host's network.
    pub fn placement(&self, record: &ContainerRecord) -> Placement {
        let (supports_namespace, supports_relocation) = match self.executor(&record.runtime) {
            Ok(executor) => (
                executor.supports_network_namespace(),
                executor.supports_port_relocation(),
            ),
            Err(_) => (false, false),
        };
        let placement = self.isolation.placement(
            record.networks.keys().map(String::as_str),
            supports_namespace,
            supports_relocation,
        );
        // A running container has outbound access only if its slirp4netns
        // started.
        match (placement, self.isolation.outbound_running(&record.id)) {
            (Placement::Namespace { bridged, .. }, Some(outbound)) => {
                Placement::Namespace { outbound, bridged }
            }
            _ => placement,
        }
    }

    /// Returns the bridge connections a container's namespace needs: one
    /// for each of its endpoints on a user-defined network.
    pub fn network_links(&self, record: &ContainerRecord) -> Vec<NetworkLink> {
        record
            .networks
            .values()
            .filter_map(|endpoint| self.network_link(endpoint))
            .collect()
    }

    fn network_link(&self, endpoint: &EndpointRecord) -> Option<NetworkLink> {
        let address = endpoint.ip_address?;
        let network = self.network(&endpoint.network_id).ok()?;
        let ipam = network.user_ipam()?;
        Some(NetworkLink {
            network_id: network.id,
            address: InterfaceAddress {
                address,
                prefix_len: ipam.prefix_len,
            },
            gateway: InterfaceAddress {
                address: ipam.gateway,
                prefix_len: ipam.prefix_len,
            },
            mac: endpoint.mac_address(),
        })
    }

    /// Returns every network, built-in ones first.
    pub fn networks(&self) -> Vec<NetworkRecord> {
        let mut list: Vec<NetworkRecord> = BUILT_IN
            .iter()
            .map(|(name, driver)| NetworkRecord::built_in(name, driver))
            .collect();
        list.extend(self.networks.lock().values().cloned());
        list
    }

    /// Finds a network by name, id or unique id prefix.
    pub fn network(&self, name_or_id: &str) -> Result<NetworkRecord> {
        if let Some(network) = built_in(name_or_id) {
            return Ok(network);
        }
        find(&self.networks.lock(), name_or_id).cloned()
    }

    /// Returns the records of the containers with an endpoint on the
    /// network, active or not.
    pub fn network_members(&self, network: &NetworkRecord) -> Vec<ContainerRecord> {
        self.containers()
            .iter()
            .map(|container| container.record())
            .filter(|record| endpoint_of(record, network).is_some())
            .collect()
    }

    /// Creates a user-defined network with the bridge driver.
    pub fn create_network(&self, request: CreateNetworkRequest) -> Result<NetworkRecord> {
        let name = request.name.clone().unwrap_or_default();
        if name.trim().is_empty() {
            return Err(Error::InvalidParameter("network name is required".into()));
        }
        let driver = match request.driver.as_deref() {
            None | Some("") => BRIDGE_DRIVER.to_string(),
            Some(BRIDGE_DRIVER) => BRIDGE_DRIVER.to_string(),
            Some(driver @ ("host" | "null")) => {
                return Err(Error::Forbidden(format!(
                    "only one instance of \"{driver}\" network is allowed"
                )))
            }
            Some(driver) => {
                return Err(Error::NotFound(format!("plugin \"{driver}\" not found")));
            }
        };
        let requested = request
            .ipam
            .as_ref()
            .and_then(|ipam| ipam["Config"].as_array())
            .and_then(|configs| configs.first())
            .filter(|config| config["Subnet"].as_str().is_some_and(|subnet| !subnet.is_empty()));
        let bridged = self.isolation.bridges_user_networks();
        let requested = match requested {
            Some(config) if bridged => Some(Ipam::from_request(config)?),
            Some(_) => {
                // NOTE: containers on user-defined networks share the
                // host's network here, so a requested subnet cannot be
                // honoured; inspect shows 127.N.0.0/16.
                tracing::warn!(network = %name, "ignoring the requested IPAM configuration");
                None
            }
            None => None,
        };

        let mut networks = self.networks.lock();
        if built_in(&name).is_some() || networks.values().any(|network| network.name == name) {
            return Err(Error::Conflict(format!(
                "network with name {name} already exists"
            )));
        }
        let exhausted = || {
            Error::Forbidden(
                "could not find an available, non-overlapping IPv4 address pool among the \
                 defaults to assign to the network"
                    .into(),
            )
        };
        let (subnet_octet, ipam) = if bridged {
            let taken: Vec<Ipam> = networks.values().filter_map(NetworkRecord::user_ipam).collect();
            let overlaps = |candidate: &Ipam| taken.iter().any(|used| used.overlaps(candidate));
            let ipam = match requested {
                Some(ipam) if overlaps(&ipam) => {
                    return Err(Error::Forbidden(format!(
                        "invalid pool request: Pool overlaps with other one on this address space ({}/{})",
                        ipam.subnet, ipam.prefix_len
                    )))
                }
                Some(ipam) => ipam,
                None => Ipam::default_pools()
                    .find(|candidate| !overlaps(candidate))
                    .ok_or_else(exhausted)?,
            };
            (0, ipam)
        } else {
            let used: BTreeSet<u8> = networks
                .values()
                .map(|network| network.subnet_octet)
                .collect();
            let octet = (1..=u8::MAX)
                .find(|octet| !used.contains(octet))
                .ok_or_else(exhausted)?;
            (octet, Ipam::loopback(octet))
        };
        let id = loop {
            let id = hex::encode(rand::thread_rng().gen::<[u8; 32]>());
            if !networks.keys().any(|existing| existing[..12] == id[..12]) {
                break id;
            }
        };
        let record = NetworkRecord {
            id: id.clone(),
            name,
            driver,
            created: Utc::now(),
            labels: request.labels.unwrap_or_default(),
            options: request.options.unwrap_or_default(),
            internal: request.internal.unwrap_or(false),
            attachable: request.attachable.unwrap_or(false),
            enable_ipv6: request.enable_ipv6.unwrap_or(false),
            subnet_octet,
            ipam: Some(ipam),
            built_in: false,
        };
        self.networks
            .save(&record)
            .map_err(|error| Error::internal("failed to save the network", error))?;
        networks.insert(id, record.clone());
        tracing::info!(network = %short(&record.id), name = %record.name,
            subnet = %format!("{}/{}", ipam.subnet, ipam.prefix_len), "created network");
        Ok(record)
    }

    /// Removes a user-defined network. Stopped containers lose their
    /// endpoint on it; a running one makes the removal fail, as in Docker.
    pub fn remove_network(&self, name_or_id: &str) -> Result<()> {
        if let Some(network) = built_in(name_or_id) {
            return Err(Error::Forbidden(format!(
                "{} is a pre-defined network and cannot be removed",
                network.name
            )));
        }

        let mut networks = self.networks.lock();
        let network = find(&networks, name_or_id)?.clone();
        let members = self.containers();
        let active = members.iter().any(|container| {
            is_active(&container.record()) && endpoint_of(&container.record(), &network).is_some()
        });
        if active {
            return Err(Error::Forbidden(format!(
                "error while removing network: network {} id {} has active endpoints",
                network.name, network.id
            )));
        }

        for container in &members {
            if endpoint_of(&container.record(), &network).is_some() {
                container
                    .update(|record| record.networks.retain(|_, e| e.network_id != network.id));
                tracing::info!(container = %short(&container.id), network = %short(&network.id),
                    "dropped the endpoint of a stopped container on a removed network");
            }
        }

        self.networks
            .delete(&network.id)
            .map_err(|error| Error::internal("failed to delete the network record", error))?;
        networks.remove(&network.id);
        self.isolation.remove_network(&network.id);
        self.write_hosts_files_locked();
        tracing::info!(network = %short(&network.id), name = %network.name, "removed network");
        Ok(())
    }

    /// Removes the user-defined networks that `selected` accepts and that
    /// have no active endpoints, and returns their names.
    pub fn prune_networks(&self, selected: impl Fn(&NetworkRecord) -> bool) -> Vec<String> {
        let mut deleted = Vec::new();
        let candidates: Vec<NetworkRecord> = self.networks.lock().values().cloned().collect();
        for network in candidates.into_iter().filter(|network| selected(network)) {
            let in_use = self.network_members(&network).iter().any(is_active);
            if in_use {
                continue;
            }
            match self.remove_network(&network.id) {
                Ok(()) => deleted.push(network.name),
                Err(error) => {
                    tracing::warn!(network = %short(&network.id), %error, "failed to prune network");
                }
            }
        }
        deleted
    }

    /// Resolves the networks a new container joins: the one `NetworkMode`
    /// names, or `bridge`, plus every entry of `EndpointsConfig`. Checks
    /// links and aliases before the container exists, so that a failure
    /// leaves nothing behind.
    pub(super) fn plan_endpoints(
        &self,
        host_config: &Value,
        networking_config: Option<&Value>,
    ) -> Result<Vec<EndpointPlan>> {
        let mode = host_config["NetworkMode"].as_str().unwrap_or_default();
        let mut requests: BTreeMap<String, EndpointRequest> = BTreeMap::new();
        if let Some(Value::Object(endpoints)) =
            networking_config.map(|config| &config["EndpointsConfig"])
        {
            for (name, value) in endpoints {
                let request = if value.is_null() {
                    EndpointRequest::default()
                } else {
                    serde_json::from_value(value.clone()).map_err(|error| {
                        Error::InvalidParameter(format!(
                            "invalid EndpointsConfig for {name}: {error}"
                        ))
                    })?
                };
                // The docker CLI names the default network `default`.
                let name = if name == "default" {
                    "bridge"
                } else {
                    name.as_str()
                };
                requests.insert(name.to_string(), request);
            }
        }
        let primary = match mode {
            "" | "default" => "bridge",
            other => other,
        };
        if primary.starts_with("container:") {
            // The container shares another's network, and sidewhale
            // reports it the way it always has.
            return Ok(Vec::new());
        }

        // `EndpointsConfig` may name the primary network by id while
        // `NetworkMode` names it by name, or the other way round.
        let mut plans: Vec<EndpointPlan> = vec![EndpointPlan {
            network: self.network(primary)?,
            request: EndpointRequest::default(),
        }];
        for (name, request) in requests {
            let network = self.network(&name)?;
            match plans.iter_mut().find(|plan| plan.network.id == network.id) {
                Some(plan) => plan.request = request,
                None => plans.push(EndpointPlan { network, request }),
            }
        }
        let private_mode = plans
            .iter()
            .any(|plan| plan.network.built_in && plan.network.name != "bridge");
        if private_mode && plans.len() > 1 {
            let names: Vec<&str> = plans
                .iter()
                .map(|plan| plan.network.name.as_str())
                .collect();
            return Err(Error::InvalidParameter(format!(
                "Container cannot be connected to network endpoints: {}",
                names.join(", ")
            )));
        }
        for plan in &plans {
            check_aliases(&plan.network, &plan.request)?;
        }
        for link in host_config["Links"].as_array().into_iter().flatten() {
            let (name, _) = parse_link(link.as_str().unwrap_or_default());
            self.container(&name).map_err(|error| {
                Error::InvalidParameter(format!("could not get container for {name}: {error}"))
            })?;
        }
        Ok(plans)
    }

    /// Gives a new container its planned endpoints and rewrites every
    /// hosts file its names appear in.
    pub(super) fn attach_planned(
        &self,
        container: &Container,
        plans: Vec<EndpointPlan>,
    ) -> Result<()> {
        let _networks = self.networks.lock();
        for plan in plans {
            self.add_endpoint_locked(container, &plan.network, plan.request)?;
        }
        self.write_hosts_files_locked();
        Ok(())
    }

    /// Connects a container, running or not, to a network. A running
    /// container with a namespace joins the network's bridge at once.
    pub async fn connect_network(
        &self,
        network: &str,
        container: &Arc<Container>,
        request: EndpointRequest,
    ) -> Result<()> {
        let network = self.network(network)?;
        let record = container.record();
        let networks = self.networks.lock();
        if endpoint_of(&record, &network).is_some() {
            return Err(Error::Forbidden(format!(
                "endpoint with name {} already exists in network {}",
                record.name, network.name
            )));
        }
        let private_mode = |name: &str| name == "host" || name == "none";
        if private_mode(&network.name) || record.networks.keys().any(|name| private_mode(name)) {
            return Err(Error::InvalidParameter(
                "container cannot be disconnected from host network or connected to host network"
                    .into(),
            ));
        }
        check_aliases(&network, &request)?;
        for link in request.links.iter().flatten() {
            let (name, _) = parse_link(link);
            self.container(&name).map_err(|error| {
                Error::InvalidParameter(format!("could not get container for {name}: {error}"))
            })?;
        }
        self.add_endpoint_locked(container, &network, request)?;
        drop(networks);
        let link = container
            .record()
            .networks
            .get(&network.name)
            .and_then(|endpoint| self.network_link(endpoint));
        if let Some(link) = link {
            if let Err(error) = self.isolation.connect(&record.id, &link).await {
                container.update(|record| record.networks.remove(&network.name));
                return Err(Error::internal("failed to connect the container to the network's bridge", error));
            }
        }
        self.write_hosts_files();
        tracing::info!(container = %short(&record.id), network = %short(&network.id),
            name = %network.name, "connected container to network");
        Ok(())
    }

    /// Disconnects a container from a network. The API's `force` needs no
    /// handling, because an endpoint here never outlives its container.
    pub async fn disconnect_network(&self, network: &str, container: &Arc<Container>) -> Result<()> {
        let network = self.network(network)?;
        let record = container.record();
        let networks = self.networks.lock();
        let Some(name) = endpoint_of(&record, &network) else {
            // Docker reports this without a status class, so as a 500.
            return Err(Error::Internal(format!(
                "container {} is not connected to network {}",
                record.id, network.name
            )));
        };
        if name == "host" {
            return Err(Error::InvalidParameter(
                "container cannot be disconnected from host network or connected to host network"
                    .into(),
            ));
        }
        container.update(|record| record.networks.remove(&name));
        self.write_hosts_files_locked();
        drop(networks);
        if let Err(error) = self.isolation.disconnect(&record.id, &network.id).await {
            tracing::warn!(container = %short(&record.id), network = %short(&network.id),
                %error, "failed to remove the container's interface on the network");
        }
        tracing::info!(container = %short(&record.id), network = %short(&network.id),
            name = %network.name, "disconnected container from network");
        Ok(())
    }

    /// Rewrites the hosts file of every container, after a container was
    /// removed.
    pub(super) fn write_hosts_files(&self) {
        let _networks = self.networks.lock();
        self.write_hosts_files_locked();
    }

    /// Adds an endpoint with the lowest free address of the network. The
    /// caller holds the network store's lock.
    fn add_endpoint_locked(
        &self,
        container: &Container,
        network: &NetworkRecord,
        request: EndpointRequest,
    ) -> Result<()> {
        let ipam = network.user_ipam();
        let ip_address = match &ipam {
            None => None,
            Some(ipam) => {
                let taken: BTreeSet<Ipv4Addr> = self
                    .network_members(network)
                    .iter()
                    .filter_map(|record| {
                        record
                            .networks
                            .values()
                            .find(|e| e.network_id == network.id)?
                            .ip_address
                    })
                    .collect();
                let address = ipam
                    .hosts()
                    .find(|address| !taken.contains(address))
                    .ok_or_else(|| {
                        Error::Forbidden(format!(
                            "no available IPv4 addresses on network {}",
                            network.name
                        ))
                    })?;
                Some(address)
            }
        };
        let endpoint = EndpointRecord {
            network_id: network.id.clone(),
            endpoint_id: hex::encode(rand::thread_rng().gen::<[u8; 32]>()),
            aliases: request.aliases.unwrap_or_default(),
            links: request.links.unwrap_or_default(),
            ip_address,
            gateway: ipam.map(|ipam| ipam.gateway),
            prefix_len: ipam.map_or(0, |ipam| ipam.prefix_len),
        };
        container.update(|record| record.networks.insert(network.name.clone(), endpoint));
        Ok(())
    }

    /// Writes every container's hosts file from the endpoints and links
    /// of all containers, and gives the executors of containers with
    /// relocated ports their current addresses. The caller holds the
    /// network store's lock.
    fn write_hosts_files_locked(&self) {
        let records: Vec<(PathBuf, ContainerRecord, Placement)> = self
            .containers()
            .iter()
            .map(|container| {
                let record = container.record();
                let placement = self.placement(&record);
                (container.dir.join("hosts"), record, placement)
            })
            .collect();
        for (path, record, placement) in &records {
            if *placement == Placement::Relocated {
                let addresses = record.networks.values().filter_map(|e| e.ip_address).collect();
                self.isolation.update_relocated_addresses(&record.id, addresses);
            }
            let entries = hosts_entries(record, *placement, &records);
            let text = files::render_hosts(record, placement.host_address(), &entries);
            match files::rewrite_in_place(path, &text) {
                Ok(true) => {
                    tracing::debug!(container = %record.short_id(), entries = entries.len(), "rewrote hosts file");
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(container = %record.short_id(), %error, "failed to rewrite hosts file");
                }
            }
        }
    }
}

/// Returns the name under which the record has an endpoint on the
/// network, if it has one.
pub fn endpoint_of(record: &ContainerRecord, network: &NetworkRecord) -> Option<String> {
    record
        .networks
        .iter()
        .find(|(name, endpoint)| endpoint.network_id == network.id || **name == network.id)
        .map(|(name, _)| name.clone())
}

fn check_aliases(network: &NetworkRecord, request: &EndpointRequest) -> Result<()> {
    let has_aliases = request
        .aliases
        .as_ref()
        .is_some_and(|aliases| !aliases.is_empty());
    if network.built_in && has_aliases {
        return Err(Error::InvalidParameter(
            "network-scoped alias is supported only for containers in user defined networks".into(),
        ));
    }
    Ok(())
}

/// Returns the address at which the container of `record`, placed at
/// `placement`, reaches `peer` on the network `network_id`. That is the
/// peer's address there when both are on the network's bridge, or when
/// both have relocated ports: the executor then sends connections to
/// that loopback address to the peer's relocated ports. Otherwise it is
/// the host's loopback as the container reaches it, where a peer on the
/// host's network listens.
fn peer_address(
    placement: Placement,
    peer: &ContainerRecord,
    peer_placement: Placement,
    network_id: Option<&str>,
) -> Ipv4Addr {
    let both_bridged = matches!(placement, Placement::Namespace { bridged: true, .. })
        && matches!(peer_placement, Placement::Namespace { bridged: true, .. });
    let shared = network_id.and_then(|id| {
        peer.networks
            .values()
            .find(|endpoint| endpoint.network_id == id)?
            .ip_address
    });
    // NOTE: a peer in a namespace of its own that is not on a shared
    // bridge (a `--link` on the default network) does not listen on the
    // host's loopback, so only its published ports are reachable there.
    let both_relocated = placement == Placement::Relocated && peer_placement == Placement::Relocated;
    match shared {
        Some(address) if both_bridged || both_relocated => address,
        _ => placement.host_address(),
    }
}

/// Returns the lines of `record`'s hosts file for its peers: an address
/// and the names that resolve to it. A peer is every container on a
/// user-defined network it shares, itself included, with its name,
/// aliases there and short id. Every container it links to is one too.
fn hosts_entries(
    record: &ContainerRecord,
    placement: Placement,
    all: &[(PathBuf, ContainerRecord, Placement)],
) -> Vec<(Ipv4Addr, Vec<String>)> {
    let mut entries: Vec<(Ipv4Addr, Vec<String>)> = Vec::new();
    // The container's own hostname already has a line of its own.
    let mut seen: BTreeSet<String> = BTreeSet::from([record.hostname()]);
    let mut push = |address: Ipv4Addr, names: Vec<String>| {
        let fresh: Vec<String> = names
            .into_iter()
            .filter(|name| seen.insert(name.clone()))
            .collect();
        if !fresh.is_empty() {
            entries.push((address, fresh));
        }
    };
    for endpoint in record
        .networks
        .values()
        .filter(|endpoint| endpoint.ip_address.is_some())
    {
        for (_, peer, peer_placement) in all {
            let Some(peer_endpoint) = peer
                .networks
                .values()
                .find(|e| e.network_id == endpoint.network_id)
            else {
                continue;
            };
            let address = peer_address(placement, peer, *peer_placement, Some(&endpoint.network_id));
            let mut names = vec![peer.name.clone()];
            names.extend(peer_endpoint.aliases.iter().cloned());
            names.push(peer.short_id().to_string());
            push(address, names);
        }
    }
    let mut links: Vec<String> = record.host_config["Links"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|link| link.as_str().map(str::to_string))
        .collect();
    links.extend(
        record
            .networks
            .values()
            .flat_map(|endpoint| endpoint.links.iter().cloned()),
    );
    for link in links {
        let (name, alias) = parse_link(&link);
        let peer = all
            .iter()
            .find(|(_, peer, _)| peer.name == name || peer.id.starts_with(&name));
        if let Some((_, peer, peer_placement)) = peer {
            // A link reaches the peer over the first user-defined network
            // both share, if any.
            let shared = record.networks.values().find_map(|endpoint| {
                endpoint.ip_address?;
                peer.networks
                    .values()
                    .any(|e| e.network_id == endpoint.network_id)
                    .then_some(endpoint.network_id.as_str())
            });
            let address = peer_address(placement, peer, *peer_placement, shared);
            push(address, vec![alias, peer.name.clone(), peer.short_id().to_string()]);
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_parse() {
        assert_eq!(parse_link("db:database"), ("db".into(), "database".into()));
        assert_eq!(parse_link("db"), ("db".into(), "db".into()));
        assert_eq!(
            parse_link("/db:/web/database"),
            ("db".into(), "database".into())
        );
    }

    #[test]
    fn ipam_parses_requested_subnet() {
        let ipam = Ipam::from_request(&serde_json::json!({"Subnet": "10.9.8.7/24"})).unwrap();
        assert_eq!(ipam.subnet, Ipv4Addr::new(10, 9, 8, 0));
        assert_eq!(ipam.prefix_len, 24);
        assert_eq!(ipam.gateway, Ipv4Addr::new(10, 9, 8, 1));

        let config = serde_json::json!({"Subnet": "10.9.8.0/24", "Gateway": "10.9.8.254"});
        let ipam = Ipam::from_request(&config).unwrap();
        assert_eq!(ipam.gateway, Ipv4Addr::new(10, 9, 8, 254));
        let hosts: Vec<Ipv4Addr> = ipam.hosts().collect();
        assert_eq!(hosts.first(), Some(&Ipv4Addr::new(10, 9, 8, 1)));
        assert_eq!(hosts.last(), Some(&Ipv4Addr::new(10, 9, 8, 253)));
        assert_eq!(hosts.len(), 253);
    }

    #[test]
    fn ipam_rejects_invalid_requests() {
        for config in [
            serde_json::json!({"Subnet": "10.9.8.0"}),
            serde_json::json!({"Subnet": "fd00::/64"}),
            serde_json::json!({"Subnet": "10.9.8.0/31"}),
            serde_json::json!({"Subnet": "10.9.8.0/24", "Gateway": "10.9.9.1"}),
        ] {
            let result = Ipam::from_request(&config);
            assert!(
                matches!(result, Err(Error::InvalidParameter(_))),
                "{config} gave {result:?}"
            );
        }
    }

    #[test]
    fn default_pools_follow_docker() {
        let pools: Vec<Ipam> = Ipam::default_pools().collect();
        assert_eq!(pools[0].subnet, Ipv4Addr::new(172, 18, 0, 0));
        assert_eq!(pools[0].gateway, Ipv4Addr::new(172, 18, 0, 1));
        assert_eq!(pools[13].subnet, Ipv4Addr::new(172, 31, 0, 0));
        assert_eq!(pools[14].subnet, Ipv4Addr::new(192, 168, 0, 0));
        assert_eq!(pools[14].prefix_len, 20);
        assert_eq!(pools[15].subnet, Ipv4Addr::new(192, 168, 16, 0));
        assert!(pools[0].overlaps(&Ipam::from_request(&serde_json::json!({"Subnet": "172.18.5.0/24"})).unwrap()));
        assert!(!pools[0].overlaps(&pools[1]));
    }

    #[test]
    fn store_keeps_networks_across_reopen() {
        let dir = std::env::temp_dir().join(format!("sw-networks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = NetworkStore::open(dir.clone()).unwrap();
        let mut record = NetworkRecord::built_in("net", "bridge");
        record.id = "a".repeat(64);
        record.built_in = false;
        record.subnet_octet = 7;
        record
            .labels
            .insert("org.testcontainers.sessionId".into(), "x".into());
        store.save(&record).unwrap();
        let reopened = NetworkStore::open(dir.clone()).unwrap();
        let loaded = reopened.lock().get(&record.id).cloned().unwrap();
        assert_eq!(loaded.name, "net");
        assert_eq!(loaded.subnet_octet, 7);
        assert_eq!(loaded.labels["org.testcontainers.sessionId"], "x");
        assert!(!loaded.built_in);
        reopened.delete(&record.id).unwrap();
        assert!(NetworkStore::open(dir.clone()).unwrap().lock().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lookup_by_name_id_and_prefix() {
        let mut networks = BTreeMap::new();
        for (id, name) in [("abc111", "one"), ("abd222", "two")] {
            let mut record = NetworkRecord::built_in(name, "bridge");
            record.id = id.into();
            networks.insert(id.to_string(), record);
        }
        assert_eq!(find(&networks, "one").unwrap().id, "abc111");
        assert_eq!(find(&networks, "abd222").unwrap().name, "two");
        assert_eq!(find(&networks, "abc").unwrap().name, "one");
        assert!(matches!(find(&networks, "ab"), Err(Error::NotFound(_))));
        assert!(matches!(find(&networks, "zzz"), Err(Error::NotFound(_))));
    }

    #[test]
    fn endpoint_address_derives_mac() {
        let endpoint = EndpointRecord {
            ip_address: Some(Ipv4Addr::new(127, 5, 0, 2)),
            ..Default::default()
        };
        assert_eq!(endpoint.mac_address(), "02:42:7f:05:00:02");
    }
}
