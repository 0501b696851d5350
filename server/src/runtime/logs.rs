//! Container output, kept only in a file in Docker's `json-file` format:
//! one JSON object per line. Readers address entries by byte offset into
//! that file, so neither writers nor readers hold the whole log in memory.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

/// Docker splits output at 16 KiB when no newline comes, and so does
/// sidewhale.
const MAX_LINE: usize = 16 * 1024;

/// Maximum bytes of the file that one `read_from` or `read_range` call
/// parses, which bounds the memory of a batch. One line may exceed it.
const READ_BATCH: u64 = 256 * 1024;

/// Block size for reading the file backwards to find where a tail starts.
const TAIL_BLOCK: u64 = 64 * 1024;

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
/// Like that driver, it stores output as a string, so bytes that are not
/// valid UTF-8 are read back as U+FFFD.
#[derive(Serialize, Deserialize)]
struct FileEntry {
    log: String,
    stream: Stream,
    time: DateTime<Utc>,
}

struct Inner {
    file: Option<File>,
    /// Length of the file up to the end of the last complete entry.
    /// Readers never read past it, so they never see a partial line.
    end: u64,
    /// True while the container's process may still produce output.
    live: bool,
    /// Entries lost since the last write to the file failed, or zero.
    lost_entries: u64,
}

/// The output of one container.
#[derive(Clone)]
pub struct LogBuffer {
    inner: Arc<Mutex<Inner>>,
    version: Arc<watch::Sender<u64>>,
    path: PathBuf,
}

impl LogBuffer {
    /// Opens the log at `path`, keeping the entries a previous run wrote.
    pub fn open(path: &Path) -> LogBuffer {
        let opened = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut file| {
                let end = terminate_partial_line(&mut file, path)?;
                Ok((file, end))
            });
        let (file, end) = match opened {
            Ok((file, end)) => (Some(file), end),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "log file cannot be opened, container output is discarded");
                (None, 0)
            }
        };
        let inner = Inner {
            file,
            end,
            live: false,
            lost_entries: 0,
        };
        LogBuffer {
            inner: Arc::new(Mutex::new(inner)),
            version: Arc::new(watch::channel(0).0),
            path: path.to_path_buf(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data behind, which
        // is still consistent, so a poisoned lock is used as it is.
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
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

    /// Returns the offset just past the last complete entry, and whether
    /// entries may still come after it.
    pub fn snapshot(&self) -> (u64, bool) {
        let inner = self.lock();
        (inner.end, inner.live)
    }

    fn append(&self, stream: Stream, data: Bytes) {
        let line = FileEntry {
            log: String::from_utf8_lossy(&data).into_owned(),
            stream,
            time: Utc::now(),
        };
        let mut text = match serde_json::to_vec(&line) {
            Ok(text) => text,
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "failed to encode a log entry");
                return;
            }
        };
        text.push(b'\n');
        {
            let mut inner = self.lock();
            let end = inner.end;
            let Some(file) = inner.file.as_mut() else {
                return;
            };
            match file.write_all(&text) {
                Ok(()) => {
                    inner.end = end + text.len() as u64;
                    if inner.lost_entries > 0 {
                        tracing::info!(path = %self.path.display(), lost_entries = inner.lost_entries, "writing to log file again");
                        inner.lost_entries = 0;
                    }
                }
                Err(error) => {
                    // Drops any partial line, so that the next entry starts
                    // at a line boundary.
                    let truncated = file.set_len(end);
                    if inner.lost_entries == 0 {
                        tracing::warn!(path = %self.path.display(), %error, "failed to append to log file, output is lost until a write succeeds");
                    }
                    if let Err(error) = truncated {
                        tracing::warn!(path = %self.path.display(), %error, "failed to truncate log file after a failed write");
                    }
                    inner.lost_entries += 1;
                    return;
                }
            }
        }
        self.version.send_modify(|version| *version += 1);
    }

    /// Returns a batch of the entries from offset `position` on, the
    /// offset after them, and whether more may come. The batch is empty
    /// once `position` has reached the end.
    pub fn read_from(&self, position: u64) -> (Vec<LogEntry>, u64, bool) {
        let (end, live) = self.snapshot();
        let (entries, next) = self.read_range(position, end);
        (entries, next, live)
    }

    /// Returns a batch of the entries between offsets `start` and `end`,
    /// and the offset after them: `end` once the range is read.
    pub fn read_range(&self, start: u64, end: u64) -> (Vec<LogEntry>, u64) {
        let end = end.min(self.snapshot().0);
        if start >= end {
            return (Vec::new(), start);
        }
        match self.read_lines(start, end) {
            Ok(read) => read,
            Err(error) => {
                // Skips the range so that a caller reading in a loop ends.
                tracing::warn!(path = %self.path.display(), start, end, %error, "failed to read log file");
                (Vec::new(), end)
            }
        }
    }

    fn read_lines(&self, start: u64, end: u64) -> io::Result<(Vec<LogEntry>, u64)> {
        let mut file = File::open(&self.path)?;
        file.seek(SeekFrom::Start(start))?;
        let mut reader = BufReader::new(file.take(end - start));
        let mut entries = Vec::new();
        let mut position = start;
        let mut line = Vec::new();
        while position < end && position - start < READ_BATCH {
            line.clear();
            let count = reader.read_until(b'\n', &mut line)?;
            if count == 0 {
                // The file is shorter than recorded, so something else
                // truncated it.
                return Ok((entries, end));
            }
            position += count as u64;
            entries.extend(parse_line(&line));
        }
        Ok((entries, position))
    }

    /// Returns the offset where the last `count` entries before `end` that
    /// `include` accepts begin, or 0 when there are fewer. Reads the file
    /// backwards in blocks and keeps no entries, so its memory use does not
    /// grow with `count` or with the file.
    pub fn tail_start(&self, count: usize, end: u64, include: impl Fn(&LogEntry) -> bool) -> u64 {
        let end = end.min(self.snapshot().0);
        if count == 0 {
            return end;
        }
        match self.find_tail(count, end, include) {
            Ok(start) => start,
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "failed to read log file backwards, sending all of it");
                0
            }
        }
    }

    fn find_tail(
        &self,
        count: usize,
        end: u64,
        include: impl Fn(&LogEntry) -> bool,
    ) -> io::Result<u64> {
        let mut file = File::open(&self.path)?;
        let mut found = 0;
        // The bytes from `block_end` to the end of the first line that
        // starts before `block_end`. They end with a newline because `end`
        // is at a line boundary.
        // NOTE: a file edited to contain a huge line without newlines
        // makes this buffer as large as that line.
        let mut carry: Vec<u8> = Vec::new();
        let mut block_end = end;
        while block_end > 0 {
            let block_start = block_end.saturating_sub(TAIL_BLOCK);
            let mut block = vec![0u8; (block_end - block_start) as usize];
            file.seek(SeekFrom::Start(block_start))?;
            file.read_exact(&mut block)?;
            block.extend_from_slice(&carry);

            // Walks the complete lines of the block from the last one.
            let mut line_end = block.len();
            while line_end > 0 {
                let Some(newline) = block[..line_end - 1].iter().rposition(|&b| b == b'\n') else {
                    break;
                };
                let line_start = newline + 1;
                if parse_line(&block[line_start..line_end]).is_some_and(|entry| include(&entry)) {
                    found += 1;
                    if found == count {
                        return Ok(block_start + line_start as u64);
                    }
                }
                line_end = line_start;
            }
            block.truncate(line_end);
            carry = block;
            block_end = block_start;
        }
        // What is left is the first line of the file, which starts at 0.
        Ok(0)
    }

    /// Returns the number of entries so far.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let (mut position, end) = (0, self.snapshot().0);
        let mut count = 0;
        while position < end {
            let (entries, next) = self.read_range(position, end);
            count += entries.len();
            position = next;
        }
        count
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

/// Ends the file with a newline if a previous run stopped in the middle of
/// writing a line, and returns the file's length. The partial line is kept
/// and skipped by readers as unparsable.
fn terminate_partial_line(file: &mut File, path: &Path) -> io::Result<u64> {
    let length = file.metadata()?.len();
    if length == 0 {
        return Ok(0);
    }
    let mut last = [0u8; 1];
    let mut reader = File::open(path)?;
    reader.seek(SeekFrom::Start(length - 1))?;
    reader.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(length);
    }
    file.write_all(b"\n")?;
    Ok(length + 1)
}

fn parse_line(line: &[u8]) -> Option<LogEntry> {
    let entry = serde_json::from_slice::<FileEntry>(line).ok()?;
    Some(LogEntry {
        stream: entry.stream,
        time: entry.time,
        data: Bytes::from(entry.log.into_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads every entry between `start` and the end, batch by batch.
    fn read_all(log: &LogBuffer, start: u64) -> Vec<LogEntry> {
        let mut position = start;
        let mut entries = Vec::new();
        loop {
            let (batch, next, _) = log.read_from(position);
            if next == position {
                return entries;
            }
            entries.extend(batch);
            position = next;
        }
    }

    #[tokio::test]
    async fn pump_splits_lines_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.json");
        let log = LogBuffer::open(&path);
        log.pump(Stream::Stdout, &b"one\ntwo\nthree"[..]).await;
        let (entries, next, _) = log.read_from(0);
        let lines: Vec<&[u8]> = entries.iter().map(|entry| &entry.data[..]).collect();
        assert_eq!(lines, vec![&b"one\n"[..], b"two\n", b"three"]);
        assert_eq!(next, std::fs::metadata(&path).unwrap().len());

        let reopened = LogBuffer::open(&path);
        assert_eq!(reopened.len(), 3);
        let start = reopened.tail_start(1, reopened.snapshot().0, |_| true);
        assert_eq!(&reopened.read_from(start).0[0].data[..], b"three");
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
        assert_eq!(entries[0].data.len(), MAX_LINE);
    }

    #[tokio::test]
    async fn partial_line_from_crash_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.json");
        LogBuffer::open(&path)
            .pump(Stream::Stdout, &b"one\n"[..])
            .await;
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"log\":\"cut").unwrap();

        let reopened = LogBuffer::open(&path);
        reopened.pump(Stream::Stdout, &b"two\n"[..]).await;
        let lines: Vec<Bytes> = read_all(&reopened, 0).into_iter().map(|e| e.data).collect();
        assert_eq!(lines, vec![Bytes::from("one\n"), Bytes::from("two\n")]);
    }

    #[tokio::test]
    async fn tail_of_large_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogBuffer::open(&dir.path().join("log.json"));
        let mut stdout = Vec::new();
        let count = 200_000;
        for number in 0..count {
            writeln!(stdout, "line {number:06} {}", "x".repeat(40)).unwrap();
        }
        assert!(stdout.len() > 8 * 1024 * 1024);
        log.pump(Stream::Stdout, &stdout[..]).await;
        log.pump(Stream::Stderr, &b"error one\nerror two\n"[..])
            .await;
        let end = log.snapshot().0;

        // A batch covers a bounded part of the file.
        let (batch, next, _) = log.read_from(0);
        assert!(next <= READ_BATCH + 1024, "batch ended at {next}");
        assert!(batch.len() < count);

        let start = log.tail_start(3, end, |entry| entry.stream == Stream::Stdout);
        let tail = read_all(&log, start);
        let texts: Vec<String> = tail
            .iter()
            .map(|entry| String::from_utf8_lossy(&entry.data).into_owned())
            .collect();
        assert_eq!(texts.len(), 5);
        assert!(texts[0].starts_with("line 199997 "), "{}", texts[0]);
        assert!(texts[1].starts_with("line 199998 "), "{}", texts[1]);
        assert!(texts[2].starts_with("line 199999 "), "{}", texts[2]);
        assert_eq!(texts[3], "error one\n");
        assert_eq!(texts[4], "error two\n");

        let start = log.tail_start(1, end, |entry| entry.stream == Stream::Stderr);
        let tail = read_all(&log, start);
        assert_eq!(tail.len(), 1);
        assert_eq!(&tail[0].data[..], b"error two\n");

        let start = log.tail_start(count + 10, end, |_| true);
        assert_eq!(start, 0);
        assert_eq!(read_all(&log, start).len(), count + 2);
        assert_eq!(log.tail_start(0, end, |_| true), end);
    }
}
