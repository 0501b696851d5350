//! Writing files into a container for `PUT /containers/{id}/archive`:
//! the tar stream is extracted on the host side, so images without a
//! shell or `tar` work.
//!
//! Every entry's parent is resolved as the container's processes see it
//! (see `archive.rs`), so symlinks inside the container never lead to the
//! host. Absolute entry names are taken as relative to the extraction
//! directory, as Docker takes them. Entries with a `..` component,
//! symlinks whose target leaves the extraction directory, and hard links
//! to files outside it are rejected.
//!
//! NOTE: a process of a running container can swap a directory for a
//! symlink between its resolution and the write below it, since proot
//! runs it as the same host user. Docker guards this race by extracting
//! inside the container's mount namespace; sidewhale does not.

use std::ffi::OsStr;
use std::fs::{self, FileTimes, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use flate2::read::MultiGzDecoder;
use sidewhale_images::{fsutil, owner_of};
use tar::EntryType;

use super::archive::{file_not_found, is_missing, CleanPath, ContainerFiles};
use super::{Error, Result};

/// Query options of `PUT /containers/{id}/archive`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExtractOptions {
    /// Fail rather than replace a directory with a non-directory or the
    /// reverse.
    pub no_overwrite_dir_non_dir: bool,
    /// Give every extracted file the container user's uid and gid instead
    /// of the owners in the archive.
    pub copy_uid_gid: bool,
}

/// A directory whose mode and mtime are set after its children are
/// written, so that a read-only directory can still be filled.
struct PendingDir {
    path: PathBuf,
    /// The container path, for errors.
    guest: String,
    mode: u32,
    mtime: u64,
}

/// The state of one extraction.
struct Extraction<'a> {
    files: &'a ContainerFiles,
    /// The extraction directory, resolved, as container path components.
    destination: Vec<String>,
    options: ExtractOptions,
    /// `Some` when running as root: the owner for every file, or `None`
    /// inside to keep the archive's owners.
    chown: Option<Option<(u32, u32)>>,
    pending_dirs: Vec<PendingDir>,
}

impl ContainerFiles {
    /// Checks the `PUT` destination `path` and returns it resolved: it must
    /// exist, be a directory, and be writable through the container's
    /// mounts.
    pub fn extraction_point(&self, path: &str, container: &str) -> Result<Vec<String>> {
        if path.is_empty() {
            return Err(Error::InvalidParameter("path cannot be empty".into()));
        }
        let clean = CleanPath::parse(path);
        let resolved = self.resolve(&clean.components)?;
        if !resolved.exists {
            return Err(file_not_found(path, container));
        }
        if !resolved.host.is_dir() {
            return Err(Error::InvalidParameter(
                "extraction point is not a directory".into(),
            ));
        }
        let destination = CleanPath::parse(&resolved.guest).components;
        self.check_writable(&destination)?;
        Ok(destination)
    }

    /// Rejects writes below a read-only mount, and outside every mount
    /// when the rootfs is read-only, with Docker's messages.
    fn check_writable(&self, components: &[String]) -> Result<()> {
        match self.mount_of(components) {
            Some(mount) if mount.read_only => Err(Error::InvalidParameter(
                "mounted volume is marked read-only".into(),
            )),
            Some(_) => Ok(()),
            None if self.read_only_rootfs => Err(Error::InvalidParameter(
                "container rootfs is marked read-only".into(),
            )),
            None => Ok(()),
        }
    }

    /// Extracts a tar stream, plain or gzip-compressed, into the directory
    /// that `extraction_point` returned.
    pub fn extract(
        &self,
        destination: Vec<String>,
        archive: impl Read,
        options: ExtractOptions,
    ) -> Result<()> {
        let mut buffered = BufReader::with_capacity(64 * 1024, archive);
        let magic = buffered.fill_buf().map_err(read_error)?;
        let decompressed: Box<dyn Read + '_> = if magic.starts_with(&[0x1f, 0x8b]) {
            Box::new(MultiGzDecoder::new(buffered))
        } else if magic.starts_with(b"BZh") || magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z']) {
            // NOTE: Docker also accepts bzip2 and xz archives.
            return Err(Error::InvalidParameter(
                "bzip2 and xz archives are not supported; send a plain or gzip-compressed tar"
                    .into(),
            ));
        } else {
            Box::new(buffered)
        };

        let chown = fsutil::can_chown().then(|| {
            if !options.copy_uid_gid {
                return None;
            }
            let ids = self.container_user_ids();
            if ids.is_none() && !self.user.is_empty() {
                tracing::warn!(container = %self.id, user = %self.user,
                    "cannot resolve the container user for copyUIDGID, keeping the archive's owners");
            }
            ids
        });
        let mut extraction = Extraction {
            files: self,
            destination,
            options,
            chown,
            pending_dirs: Vec::new(),
        };
        let mut archive = tar::Archive::new(decompressed);
        let mut count = 0;
        for entry in archive.entries().map_err(read_error)? {
            let entry = entry.map_err(read_error)?;
            extraction.apply(entry)?;
            count += 1;
        }
        extraction.finish()?;
        tracing::info!(container = %self.id, destination = %format!("/{}", extraction.destination.join("/")),
            entries = count, "extracted archive into container");
        Ok(())
    }

    /// Returns the uid and gid of the container's `User` when it is
    /// numeric or named in the rootfs's `/etc/passwd` and `/etc/group`.
    /// Without a `User`, Docker keeps the archive's owners, and so does
    /// `None`.
    fn container_user_ids(&self) -> Option<(u32, u32)> {
        if self.user.is_empty() {
            return None;
        }
        let (user, group) = match self.user.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (user_part(&self.user), None),
        };
        let passwd = self
            .view
            .read_to_string("/etc/passwd")
            .ok()
            .flatten()
            .unwrap_or_default();
        let entry = passwd
            .lines()
            .map(|line| line.split(':').collect::<Vec<_>>())
            .find(|fields| fields.len() > 3 && (fields[0] == user || fields[2] == user));
        let uid = user
            .parse()
            .ok()
            .or_else(|| entry.as_ref()?.get(2)?.parse().ok())?;
        let gid = match group {
            Some(group) => group.parse().ok().or_else(|| {
                let groups = self.view.read_to_string("/etc/group").ok().flatten()?;
                groups
                    .lines()
                    .map(|line| line.split(':').collect::<Vec<_>>())
                    .find(|fields| fields.len() > 2 && fields[0] == group)?
                    .get(2)?
                    .parse()
                    .ok()
            })?,
            None => entry
                .as_ref()
                .and_then(|fields| fields[3].parse().ok())
                .unwrap_or(0),
        };
        Some((uid, gid))
    }
}

/// Removes leading slashes: Docker reads an absolute entry name, or hard
/// link target, as relative to the extraction directory, and
/// testcontainers-python sends such names.
fn strip_root(path: &[u8]) -> &[u8] {
    let start = path
        .iter()
        .position(|byte| *byte != b'/')
        .unwrap_or(path.len());
    &path[start..]
}

/// Applies Docker's rule for symlinks in an archive: the target, taken
/// relative to the link's directory (`parents` below the extraction
/// directory), must not climb above the extraction directory. Absolute
/// targets count as relative to the extraction directory, so they pass.
fn symlink_stays_inside(parents: &[String], target: &[u8]) -> bool {
    let target = String::from_utf8_lossy(target);
    if target.starts_with('/') {
        return true;
    }
    let mut depth = parents.len();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." if depth == 0 => return false,
            ".." => depth -= 1,
            _ => depth += 1,
        }
    }
    true
}

fn user_part(user: &str) -> &str {
    user.split(':').next().unwrap_or(user)
}

fn read_error(error: io::Error) -> Error {
    Error::InvalidParameter(format!("failed to read the tar archive: {error}"))
}

fn invalid_entry(raw: &[u8], reason: &str) -> Error {
    Error::InvalidParameter(format!(
        "invalid archive entry {:?}: {reason}",
        String::from_utf8_lossy(raw)
    ))
}

fn write_error(guest: &str, error: io::Error) -> Error {
    Error::internal(&format!("failed to write {guest}"), error)
}

impl Extraction<'_> {
    fn apply<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let components = fsutil::relative_components(strip_root(&raw))
            .ok_or_else(|| invalid_entry(&raw, "'..' component"))?;
        let Some((name, parents)) = components.split_last() else {
            // The extraction directory itself keeps its mode and owner.
            return Ok(());
        };
        let name = name.to_string_lossy().into_owned();
        let parents: Vec<String> = parents
            .iter()
            .map(|part| part.to_string_lossy().into_owned())
            .collect();

        let (guest, path) = self.prepare_parent(&parents, &name)?;
        let guest_text = format!("/{}", guest.join("/"));
        let header = entry.header();
        let entry_type = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let mtime = header.mtime().unwrap_or(0);
        let owner = match self.chown {
            Some(Some(ids)) => Some(ids),
            Some(None) => Some(owner_of(&mut entry)),
            None => None,
        };

        let is_dir_entry = entry_type == EntryType::Directory;
        let supported = matches!(
            entry_type,
            EntryType::Directory
                | EntryType::Regular
                | EntryType::Continuous
                | EntryType::GNUSparse
                | EntryType::Symlink
                | EntryType::Link
        );
        if !supported {
            tracing::debug!(container = %self.files.id, path = %guest_text, ?entry_type,
                "skipped archive entry of unsupported type");
            return Ok(());
        }
        if !is_dir_entry && self.files.mount_at(&guest).is_some() {
            return Err(Error::Conflict(format!(
                "cannot replace the mount point {guest_text} with a non-directory"
            )));
        }

        match entry_type {
            EntryType::Directory => {
                self.replace_existing(&path, &guest_text, true)?;
                if !path.is_dir() {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&path)
                        .map_err(|error| write_error(&guest_text, error))?;
                }
                self.set_owner(&path, owner, &guest_text)?;
                let guest = guest_text;
                self.pending_dirs.push(PendingDir {
                    path,
                    guest,
                    mode,
                    mtime,
                });
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| invalid_entry(&raw, "symlink without a target"))?
                    .into_owned();
                if !symlink_stays_inside(&parents, &target) {
                    return Err(invalid_entry(
                        &raw,
                        "symlink target outside the extraction directory",
                    ));
                }
                self.replace_existing(&path, &guest_text, false)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(|error| write_error(&guest_text, error))?;
                self.set_owner(&path, owner, &guest_text)?;
                fsutil::set_mtime(&path, mtime as i64)
                    .map_err(|error| write_error(&guest_text, error))?;
            }
            EntryType::Link => {
                let target = self.hard_link_target(&mut entry, &raw)?;
                if target == path {
                    return Ok(());
                }
                self.replace_existing(&path, &guest_text, false)?;
                fs::hard_link(&target, &path).map_err(|error| write_error(&guest_text, error))?;
            }
            _ => {
                self.replace_existing(&path, &guest_text, false)?;
                self.write_file(&mut entry, &path, &guest_text, owner, mode, mtime)?;
            }
        }
        Ok(())
    }

    /// Resolves an entry's parent directories in the container, creating
    /// missing ones with mode 0755, and returns the entry's resolved
    /// container path and host path.
    fn prepare_parent(&self, parents: &[String], name: &str) -> Result<(Vec<String>, PathBuf)> {
        let mut components = self.destination.clone();
        components.extend(parents.iter().cloned());
        let parent = self.files.resolve(&components)?;
        let parent_guest = CleanPath::parse(&parent.guest).components;
        self.files.check_writable(&parent_guest)?;
        if !parent.exists {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&parent.host)
                .map_err(|error| write_error(&parent.guest, error))?;
        } else if !parent.host.is_dir() {
            return Err(Error::InvalidParameter(format!(
                "{}: not a directory",
                parent.guest
            )));
        }
        let (guest, host) = self.files.child_host_path(&parent, name);
        self.files.check_writable(&guest)?;
        Ok((guest, host))
    }

    /// Removes what `path` names before an entry replaces it, keeping a
    /// directory that a directory entry names. Never follows a symlink.
    fn replace_existing(&self, path: &Path, guest: &str, is_dir_entry: bool) -> Result<()> {
        let existing = match fs::symlink_metadata(path) {
            Ok(metadata) => metadata,
            Err(error) if is_missing(&error) => return Ok(()),
            Err(error) => return Err(write_error(guest, error)),
        };
        let existing_dir = existing.is_dir();
        if existing_dir && is_dir_entry {
            return Ok(());
        }
        if self.options.no_overwrite_dir_non_dir && (existing_dir || is_dir_entry) {
            // Docker returns 500 with a message that names the entry and
            // then the extraction directory, both as container paths.
            let destination = format!("/{}", self.destination.join("/"));
            let message = if existing_dir {
                format!("cannot overwrite directory {guest:?} with non-directory {destination:?}")
            } else {
                format!("cannot overwrite non-directory {guest:?} with directory {destination:?}")
            };
            return Err(Error::Internal(message));
        }
        fsutil::remove_tree(path).map_err(|error| write_error(guest, error))
    }

    /// Resolves a hard link's target, which must be an existing
    /// non-directory inside the extraction directory.
    fn hard_link_target<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
    ) -> Result<PathBuf> {
        let raw_target = entry
            .link_name_bytes()
            .ok_or_else(|| invalid_entry(raw, "hard link without a target"))?
            .into_owned();
        let outside = || invalid_entry(raw, "hard link target outside the extraction directory");
        let components =
            fsutil::relative_components(strip_root(&raw_target)).ok_or_else(outside)?;
        let Some((name, parents)) = components.split_last() else {
            return Err(invalid_entry(raw, "hard link to the extraction directory"));
        };
        let mut parent_components = self.destination.clone();
        parent_components.extend(
            parents
                .iter()
                .map(|part| part.to_string_lossy().into_owned()),
        );
        let parent = self.files.resolve(&parent_components)?;
        let parent_guest = CleanPath::parse(&parent.guest).components;
        if !parent.exists || !parent_guest.starts_with(&self.destination) {
            return Err(outside());
        }
        let (_, target) = self.files.child_host_path(&parent, &name.to_string_lossy());
        match fs::symlink_metadata(&target) {
            Ok(metadata) if metadata.is_dir() => {
                Err(invalid_entry(raw, "hard link to a directory"))
            }
            Ok(_) => Ok(target),
            Err(_) => Err(invalid_entry(raw, "hard link target does not exist")),
        }
    }

    fn write_file<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        path: &Path,
        guest: &str,
        owner: Option<(u32, u32)>,
        mode: u32,
        mtime: u64,
    ) -> Result<()> {
        let write_error = |error| write_error(guest, error);
        // `create_new` fails on an existing path, a symlink included, so
        // the write cannot be redirected.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(write_error)?;
        io::copy(entry, &mut file).map_err(read_error)?;
        // chown clears the setuid and setgid bits, so the mode follows it.
        self.set_owner(path, owner, guest)?;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(write_error)?;
        let time = UNIX_EPOCH + Duration::from_secs(mtime);
        file.set_times(FileTimes::new().set_accessed(time).set_modified(time))
            .map_err(write_error)
    }

    fn set_owner(&self, path: &Path, owner: Option<(u32, u32)>, guest: &str) -> Result<()> {
        let Some((uid, gid)) = owner else {
            return Ok(());
        };
        fsutil::lchown(path, uid, gid).map_err(|error| write_error(guest, error))
    }

    /// Applies the deferred directory modes and mtimes, deepest first.
    fn finish(&mut self) -> Result<()> {
        self.pending_dirs
            .sort_by_key(|dir| std::cmp::Reverse(dir.path.components().count()));
        for dir in &self.pending_dirs {
            // A later entry may have replaced the directory.
            if !fs::symlink_metadata(&dir.path).is_ok_and(|metadata| metadata.is_dir()) {
                continue;
            }
            fs::set_permissions(&dir.path, fs::Permissions::from_mode(dir.mode))
                .map_err(|error| write_error(&dir.guest, error))?;
            fsutil::set_mtime(&dir.path, dir.mtime as i64)
                .map_err(|error| write_error(&dir.guest, error))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_stripped_from_entry_names() {
        assert_eq!(strip_root(b"//tmp/x"), b"tmp/x");
        assert_eq!(strip_root(b"tmp/x"), b"tmp/x");
        assert_eq!(strip_root(b"/"), b"");
    }

    #[test]
    fn symlink_targets_checked_lexically() {
        let parents = vec!["a".to_string()];
        assert!(symlink_stays_inside(&parents, b"../b"));
        assert!(symlink_stays_inside(&parents, b"/etc/passwd"));
        assert!(!symlink_stays_inside(&parents, b"../../x"));
        assert!(!symlink_stays_inside(&[], b".."));
        assert!(symlink_stays_inside(&[], b"x/../y"));
    }
}
