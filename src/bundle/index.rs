//! `P.index.zst`: the chunk index. Per chunk, the BLAKE3 hash of its plaintext (the image bytes)
//! and where its frame sits in the data stream. It lets a later bundle of the same instance find
//! the chunks that did not change (an incremental bundle reuses their frames), and lets `verify`
//! and `restore` check every chunk's plaintext with a strong hash. The manifest records the
//! index object's size and SHA-256, so the index is covered like every data part.
//!
//! Layout (little-endian), compressed as one zstd frame:
//! `"WBINDEX1"` | u32 version = 1 | u32 hash = 1 (BLAKE3-256) | u64 chunk_size | u64 volume_size |
//! u64 chunk_count | chunk_count × { [u8; 32] hash | u64 frame offset | u32 frame length |
//! u32 plaintext length }.

use super::FormatError;

const MAGIC: &[u8; 8] = b"WBINDEX1";
const HEADER: usize = 8 + 4 + 4 + 8 + 8 + 8;
const ENTRY: usize = 32 + 8 + 4 + 4;
/// The hash algorithm named in the header: BLAKE3 with 32-byte output.
const BLAKE3: u32 = 1;

/// One chunk: its plaintext's hash and its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub hash: [u8; 32],
    /// Offset of the frame in the data stream (all data objects, in order).
    pub offset: u64,
    pub length: u32,
    pub raw_len: u32,
}

/// The chunk index of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkIndex {
    pub chunk_size: u64,
    pub volume_size: u64,
    pub entries: Vec<IndexEntry>,
}

/// The hash the index records for a chunk's plaintext.
pub fn chunk_hash(plain: &[u8]) -> [u8; 32] {
    blake3::hash(plain).into()
}

fn bad(problem: impl Into<String>) -> FormatError {
    FormatError::Index(problem.into())
}

impl ChunkIndex {
    /// The index, compressed (level 3: the hashes do not compress; the offsets do a little).
    pub fn encode(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity(HEADER + self.entries.len() * ENTRY);
        raw.extend_from_slice(MAGIC);
        raw.extend_from_slice(&1u32.to_le_bytes());
        raw.extend_from_slice(&BLAKE3.to_le_bytes());
        raw.extend_from_slice(&self.chunk_size.to_le_bytes());
        raw.extend_from_slice(&self.volume_size.to_le_bytes());
        raw.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            raw.extend_from_slice(&e.hash);
            raw.extend_from_slice(&e.offset.to_le_bytes());
            raw.extend_from_slice(&e.length.to_le_bytes());
            raw.extend_from_slice(&e.raw_len.to_le_bytes());
        }
        // Compressing bytes in memory does not fail; were it to, the raw bytes are not an index
        // and decode refuses them.
        zstd::bulk::compress(&raw, 3).unwrap_or(raw)
    }

    /// Parses an index object, refusing anything malformed or inconsistent with its own header.
    /// `max_chunks` bounds the allocation (the manifest's chunk count).
    pub fn decode(bytes: &[u8], max_chunks: u64) -> Result<Self, FormatError> {
        let limit = HEADER as u64 + max_chunks.saturating_mul(ENTRY as u64);
        let raw = zstd::bulk::decompress(bytes, usize::try_from(limit).unwrap_or(usize::MAX))
            .map_err(|e| bad(format!("not a zstd frame of at most {limit} bytes: {e}")))?;
        if raw.len() < HEADER || &raw[..8] != MAGIC {
            return Err(bad("not a winbundle chunk index (bad magic)"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(raw[o..o + 4].try_into().unwrap_or_default());
        let u64_at = |o: usize| u64::from_le_bytes(raw[o..o + 8].try_into().unwrap_or_default());
        if u32_at(8) != 1 {
            return Err(bad(format!("index version {} is not supported", u32_at(8))));
        }
        if u32_at(12) != BLAKE3 {
            return Err(bad(format!("unknown hash algorithm {}", u32_at(12))));
        }
        let (chunk_size, volume_size, count) = (u64_at(16), u64_at(24), u64_at(32));
        if chunk_size == 0 || count != volume_size.div_ceil(chunk_size) {
            return Err(bad(format!(
                "{count} chunks of {chunk_size} bytes do not make a volume of {volume_size} bytes"
            )));
        }
        if (raw.len() - HEADER) as u64 != count.saturating_mul(ENTRY as u64) {
            return Err(bad(format!(
                "{} bytes of entries for {count} chunks",
                raw.len() - HEADER
            )));
        }
        let entries = raw[HEADER..]
            .chunks_exact(ENTRY)
            .map(|e| {
                let mut hash = [0u8; 32];
                hash.copy_from_slice(&e[..32]);
                IndexEntry {
                    hash,
                    offset: u64::from_le_bytes(e[32..40].try_into().unwrap_or_default()),
                    length: u32::from_le_bytes(e[40..44].try_into().unwrap_or_default()),
                    raw_len: u32::from_le_bytes(e[44..48].try_into().unwrap_or_default()),
                }
            })
            .collect();
        Ok(Self {
            chunk_size,
            volume_size,
            entries,
        })
    }

    /// Checks the index against the bundle's seek table (frame lengths and plaintext lengths)
    /// and chunking: the frames must follow one another from offset 0.
    pub fn check(&self, chunk_size: u64, volume_size: u64, seek: &[(u32, u32)]) -> Result<(), FormatError> {
        if self.chunk_size != chunk_size || self.volume_size != volume_size {
            return Err(bad(format!(
                "the index is for {} chunks of {} bytes, the manifest says {} of {}",
                self.volume_size, self.chunk_size, volume_size, chunk_size
            )));
        }
        if self.entries.len() != seek.len() {
            return Err(bad(format!(
                "{} index entries for {} frames",
                self.entries.len(),
                seek.len()
            )));
        }
        let mut offset = 0u64;
        for (i, (e, (compressed, raw))) in self.entries.iter().zip(seek).enumerate() {
            if e.offset != offset || e.length != *compressed || e.raw_len != *raw {
                return Err(bad(format!(
                    "chunk {i}: the index says frame at {} of {} bytes ({} plain), the seek table {} of {} ({} plain)",
                    e.offset, e.length, e.raw_len, offset, compressed, raw
                )));
            }
            offset += u64::from(*compressed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ChunkIndex {
        ChunkIndex {
            chunk_size: 4096,
            volume_size: 10_000,
            entries: (0..3u32)
                .map(|i| IndexEntry {
                    hash: chunk_hash(&[i as u8; 7]),
                    offset: u64::from(i) * 100,
                    length: 100,
                    raw_len: if i == 2 { 10_000 - 8192 } else { 4096 },
                })
                .collect(),
        }
    }

    #[test]
    fn round_trips_and_matches_its_seek_table() {
        let idx = sample();
        let back = ChunkIndex::decode(&idx.encode(), 3).unwrap();
        assert_eq!(back, idx);
        back.check(4096, 10_000, &[(100, 4096), (100, 4096), (100, 1808)])
            .unwrap();
        let err = back
            .check(4096, 10_000, &[(100, 4096), (99, 4096), (100, 1808)])
            .unwrap_err();
        assert!(err.to_string().contains("chunk 1"), "{err}");
        assert!(back.check(8192, 10_000, &[]).is_err());
    }

    #[test]
    fn malformed_indexes_are_refused_with_what_is_wrong() {
        let good = sample().encode();
        let raw = zstd::decode_all(&good[..]).unwrap();
        let case = |mutate: &dyn Fn(&mut Vec<u8>), max: u64, says: &str| {
            let mut r = raw.clone();
            mutate(&mut r);
            let err = ChunkIndex::decode(&zstd::encode_all(&r[..], 1).unwrap(), max).unwrap_err();
            assert!(err.to_string().contains(says), "{says}: {err}");
        };
        case(&|r| r[0] = b'X', 3, "bad magic");
        case(&|r| r[8] = 2, 3, "version 2");
        case(&|r| r[12] = 9, 3, "hash algorithm");
        case(&|r| r[32] = 4, 3, "do not make a volume");
        case(&|r| r.truncate(r.len() - 1), 3, "bytes of entries");
        case(&|_| {}, 1, "at most"); // more entries than the manifest allows
        let err = ChunkIndex::decode(b"garbage", 3).unwrap_err();
        assert!(err.to_string().contains("not a zstd frame"), "{err}");
    }
}
