//! Integration tests of the bubblewrap executor against Debian's bwrap
//! and nsenter and a busybox rootfs. They pass as root and as an
//! unprivileged user where user namespaces are allowed.

mod common;

use sidewhale_core::Probe;
use sidewhale_executors::{BubblewrapExecutor, BubblewrapOptions};

fn executor() -> BubblewrapExecutor {
    BubblewrapExecutor::new(BubblewrapOptions::default())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

// bwrap 0.8.0 always sets PWD. As root, containers map every id; as
// another user, bwrap maps the main process's user alone.
crate::executor_suite!(executor(), sets_pwd = true, switches_users = is_root());

#[tokio::test]
async fn probe_finds_bwrap() {
    assert_eq!(executor().probe().await, Probe::Available);
}

#[tokio::test]
async fn probe_reports_missing_binary() {
    let executor = BubblewrapExecutor::new(BubblewrapOptions {
        bwrap_path: Some("/nonexistent/bwrap".into()),
        ..BubblewrapOptions::default()
    });

    let Probe::Unavailable(reason) = executor.probe().await else {
        panic!("a missing bwrap binary was reported available");
    };
    assert!(reason.contains("apt-get install bubblewrap"), "{reason}");
}

#[tokio::test]
async fn main_process_is_pid_2() {
    let test = container(&sh("echo $$"));

    let finished = finish(executor().start(&test.spec).await.unwrap()).await;

    assert_eq!(finished.stdout, "2\n");
}

#[tokio::test]
async fn exec_runs_in_given_dir() {
    let test = container(&["sleep", "1000"]);
    let executor = executor();
    let main = executor.start(&test.spec).await.unwrap();
    let mut exec_process = process(&["sh", "-c", "id -u; pwd"]);
    exec_process.working_dir = "/home/app".into();

    let exec = executor.exec(&test.spec, &exec_process).await.unwrap();
    let finished = finish(exec).await;

    assert_eq!(finished.stdout, "0\n/home/app\n", "{}", finished.stderr);
    executor.cleanup(&test.spec).await.unwrap();
    finish(main).await;
}

#[tokio::test]
async fn exec_as_other_user_matches_privileges() {
    let test = container(&["sleep", "1000"]);
    let executor = executor();
    let main = executor.start(&test.spec).await.unwrap();
    std::fs::write(
        test.rootfs().join("etc/group"),
        "root:x:0:\napp:x:1002:\nextra:x:3000:app\n",
    )
    .unwrap();
    let mut exec_process = process(&["sh", "-c", "id -u; id -g; id -G"]);
    exec_process.user = "app".into();

    let result = executor.exec(&test.spec, &exec_process).await;

    if is_root() {
        let finished = finish(result.unwrap()).await;
        assert_eq!(
            finished.stdout, "1001\n1002\n1002 3000\n",
            "{}",
            finished.stderr
        );
    } else {
        assert!(
            matches!(&result, Err(ExecutorError::Other(message)) if message.contains("maps only")),
            "{:?}",
            result.err()
        );
    }
    executor.cleanup(&test.spec).await.unwrap();
    finish(main).await;
}

#[tokio::test]
async fn user_gets_supplementary_groups() {
    if !is_root() {
        eprintln!("skipped: bwrap maps a single group id here");
        return;
    }
    let mut test = container(&sh("id -u; id -g; id -G"));
    std::fs::write(
        test.rootfs().join("etc/group"),
        "root:x:0:\napp:x:1002:\nextra:x:3000:app\n",
    )
    .unwrap();
    test.spec.process.user = "app".into();

    let finished = finish(executor().start(&test.spec).await.unwrap()).await;

    assert_eq!(
        finished.stdout, "1001\n1002\n1002 3000\n",
        "{}",
        finished.stderr
    );
}

#[tokio::test]
async fn exec_as_root_has_capabilities() {
    if !is_root() {
        eprintln!("skipped: bwrap maps a single user id here");
        return;
    }
    let mut test = container(&["sleep", "1000"]);
    test.spec.process.user = "app".into();
    let executor = executor();
    let main = executor.start(&test.spec).await.unwrap();
    let mut exec_process = process(&[
        "sh",
        "-c",
        "touch /f && chown 1001:1002 /f && stat -c '%u %g' /f",
    ]);
    exec_process.user = "root".into();

    let finished = finish(executor.exec(&test.spec, &exec_process).await.unwrap()).await;

    assert_eq!(finished.stdout, "1001 1002\n", "{}", finished.stderr);
    executor.cleanup(&test.spec).await.unwrap();
    finish(main).await;
}
