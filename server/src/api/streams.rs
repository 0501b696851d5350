//! Streaming a process's output to a client: as a plain chunked body, or
//! over a hijacked connection after `101 Switching Protocols`.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::future::BoxFuture;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use sidewhale_core::executor::{BoxedReader, BoxedWriter};
use sidewhale_core::ExitStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::stdcopy;

/// Content type of a non-TTY multiplexed stream.
pub const MULTIPLEXED: &str = "application/vnd.docker.multiplexed-stream";
/// Content type of a TTY stream, which carries raw bytes.
pub const RAW: &str = "application/vnd.docker.raw-stream";

/// Pause between the `101` response and the first output byte.
const HEADER_SETTLE_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// Returns whether the client asked to hijack the connection
/// (`Connection: Upgrade` with `Upgrade: tcp`).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    let connection = headers
        .get(header::CONNECTION)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.to_ascii_lowercase().contains("upgrade"));
    connection && headers.contains_key(header::UPGRADE)
}

/// Reads `reader` into `sender`, framing each chunk for `stream` unless
/// `tty` is set.
async fn pump(mut reader: BoxedReader, stream: u8, tty: bool, sender: mpsc::Sender<Bytes>) {
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        let count = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(count) => count,
        };
        let chunk = if tty {
            Bytes::copy_from_slice(&buffer[..count])
        } else {
            stdcopy::frame(stream, &buffer[..count])
        };
        if sender.send(chunk).await.is_err() {
            break;
        }
    }
}

/// Merges a process's output into one channel. The channel closes once
/// both streams ended and `on_exit` has recorded the exit, so a client
/// that inspects the process after the stream ends gets its exit code.
pub fn process_output(
    stdout: BoxedReader,
    stderr: Option<BoxedReader>,
    tty: bool,
    exit: BoxFuture<'static, ExitStatus>,
    on_exit: impl FnOnce(ExitStatus) + Send + 'static,
) -> mpsc::Receiver<Bytes> {
    let (sender, receiver) = mpsc::channel(64);
    let mut pumps = vec![tokio::spawn(pump(stdout, 1, tty, sender.clone()))];
    if let Some(stderr) = stderr {
        pumps.push(tokio::spawn(pump(stderr, 2, tty, sender.clone())));
    }
    tokio::spawn(async move {
        let status = exit.await;
        for pump in pumps {
            let _ = pump.await;
        }
        on_exit(status);
        drop(sender);
    });
    receiver
}

/// Returns a `200` response streaming `output`.
pub fn plain_response(output: mpsc::Receiver<Bytes>, tty: bool) -> Response {
    let stream = ReceiverStream::new(output).map(Ok::<Bytes, std::io::Error>);
    super::streaming(if tty { RAW } else { MULTIPLEXED }, Body::from_stream(stream))
}

/// The destination of a hijacked connection's input. `writer` yields the
/// process's stdin once it exists. `on_close` receives it back when the
/// client closes its side, to close it or keep it for a later attach.
pub struct StdinTarget {
    pub writer: BoxFuture<'static, Option<BoxedWriter>>,
    pub on_close: Box<dyn FnOnce(BoxedWriter) + Send>,
}

impl StdinTarget {
    /// Feeds a process's stdin and closes it at the client's half-close.
    pub fn closing(stdin: BoxedWriter) -> StdinTarget {
        StdinTarget {
            writer: Box::pin(async move { Some(stdin) }),
            on_close: Box::new(|mut stdin| {
                tokio::spawn(async move {
                    let _ = stdin.shutdown().await;
                });
            }),
        }
    }
}

/// Returns Docker's `101 UPGRADED` response and, once the connection is
/// upgraded, writes `output` to it and copies what the client sends into
/// `stdin`. The connection is closed when the output ends.
pub fn hijacked_response(
    on_upgrade: OnUpgrade,
    output: mpsc::Receiver<Bytes>,
    stdin: Option<StdinTarget>,
    tty: bool,
) -> Response {
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::warn!(%error, "connection upgrade failed");
                return;
            }
        };
        // docker-py reads the 101 headers through a buffered reader and then
        // reads the raw socket, so output that reaches the client in the
        // same segment as the headers is lost. Docker's own exec start
        // takes longer than this pause, which is why clients never see it.
        tokio::time::sleep(HEADER_SETTLE_DELAY).await;
        let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
        let input = tokio::spawn(async move {
            let Some(target) = stdin else { return };
            let Some(mut writer) = target.writer.await else { return };
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
            (target.on_close)(writer);
        });
        let mut output = output;
        while let Some(chunk) = output.recv().await {
            if writer.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = writer.flush().await;
        let _ = writer.shutdown().await;
        input.abort();
    });

    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    let content_type = if tty { RAW } else { MULTIPLEXED };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
    response
}
