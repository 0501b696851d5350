//! Renaming containers, and pruning stopped containers and unused images.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sidewhale_images::RemoveEvent;

use super::create::validate_name;
use super::model::ContainerRecord;
use super::volumes::disk_usage;
use super::{Container, Daemon, Error, Result};

/// The result of a prune, as `POST /containers/prune` and
/// `POST /images/prune` report it.
#[derive(Debug)]
pub struct PruneReport<T> {
    pub deleted: Vec<T>,
    pub space_reclaimed: u64,
}

impl<T> Default for PruneReport<T> {
    fn default() -> PruneReport<T> {
        PruneReport {
            deleted: Vec::new(),
            space_reclaimed: 0,
        }
    }
}

/// The filters of a prune: `until` and `label`/`label!`.
#[derive(Debug, Default)]
pub struct PruneFilter {
    pub until: Option<DateTime<Utc>>,
    pub labels: Vec<String>,
    pub not_labels: Vec<String>,
}

impl PruneFilter {
    /// Returns whether an object created at `created` with `labels`
    /// passes: created before `until`, carrying every `label` and none of
    /// the `label!` values.
    pub fn matches(&self, created: DateTime<Utc>, labels: &HashMap<String, String>) -> bool {
        let has = |filter: &String| match filter.split_once('=') {
            Some((key, value)) => labels.get(key).is_some_and(|actual| actual == value),
            None => labels.contains_key(filter.as_str()),
        };
        self.until.is_none_or(|until| created < until)
            && self.labels.iter().all(has)
            && !self.not_labels.iter().any(has)
    }
}

impl Daemon {
    /// Renames a container, as `POST /containers/{id}/rename` does.
    pub fn rename_container(&self, container: &Container, new_name: &str) -> Result<()> {
        if new_name.is_empty() {
            return Err(Error::InvalidParameter(
                "Neither old nor new names may be empty".into(),
            ));
        }
        let new_name = validate_name(new_name)?;
        let old_name = {
            let containers = self.write_containers();
            let old_name = container.lock().name.clone();
            if old_name == new_name {
                return Err(Error::InvalidParameter(format!(
                    "Renaming a container with the same name as its current name: {new_name}"
                )));
            }
            if let Some(existing) = containers.values().find(|c| c.lock().name == new_name) {
                return Err(Error::Conflict(format!(
                    "Conflict. The container name \"/{new_name}\" is already in use by container \
                     \"{}\". You have to remove (or rename) that container to be able to reuse \
                     that name.",
                    existing.id
                )));
            }
            container.update(|record| record.name = new_name.clone());
            old_name
        };
        // Peers resolve the container by its name through their hosts files.
        self.write_hosts_files();
        tracing::info!(container = %&container.id[..12], old_name = %old_name, name = %new_name, "renamed container");
        self.container_event(
            &container.record(),
            "rename",
            &[("oldName", format!("/{old_name}"))],
        );
        Ok(())
    }

    /// Removes every container that is not running and passes `filter`.
    /// Returns the removed ids and the bytes their directories held.
    pub async fn prune_containers(&self, filter: &PruneFilter) -> PruneReport<String> {
        let mut report = PruneReport::default();
        for container in self.containers() {
            let record = container.record();
            let labels: HashMap<String, String> = record
                .config
                .labels
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect();
            if record.state.running() || !filter.matches(record.created, &labels) {
                continue;
            }
            let dir = container.dir.clone();
            let size = tokio::task::spawn_blocking(move || disk_usage(&dir))
                .await
                .unwrap_or(0);
            match self.remove_container(&container, false).await {
                Ok(()) => {
                    report.deleted.push(record.id.clone());
                    report.space_reclaimed += size;
                }
                Err(error) => {
                    tracing::warn!(container = %record.short_id(), %error, "failed to prune container");
                }
            }
        }
        tracing::info!(
            deleted = report.deleted.len(),
            space_reclaimed = report.space_reclaimed,
            "pruned containers"
        );
        report
    }

    /// Deletes images that no container uses and that pass `filter`: only
    /// untagged ones unless `dangling_only` is false.
    pub fn prune_images(
        &self,
        dangling_only: bool,
        filter: &PruneFilter,
    ) -> Result<PruneReport<RemoveEvent>> {
        let mut report = PruneReport::default();
        let used: Vec<ContainerRecord> = self.containers().iter().map(|c| c.record()).collect();
        for image in self.images.list() {
            if dangling_only && !image.repo_tags.is_empty() {
                continue;
            }
            if used.iter().any(|record| record.image_id == image.id) {
                continue;
            }
            let created = image
                .created
                .as_deref()
                .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
                .map_or(DateTime::<Utc>::MIN_UTC, |time| time.with_timezone(&Utc));
            let labels: HashMap<String, String> = image
                .config
                .labels
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect();
            if !filter.matches(created, &labels) {
                continue;
            }
            let events = match self.images.remove(&image.id, true) {
                Ok(events) => events,
                Err(error) => {
                    tracing::warn!(image = %image.id, %error, "failed to prune image");
                    continue;
                }
            };
            for event in &events {
                match event {
                    RemoveEvent::Untagged(name) => self.image_event("untag", &image.id, name),
                    RemoveEvent::Deleted(id) => {
                        report.space_reclaimed += image.size;
                        self.image_event("delete", id, id);
                    }
                }
            }
            report.deleted.extend(events);
        }
        tracing::info!(
            deleted = report.deleted.len(),
            space_reclaimed = report.space_reclaimed,
            "pruned images"
        );
        Ok(report)
    }
}
