//! Docker Engine API behaviour through bollard. Each expected value is what
//! the Docker Engine returns for the same request.
//!
//! NOTE: a test that panics leaves its container behind. sidewhale's
//! containers go with its temporary state directory, but an external Docker
//! Engine keeps them.

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::errors::Error;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, LogsOptions, RemoveContainerOptions,
};
use bollard::Docker;
use futures::{Stream, StreamExt, TryStreamExt};
use sidewhale_conformance::{block_on, server};

const BUSYBOX: &str = "busybox:latest";

/// Pulls busybox through the mirror unless the server already has it.
async fn pull_busybox(docker: &Docker) {
    if docker.inspect_image(BUSYBOX).await.is_ok() {
        return;
    }
    let options = CreateImageOptions {
        from_image: Some("busybox".to_string()),
        tag: Some("latest".to_string()),
        ..Default::default()
    };
    docker
        .create_image(Some(options), None, None)
        .try_collect::<Vec<_>>()
        .await
        .expect("pulling busybox:latest failed");
}

fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos:08x}", std::process::id())
}

/// Returns the status code and message of a Docker error response, or
/// panics with the error bollard returned instead.
fn server_error<T: std::fmt::Debug>(result: Result<T, Error>) -> (u16, String) {
    match result {
        Err(Error::DockerResponseServerError {
            status_code,
            message,
        }) => (status_code, message),
        other => panic!("expected a Docker error response, got {other:?}"),
    }
}

async fn create(docker: &Docker, name: Option<&str>, body: ContainerCreateBody) -> String {
    let options = CreateContainerOptions {
        name: name.map(String::from),
        ..Default::default()
    };
    docker
        .create_container(Some(options), body)
        .await
        .expect("POST /containers/create failed")
        .id
}

fn busybox_running(script: &str) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(BUSYBOX.to_string()),
        cmd: Some(vec!["sh".to_string(), "-c".to_string(), script.to_string()]),
        ..Default::default()
    }
}

async fn remove_forced(docker: &Docker, id: &str) {
    let options = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    docker
        .remove_container(id, Some(options))
        .await
        .expect("DELETE /containers/{id}?force=1 failed");
}

/// Collects a multiplexed stream into its stdout and stderr text.
async fn demux<S>(stream: S) -> (String, String)
where
    S: Stream<Item = Result<LogOutput, Error>>,
{
    let chunks: Vec<LogOutput> = stream
        .try_collect()
        .await
        .expect("reading the stream failed");
    let mut stdout = String::new();
    let mut stderr = String::new();
    for chunk in chunks {
        match chunk {
            LogOutput::StdOut { message } => stdout.push_str(&String::from_utf8_lossy(&message)),
            LogOutput::StdErr { message } => stderr.push_str(&String::from_utf8_lossy(&message)),
            other => panic!("unexpected frame in a non-TTY stream: {other:?}"),
        }
    }
    (stdout, stderr)
}

/// Parses an API version such as "1.47" into (1, 47).
fn parse_api_version(text: &str) -> (u64, u64) {
    let parsed = text
        .split_once('.')
        .and_then(|(major, minor)| Some((major.parse().ok()?, minor.parse().ok()?)));
    parsed.unwrap_or_else(|| panic!("invalid API version {text:?}"))
}

#[test]
fn ping_returns_ok() {
    block_on(async {
        let docker = server().docker_unnegotiated();
        assert_eq!(docker.ping().await.expect("GET /_ping failed"), "OK");
    });
}

#[test]
fn version_negotiation() {
    block_on(async {
        // bollard starts at its own API version (API_DEFAULT_VERSION, 1.53
        // in bollard 0.21) and lowers it to the server's. Url::join drops
        // the /vX.Y prefix of its request paths, so the number never
        // reaches the server.
        let docker = server().docker().await;
        let version = docker.version().await.expect("GET /version failed");
        let api_version = version.api_version.expect("ApiVersion is missing");
        let negotiated = docker.client_version();
        assert_eq!(
            format!("{}.{}", negotiated.major_version, negotiated.minor_version),
            api_version
        );
        // Docker 20.10 reports 1.12, Docker 25 and newer 1.24.
        let min_api_version = version.min_api_version.expect("MinAPIVersion is missing");
        assert!(
            parse_api_version(&min_api_version) <= (1, 24),
            "MinAPIVersion: {min_api_version}"
        );
        assert_eq!(version.os.as_deref(), Some("linux"));
    });
}

#[test]
fn pull_progress_stream() {
    block_on(async {
        let docker = server().docker().await;
        let options = CreateImageOptions {
            from_image: Some("busybox".to_string()),
            tag: Some("latest".to_string()),
            ..Default::default()
        };
        let progress: Vec<_> = docker
            .create_image(Some(options), None, None)
            .try_collect()
            .await
            .expect("POST /images/create failed");
        let statuses: Vec<&str> = progress
            .iter()
            .filter_map(|item| item.status.as_deref())
            .collect();
        // The Docker Engine starts with "Pulling from library/busybox" (id
        // "latest") and ends with "Status: Downloaded newer image for
        // busybox:latest", or "Status: Image is up to date for ..." when the
        // image is already there.
        assert_eq!(statuses.first(), Some(&"Pulling from library/busybox"));
        assert_eq!(progress[0].id.as_deref(), Some("latest"));
        let last = statuses.last().copied().unwrap_or_default();
        assert!(
            last == "Status: Downloaded newer image for busybox:latest"
                || last == "Status: Image is up to date for busybox:latest",
            "last status: {last:?}"
        );
        assert!(
            statuses
                .iter()
                .any(|status| status.starts_with("Digest: sha256:")),
            "no Digest line in {statuses:?}"
        );
    });
}

#[test]
fn inspect_image_fields() {
    block_on(async {
        let docker = server().docker().await;
        pull_busybox(&docker).await;
        let image = docker
            .inspect_image(BUSYBOX)
            .await
            .expect("GET /images/busybox:latest/json failed");
        let id = image.id.unwrap_or_default();
        assert!(id.starts_with("sha256:"), "Id: {id}");
        assert_eq!(id.len(), "sha256:".len() + 64);
        assert!(
            image
                .repo_tags
                .unwrap_or_default()
                .contains(&BUSYBOX.to_string()),
            "RepoTags lacks {BUSYBOX}"
        );
        let digests = image.repo_digests.unwrap_or_default();
        assert!(
            digests
                .iter()
                .any(|digest| digest.starts_with("busybox@sha256:")),
            "RepoDigests: {digests:?}"
        );
        assert_eq!(image.os.as_deref(), Some("linux"));
        assert_eq!(image.architecture.as_deref(), Some("amd64"));
        let config = image.config.expect("Config is missing");
        assert_eq!(config.cmd, Some(vec!["sh".to_string()]));
        let root_fs = image.root_fs.expect("RootFS is missing");
        assert_eq!(root_fs.typ, "layers");
        assert!(
            !root_fs.layers.unwrap_or_default().is_empty(),
            "RootFS.Layers is empty"
        );
    });
}

#[test]
fn wait_returns_exit_code() {
    block_on(async {
        let docker = server().docker().await;
        pull_busybox(&docker).await;
        let id = create(&docker, None, busybox_running("exit 7")).await;
        docker
            .start_container(&id, None)
            .await
            .expect("start failed");
        let results: Vec<_> = docker.wait_container(&id, None).collect().await;
        assert_eq!(results.len(), 1);
        // bollard maps a non-zero StatusCode to an error.
        match &results[0] {
            Err(Error::DockerContainerWaitError { error, code }) => {
                assert_eq!(*code, 7);
                assert_eq!(error, "");
            }
            other => panic!("expected DockerContainerWaitError, got {other:?}"),
        }
        let state = docker
            .inspect_container(&id, None)
            .await
            .unwrap()
            .state
            .unwrap();
        assert_eq!(state.exit_code, Some(7));
        assert_eq!(state.running, Some(false));
        remove_forced(&docker, &id).await;
    });
}

#[test]
fn logs_split_streams() {
    block_on(async {
        let docker = server().docker().await;
        pull_busybox(&docker).await;
        let id = create(
            &docker,
            None,
            busybox_running("echo out1; echo err1 >&2; echo out2"),
        )
        .await;
        docker
            .start_container(&id, None)
            .await
            .expect("start failed");
        let exits: Vec<_> = docker.wait_container(&id, None).collect().await;
        assert!(exits[0].is_ok(), "wait: {:?}", exits[0]);

        let options = LogsOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let (stdout, stderr) = demux(docker.logs(&id, Some(options))).await;
        assert_eq!(stdout, "out1\nout2\n");
        assert_eq!(stderr, "err1\n");

        let stdout_only = LogsOptions {
            stdout: true,
            ..Default::default()
        };
        let (stdout, stderr) = demux(docker.logs(&id, Some(stdout_only))).await;
        assert_eq!(stdout, "out1\nout2\n");
        assert_eq!(stderr, "");
        remove_forced(&docker, &id).await;
    });
}

#[test]
fn remove_deletes_container() {
    block_on(async {
        let docker = server().docker().await;
        pull_busybox(&docker).await;
        let id = create(&docker, None, busybox_running("true")).await;
        docker
            .remove_container(&id, None)
            .await
            .expect("DELETE /containers/{id} failed");
        let (status, message) = server_error(docker.inspect_container(&id, None).await);
        assert_eq!(status, 404);
        assert_eq!(message, format!("No such container: {id}"));
    });
}

#[test]
fn remove_running_is_409() {
    block_on(async {
        let docker = server().docker().await;
        pull_busybox(&docker).await;
        let id = create(&docker, None, busybox_running("sleep 60")).await;
        docker
            .start_container(&id, None)
            .await
            .expect("start failed");
        let (status, message) = server_error(docker.remove_container(&id, None).await);
        assert_eq!(status, 409);
        assert!(message.contains("cannot remove"), "message: {message}");
        remove_forced(&docker, &id).await;
    });
}

#[test]
fn exec_attached_output() {
    block_on(async {
        let docker = server().docker().await;
        pull_busybox(&docker).await;
        let id = create(&docker, None, busybox_running("sleep 300")).await;
        docker
            .start_container(&id, None)
            .await
            .expect("start failed");

        let exec = docker
            .create_exec(
                &id,
                CreateExecOptions {
                    cmd: Some(vec!["sh", "-c", "echo out; echo err >&2; exit 3"]),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .expect("POST /containers/{id}/exec failed");
        let output = match docker
            .start_exec(&exec.id, None)
            .await
            .expect("POST /exec/{id}/start failed")
        {
            StartExecResults::Attached { output, .. } => output,
            StartExecResults::Detached => panic!("start_exec without detach returned Detached"),
        };
        let (stdout, stderr) = demux(output).await;
        assert_eq!(stdout, "out\n");
        assert_eq!(stderr, "err\n");

        let inspect = docker
            .inspect_exec(&exec.id)
            .await
            .expect("GET /exec/{id}/json failed");
        assert_eq!(inspect.exit_code, Some(3));
        assert_eq!(inspect.running, Some(false));
        assert_eq!(inspect.container_id.as_deref(), Some(id.as_str()));
        remove_forced(&docker, &id).await;
    });
}

#[test]
fn missing_container_is_404() {
    block_on(async {
        let docker = server().docker().await;
        let (status, message) = server_error(docker.inspect_container("nope", None).await);
        assert_eq!(status, 404);
        assert_eq!(message, "No such container: nope");
    });
}

#[test]
fn missing_image_is_404() {
    block_on(async {
        let docker = server().docker().await;
        let (status, message) = server_error(docker.inspect_image("absent:1").await);
        assert_eq!(status, 404);
        // Docker 20.10 prefixes "no such image: absent:1: ".
        assert!(
            message.ends_with("No such image: absent:1"),
            "message: {message}"
        );
    });
}

#[test]
fn create_missing_image_is_404() {
    block_on(async {
        let docker = server().docker().await;
        let body = ContainerCreateBody {
            image: Some("absent:1".to_string()),
            ..Default::default()
        };
        let (status, message) = server_error(
            docker
                .create_container(None::<CreateContainerOptions>, body)
                .await,
        );
        assert_eq!(status, 404);
        assert_eq!(message, "No such image: absent:1");
    });
}

#[test]
fn missing_exec_is_404() {
    block_on(async {
        let docker = server().docker().await;
        let (status, message) = server_error(docker.inspect_exec("nope").await);
        assert_eq!(status, 404);
        assert_eq!(message, "No such exec instance: nope");
    });
}

#[test]
fn duplicate_name_is_409() {
    block_on(async {
        let docker = server().docker().await;
        pull_busybox(&docker).await;
        let name = unique_name("dup");
        let id = create(&docker, Some(&name), busybox_running("true")).await;
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let (status, message) = server_error(
            docker
                .create_container(Some(options), busybox_running("true"))
                .await,
        );
        assert_eq!(status, 409);
        // Docker: Conflict. The container name "/NAME" is already in use by
        // container "ID". You have to remove (or rename) that container ...
        assert!(
            message.contains(&format!("\"/{name}\"")),
            "message: {message}"
        );
        assert!(message.contains(&id), "message: {message}");
        remove_forced(&docker, &id).await;
    });
}

/// Reads what the listener behind `port` sends, retrying while nc restarts.
fn read_relayed(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut reply = String::new();
    while reply != "pong\n" && Instant::now() < deadline {
        reply.clear();
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let _ = stream.read_to_string(&mut reply);
        }
        if reply != "pong\n" {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    reply
}

#[test]
fn published_port_shape() {
    block_on(async {
        let docker = server().docker().await;
        pull_busybox(&docker).await;
        let mut body = busybox_running("while true; do echo pong | nc -l -p 8080; done");
        body.exposed_ports = Some(vec!["8080/tcp".to_string(), "9999/tcp".to_string()]);
        body.host_config = Some(HostConfig {
            port_bindings: Some(HashMap::from([(
                "8080/tcp".to_string(),
                Some(vec![PortBinding {
                    host_ip: None,
                    host_port: None,
                }]),
            )])),
            ..Default::default()
        });
        let id = create(&docker, None, body).await;
        docker
            .start_container(&id, None)
            .await
            .expect("start failed");
        let inspect = docker
            .inspect_container(&id, None)
            .await
            .expect("inspect failed");
        let ports = inspect
            .network_settings
            .and_then(|settings| settings.ports)
            .expect("NetworkSettings.Ports is null");

        // Docker: {"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "N"}, maybe
        // {"HostIp": "::", "HostPort": "N"}], "9999/tcp": null}.
        assert_eq!(ports.get("9999/tcp"), Some(&None));
        let bindings = ports.get("8080/tcp").cloned().flatten().unwrap_or_default();
        assert!(!bindings.is_empty(), "8080/tcp has no bindings: {ports:?}");
        assert_eq!(bindings[0].host_ip.as_deref(), Some("0.0.0.0"));
        let host_port: u16 = bindings[0]
            .host_port
            .as_deref()
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("HostPort is not a port number: {bindings:?}"));
        assert_ne!(host_port, 0);

        let reply = tokio::task::spawn_blocking(move || read_relayed(host_port))
            .await
            .unwrap();
        assert_eq!(reply, "pong\n");
        remove_forced(&docker, &id).await;
    });
}
