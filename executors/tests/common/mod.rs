//! A tiny busybox rootfs and helpers for running the proot executor in
//! integration tests.
//!
//! The rootfs is built from `/bin/busybox` of Debian's `busybox-static`
//! package (`apt-get install busybox-static`), which is statically linked
//! and so runs in an otherwise empty rootfs.

#![allow(dead_code)]

pub mod suite;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sidewhale_core::{ContainerSpec, ExitStatus, Mount, NetworkNamespace, Process, ProcessSpec};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const BUSYBOX: &str = "/bin/busybox";

const APPLETS: &[&str] = &[
    "cat", "chown", "echo", "env", "hostname", "id", "kill", "ls", "mkdir", "nc", "pwd", "readlink",
    "setsid", "sh", "sleep", "stat", "stty", "su", "test", "touch", "tty", "true",
];

/// How long any single wait in a test may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A container directory: rootfs, runtime dir and the files the server
/// would mount.
pub struct TestContainer {
    pub dir: tempfile::TempDir,
    pub spec: ContainerSpec,
}

impl TestContainer {
    pub fn rootfs(&self) -> &Path {
        &self.spec.rootfs
    }

    pub fn shm(&self) -> PathBuf {
        self.dir.path().join("shm")
    }
}

/// Builds a busybox rootfs with users `root` (0) and `app` (1001:1002) and
/// a container spec running `argv` in it, with the mounts the server
/// always provides.
/// Returns a fresh 64-hex-digit container id. Tests run in parallel, and
/// executors track processes by container id, so a shared id would let
/// one test's cleanup kill another test's processes.
fn unique_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let number = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:016x}{:048x}", std::process::id(), number)
}

pub fn container(argv: &[&str]) -> TestContainer {
    let dir = tempfile::Builder::new()
        .prefix("swx")
        .tempdir()
        .expect("create temp dir");
    let rootfs = dir.path().join("rootfs");
    build_rootfs(&rootfs);

    let runtime_dir = dir.path().join("run");
    fs::create_dir(&runtime_dir).expect("create runtime dir");
    let mounts = server_mounts(dir.path());

    let spec = ContainerSpec {
        id: unique_id(),
        rootfs,
        runtime_dir,
        hostname: "0123456789ab".into(),
        process: process(argv),
        mounts,
        network: None,
        port_relocation: None,
    };
    TestContainer { dir, spec }
}

pub fn process(argv: &[&str]) -> ProcessSpec {
    ProcessSpec {
        argv: argv.iter().map(|arg| arg.to_string()).collect(),
        env: vec!["PATH=/bin".into()],
        ..ProcessSpec::default()
    }
}

fn build_rootfs(rootfs: &Path) {
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} is missing: apt-get install busybox-static"
    );
    for dir in [
        "bin", "etc", "proc", "dev", "sys", "tmp", "root", "home/app",
    ] {
        fs::create_dir_all(rootfs.join(dir)).expect("create rootfs dir");
    }
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777))
        .expect("chmod /tmp");

    fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
    for applet in APPLETS {
        symlink("busybox", rootfs.join("bin").join(applet)).expect("link applet");
    }

    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1001:1002:app:/home/app:/bin/sh\n",
    )
    .expect("write passwd");
    fs::write(rootfs.join("etc/group"), "root:x:0:\napp:x:1002:\n").expect("write group");
    fs::write(rootfs.join("etc/not-a-program"), "").expect("write plain file");
}

fn server_mounts(dir: &Path) -> Vec<Mount> {
    let files = [
        ("hosts", "/etc/hosts", "127.0.0.1 localhost\n"),
        ("hostname", "/etc/hostname", "0123456789ab\n"),
        ("resolv.conf", "/etc/resolv.conf", "nameserver 127.0.0.1\n"),
    ];
    let mut mounts: Vec<Mount> = files
        .iter()
        .map(|(name, destination, content)| {
            let source = dir.join(name);
            fs::write(&source, content).expect("write mounted file");
            Mount {
                source,
                destination: destination.to_string(),
                read_only: false,
            }
        })
        .collect();

    let shm = dir.join("shm");
    fs::create_dir(&shm).expect("create shm dir");
    mounts.push(Mount {
        source: shm,
        destination: "/dev/shm".into(),
        read_only: false,
    });
    mounts
}

/// The collected result of a finished process.
pub struct Finished {
    pub stdout: String,
    pub stderr: String,
    pub status: ExitStatus,
}

/// Reads both streams to the end and waits for the exit status.
pub async fn finish(process: Process) -> Finished {
    let Process {
        stdout,
        stderr,
        exit,
        stdin,
        ..
    } = process;
    drop(stdin);

    let stdout = read_all(stdout);
    let stderr = async move {
        match stderr {
            Some(stderr) => read_all(stderr).await,
            None => String::new(),
        }
    };
    let run = async { tokio::join!(stdout, stderr, exit) };
    let (stdout, stderr, status) = tokio::time::timeout(TIMEOUT, run)
        .await
        .expect("process did not finish in time");

    Finished {
        stdout,
        stderr,
        status,
    }
}

pub async fn read_all(mut reader: impl AsyncRead + Unpin) -> String {
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .await
        .expect("read process output");
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Reads from `reader` until the output contains `marker`; returns what
/// was read.
pub async fn read_until(reader: &mut (impl AsyncRead + Unpin), marker: &str) -> String {
    let mut output = Vec::new();
    let read = async {
        let mut buffer = [0u8; 1024];
        while !String::from_utf8_lossy(&output).contains(marker) {
            let count = reader.read(&mut buffer).await.expect("read output");
            assert!(count > 0, "output ended before {marker:?}");
            output.extend_from_slice(&buffer[..count]);
        }
    };
    tokio::time::timeout(TIMEOUT, read)
        .await
        .unwrap_or_else(|_| panic!("no {marker:?} in output in time"));
    String::from_utf8_lossy(&output).into_owned()
}

/// Returns whether a process with this host pid exists and is not a
/// zombie.
pub fn is_running(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Returns a descendant of `pid` whose command name is `name`, searching
/// `/proc` for up to `TIMEOUT`. A daemon started with `setsid` stays a
/// descendant until its parent exits.
pub fn descendant_named(pid: i32, name: &str) -> Option<i32> {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::time::Instant::now() < deadline {
        let mut tree = vec![pid];
        let mut index = 0;
        while index < tree.len() {
            let parent = tree[index];
            index += 1;
            for child in children(parent) {
                let comm = fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
                if comm.trim() == name {
                    return Some(child);
                }
                tree.push(child);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// A network namespace kept alive by a `sleep` that `unshare(1)` started
/// in it, as the server's holder process keeps a container's. Without root it
/// is owned by a new user namespace, as the server's is then. Dropping it
/// kills the `sleep`.
pub struct NetworkHolder {
    child: std::process::Child,
    user_namespace: bool,
}

impl NetworkHolder {
    pub fn spawn() -> NetworkHolder {
        let user_namespace = !nix::unistd::geteuid().is_root();
        let mut command = std::process::Command::new("unshare");
        if user_namespace {
            command.args(["--user", "--map-root-user"]);
        }
        command.args(["--net", "sleep", "1000"]);
        let child = command.spawn().expect("run unshare (util-linux)");
        let holder = NetworkHolder {
            child,
            user_namespace,
        };

        let own = fs::read_link("/proc/self/ns/net").expect("read own network namespace");
        let deadline = std::time::Instant::now() + TIMEOUT;
        while holder.link() == own {
            assert!(
                std::time::Instant::now() < deadline,
                "unshare did not enter a new network namespace"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        holder
    }

    pub fn namespace(&self) -> NetworkNamespace {
        NetworkNamespace {
            holder_pid: self.child.id(),
            user_namespace: self.user_namespace,
        }
    }

    /// Returns the target of `/proc/PID/ns/net`, such as `net:[4026532301]`.
    pub fn link(&self) -> PathBuf {
        fs::read_link(format!("/proc/{}/ns/net", self.child.id())).unwrap_or_default()
    }
}

impl Drop for NetworkHolder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
