//! Integration tests of `PluginExecutor` with real plugin libraries: the
//! example plugin (proot behind the ABI) with a busybox rootfs, the
//! `faulty` test plugin whose calls panic or fail, and tiny C libraries
//! compiled here with `cc` for ABI mismatches.
//!
//! The Rust plugins are built with `cargo build` on first use, so the
//! first test waits for that build.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use common::{finish, is_running, process, read_until, TestContainer, TIMEOUT};
use sidewhale_core::{Executor, ExecutorError, ExitStatus, Probe};
use sidewhale_executors::PluginExecutor;
use tokio::io::AsyncWriteExt;

const EXAMPLE_PACKAGE: &str = "sidewhale-example-executor";
const FAULTY_PACKAGE: &str = "sidewhale-faulty-plugin";

/// Paths of the built plugin libraries by package name.
struct Built {
    example: PathBuf,
    faulty: PathBuf,
}

/// Builds the plugin crates once and returns their libraries, as cargo
/// reports them.
fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let output = Command::new(cargo)
            .current_dir(&workspace)
            .args(["build", "--message-format=json-render-diagnostics"])
            .args(["-p", EXAMPLE_PACKAGE, "-p", FAULTY_PACKAGE])
            .output()
            .expect("run cargo build");
        assert!(
            output.status.success(),
            "cargo build of the plugins failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );

        let mut example = None;
        let mut faulty = None;
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if message["reason"] != "compiler-artifact" {
                continue;
            }
            let library = message["filenames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|name| name.as_str())
                .find(|name| name.ends_with(".so"))
                .map(PathBuf::from);
            let package = message["package_id"].as_str().unwrap_or_default();
            if package.contains(EXAMPLE_PACKAGE) {
                example = library.or(example);
            } else if package.contains(FAULTY_PACKAGE) {
                faulty = library.or(faulty);
            }
        }
        Built {
            example: example.expect("cargo reported no library for the example plugin"),
            faulty: faulty.expect("cargo reported no library for the faulty plugin"),
        }
    })
}

fn example() -> PluginExecutor {
    PluginExecutor::load(&built().example).expect("load the example plugin")
}

fn faulty() -> PluginExecutor {
    PluginExecutor::load(&built().faulty).expect("load the faulty plugin")
}

/// Returns a test container with an id of its own. The example plugin is
/// loaded once per process and keeps one proot executor, which tracks
/// processes by container id, so tests running in parallel must not share
/// the fixed id of `common::container`.
fn container(argv: &[&str]) -> TestContainer {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let mut test = common::container(argv);
    let number = NEXT.fetch_add(1, Ordering::Relaxed);
    test.spec.id = format!("{:032x}{number:032x}", std::process::id());
    test
}

fn sh(script: &str) -> Vec<&str> {
    vec!["sh", "-c", script]
}

/// Compiles `source` into a shared library in `dir` with the system C
/// compiler and returns its path.
fn compile_c_library(dir: &Path, name: &str, source: &str) -> PathBuf {
    let source_path = dir.join(format!("{name}.c"));
    let library = dir.join(format!("lib{name}.so"));
    std::fs::write(&source_path, source).unwrap();
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source_path)
        .status()
        .expect("run cc, the C compiler (apt-get install gcc)");
    assert!(status.success(), "cc failed to compile {name}.c");
    library
}

#[tokio::test]
async fn example_loads_and_probes() {
    let executor = example();

    assert_eq!(executor.name(), "example");
    assert_eq!(executor.path(), built().example);
    assert!(executor.supports_network_namespace());
    assert_eq!(executor.probe().await, Probe::Available);
}

#[tokio::test]
async fn stdout_and_stderr_are_separate() {
    let test = container(&sh("echo out; echo err >&2"));

    let finished = finish(example().start(&test.spec).await.unwrap()).await;

    assert_eq!(finished.stdout, "out\n");
    assert_eq!(finished.stderr, "err\n");
    assert_eq!(finished.status, ExitStatus::Code(0));
}

#[tokio::test]
async fn exit_code_is_reported() {
    let test = container(&sh("exit 3"));

    let finished = finish(example().start(&test.spec).await.unwrap()).await;

    assert_eq!(finished.status, ExitStatus::Code(3));
}

#[tokio::test]
async fn prepare_and_cleanup_succeed() {
    let test = container(&["true"]);
    let executor = example();

    executor.prepare(&test.spec).await.unwrap();
    let finished = finish(executor.start(&test.spec).await.unwrap()).await;
    executor.cleanup(&test.spec).await.unwrap();
    executor.cleanup(&test.spec).await.unwrap();

    assert_eq!(finished.status, ExitStatus::Code(0));
}

#[tokio::test]
async fn sigterm_kills_main_process() {
    let test = container(&["sleep", "1000"]);
    let started = example().start(&test.spec).await.unwrap();
    let pid = started.control.pid().expect("main pid") as i32;

    started.control.signal(libc::SIGTERM).unwrap();
    let finished = finish(started).await;

    assert_eq!(finished.status.code(), 143);
    assert!(!is_running(pid));
}

#[tokio::test]
async fn pid_is_the_image_process() {
    let test = container(&["sleep", "1000"]);
    let started = example().start(&test.spec).await.unwrap();
    let pid = started.control.pid().expect("main pid");

    let cmdline = async {
        loop {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.starts_with(b"sleep\0") {
                return cmdline;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let cmdline = tokio::time::timeout(TIMEOUT, cmdline).await.unwrap();

    assert_eq!(cmdline, b"sleep\x001000\0");
    started.control.kill_all().unwrap();
    assert_eq!(finish(started).await.status.code(), 137);
}

#[tokio::test]
async fn trap_handles_signal() {
    let script = "trap 'echo got TERM; exit 7' TERM; echo ready; \
                  while true; do sleep 0.1; done";
    let test = container(&sh(script));
    let mut started = example().start(&test.spec).await.unwrap();

    let before = read_until(&mut started.stdout, "ready\n").await;
    started.control.signal(libc::SIGTERM).unwrap();
    let finished = finish(started).await;

    assert_eq!(before, "ready\n");
    assert_eq!(finished.stdout, "got TERM\n");
    assert_eq!(finished.status, ExitStatus::Code(7));
}

#[tokio::test]
async fn stdin_pipe_reaches_cat() {
    let mut test = container(&["cat"]);
    test.spec.process.open_stdin = true;
    let mut started = example().start(&test.spec).await.unwrap();

    let mut stdin = started.stdin.take().expect("stdin");
    stdin.write_all(b"hello\n").await.unwrap();
    drop(stdin);
    let finished = finish(started).await;

    assert_eq!(finished.stdout, "hello\n");
    assert_eq!(finished.status, ExitStatus::Code(0));
}

#[tokio::test]
async fn stdin_is_dev_null_without_open_stdin() {
    let test = container(&["cat"]);

    let started = example().start(&test.spec).await.unwrap();
    assert!(started.stdin.is_none());
    let finished = finish(started).await;

    assert_eq!(finished.stdout, "");
    assert_eq!(finished.status, ExitStatus::Code(0));
}

#[tokio::test]
async fn tty_merges_output_and_resizes() {
    let mut test = container(&sh("tty; echo ready; read line; stty size; echo err >&2"));
    test.spec.process.tty = true;
    test.spec.process.open_stdin = true;
    let mut started = example().start(&test.spec).await.unwrap();
    assert!(started.stderr.is_none());
    let before = read_until(&mut started.stdout, "ready").await;

    started.control.resize(33, 111).unwrap();
    let mut stdin = started.stdin.take().expect("stdin");
    stdin.write_all(b"go\r").await.unwrap();
    let finished = finish(started).await;

    assert!(before.starts_with("/dev/"), "{before:?}");
    assert!(finished.stdout.contains("33 111"), "{:?}", finished.stdout);
    assert!(
        finished.stdout.ends_with("err\r\n"),
        "{:?}",
        finished.stdout
    );
    assert_eq!(finished.status, ExitStatus::Code(0));
}

#[tokio::test]
async fn exec_sees_main_process_files() {
    let test = container(&sh("echo written > /tmp/marker; echo ready; sleep 1000"));
    let executor = example();
    let mut main = executor.start(&test.spec).await.unwrap();
    read_until(&mut main.stdout, "ready\n").await;

    let exec = executor
        .exec(
            &test.spec,
            &process(&["sh", "-c", "cat /tmp/marker; exit 4"]),
        )
        .await
        .unwrap();
    let finished = finish(exec).await;

    assert_eq!(finished.stdout, "written\n", "{}", finished.stderr);
    assert_eq!(finished.status, ExitStatus::Code(4));
    main.control.signal(libc::SIGKILL).unwrap();
    assert_eq!(finish(main).await.status.code(), 137);
}

#[tokio::test]
async fn exec_signal_is_reported() {
    let test = container(&["sleep", "1000"]);
    let executor = example();
    let main = executor.start(&test.spec).await.unwrap();

    let exec = executor
        .exec(&test.spec, &process(&["sleep", "1000"]))
        .await
        .unwrap();
    exec.control.signal(libc::SIGTERM).unwrap();
    let signalled = finish(exec).await.status;

    assert_eq!(signalled.code(), 143);
    executor.cleanup(&test.spec).await.unwrap();
    assert_eq!(finish(main).await.status.code(), 137);
}

#[tokio::test]
async fn kill_all_kills_daemon() {
    let test = container(&sh("setsid sleep 1000 & echo $!; wait"));
    let mut started = example().start(&test.spec).await.unwrap();

    read_until(&mut started.stdout, "\n").await;
    let pid = started.control.pid().unwrap() as i32;
    let daemon = common::descendant_named(pid, "sleep");
    started.control.kill_all().unwrap();
    let finished = finish(started).await;

    assert_eq!(finished.status.code(), 137);
    assert!(daemon.is_some_and(|daemon| !is_running(daemon)));
}

#[tokio::test]
async fn missing_command_is_not_found() {
    let test = container(&["no-such-program"]);

    let result = example().start(&test.spec).await;

    assert!(
        matches!(&result, Err(ExecutorError::NotFound(name)) if name == "no-such-program"),
        "{:?}",
        result.err()
    );
}

#[tokio::test]
async fn unknown_user_is_rejected() {
    let mut test = container(&["id"]);
    test.spec.process.user = "nobody".into();

    let result = example().start(&test.spec).await;

    assert!(
        matches!(&result, Err(ExecutorError::UnknownUser(name)) if name == "nobody"),
        "{:?}",
        result.err()
    );
}

#[tokio::test]
async fn signal_after_exit_is_ok() {
    let test = container(&["true"]);
    let started = example().start(&test.spec).await.unwrap();
    let control = started.control.clone();

    let finished = finish(started).await;

    assert_eq!(finished.status, ExitStatus::Code(0));
    assert!(control.signal(libc::SIGTERM).is_ok());
    assert!(control.kill_all().is_ok());
}

#[tokio::test]
async fn panic_in_start_fails_only_request() {
    let executor = faulty();
    let test = container(&["true"]);

    let Err(error) = executor.start(&test.spec).await else {
        panic!("start of the faulty plugin succeeded");
    };

    let message = error.to_string();
    assert!(message.contains("executor plugin faulty"), "{message}");
    assert!(message.contains("deliberate panic in start"), "{message}");
    // The process survived and the plugin still responds.
    assert_eq!(executor.probe().await, Probe::Available);
}

#[tokio::test]
async fn panics_in_exec_and_cleanup_are_errors() {
    let executor = faulty();
    let test = container(&["true"]);

    let exec = executor.exec(&test.spec, &process(&["true"])).await;
    let cleanup = executor.cleanup(&test.spec).await;

    let exec = exec.err().expect("exec succeeded").to_string();
    assert!(exec.contains("exec panicked"), "{exec}");
    assert!(exec.contains("out of bounds"), "{exec}");
    let cleanup = cleanup.expect_err("cleanup succeeded").to_string();
    assert!(
        cleanup.contains("cleanup panicked: deliberate panic"),
        "{cleanup}"
    );
}

#[tokio::test]
async fn plugin_io_error_keeps_errno() {
    let test = container(&["true"]);

    let result = faulty().prepare(&test.spec).await;

    let Err(ExecutorError::Io { operation, source }) = result else {
        panic!("prepare did not fail with an I/O error: {result:?}");
    };
    assert_eq!(operation, format!("prepare {}", test.spec.id));
    assert_eq!(source.raw_os_error(), Some(libc::ENOSPC));
}

#[test]
fn abi_mismatch_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let library = compile_c_library(
        dir.path(),
        "abi2",
        "struct table { unsigned int abi_version; };\n\
         static const struct table TABLE = { 2 };\n\
         const struct table *sidewhale_executor_plugin(unsigned int host) {\n\
             (void)host;\n\
             return &TABLE;\n\
         }\n",
    );

    let Err(error) = PluginExecutor::load(&library) else {
        panic!("a v2 plugin was loaded");
    };

    let expected = format!(
        "executor plugin {} speaks ABI v2, this sidewhale speaks v1",
        library.display()
    );
    assert!(error.to_string().starts_with(&expected), "{error}");
}

#[test]
fn library_without_entry_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let library = compile_c_library(dir.path(), "other", "int unrelated(void) { return 0; }\n");

    let Err(error) = PluginExecutor::load(&library) else {
        panic!("a library without the entry function was loaded");
    };

    let message = error.to_string();
    assert!(
        message.contains(&library.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains("does not export sidewhale_executor_plugin"),
        "{message}"
    );
}

#[test]
fn null_table_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let library = compile_c_library(
        dir.path(),
        "null",
        "const void *sidewhale_executor_plugin(unsigned int host) {\n\
             (void)host;\n\
             return 0;\n\
         }\n",
    );

    let Err(error) = PluginExecutor::load(&library) else {
        panic!("a plugin without a table was loaded");
    };

    assert!(error.to_string().contains("returned no table"), "{error}");
}

#[test]
fn non_library_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("libtext.so");
    std::fs::write(&path, "not an ELF file").unwrap();

    let Err(error) = PluginExecutor::load(&path) else {
        panic!("a text file was loaded");
    };

    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
}
