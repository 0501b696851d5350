//! Stacking unpacked layers into a container's private rootfs.
//!
//! NOTE: the rootfs is a full copy of the layers' files. The store lives on
//! ext4, where an unprivileged process has neither overlayfs nor reflinks,
//! and a container's writes must never reach the store or another
//! container. Each file is first cloned with the FICLONE ioctl, which
//! shares blocks on file systems that support it (XFS, Btrfs), and copied
//! with `copy_file_range` otherwise.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use sidewhale_core::ImageError;

use crate::fsutil::{self, ResolveError};
use crate::unpack::{LayerMetadata, OPAQUE_MARKER, WHITEOUT_PREFIX};

/// One unpacked layer as the rootfs builder reads it.
pub struct LayerDir<'a> {
    /// The layer's `diff/` directory.
    pub diff: PathBuf,
    pub metadata: &'a LayerMetadata,
}

/// Owner, mode and mtime of a directory, applied after all layers, so that
/// upper layers can still write into directories a lower layer made
/// read-only.
struct DirAttributes {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
}

/// Stacks `layers` (base layer first) into `dest`, which must not exist or
/// be empty, applying each layer's whiteouts to the layers below it.
pub fn build_rootfs(layers: &[LayerDir<'_>], dest: &Path) -> Result<(), ImageError> {
    let mut builder = Builder {
        dest,
        chown: fsutil::can_chown(),
        reflink: true,
        skeleton: false,
        dirs: BTreeMap::new(),
        copied: HashMap::new(),
    };
    builder.stack(layers)?;
    builder.finish_dirs()
}

/// Stacks `layers` into `scratch` as `build_rootfs` does, but with empty
/// regular files and without owners, modes or mtimes. This finds every
/// `InvalidLayer` error that `build_rootfs` would return for the same
/// layers, such as an upper layer's path through a lower layer's symlink
/// that leads out of the root, because both run the same resolution code.
/// It costs one inode per entry, not a copy of the data. The caller
/// removes `scratch`.
pub fn check_stack(layers: &[LayerDir<'_>], scratch: &Path) -> Result<(), ImageError> {
    let mut builder = Builder {
        dest: scratch,
        chown: false,
        reflink: false,
        skeleton: true,
        dirs: BTreeMap::new(),
        copied: HashMap::new(),
    };
    builder.stack(layers)
}

struct Builder<'a> {
    dest: &'a Path,
    chown: bool,
    /// Cleared after the first FICLONE failure, to save a system call per
    /// file on file systems without reflinks.
    reflink: bool,
    /// Set by `check_stack`: regular files are created empty and no file
    /// attributes are applied.
    skeleton: bool,
    /// Directory attributes by rootfs path; the last layer to list a
    /// directory wins.
    dirs: BTreeMap<PathBuf, DirAttributes>,
    /// The rootfs copy of each layer file with several links, by source
    /// (device, inode), so hard links within a layer stay hard links.
    copied: HashMap<(u64, u64), PathBuf>,
}

impl Builder<'_> {
    fn stack(&mut self, layers: &[LayerDir<'_>]) -> Result<(), ImageError> {
        fs::create_dir_all(self.dest)
            .map_err(|error| ImageError::io("create rootfs directory", error))?;
        for layer in layers {
            self.copied.clear();
            self.apply_dir(layer, &layer.diff, Path::new(""), Vec::new())?;
            self.link_lower(layer)?;
        }
        Ok(())
    }

    fn invalid(&self, layer: &LayerDir<'_>, path: &Path, reason: &str) -> ImageError {
        ImageError::InvalidLayer {
            digest: layer.metadata.diff_id.clone(),
            reason: format!("{reason}: {}", path.display()),
        }
    }

    fn io_error(path: &Path, error: io::Error) -> ImageError {
        ImageError::io(format!("write {} to the rootfs", path.display()), error)
    }

    /// Merges the layer directory `source` (at `layer_path` inside the
    /// layer) into the rootfs directory `dest_parts`, which is resolved and
    /// names a real directory.
    fn apply_dir(
        &mut self,
        layer: &LayerDir<'_>,
        source: &Path,
        layer_path: &Path,
        dest_parts: Vec<OsString>,
    ) -> Result<(), ImageError> {
        let dest_dir: PathBuf = self.dest.join(dest_parts.iter().collect::<PathBuf>());
        let mut names: Vec<OsString> = Vec::new();
        for entry in fs::read_dir(source).map_err(|e| Self::io_error(source, e))? {
            names.push(entry.map_err(|e| Self::io_error(source, e))?.file_name());
        }

        // Whiteouts hide lower layers only, so they go first and the
        // layer's own entries in this directory survive them.
        if names.iter().any(|name| name == OPAQUE_MARKER) {
            self.clear_dir(&dest_dir)?;
        }
        for name in &names {
            if let Some(hidden) = whiteout_target(name) {
                if name != OPAQUE_MARKER {
                    self.remove_lower(&dest_dir.join(OsStr::from_bytes(hidden)))?;
                }
            }
        }

        for name in names {
            if whiteout_target(&name).is_some() {
                continue;
            }
            let source_path = source.join(&name);
            let metadata =
                fs::symlink_metadata(&source_path).map_err(|e| Self::io_error(&source_path, e))?;
            let mut child_parts = dest_parts.clone();
            child_parts.push(name.clone());
            if metadata.is_dir() {
                let child_layer_path = layer_path.join(&name);
                let resolved = self.enter_dir(layer, &child_layer_path, child_parts, &metadata)?;
                self.apply_dir(layer, &source_path, &child_layer_path, resolved)?;
            } else {
                self.apply_file(&source_path, &dest_dir.join(&name), &metadata)?;
            }
        }
        Ok(())
    }

    /// Prepares the rootfs directory for a layer directory and returns its
    /// resolved components. An implicit layer directory follows a symlink
    /// a lower layer left at its place; an explicit one replaces it.
    fn enter_dir(
        &mut self,
        layer: &LayerDir<'_>,
        layer_path: &Path,
        parts: Vec<OsString>,
        source: &fs::Metadata,
    ) -> Result<Vec<OsString>, ImageError> {
        let path: PathBuf = self.dest.join(parts.iter().collect::<PathBuf>());
        let implicit = layer.metadata.implicit_dirs.contains(layer_path);
        match fs::symlink_metadata(&path) {
            Ok(existing) if existing.is_dir() => {}
            Ok(existing) if existing.file_type().is_symlink() && implicit => {
                let resolved = fsutil::resolve_dir(self.dest, &parts, Some(&mut |_| {}));
                return match resolved {
                    Ok(resolved) => Ok(resolved),
                    Err(ResolveError::Io(error)) => Err(Self::io_error(&path, error)),
                    Err(error) => Err(self.invalid(layer, layer_path, &error.to_string())),
                };
            }
            Ok(_) => {
                fsutil::remove_tree(&path).map_err(|e| Self::io_error(&path, e))?;
                Self::create_dir(&path)?;
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Self::create_dir(&path)?,
            Err(error) => return Err(Self::io_error(&path, error)),
        }

        if !implicit {
            let attributes = DirAttributes {
                uid: source.uid(),
                gid: source.gid(),
                mode: source.mode() & 0o7777,
                mtime: source.mtime(),
            };
            self.dirs.insert(path, attributes);
        }
        Ok(parts)
    }

    fn create_dir(path: &Path) -> Result<(), ImageError> {
        fs::create_dir(path).map_err(|e| Self::io_error(path, e))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .map_err(|e| Self::io_error(path, e))
    }

    /// Removes every entry of `dir` for an opaque marker.
    fn clear_dir(&mut self, dir: &Path) -> Result<(), ImageError> {
        for entry in fs::read_dir(dir).map_err(|e| Self::io_error(dir, e))? {
            let path = entry.map_err(|e| Self::io_error(dir, e))?.path();
            self.remove_lower(&path)?;
        }
        Ok(())
    }

    /// Removes a lower layer's entry for a whiteout, with the attributes
    /// recorded for directories below it.
    fn remove_lower(&mut self, path: &Path) -> Result<(), ImageError> {
        fsutil::remove_tree(path).map_err(|e| Self::io_error(path, e))?;
        self.dirs.retain(|dir, _| !dir.starts_with(path));
        Ok(())
    }

    /// Copies a regular file or symlink over whatever `dest` holds.
    fn apply_file(
        &mut self,
        source: &Path,
        dest: &Path,
        metadata: &fs::Metadata,
    ) -> Result<(), ImageError> {
        fsutil::remove_tree(dest).map_err(|e| Self::io_error(dest, e))?;
        let file_type = metadata.file_type();

        if file_type.is_symlink() {
            let target = fs::read_link(source).map_err(|e| Self::io_error(source, e))?;
            std::os::unix::fs::symlink(target, dest).map_err(|e| Self::io_error(dest, e))?;
            if self.skeleton {
                return Ok(());
            }
            if self.chown {
                fsutil::lchown(dest, metadata.uid(), metadata.gid())
                    .map_err(|e| Self::io_error(dest, e))?;
            }
            return fsutil::set_mtime(dest, metadata.mtime()).map_err(|e| Self::io_error(dest, e));
        }
        if !file_type.is_file() {
            return Ok(());
        }

        let inode = (metadata.dev(), metadata.ino());
        if metadata.nlink() > 1 {
            if let Some(first) = self.copied.get(&inode) {
                return fs::hard_link(first, dest).map_err(|e| Self::io_error(dest, e));
            }
        }
        self.copy_file(source, dest, metadata)?;
        if metadata.nlink() > 1 {
            self.copied.insert(inode, dest.to_path_buf());
        }
        Ok(())
    }

    fn copy_file(
        &mut self,
        source: &Path,
        dest: &Path,
        metadata: &fs::Metadata,
    ) -> Result<(), ImageError> {
        let io_error = |error| Self::io_error(dest, error);
        let mut input = File::open(source).map_err(|e| Self::io_error(source, e))?;
        let mut output = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dest)
            .map_err(io_error)?;
        if self.skeleton {
            return Ok(());
        }
        if !self.try_reflink(&input, &output) {
            // std's File-to-File copy uses copy_file_range on Linux, so the
            // data never passes through user space.
            io::copy(&mut input, &mut output).map_err(io_error)?;
        }

        // chown clears setuid and setgid bits, so the mode comes after it.
        if self.chown {
            std::os::unix::fs::fchown(&output, Some(metadata.uid()), Some(metadata.gid()))
                .map_err(io_error)?;
        }
        output
            .set_permissions(fs::Permissions::from_mode(metadata.mode() & 0o7777))
            .map_err(io_error)?;
        let mtime = UNIX_EPOCH + Duration::from_secs(metadata.mtime().max(0) as u64);
        output
            .set_times(FileTimes::new().set_accessed(mtime).set_modified(mtime))
            .map_err(io_error)
    }

    /// Clones `input` into `output` with FICLONE. Returns false when the
    /// file system cannot, so the caller copies instead.
    fn try_reflink(&mut self, input: &File, output: &File) -> bool {
        if !self.reflink {
            return false;
        }
        // SAFETY: both descriptors are open for the duration of the call,
        // and FICLONE takes the source descriptor as its argument.
        let result = unsafe { libc::ioctl(output.as_raw_fd(), libc::FICLONE, input.as_raw_fd()) };
        if result != 0 {
            self.reflink = false;
        }
        result == 0
    }

    /// Creates the hard links whose target is in a lower layer.
    fn link_lower(&mut self, layer: &LayerDir<'_>) -> Result<(), ImageError> {
        for link in &layer.metadata.lower_hardlinks {
            let target = self.resolve_leaf(layer, &link.target, false)?;
            let path = self.resolve_leaf(layer, &link.path, true)?;
            let target_metadata = fs::symlink_metadata(&target).map_err(|_| {
                self.invalid(
                    layer,
                    &link.target,
                    "hard link target not found in lower layers",
                )
            })?;
            if target_metadata.is_dir() {
                return Err(self.invalid(layer, &link.target, "hard link to a directory"));
            }
            fsutil::remove_tree(&path).map_err(|e| Self::io_error(&path, e))?;
            fs::hard_link(&target, &path).map_err(|e| Self::io_error(&path, e))?;
        }
        Ok(())
    }

    /// Resolves the parent directories of `relative` inside the rootfs and
    /// returns the full path of its last component, which is not followed.
    fn resolve_leaf(
        &self,
        layer: &LayerDir<'_>,
        relative: &Path,
        create: bool,
    ) -> Result<PathBuf, ImageError> {
        let parts: Vec<OsString> = relative.iter().map(|part| part.to_os_string()).collect();
        let Some((name, parents)) = parts.split_last() else {
            return Err(self.invalid(layer, relative, "empty hard link path"));
        };
        let mut ignore = |_: &Path| {};
        let on_create: Option<&mut dyn FnMut(&Path)> =
            if create { Some(&mut ignore) } else { None };
        match fsutil::resolve_dir(self.dest, parents, on_create) {
            Ok(resolved) => Ok(self
                .dest
                .join(resolved.iter().collect::<PathBuf>())
                .join(name)),
            Err(error) => Err(self.invalid(layer, relative, &format!("hard link: {error}"))),
        }
    }

    /// Applies directory owners, modes and mtimes, deepest first so that
    /// setting a parent's mtime comes after all changes inside it.
    fn finish_dirs(&self) -> Result<(), ImageError> {
        let mut dirs: Vec<(&PathBuf, &DirAttributes)> = self.dirs.iter().collect();
        dirs.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        for (path, attributes) in dirs {
            // A later layer may have replaced or removed the directory.
            if !fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            if self.chown {
                fsutil::lchown(path, attributes.uid, attributes.gid)
                    .map_err(|e| Self::io_error(path, e))?;
            }
            fs::set_permissions(path, fs::Permissions::from_mode(attributes.mode))
                .map_err(|e| Self::io_error(path, e))?;
            fsutil::set_mtime(path, attributes.mtime).map_err(|e| Self::io_error(path, e))?;
        }
        Ok(())
    }
}

/// Returns the name a whiteout file hides (the opaque marker returns
/// `.wh..opq`), or `None` for ordinary names. The unpacker has already
/// rejected whiteouts of `.`, `..` and the empty name.
fn whiteout_target(name: &OsStr) -> Option<&[u8]> {
    name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes())
}
