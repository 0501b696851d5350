//! The state directory: created private to the user running sidewhale,
//! and locked so that two servers never share one.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};

/// Creates the state directory with mode 0700 and takes its lock.
///
/// The directory holds unpacked layers with setuid files, container
/// environments and logs, so no other user may enter it. The returned lock
/// is held until it is dropped, at exit.
pub fn prepare(dir: &Path) -> anyhow::Result<Flock<File>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("failed to create state directory {}", dir.display()))?;
    std::fs::set_permissions(dir, Permissions::from_mode(0o700))
        .with_context(|| format!("failed to make state directory {} private", dir.display()))?;

    let path = dir.join("sidewhale.pid");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("failed to open {}", path.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, _)) => {
            let mut owner = String::new();
            let _ = file.read_to_string(&mut owner);
            anyhow::bail!(
                "state directory {} is in use by another sidewhale (pid {}); stop it or choose \
                 another --state-dir",
                dir.display(),
                owner.trim()
            );
        }
    };
    lock.set_len(0)?;
    lock.rewind()?;
    writeln!(lock, "{}", std::process::id())?;
    Ok(lock)
}
