//! Integration tests of the proot executor against the real proot binary
//! and a busybox rootfs. They pass as root and as an unprivileged user.

mod common;

use std::time::Duration;

use common::{container, finish, is_running, process, read_until, TIMEOUT};
use sidewhale_core::{Executor, ExecutorError, ExitStatus, Probe};
use sidewhale_executors::{ProotExecutor, ProotOptions};
use tokio::io::AsyncWriteExt;

fn executor() -> ProotExecutor {
    ProotExecutor::new(ProotOptions::default())
}

fn sh(script: &str) -> Vec<&str> {
    vec!["sh", "-c", script]
}

#[tokio::test]
async fn probe_finds_proot() {
    assert_eq!(executor().probe().await, Probe::Available);
}

#[tokio::test]
async fn probe_reports_missing_binary() {
    let executor = ProotExecutor::new(ProotOptions {
        proot_path: Some("/nonexistent/proot".into()),
    });

    let Probe::Unavailable(reason) = executor.probe().await else {
        panic!("a missing proot binary was reported available");
    };
    assert!(reason.contains("apt-get install proot"), "{reason}");
}

#[tokio::test]
async fn stdout_and_stderr_are_separate() {
    let test = container(&sh("echo out; echo err >&2"));

    let finished = finish(executor().start(&test.spec).await.unwrap()).await;

    assert_eq!(finished.stdout, "out\n");
    assert_eq!(finished.stderr, "err\n");
    assert_eq!(finished.status, ExitStatus::Code(0));
}

#[tokio::test]
async fn exit_code_is_reported() {
    let test = container(&sh("exit 3"));

    let finished = finish(executor().start(&test.spec).await.unwrap()).await;

    assert_eq!(finished.status, ExitStatus::Code(3));
}

#[tokio::test]
async fn sigterm_kills_main_process() {
    let test = container(&["sleep", "1000"]);
    let started = executor().start(&test.spec).await.unwrap();
    let pid = started.control.pid().expect("tracee pid") as i32;

    started.control.signal(libc::SIGTERM).unwrap();
    let finished = finish(started).await;

    assert_eq!(finished.status, ExitStatus::Signal(libc::SIGTERM));
    assert_eq!(finished.status.code(), 143);
    assert!(!is_running(pid));
}

#[tokio::test]
async fn pid_is_the_image_process() {
    let test = container(&["sleep", "1000"]);
    let started = executor().start(&test.spec).await.unwrap();
    let pid = started.control.pid().expect("tracee pid");

    // The pid is known from proot's fork, before the exec of the image's
    // program, so wait for the exec to show.
    let cmdline = async {
        loop {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
            if cmdline.starts_with(b"sleep\0") {
                return cmdline;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let cmdline = tokio::time::timeout(TIMEOUT, cmdline).await.unwrap();

    assert_eq!(cmdline, b"sleep\x001000\0");
    started.control.kill_all().unwrap();
    assert_eq!(
        finish(started).await.status,
        ExitStatus::Signal(libc::SIGKILL)
    );
}

#[tokio::test]
async fn trap_handles_signal() {
    let script = "trap 'echo got TERM; exit 7' TERM; echo ready; \
                  while true; do sleep 0.1; done";
    let test = container(&sh(script));
    let mut started = executor().start(&test.spec).await.unwrap();

    let before = read_until(&mut started.stdout, "ready\n").await;
    started.control.signal(libc::SIGTERM).unwrap();
    let finished = finish(started).await;

    assert_eq!(before, "ready\n");
    assert_eq!(finished.stdout, "got TERM\n");
    assert_eq!(finished.status, ExitStatus::Code(7));
}

#[tokio::test]
async fn env_is_exactly_the_given_one() {
    let mut test = container(&["env"]);
    test.spec.process.env = vec!["PATH=/bin".into(), "FOO=bar baz".into(), "EMPTY=".into()];

    let finished = finish(executor().start(&test.spec).await.unwrap()).await;

    let mut lines: Vec<&str> = finished.stdout.lines().collect();
    lines.sort();
    // proot 5.1.0 always sets PWD to the working dir.
    assert_eq!(
        lines,
        vec!["EMPTY=", "FOO=bar baz", "HOME=/root", "PATH=/bin", "PWD=/"]
    );
}

#[tokio::test]
async fn env_gets_default_path() {
    let mut test = container(&["/bin/env"]);
    test.spec.process.env = vec![];

    let finished = finish(executor().start(&test.spec).await.unwrap()).await;

    assert!(
        finished
            .stdout
            .contains("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"),
        "{}",
        finished.stdout
    );
}

#[tokio::test]
async fn missing_working_dir_is_created() {
    let mut test = container(&["pwd"]);
    test.spec.process.working_dir = "/srv/app/data".into();

    let finished = finish(executor().start(&test.spec).await.unwrap()).await;

    assert_eq!(finished.stdout, "/srv/app/data\n");
    assert!(test.rootfs().join("srv/app/data").is_dir());
}

#[tokio::test]
async fn numeric_user_needs_no_passwd_entry() {
    let mut test = container(&sh("id; echo HOME=$HOME"));
    test.spec.process.user = "1000:1000".into();

    let finished = finish(executor().start(&test.spec).await.unwrap()).await;

    let first = finished.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("uid=1000 gid=1000"),
        "{}",
        finished.stdout
    );
    assert!(finished.stdout.contains("HOME=/\n"), "{}", finished.stdout);
}

#[tokio::test]
async fn named_user_comes_from_passwd() {
    let mut test = container(&sh("id; echo HOME=$HOME"));
    test.spec.process.user = "app".into();

    let finished = finish(executor().start(&test.spec).await.unwrap()).await;

    let first = finished.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("uid=1001(app) gid=1002(app)"),
        "{}",
        finished.stdout
    );
    assert!(
        finished.stdout.contains("HOME=/home/app\n"),
        "{}",
        finished.stdout
    );
}

#[tokio::test]
async fn root_user_is_fake_root() {
    let mut test = container(&["id", "-u"]);
    test.spec.process.user = "root".into();

    let finished = finish(executor().start(&test.spec).await.unwrap()).await;

    assert_eq!(finished.stdout, "0\n");
}

#[tokio::test]
async fn fake_root_drops_to_user_with_su() {
    let test = container(&[
        "su",
        "-s",
        "/bin/sh",
        "app",
        "-c",
        "id -u; touch /tmp/f; ls -n /tmp/f",
    ]);

    let finished = finish(executor().start(&test.spec).await.unwrap()).await;

    let lines: Vec<&str> = finished.stdout.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"1001"),
        "{}{}",
        finished.stdout,
        finished.stderr
    );
    assert!(
        lines.get(1).is_some_and(|line| line.contains(" 1001 ")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn unknown_user_is_rejected() {
    let mut test = container(&["id"]);
    test.spec.process.user = "nobody".into();

    let result = executor().start(&test.spec).await;

    assert!(matches!(result, Err(ExecutorError::UnknownUser(name)) if name == "nobody"));
}

#[tokio::test]
async fn command_is_found_on_path() {
    let mut test = container(&["echo", "found"]);
    test.spec.process.env = vec!["PATH=/nowhere:/bin".into()];

    let finished = finish(executor().start(&test.spec).await.unwrap()).await;

    assert_eq!(finished.stdout, "found\n");
}

#[tokio::test]
async fn missing_command_is_not_found() {
    let test = container(&["no-such-program"]);

    let result = executor().start(&test.spec).await;

    assert!(matches!(result, Err(ExecutorError::NotFound(name)) if name == "no-such-program"));
}

#[tokio::test]
async fn plain_file_is_not_executable() {
    let test = container(&["/etc/not-a-program"]);

    let result = executor().start(&test.spec).await;

    assert!(matches!(result, Err(ExecutorError::NotExecutable(_))));
}

#[tokio::test]
async fn kill_all_kills_daemon() {
    let test = container(&sh("setsid sleep 1000 & echo $!; wait"));
    let mut started = executor().start(&test.spec).await.unwrap();

    let output = read_until(&mut started.stdout, "\n").await;
    let daemon: i32 = output.trim().parse().unwrap();
    assert!(is_running(daemon));
    started.control.kill_all().unwrap();
    let finished = finish(started).await;

    assert_eq!(finished.status, ExitStatus::Signal(libc::SIGKILL));
    assert!(!is_running(daemon));
}

#[tokio::test]
async fn main_exit_kills_daemon() {
    let test = container(&sh("setsid sleep 1000 & echo $!; exit 5"));

    let finished = finish(executor().start(&test.spec).await.unwrap()).await;

    let daemon: i32 = finished.stdout.trim().parse().unwrap();
    assert_eq!(finished.status, ExitStatus::Code(5));
    assert!(!is_running(daemon));
}

#[tokio::test]
async fn exec_sees_main_process_files() {
    let test = container(&sh("echo written > /tmp/marker; echo ready; sleep 1000"));
    let executor = executor();
    let mut main = executor.start(&test.spec).await.unwrap();
    read_until(&mut main.stdout, "ready\n").await;

    let exec = executor
        .exec(&test.spec, &process(&["cat", "/tmp/marker"]))
        .await
        .unwrap();
    let finished = finish(exec).await;

    assert_eq!(finished.stdout, "written\n");
    assert_eq!(finished.status, ExitStatus::Code(0));
    main.control.signal(libc::SIGKILL).unwrap();
    assert_eq!(finish(main).await.status, ExitStatus::Signal(libc::SIGKILL));
}

#[tokio::test]
async fn exec_reports_missing_command() {
    let test = container(&["sleep", "1000"]);
    let executor = executor();
    let main = executor.start(&test.spec).await.unwrap();

    let result = executor.exec(&test.spec, &process(&["missing"])).await;

    assert!(matches!(result, Err(ExecutorError::NotFound(_))));
    executor.cleanup(&test.spec).await.unwrap();
    assert_eq!(finish(main).await.status, ExitStatus::Signal(libc::SIGKILL));
}

#[tokio::test]
async fn main_exit_stops_execs() {
    let test = container(&sh("echo ready; read line"));
    let executor = executor();
    let mut spec = test.spec.clone();
    spec.process.open_stdin = true;
    let mut main = executor.start(&spec).await.unwrap();
    read_until(&mut main.stdout, "ready\n").await;
    let exec = executor
        .exec(&spec, &process(&["sleep", "1000"]))
        .await
        .unwrap();
    let exec_pid = exec.control.pid().unwrap() as i32;

    let mut stdin = main.stdin.take().unwrap();
    stdin.write_all(b"go\n").await.unwrap();
    let main_status = finish(main).await.status;
    let exec_status = finish(exec).await.status;

    assert_eq!(main_status, ExitStatus::Code(0));
    assert_eq!(exec_status, ExitStatus::Signal(libc::SIGKILL));
    assert!(!is_running(exec_pid));
}

#[tokio::test]
async fn cleanup_is_idempotent() {
    let test = container(&["sleep", "1000"]);
    let executor = executor();
    let main = executor.start(&test.spec).await.unwrap();

    executor.cleanup(&test.spec).await.unwrap();
    executor.cleanup(&test.spec).await.unwrap();

    assert_eq!(finish(main).await.status, ExitStatus::Signal(libc::SIGKILL));
}

#[tokio::test]
async fn tty_merges_output_on_a_pty() {
    let mut test = container(&sh("tty; echo err >&2"));
    test.spec.process.tty = true;

    let started = executor().start(&test.spec).await.unwrap();
    assert!(started.stderr.is_none());
    let finished = finish(started).await;

    assert!(
        finished.stdout.starts_with("/dev/pts/"),
        "{:?}",
        finished.stdout
    );
    assert!(
        finished.stdout.ends_with("err\r\n"),
        "{:?}",
        finished.stdout
    );
    assert_eq!(finished.status, ExitStatus::Code(0));
}

#[tokio::test]
async fn tty_resize_sets_window_size() {
    let mut test = container(&sh("echo ready; read line; stty size"));
    test.spec.process.tty = true;
    test.spec.process.open_stdin = true;
    let mut started = executor().start(&test.spec).await.unwrap();
    read_until(&mut started.stdout, "ready").await;

    started.control.resize(33, 111).unwrap();
    let mut stdin = started.stdin.take().unwrap();
    stdin.write_all(b"go\r").await.unwrap();
    let finished = finish(started).await;

    assert!(finished.stdout.contains("33 111"), "{:?}", finished.stdout);
}

#[tokio::test]
async fn stdin_pipe_reaches_cat() {
    let mut test = container(&["cat"]);
    test.spec.process.open_stdin = true;
    let mut started = executor().start(&test.spec).await.unwrap();

    let mut stdin = started.stdin.take().unwrap();
    stdin.write_all(b"hello\n").await.unwrap();
    drop(stdin);
    let finished = finish(started).await;

    assert_eq!(finished.stdout, "hello\n");
    assert_eq!(finished.status, ExitStatus::Code(0));
}

#[tokio::test]
async fn stdin_is_dev_null_without_open_stdin() {
    let test = container(&["cat"]);

    let finished = finish(executor().start(&test.spec).await.unwrap()).await;

    assert_eq!(finished.stdout, "");
    assert_eq!(finished.status, ExitStatus::Code(0));
}

#[tokio::test]
async fn server_mounts_are_visible() {
    let test = container(&sh(
        "cat /etc/hostname; echo shared > /dev/shm/file; ls /dev/null",
    ));

    let finished = finish(executor().start(&test.spec).await.unwrap()).await;

    assert_eq!(
        finished.stdout, "0123456789ab\n/dev/null\n",
        "{}",
        finished.stderr
    );
    let shared = std::fs::read_to_string(test.shm().join("file")).unwrap();
    assert_eq!(shared, "shared\n");
}

#[tokio::test]
async fn signal_after_exit_is_ok() {
    let test = container(&["true"]);
    let started = executor().start(&test.spec).await.unwrap();
    let control = started.control.clone();

    let finished = finish(started).await;
    tokio::time::sleep(Duration::from_millis(10)).await;

    assert_eq!(finished.status, ExitStatus::Code(0));
    assert!(control.signal(libc::SIGTERM).is_ok());
    assert!(control.kill_all().is_ok());
}

#[tokio::test]
async fn exec_runs_as_given_user_and_dir() {
    let test = container(&["sleep", "1000"]);
    let executor = executor();
    let main = executor.start(&test.spec).await.unwrap();
    let mut exec_process = process(&["sh", "-c", "id -u; pwd"]);
    exec_process.user = "app".into();
    exec_process.working_dir = "/home/app".into();

    let exec = executor.exec(&test.spec, &exec_process).await.unwrap();
    let finished = tokio::time::timeout(TIMEOUT, finish(exec)).await.unwrap();

    assert_eq!(finished.stdout, "1001\n/home/app\n");
    executor.cleanup(&test.spec).await.unwrap();
    finish(main).await;
}
