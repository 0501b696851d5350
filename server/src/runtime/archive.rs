//! Reading files out of a container for `GET` and `HEAD
//! /containers/{id}/archive`: path resolution, Docker's path stat and the
//! tar stream.
//!
//! Paths are resolved as the container's processes see them: symlinks
//! are followed inside the rootfs only, `..` stops at the container's `/`,
//! and paths under a mount reach the mount's host source. The same view
//! serves extraction (`extract.rs`).

use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use sidewhale_executors::{Resolved, RootfsView};

use super::{files, Container, Daemon, Error, Result};

/// Go's `os.FileMode` type bits, which Docker's path stat carries.
mod go_mode {
    pub const DIR: u32 = 1 << 31;
    pub const SYMLINK: u32 = 1 << 27;
    pub const DEVICE: u32 = 1 << 26;
    pub const NAMED_PIPE: u32 = 1 << 25;
    pub const SOCKET: u32 = 1 << 24;
    pub const SETUID: u32 = 1 << 23;
    pub const SETGID: u32 = 1 << 22;
    pub const CHAR_DEVICE: u32 = 1 << 21;
    pub const STICKY: u32 = 1 << 20;
}

/// Docker's `ContainerPathStat`, sent base64-encoded in the
/// `X-Docker-Container-Path-Stat` header.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PathStat {
    pub name: String,
    pub size: u64,
    /// Go's `os.FileMode`: permission bits plus the type bits above.
    pub mode: u32,
    pub mtime: DateTime<Utc>,
    /// For a symlink, the container path it resolves to; else empty.
    #[serde(rename = "linkTarget")]
    pub link_target: String,
}

/// Converts a unix mode to Go's `os.FileMode`.
pub fn go_file_mode(metadata: &Metadata) -> u32 {
    let mode = metadata.mode();
    let file_type = metadata.file_type();
    let mut go = mode & 0o777;
    if file_type.is_dir() {
        go |= go_mode::DIR;
    } else if file_type.is_symlink() {
        go |= go_mode::SYMLINK;
    } else if file_type.is_fifo() {
        go |= go_mode::NAMED_PIPE;
    } else if file_type.is_socket() {
        go |= go_mode::SOCKET;
    } else if file_type.is_block_device() {
        go |= go_mode::DEVICE;
    } else if file_type.is_char_device() {
        go |= go_mode::DEVICE | go_mode::CHAR_DEVICE;
    }
    if mode & 0o4000 != 0 {
        go |= go_mode::SETUID;
    }
    if mode & 0o2000 != 0 {
        go |= go_mode::SETGID;
    }
    if mode & 0o1000 != 0 {
        go |= go_mode::STICKY;
    }
    go
}

/// A mount as the archive endpoints see it.
#[derive(Clone, Debug)]
pub(super) struct MountPoint {
    pub components: Vec<String>,
    pub source: PathBuf,
    pub read_only: bool,
}

/// A container's file system as its processes see it: the rootfs with the
/// container's mounts laid over it.
pub struct ContainerFiles {
    /// The 12-digit id, for logs.
    pub(super) id: String,
    pub(super) view: RootfsView,
    /// Later entries win over earlier ones with the same destination, as
    /// with proot's `-b`.
    pub(super) mounts: Vec<MountPoint>,
    pub(super) read_only_rootfs: bool,
    /// The container's `User`, for `copyUIDGID`.
    pub(super) user: String,
}

/// A container path located for `GET` and `HEAD`.
pub struct ArchiveSource {
    pub stat: PathStat,
    host: PathBuf,
    guest: Vec<String>,
    /// The name of the top entry in the tar stream.
    tar_name: String,
}

/// A container path, cleaned as Docker cleans it: absolute, without `.`
/// or `..` (which stops at `/`), with a note of a trailing `/` or `/.`.
pub(super) struct CleanPath {
    pub components: Vec<String>,
    /// The path ends with `/.`, which names a directory's contents.
    pub trailing_dot: bool,
    /// The path ends with `/` or `/.`, which asserts a directory.
    pub trailing_separator: bool,
}

impl CleanPath {
    pub fn parse(path: &str) -> CleanPath {
        let mut components: Vec<String> = Vec::new();
        for part in path.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    components.pop();
                }
                name => components.push(name.to_string()),
            }
        }
        let trailing_dot = path == "." || path.ends_with("/.");
        CleanPath {
            components,
            trailing_dot,
            trailing_separator: trailing_dot || path.ends_with('/'),
        }
    }
}

impl Daemon {
    /// Returns the container's file system view for the archive
    /// endpoints.
    pub fn container_files(&self, container: &Container) -> ContainerFiles {
        let record = container.record();
        let mounts = files::mounts(&container.dir, &record);
        let binds: Vec<(PathBuf, String)> = mounts
            .iter()
            .map(|mount| (mount.source.clone(), mount.destination.clone()))
            .collect();
        let mount_points = mounts
            .iter()
            .map(|mount| MountPoint {
                components: CleanPath::parse(&mount.destination).components,
                source: mount.source.clone(),
                read_only: mount.read_only,
            })
            .collect();
        ContainerFiles {
            id: record.short_id().to_string(),
            view: RootfsView::new(&container.rootfs(), &binds),
            mounts: mount_points,
            read_only_rootfs: record.host_config["ReadonlyRootfs"]
                .as_bool()
                .unwrap_or(false),
            user: record.config.user.clone().unwrap_or_default(),
        }
    }
}

/// Returns Docker's error for a path that does not exist in a container.
pub(super) fn file_not_found(path: &str, container: &str) -> Error {
    Error::NotFound(format!(
        "Could not find the file {path} in container {container}"
    ))
}

impl ContainerFiles {
    /// Resolves `components` inside the container, following every
    /// symlink, including the last.
    pub(super) fn resolve(&self, components: &[String]) -> Result<Resolved> {
        let guest = format!("/{}", components.join("/"));
        self.view.resolve(&guest, "/").map_err(|error| {
            Error::internal(
                &format!("failed to resolve {guest} in container {}", self.id),
                error,
            )
        })
    }

    /// Returns the mount whose destination is exactly `components`.
    pub(super) fn mount_at(&self, components: &[String]) -> Option<&MountPoint> {
        self.mounts
            .iter()
            .rev()
            .find(|mount| mount.components == components)
    }

    /// Returns the mount that contains `components`, if any: the one with
    /// the longest destination that is a prefix.
    pub(super) fn mount_of(&self, components: &[String]) -> Option<&MountPoint> {
        self.mounts
            .iter()
            .rev()
            .filter(|mount| components.starts_with(&mount.components))
            .max_by_key(|mount| mount.components.len())
    }

    /// Returns the host path of `name` inside the resolved directory
    /// `parent`, without following `name` itself.
    pub(super) fn child_host_path(&self, parent: &Resolved, name: &str) -> (Vec<String>, PathBuf) {
        let mut guest = CleanPath::parse(&parent.guest).components;
        guest.push(name.to_string());
        let host = match self.mount_at(&guest) {
            Some(mount) => mount.source.clone(),
            None => parent.host.join(name),
        };
        (guest, host)
    }

    /// Locates `path` for `GET` and `HEAD`, with Docker's rules: the last
    /// component is not followed when it is a symlink, unless the path
    /// ends with `/` or `/.`. `container` names the container in errors
    /// as the client named it.
    pub fn locate(&self, path: &str, container: &str) -> Result<ArchiveSource> {
        if path.is_empty() {
            return Err(Error::InvalidParameter("path cannot be empty".into()));
        }
        let clean = CleanPath::parse(path);
        let not_found = || file_not_found(path, container);
        let (guest, host) = match clean.components.split_last() {
            Some((name, parents)) if !clean.trailing_separator => {
                let parent = self.resolve(parents)?;
                if !parent.exists {
                    return Err(not_found());
                }
                self.child_host_path(&parent, name)
            }
            _ => {
                let resolved = self.resolve(&clean.components)?;
                if !resolved.exists {
                    return Err(not_found());
                }
                (CleanPath::parse(&resolved.guest).components, resolved.host)
            }
        };
        let metadata = match fs::symlink_metadata(&host) {
            Ok(metadata) => metadata,
            Err(error) if is_missing(&error) => return Err(not_found()),
            Err(error) => {
                return Err(Error::internal(&format!("failed to stat {path}"), error));
            }
        };
        if clean.trailing_separator && !metadata.is_dir() {
            return Err(Error::InvalidParameter(format!("{path}: not a directory")));
        }

        let name = if clean.trailing_dot {
            ".".to_string()
        } else {
            clean
                .components
                .last()
                .cloned()
                .unwrap_or_else(|| "/".to_string())
        };
        let link_target = if metadata.file_type().is_symlink() {
            self.resolve(&guest)?.guest
        } else {
            String::new()
        };
        let mtime = metadata
            .modified()
            .map(DateTime::<Utc>::from)
            .unwrap_or_default();
        let stat = PathStat {
            name: name.clone(),
            size: metadata.len(),
            mode: go_file_mode(&metadata),
            mtime,
            link_target,
        };
        let tar_name = if name == "/" { ".".to_string() } else { name };
        tracing::debug!(container = %self.id, %path, host = %host.display(), "located archive path");
        Ok(ArchiveSource {
            stat,
            host,
            guest,
            tar_name,
        })
    }

    /// Writes `source` as a tar stream: the file itself, or the directory
    /// and everything below it, under its base name. Mounts below a
    /// directory are included with their contents, as Docker does.
    pub fn write_tar(&self, source: &ArchiveSource, writer: impl Write) -> io::Result<()> {
        let mut builder = tar::Builder::new(writer);
        let mut guest = source.guest.clone();
        self.append(&mut builder, &source.host, &mut guest, &source.tar_name)?;
        builder.into_inner()?.flush()
    }

    fn append<W: Write>(
        &self,
        builder: &mut tar::Builder<W>,
        host: &Path,
        guest: &mut Vec<String>,
        name: &str,
    ) -> io::Result<()> {
        let metadata = match fs::symlink_metadata(host) {
            Ok(metadata) => metadata,
            Err(error) if is_missing(&error) => {
                tracing::debug!(container = %self.id, path = %host.display(),
                    "skipped a file removed while it was archived");
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        let file_type = metadata.file_type();
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&metadata, tar::HeaderMode::Complete);

        if file_type.is_file() {
            let file = File::open(host)?;
            let size = metadata.len();
            builder.append_data(&mut header, name, ExactReader::new(file, size))?;
        } else if file_type.is_dir() {
            builder.append_data(&mut header, format!("{name}/"), io::empty())?;
            for child in self.children(host, guest)? {
                guest.push(child.clone());
                let child_host = match self.mount_at(guest) {
                    Some(mount) => mount.source.clone(),
                    None => host.join(&child),
                };
                let child_name = if name == "." {
                    format!("./{child}")
                } else {
                    format!("{name}/{child}")
                };
                let result = self.append(builder, &child_host, guest, &child_name);
                guest.pop();
                result?;
            }
        } else if file_type.is_symlink() {
            let target = fs::read_link(host)?;
            builder.append_link(&mut header, name, target)?;
        } else if file_type.is_fifo() || file_type.is_char_device() || file_type.is_block_device() {
            let rdev = metadata.rdev();
            header.set_entry_type(if file_type.is_fifo() {
                tar::EntryType::Fifo
            } else if file_type.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            });
            header.set_device_major(libc::major(rdev))?;
            header.set_device_minor(libc::minor(rdev))?;
            header.set_size(0);
            builder.append_data(&mut header, name, io::empty())?;
        } else {
            tracing::debug!(container = %self.id, path = %host.display(), "skipped socket in archive");
        }
        Ok(())
    }

    /// Lists a directory's entries, plus mount destinations directly
    /// below it that its host directory lacks, sorted by name.
    fn children(&self, host: &Path, guest: &[String]) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = Vec::new();
        for entry in fs::read_dir(host)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        for mount in &self.mounts {
            let below =
                mount.components.len() == guest.len() + 1 && mount.components.starts_with(guest);
            if let Some(last) = mount.components.last().filter(|_| below) {
                names.push(last.clone());
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// Reads exactly `size` bytes: at most `size` from the file, padded with
/// zeros if it shrank since it was stat'ed, so that a file that a running
/// container changes cannot corrupt the tar stream.
struct ExactReader {
    inner: io::Take<File>,
    remaining: u64,
}

impl ExactReader {
    fn new(file: File, size: u64) -> ExactReader {
        ExactReader {
            inner: file.take(size),
            remaining: size,
        }
    }
}

impl Read for ExactReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let mut read = self.inner.read(buf)?;
        if read == 0 {
            let padding = buf
                .len()
                .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
            buf[..padding].fill(0);
            read = padding;
        }
        self.remaining -= read as u64;
        Ok(read)
    }
}

pub(super) fn is_missing(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_stops_at_root() {
        let clean = CleanPath::parse("../../etc/./passwd");
        assert_eq!(clean.components, vec!["etc", "passwd"]);
        assert!(!clean.trailing_separator);
        let clean = CleanPath::parse("/etc/.");
        assert!(clean.trailing_dot);
        assert!(clean.trailing_separator);
        let clean = CleanPath::parse("/etc/");
        assert!(!clean.trailing_dot);
        assert!(clean.trailing_separator);
    }

    #[test]
    fn go_modes_match_os_file_mode() {
        let dir = tempfile::tempdir().unwrap();
        let metadata = fs::symlink_metadata(dir.path()).unwrap();
        assert_eq!(go_file_mode(&metadata) & go_mode::DIR, go_mode::DIR);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("x", &link).unwrap();
        let metadata = fs::symlink_metadata(&link).unwrap();
        assert_eq!(go_file_mode(&metadata), go_mode::SYMLINK | 0o777);
    }

    #[test]
    fn exact_reader_pads_shrunk_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"abc").unwrap();
        let mut out = Vec::new();
        ExactReader::new(File::open(&path).unwrap(), 5)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"abc\0\0");
        let mut out = Vec::new();
        ExactReader::new(File::open(&path).unwrap(), 2)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"ab");
    }
}
