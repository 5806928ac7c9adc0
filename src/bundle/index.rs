//! `P.index.zst`: the chunk index. Per chunk, the BLAKE3 hash of its plaintext (the image bytes)
//! and where its frame sits in the data stream. It lets a later bundle of the same instance find
//! the chunks that did not change (an incremental bundle reuses their frames), and lets `verify`
//! and `restore` check every chunk's plaintext with a strong hash. The manifest records the
//! index object's size and SHA-256, so the index is covered like every data part.
//!
//! Layout (little-endian), compressed as one zstd frame:
//! `"WBINDEX1"` | u32 version = 2 | u32 hash = 1 (BLAKE3-256) | u64 chunk_size | u64 volume_size |
//! u64 chunk_count | chunk_count × { [u8; 32] plaintext hash | [u8; 32] frame hash | u64 frame
//! offset | u32 frame length | u32 plaintext length }.
//!
//! The frame hash (BLAKE3 of the compressed frame's bytes) lets a later bundle take a frame
//! from this one, or have the server copy it, and still know every byte of it: checking a frame
//! against it costs a fraction of decompressing. Version 1 (the first indexes, written for a
//! few days before frame hashes existed) has no frame hash and is still read.

use super::FormatError;

const MAGIC: &[u8; 8] = b"WBINDEX1";
const HEADER: usize = 8 + 4 + 4 + 8 + 8 + 8;
/// Entry sizes of index versions 1 and 2.
const ENTRY_V1: usize = 32 + 8 + 4 + 4;
const ENTRY: usize = 32 + 32 + 8 + 4 + 4;
/// The hash algorithm named in the header: BLAKE3 with 32-byte output.
const BLAKE3: u32 = 1;

/// One chunk: its plaintext's hash and its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub hash: [u8; 32],
    /// BLAKE3 of the frame's compressed bytes (absent in version-1 indexes).
    pub frame_hash: Option<[u8; 32]>,
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

/// The hash the index records for a frame's compressed bytes.
pub fn frame_hash(frame: &[u8]) -> [u8; 32] {
    blake3::hash(frame).into()
}

/// The largest index object of `chunks` chunks: its raw bytes plus what a zstd frame adds
/// (a frame of incompressible data grows by a few bytes per 128 KiB block).
pub fn max_size(chunks: u64) -> u64 {
    let raw = (HEADER as u64).saturating_add(chunks.saturating_mul(ENTRY as u64));
    raw.saturating_add(raw / 512).saturating_add(1024)
}

fn bad(problem: impl Into<String>) -> FormatError {
    FormatError::Index(problem.into())
}

impl ChunkIndex {
    /// The index, compressed (level 3: the hashes do not compress; the offsets do a little).
    /// Version 2 when every entry has its frame hash (every index winbundle writes now).
    pub fn encode(&self) -> Vec<u8> {
        let v2 = self.entries.iter().all(|e| e.frame_hash.is_some());
        let mut raw = Vec::with_capacity(HEADER + self.entries.len() * ENTRY);
        raw.extend_from_slice(MAGIC);
        raw.extend_from_slice(&(if v2 { 2u32 } else { 1 }).to_le_bytes());
        raw.extend_from_slice(&BLAKE3.to_le_bytes());
        raw.extend_from_slice(&self.chunk_size.to_le_bytes());
        raw.extend_from_slice(&self.volume_size.to_le_bytes());
        raw.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            raw.extend_from_slice(&e.hash);
            if v2 {
                raw.extend_from_slice(&e.frame_hash.unwrap_or_default());
            }
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
        let limit = (HEADER as u64).saturating_add(max_chunks.saturating_mul(ENTRY as u64));
        // Decompressed as it comes, never into a buffer of the limit: memory follows the
        // frame's actual content, and stops one byte past the limit.
        if let Ok(Some(n)) = zstd::zstd_safe::get_frame_content_size(bytes)
            && n > limit
        {
            return Err(bad(format!("not a zstd frame of at most {limit} bytes: it holds {n}")));
        }
        let mut raw = Vec::new();
        let read = zstd::stream::read::Decoder::new(bytes)
            .and_then(|d| std::io::Read::read_to_end(&mut std::io::Read::take(d, limit.saturating_add(1)), &mut raw));
        if let Err(e) = read {
            return Err(bad(format!("not a zstd frame of at most {limit} bytes: {e}")));
        }
        if raw.len() as u64 > limit {
            return Err(bad(format!("not a zstd frame of at most {limit} bytes")));
        }
        if raw.len() < HEADER || &raw[..8] != MAGIC {
            return Err(bad("not a winbundle chunk index (bad magic)"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(raw[o..o + 4].try_into().unwrap_or_default());
        let u64_at = |o: usize| u64::from_le_bytes(raw[o..o + 8].try_into().unwrap_or_default());
        let entry = match u32_at(8) {
            1 => ENTRY_V1,
            2 => ENTRY,
            v => {
                return Err(bad(format!(
                    "index version {v} is not supported (this winbundle reads 1 and 2): use a newer winbundle"
                )));
            }
        };
        if u32_at(12) != BLAKE3 {
            return Err(bad(format!("unknown hash algorithm {}", u32_at(12))));
        }
        let (chunk_size, volume_size, count) = (u64_at(16), u64_at(24), u64_at(32));
        if chunk_size == 0 || count != volume_size.div_ceil(chunk_size) {
            return Err(bad(format!(
                "{count} chunks of {chunk_size} bytes do not make a volume of {volume_size} bytes"
            )));
        }
        if (raw.len() - HEADER) as u64 != count.saturating_mul(entry as u64) {
            return Err(bad(format!(
                "{} bytes of entries for {count} chunks",
                raw.len() - HEADER
            )));
        }
        let hash_at = |e: &[u8], at: usize| -> [u8; 32] { e[at..at + 32].try_into().unwrap_or_default() };
        let entries = raw[HEADER..]
            .chunks_exact(entry)
            .map(|e| {
                let (frame_hash, rest) = match entry {
                    ENTRY => (Some(hash_at(e, 32)), 64),
                    _ => (None, 32),
                };
                IndexEntry {
                    hash: hash_at(e, 0),
                    frame_hash,
                    offset: u64::from_le_bytes(e[rest..rest + 8].try_into().unwrap_or_default()),
                    length: u32::from_le_bytes(e[rest + 8..rest + 12].try_into().unwrap_or_default()),
                    raw_len: u32::from_le_bytes(e[rest + 12..rest + 16].try_into().unwrap_or_default()),
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
                    frame_hash: Some(frame_hash(&[i as u8; 3])),
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
    fn version_1_indexes_without_frame_hashes_are_still_read() {
        let mut idx = sample();
        for e in &mut idx.entries {
            e.frame_hash = None;
        }
        let bytes = idx.encode();
        let raw = zstd::decode_all(&bytes[..]).unwrap();
        assert_eq!(u32::from_le_bytes(raw[8..12].try_into().unwrap()), 1);
        assert_eq!(raw.len(), HEADER + 3 * ENTRY_V1);
        assert_eq!(ChunkIndex::decode(&bytes, 3).unwrap(), idx);
        let v2 = zstd::decode_all(&sample().encode()[..]).unwrap();
        assert_eq!(u32::from_le_bytes(v2[8..12].try_into().unwrap()), 2);
        assert_eq!(v2.len(), HEADER + 3 * ENTRY);
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
        case(&|r| r[8] = 3, 3, "version 3");
        case(&|r| r[12] = 9, 3, "hash algorithm");
        case(&|r| r[32] = 4, 3, "do not make a volume");
        case(&|r| r.truncate(r.len() - 1), 3, "bytes of entries");
        case(&|_| {}, 1, "at most"); // more entries than the manifest allows
        let err = ChunkIndex::decode(b"garbage", 3).unwrap_err();
        assert!(err.to_string().contains("not a zstd frame"), "{err}");
    }
}
