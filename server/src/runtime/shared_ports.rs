//! Port collisions between containers that share the host's network.
//!
//! Without a network namespace of its own, a container's process binds
//! its ports on the host, so a second container that exposes the same
//! port would fail with whatever its process reports. sidewhale rejects
//! its start instead, with an error that names both containers.

use super::error::{Error, Result};
use super::model::ContainerRecord;
use super::{ryuk, Daemon};

impl Daemon {
    /// Fails with an error when `record`, about to start on the host's
    /// network, exposes a port that a running container also exposes there.
    pub(super) fn check_shared_ports(&self, record: &ContainerRecord) -> Result<()> {
        let ports = record.exposed_port_keys();
        if ports.is_empty() {
            return Ok(());
        }
        for other in self.containers() {
            let other = other.record();
            // sidewhale serves Ryuk's port itself, on the published port only.
            // A container with relocated ports does not listen on its own.
            let shares_host = other.runtime != ryuk::RUNTIME
                && other.state.running()
                && self.isolation.namespace(&other.id).is_none()
                && self.isolation.relocated_ports(&other.id).is_none();
            if other.id == record.id || !shares_host {
                continue;
            }
            let other_ports = other.exposed_port_keys();
            let Some(port) = ports.iter().find(|port| other_ports.contains(port)) else {
                continue;
            };
            tracing::warn!(
                container = %record.short_id(),
                other = %other.short_id(),
                %port,
                "port collision on the host's network"
            );
            return Err(Error::Internal(format!(
                "cannot start container {}: container {} already uses port {port}, and \
                 both share the host's network (network isolation mode: {}). Stop {}, \
                 or run sidewhale where it can give each container a network namespace: \
                 as root, or with unprivileged user namespaces",
                record.name,
                other.name,
                self.isolation.mode(),
                other.name,
            )));
        }
        Ok(())
    }
}
