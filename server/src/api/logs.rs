//! `GET /containers/{id}/logs` and `POST /containers/{id}/attach`: a
//! container's output, from its log and as it is written.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::response::Response;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::future::BoxFuture;
use sidewhale_core::executor::BoxedWriter;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::query::{self, flag};
use super::streams::{self, hijacked_response, MULTIPLEXED, RAW};
use super::{streaming, ApiError, ApiResult, AppState};
use crate::runtime::logs::{LogBuffer, LogEntry, Stream};
use crate::runtime::model::Status;
use crate::runtime::Container;
use crate::stdcopy;

/// The log entries a `logs` or `attach` request selects, and their form.
#[derive(Clone, Copy)]
struct LogSelection {
    stdout: bool,
    stderr: bool,
    since: Option<f64>,
    until: Option<f64>,
    timestamps: bool,
    tty: bool,
}

impl LogSelection {
    fn includes(&self, entry: &LogEntry) -> bool {
        let wanted = match entry.stream {
            Stream::Stdout => self.stdout,
            Stream::Stderr => self.stderr,
        };
        let time = entry.time.timestamp_micros() as f64 / 1e6;
        wanted
            && self.since.is_none_or(|since| time >= since)
            && self.until.is_none_or(|until| time <= until)
    }

    fn render(&self, entry: &LogEntry) -> Bytes {
        let mut data = Vec::with_capacity(entry.data.len() + 40);
        if self.timestamps {
            data.extend_from_slice(timestamp(entry.time).as_bytes());
            data.push(b' ');
        }
        data.extend_from_slice(&entry.data);
        if self.tty {
            Bytes::from(data)
        } else {
            stdcopy::frame(entry.stream.frame_type(), &data)
        }
    }
}

/// Sends the selected entries between offsets `start` and `end` of `log`.
/// Returns false once the receiver is gone.
async fn send_range(
    log: &LogBuffer,
    selection: &LogSelection,
    sender: &mpsc::Sender<Bytes>,
    start: u64,
    end: u64,
) -> bool {
    let mut position = start;
    while position < end {
        let (entries, next) = log.read_range(position, end);
        if next == position {
            break;
        }
        position = next;
        for entry in entries.iter().filter(|entry| selection.includes(entry)) {
            if sender.send(selection.render(entry)).await.is_err() {
                return false;
            }
        }
    }
    true
}

/// Sends the selected entries from `position` to the end of `log`, moving
/// `position` past them. Returns whether the log is still live as of that
/// end, or `None` once the receiver is gone.
async fn send_new(
    log: &LogBuffer,
    selection: &LogSelection,
    sender: &mpsc::Sender<Bytes>,
    position: &mut u64,
) -> Option<bool> {
    loop {
        let (entries, next, live) = log.read_from(*position);
        if next == *position {
            return Some(live);
        }
        *position = next;
        for entry in entries.iter().filter(|entry| selection.includes(entry)) {
            if sender.send(selection.render(entry)).await.is_err() {
                return None;
            }
        }
    }
}

fn timestamp(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Parses Docker's `since`/`until`: Unix seconds with an optional
/// fraction. Zero means "not set".
fn unix_time(query: &query::Query, key: &str) -> ApiResult<Option<f64>> {
    match query.get(key).map(String::as_str) {
        None | Some("") | Some("0") => Ok(None),
        Some(text) => text.parse::<f64>().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "invalid value for {key}: {text:?} is not a Unix timestamp"
            ))
        }),
    }
}

pub async fn logs(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<query::Query>,
) -> ApiResult<Response> {
    let container = daemon.container(&id)?;
    let record = container.record();
    let selection = LogSelection {
        stdout: flag(&query, "stdout"),
        stderr: flag(&query, "stderr"),
        since: unix_time(&query, "since")?,
        until: unix_time(&query, "until")?,
        timestamps: flag(&query, "timestamps"),
        tty: record.config.tty.unwrap_or(false),
    };
    if !selection.stdout && !selection.stderr {
        return Err(ApiError::bad_request(
            "Bad parameters: you must choose at least one stream",
        ));
    }
    let tail = match query.get("tail").map(String::as_str) {
        None | Some("") | Some("all") => None,
        Some(text) => match text.parse::<i64>() {
            Ok(count) if count >= 0 => Some(count as usize),
            Ok(_) => None,
            Err(_) => {
                return Err(ApiError::bad_request(format!(
                    "invalid value for tail: {text:?}"
                )))
            }
        },
    };
    let follow = flag(&query, "follow") && selection.until.is_none();

    let mut changes = container.logs.subscribe();
    changes.borrow_and_update();
    // The entries up to `end` are the backlog, to which `tail` applies.
    let (end, live) = container.logs.snapshot();

    let (sender, receiver) = mpsc::channel::<Bytes>(64);
    let logs = container.logs.clone();
    tokio::spawn(async move {
        let start = match tail {
            None => 0,
            Some(count) => {
                // Finding the tail may read the whole file, so it runs off
                // the async workers.
                let logs = logs.clone();
                let scan = tokio::task::spawn_blocking(move || {
                    logs.tail_start(count, end, |entry| selection.includes(entry))
                });
                match scan.await {
                    Ok(start) => start,
                    Err(error) => {
                        tracing::warn!(%error, "failed to find the tail of a log");
                        return;
                    }
                }
            }
        };
        if !send_range(&logs, &selection, &sender, start, end).await {
            return;
        }
        let mut position = end;
        let mut live = live;
        while follow && live {
            if changes.changed().await.is_err() {
                return;
            }
            match send_new(&logs, &selection, &sender, &mut position).await {
                Some(still_live) => live = still_live,
                None => return,
            }
        }
    });
    let content_type = if record.config.tty.unwrap_or(false) {
        RAW
    } else {
        MULTIPLEXED
    };
    let stream = ReceiverStream::new(receiver).map(Ok::<Bytes, std::io::Error>);
    Ok(streaming(content_type, Body::from_stream(stream)))
}

/// Streams live output, and the log before it when `logs` is set, until
/// the container's next exit. Ends at once when `stream` is not set.
fn attach_output(
    container: Arc<Container>,
    selection: LogSelection,
    include_logs: bool,
    stream: bool,
) -> mpsc::Receiver<Bytes> {
    let (sender, receiver) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut log_changes = container.logs.subscribe();
        let mut state_changes = container.subscribe();
        log_changes.borrow_and_update();
        state_changes.borrow_and_update();
        let exits_at_attach = container.record().state.exits;
        let logs = &container.logs;
        let (mut position, _) = logs.snapshot();
        if include_logs && !send_range(logs, &selection, &sender, 0, position).await {
            return;
        }
        if !stream {
            return;
        }
        loop {
            let exited = container.record().state.exits > exits_at_attach;
            if send_new(logs, &selection, &sender, &mut position)
                .await
                .is_none()
            {
                return;
            }
            if exited {
                return;
            }
            let changed = tokio::select! {
                changed = log_changes.changed() => changed,
                changed = state_changes.changed() => changed,
            };
            if changed.is_err() {
                return;
            }
        }
    });
    receiver
}

/// Waits until the container runs, then takes its stdin.
fn deferred_stdin(container: Arc<Container>) -> BoxFuture<'static, Option<BoxedWriter>> {
    Box::pin(async move {
        let mut changes = container.subscribe();
        loop {
            let record = container.record();
            if record.state.running() {
                return container.take_stdin();
            }
            if record.state.exits > 0 && record.state.status == Status::Exited {
                return None;
            }
            if changes.changed().await.is_err() {
                return None;
            }
        }
    })
}

pub async fn attach(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<query::Query>,
    mut request: Request,
) -> ApiResult<Response> {
    let container = daemon.container(&id)?;
    let record = container.record();
    let stream = flag(&query, "stream");
    if stream && record.state.status == Status::Exited && !flag(&query, "logs") {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "You cannot attach to a stopped container, start it first",
        ));
    }
    let tty = record.config.tty.unwrap_or(false);
    let selection = LogSelection {
        stdout: flag(&query, "stdout"),
        stderr: flag(&query, "stderr"),
        since: None,
        until: None,
        timestamps: false,
        tty,
    };
    let output = attach_output(container.clone(), selection, flag(&query, "logs"), stream);

    let wants_stdin = flag(&query, "stdin") && record.config.open_stdin.unwrap_or(false);
    let stdin = wants_stdin.then(|| {
        let owner = container.clone();
        let stdin_once = record.config.stdin_once.unwrap_or(false);
        streams::StdinTarget {
            writer: deferred_stdin(container.clone()),
            on_close: Box::new(move |writer| {
                if stdin_once {
                    drop(writer);
                } else {
                    owner.return_stdin(writer);
                }
            }),
        }
    });

    if streams::wants_upgrade(request.headers()) {
        let on_upgrade = hyper::upgrade::on(&mut request);
        return Ok(hijacked_response(on_upgrade, output, stdin, tty));
    }
    let content_type = if tty { RAW } else { MULTIPLEXED };
    let body = ReceiverStream::new(output).map(Ok::<Bytes, std::io::Error>);
    Ok(streaming(content_type, Body::from_stream(body)))
}
