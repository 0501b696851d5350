//! Integration tests of the chroot executor with a busybox rootfs. They
//! need root; as another user only the probe test runs, and the others
//! return early.

mod common;

use sidewhale_core::Probe;
use sidewhale_executors::ChrootExecutor;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Returns the executor, or ends the calling test early when not root.
macro_rules! executor_or_skip {
    () => {{
        if !is_root() {
            eprintln!("skipped: the chroot executor needs root");
            return;
        }
        ChrootExecutor::new()
    }};
}

crate::executor_suite!(executor_or_skip!(), sets_pwd = false, switches_users = true);

#[tokio::test]
async fn probe_matches_privileges() {
    let probe = ChrootExecutor::new().probe().await;

    if is_root() {
        assert_eq!(probe, Probe::Available);
    } else {
        assert!(
            matches!(&probe, Probe::Unavailable(reason) if reason.contains("requires root")),
            "{probe:?}"
        );
    }
}

#[tokio::test]
async fn supplementary_groups_come_from_image() {
    let executor = executor_or_skip!();
    let test = container(&["id", "-G"]);
    std::fs::write(
        test.rootfs().join("etc/group"),
        "root:x:0:\napp:x:1002:\nstaff:x:50:app\n",
    )
    .unwrap();
    let mut spec = test.spec.clone();
    spec.process.user = "app".into();

    let finished = finish(executor.start(&spec).await.unwrap()).await;

    assert_eq!(finished.stdout, "1002 50\n", "{}", finished.stderr);
}

#[tokio::test]
async fn exec_runs_as_given_user_and_dir() {
    let executor = executor_or_skip!();
    let test = container(&["sleep", "1000"]);
    let main = executor.start(&test.spec).await.unwrap();
    let mut exec_process = process(&["sh", "-c", "id -u; pwd"]);
    exec_process.user = "app".into();
    exec_process.working_dir = "/home/app".into();

    let exec = executor.exec(&test.spec, &exec_process).await.unwrap();
    let finished = finish(exec).await;

    assert_eq!(finished.stdout, "1001\n/home/app\n", "{}", finished.stderr);
    executor.cleanup(&test.spec).await.unwrap();
    finish(main).await;
}

#[tokio::test]
async fn numeric_user_needs_no_passwd_entry() {
    let executor = executor_or_skip!();
    let mut test = container(&sh("id -u; id -g; echo HOME=$HOME"));
    test.spec.process.user = "1000:1000".into();

    let finished = finish(executor.start(&test.spec).await.unwrap()).await;

    assert_eq!(
        finished.stdout, "1000\n1000\nHOME=/\n",
        "{}",
        finished.stderr
    );
}
