//! `/containers/{id}/exec` and `/exec/...` endpoints.

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::query::{self, integer};
use super::streams::{self, hijacked_response, plain_response, process_output, StdinTarget};
use super::{parse_body, ApiError, ApiResult, AppState};
use crate::runtime::exec::{ExecConfig, ExecStart};
use crate::stdcopy;

pub async fn create(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let config: ExecConfig = parse_body(&body)?;
    let container = daemon.container(&id)?;
    let exec_id = daemon.create_exec(&container, config)?;
    Ok((StatusCode::CREATED, Json(json!({"Id": exec_id}))))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct StartRequest {
    detach: Option<bool>,
    tty: Option<bool>,
    /// `[rows, columns]` of the client's terminal, given to the process's
    /// terminal before it starts.
    console_size: Option<[u16; 2]>,
}

/// Maximum size of a request body read before a connection is hijacked.
const MAX_START_BODY: usize = 64 * 1024;

pub async fn start(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
    mut request: Request,
) -> ApiResult<Response> {
    let upgrade = streams::wants_upgrade(request.headers());
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let body = axum::body::to_bytes(request.into_body(), MAX_START_BODY)
        .await
        .map_err(|error| ApiError::bad_request(format!("failed to read request body: {error}")))?;
    let start: StartRequest = parse_body(&body)?;

    let exec = daemon.exec(&id)?;
    let tty = start.tty.or(exec.config.tty).unwrap_or(false);
    let outcome = daemon.start_exec(&exec, Some(tty), start.console_size).await?;

    let output = match outcome {
        ExecStart::Failed { message } => {
            let (sender, receiver) = mpsc::channel(1);
            let chunk = if tty {
                Bytes::from(message)
            } else {
                stdcopy::frame(1, message.as_bytes())
            };
            let _ = sender.try_send(chunk);
            receiver
        }
        ExecStart::Running(process) => {
            let stdin = process.stdin;
            let finished = exec.clone();
            let output = process_output(process.stdout, process.stderr, tty, process.exit, move |status| {
                tracing::info!(exec = %&finished.id[..12], exit_code = status.code(), "exec exited");
                daemon.finish_exec(&finished, status.code());
            });
            if start.detach.unwrap_or(false) {
                tokio::spawn(drain(output));
                return Ok(StatusCode::OK.into_response());
            }
            return Ok(match on_upgrade {
                Some(on_upgrade) => {
                    hijacked_response(on_upgrade, output, stdin.map(StdinTarget::closing), tty)
                }
                None => plain_response(output, tty),
            });
        }
    };
    if start.detach.unwrap_or(false) {
        return Ok(StatusCode::OK.into_response());
    }
    Ok(match on_upgrade {
        Some(on_upgrade) => hijacked_response(on_upgrade, output, None, tty),
        None => plain_response(output, tty),
    })
}

/// Discards the output of a detached exec so that it never blocks on a
/// full pipe.
async fn drain(mut output: mpsc::Receiver<Bytes>) {
    while output.recv().await.is_some() {}
}

pub async fn inspect(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let exec = daemon.exec(&id)?;
    let state = exec.state();
    let argv = exec.config.cmd.clone().unwrap_or_default();
    Ok(Json(json!({
        "ID": exec.id,
        "ContainerID": exec.container_id,
        "Running": state.running,
        "ExitCode": state.exit_code,
        "Pid": state.pid,
        "CanRemove": false,
        "DetachKeys": exec.config.detach_keys.clone().unwrap_or_default(),
        "OpenStdin": exec.config.attach_stdin.unwrap_or(false),
        "OpenStdout": exec.config.attach_stdout.unwrap_or(false),
        "OpenStderr": exec.config.attach_stderr.unwrap_or(false),
        "ProcessConfig": {
            "entrypoint": argv.first().cloned().unwrap_or_default(),
            "arguments": argv.iter().skip(1).collect::<Vec<_>>(),
            "privileged": exec.config.privileged.unwrap_or(false),
            "tty": exec.config.tty.unwrap_or(false),
            "user": exec.config.user.clone().unwrap_or_default(),
        },
    })))
}

pub async fn resize(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<query::Query>,
) -> ApiResult<StatusCode> {
    let exec = daemon.exec(&id)?;
    let rows = integer(&query, "h")?.unwrap_or(0);
    let columns = integer(&query, "w")?.unwrap_or(0);
    let size = |value: i64| u16::try_from(value).map_err(|_| ApiError::bad_request("invalid terminal size"));
    exec.resize(size(rows)?, size(columns)?)?;
    Ok(StatusCode::OK)
}
