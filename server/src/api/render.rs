//! Docker's JSON shapes for containers and images.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use sidewhale_core::ImageRecord;

use crate::runtime::health::HealthStatus;
use crate::runtime::model::{port_key_order, ContainerRecord, MountType, State, Status};
use crate::runtime::networks::EndpointRecord;
use crate::runtime::volumes::LOCAL_DRIVER;

/// Docker's zero time, shown for times that have not happened yet.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

const LOOPBACK: &str = "127.0.0.1";

fn time(value: Option<DateTime<Utc>>) -> String {
    value.map_or(ZERO_TIME.to_string(), |time| time.to_rfc3339_opts(SecondsFormat::Nanos, true))
}

/// Renders `NetworkSettings.Ports`: every exposed port, with its host
/// bindings while the container runs and `null` otherwise.
fn ports_map(record: &ContainerRecord) -> Value {
    let mut ports = Map::new();
    if !record.state.running() {
        return Value::Object(ports);
    }
    for key in record.exposed_port_keys() {
        let bindings: Vec<Value> = record
            .ports
            .iter()
            .filter(|port| format!("{}/{}", port.container_port, port.protocol.as_str()) == key)
            .map(|port| json!({"HostIp": port.host_ip.to_string(), "HostPort": port.host_port.to_string()}))
            .collect();
        let value = if bindings.is_empty() { Value::Null } else { Value::Array(bindings) };
        ports.insert(key, value);
    }
    Value::Object(ports)
}

/// Renders `Mounts` as Docker does: binds with `rprivate` propagation,
/// volumes with their name and driver, and no entries for
/// `HostConfig.Tmpfs`.
fn mounts(record: &ContainerRecord) -> Value {
    record
        .mounts
        .iter()
        .filter(|mount| !mount.hidden)
        .map(|mount| {
            let mut entry = json!({
                "Type": mount.kind.as_str(),
                "Source": mount.source,
                "Destination": mount.destination,
                "Mode": mount.mode,
                "RW": !mount.read_only,
                "Propagation": "",
            });
            match mount.kind {
                MountType::Bind => entry["Propagation"] = json!("rprivate"),
                MountType::Volume => {
                    entry["Name"] = json!(mount.name);
                    entry["Driver"] = json!(LOCAL_DRIVER);
                }
                MountType::Tmpfs => entry["Source"] = json!(""),
            }
            entry
        })
        .collect()
}

/// Returns the network a container reports: `bridge` unless the request
/// named another `NetworkMode`.
fn network_name(record: &ContainerRecord) -> String {
    match record.host_config["NetworkMode"].as_str() {
        None | Some("") | Some("default") => "bridge".to_string(),
        Some(name) => name.to_string(),
    }
}

/// Renders an endpoint on a built-in network, or the one network of a
/// record written before endpoints were stored. Containers share the
/// host's network, so both their own address and their gateway are
/// `127.0.0.1`: a client reaches a container port there directly, and a
/// published port there through the port forwarder.
fn loopback_endpoint(record: &ContainerRecord, network_id: &str) -> Value {
    let address = if record.state.running() { LOOPBACK } else { "" };
    json!({
        "IPAMConfig": null,
        "Links": null,
        "Aliases": null,
        "NetworkID": network_id,
        "EndpointID": "",
        "Gateway": address,
        "IPAddress": address,
        "IPPrefixLen": if address.is_empty() { 0 } else { 8 },
        "IPv6Gateway": "",
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "MacAddress": "",
        "DNSNames": null,
    })
}

/// Renders an endpoint on a user-defined network. Like Docker, it shows
/// the address, gateway and DNS names only while the container runs, and
/// the aliases exactly as the client sent them.
///
/// The gateway shown is `127.0.0.1`, where published ports listen, not
/// the bridge's address, which exists only in the bridge's namespace:
/// testcontainers-python inside a container connects to published ports
/// through the endpoint's gateway. Network inspect shows the bridge's.
fn user_endpoint(record: &ContainerRecord, endpoint: &EndpointRecord) -> Value {
    let running = record.state.running();
    let shown = |value: String| if running { value } else { String::new() };
    let aliases = (!endpoint.aliases.is_empty()).then(|| endpoint.aliases.clone());
    let links = (!endpoint.links.is_empty()).then(|| endpoint.links.clone());
    let dns_names = running.then(|| {
        let mut names = vec![record.name.clone()];
        names.extend(endpoint.aliases.iter().cloned());
        names.push(record.short_id().to_string());
        names
    });
    let address = endpoint
        .ip_address
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    let gateway = LOOPBACK.to_string();
    json!({
        "IPAMConfig": null,
        "Links": links,
        "Aliases": aliases,
        "MacAddress": shown(endpoint.mac_address()),
        "DriverOpts": null,
        "NetworkID": endpoint.network_id,
        "EndpointID": shown(endpoint.endpoint_id.clone()),
        "Gateway": shown(gateway),
        "IPAddress": shown(address),
        "IPPrefixLen": if running { endpoint.prefix_len() } else { 0 },
        "IPv6Gateway": "",
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "DNSNames": dns_names,
    })
}

/// Renders `NetworkSettings`. The top-level address stays `127.0.0.1`
/// while the container runs, whatever its networks, because that is where
/// its ports are reachable.
fn network_settings(record: &ContainerRecord) -> Value {
    let address = if record.state.running() { LOOPBACK } else { "" };
    let mut networks = Map::new();
    if record.networks.is_empty() {
        let name = network_name(record);
        networks.insert(name.clone(), loopback_endpoint(record, &name));
    }
    for (name, endpoint) in &record.networks {
        let value = match endpoint.ip_address {
            Some(_) => user_endpoint(record, endpoint),
            None => loopback_endpoint(record, &endpoint.network_id),
        };
        networks.insert(name.clone(), value);
    }
    json!({
        "Bridge": "",
        "SandboxID": "",
        "SandboxKey": "",
        "HairpinMode": false,
        "Ports": ports_map(record),
        "Gateway": address,
        "IPAddress": address,
        "IPPrefixLen": if address.is_empty() { 0 } else { 8 },
        "MacAddress": "",
        "Networks": networks,
    })
}

/// Renders `GET /containers/{id}/json`.
pub fn container_inspect(record: &ContainerRecord, rootfs: &str, log_path: &str) -> Value {
    let state = &record.state;
    let argv = record.argv();
    let mut config = serde_json::to_value(&record.config).unwrap_or(Value::Null);
    if let Value::Object(object) = &mut config {
        object.insert("Hostname".into(), json!(record.hostname()));
        object.insert("Image".into(), json!(record.image));
        for key in ["Domainname", "User", "WorkingDir"] {
            object.entry(key).and_modify(|v| if v.is_null() { *v = json!("") }).or_insert(json!(""));
        }
        for key in ["AttachStdin", "AttachStdout", "AttachStderr", "Tty", "OpenStdin", "StdinOnce"] {
            object.entry(key).and_modify(|v| if v.is_null() { *v = json!(false) }).or_insert(json!(false));
        }
    }
    json!({
        "Id": record.id,
        "Created": time(Some(record.created)),
        "Path": argv.first().cloned().unwrap_or_default(),
        "Args": argv.iter().skip(1).collect::<Vec<_>>(),
        "State": state_json(state),
            "Restarting": false,
            "OOMKilled": false,
            "Dead": false,
            "Pid": state.pid,
            "ExitCode": state.exit_code,
            "Error": state.error,
        "Image": record.image_id,
        "ResolvConfPath": "",
        "HostnamePath": "",
        "HostsPath": "",
        "LogPath": log_path,
        "Name": format!("/{}", record.name),
        "RestartCount": record.restart_count,
        "Driver": "sidewhale",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": null,
        "HostConfig": record.host_config,
        "GraphDriver": {"Name": "sidewhale", "Data": {"MergedDir": rootfs}},
        "Mounts": mounts(record),
        "Config": config,
        "NetworkSettings": network_settings(record),
    })
}

/// Renders inspect's `State`, with `Health` only for containers that have a
/// health check and have started.
fn state_json(state: &State) -> Value {
    let mut value = json!({
        "Status": state.status_name(),
        "Running": state.running(),
        "Paused": state.paused,
        "Restarting": false,
        "OOMKilled": false,
        "Dead": false,
        "Pid": state.pid,
        "ExitCode": state.exit_code,
        "Error": state.error,
        "StartedAt": time(state.started_at),
        "FinishedAt": time(state.finished_at),
    });
    if let Some(health) = &state.health {
        let log: Vec<Value> = health
            .log
            .iter()
            .map(|entry| {
                json!({
                    "Start": time(Some(entry.start)),
                    "End": time(Some(entry.end)),
                    "ExitCode": entry.exit_code,
                    "Output": entry.output,
                })
            })
            .collect();
        value["Health"] = json!({
            "Status": health.status.as_str(),
            "FailingStreak": health.failing_streak,
            "Log": log,
        });
    }
    value
}

/// Formats a duration as Docker's `units.HumanDuration` does.
pub fn human_duration(seconds: i64) -> String {
    let minutes = seconds / 60;
    // Go's units package rounds hours to the nearest whole hour.
    let hours = (seconds + 1800) / 3600;
    match seconds {
        s if s < 1 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        _ if minutes == 1 => "About a minute".into(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", hours / 24 / 365),
    }
}

fn status_text(record: &ContainerRecord) -> String {
    let now = Utc::now();
    let since = |time: Option<DateTime<Utc>>| {
        time.map_or(0, |time| (now - time).num_seconds().max(0))
    };
    match record.state.status {
        Status::Created => "Created".into(),
        Status::Running => {
            let up = format!("Up {}", human_duration(since(record.state.started_at)));
            match (&record.state.health, record.state.paused) {
                (_, true) => format!("{up} (Paused)"),
                (Some(health), false) if health.status == HealthStatus::Starting => {
                    format!("{up} (health: starting)")
                }
                (Some(health), false) => format!("{up} ({})", health.status.as_str()),
                (None, false) => up,
            }
        }
        Status::Exited => format!(
            "Exited ({}) {} ago",
            record.state.exit_code,
            human_duration(since(record.state.finished_at))
        ),
        Status::Removing => "Removal In Progress".into(),
    }
}

/// Renders one entry of `GET /containers/json`.
pub fn container_summary(record: &ContainerRecord) -> Value {
    let mut ports: Vec<Value> = Vec::new();
    let mut published = record.ports.clone();
    published.sort_by_key(|port| port.container_port);
    for port in &published {
        ports.push(json!({
            "IP": port.host_ip.to_string(),
            "PrivatePort": port.container_port,
            "PublicPort": port.host_port,
            "Type": port.protocol.as_str(),
        }));
    }
    for key in record.exposed_port_keys() {
        let (port, protocol) = port_key_order(&key);
        let is_published = published.iter().any(|p| u32::from(p.container_port) == port);
        if !is_published {
            ports.push(json!({"PrivatePort": port, "Type": protocol}));
        }
    }
    json!({
        "Id": record.id,
        "Names": [format!("/{}", record.name)],
        "Image": record.image,
        "ImageID": record.image_id,
        "Command": record.argv().join(" "),
        "Created": record.created.timestamp(),
        "Ports": ports,
        "Labels": record.config.labels.clone().unwrap_or_default(),
        "State": record.state.status_name(),
        "Status": status_text(record),
        "HostConfig": {"NetworkMode": network_name(record)},
        "NetworkSettings": {"Networks": network_settings(record)["Networks"].clone()},
        "Mounts": mounts(record),
    })
}

fn created_unix(image: &ImageRecord) -> i64 {
    image
        .created
        .as_deref()
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map_or(0, |time| time.timestamp())
}

/// Renders one entry of `GET /images/json`.
pub fn image_summary(image: &ImageRecord, containers: usize) -> Value {
    json!({
        "Id": image.id,
        "ParentId": "",
        "RepoTags": image.repo_tags,
        "RepoDigests": image.repo_digests,
        "Created": created_unix(image),
        "Size": image.size,
        "SharedSize": -1,
        "VirtualSize": image.size,
        "Labels": image.config.labels.clone().unwrap_or_default(),
        "Containers": containers,
    })
}

/// Renders `GET /images/{name}/json`.
pub fn image_inspect(image: &ImageRecord) -> Value {
    json!({
        "Id": image.id,
        "RepoTags": image.repo_tags,
        "RepoDigests": image.repo_digests,
        "Parent": "",
        "Comment": "",
        "Created": image.created.clone().unwrap_or_else(|| ZERO_TIME.to_string()),
        "DockerVersion": "",
        "Author": "",
        "Config": image.config,
        "Architecture": image.architecture,
        "Os": image.os,
        "Size": image.size,
        "VirtualSize": image.size,
        "GraphDriver": {"Name": "sidewhale", "Data": {}},
        "RootFS": {"Type": "layers", "Layers": image.diff_ids},
        "Metadata": {"LastTagTime": ZERO_TIME},
    })
}

/// Renders `GET /images/{name}/history`, newest step first.
pub fn image_history(image: &ImageRecord) -> Value {
    let steps: Vec<Value> = image
        .history
        .iter()
        .rev()
        .map(|step| {
            let created = step["created"]
                .as_str()
                .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
                .map_or(0, |time| time.timestamp());
            json!({
                "Id": "<missing>",
                "Created": created,
                "CreatedBy": step["created_by"].as_str().unwrap_or_default(),
                "Tags": null,
                "Size": 0,
                "Comment": step["comment"].as_str().unwrap_or_default(),
            })
        })
        .collect();
    Value::Array(steps)
}

#[cfg(test)]
mod tests {
    use super::human_duration;

    #[test]
    fn durations_read_like_docker() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(5), "5 seconds");
        assert_eq!(human_duration(61), "About a minute");
        assert_eq!(human_duration(600), "10 minutes");
        assert_eq!(human_duration(3600), "About an hour");
        assert_eq!(human_duration(3 * 3600), "3 hours");
        assert_eq!(human_duration(3 * 86400), "3 days");
    }
}
