//! `GET`, `HEAD` and `PUT /containers/{id}/archive`: files in and out of
//! containers, as `docker cp` and docker-py's `get_archive` and
//! `put_archive` use them.

use std::io::{self, Read, Write};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::query::{self, flag};
use super::{ApiError, ApiResult, AppState};
use crate::runtime::archive::{ArchiveSource, PathStat};
use crate::runtime::extract::ExtractOptions;
use crate::runtime::Error;

/// The header that carries a path's stat, base64-encoded JSON.
const PATH_STAT_HEADER: &str = "X-Docker-Container-Path-Stat";

/// How many bytes of tar stream are sent per body chunk.
const CHUNK_SIZE: usize = 64 * 1024;

fn required_path(query: &query::Query) -> ApiResult<String> {
    match query.get("path") {
        Some(path) if !path.is_empty() => Ok(path.clone()),
        _ => Err(ApiError::bad_request("path is required")),
    }
}

fn stat_header(stat: &PathStat) -> ApiResult<HeaderValue> {
    let json = serde_json::to_vec(stat).map_err(|error| {
        ApiError::from(Error::internal("failed to encode the path stat", error))
    })?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(json);
    HeaderValue::from_str(&encoded)
        .map_err(|error| ApiError::from(Error::internal("failed to encode the path stat", error)))
}

/// Locates the path on a blocking thread, since it touches the disk.
async fn locate(
    daemon: &AppState,
    id: &str,
    path: String,
) -> ApiResult<(crate::runtime::archive::ContainerFiles, ArchiveSource)> {
    let container = daemon.container(id)?;
    let files = daemon.container_files(&container);
    let name = id.to_string();
    tokio::task::spawn_blocking(move || {
        let source = files.locate(&path, &name)?;
        Ok::<_, Error>((files, source))
    })
    .await
    .map_err(|error| Error::internal("archive task failed", error))?
    .map_err(ApiError::from)
}

/// `HEAD /containers/{id}/archive`: the path's stat alone.
pub async fn head(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<query::Query>,
) -> ApiResult<Response> {
    let path = required_path(&query)?;
    let (_, source) = locate(&daemon, &id, path).await?;
    let mut response = Response::new(Body::empty());
    response
        .headers_mut()
        .insert(PATH_STAT_HEADER, stat_header(&source.stat)?);
    Ok(response)
}

/// `GET /containers/{id}/archive`: the path as a tar stream, written on a
/// blocking thread while the body is sent.
pub async fn get(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<query::Query>,
) -> ApiResult<Response> {
    let path = required_path(&query)?;
    let (files, source) = locate(&daemon, &id, path.clone()).await?;
    let stat = stat_header(&source.stat)?;

    let (sender, receiver) = mpsc::channel::<io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter {
            sender: sender.clone(),
            buffer: Vec::new(),
        };
        let result = files
            .write_tar(&source, &mut writer)
            .and_then(|()| writer.flush());
        match result {
            Ok(()) => tracing::debug!(container = %id, %path, "sent archive"),
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => {
                tracing::debug!(container = %id, %path, "client closed the archive stream");
            }
            Err(error) => {
                tracing::error!(container = %id, %path, %error, "failed to write archive");
                // Ends the body with an error, so that the client sees a
                // broken transfer rather than a short tar.
                let _ = sender.blocking_send(Err(error));
            }
        }
    });

    let mut response = Response::new(Body::from_stream(ReceiverStream::new(receiver)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    headers.insert(PATH_STAT_HEADER, stat);
    Ok(response)
}

/// `PUT /containers/{id}/archive`: extracts the body into the directory
/// `path`.
pub async fn put(
    State(daemon): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<query::Query>,
    body: Body,
) -> ApiResult<StatusCode> {
    let path = required_path(&query)?;
    let options = ExtractOptions {
        no_overwrite_dir_non_dir: flag(&query, "noOverwriteDirNonDir"),
        copy_uid_gid: flag(&query, "copyUIDGID"),
    };
    let container = daemon.container(&id)?;
    let files = daemon.container_files(&container);

    let (sender, receiver) = mpsc::channel::<io::Result<Bytes>>(8);
    let name = id.clone();
    let extraction = tokio::task::spawn_blocking(move || {
        let destination = files.extraction_point(&path, &name)?;
        let reader = ChannelReader {
            receiver,
            current: Bytes::new(),
        };
        files.extract(destination, reader, options)
    });

    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(io::Error::other);
        let failed = chunk.is_err();
        // A closed channel means that the extraction ended early, and
        // its result carries the reason.
        if sender.send(chunk).await.is_err() || failed {
            break;
        }
    }
    drop(sender);

    extraction
        .await
        .map_err(|error| Error::internal("archive task failed", error))??;
    Ok(StatusCode::OK)
}

/// Sends written bytes as body chunks. Fails with `BrokenPipe` once the
/// client has gone.
struct ChannelWriter {
    sender: mpsc::Sender<io::Result<Bytes>>,
    buffer: Vec<u8>,
}

impl ChannelWriter {
    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buffer));
        self.sender
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client closed the stream"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK_SIZE {
            self.send_buffer()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffer()
    }
}

/// Reads body chunks on a blocking thread.
struct ChannelReader {
    receiver: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let count = buf.len().min(self.current.len());
        buf[..count].copy_from_slice(&self.current.split_to(count));
        Ok(count)
    }
}
