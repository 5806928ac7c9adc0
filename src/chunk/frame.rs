//! zstd frames and the zstd seekable-format seek table that ends the data stream.
//!
//! Each chunk is one zstd frame with its content size and content checksum (the low 32 bits of
//! XXH64 of the chunk, checked by every zstd decoder). The seek table is a skippable frame, so
//! `zstd -d` passes over it: one entry per frame (compressed size, decompressed size, checksum),
//! then a 9-byte footer.

use crate::format::FormatError;

/// Magic of the skippable frame that holds the seek table.
pub const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;
/// Magic at the very end of a seekable zstd stream.
pub const SEEKABLE_MAGIC: u32 = 0x8F92_EAB1;
/// Footer: frame count (4), descriptor (1), magic (4).
pub const FOOTER_LEN: usize = 9;
/// Seek-table descriptor: bit 7 set = entries carry checksums.
const DESCRIPTOR_CHECKSUMS: u8 = 0x80;

/// One seek-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeekEntry {
    pub compressed: u32,
    pub raw: u32,
    pub checksum: u32,
}

/// The content checksum stored in the last 4 bytes of a frame made with checksums on.
pub fn frame_checksum(frame: &[u8]) -> u32 {
    let n = frame.len();
    if n < 4 {
        return 0;
    }
    u32::from_le_bytes([frame[n - 4], frame[n - 3], frame[n - 2], frame[n - 1]])
}

/// Encodes the seek table as a skippable frame.
pub fn encode_seek_table(entries: &[SeekEntry]) -> Vec<u8> {
    let payload = entries.len() * 12 + FOOTER_LEN;
    let mut out = Vec::with_capacity(8 + payload);
    out.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
    out.extend_from_slice(&(payload as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.compressed.to_le_bytes());
        out.extend_from_slice(&e.raw.to_le_bytes());
        out.extend_from_slice(&e.checksum.to_le_bytes());
    }
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.push(DESCRIPTOR_CHECKSUMS);
    out.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
    out
}

/// The most a [`parse_seek_table`] of `table_bytes` bytes allocates: one 12-byte entry for each
/// 12 bytes of the table, so never more than the table itself, or an error message of at most
/// 256 bytes (the fuzz target `seek_table` asserts it with a counting allocator).
pub fn seek_table_memory_bound(table_bytes: u64) -> u64 {
    table_bytes.max(256)
}

/// Parses a whole seek-table skippable frame.
pub fn parse_seek_table(bytes: &[u8]) -> Result<Vec<SeekEntry>, FormatError> {
    let bad = |m: String| FormatError::SeekTable(m);
    if bytes.len() < 8 + FOOTER_LEN {
        return Err(bad(format!("{} bytes is too short", bytes.len())));
    }
    let u32_at = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    if u32_at(0) != SKIPPABLE_MAGIC {
        return Err(bad(format!("skippable-frame magic is {:08x}", u32_at(0))));
    }
    if u32_at(4) as usize != bytes.len() - 8 {
        return Err(bad(format!(
            "frame size {} does not match {} bytes",
            u32_at(4),
            bytes.len() - 8
        )));
    }
    let f = bytes.len() - FOOTER_LEN;
    if u32_at(f + 5) != SEEKABLE_MAGIC {
        return Err(bad(format!("footer magic is {:08x}", u32_at(f + 5))));
    }
    let count = u32_at(f) as usize;
    let desc = bytes[f + 4];
    if desc != DESCRIPTOR_CHECKSUMS {
        return Err(bad(format!(
            "descriptor 0x{desc:02x} (this format always stores checksums)"
        )));
    }
    if count.checked_mul(12) != Some(f - 8) {
        return Err(bad(format!("{count} entries do not fill {} bytes", f - 8)));
    }
    Ok((0..count)
        .map(|i| {
            let at = 8 + i * 12;
            SeekEntry {
                compressed: u32_at(at),
                raw: u32_at(at + 4),
                checksum: u32_at(at + 8),
            }
        })
        .collect())
}

/// A zstd compressor set up for chunk frames.
pub struct ChunkCompressor {
    inner: zstd::bulk::Compressor<'static>,
}

impl ChunkCompressor {
    pub fn new(level: i32) -> std::io::Result<Self> {
        let mut inner = zstd::bulk::Compressor::new(level)?;
        inner.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
        inner.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))?;
        Ok(Self { inner })
    }

    /// Compresses `src` into `dst` (cleared first) as one frame.
    pub fn compress(&mut self, src: &[u8], dst: &mut Vec<u8>) -> std::io::Result<()> {
        dst.clear();
        dst.reserve(zstd::zstd_safe::compress_bound(src.len()));
        self.inner.compress_to_buffer(src, dst)?;
        Ok(())
    }
}

/// The precomputed frame every all-zero full-size chunk reuses.
#[derive(Debug, Clone)]
pub struct ZeroFrame {
    pub bytes: Vec<u8>,
    pub raw_len: u32,
    pub checksum: u32,
}

impl ZeroFrame {
    pub fn new(chunk_size: usize, level: i32) -> std::io::Result<Self> {
        let mut c = ChunkCompressor::new(level)?;
        let mut bytes = Vec::new();
        c.compress(&vec![0u8; chunk_size], &mut bytes)?;
        let checksum = frame_checksum(&bytes);
        Ok(Self {
            bytes,
            raw_len: chunk_size as u32,
            checksum,
        })
    }
}

/// True when every byte is zero. The OR-fold vectorises; pages stop the scan early.
pub fn is_all_zero(buf: &[u8]) -> bool {
    buf.chunks(4096)
        .all(|page| page.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seek_table_round_trips_and_rejects_damage() {
        let entries = vec![
            SeekEntry {
                compressed: 10,
                raw: 4096,
                checksum: 0xdeadbeef,
            },
            SeekEntry {
                compressed: 99,
                raw: 100,
                checksum: 1,
            },
        ];
        let t = encode_seek_table(&entries);
        assert_eq!(parse_seek_table(&t).unwrap(), entries);
        let mut broken = t.clone();
        let n = broken.len();
        broken[n - 1] ^= 1;
        assert!(
            parse_seek_table(&broken)
                .unwrap_err()
                .to_string()
                .contains("footer magic")
        );
        assert!(parse_seek_table(&t[..t.len() - 12]).is_err());
    }

    #[test]
    fn zero_frame_decompresses_to_zeros_and_checks() {
        let z = ZeroFrame::new(1 << 20, 1).unwrap();
        let out = zstd::bulk::decompress(&z.bytes, 1 << 20).unwrap();
        assert_eq!(out.len(), 1 << 20);
        assert!(is_all_zero(&out));
        assert!(!is_all_zero(&[0, 0, 0, 1]));
    }
}
