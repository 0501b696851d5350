//! Docker's stream multiplexing: each chunk of a non-TTY stream goes out as
//! an 8-byte header (stream type, three zero bytes, big-endian length)
//! followed by the payload.

use bytes::{BufMut, Bytes, BytesMut};

/// Frames `data` for the stream with type byte `stream` (1 stdout,
/// 2 stderr).
pub fn frame(stream: u8, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + data.len());
    out.put_u8(stream);
    out.put_bytes(0, 3);
    // Chunks come from pipe reads of at most 32 KiB and log lines of at
    // most 16 KiB, far below u32::MAX.
    out.put_u32(data.len() as u32);
    out.put_slice(data);
    out.freeze()
}

#[cfg(test)]
mod tests {
    #[test]
    fn frame_header() {
        let framed = super::frame(2, b"hi");
        assert_eq!(&framed[..], &[2, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']);
    }
}
