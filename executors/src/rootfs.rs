//! Path resolution inside a container's root filesystem.
//!
//! Paths are resolved the way the container sees them: symlinks with
//! absolute targets point into the rootfs, never at the host, `..` stops at
//! the container's `/`, and paths under a bind mount resolve in the mount's
//! host source. This is what proot shows the process, so checks done here
//! before spawning (entrypoint lookup, working dir) agree with what the
//! process finds at run time.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sidewhale_core::ExecutorError;

/// Linux gives up after 40 symlinks in one lookup (`ELOOP`); so do we.
const MAX_SYMLINKS: usize = 40;

/// Docker's default `PATH` for processes whose environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A rootfs plus the bind mounts laid over it, as the container sees them.
#[derive(Clone, Debug)]
pub struct RootfsView {
    rootfs: PathBuf,
    /// `(guest path components, host source)`, for bind mounts.
    binds: Vec<(Vec<String>, PathBuf)>,
}

/// A guest path after symlink resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// Absolute, normalized path inside the container.
    pub guest: String,
    /// The corresponding host path.
    pub host: PathBuf,
    /// Whether every component exists. A missing path is still resolved
    /// as far as it exists; the rest is appended as written.
    pub exists: bool,
}

impl RootfsView {
    /// Creates a view of `rootfs` with `binds` given as `(host source,
    /// guest destination)` pairs. A later bind of the same destination
    /// wins, as with proot's `-b`.
    pub fn new(rootfs: &Path, binds: &[(PathBuf, String)]) -> Self {
        let binds = binds
            .iter()
            .rev()
            .map(|(source, destination)| (split_components(destination), source.clone()))
            .collect();

        RootfsView {
            rootfs: rootfs.to_path_buf(),
            binds,
        }
    }

    /// Resolves `path` inside the container, relative to `cwd` when it is
    /// not absolute. Every symlink is followed, including the last one.
    pub fn resolve(&self, path: &str, cwd: &str) -> Result<Resolved, ExecutorError> {
        let mut pending: VecDeque<String> = VecDeque::new();
        if !path.starts_with('/') {
            pending.extend(split_components(cwd));
        }
        pending.extend(split_components(path));

        let mut current: Vec<String> = Vec::new();
        let mut symlinks = 0;
        let mut exists = true;

        while let Some(component) = pending.pop_front() {
            if component == ".." {
                current.pop();
                continue;
            }
            current.push(component);
            if !exists {
                continue;
            }

            let host = self.host_path(&current);
            match fs::symlink_metadata(&host) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    symlinks += 1;
                    if symlinks > MAX_SYMLINKS {
                        return Err(ExecutorError::Other(format!(
                            "too many levels of symbolic links in {path}"
                        )));
                    }
                    let target = fs::read_link(&host).map_err(|e| {
                        ExecutorError::io(format!("read link {}", host.display()), e)
                    })?;
                    current.pop();
                    let target = target.to_string_lossy().into_owned();
                    if target.starts_with('/') {
                        current.clear();
                    }
                    for part in split_components(&target).into_iter().rev() {
                        pending.push_front(part);
                    }
                }
                Ok(_) => {}
                Err(e) if is_missing(&e) => exists = false,
                Err(e) => {
                    return Err(ExecutorError::io(format!("inspect {}", host.display()), e));
                }
            }
        }

        Ok(Resolved {
            guest: format!("/{}", current.join("/")),
            host: self.host_path(&current),
            exists,
        })
    }

    /// Maps normalized guest components to a host path through the binds.
    fn host_path(&self, components: &[String]) -> PathBuf {
        let bind = self
            .binds
            .iter()
            .filter(|(guest, _)| components.starts_with(guest))
            .max_by_key(|(guest, _)| guest.len());

        match bind {
            Some((guest, source)) => join_components(source, &components[guest.len()..]),
            None => join_components(&self.rootfs, components),
        }
    }

    /// Finds the program `argv0` names the way Docker's runtime does: a
    /// name with a slash is taken as a path (relative to `cwd`), a bare
    /// name is looked up in `search_path`. Returns the resolved guest path.
    pub fn find_executable(
        &self,
        argv0: &str,
        search_path: &str,
        cwd: &str,
    ) -> Result<String, ExecutorError> {
        if argv0.is_empty() {
            return Err(ExecutorError::NotFound(String::new()));
        }

        if argv0.contains('/') {
            let resolved = self.resolve(argv0, cwd)?;
            return match executable_state(&resolved) {
                ExecutableState::Executable => Ok(resolved.guest),
                ExecutableState::Missing => Err(ExecutorError::NotFound(argv0.to_string())),
                ExecutableState::NotExecutable => {
                    Err(ExecutorError::NotExecutable(argv0.to_string()))
                }
            };
        }

        // A bare name only matches executable files, and an empty PATH
        // entry means the working dir, as with Go's `exec.LookPath` that
        // runc uses.
        for dir in search_path.split(':') {
            let dir = if dir.is_empty() { "." } else { dir };
            let candidate = format!("{dir}/{argv0}");
            let resolved = self.resolve(&candidate, cwd)?;
            if executable_state(&resolved) == ExecutableState::Executable {
                return Ok(resolved.guest);
            }
        }
        Err(ExecutorError::NotFound(argv0.to_string()))
    }

    /// Makes sure the working dir exists, creating it (and its parents)
    /// when missing, as Docker does. Fails if it is not a directory.
    pub fn ensure_working_dir(&self, working_dir: &str) -> Result<Resolved, ExecutorError> {
        if !working_dir.starts_with('/') {
            return Err(ExecutorError::InvalidWorkingDir(format!(
                "{working_dir}: the path must be absolute"
            )));
        }

        let resolved = self.resolve(working_dir, "/")?;
        if resolved.exists {
            if resolved.host.is_dir() {
                return Ok(resolved);
            }
            return Err(ExecutorError::InvalidWorkingDir(format!(
                "{working_dir}: not a directory"
            )));
        }

        fs::create_dir_all(&resolved.host).map_err(|e| {
            ExecutorError::InvalidWorkingDir(format!("{working_dir}: cannot create it: {e}"))
        })?;
        Ok(resolved)
    }

    /// Creates an empty file or directory at a bind destination that does
    /// not exist yet, so that proot binds over a real path instead of a
    /// temporary "glue" entry it makes itself.
    pub fn ensure_mount_point(&self, destination: &str, is_dir: bool) -> io::Result<()> {
        let resolved = self
            .resolve(destination, "/")
            .map_err(|e| io::Error::other(e.to_string()))?;
        if resolved.exists {
            return Ok(());
        }

        if is_dir {
            return fs::create_dir_all(&resolved.host);
        }
        if let Some(parent) = resolved.host.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&resolved.host)
            .map(drop)
    }

    /// Reads a text file of the container, such as `/etc/passwd`. Returns
    /// `None` when it does not exist.
    pub fn read_to_string(&self, path: &str) -> Result<Option<String>, ExecutorError> {
        let resolved = self.resolve(path, "/")?;
        if !resolved.exists {
            return Ok(None);
        }

        match fs::read_to_string(&resolved.host) {
            Ok(text) => Ok(Some(text)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(ExecutorError::io(format!("read {path} in the rootfs"), e)),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum ExecutableState {
    Executable,
    Missing,
    NotExecutable,
}

/// Applies Go's `findExecutable` rule: a regular file with any execute bit.
fn executable_state(resolved: &Resolved) -> ExecutableState {
    if !resolved.exists {
        return ExecutableState::Missing;
    }

    match fs::metadata(&resolved.host) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => {
            ExecutableState::Executable
        }
        Ok(_) => ExecutableState::NotExecutable,
        Err(_) => ExecutableState::Missing,
    }
}

fn is_missing(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR)
    )
}

fn split_components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .map(str::to_string)
        .collect()
}

fn join_components(base: &Path, components: &[String]) -> PathBuf {
    let mut path = base.to_path_buf();
    path.extend(components);
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("bin/tool"), "").unwrap();
        fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(root.join("bin/data"), "").unwrap();
        fs::set_permissions(root.join("bin/data"), fs::Permissions::from_mode(0o644)).unwrap();
        symlink("/bin/tool", root.join("usr/bin/alias")).unwrap();
        symlink("../../etc", root.join("usr/bin/up")).unwrap();
        symlink("/", root.join("etc/loop-to-root")).unwrap();
        dir
    }

    #[test]
    fn absolute_symlink_stays_in_rootfs() {
        let dir = rootfs();
        let view = RootfsView::new(dir.path(), &[]);

        let resolved = view.resolve("/usr/bin/alias", "/").unwrap();

        assert_eq!(resolved.guest, "/bin/tool");
        assert_eq!(resolved.host, dir.path().join("bin/tool"));
        assert!(resolved.exists);
    }

    #[test]
    fn dotdot_stops_at_container_root() {
        let dir = rootfs();
        let view = RootfsView::new(dir.path(), &[]);

        let resolved = view.resolve("/../../../etc/loop-to-root/bin", "/").unwrap();

        assert_eq!(resolved.guest, "/bin");
        assert_eq!(resolved.host, dir.path().join("bin"));
    }

    #[test]
    fn relative_symlink_resolves_from_link_dir() {
        let dir = rootfs();
        let view = RootfsView::new(dir.path(), &[]);

        let resolved = view.resolve("up", "/usr/bin").unwrap();

        assert_eq!(resolved.guest, "/etc");
    }

    #[test]
    fn missing_tail_is_appended() {
        let dir = rootfs();
        let view = RootfsView::new(dir.path(), &[]);

        let resolved = view.resolve("/usr/bin/up/new/dir", "/").unwrap();

        assert_eq!(resolved.guest, "/etc/new/dir");
        assert!(!resolved.exists);
    }

    #[test]
    fn bind_source_replaces_rootfs() {
        let dir = rootfs();
        let host = tempfile::tempdir().unwrap();
        fs::write(host.path().join("file"), "x").unwrap();
        let view = RootfsView::new(dir.path(), &[(host.path().to_path_buf(), "/data".into())]);

        let resolved = view.resolve("/data/file", "/").unwrap();

        assert_eq!(resolved.host, host.path().join("file"));
        assert!(resolved.exists);
    }

    #[test]
    fn find_executable_cases() {
        let dir = rootfs();
        let view = RootfsView::new(dir.path(), &[]);

        assert_eq!(
            view.find_executable("tool", "/usr/bin:/bin", "/").unwrap(),
            "/bin/tool"
        );
        assert_eq!(
            view.find_executable("alias", "/usr/bin", "/").unwrap(),
            "/bin/tool"
        );
        assert!(matches!(
            view.find_executable("data", "/bin", "/"),
            Err(ExecutorError::NotFound(_))
        ));
        assert!(matches!(
            view.find_executable("/bin/data", "/bin", "/"),
            Err(ExecutorError::NotExecutable(_))
        ));
        assert!(matches!(
            view.find_executable("/bin", "/bin", "/"),
            Err(ExecutorError::NotExecutable(_))
        ));
        assert!(matches!(
            view.find_executable("nothing", "/bin", "/"),
            Err(ExecutorError::NotFound(_))
        ));
        assert!(matches!(
            view.find_executable("./tool", "/usr/bin", "/bin"),
            Ok(path) if path == "/bin/tool"
        ));
    }

    #[test]
    fn working_dir_is_created() {
        let dir = rootfs();
        let view = RootfsView::new(dir.path(), &[]);

        view.ensure_working_dir("/usr/bin/up/app").unwrap();

        assert!(dir.path().join("etc/app").is_dir());
        assert!(matches!(
            view.ensure_working_dir("/bin/tool"),
            Err(ExecutorError::InvalidWorkingDir(_))
        ));
    }

    #[test]
    fn mount_point_file_is_created() {
        let dir = rootfs();
        let view = RootfsView::new(dir.path(), &[]);

        view.ensure_mount_point("/etc/hostname", false).unwrap();
        view.ensure_mount_point("/dev/shm", true).unwrap();

        assert!(dir.path().join("etc/hostname").is_file());
        assert!(dir.path().join("dev/shm").is_dir());
    }
}
