//! The live processes of each container, so that the execs of a container
//! stop with its main process and `cleanup` kills what is left.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sidewhale_core::{ExitStatus, ProcessControl};

use crate::control::ChildControl;

/// Spawned children by container id: the main process and execs.
#[derive(Clone, Default)]
pub(crate) struct Registry {
    children: Arc<Mutex<HashMap<String, Vec<Arc<ChildControl>>>>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<Arc<ChildControl>>>> {
        self.children.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `control` to the container's children and removes those that
    /// have exited.
    pub fn register(&self, container_id: &str, control: &Arc<ChildControl>) {
        let mut children = self.lock();
        let controls = children.entry(container_id.to_string()).or_default();
        controls.retain(|control| !control.has_exited());
        controls.push(control.clone());
    }

    /// Kills every child of the container and removes them.
    pub fn kill_and_remove(&self, container_id: &str) {
        let controls = self.lock().remove(container_id).unwrap_or_default();
        kill_controls(container_id, &controls);
    }

    /// Returns what runs when a process has been reaped: for a main
    /// process, killing the container's execs, as Docker does when a
    /// container stops.
    pub fn on_exit(&self, container_id: &str, is_main: bool) -> impl FnOnce(ExitStatus) {
        let registry = self.clone();
        let container_id = container_id.to_string();

        move |_status| {
            if !is_main {
                return;
            }
            let controls = registry
                .lock()
                .get(&container_id)
                .cloned()
                .unwrap_or_default();
            kill_controls(&container_id, &controls);
        }
    }
}

fn kill_controls(container_id: &str, controls: &[Arc<ChildControl>]) {
    for control in controls.iter().filter(|c| !c.has_exited()) {
        if let Err(error) = control.kill_all() {
            tracing::warn!(
                container = %container_id,
                child_pid = control.child_pid(),
                %error,
                "failed to kill a container process"
            );
        }
    }
}
