//! Content digests (`sha256:<64 hex>`) and hashing adapters for streams.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};
use sidewhale_core::ImageError;

/// The only digest algorithm the store accepts.
pub const SHA256_PREFIX: &str = "sha256:";

/// Returns the 64 hex digits of a `sha256:` digest, or `None` when `digest`
/// is not a well-formed lowercase sha256 digest.
pub fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix(SHA256_PREFIX)?;
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    (hex.len() == 64 && hex.bytes().all(lower_hex)).then_some(hex)
}

/// Checks that `digest` is a sha256 digest and returns its hex part, so it
/// can name a file in the store without any path traversal.
pub fn require_sha256<'a>(digest: &'a str, reference: &str) -> Result<&'a str, ImageError> {
    sha256_hex(digest).ok_or_else(|| ImageError::Registry {
        reference: reference.to_string(),
        message: format!("unsupported or malformed digest {digest:?}: expected sha256:<64 hex>"),
    })
}

/// Formats the sha256 digest of `data`.
pub fn sha256_of(data: &[u8]) -> String {
    format!("{SHA256_PREFIX}{}", hex::encode(Sha256::digest(data)))
}

/// A reader that hashes and counts every byte read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Returns the digest of the bytes read so far, with their count.
    pub fn finish(self) -> (String, u64) {
        let digest = format!("{SHA256_PREFIX}{}", hex::encode(self.hasher.finalize()));
        (digest, self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hasher.update(&buf[..read]);
        self.count += read as u64;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_accepts_only_lowercase_sha256() {
        let hex = "a".repeat(64);
        assert_eq!(sha256_hex(&format!("sha256:{hex}")), Some(hex.as_str()));
        assert_eq!(sha256_hex(&format!("sha256:{}", "A".repeat(64))), None);
        assert_eq!(sha256_hex(&format!("sha512:{hex}")), None);
        assert_eq!(sha256_hex("sha256:../../etc"), None);
    }

    #[test]
    fn hashing_reader_matches_sha256_of() {
        let mut reader = HashingReader::new(&b"hello"[..]);
        io::copy(&mut reader, &mut io::sink()).unwrap();
        let (digest, count) = reader.finish();
        assert_eq!(digest, sha256_of(b"hello"));
        assert_eq!(count, 5);
    }
}
