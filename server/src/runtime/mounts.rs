//! A container's mounts, from `HostConfig.Binds`, `HostConfig.Mounts`,
//! `HostConfig.Tmpfs` and the `Volumes` of the image and the request.
//!
//! Every mount becomes a host directory or file that the executor binds
//! into the container: a bind's source, a volume's `_data` directory, or a
//! fresh directory of the container's own for a tmpfs.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sidewhale_executors::RootfsView;
use sidewhale_images::fsutil;

use super::model::{HostConfigRequest, MountRecord, MountRequest, MountType};
use super::volumes::{random_name, ANONYMOUS_LABEL};
use super::{Daemon, Error, Result};

/// Options a `Binds` entry may carry after its destination.
const BIND_OPTIONS: &[&str] = &[
    "ro",
    "rw",
    "z",
    "Z",
    "nocopy",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "private",
    "rprivate",
    "consistent",
    "cached",
    "delegated",
];

/// The mode Docker gives a tmpfs mount: sticky and writable by everyone.
const TMPFS_MODE: u32 = 0o1777;

/// A mount as requested, before its source exists.
#[derive(Debug, PartialEq)]
struct MountSpec {
    kind: MountType,
    /// A host path for binds, a volume name (empty for a new anonymous
    /// volume) for volumes, empty for tmpfs.
    source: String,
    destination: String,
    read_only: bool,
    mode: String,
    /// Whether a missing bind source is created rather than an error.
    create_source: bool,
    /// Skip copying the image's files into an empty volume.
    no_copy: bool,
    labels: BTreeMap<String, String>,
    hidden: bool,
}

impl MountSpec {
    fn new(kind: MountType, source: &str, destination: String) -> MountSpec {
        MountSpec {
            kind,
            source: source.to_string(),
            destination,
            read_only: false,
            mode: String::new(),
            create_source: false,
            no_copy: false,
            labels: BTreeMap::new(),
            hidden: false,
        }
    }
}

/// Returns `path` without trailing slashes, or an error naming `what`
/// when it is not absolute or is `/`.
fn clean_destination(path: &str, what: &str) -> Result<String> {
    if !path.starts_with('/') {
        return Err(Error::InvalidParameter(format!(
            "{what}: invalid mount path: '{path}' mount path must be absolute"
        )));
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(Error::InvalidParameter(format!(
            "{what}: invalid specification: destination can't be '/'"
        )));
    }
    Ok(trimmed.to_string())
}

/// Parses one `Binds` entry: `DEST`, `SOURCE:DEST` or `SOURCE:DEST:OPTIONS`,
/// where a source that is not an absolute path names a volume.
fn parse_bind(bind: &str) -> Result<MountSpec> {
    let invalid = |reason: &str| {
        Error::InvalidParameter(format!("invalid volume specification: '{bind}': {reason}"))
    };
    let parts: Vec<&str> = bind.split(':').collect();
    let (source, destination, options) = match parts.as_slice() {
        [destination] => ("", *destination, ""),
        [_, second] if valid_options(second) && !second.is_empty() => {
            // `/dest:ro` would be an anonymous volume with options, which
            // Docker rejects.
            return Err(invalid("anonymous volumes cannot have options"));
        }
        [source, destination] => (*source, *destination, ""),
        [source, destination, options] => (*source, *destination, *options),
        _ => return Err(invalid("too many colons")),
    };
    if !valid_options(options) {
        return Err(invalid(&format!("invalid mode: {options}")));
    }
    let kind = if source.starts_with('/') {
        MountType::Bind
    } else {
        MountType::Volume
    };
    let what = format!(
        "invalid volume specification: '{bind}': invalid mount config for type \"{}\"",
        kind.as_str()
    );
    let destination = clean_destination(destination, &what)?;

    let mut spec = MountSpec::new(kind, source, destination);
    let options: Vec<&str> = options
        .split(',')
        .filter(|option| !option.is_empty())
        .collect();
    // NOTE: proot's `-b` (proot 5) has no read-only variant, so only the
    // archive endpoints enforce `ro`; container processes can still write.
    spec.read_only = options.contains(&"ro");
    spec.no_copy = options.contains(&"nocopy");
    spec.create_source = true;
    spec.mode = options.join(",");
    if kind == MountType::Volume && spec.mode.is_empty() && !source.is_empty() {
        // Docker reports named volumes from `Binds` with mode `z`.
        spec.mode = "z".to_string();
    }
    Ok(spec)
}

/// Returns whether a `Binds` option list is valid: known options, at most
/// one of `ro` and `rw`.
fn valid_options(options: &str) -> bool {
    if options.is_empty() {
        return true;
    }
    let list: Vec<&str> = options.split(',').collect();
    let access = list
        .iter()
        .filter(|option| matches!(**option, "ro" | "rw"))
        .count();
    access <= 1 && list.iter().all(|option| BIND_OPTIONS.contains(option))
}

/// Parses one `HostConfig.Mounts` entry.
fn parse_mount(request: &MountRequest) -> Result<MountSpec> {
    let kind_text = request.kind.as_deref().unwrap_or_default();
    let what = format!("invalid mount config for type \"{kind_text}\"");
    let kind = match kind_text {
        "bind" => MountType::Bind,
        "volume" => MountType::Volume,
        "tmpfs" => MountType::Tmpfs,
        _ => {
            return Err(Error::InvalidParameter(format!(
                "{what}: mount type unknown"
            )))
        }
    };
    let target = request.target.as_deref().unwrap_or_default();
    if target.is_empty() {
        return Err(Error::InvalidParameter(format!(
            "{what}: field Target must not be empty"
        )));
    }
    let destination = clean_destination(target, &what)?;

    let source = request.source.as_deref().unwrap_or_default();
    match kind {
        MountType::Bind if source.is_empty() => {
            return Err(Error::InvalidParameter(format!(
                "{what}: field Source must not be empty"
            )));
        }
        MountType::Bind if !source.starts_with('/') => {
            return Err(Error::InvalidParameter(format!(
                "{what}: invalid mount path: '{source}' mount path must be absolute"
            )));
        }
        MountType::Tmpfs if !source.is_empty() => {
            return Err(Error::InvalidParameter(format!(
                "{what}: field Source must not be specified"
            )));
        }
        _ => {}
    }

    let mut spec = MountSpec::new(kind, source, destination);
    spec.read_only = request.read_only.unwrap_or(false);
    if let Some(options) = &request.volume_options {
        spec.no_copy = options.no_copy.unwrap_or(false);
        spec.labels = options.labels.clone().unwrap_or_default();
    }
    Ok(spec)
}

/// Collects every requested mount, then adds an anonymous volume for each
/// entry of `volumes` (the image's and the request's `Volumes`) that no
/// other mount covers, as Docker does.
fn mount_specs(host_config: &HostConfigRequest, volumes: &[String]) -> Result<Vec<MountSpec>> {
    let mut specs = Vec::new();
    for bind in host_config.binds.iter().flatten() {
        specs.push(parse_bind(bind)?);
    }
    for request in host_config.mounts.iter().flatten() {
        specs.push(parse_mount(request)?);
    }
    for (destination, options) in host_config.tmpfs.iter().flatten() {
        let what = format!("invalid tmpfs mount '{destination}'");
        let mut spec = MountSpec::new(MountType::Tmpfs, "", clean_destination(destination, &what)?);
        spec.read_only = options.split(',').any(|option| option == "ro");
        spec.hidden = true;
        specs.push(spec);
    }
    for (index, spec) in specs.iter().enumerate() {
        if specs[..index]
            .iter()
            .any(|earlier| earlier.destination == spec.destination)
        {
            return Err(Error::InvalidParameter(format!(
                "Duplicate mount point: {}",
                spec.destination
            )));
        }
    }
    for volume in volumes {
        let Ok(destination) = clean_destination(volume, "invalid volume") else {
            tracing::warn!(volume = %volume, "ignoring a volume that is not an absolute path");
            continue;
        };
        if !specs.iter().any(|spec| spec.destination == destination) {
            specs.push(MountSpec::new(MountType::Volume, "", destination));
        }
    }
    Ok(specs)
}

impl Daemon {
    /// Creates the sources of a new container's mounts and returns them.
    /// `dir` is the container's directory and `rootfs` its root file
    /// system, from which empty volumes receive the image's files.
    pub(super) fn create_mounts(
        &self,
        id: &str,
        dir: &Path,
        host_config: &HostConfigRequest,
        volumes: &[String],
    ) -> Result<Vec<MountRecord>> {
        let specs = mount_specs(host_config, volumes)?;
        let mut created_volumes = Vec::new();
        let mut mounts = Vec::new();
        for (index, spec) in specs.into_iter().enumerate() {
            let result = self.create_mount(id, dir, index, spec, &mut created_volumes);
            match result {
                Ok(mount) => mounts.push(mount),
                Err(error) => {
                    self.remove_created_volumes(id, &created_volumes);
                    return Err(error);
                }
            }
        }
        create_mount_points(id, &dir.join("rootfs"), &mounts);
        Ok(mounts)
    }

    fn create_mount(
        &self,
        id: &str,
        dir: &Path,
        index: usize,
        spec: MountSpec,
        created_volumes: &mut Vec<String>,
    ) -> Result<MountRecord> {
        let mut record = MountRecord {
            kind: spec.kind,
            name: String::new(),
            source: PathBuf::new(),
            destination: spec.destination.clone(),
            read_only: spec.read_only,
            mode: spec.mode.clone(),
            hidden: spec.hidden,
        };
        match spec.kind {
            MountType::Bind => {
                record.source = bind_source(&spec)?;
            }
            MountType::Volume => {
                let anonymous = spec.source.is_empty();
                let name = if anonymous {
                    random_name()
                } else {
                    spec.source.clone()
                };
                let mut labels = spec.labels.clone();
                if anonymous {
                    labels.insert(ANONYMOUS_LABEL.to_string(), String::new());
                }
                let (volume, created) =
                    self.volumes
                        .get_or_create(&name, labels, BTreeMap::new(), anonymous)?;
                if created {
                    created_volumes.push(volume.name.clone());
                }
                let mountpoint = self.volumes.mountpoint(&volume.name);
                if !spec.no_copy {
                    copy_image_files(id, &dir.join("rootfs"), &spec.destination, &mountpoint);
                }
                record.name = volume.name;
                record.source = mountpoint;
            }
            MountType::Tmpfs => {
                let source = dir.join("tmpfs").join(index.to_string());
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(TMPFS_MODE)
                    .create(&source)
                    .and_then(|()| {
                        std::fs::set_permissions(
                            &source,
                            std::fs::Permissions::from_mode(TMPFS_MODE),
                        )
                    })
                    .map_err(|error| {
                        Error::internal("failed to create the tmpfs directory", error)
                    })?;
                // NOTE: the directory lives on the state directory's file
                // system, so `size=` and other tmpfs options have no
                // effect, and it is emptied only when the container is
                // removed, not at each start as a real tmpfs is.
                record.source = source;
            }
        }
        tracing::debug!(container = %&id[..12], kind = spec.kind.as_str(),
            destination = %record.destination, source = %record.source.display(), "created mount");
        Ok(record)
    }

    fn remove_created_volumes(&self, id: &str, names: &[String]) {
        for name in names {
            if let Err(error) = self.remove_volume(name, false) {
                tracing::warn!(container = %&id[..12], volume = %name, %error,
                    "failed to remove a volume of a container that was not created");
            }
        }
    }
}

/// Creates missing mount destinations in the rootfs, so that the archive
/// endpoints find them before the container first starts (the executor
/// creates them again at start). A failure is logged: the executor then
/// deals with the destination itself.
fn create_mount_points(id: &str, rootfs: &Path, mounts: &[MountRecord]) {
    let view = RootfsView::new(rootfs, &[]);
    for mount in mounts {
        let is_dir = mount.source.is_dir();
        if let Err(error) = view.ensure_mount_point(&mount.destination, is_dir) {
            tracing::warn!(container = %&id[..12], destination = %mount.destination, %error,
                "failed to create a mount point");
        }
    }
}

/// Returns a bind's host source, creating a missing one for `Binds`
/// entries as Docker does.
fn bind_source(spec: &MountSpec) -> Result<PathBuf> {
    let source = PathBuf::from(&spec.source);
    if source.exists() {
        return Ok(source);
    }
    if !spec.create_source {
        return Err(Error::InvalidParameter(format!(
            "invalid mount config for type \"bind\": bind source path does not exist: {}",
            source.display()
        )));
    }
    std::fs::create_dir_all(&source).map_err(|error| {
        Error::InvalidParameter(format!(
            "invalid mount config for type \"bind\": bind source path does not exist and \
             cannot be created: {}: {error}",
            source.display()
        ))
    })?;
    Ok(source)
}

/// Copies the image's files at `destination` into an empty volume, with
/// their modes and, as root, their owners, as Docker does on a volume's
/// first use. Failures are logged: the container still gets the volume.
fn copy_image_files(id: &str, rootfs: &Path, destination: &str, volume: &Path) {
    let is_empty = std::fs::read_dir(volume).is_ok_and(|mut entries| entries.next().is_none());
    if !is_empty {
        return;
    }
    let view = RootfsView::new(rootfs, &[]);
    let source = match view.resolve(destination, "/") {
        Ok(resolved) if resolved.exists && resolved.host.is_dir() => resolved.host,
        Ok(_) => return,
        Err(error) => {
            tracing::warn!(container = %&id[..12], %destination, %error,
                "cannot resolve the image's files for a volume");
            return;
        }
    };
    if let Err(error) = copy_tree(&source, volume) {
        tracing::warn!(container = %&id[..12], %destination, %error,
            "failed to copy the image's files into a volume");
    }
}

/// Copies the contents of directory `from` into the existing directory
/// `to`, and the mode of `from` onto `to`. Symlinks are copied as links;
/// device nodes, fifos and sockets are skipped.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let metadata = std::fs::symlink_metadata(from)?;
    copy_owner(&metadata, to)?;
    std::fs::set_permissions(to, metadata.permissions())?;
    let mut entries: Vec<_> = std::fs::read_dir(from)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let source = entry.path();
        let target = to.join(entry.file_name());
        let metadata = std::fs::symlink_metadata(&source)?;
        let file_type = metadata.file_type();
        if file_type.is_dir() {
            std::fs::create_dir(&target)?;
            copy_tree(&source, &target)?;
        } else if file_type.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&source)?, &target)?;
            copy_owner(&metadata, &target)?;
        } else if file_type.is_file() {
            std::fs::copy(&source, &target)?;
            // chown clears the setuid and setgid bits, so the mode follows.
            copy_owner(&metadata, &target)?;
            std::fs::set_permissions(&target, metadata.permissions())?;
        }
    }
    Ok(())
}

fn copy_owner(metadata: &std::fs::Metadata, target: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !fsutil::can_chown() {
        return Ok(());
    }
    fsutil::lchown(target, metadata.uid(), metadata.gid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_parse() {
        let spec = parse_bind("/host:/ctr:ro").unwrap();
        assert_eq!(spec.kind, MountType::Bind);
        assert_eq!(spec.source, "/host");
        assert_eq!(spec.destination, "/ctr");
        assert!(spec.read_only);
        assert_eq!(spec.mode, "ro");

        let spec = parse_bind("data:/var/lib/data/").unwrap();
        assert_eq!(spec.kind, MountType::Volume);
        assert_eq!(spec.destination, "/var/lib/data");
        assert_eq!(spec.mode, "z");
        assert!(!spec.read_only);

        let spec = parse_bind("/scratch").unwrap();
        assert_eq!(spec.kind, MountType::Volume);
        assert!(spec.source.is_empty());
    }

    #[test]
    fn invalid_binds_rejected() {
        assert!(parse_bind("/host:relative").is_err());
        assert!(parse_bind("/host:/").is_err());
        assert!(parse_bind("/host:/ctr:bogus").is_err());
        assert!(parse_bind("/host:/ctr:ro,rw").is_err());
        assert!(parse_bind("/ctr:ro").is_err());
        assert!(parse_bind("a:b:c:d").is_err());
    }

    #[test]
    fn mounts_parse_and_validate() {
        let request = |kind: &str, source: &str, target: &str| MountRequest {
            kind: Some(kind.into()),
            source: Some(source.into()),
            target: Some(target.into()),
            ..Default::default()
        };
        assert_eq!(
            parse_mount(&request("volume", "", "/d")).unwrap().kind,
            MountType::Volume
        );
        assert!(parse_mount(&request("bind", "", "/d")).is_err());
        assert!(parse_mount(&request("tmpfs", "/x", "/d")).is_err());
        assert!(parse_mount(&request("npipe", "", "/d")).is_err());
        assert!(parse_mount(&request("volume", "v", "")).is_err());
    }

    #[test]
    fn image_volumes_become_anonymous_unless_covered() {
        let host_config: HostConfigRequest = serde_json::from_value(serde_json::json!({
            "Binds": ["named:/data"],
            "Tmpfs": {"/run": "size=64m"},
        }))
        .unwrap();
        let volumes = vec!["/data".to_string(), "/cache/".to_string()];
        let specs = mount_specs(&host_config, &volumes).unwrap();
        assert_eq!(specs.len(), 3);
        let anonymous = specs
            .iter()
            .find(|spec| spec.destination == "/cache")
            .unwrap();
        assert_eq!(anonymous.kind, MountType::Volume);
        assert!(anonymous.source.is_empty());
        assert!(specs
            .iter()
            .any(|spec| spec.kind == MountType::Tmpfs && spec.hidden));
    }

    #[test]
    fn duplicate_destinations_rejected() {
        let host_config: HostConfigRequest = serde_json::from_value(serde_json::json!({
            "Binds": ["/a:/data", "v:/data/"],
        }))
        .unwrap();
        assert!(mount_specs(&host_config, &[]).is_err());
    }
}
