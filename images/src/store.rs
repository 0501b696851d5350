//! The content-addressed image store.
//!
//! Layout under the store root:
//! - `blobs/sha256/<hex>`: verified config and layer blobs, named by digest.
//! - `layers/<diff id hex>/diff/`: one unpacked layer, shared by every image
//!   that uses it, and `layers/<diff id hex>/layer.json`, its
//!   `LayerMetadata`. The directory is built under `tmp/` and renamed into
//!   place with `layer.json` already written, so a layer directory without
//!   `layer.json` can only be damage and is removed on open.
//! - `images/<id hex>.json`: one `ImageRecord` per image.
//! - `repositories.json`: the tags index, full reference to image id.
//! - `tmp/`: blobs, layers and index files being written; emptied on open.
//!
//! Every file enters its final place by rename from `tmp/`, after fsync.
//! Writes follow dependency order (blobs, then layers, then the image
//! record, then the tag), so after a crash at any point every record
//! points only at complete content.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sidewhale_core::{ImageError, ImageRecord, Reference};

use crate::digest::sha256_hex;
use crate::fsutil;
use crate::rootfs::{self, LayerDir};
use crate::unpack::LayerMetadata;

/// Registry settings for pulls: mirrors, plain-HTTP hosts and platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryOptions {
    /// Docker Hub mirrors, as `http://host:port` or `https://host:port`,
    /// tried in order before Docker Hub itself.
    pub mirrors: Vec<String>,
    /// Registries (`host:port`) reached over plain HTTP. Loopback
    /// registries (`localhost`, `127.0.0.0/8`, `[::1]`) always are, as in
    /// Docker.
    pub insecure_registries: Vec<String>,
    /// `(os, architecture)` picked from manifest lists, in Go's names
    /// (`linux`, `amd64`, `arm64`).
    pub platform: (String, String),
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            mirrors: Vec::new(),
            insecure_registries: Vec::new(),
            platform: ("linux".to_string(), host_architecture().to_string()),
        }
    }
}

/// Returns the Go name of the architecture this binary runs on.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// One line of an image removal, as `DELETE /images/{name}` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum RemoveEvent {
    /// A familiar `repository:tag` or `repository@digest` was removed.
    Untagged(String),
    /// The image with this id was deleted.
    Deleted(String),
}

/// The tags index as stored in `repositories.json`.
#[derive(Default, Serialize, Deserialize)]
struct TagsIndex {
    /// Fully qualified reference (`docker.io/library/redis:7`) to image id.
    tags: BTreeMap<String, String>,
}

#[derive(Default)]
struct Catalog {
    /// Image records by id; their `repo_tags` are filled from `tags` when
    /// handed out.
    images: BTreeMap<String, ImageRecord>,
    tags: BTreeMap<String, String>,
    /// Diff ids that a running pull relies on, with a count per pull, so a
    /// concurrent removal does not delete them.
    pinned_layers: HashMap<String, usize>,
}

/// A local image store; see the module documentation for its layout.
pub struct ImageStore {
    root: PathBuf,
    pub(crate) options: RegistryOptions,
    catalog: Mutex<Catalog>,
}

/// Changes a pull made to the catalog when it committed an image.
pub(crate) struct CommitOutcome {
    pub new_image: bool,
    pub tag_changed: bool,
}

impl ImageStore {
    /// Opens the store at `root`, creating it if needed. Content left over
    /// from an interrupted write (temp files, layers without metadata,
    /// records pointing at missing layers) is removed.
    pub fn open(root: PathBuf, options: RegistryOptions) -> Result<ImageStore, ImageError> {
        let location = root.display().to_string();
        let io_error = |error| ImageError::io(format!("open image store {location}"), error);
        fsutil::remove_tree(&root.join("tmp")).map_err(io_error)?;
        for dir in ["blobs/sha256", "layers", "images", "tmp"] {
            fs::create_dir_all(root.join(dir)).map_err(io_error)?;
        }

        let store = ImageStore {
            root,
            options,
            catalog: Mutex::new(Catalog::default()),
        };
        store.remove_incomplete_layers().map_err(io_error)?;
        let catalog = store.load_catalog().map_err(io_error)?;
        *store.lock() = catalog;
        store.collect_garbage(&HashSet::new()).map_err(io_error)?;
        tracing::info!(root = %store.root.display(), "image store opened");
        Ok(store)
    }

    /// Returns every image, ordered by id.
    pub fn list(&self) -> Vec<ImageRecord> {
        let catalog = self.lock();
        catalog
            .images
            .values()
            .map(|record| with_tags(record, &catalog.tags))
            .collect()
    }

    /// Looks an image up as Docker does. `name_or_id` may be a full id
    /// (`sha256:<hex>`) or a reference (`redis:7`, `redis` for
    /// `redis:latest`, `redis@sha256:…` for a repo digest). It may also be
    /// an id prefix of one or more hex digits, with or without `sha256:`,
    /// that matches exactly one image.
    pub fn get(&self, name_or_id: &str) -> Option<ImageRecord> {
        let catalog = self.lock();
        let id = resolve(&catalog, name_or_id)?.id;
        catalog
            .images
            .get(&id)
            .map(|record| with_tags(record, &catalog.tags))
    }

    /// Points `target` (a reference with a tag; `latest` if none) at the
    /// image `source` names.
    pub fn tag(&self, source: &str, target: &str) -> Result<(), ImageError> {
        let target = Reference::parse(target)?;
        if target.digest.is_some() {
            return Err(ImageError::Conflict(format!(
                "refusing to create a tag with a digest reference: {target}"
            )));
        }
        let mut catalog = self.lock();
        let id = resolve(&catalog, source)
            .ok_or_else(|| ImageError::NoSuchImage(source.to_string()))?
            .id;
        catalog.tags.insert(target.to_string(), id.clone());
        self.save_tags(&catalog)?;
        tracing::info!(image = %id, tag = %target, "image tagged");
        Ok(())
    }

    /// Removes a tag, a repo digest or an image, with Docker's rules.
    /// Removing one of several tags only untags. Removing the last tag, or
    /// the image by id, deletes the image. Removing by id an image with
    /// more than one tag is `ImageError::Conflict` unless `force`. The
    /// caller checks whether a container uses the image.
    pub fn remove(&self, name_or_id: &str, force: bool) -> Result<Vec<RemoveEvent>, ImageError> {
        let mut catalog = self.lock();
        let lookup = resolve(&catalog, name_or_id)
            .ok_or_else(|| ImageError::NoSuchImage(name_or_id.to_string()))?;
        let id = lookup.id.clone();
        let mut events = Vec::new();
        let by_digest = matches!(lookup.by, LookupKind::RepoDigest(_));

        match lookup.by {
            LookupKind::Tag(key) => {
                catalog.tags.remove(&key);
                events.push(RemoveEvent::Untagged(familiar_name(&key)));
                untag_orphaned_digests(&mut catalog, &id, &key, &mut events);
            }
            LookupKind::RepoDigest(name) => {
                if let Some(record) = catalog.images.get_mut(&id) {
                    record.repo_digests.retain(|digest| *digest != name);
                }
                events.push(RemoveEvent::Untagged(name));
            }
            LookupKind::Id => {
                let tags = tags_of(&catalog.tags, &id);
                if tags.len() > 1 && !force {
                    let short = id.trim_start_matches("sha256:").get(..12).unwrap_or(&id);
                    return Err(ImageError::Conflict(format!(
                        "unable to delete {short} (must be forced) - image is referenced in multiple repositories"
                    )));
                }
                for key in tags {
                    catalog.tags.remove(&key);
                    events.push(RemoveEvent::Untagged(familiar_name(&key)));
                }
            }
        }

        // The image stays while a tag names it, or, after removing one
        // repo digest, while another repo digest does.
        let other_digests = catalog
            .images
            .get(&id)
            .is_some_and(|r| !r.repo_digests.is_empty());
        if !tags_of(&catalog.tags, &id).is_empty() || (by_digest && other_digests) {
            if let Some(record) = catalog.images.get(&id) {
                self.save_record(record)?;
            }
            self.save_tags(&catalog)?;
            return Ok(events);
        }

        self.delete_image(&mut catalog, &id, &mut events)?;
        Ok(events)
    }

    /// Builds a container's private rootfs for the image `image` (any
    /// name `get` accepts) in `dest`, which must not exist or be empty.
    /// On failure `dest` is removed again.
    pub fn create_rootfs(&self, image: &str, dest: &Path) -> Result<(), ImageError> {
        let started = Instant::now();
        let record = self
            .get(image)
            .ok_or_else(|| ImageError::NoSuchImage(image.to_string()))?;
        let metadata = self.load_stack(&record.diff_ids)?;
        let layers = layer_dirs(&metadata);

        if fs::read_dir(dest).is_ok_and(|mut entries| entries.next().is_some()) {
            return Err(ImageError::Conflict(format!(
                "rootfs destination {} is not empty",
                dest.display()
            )));
        }
        if let Err(error) = rootfs::build_rootfs(&layers, dest) {
            let _ = fsutil::remove_tree(dest);
            return Err(error);
        }

        let elapsed_ms = started.elapsed().as_millis() as u64;
        tracing::info!(image = %record.id, rootfs = %dest.display(), layers = layers.len(),
            elapsed_ms, "rootfs created");
        Ok(())
    }

    /// Prepares a check that the stored layers `diff_ids` (base first)
    /// stack into a rootfs, so that `create_rootfs` cannot fail on them
    /// with `ImageError::InvalidLayer`. Layers can be valid one by one and
    /// still escape the root together, for example through a lower layer's
    /// symlink.
    pub(crate) fn stack_check(&self, diff_ids: &[String]) -> Result<StackCheck, ImageError> {
        Ok(StackCheck {
            stack: self.load_stack(diff_ids)?,
            scratch: self.temp_path("check"),
        })
    }

    /// Removes the stored layers among `diff_ids` that no image uses and
    /// no running pull has pinned, after a pull that stored them failed.
    pub(crate) fn discard_unused_layers(&self, diff_ids: &[String]) {
        let catalog = self.lock();
        let mut used: HashSet<&String> = catalog.pinned_layers.keys().collect();
        for record in catalog.images.values() {
            used.extend(record.diff_ids.iter());
        }
        for diff_id in diff_ids {
            let path = self.layer_path(diff_id);
            if used.contains(diff_id) || !path.exists() {
                continue;
            }
            if let Err(error) = self.discard(&path) {
                tracing::warn!(%diff_id, %error, "failed to remove an unused layer");
            }
        }
    }

    /// Loads the metadata of the stored layers `diff_ids` with the paths of
    /// their `diff/` directories.
    fn load_stack(&self, diff_ids: &[String]) -> Result<Vec<(PathBuf, LayerMetadata)>, ImageError> {
        let mut stack = Vec::new();
        for diff_id in diff_ids {
            let layer = self
                .load_layer(diff_id)
                .ok_or_else(|| ImageError::InvalidLayer {
                    digest: diff_id.clone(),
                    reason: "layer is missing from the store; pull the image again".to_string(),
                })?;
            stack.push((self.layer_path(diff_id).join("diff"), layer));
        }
        Ok(stack)
    }

    /// Removes a rootfs made by `create_rootfs`, including directories and
    /// files without write permission. A missing `path` is not an error.
    pub fn remove_rootfs(&self, path: &Path) -> Result<(), ImageError> {
        fsutil::remove_tree(path)
            .map_err(|error| ImageError::io(format!("remove rootfs {}", path.display()), error))
    }

    /// Returns the store root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn temp_path(&self, prefix: &str) -> PathBuf {
        self.root.join("tmp").join(fsutil::unique_name(prefix))
    }

    /// Path of a blob; `digest` must be a sha256 digest.
    pub(crate) fn blob_path(&self, hex: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex)
    }

    pub(crate) fn layer_path(&self, diff_id: &str) -> PathBuf {
        let hex = sha256_hex(diff_id).unwrap_or("invalid");
        self.root.join("layers").join(hex)
    }

    /// Returns the metadata of a complete layer in the store.
    pub(crate) fn load_layer(&self, diff_id: &str) -> Option<LayerMetadata> {
        sha256_hex(diff_id)?;
        let text = fs::read(self.layer_path(diff_id).join("layer.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Moves a layer directory built in `temp` (with `diff/` and
    /// `layer.json`) into the store. When a concurrent pull stored the
    /// same layer first, `temp` is discarded and theirs is kept.
    pub(crate) fn commit_layer(&self, temp: &Path, diff_id: &str) -> io::Result<()> {
        let path = self.layer_path(diff_id);
        match fs::rename(temp, &path) {
            Ok(()) => fsutil::sync_dir(&self.root.join("layers")),
            Err(_) if self.load_layer(diff_id).is_some() => fsutil::remove_tree(temp),
            Err(error) => Err(error),
        }
    }

    /// Protects layers from removal while a pull relies on them.
    pub(crate) fn pin_layers(&self, diff_ids: &[String]) {
        let mut catalog = self.lock();
        for diff_id in diff_ids {
            *catalog.pinned_layers.entry(diff_id.clone()).or_default() += 1;
        }
    }

    pub(crate) fn unpin_layers(&self, diff_ids: &[String]) {
        let mut catalog = self.lock();
        for diff_id in diff_ids {
            if let Some(count) = catalog.pinned_layers.get_mut(diff_id) {
                *count -= 1;
                if *count == 0 {
                    catalog.pinned_layers.remove(diff_id);
                }
            }
        }
    }

    /// Returns true when the image with this id is stored with all its
    /// layers.
    pub(crate) fn has_image(&self, id: &str) -> bool {
        let record = self.lock().images.get(id).cloned();
        record.is_some_and(|record| record.diff_ids.iter().all(|d| self.load_layer(d).is_some()))
    }

    /// Stores `record` (merging repo digests with an existing record of the
    /// same id) and points `tag` at it.
    pub(crate) fn commit_image(
        &self,
        mut record: ImageRecord,
        tag: Option<&Reference>,
    ) -> Result<CommitOutcome, ImageError> {
        let mut catalog = self.lock();
        let existing = catalog.images.get(&record.id).cloned();
        let new_image = existing.is_none();
        if let Some(existing) = existing {
            for digest in existing.repo_digests {
                if !record.repo_digests.contains(&digest) {
                    record.repo_digests.push(digest);
                }
            }
        }
        record.repo_tags.clear();
        self.save_record(&record)?;
        catalog.images.insert(record.id.clone(), record.clone());

        let mut tag_changed = false;
        if let Some(tag) = tag {
            let key = tag
                .with_tag(tag.tag.as_deref().unwrap_or("latest"))
                .to_string();
            let previous = catalog.tags.insert(key, record.id.clone());
            tag_changed = previous.as_deref() != Some(record.id.as_str());
            if tag_changed {
                self.save_tags(&catalog)?;
            }
        }
        Ok(CommitOutcome {
            new_image,
            tag_changed,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Catalog> {
        // A panic while holding the lock leaves the catalog as consistent
        // as the files behind it, so the poison flag is ignored.
        self.catalog
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn save_record(&self, record: &ImageRecord) -> Result<(), ImageError> {
        let io_error = |error| ImageError::io(format!("save image record {}", record.id), error);
        let hex = sha256_hex(&record.id).ok_or_else(|| {
            io_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                "image id is not a sha256 digest",
            ))
        })?;
        let json = serde_json::to_vec_pretty(record).map_err(|e| io_error(e.into()))?;
        let path = self.root.join("images").join(format!("{hex}.json"));
        fsutil::write_atomic(&self.root.join("tmp"), &path, &json).map_err(io_error)
    }

    fn save_tags(&self, catalog: &Catalog) -> Result<(), ImageError> {
        let io_error = |error| ImageError::io("save the tags index", error);
        let index = TagsIndex {
            tags: catalog.tags.clone(),
        };
        let json = serde_json::to_vec_pretty(&index).map_err(|e| io_error(e.into()))?;
        let path = self.root.join("repositories.json");
        fsutil::write_atomic(&self.root.join("tmp"), &path, &json).map_err(io_error)
    }

    /// Deletes an image whose tags are already gone: its remaining repo
    /// digests, its record, and the layers and blobs no other image uses.
    fn delete_image(
        &self,
        catalog: &mut Catalog,
        id: &str,
        events: &mut Vec<RemoveEvent>,
    ) -> Result<(), ImageError> {
        let io_error = |error| ImageError::io(format!("delete image {id}"), error);
        self.save_tags(catalog)?;
        let Some(record) = catalog.images.remove(id) else {
            return Ok(());
        };
        for digest in &record.repo_digests {
            events.push(RemoveEvent::Untagged(digest.clone()));
        }
        if let Some(hex) = sha256_hex(id) {
            let path = self.root.join("images").join(format!("{hex}.json"));
            fs::remove_file(&path).map_err(io_error)?;
        }
        events.push(RemoveEvent::Deleted(id.to_string()));
        tracing::info!(image = %id, "image deleted");

        let pinned: HashSet<String> = catalog.pinned_layers.keys().cloned().collect();
        drop_unused(catalog, self, &record, &pinned).map_err(io_error)
    }

    /// Removes layer directories that lack `layer.json` or have a name
    /// that is not a digest.
    fn remove_incomplete_layers(&self) -> io::Result<()> {
        for entry in fs::read_dir(self.root.join("layers"))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            let complete = entry.path().join("layer.json").is_file();
            if !complete || sha256_hex(&format!("sha256:{name}")).is_none() {
                tracing::warn!(layer = %name, "removing incomplete layer directory");
                fsutil::remove_tree(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Reads image records and the tags index, dropping records whose
    /// layers are missing and tags whose image is missing.
    fn load_catalog(&self) -> io::Result<Catalog> {
        let mut catalog = Catalog::default();
        for entry in fs::read_dir(self.root.join("images"))? {
            let path = entry?.path();
            let record = fs::read(&path)
                .ok()
                .and_then(|text| serde_json::from_slice::<ImageRecord>(&text).ok());
            let valid = record.as_ref().is_some_and(|record| {
                record
                    .diff_ids
                    .iter()
                    .all(|diff_id| self.load_layer(diff_id).is_some())
            });
            match record {
                Some(record) if valid => {
                    catalog.images.insert(record.id.clone(), record);
                }
                _ => {
                    tracing::warn!(path = %path.display(), "removing unreadable or incomplete image record");
                    fs::remove_file(&path)?;
                }
            }
        }

        let index: TagsIndex = match fs::read(self.root.join("repositories.json")) {
            Ok(text) => serde_json::from_slice(&text).unwrap_or_default(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => TagsIndex::default(),
            Err(error) => return Err(error),
        };
        catalog.tags = index.tags;
        catalog.tags.retain(|_, id| catalog.images.contains_key(id));
        Ok(catalog)
    }

    /// Removes layers and blobs that no image uses and `keep` does not
    /// name, such as those of a pull that crashed before its record was
    /// written.
    fn collect_garbage(&self, keep: &HashSet<String>) -> io::Result<()> {
        let catalog = self.lock();
        let mut used: HashSet<String> = keep.clone();
        for record in catalog.images.values() {
            used.insert(record.id.clone());
            used.extend(record.layers.iter().cloned());
            used.extend(record.diff_ids.iter().cloned());
        }
        drop(catalog);

        for dir in ["layers", "blobs/sha256"] {
            for entry in fs::read_dir(self.root.join(dir))? {
                let entry = entry?;
                let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
                if !used.contains(&digest) {
                    tracing::debug!(%digest, dir, "removing unused content");
                    self.discard(&entry.path())?;
                }
            }
        }
        Ok(())
    }

    /// Moves `path` out of the store's namespace with one rename, then
    /// deletes it, so a crash never leaves a half-deleted layer in place.
    fn discard(&self, path: &Path) -> io::Result<()> {
        let temp = self.temp_path("discard");
        fs::rename(path, &temp)?;
        fsutil::remove_tree(&temp)
    }
}

/// A check of a layer stack, which blocks while it builds a skeleton
/// rootfs, so it can be moved to a blocking thread.
pub(crate) struct StackCheck {
    stack: Vec<(PathBuf, LayerMetadata)>,
    scratch: PathBuf,
}

impl StackCheck {
    pub(crate) fn run(self) -> Result<(), ImageError> {
        let result = rootfs::check_stack(&layer_dirs(&self.stack), &self.scratch);
        if let Err(error) = fsutil::remove_tree(&self.scratch) {
            tracing::warn!(path = %self.scratch.display(), %error,
                "failed to remove layer check directory");
        }
        result
    }
}

fn layer_dirs(stack: &[(PathBuf, LayerMetadata)]) -> Vec<LayerDir<'_>> {
    stack
        .iter()
        .map(|(diff, metadata)| LayerDir {
            diff: diff.clone(),
            metadata,
        })
        .collect()
}

/// Removes the layer directories and blobs of `record` that no remaining
/// image and no running pull uses.
fn drop_unused(
    catalog: &Catalog,
    store: &ImageStore,
    record: &ImageRecord,
    pinned: &HashSet<String>,
) -> io::Result<()> {
    let mut used: HashSet<&String> = pinned.iter().collect();
    for other in catalog.images.values() {
        used.extend(other.layers.iter());
        used.extend(other.diff_ids.iter());
        used.insert(&other.id);
    }

    for diff_id in &record.diff_ids {
        let path = store.layer_path(diff_id);
        if !used.contains(diff_id) && path.exists() {
            store.discard(&path)?;
        }
    }
    let blobs = record.layers.iter().chain(std::iter::once(&record.id));
    for digest in blobs {
        let Some(hex) = sha256_hex(digest) else {
            continue;
        };
        let path = store.blob_path(hex);
        if !used.contains(digest) && path.exists() {
            store.discard(&path)?;
        }
    }
    Ok(())
}

/// The kind of name `resolve` matched.
enum LookupKind {
    /// By the fully qualified tag reference used as the index key.
    Tag(String),
    /// By a familiar `repository@digest` in `repo_digests`.
    RepoDigest(String),
    /// By full id or id prefix.
    Id,
}

struct Lookup {
    id: String,
    by: LookupKind,
}

/// Finds the image `name_or_id` names; see `ImageStore::get`.
fn resolve(catalog: &Catalog, name_or_id: &str) -> Option<Lookup> {
    if let Some(hex) = sha256_hex(name_or_id) {
        let id = format!("sha256:{hex}");
        if catalog.images.contains_key(&id) {
            return Some(Lookup {
                id,
                by: LookupKind::Id,
            });
        }
    }

    if let Ok(reference) = Reference::parse(name_or_id) {
        if let Some(digest) = &reference.digest {
            let name = format!("{}@{digest}", reference.familiar_repository());
            let found = catalog
                .images
                .values()
                .find(|r| r.repo_digests.contains(&name));
            if let Some(record) = found {
                return Some(Lookup {
                    id: record.id.clone(),
                    by: LookupKind::RepoDigest(name),
                });
            }
        } else {
            let key = reference.to_string();
            if let Some(id) = catalog.tags.get(&key) {
                return Some(Lookup {
                    id: id.clone(),
                    by: LookupKind::Tag(key),
                });
            }
        }
    }

    let prefix = name_or_id.strip_prefix("sha256:").unwrap_or(name_or_id);
    let is_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if prefix.is_empty() || !prefix.bytes().all(is_hex) {
        return None;
    }
    let mut matches = catalog.images.keys().filter(|id| {
        id.strip_prefix("sha256:")
            .is_some_and(|hex| hex.starts_with(prefix))
    });
    let id = matches.next()?.clone();
    // An ambiguous prefix names no image, as in Docker.
    matches.next().is_none().then_some(Lookup {
        id,
        by: LookupKind::Id,
    })
}

/// Returns the index keys of the tags pointing at `id`.
/// Removes the repo digests of the repository of the tag `key` once no
/// tag of that repository names the image `id` any more, as Docker does:
/// they would otherwise show as `<none>` rows of that repository.
fn untag_orphaned_digests(catalog: &mut Catalog, id: &str, key: &str, events: &mut Vec<RemoveEvent>) {
    let repository = |name: &str| Reference::parse(name).ok().map(|r| r.familiar_repository());
    let Some(removed_repository) = repository(key) else {
        return;
    };
    let tagged = tags_of(&catalog.tags, id)
        .iter()
        .any(|tag| repository(tag).as_ref() == Some(&removed_repository));
    if tagged {
        return;
    }
    let Some(record) = catalog.images.get_mut(id) else {
        return;
    };
    let prefix = format!("{removed_repository}@");
    record.repo_digests.retain(|digest| {
        let orphaned = digest.starts_with(&prefix);
        if orphaned {
            events.push(RemoveEvent::Untagged(digest.clone()));
        }
        !orphaned
    });
}

fn tags_of(tags: &BTreeMap<String, String>, id: &str) -> Vec<String> {
    tags.iter()
        .filter(|(_, target)| *target == id)
        .map(|(key, _)| key.clone())
        .collect()
}

/// Converts an index key to the familiar `repository:tag` form.
fn familiar_name(key: &str) -> String {
    Reference::parse(key).map_or_else(|_| key.to_string(), |reference| reference.familiar())
}

fn with_tags(record: &ImageRecord, tags: &BTreeMap<String, String>) -> ImageRecord {
    let mut record = record.clone();
    record.repo_tags = tags_of(tags, &record.id)
        .iter()
        .map(|key| familiar_name(key))
        .collect();
    record
}
