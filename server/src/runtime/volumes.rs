//! Volumes: directories under `<state-dir>/volumes/<name>/_data` that
//! outlive containers, with Docker's `local` driver semantics.
//!
//! Each volume's metadata is stored in `<name>/volume.json`, written
//! atomically, so that a restarted server keeps its volumes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sidewhale_images::fsutil;

use super::model::{ContainerRecord, MountType};
use super::{Daemon, Error, Result};

/// The only volume driver sidewhale has.
pub const LOCAL_DRIVER: &str = "local";

/// The label Docker 23 and later puts on anonymous volumes. `volume
/// prune` without `all` removes only volumes that carry it.
pub const ANONYMOUS_LABEL: &str = "com.docker.volume.anonymous";

const METADATA_FILE: &str = "volume.json";
const DATA_DIR: &str = "_data";

/// A volume's metadata, as stored in `volume.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    pub driver: String,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    /// Created for one container's anonymous mount, and removed with it
    /// by `DELETE /containers/{id}?v=1`.
    pub anonymous: bool,
}

/// The body of `POST /volumes/create`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateVolumeRequest {
    pub name: Option<String>,
    pub driver: Option<String>,
    pub driver_opts: Option<BTreeMap<String, String>>,
    pub labels: Option<BTreeMap<String, String>>,
}

/// The volumes of one state directory. The map is the authority while
/// the server runs; the directories are its persistent copy.
pub struct VolumeStore {
    root: PathBuf,
    volumes: Mutex<BTreeMap<String, VolumeRecord>>,
}

impl VolumeStore {
    /// Opens `root`, loading every volume a previous run left there.
    pub fn open(root: PathBuf) -> std::io::Result<VolumeStore> {
        std::fs::create_dir_all(&root)?;
        let store = VolumeStore {
            root,
            volumes: Mutex::new(BTreeMap::new()),
        };
        store.load()?;
        Ok(store)
    }

    fn load(&self) -> std::io::Result<()> {
        let mut volumes = self.lock();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let dir = entry.path();
            if name.starts_with('.') {
                // A removal that a crash interrupted; finish it.
                if let Err(error) = fsutil::remove_tree(&dir) {
                    tracing::warn!(dir = %dir.display(), %error, "failed to remove a stale volume directory");
                }
                continue;
            }
            match std::fs::read(dir.join(METADATA_FILE)) {
                Ok(text) => match serde_json::from_slice::<VolumeRecord>(&text) {
                    Ok(record) if record.name == name => {
                        tracing::debug!(volume = %name, "loaded volume");
                        volumes.insert(name, record);
                    }
                    Ok(record) => {
                        tracing::error!(volume = %name, recorded = %record.name,
                            "volume metadata names another volume, skipping it");
                    }
                    Err(error) => {
                        tracing::error!(volume = %name, %error, "volume metadata is unreadable, skipping it");
                    }
                },
                Err(_) if dir.join(DATA_DIR).is_dir() && valid_name(&name) => {
                    // Created without metadata by an older sidewhale, or by
                    // a create that a crash interrupted: adopt it.
                    let record = new_record(&name, BTreeMap::new(), BTreeMap::new(), false);
                    self.save(&record)?;
                    tracing::info!(volume = %name, "adopted volume directory without metadata");
                    volumes.insert(name, record);
                }
                Err(_) => {
                    tracing::warn!(dir = %dir.display(), "ignoring volume directory without metadata or data");
                }
            }
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, VolumeRecord>> {
        // The map is only changed by single inserts and removes, so a lock
        // poisoned by a panic elsewhere still guards a consistent map.
        self.volumes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Returns the host directory that containers see as the volume.
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        self.root.join(name).join(DATA_DIR)
    }

    fn save(&self, record: &VolumeRecord) -> std::io::Result<()> {
        let dir = self.root.join(&record.name);
        let text = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        fsutil::write_atomic(&dir, &dir.join(METADATA_FILE), &text)
    }

    pub fn get(&self, name: &str) -> Option<VolumeRecord> {
        self.lock().get(name).cloned()
    }

    pub fn list(&self) -> Vec<VolumeRecord> {
        self.lock().values().cloned().collect()
    }

    /// Returns the volume `name`, creating it when missing. Returns
    /// whether it was created, so that a caller can undo the creation.
    pub fn get_or_create(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        options: BTreeMap<String, String>,
        anonymous: bool,
    ) -> Result<(VolumeRecord, bool)> {
        if !valid_name(name) {
            return Err(Error::InvalidParameter(format!(
                "create {name}: \"{name}\" includes invalid characters for a local volume name, \
                 only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host \
                 directory, use absolute path"
            )));
        }
        let mut volumes = self.lock();
        if let Some(existing) = volumes.get(name) {
            return Ok((existing.clone(), false));
        }
        let record = new_record(name, labels, options, anonymous);
        let dir = self.root.join(name);
        let created = std::fs::create_dir_all(dir.join(DATA_DIR)).and_then(|()| self.save(&record));
        if let Err(error) = created {
            let _ = fsutil::remove_tree(&dir);
            return Err(Error::internal(&format!("create {name}"), error));
        }
        tracing::info!(volume = %name, anonymous, "created volume");
        volumes.insert(name.to_string(), record.clone());
        Ok((record, true))
    }

    /// Removes the volume and its data. The caller checks that no
    /// container uses it.
    fn remove(&self, name: &str) -> Result<()> {
        let mut volumes = self.lock();
        if volumes.remove(name).is_none() {
            return Err(no_such_volume(name));
        }
        // The rename takes the volume out of the store in one step; the
        // data below it may take long to delete.
        let dir = self.root.join(name);
        let trash = self
            .root
            .join(format!(".{}", fsutil::unique_name("removing")));
        let result = std::fs::rename(&dir, &trash).and_then(|()| fsutil::remove_tree(&trash));
        if let Err(error) = result {
            tracing::error!(volume = %name, %error, "failed to remove volume data");
            return Err(Error::internal(&format!("remove {name}"), error));
        }
        tracing::info!(volume = %name, "removed volume");
        Ok(())
    }
}

fn new_record(
    name: &str,
    labels: BTreeMap<String, String>,
    options: BTreeMap<String, String>,
    anonymous: bool,
) -> VolumeRecord {
    VolumeRecord {
        name: name.to_string(),
        driver: LOCAL_DRIVER.to_string(),
        labels,
        options,
        created_at: Utc::now(),
        anonymous,
    }
}

/// Applies Docker's rule for local volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_valid = chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    name.len() >= 2 && first_valid && rest_valid
}

/// Returns a random 64-hex-digit name, as Docker gives anonymous volumes.
pub fn random_name() -> String {
    hex::encode(rand::thread_rng().gen::<[u8; 32]>())
}

fn no_such_volume(name: &str) -> Error {
    Error::NotFound(format!("get {name}: no such volume"))
}

/// Returns the bytes below `path`, counting each file once by its
/// apparent size and following no symlinks.
pub(super) fn disk_usage(path: &Path) -> u64 {
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !metadata.is_dir() {
        return metadata.len();
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| disk_usage(&entry.path()))
        .sum()
}

/// The outcome of `POST /volumes/prune`.
#[derive(Debug, Default)]
pub struct PruneReport {
    pub deleted: Vec<String>,
    pub space_reclaimed: u64,
}

/// The selection of volumes that `POST /volumes/prune` may remove.
#[derive(Debug, Default)]
pub struct PruneFilter {
    /// Named volumes too, not only anonymous ones (`all=true`).
    pub all: bool,
    /// `label` filters: `KEY` or `KEY=VALUE`, every one must match.
    pub labels: Vec<String>,
    /// `label!` filters: none may match.
    pub not_labels: Vec<String>,
}

/// Returns whether `labels` match a `KEY` or `KEY=VALUE` filter.
pub fn label_matches(labels: &BTreeMap<String, String>, filter: &str) -> bool {
    match filter.split_once('=') {
        Some((key, value)) => labels.get(key).is_some_and(|actual| actual == value),
        None => labels.contains_key(filter),
    }
}

impl Daemon {
    /// Creates a volume, or returns the existing one of that name, as
    /// Docker's `local` driver does.
    pub fn create_volume(&self, request: CreateVolumeRequest) -> Result<VolumeRecord> {
        let driver = request
            .driver
            .as_deref()
            .filter(|driver| !driver.is_empty());
        if let Some(driver) = driver.filter(|driver| *driver != LOCAL_DRIVER) {
            return Err(Error::NotFound(format!(
                "error looking up volume plugin {driver}: plugin \"{driver}\" not found"
            )));
        }
        let name = match request.name.filter(|name| !name.is_empty()) {
            Some(name) => name,
            None => random_name(),
        };
        let labels = request.labels.unwrap_or_default();
        let options = request.driver_opts.unwrap_or_default();
        let (record, _) = self.volumes.get_or_create(&name, labels, options, false)?;
        Ok(record)
    }

    pub fn volume(&self, name: &str) -> Result<VolumeRecord> {
        self.volumes.get(name).ok_or_else(|| no_such_volume(name))
    }

    /// Returns the ids of the containers that mount the volume.
    pub fn volume_users(&self, name: &str) -> Vec<String> {
        self.containers()
            .iter()
            .map(|container| container.record())
            .filter(|record| uses_volume(record, name))
            .map(|record| record.id)
            .collect()
    }

    /// Removes a volume. Docker refuses to remove a volume in use even
    /// with `force`, which only makes a missing volume no error.
    pub fn remove_volume(&self, name: &str, force: bool) -> Result<()> {
        if self.volumes.get(name).is_none() {
            if force {
                tracing::debug!(volume = %name, "forced removal of a missing volume");
                return Ok(());
            }
            return Err(no_such_volume(name));
        }
        let users = self.volume_users(name);
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "remove {name}: volume is in use - [{}]",
                users.join(" ")
            )));
        }
        self.volumes.remove(name)
    }

    /// Removes the unused volumes that `filter` selects.
    pub fn prune_volumes(&self, filter: &PruneFilter) -> PruneReport {
        let mut report = PruneReport::default();
        for volume in self.volumes.list() {
            let anonymous = volume.labels.contains_key(ANONYMOUS_LABEL) || volume.anonymous;
            let selected = (filter.all || anonymous)
                && filter
                    .labels
                    .iter()
                    .all(|label| label_matches(&volume.labels, label))
                && !filter
                    .not_labels
                    .iter()
                    .any(|label| label_matches(&volume.labels, label));
            if !selected || !self.volume_users(&volume.name).is_empty() {
                continue;
            }
            let size = disk_usage(&self.volumes.mountpoint(&volume.name));
            match self.volumes.remove(&volume.name) {
                Ok(()) => {
                    report.space_reclaimed += size;
                    report.deleted.push(volume.name);
                }
                Err(error) => {
                    tracing::warn!(volume = %volume.name, %error, "failed to prune volume");
                }
            }
        }
        report
    }

    /// Removes the anonymous volumes of a removed container that no other
    /// container uses, as `DELETE /containers/{id}?v=1` and `AutoRemove`
    /// do. Named volumes stay.
    pub fn remove_anonymous_volumes(&self, record: &ContainerRecord) {
        for mount in &record.mounts {
            if mount.kind != MountType::Volume {
                continue;
            }
            let anonymous = self
                .volumes
                .get(&mount.name)
                .is_some_and(|volume| volume.anonymous);
            if !anonymous {
                continue;
            }
            let users = self.volume_users(&mount.name);
            if users.iter().any(|id| *id != record.id) {
                tracing::debug!(volume = %mount.name, container = %record.short_id(),
                    "anonymous volume still in use, keeping it");
                continue;
            }
            if let Err(error) = self.volumes.remove(&mount.name) {
                tracing::warn!(volume = %mount.name, container = %record.short_id(), %error,
                    "failed to remove anonymous volume");
            }
        }
    }
}

fn uses_volume(record: &ContainerRecord, name: &str) -> bool {
    record
        .mounts
        .iter()
        .any(|mount| mount.kind == MountType::Volume && mount.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names_are_validated() {
        assert!(valid_name("data"));
        assert!(valid_name("my-vol_1.x"));
        assert!(!valid_name("a"));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a/b"));
        assert!(valid_name(&random_name()));
    }

    #[test]
    fn store_keeps_volumes_across_reopen() {
        let root = tempfile::tempdir().unwrap();
        let store = VolumeStore::open(root.path().to_path_buf()).unwrap();
        let labels = BTreeMap::from([("a".to_string(), "1".to_string())]);
        let (record, created) = store
            .get_or_create("data", labels, BTreeMap::new(), false)
            .unwrap();
        assert!(created);
        assert!(store.mountpoint("data").is_dir());
        let (_, created_again) = store
            .get_or_create("data", BTreeMap::new(), BTreeMap::new(), false)
            .unwrap();
        assert!(!created_again);

        let reopened = VolumeStore::open(root.path().to_path_buf()).unwrap();
        let loaded = reopened.get("data").unwrap();
        assert_eq!(loaded.labels, record.labels);
        assert_eq!(loaded.created_at, record.created_at);

        reopened.remove("data").unwrap();
        assert!(reopened.get("data").is_none());
        assert!(!root.path().join("data").exists());
    }

    #[test]
    fn store_adopts_bare_data_directory() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("legacy/_data")).unwrap();
        let store = VolumeStore::open(root.path().to_path_buf()).unwrap();
        assert!(store.get("legacy").is_some());
        assert!(root.path().join("legacy/volume.json").is_file());
    }

    #[test]
    fn label_filters_match() {
        let labels = BTreeMap::from([("env".to_string(), "ci".to_string())]);
        assert!(label_matches(&labels, "env"));
        assert!(label_matches(&labels, "env=ci"));
        assert!(!label_matches(&labels, "env=prod"));
        assert!(!label_matches(&labels, "other"));
    }
}
