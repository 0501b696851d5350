//! Safe unpacking of one layer tar into its own directory.
//!
//! A layer directory contains the layer's files exactly as the tar lists
//! them, with two exceptions:
//! - Whiteouts (`.wh.NAME`) and opaque markers (`.wh..wh..opq`) are kept
//!   as empty regular files under their tar names. They take effect only
//!   when layers are stacked into a rootfs (see `rootfs.rs`).
//! - Entries the unpacker cannot represent (device nodes, fifos, hard
//!   links into lower layers) are listed in the layer's `LayerMetadata`.
//!
//! Nothing is ever written outside the destination: every path is split
//! into components, `..` and absolute paths are rejected, and parent
//! directories are resolved with `fsutil::resolve_dir`, which follows a
//! symlink only while it stays inside the destination.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use flate2::read::MultiGzDecoder;
use serde::{Deserialize, Serialize};
use sidewhale_core::ImageError;
use tar::EntryType;

use crate::digest::HashingReader;
use crate::fsutil::{self, ResolveError};

/// Prefix of a whiteout file name in a layer tar (OCI image spec, layer
/// changesets).
pub const WHITEOUT_PREFIX: &str = ".wh.";

/// Name of the marker that makes its directory opaque.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Layer facts that the unpacked files cannot show, stored as `layer.json`
/// beside the layer's `diff/` directory.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerMetadata {
    /// `sha256:` digest of the uncompressed tar.
    pub diff_id: String,
    /// Sum of the sizes of the layer's regular files in bytes.
    pub size: u64,
    /// Directories created only as parents of other entries. The tar has
    /// no entry for them, so when stacked they follow a symlink of a lower
    /// layer instead of replacing it, as `docker pull` does.
    pub implicit_dirs: BTreeSet<PathBuf>,
    /// Hard links whose target is not in this layer.
    pub lower_hardlinks: Vec<HardLink>,
    /// Device nodes and fifos, which an unprivileged process cannot create
    /// and containers in sidewhale do not need.
    pub skipped: Vec<PathBuf>,
    /// Whether file owners from the tar were applied (only possible as
    /// root). Otherwise every file belongs to the user running sidewhale.
    pub ownership_applied: bool,
}

/// A hard link between two paths relative to the rootfs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HardLink {
    pub path: PathBuf,
    pub target: PathBuf,
}

#[derive(Debug, PartialEq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn detect_compression(magic: &[u8]) -> Compression {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Counts the compressed bytes read and reports the count.
struct ProgressReader<'a, R> {
    inner: R,
    count: u64,
    on_progress: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.count += read as u64;
        (self.on_progress)(self.count);
        Ok(read)
    }
}

/// Unpacks the layer blob at `blob` (gzip or plain tar, detected by magic
/// bytes) into the existing empty directory `dest`, reporting the number
/// of compressed bytes read to `on_progress`. `layer_digest` names the
/// layer in errors. Returns the layer's metadata, including its diff id.
///
/// Fails with `ImageError::InvalidLayer` on any entry that would be
/// written outside `dest`. `dest` may then hold a partial layer, which the
/// caller discards.
pub fn unpack_layer(
    blob: &Path,
    dest: &Path,
    layer_digest: &str,
    on_progress: &mut dyn FnMut(u64),
) -> Result<LayerMetadata, ImageError> {
    let io_error = |error| ImageError::io(format!("unpack layer {layer_digest}"), error);
    let file = File::open(blob).map_err(io_error)?;
    let counted = ProgressReader {
        inner: file,
        count: 0,
        on_progress,
    };
    let mut buffered = BufReader::with_capacity(256 * 1024, counted);

    let compression = detect_compression(buffered.fill_buf().map_err(io_error)?);
    let decompressed: Box<dyn Read + '_> = match compression {
        Compression::Gzip => Box::new(MultiGzDecoder::new(buffered)),
        Compression::None => Box::new(buffered),
        Compression::Zstd => {
            return Err(ImageError::InvalidLayer {
                digest: layer_digest.to_string(),
                reason: "zstd-compressed layers are not supported".to_string(),
            })
        }
    };
    unpack_tar(decompressed, dest, layer_digest)
}

/// Unpacks an uncompressed tar stream into `dest`; see `unpack_layer`.
pub fn unpack_tar(
    tar_stream: impl Read,
    dest: &Path,
    layer_digest: &str,
) -> Result<LayerMetadata, ImageError> {
    let io_error = |error| ImageError::io(format!("unpack layer {layer_digest}"), error);
    let mut hashed = HashingReader::new(tar_stream);
    let mut unpacker = Unpacker::new(dest, layer_digest);

    {
        let mut archive = tar::Archive::new(&mut hashed);
        for entry in archive.entries().map_err(io_error)? {
            let entry = entry.map_err(io_error)?;
            unpacker.apply(entry)?;
        }
    }

    // The diff id covers the whole stream, including the end-of-archive
    // blocks that the tar reader stops before.
    io::copy(&mut hashed, &mut io::sink()).map_err(io_error)?;
    let (diff_id, _) = hashed.finish();

    let mut metadata = unpacker.finish().map_err(io_error)?;
    metadata.diff_id = diff_id;
    Ok(metadata)
}

/// A directory whose mode and mtime are set after all its children are
/// written, so a read-only directory can still be filled and its mtime is
/// not changed by later writes.
struct PendingDir {
    path: PathBuf,
    mode: u32,
    mtime: u64,
}

struct Unpacker<'a> {
    dest: &'a Path,
    layer_digest: &'a str,
    metadata: LayerMetadata,
    pending_dirs: Vec<PendingDir>,
    chown: bool,
}

impl<'a> Unpacker<'a> {
    fn new(dest: &'a Path, layer_digest: &'a str) -> Self {
        let chown = fsutil::can_chown();
        let metadata = LayerMetadata {
            ownership_applied: chown,
            ..LayerMetadata::default()
        };
        Unpacker {
            dest,
            layer_digest,
            metadata,
            pending_dirs: Vec::new(),
            chown,
        }
    }

    fn invalid(&self, path: &[u8], reason: &str) -> ImageError {
        ImageError::InvalidLayer {
            digest: self.layer_digest.to_string(),
            reason: format!("{reason}: {:?}", String::from_utf8_lossy(path)),
        }
    }

    fn io_error(&self, path: &Path, error: io::Error) -> ImageError {
        let operation = format!("unpack {} of layer {}", path.display(), self.layer_digest);
        ImageError::io(operation, error)
    }

    /// Writes one tar entry below `dest`.
    fn apply<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ImageError> {
        let raw_path = entry.path_bytes().into_owned();
        let components = fsutil::relative_components(&raw_path)
            .ok_or_else(|| self.invalid(&raw_path, "absolute path or '..' component"))?;
        let Some((name, parents)) = components.split_last() else {
            // The archive root (`./`) itself: the rootfs directory keeps
            // the mode and owner its creator gave it.
            return Ok(());
        };
        if self.is_aufs_metadata(name, &raw_path)? {
            return Ok(());
        }

        let parent = self.resolve_parent(parents, &raw_path)?;
        let relative = parent.join(name);
        let path = self.dest.join(&relative);
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let mtime = header.mtime().unwrap_or(0);
        let (uid, gid) = owner_of(&mut entry);

        match entry.header().entry_type() {
            EntryType::Directory => {
                self.make_dir(&path, &relative)?;
                self.chown(&path, uid, gid)?;
                self.pending_dirs.push(PendingDir { path, mode, mtime });
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.remove_existing(&path)?;
                self.write_file(&mut entry, &path, (uid, gid), mode, mtime)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.invalid(&raw_path, "symlink without a target"))?
                    .into_owned();
                self.remove_existing(&path)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(|error| self.io_error(&path, error))?;
                self.chown(&path, uid, gid)?;
                fsutil::set_mtime(&path, mtime as i64).map_err(|e| self.io_error(&path, e))?;
            }
            EntryType::Link => self.hard_link(&mut entry, &raw_path, &path, &relative)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                tracing::debug!(path = %relative.display(), "skipped device node or fifo");
                self.metadata.skipped.push(relative);
            }
            other => {
                tracing::debug!(path = %relative.display(), entry_type = ?other,
                    "skipped tar entry of unsupported type");
            }
        }
        Ok(())
    }

    /// Rejects whiteouts that could name something outside their
    /// directory (`.wh..`). Returns true for AUFS metadata entries
    /// (`.wh..wh.*` other than the opaque marker), which are skipped.
    fn is_aufs_metadata(&self, name: &OsStr, raw_path: &[u8]) -> Result<bool, ImageError> {
        let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) else {
            return Ok(false);
        };
        if name == OPAQUE_MARKER {
            return Ok(false);
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(self.invalid(raw_path, "whiteout of an invalid name"));
        }
        Ok(hidden.starts_with(WHITEOUT_PREFIX.as_bytes()))
    }

    /// Resolves the parent directories of an entry inside `dest`, creating
    /// missing ones and recording them as implicit.
    fn resolve_parent(&mut self, parents: &[OsString], raw: &[u8]) -> Result<PathBuf, ImageError> {
        let implicit = &mut self.metadata.implicit_dirs;
        let mut record = |created: &Path| {
            implicit.insert(created.to_path_buf());
        };
        match fsutil::resolve_dir(self.dest, parents, Some(&mut record)) {
            Ok(resolved) => Ok(resolved.iter().collect()),
            Err(ResolveError::Io(error)) => {
                Err(self.io_error(Path::new(OsStr::from_bytes(raw)), error))
            }
            Err(error) => Err(self.invalid(raw, &format!("parent directory: {error}"))),
        }
    }

    /// Creates a directory entry, keeping an existing directory (its
    /// contents stay, as tar does) and replacing anything else.
    fn make_dir(&mut self, path: &Path, relative: &Path) -> Result<(), ImageError> {
        self.metadata.implicit_dirs.remove(relative);
        match fs::symlink_metadata(path) {
            Ok(metadata) if metadata.is_dir() => return Ok(()),
            Ok(_) => self.remove_existing(path)?,
            Err(_) => {}
        }
        fs::create_dir(path).map_err(|error| self.io_error(path, error))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .map_err(|error| self.io_error(path, error))
    }

    /// Removes whatever `path` names (never following a symlink), so that
    /// a later entry for the same path replaces an earlier one.
    fn remove_existing(&self, path: &Path) -> Result<(), ImageError> {
        fsutil::remove_tree(path).map_err(|error| self.io_error(path, error))
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &Path,
        (uid, gid): (u32, u32),
        mode: u32,
        mtime: u64,
    ) -> Result<(), ImageError> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|error| self.io_error(path, error))?;
        let size = io::copy(entry, &mut file).map_err(|error| self.io_error(path, error))?;
        self.metadata.size += size;
        let io_error = |error| self.io_error(path, error);

        // The owner is set before the mode because chown clears the setuid
        // and setgid bits.
        self.chown(path, uid, gid)?;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_error)?;
        let time = UNIX_EPOCH + Duration::from_secs(mtime);
        file.set_times(FileTimes::new().set_accessed(time).set_modified(time))
            .map_err(io_error)
    }

    /// Creates a hard link to an earlier entry of this layer, or records
    /// one to a lower layer for the rootfs builder.
    fn hard_link<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw_path: &[u8],
        path: &Path,
        relative: &Path,
    ) -> Result<(), ImageError> {
        let raw_target = entry
            .link_name_bytes()
            .ok_or_else(|| self.invalid(raw_path, "hard link without a target"))?
            .into_owned();
        let target_components = fsutil::relative_components(&raw_target)
            .ok_or_else(|| self.invalid(&raw_target, "hard link target outside the rootfs"))?;
        let Some((target_name, target_parents)) = target_components.split_last() else {
            return Err(self.invalid(&raw_target, "hard link to the rootfs directory"));
        };

        let target = match fsutil::resolve_dir(self.dest, target_parents, None) {
            Ok(parent) => Some(
                self.dest
                    .join(parent.iter().collect::<PathBuf>())
                    .join(target_name),
            ),
            Err(ResolveError::Io(error)) if error.kind() == io::ErrorKind::NotFound => None,
            Err(ResolveError::NotADirectory(_)) => None,
            Err(error) => {
                return Err(self.invalid(&raw_target, &format!("hard link target: {error}")))
            }
        };
        let in_layer = target.as_ref().and_then(|t| fs::symlink_metadata(t).ok());
        self.remove_existing(path)?;

        match (target, in_layer) {
            (Some(_), Some(metadata)) if metadata.is_dir() => {
                Err(self.invalid(&raw_target, "hard link to a directory"))
            }
            (Some(target), Some(_)) => {
                fs::hard_link(&target, path).map_err(|error| self.io_error(path, error))
            }
            _ => {
                let target = target_components.iter().collect();
                self.metadata.lower_hardlinks.push(HardLink {
                    path: relative.to_path_buf(),
                    target,
                });
                Ok(())
            }
        }
    }

    /// Sets the owner as root; otherwise ownership is not recorded (see
    /// `LayerMetadata::ownership_applied`).
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> Result<(), ImageError> {
        if !self.chown {
            return Ok(());
        }
        fsutil::lchown(path, uid, gid).map_err(|error| self.io_error(path, error))
    }

    /// Applies the deferred directory modes and mtimes, deepest first.
    fn finish(mut self) -> io::Result<LayerMetadata> {
        self.pending_dirs
            .sort_by_key(|dir| std::cmp::Reverse(dir.path.components().count()));
        for dir in &self.pending_dirs {
            // A later entry may have replaced the directory.
            if !fs::symlink_metadata(&dir.path).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            fs::set_permissions(&dir.path, fs::Permissions::from_mode(dir.mode))?;
            fsutil::set_mtime(&dir.path, dir.mtime as i64)?;
        }
        Ok(self.metadata)
    }
}

/// Returns the entry's owner, preferring PAX `uid`/`gid` records, which
/// carry ids too large for the ustar header.
pub fn owner_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> (u32, u32) {
    let header = entry.header();
    let mut uid = header.uid().unwrap_or(0) as u32;
    let mut gid = header.gid().unwrap_or(0) as u32;
    if let Ok(Some(extensions)) = entry.pax_extensions() {
        for extension in extensions.flatten() {
            let value = extension.value().ok().and_then(|v| v.parse::<u32>().ok());
            match (extension.key(), value) {
                (Ok("uid"), Some(value)) => uid = value,
                (Ok("gid"), Some(value)) => gid = value,
                _ => {}
            }
        }
    }
    (uid, gid)
}
