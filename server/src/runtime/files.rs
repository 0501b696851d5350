//! The files Docker gives every container of its own: `/etc/hosts`,
//! `/etc/hostname`, `/etc/resolv.conf` and an empty `/dev/shm`.

use std::io::{Read, Seek, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use sidewhale_core::Mount;

use super::model::ContainerRecord;

/// The address a container's own hostname resolves to. It stays the
/// loopback address also in a namespace, because published ports reach
/// the container there.
const LOOPBACK: &str = "127.0.0.1";

/// Writes the container's own `/etc` files into its directory. The hosts
/// file lists no peers yet: the daemon rewrites it once the container's
/// endpoints exist.
pub fn write_network_files(dir: &Path, record: &ContainerRecord) -> std::io::Result<()> {
    let hostname = record.hostname();
    std::fs::write(
        dir.join("hosts"),
        render_hosts(record, Ipv4Addr::LOCALHOST, &[]),
    )?;
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    std::fs::write(dir.join("resolv.conf"), resolv)?;
    std::fs::create_dir_all(dir.join("shm"))?;
    Ok(())
}

/// Returns the host's `resolv.conf` for a container whose DNS forwarder is
/// `forwarder`: each loopback `nameserver`, unreachable from a network
/// namespace, becomes the forwarder, and one is added when the host names
/// none. Docker likewise drops loopback name servers.
pub fn namespace_resolv_conf(host: &str, forwarder: Ipv4Addr) -> String {
    let mut text = String::new();
    let mut has_forwarder = false;
    let mut servers = 0;
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            text.push_str(line);
            text.push('\n');
            continue;
        }
        let address = words.next().and_then(|word| word.parse::<IpAddr>().ok());
        servers += 1;
        match address {
            Some(address) if address.is_loopback() => {
                if !has_forwarder {
                    text.push_str(&format!("nameserver {forwarder}\n"));
                    has_forwarder = true;
                }
            }
            _ => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    if servers == 0 {
        text.push_str(&format!("nameserver {forwarder}\n"));
    }
    text
}

/// Returns the mounts every container gets, followed by the user's.
pub fn mounts(dir: &Path, record: &ContainerRecord) -> Vec<Mount> {
    let own = |name: &str, destination: &str| Mount {
        source: dir.join(name),
        destination: destination.to_string(),
        read_only: false,
    };
    let mut mounts = vec![
        own("hosts", "/etc/hosts"),
        own("hostname", "/etc/hostname"),
        own("resolv.conf", "/etc/resolv.conf"),
        own("shm", "/dev/shm"),
    ];
    mounts.extend(record.mounts.iter().map(|mount| mount.to_mount()));
    mounts
}

/// Renders a container's `/etc/hosts`: the standard entries, the
/// `ExtraHosts` of its `HostConfig`, `host.docker.internal` and
/// `host-gateway` at `host_address` (where the host's loopback is
/// reachable), its own hostname at 127.0.0.1, and one line for each peer
/// address with its names.
pub fn render_hosts(
    record: &ContainerRecord,
    host_address: Ipv4Addr,
    peers: &[(Ipv4Addr, Vec<String>)],
) -> String {
    let host_address = host_address.to_string();
    let mut hosts = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    let mut host_internal = false;
    for entry in record.host_config["ExtraHosts"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(entry) = entry.as_str() else {
            continue;
        };
        // Docker accepts `name:address` and, since version 25, `name=address`.
        let Some((name, address)) = entry.split_once('=').or_else(|| entry.split_once(':')) else {
            continue;
        };
        let address = if address == "host-gateway" {
            host_address.as_str()
        } else {
            address
        };
        host_internal |= name == "host.docker.internal";
        hosts.push_str(&format!("{address}\t{name}\n"));
    }
    if !host_internal {
        hosts.push_str(&format!("{host_address}\thost.docker.internal\n"));
    }
    let hostname = record.hostname();
    let fqdn = match record.config.domainname.as_deref() {
        Some(domain) if !domain.is_empty() => format!("{hostname}.{domain} {hostname}"),
        _ => hostname,
    };
    hosts.push_str(&format!("{LOOPBACK}\t{fqdn}\n"));
    for (address, names) in peers {
        hosts.push_str(&format!("{address}\t{}\n", names.join(" ")));
    }
    hosts
}

/// Replaces the contents of an existing file without replacing the file,
/// so that the change reaches a running container that has the file bound
/// at `/etc/hosts`. Returns whether the contents changed. A missing file
/// stays missing.
pub fn rewrite_in_place(path: &Path, text: &str) -> std::io::Result<bool> {
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error),
    };
    let mut current = String::new();
    file.read_to_string(&mut current)?;
    if current == text {
        return Ok(false);
    }
    // Writing before truncating means a reader never sees an empty file.
    file.seek(std::io::SeekFrom::Start(0))?;
    file.write_all(text.as_bytes())?;
    file.set_len(text.len() as u64)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::runtime::model::State;

    fn record(host_config: serde_json::Value) -> ContainerRecord {
        ContainerRecord {
            id: "0123456789ab".repeat(5) + "cdef",
            name: "web".into(),
            created: chrono::Utc::now(),
            image: "busybox".into(),
            image_id: String::new(),
            config: Default::default(),
            host_config,
            port_bindings: Vec::new(),
            auto_remove: false,
            runtime: "proot".into(),
            mounts: Vec::new(),
            state: State::created(),
            ports: Vec::new(),
            restart_count: 0,
            networks: Default::default(),
        }
    }

    #[test]
    fn hosts_list_extra_hosts_and_peers() {
        let record = record(serde_json::json!({
            "ExtraHosts": ["db.test:10.0.0.5", "gw.test=host-gateway"],
        }));
        let peers = vec![(
            Ipv4Addr::LOCALHOST,
            vec!["cache".to_string(), "redis".to_string()],
        )];
        let hosts = render_hosts(&record, Ipv4Addr::LOCALHOST, &peers);
        let lines: Vec<&str> = hosts.lines().collect();
        assert!(lines.contains(&"10.0.0.5\tdb.test"));
        assert!(lines.contains(&"127.0.0.1\tgw.test"));
        assert!(lines.contains(&"127.0.0.1\thost.docker.internal"));
        assert!(lines.contains(&"127.0.0.1\t0123456789ab"));
        assert_eq!(lines.last(), Some(&"127.0.0.1\tcache redis"));
    }

    #[test]
    fn hosts_in_namespace_use_gateway_and_peer_addresses() {
        let record = record(serde_json::json!({
            "ExtraHosts": ["gw.test:host-gateway"],
        }));
        let peer = Ipv4Addr::new(172, 18, 0, 3);
        let peers = vec![(peer, vec!["db".to_string()])];
        let hosts = render_hosts(&record, Ipv4Addr::new(10, 0, 2, 2), &peers);
        let lines: Vec<&str> = hosts.lines().collect();
        assert!(lines.contains(&"10.0.2.2\tgw.test"));
        assert!(lines.contains(&"10.0.2.2\thost.docker.internal"));
        assert!(lines.contains(&"127.0.0.1\t0123456789ab"));
        assert_eq!(lines.last(), Some(&"172.18.0.3\tdb"));
    }

    #[test]
    fn resolv_conf_replaces_loopback_servers() {
        let forwarder = Ipv4Addr::new(10, 0, 2, 3);
        let host = "search example\nnameserver 127.0.0.53\nnameserver ::1\noptions edns0\n";
        assert_eq!(
            namespace_resolv_conf(host, forwarder),
            "search example\nnameserver 10.0.2.3\noptions edns0\n"
        );
        let remote = "nameserver 192.0.2.53\n";
        assert_eq!(namespace_resolv_conf(remote, forwarder), remote);
        assert_eq!(namespace_resolv_conf("", forwarder), "nameserver 10.0.2.3\n");
    }

    #[test]
    fn rewrite_keeps_the_inode() {
        let dir = std::env::temp_dir().join(format!("sw-hosts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hosts");
        std::fs::write(&path, "a much longer first version\n").unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();
        assert!(rewrite_in_place(&path, "short\n").unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "short\n");
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
        assert!(!rewrite_in_place(&path, "short\n").unwrap());
        assert!(!rewrite_in_place(&dir.join("missing"), "x").unwrap());
        assert!(!dir.join("missing").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
