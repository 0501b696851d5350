//! Bridges that connect the namespaces of containers on one network.
//!
//! Each bridge lives in a namespace of its own, kept alive by a holder like
//! a container's. A member joins with a veth pair: one end is a port of
//! the bridge, the other is the member's interface (`eth0`, `eth1`, ...)
//! inside the member's namespace, with the member's address on the
//! network. The commands run `ip` from iproute2 inside the namespaces, so
//! they need only `CAP_NET_ADMIN` and `CAP_SYS_ADMIN` in the user namespace
//! that owns them, not real root.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use sidewhale_core::NetworkNamespace;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::{join, Holder, Strategy};

/// The bridge device inside a network's namespace.
const BRIDGE: &str = "br0";

/// An IPv4 address with its prefix length, as `ip` writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
}

impl std::fmt::Display for InterfaceAddress {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}/{}", self.address, self.prefix_len)
    }
}

/// One network's bridge and the namespace it lives in. Dropping it kills
/// the holder, which removes the bridge and every port with the namespace.
pub struct Bridge {
    holder: Holder,
}

/// Returns the path of `ip` in `PATH`, or the usual Debian location.
fn ip_program() -> PathBuf {
    crate::find_on_path("ip").unwrap_or_else(|| PathBuf::from("/usr/sbin/ip"))
}

/// Runs `ip -batch -` with `commands` inside `namespace`.
pub async fn run_ip(namespace: &NetworkNamespace, commands: &str) -> io::Result<()> {
    let mut command = Command::new(ip_program());
    command
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    join(&mut command, namespace)?;
    let mut child = command.spawn().map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("failed to run ip from iproute2 (is it installed?): {error}"),
        )
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(commands.as_bytes()).await?;
    }
    let output = child.wait_with_output().await?;
    if output.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "ip failed ({}) on {:?}: {}",
        output.status,
        commands.trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

impl Bridge {
    /// Starts a holder in a new network namespace (relay socket `socket`)
    /// and creates the bridge there with the network's gateway address.
    pub async fn create(
        program: &Path,
        socket: &Path,
        gateway: InterfaceAddress,
    ) -> io::Result<Bridge> {
        let strategy = Strategy {
            user_namespace: false,
        };
        let holder = Holder::spawn(program, socket, strategy).await?;
        let commands = format!(
            "link add {BRIDGE} type bridge\n\
             addr add {gateway} dev {BRIDGE}\n\
             link set {BRIDGE} up\n"
        );
        if let Err(error) = run_ip(&holder.namespace(), &commands).await {
            holder.stop().await;
            return Err(error);
        }
        Ok(Bridge { holder })
    }

    /// Returns the namespace the bridge lives in.
    pub fn namespace(&self) -> NetworkNamespace {
        self.holder.namespace()
    }

    /// Connects `member` to the bridge: creates the veth pair whose bridge
    /// end is `port` and whose other end is `interface` in the member's
    /// namespace, with `address` and `mac`. `port` must be unique on this
    /// bridge and `interface` in the member's namespace, and both at most
    /// 15 bytes long.
    pub async fn connect(
        &self,
        member: &NetworkNamespace,
        port: &str,
        interface: &str,
        address: InterfaceAddress,
        mac: &str,
    ) -> io::Result<()> {
        let pid = member.holder_pid;
        let bridge_side = format!(
            "link add {port} type veth peer name {interface} netns {pid}\n\
             link set {port} master {BRIDGE}\n\
             link set {port} up\n"
        );
        run_ip(&self.namespace(), &bridge_side).await?;
        let member_side = format!(
            "link set {interface} address {mac}\n\
             addr add {address} dev {interface}\n\
             link set {interface} up\n"
        );
        if let Err(error) = run_ip(member, &member_side).await {
            // Deleting one end of a veth pair deletes both.
            let _ = run_ip(&self.namespace(), &format!("link del {port}\n")).await;
            return Err(error);
        }
        Ok(())
    }

    /// Removes the veth pair whose bridge end is `port`. Succeeds when it
    /// is already gone, for example with the member's namespace.
    pub async fn disconnect(&self, port: &str) -> io::Result<()> {
        match run_ip(&self.namespace(), &format!("link del {port}\n")).await {
            Err(error) if error.to_string().contains("Cannot find device") => Ok(()),
            result => result,
        }
    }

    /// Stops the holder, which removes the namespace with the bridge.
    pub async fn stop(self) {
        self.holder.stop().await;
    }
}
