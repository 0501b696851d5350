//! Container output: kept in memory for `logs` and `attach`, and appended
//! to a file in Docker's `json-file` format so it survives a restart.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

/// Docker splits output at 16 KiB when no newline comes; so does sidewhale.
const MAX_LINE: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// Returns the stream byte of an stdcopy frame header.
    pub fn frame_type(self) -> u8 {
        match self {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        }
    }
}

#[derive(Clone, Debug)]
pub struct LogEntry {
    pub stream: Stream,
    pub time: DateTime<Utc>,
    pub data: Bytes,
}

/// One line of the log file, in the shape of Docker's `json-file` driver.
#[derive(Serialize, Deserialize)]
struct FileEntry {
    log: String,
    stream: Stream,
    time: DateTime<Utc>,
}

struct Inner {
    entries: Vec<LogEntry>,
    file: Option<File>,
    /// True while the container's process may still produce output.
    live: bool,
}

/// The output of one container.
#[derive(Clone)]
pub struct LogBuffer {
    inner: Arc<Mutex<Inner>>,
    version: Arc<watch::Sender<u64>>,
    path: PathBuf,
}

impl LogBuffer {
    /// Opens the log at `path`, loading entries a previous run wrote.
    pub fn open(path: &Path) -> LogBuffer {
        let entries = load_entries(path);
        let file = OpenOptions::new().create(true).append(true).open(path);
        if let Err(error) = &file {
            tracing::warn!(path = %path.display(), %error, "log file cannot be opened, output is kept in memory only");
        }
        LogBuffer {
            inner: Arc::new(Mutex::new(Inner { entries, file: file.ok(), live: false })),
            version: Arc::new(watch::channel(0).0),
            path: path.to_path_buf(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data behind, which
        // is still consistent, so a poisoned lock is used as it is.
        self.inner.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks the start or the end of a process writing to this log.
    /// Followers stop once the log is not live and they have read it all.
    pub fn set_live(&self, live: bool) {
        self.lock().live = live;
        self.version.send_modify(|version| *version += 1);
    }

    fn append(&self, stream: Stream, data: Bytes) {
        let entry = LogEntry { stream, time: Utc::now(), data };
        {
            let mut inner = self.lock();
            if let Some(file) = inner.file.as_mut() {
                let line = FileEntry {
                    log: String::from_utf8_lossy(&entry.data).into_owned(),
                    stream,
                    time: entry.time,
                };
                if let Ok(mut text) = serde_json::to_vec(&line) {
                    text.push(b'\n');
                    if let Err(error) = file.write_all(&text) {
                        tracing::warn!(%error, "failed to append to log file");
                    }
                }
            }
            inner.entries.push(entry);
        }
        self.version.send_modify(|version| *version += 1);
    }

    /// Returns the entries from `position` on, the next position, and
    /// whether more may come.
    pub fn read_from(&self, position: usize) -> (Vec<LogEntry>, usize, bool) {
        let inner = self.lock();
        let start = position.min(inner.entries.len());
        (inner.entries[start..].to_vec(), inner.entries.len(), inner.live)
    }

    /// Returns the number of entries so far.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Reads `reader` to its end, appending one entry per line.
    pub async fn pump(&self, stream: Stream, mut reader: impl AsyncRead + Unpin) {
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 32 * 1024];
        loop {
            let count = match reader.read(&mut chunk).await {
                Ok(0) => break,
                Ok(count) => count,
                // EIO is how a pseudo-terminal reports that its last
                // writer has closed.
                Err(error) => {
                    tracing::debug!(%error, "container output closed");
                    break;
                }
            };
            pending.extend_from_slice(&chunk[..count]);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                self.append(stream, Bytes::from(line));
            }
            while pending.len() >= MAX_LINE {
                let part: Vec<u8> = pending.drain(..MAX_LINE).collect();
                self.append(stream, Bytes::from(part));
            }
        }
        if !pending.is_empty() {
            self.append(stream, Bytes::from(pending));
        }
    }
}

fn load_entries(path: &Path) -> Vec<LogEntry> {
    let Ok(file) = File::open(path) else {
        return Vec::new();
    };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str::<FileEntry>(&line).ok())
        .map(|entry| LogEntry {
            stream: entry.stream,
            time: entry.time,
            data: Bytes::from(entry.log.into_bytes()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pump_splits_lines_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.json");
        let log = LogBuffer::open(&path);
        log.pump(Stream::Stdout, &b"one\ntwo\nthree"[..]).await;
        let (entries, next, _) = log.read_from(0);
        let lines: Vec<&[u8]> = entries.iter().map(|entry| &entry.data[..]).collect();
        assert_eq!(lines, vec![&b"one\n"[..], b"two\n", b"three"]);
        assert_eq!(next, 3);

        let reopened = LogBuffer::open(&path);
        assert_eq!(reopened.len(), 3);
        assert_eq!(&reopened.read_from(2).0[0].data[..], b"three");
    }

    #[tokio::test]
    async fn long_line_is_split() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogBuffer::open(&dir.path().join("log.json"));
        let data = vec![b'x'; MAX_LINE + 10];
        log.pump(Stream::Stderr, &data[..]).await;
        let (entries, _, _) = log.read_from(0);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].stream, Stream::Stderr);
    }
}
