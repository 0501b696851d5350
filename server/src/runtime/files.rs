//! The files Docker gives every container of its own: `/etc/hosts`,
//! `/etc/hostname`, `/etc/resolv.conf` and an empty `/dev/shm`.

use std::path::Path;

use sidewhale_core::Mount;

use super::model::ContainerRecord;

/// Writes the container's own `/etc` files into its directory.
pub fn write_network_files(dir: &Path, record: &ContainerRecord) -> std::io::Result<()> {
    let hostname = record.hostname();
    let fqdn = match record.config.domainname.as_deref() {
        Some(domain) if !domain.is_empty() => format!("{hostname}.{domain} {hostname}"),
        _ => hostname.clone(),
    };
    // NOTE: containers share the host's network, so the hostname resolves
    // to loopback rather than to an address of the container's own.
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n127.0.0.1\t{fqdn}\n"
    );
    std::fs::write(dir.join("hosts"), hosts)?;
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
    let resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
    std::fs::write(dir.join("resolv.conf"), resolv)?;
    std::fs::create_dir_all(dir.join("shm"))?;
    Ok(())
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
    mounts.extend(record.mounts.iter().cloned());
    mounts
}
