//! Integration tests that every namespace executor (bubblewrap, chroot)
//! must pass, as a macro over an expression that builds the executor.
//! `executors/tests/proot.rs` covers the same behaviour for proot, with
//! proot's own exceptions.

#[macro_export]
macro_rules! executor_suite {
    // `$sets_pwd`: whether the executor adds `PWD` to the environment.
    // `$switches_users`: whether a root process in the container can take
    // any other user's ids.
    ($executor:expr, sets_pwd = $sets_pwd:expr, switches_users = $switches_users:expr) => {
        use std::time::Duration;

        use common::{
            container, finish, is_running, process, read_until, NetworkHolder, TIMEOUT,
        };
        use sidewhale_core::{Executor, ExecutorError, ExitStatus};
        use tokio::io::AsyncWriteExt;

        fn sh(script: &str) -> Vec<&str> {
            vec!["sh", "-c", script]
        }

        #[tokio::test]
        async fn stdout_and_stderr_are_separate() {
            let test = container(&sh("echo out; echo err >&2"));

            let finished = finish($executor.start(&test.spec).await.unwrap()).await;

            assert_eq!(finished.stdout, "out\n");
            assert_eq!(finished.stderr, "err\n");
            assert_eq!(finished.status, ExitStatus::Code(0));
        }

        #[tokio::test]
        async fn exit_code_is_reported() {
            let test = container(&sh("exit 3"));

            let finished = finish($executor.start(&test.spec).await.unwrap()).await;

            assert_eq!(finished.status, ExitStatus::Code(3));
        }

        #[tokio::test]
        async fn sigterm_kills_main_process() {
            let test = container(&["sleep", "1000"]);
            let started = $executor.start(&test.spec).await.unwrap();
            let pid = started.control.pid().expect("main pid") as i32;

            started.control.signal(libc::SIGTERM).unwrap();
            let finished = finish(started).await;

            assert_eq!(finished.status.code(), 143);
            assert!(!is_running(pid));
        }

        #[tokio::test]
        async fn pid_is_the_image_process() {
            let test = container(&["sleep", "1000"]);
            let executor = $executor;
            let started = executor.start(&test.spec).await.unwrap();
            let pid = started.control.pid().expect("main pid");

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
            assert_eq!(finish(started).await.status.code(), 137);
        }

        #[tokio::test]
        async fn trap_handles_signal() {
            let script = "trap 'echo got TERM; exit 7' TERM; echo ready; \
                          while true; do sleep 0.1; done";
            let test = container(&sh(script));
            let mut started = $executor.start(&test.spec).await.unwrap();

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
            test.spec.process.env =
                vec!["PATH=/bin".into(), "FOO=bar baz".into(), "EMPTY=".into()];

            let finished = finish($executor.start(&test.spec).await.unwrap()).await;

            let mut lines: Vec<&str> = finished.stdout.lines().collect();
            lines.sort();
            let mut expected = vec!["EMPTY=", "FOO=bar baz", "HOME=/root", "PATH=/bin"];
            if $sets_pwd {
                expected.push("PWD=/");
            }
            assert_eq!(lines, expected);
        }

        #[tokio::test]
        async fn missing_working_dir_is_created() {
            let mut test = container(&["pwd"]);
            test.spec.process.working_dir = "/srv/app/data".into();

            let finished = finish($executor.start(&test.spec).await.unwrap()).await;

            assert_eq!(finished.stdout, "/srv/app/data\n");
            assert!(test.rootfs().join("srv/app/data").is_dir());
        }

        #[tokio::test]
        async fn named_user_comes_from_passwd() {
            let mut test = container(&sh("id -u; id -g; echo HOME=$HOME"));
            test.spec.process.user = "app".into();

            let finished = finish($executor.start(&test.spec).await.unwrap()).await;

            assert_eq!(
                finished.stdout, "1001\n1002\nHOME=/home/app\n",
                "{}",
                finished.stderr
            );
        }

        #[tokio::test]
        async fn root_user_is_uid_zero() {
            let mut test = container(&["id", "-u"]);
            test.spec.process.user = "root".into();

            let finished = finish($executor.start(&test.spec).await.unwrap()).await;

            assert_eq!(finished.stdout, "0\n");
        }

        #[tokio::test]
        async fn root_chowns_and_drops_to_user() {
            if !$switches_users {
                eprintln!("skipped: this executor maps a single user id here");
                return;
            }
            // The entrypoints of the redis and postgres images do this:
            // they chown the data dir to the service's user, then switch
            // to that user.
            let script = "mkdir /data && chown 1001:1002 /data && \
                exec su app -c 'id -u; id -g; touch /data/file && stat -c \"%u %g\" /data/file'";
            let mut test = container(&sh(script));
            test.spec.process.user = "root".into();

            let finished = finish($executor.start(&test.spec).await.unwrap()).await;

            assert_eq!(finished.stdout, "1001\n1002\n1001 1002\n", "{}", finished.stderr);
            assert_eq!(finished.status, ExitStatus::Code(0));
            let metadata = std::fs::metadata(test.rootfs().join("data/file")).unwrap();
            assert_eq!(
                std::os::unix::fs::MetadataExt::uid(&metadata),
                1001,
                "the container's ids are the host's"
            );
        }

        #[tokio::test]
        async fn main_and_exec_join_network_namespace() {
            let holder = NetworkHolder::spawn();
            let mut test = container(&["sleep", "1000"]);
            test.spec.network = Some(holder.namespace());
            let executor = $executor;
            let main = executor.start(&test.spec).await.unwrap();
            let main_pid = main.control.pid().expect("main pid");
            let main_link = std::fs::read_link(format!("/proc/{main_pid}/ns/net")).unwrap();

            let exec = executor
                .exec(&test.spec, &process(&["readlink", "/proc/self/ns/net"]))
                .await
                .unwrap();
            let finished = finish(exec).await;

            assert_eq!(main_link, holder.link());
            assert_eq!(
                finished.stdout.trim_end(),
                holder.link().to_string_lossy(),
                "{}",
                finished.stderr
            );
            executor.cleanup(&test.spec).await.unwrap();
            finish(main).await;
        }

        #[tokio::test]
        async fn hostname_is_the_container_name() {
            let test = container(&["cat", "/proc/sys/kernel/hostname"]);

            let finished = finish($executor.start(&test.spec).await.unwrap()).await;

            assert_eq!(finished.stdout, "0123456789ab\n", "{}", finished.stderr);
        }

        #[tokio::test]
        async fn unknown_user_is_rejected() {
            let mut test = container(&["id"]);
            test.spec.process.user = "nobody".into();

            let result = $executor.start(&test.spec).await;

            assert!(matches!(result, Err(ExecutorError::UnknownUser(name)) if name == "nobody"));
        }

        #[tokio::test]
        async fn command_is_found_on_path() {
            let mut test = container(&["echo", "found"]);
            test.spec.process.env = vec!["PATH=/nowhere:/bin".into()];

            let finished = finish($executor.start(&test.spec).await.unwrap()).await;

            assert_eq!(finished.stdout, "found\n");
        }

        #[tokio::test]
        async fn missing_command_is_not_found() {
            let test = container(&["no-such-program"]);

            let result = $executor.start(&test.spec).await;

            assert!(
                matches!(result, Err(ExecutorError::NotFound(name)) if name == "no-such-program")
            );
        }

        #[tokio::test]
        async fn plain_file_is_not_executable() {
            let test = container(&["/etc/not-a-program"]);

            let result = $executor.start(&test.spec).await;

            assert!(matches!(result, Err(ExecutorError::NotExecutable(_))));
        }

        #[tokio::test]
        async fn kill_all_kills_daemon() {
            let test = container(&sh("setsid sleep 1000 & echo $!; wait"));
            let mut started = $executor.start(&test.spec).await.unwrap();

            read_until(&mut started.stdout, "\n").await;
            let pid = started.control.pid().unwrap() as i32;
            let daemon = common::descendant_named(pid, "sleep");
            started.control.kill_all().unwrap();
            let finished = finish(started).await;

            assert_eq!(finished.status.code(), 137);
            assert!(daemon.is_some_and(|daemon| !is_running(daemon)));
        }

        #[tokio::test]
        async fn main_exit_kills_daemon() {
            let test = container(&sh("setsid sleep 1000 & sleep 0.2; exit 5"));
            let mut started = $executor.start(&test.spec).await.unwrap();
            let pid = started.control.pid().unwrap() as i32;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let daemon = common::descendant_named(pid, "sleep");

            let stdout = std::mem::replace(&mut started.stdout, Box::pin(tokio::io::empty()));
            drop(stdout);
            let finished = finish(started).await;

            assert_eq!(finished.status, ExitStatus::Code(5));
            let daemon = daemon.expect("daemon pid");
            let gone = async {
                while is_running(daemon) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            tokio::time::timeout(TIMEOUT, gone).await.expect("daemon still runs");
        }

        #[tokio::test]
        async fn exec_sees_main_process_files() {
            let test = container(&sh("echo written > /tmp/marker; echo ready; sleep 1000"));
            let executor = $executor;
            let mut main = executor.start(&test.spec).await.unwrap();
            read_until(&mut main.stdout, "ready\n").await;

            let exec = executor
                .exec(&test.spec, &process(&["sh", "-c", "cat /tmp/marker; hostname"]))
                .await
                .unwrap();
            let finished = finish(exec).await;

            assert_eq!(finished.stdout, "written\n0123456789ab\n", "{}", finished.stderr);
            assert_eq!(finished.status, ExitStatus::Code(0));
            main.control.signal(libc::SIGKILL).unwrap();
            assert_eq!(finish(main).await.status.code(), 137);
        }

        #[tokio::test]
        async fn exec_reports_exit_code_and_signal() {
            let test = container(&["sleep", "1000"]);
            let executor = $executor;
            let main = executor.start(&test.spec).await.unwrap();

            let exec = executor.exec(&test.spec, &process(&sh("exit 4"))).await.unwrap();
            let code = finish(exec).await.status;
            let exec = executor
                .exec(&test.spec, &process(&["sleep", "1000"]))
                .await
                .unwrap();
            exec.control.signal(libc::SIGTERM).unwrap();
            let signalled = finish(exec).await.status;

            assert_eq!(code, ExitStatus::Code(4));
            assert_eq!(signalled.code(), 143);
            executor.cleanup(&test.spec).await.unwrap();
            finish(main).await;
        }

        #[tokio::test]
        async fn exec_reports_missing_command() {
            let test = container(&["sleep", "1000"]);
            let executor = $executor;
            let main = executor.start(&test.spec).await.unwrap();

            let result = executor.exec(&test.spec, &process(&["missing"])).await;

            assert!(matches!(result, Err(ExecutorError::NotFound(_))));
            executor.cleanup(&test.spec).await.unwrap();
            assert_eq!(finish(main).await.status.code(), 137);
        }

        #[tokio::test]
        async fn main_exit_stops_execs() {
            let test = container(&sh("echo ready; read line"));
            let executor = $executor;
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
            assert_eq!(exec_status.code(), 137);
            assert!(!is_running(exec_pid));
        }

        #[tokio::test]
        async fn cleanup_is_idempotent() {
            let test = container(&["sleep", "1000"]);
            let executor = $executor;
            let main = executor.start(&test.spec).await.unwrap();

            executor.cleanup(&test.spec).await.unwrap();
            executor.cleanup(&test.spec).await.unwrap();

            assert_eq!(finish(main).await.status.code(), 137);
        }

        #[tokio::test]
        async fn tty_merges_output_on_a_pty() {
            let mut test = container(&sh("tty; echo err >&2"));
            test.spec.process.tty = true;

            let started = $executor.start(&test.spec).await.unwrap();
            assert!(started.stderr.is_none());
            let finished = finish(started).await;

            assert!(finished.stdout.starts_with("/dev/"), "{:?}", finished.stdout);
            assert!(!finished.stdout.starts_with("not a tty"), "{:?}", finished.stdout);
            assert!(finished.stdout.ends_with("err\r\n"), "{:?}", finished.stdout);
            assert_eq!(finished.status, ExitStatus::Code(0));
        }

        #[tokio::test]
        async fn tty_resize_sets_window_size() {
            let mut test = container(&sh("echo ready; read line; stty size"));
            test.spec.process.tty = true;
            test.spec.process.open_stdin = true;
            let mut started = $executor.start(&test.spec).await.unwrap();
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
            let mut started = $executor.start(&test.spec).await.unwrap();

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

            let finished = finish($executor.start(&test.spec).await.unwrap()).await;

            assert_eq!(finished.stdout, "");
            assert_eq!(finished.status, ExitStatus::Code(0));
        }

        #[tokio::test]
        async fn server_mounts_are_visible() {
            let test = container(&sh(
                "cat /etc/hostname; echo shared > /dev/shm/file; ls /dev/null",
            ));

            let finished = finish($executor.start(&test.spec).await.unwrap()).await;

            assert_eq!(
                finished.stdout, "0123456789ab\n/dev/null\n",
                "{}",
                finished.stderr
            );
            let shared = std::fs::read_to_string(test.shm().join("file")).unwrap();
            assert_eq!(shared, "shared\n");
        }

        #[tokio::test]
        async fn read_only_mount_rejects_writes() {
            let mut test = container(&sh("cat /data/file; echo x > /data/file"));
            let data = test.dir.path().join("data");
            std::fs::create_dir(&data).unwrap();
            std::fs::write(data.join("file"), "original\n").unwrap();
            test.spec.mounts.push(sidewhale_core::Mount {
                source: data.clone(),
                destination: "/data".into(),
                read_only: true,
            });

            let finished = finish($executor.start(&test.spec).await.unwrap()).await;

            assert_eq!(finished.stdout, "original\n");
            assert_ne!(finished.status, ExitStatus::Code(0));
            assert_eq!(std::fs::read_to_string(data.join("file")).unwrap(), "original\n");
        }

        #[tokio::test]
        async fn signal_after_exit_is_ok() {
            let test = container(&["true"]);
            let started = $executor.start(&test.spec).await.unwrap();
            let control = started.control.clone();

            let finished = finish(started).await;
            tokio::time::sleep(Duration::from_millis(10)).await;

            assert_eq!(finished.status, ExitStatus::Code(0));
            assert!(control.signal(libc::SIGTERM).is_ok());
            assert!(control.kill_all().is_ok());
        }
    };
}
