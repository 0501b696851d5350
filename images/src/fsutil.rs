//! File system helpers shared by the store, the layer unpacker and the
//! rootfs builder: atomic writes, scoped symlink resolution, metadata.

use std::collections::VecDeque;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Maximum number of symlinks followed while resolving one path, the same
/// bound Linux applies (`MAXSYMLINKS`, 40).
const MAX_SYMLINKS: usize = 40;

/// Returns a name that no other call in this process or any other process
/// returns: process id, a per-process counter and the current time.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{}-{count}-{nanos}", std::process::id())
}

/// Flushes a directory's entries to disk, so a rename into it survives a
/// crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Flushes every file of the file system holding `path` to disk (syncfs),
/// cheaper than one fsync per file of an unpacked layer.
pub fn sync_file_system(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: the descriptor stays open for the duration of the call.
    if unsafe { libc::syncfs(file.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes `data` to `path` atomically: to a file in `temp_dir` first, which
/// is fsynced and then renamed over `path`. `temp_dir` must be on the same
/// file system as `path`.
pub fn write_atomic(temp_dir: &Path, path: &Path, data: &[u8]) -> io::Result<()> {
    let temp = temp_dir.join(unique_name("write"));
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(data)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        match path.parent() {
            Some(parent) => sync_dir(parent),
            None => Ok(()),
        }
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Removes `path` and everything below it, even directories without write
/// or search permission (mode 0555 or 0000), which `fs::remove_dir_all`
/// fails on when not running as root. A missing `path` is not an error.
/// Symlinks are removed, never followed.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    if !metadata.is_dir() {
        return fs::remove_file(path);
    }

    if metadata.permissions().mode() & 0o700 != 0o700 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    }
    for entry in fs::read_dir(path)? {
        remove_tree(&entry?.path())?;
    }
    fs::remove_dir(path)
}

/// Splits a slash-separated archive path into its normal components.
/// Returns `None` when the path is absolute or has a `..` component, the
/// two forms that could name something outside the extraction root.
pub fn relative_components(path: &[u8]) -> Option<Vec<OsString>> {
    let path = Path::new(OsStr::from_bytes(path));
    let mut components = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => components.push(name.to_os_string()),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) | Component::ParentDir => return None,
        }
    }
    Some(components)
}

/// Failure to resolve a path inside a root.
#[derive(Debug)]
pub enum ResolveError {
    /// A `..` or a symlink led above the root.
    Escapes,
    /// More than `MAX_SYMLINKS` symlinks were followed.
    TooManySymlinks,
    /// A component exists but is neither a directory nor a symlink.
    NotADirectory(PathBuf),
    Io(io::Error),
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolveError::Escapes => write!(f, "path resolves outside the root"),
            ResolveError::TooManySymlinks => write!(f, "too many levels of symbolic links"),
            ResolveError::NotADirectory(path) => {
                write!(f, "{} exists and is not a directory", path.display())
            }
            ResolveError::Io(error) => write!(f, "{error}"),
        }
    }
}

/// Resolves the directory `components` under `root` as the kernel would
/// if `root` were `/`: symlinks are followed and absolute symlink targets
/// restart at `root`. Unlike the kernel, a `..` above the root is an error
/// rather than a no-op, so a hostile symlink is reported instead of
/// silently reinterpreted.
///
/// With `on_create`, missing directories are created with mode 0755 and
/// passed to it (relative to `root`); without, a missing directory is a
/// `NotFound` error. Returns the resolved components relative to `root`,
/// each naming a real directory.
pub fn resolve_dir(
    root: &Path,
    components: &[OsString],
    mut on_create: Option<&mut dyn FnMut(&Path)>,
) -> Result<Vec<OsString>, ResolveError> {
    let mut resolved: Vec<OsString> = Vec::new();
    let mut pending: VecDeque<OsString> = components.iter().cloned().collect();
    let mut symlinks = 0;

    while let Some(component) = pending.pop_front() {
        if component.is_empty() || component == "." {
            continue;
        }
        if component == ".." {
            resolved.pop().ok_or(ResolveError::Escapes)?;
            continue;
        }

        let relative: PathBuf = resolved.iter().chain([&component]).collect();
        let path = root.join(&relative);
        match fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                symlinks += 1;
                if symlinks > MAX_SYMLINKS {
                    return Err(ResolveError::TooManySymlinks);
                }
                let target = fs::read_link(&path).map_err(ResolveError::Io)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for part in target.iter().rev() {
                    if part != "/" {
                        pending.push_front(part.to_os_string());
                    }
                }
            }
            Ok(metadata) if metadata.is_dir() => resolved.push(component),
            Ok(_) => return Err(ResolveError::NotADirectory(relative)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let Some(on_create) = on_create.as_mut() else {
                    return Err(ResolveError::Io(error));
                };
                fs::create_dir(&path).map_err(ResolveError::Io)?;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                    .map_err(ResolveError::Io)?;
                on_create(&relative);
                resolved.push(component);
            }
            Err(error) => return Err(ResolveError::Io(error)),
        }
    }
    Ok(resolved)
}

/// Sets the access and modification time of `path` to `mtime` seconds since
/// the epoch, without following a final symlink.
pub fn set_mtime(path: &Path, mtime: i64) -> io::Result<()> {
    let path = c_path(path)?;
    let time = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [time, time];
    // SAFETY: `path` is a NUL-terminated string and `times` has the two
    // entries utimensat reads.
    let result = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the owner of `path` without following a final symlink.
pub fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

/// Returns true when this process may change file ownership.
pub fn can_chown() -> bool {
    // SAFETY: geteuid takes no arguments and, per POSIX, always succeeds.
    unsafe { libc::geteuid() == 0 }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_components_rejects_escapes() {
        assert!(relative_components(b"/etc/passwd").is_none());
        assert!(relative_components(b"a/../../x").is_none());
        let parts = relative_components(b"./usr//bin/").unwrap();
        assert_eq!(parts, vec![OsString::from("usr"), OsString::from("bin")]);
    }

    #[test]
    fn resolve_dir_follows_symlinks_inside_root() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.path().join("lib")).unwrap();
        std::os::unix::fs::symlink("/usr", root.path().join("abs")).unwrap();

        let parts = |text: &[u8]| relative_components(text).unwrap();
        let resolved = resolve_dir(root.path(), &parts(b"lib/x"), Some(&mut |_| {})).unwrap();
        assert_eq!(
            resolved.iter().collect::<PathBuf>(),
            PathBuf::from("usr/lib/x")
        );
        let resolved = resolve_dir(root.path(), &parts(b"abs/lib"), Some(&mut |_| {})).unwrap();
        assert_eq!(
            resolved.iter().collect::<PathBuf>(),
            PathBuf::from("usr/lib")
        );
    }

    #[test]
    fn resolve_dir_rejects_symlink_escape() {
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("../..", root.path().join("up")).unwrap();
        let parts = relative_components(b"up/x").unwrap();
        let result = resolve_dir(root.path(), &parts, Some(&mut |_| {}));
        assert!(matches!(result, Err(ResolveError::Escapes)));
    }

    #[test]
    fn remove_tree_handles_read_only_dirs() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ro/inner");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("file"), b"x").unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
        fs::set_permissions(root.path().join("ro"), fs::Permissions::from_mode(0o000)).unwrap();
        remove_tree(&root.path().join("ro")).unwrap();
        assert!(!root.path().join("ro").exists());
    }
}
