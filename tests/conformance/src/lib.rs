//! Harness of the conformance tests: one Docker Engine API server per test
//! binary, reached by bollard and testcontainers-rs.
//!
//! The first call to [`server`] starts sidewhale as `tests/e2e/conftest.py`
//! does: the binary from `SIDEWHALE_BIN` (default
//! `<workspace>/target/debug/sidewhale`) on a free loopback port, with a
//! temporary state directory and the test registry of `tests/registry.sh`
//! (`SIDEWHALE_TEST_MIRROR`, default `http://127.0.0.1:5000`) as its Docker
//! Hub mirror. `SIDEWHALE_TEST_USER` runs it as that user through `runuser`,
//! `SIDEWHALE_TEST_EXECUTOR` picks its default executor and
//! `SIDEWHALE_TEST_KEEP` keeps its state directory.
//!
//! `SIDEWHALE_TEST_DOCKER_HOST=unix:///PATH` or `tcp://127.0.0.1:PORT`
//! points the tests at a Docker Engine that you started yourself instead, to
//! check that the expected results are what Docker gives.

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bollard::Docker;

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const LOG_TAIL_LINES: usize = 40;

/// The Docker Engine API server that the tests of this binary use.
pub struct Server {
    /// Address in `DOCKER_HOST` syntax: `tcp://127.0.0.1:PORT` or `unix:///PATH`.
    pub docker_host: String,
    /// sidewhale's log file, or `None` for an external Docker Engine.
    pub log_path: Option<PathBuf>,
}

impl Server {
    /// Returns the last lines of sidewhale's log, or a note for an external server.
    pub fn log_tail(&self) -> String {
        let Some(path) = &self.log_path else {
            return format!("(external server {}, no log)", self.docker_host);
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        lines[start..].join("\n")
    }

    /// Connects a new bollard client, negotiated down to the server's API version.
    pub async fn docker(&self) -> Docker {
        let client = self.docker_unnegotiated();
        client
            .negotiate_version()
            .await
            .unwrap_or_else(|error| panic!("GET /version on {} failed: {error}", self.docker_host))
    }

    /// Connects a new bollard client that speaks bollard's own API version.
    pub fn docker_unnegotiated(&self) -> Docker {
        Docker::connect_with_host(&self.docker_host)
            .unwrap_or_else(|error| panic!("invalid docker host {}: {error}", self.docker_host))
    }
}

/// The sidewhale process and the files to remove when the test binary exits.
struct Owned {
    child: Child,
    root: PathBuf,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static OWNED: Mutex<Option<Owned>> = Mutex::new(None);

/// Runs a test body on the runtime that all tests of this binary share.
///
/// testcontainers-rs keeps one Docker client for every test of the process,
/// and that client's connections live on the runtime that created it. With a
/// runtime per test (`#[tokio::test]`) a finished test would take them down
/// under a test that still runs.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("building the tokio runtime failed")
        })
        .block_on(future)
}

/// Returns the server of this test binary, starting sidewhale on first use.
///
/// It also sets `DOCKER_HOST` in this process, because testcontainers-rs
/// reads it and would otherwise try `/var/run/docker.sock`.
pub fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        let server = match std::env::var("SIDEWHALE_TEST_DOCKER_HOST") {
            Ok(host) if !host.is_empty() => Server {
                docker_host: host,
                log_path: None,
            },
            _ => start_sidewhale(),
        };
        // Set while every other test thread waits in get_or_init, so no
        // thread of this harness reads the environment at the same time.
        std::env::set_var("DOCKER_HOST", &server.docker_host);
        std::env::set_var("TESTCONTAINERS_RYUK_DISABLED", "true");
        install_log_on_panic(server.log_path.clone());
        server
    })
}

/// Prints the tail of sidewhale's log after each panic, so a failed test's
/// output shows what the server did.
fn install_log_on_panic(log_path: Option<PathBuf>) {
    let Some(log_path) = log_path else { return };
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        let server = Server {
            docker_host: String::new(),
            log_path: Some(log_path.clone()),
        };
        eprintln!(
            "--- last {LOG_TAIL_LINES} lines of {}\n{}",
            log_path.display(),
            server.log_tail()
        );
    }));
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn start_sidewhale() -> Server {
    let binary = std::env::var_os("SIDEWHALE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/sidewhale"));
    assert!(
        binary.is_file(),
        "{} is missing; build it with `cargo build -p sidewhale` or set SIDEWHALE_BIN",
        binary.display()
    );
    let mirror = std::env::var("SIDEWHALE_TEST_MIRROR")
        .unwrap_or_else(|_| "http://127.0.0.1:5000".to_string());
    check_registry(&mirror);

    let root = tempfile::Builder::new()
        .prefix("sw-conformance-")
        .tempdir()
        .expect("creating a temporary directory failed")
        .keep();
    let state_dir = root.join("state");
    std::fs::create_dir(&state_dir).expect("creating the state directory failed");
    let log_path = root.join("sidewhale.log");
    let log = std::fs::File::create(&log_path).expect("creating the log file failed");

    let port = free_port();
    let mut command = Vec::new();
    let mut home = std::env::var("HOME").unwrap_or_else(|_| "/root".to_string());
    let user = std::env::var("SIDEWHALE_TEST_USER").unwrap_or_default();
    if !user.is_empty() {
        let account = lookup_user(&user);
        for path in [&root, &state_dir, &log_path] {
            std::os::unix::fs::chown(path, Some(account.uid), Some(account.gid))
                .unwrap_or_else(|error| panic!("chown {} failed: {error}", path.display()));
        }
        home = account.home;
        command.extend(["runuser", "-u", user.as_str(), "--"].map(String::from));
    }
    command.push(binary.display().to_string());
    command.extend([
        "--listen".to_string(),
        format!("127.0.0.1:{port}"),
        "--state-dir".to_string(),
        state_dir.display().to_string(),
        "--registry-mirror".to_string(),
        mirror,
    ]);
    if let Ok(executor) = std::env::var("SIDEWHALE_TEST_EXECUTOR") {
        if !executor.is_empty() {
            command.extend(["--executor".to_string(), executor]);
        }
    }

    let child = Command::new(&command[0])
        .args(&command[1..])
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        )
        .env("HOME", home)
        .env(
            "SIDEWHALE_LOG",
            std::env::var("SIDEWHALE_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("duplicating the log file failed"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|error| panic!("starting {command:?} failed: {error}"));
    *OWNED.lock().unwrap() = Some(Owned { child, root });
    // SAFETY: stop_at_exit is an extern "C" fn that never unwinds.
    unsafe { libc::atexit(stop_at_exit) };

    let server = Server {
        docker_host: format!("tcp://127.0.0.1:{port}"),
        log_path: Some(log_path),
    };
    wait_for_ping(port, &server);
    server
}

struct Account {
    uid: u32,
    gid: u32,
    home: String,
}

fn lookup_user(name: &str) -> Account {
    let c_name = CString::new(name).expect("SIDEWHALE_TEST_USER contains a NUL byte");
    // SAFETY: getpwnam returns NULL or a pointer to a static record, which is
    // copied out before any other call to the passwd functions.
    unsafe {
        let entry = libc::getpwnam(c_name.as_ptr());
        assert!(!entry.is_null(), "SIDEWHALE_TEST_USER={name}: no such user");
        let home = std::ffi::CStr::from_ptr((*entry).pw_dir)
            .to_string_lossy()
            .into_owned();
        Account {
            uid: (*entry).pw_uid,
            gid: (*entry).pw_gid,
            home,
        }
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port failed");
    listener
        .local_addr()
        .expect("reading the bound port failed")
        .port()
}

/// Sends a plain HTTP/1.0 GET and returns the status code and body.
fn http_get(address: &str, path: &str) -> std::io::Result<(u16, String)> {
    let socket_address = address
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{address} resolves to no address")))?;
    let mut stream = TcpStream::connect_timeout(&socket_address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("invalid HTTP response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or("");
    Ok((status, body.to_string()))
}

fn check_registry(mirror: &str) {
    let address = mirror
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    match http_get(&address, "/v2/") {
        Ok((200, _)) => {}
        Ok((status, body)) => panic!(
            "the test registry at {mirror} returned {status} for /v2/: {body}; run tests/registry.sh start"
        ),
        Err(error) => panic!(
            "the test registry at {mirror} is not reachable ({error}); run tests/registry.sh start"
        ),
    }
}

fn wait_for_ping(port: u16, server: &Server) {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(owned) = OWNED.lock().unwrap().as_mut() {
            if let Ok(Some(status)) = owned.child.try_wait() {
                panic!(
                    "sidewhale exited early with {status}:\n{}",
                    server.log_tail()
                );
            }
        }
        if let Ok((200, body)) = http_get(&format!("127.0.0.1:{port}"), "/_ping") {
            if body == "OK" {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "sidewhale did not answer /_ping within {} s:\n{}",
        START_TIMEOUT.as_secs(),
        server.log_tail()
    );
}

/// Stops sidewhale with SIGTERM, or SIGKILL after STOP_TIMEOUT, and removes
/// its temporary directory unless SIDEWHALE_TEST_KEEP is set.
extern "C" fn stop_at_exit() {
    let Ok(mut guard) = OWNED.lock() else { return };
    let Some(mut owned) = guard.take() else {
        return;
    };
    // runuser passes SIGTERM on to sidewhale.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(owned.child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        match owned.child.try_wait() {
            Ok(Some(_)) | Err(_) => break,
            Ok(None) if Instant::now() >= deadline => {
                eprintln!(
                    "sidewhale ignored SIGTERM for {} s, killing it",
                    STOP_TIMEOUT.as_secs()
                );
                let _ = owned.child.kill();
                let _ = owned.child.wait();
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    if std::env::var_os("SIDEWHALE_TEST_KEEP").is_some() {
        eprintln!("sidewhale state kept in {}", owned.root.display());
    } else {
        let _ = std::fs::remove_dir_all(&owned.root);
    }
}
