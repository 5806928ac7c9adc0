//! `P.index.zst`: the chunk index. Per chunk, the BLAKE3 hash of its plaintext (the image bytes)
//! and where its frame sits in the data stream. It lets a later bundle of the same instance find
//! the chunks that did not change (an incremental bundle reuses their frames), and lets `verify`
//! and `restore` check every chunk's plaintext with a strong hash. The manifest records the
//! index object's size and SHA-256, so the index is covered like every data part.
//!
//! Layout (little-endian), compressed as one zstd frame:
//! `"WBINDEX1"` | u32 version = 3 | u32 hash = 1 (BLAKE3-256) | u64 chunk_size | u64 volume_size |
//! u64 chunk_count | chunk_count × { [u8; 32] plaintext hash | [u8; 32] frame hash | u64 frame
//! offset | u32 frame length | u32 plaintext length | u64 allocation digest } | u64 NTFS serial |
//! u32 MFT record size | u32 flags = 0 | u64 record_count | record_count × u64 record digest.
//!
//! The allocation digest and the record digests (version 3) let a later bundle tell from NTFS
//! metadata which chunks may have changed, without reading them ([`crate::ntfs::changes`]).
//!
//! The frame hash (BLAKE3 of the compressed frame's bytes) lets a later bundle take a frame
//! from this one, or have the server copy it, and still know every byte of it: checking a frame
//! against it costs a fraction of decompressing. Version 1 (the first indexes, written for a
//! few days before frame hashes existed) has no frame hash and is still read; version 2 (before
//! 2026-12-05)  has neither allocation nor record digests: a later bundle then reads every chunk.

use super::FormatError;

const MAGIC: &[u8; 8] = b"WBINDEX1";
const HEADER: usize = 8 + 4 + 4 + 8 + 8 + 8;
/// Entry sizes of index versions 1, 2 and 3.
const ENTRY_V1: usize = 32 + 8 + 4 + 4;
const ENTRY_V2: usize = 32 + 32 + 8 + 4 + 4;
const ENTRY: usize = ENTRY_V2 + 8;
/// The record section's header: serial, record size, flags, record count.
const RECORDS_HEADER: usize = 8 + 4 + 4 + 8;
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
    /// [`alloc_digest`] of which bytes of the chunk hold data (version 3).
    pub alloc: Option<u64>,
}

/// The digests of every `$MFT` record of the volume when the bundle was made (version 3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordDigests {
    /// The volume's 64-bit serial number: a parent of another volume is not compared.
    pub serial: u64,
    pub record_size: u32,
    /// [`crate::ntfs::changes::record_digest`] of each record, in record order.
    pub digests: Vec<u64>,
}

/// The chunk index of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkIndex {
    pub chunk_size: u64,
    pub volume_size: u64,
    pub entries: Vec<IndexEntry>,
    /// The volume's record digests (version 3; a bundle of a volume that is not NTFS has none).
    pub records: Option<RecordDigests>,
}

/// The digest the index keeps of which bytes of a chunk hold data: `ranges` are (start, end)
/// volume offsets inside the chunk that begins at `start`. Equal digests mean the same
/// clusters are allocated (and not excluded) in both bundles' chunks.
pub fn alloc_digest(start: u64, ranges: &[(u64, u64)]) -> u64 {
    let mut h = blake3::Hasher::new();
    for &(s, e) in ranges {
        h.update(&(s - start).to_le_bytes());
        h.update(&(e - start).to_le_bytes());
    }
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap_or_default())
}

/// The hash the index records for a chunk's plaintext.
pub fn chunk_hash(plain: &[u8]) -> [u8; 32] {
    blake3::hash(plain).into()
}

/// The hash the index records for a frame's compressed bytes.
pub fn frame_hash(frame: &[u8]) -> [u8; 32] {
    blake3::hash(frame).into()
}

/// The largest index object of `chunks` chunks and `records` record digests: its raw bytes
/// plus what a zstd frame adds (a frame of incompressible data grows by a few bytes per 128 KiB
/// block).
pub fn max_size(chunks: u64, records: u64) -> u64 {
    let raw = ChunkIndex::raw_limit(chunks, records);
    raw.saturating_add(raw / 512).saturating_add(1024)
}

fn bad(problem: impl Into<String>) -> FormatError {
    FormatError::Index(problem.into())
}

impl ChunkIndex {
    /// The index, compressed (level 3: the hashes do not compress; the offsets do a little).
    /// Version 3 when every entry has its frame hash and allocation digest and the record
    /// digests are there (every index of an NTFS volume winbundle writes now), else 2 when
    /// every entry has its frame hash, else 1.
    pub fn encode(&self) -> Vec<u8> {
        let v2 = self.entries.iter().all(|e| e.frame_hash.is_some());
        let v3 = v2 && self.records.is_some() && self.entries.iter().all(|e| e.alloc.is_some());
        let records = self.records.as_ref().filter(|_| v3);
        let mut raw = Vec::with_capacity(
            HEADER + self.entries.len() * ENTRY + records.map_or(0, |r| RECORDS_HEADER + 8 * r.digests.len()),
        );
        raw.extend_from_slice(MAGIC);
        let version: u32 = if v3 {
            3
        } else if v2 {
            2
        } else {
            1
        };
        raw.extend_from_slice(&version.to_le_bytes());
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
            if v3 {
                raw.extend_from_slice(&e.alloc.unwrap_or_default().to_le_bytes());
            }
        }
        if let Some(r) = records {
            raw.extend_from_slice(&r.serial.to_le_bytes());
            raw.extend_from_slice(&r.record_size.to_le_bytes());
            raw.extend_from_slice(&0u32.to_le_bytes());
            raw.extend_from_slice(&(r.digests.len() as u64).to_le_bytes());
            for d in &r.digests {
                raw.extend_from_slice(&d.to_le_bytes());
            }
        }
        // Compressing bytes in memory does not fail; were it to, the raw bytes are not an index
        // and decode refuses them.
        zstd::bulk::compress(&raw, 3).unwrap_or(raw)
    }

    /// The largest raw (decompressed) index of at most `max_chunks` chunks and `max_records`
    /// record digests.
    fn raw_limit(max_chunks: u64, max_records: u64) -> u64 {
        (HEADER as u64)
            .saturating_add(max_chunks.saturating_mul(ENTRY as u64))
            .saturating_add(RECORDS_HEADER as u64)
            .saturating_add(max_records.saturating_mul(8))
    }

    /// The most a [`ChunkIndex::decode`] with `max_chunks` and `max_records` allocates,
    /// whatever its input: the decompressed bytes (at most [`Self::raw_limit`], +1 to see an
    /// overlong one) three times over while the buffer grows; one entry per chunk; one digest
    /// per record; 1 MiB of decoder buffers. The fuzz target `chunk_index` asserts it with a
    /// counting allocator.
    pub fn decode_memory_bound(max_chunks: u64, max_records: u64) -> u64 {
        let raw = Self::raw_limit(max_chunks, max_records).saturating_add(1);
        let entries = max_chunks.saturating_mul(std::mem::size_of::<IndexEntry>() as u64);
        raw.saturating_mul(3)
            .saturating_add(entries)
            .saturating_add(max_records.saturating_mul(8))
            .saturating_add(1 << 20)
    }

    /// Parses an index object, refusing anything malformed or inconsistent with its own header.
    /// `max_chunks` and `max_records` bound the allocation (the manifest's chunk count and the
    /// volume's `$MFT` record count; see [`ChunkIndex::decode_memory_bound`]).
    pub fn decode(bytes: &[u8], max_chunks: u64, max_records: u64) -> Result<Self, FormatError> {
        let limit = Self::raw_limit(max_chunks, max_records);
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
        let version = u32_at(&raw, 8);
        let entry = match version {
            1 => ENTRY_V1,
            2 => ENTRY_V2,
            3 => ENTRY,
            v => {
                return Err(bad(format!(
                    "index version {v} is not supported (this winbundle reads 1 to 3): use a newer winbundle"
                )));
            }
        };
        if u32_at(&raw, 12) != BLAKE3 {
            return Err(bad(format!("unknown hash algorithm {}", u32_at(&raw, 12))));
        }
        let (chunk_size, volume_size, count) = (u64_at(&raw, 16), u64_at(&raw, 24), u64_at(&raw, 32));
        if chunk_size == 0 || count != volume_size.div_ceil(chunk_size) {
            return Err(bad(format!(
                "{count} chunks of {chunk_size} bytes do not make a volume of {volume_size} bytes"
            )));
        }
        let entries_len = count.saturating_mul(entry as u64);
        let rest = (raw.len() - HEADER) as u64;
        let records_len = rest.checked_sub(entries_len).filter(|r| version == 3 || *r == 0);
        let Some(records_len) = records_len else {
            return Err(bad(format!("{rest} bytes of entries for {count} chunks")));
        };
        let entries = raw[HEADER..HEADER + entries_len as usize]
            .chunks_exact(entry)
            .map(|e| decode_entry(e, version))
            .collect();
        let records = if version == 3 {
            Some(decode_records(
                &raw[HEADER + entries_len as usize..],
                records_len,
                max_records,
            )?)
        } else {
            None
        };
        Ok(Self {
            chunk_size,
            volume_size,
            entries,
            records,
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

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default())
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default())
}

/// One entry of an index of `version` (its length checked by the caller).
fn decode_entry(e: &[u8], version: u32) -> IndexEntry {
    let hash_at = |at: usize| -> [u8; 32] { e[at..at + 32].try_into().unwrap_or_default() };
    let (frame_hash, rest) = match version {
        1 => (None, 32),
        _ => (Some(hash_at(32)), 64),
    };
    IndexEntry {
        hash: hash_at(0),
        frame_hash,
        offset: u64_at(e, rest),
        length: u32_at(e, rest + 8),
        raw_len: u32_at(e, rest + 12),
        alloc: (version >= 3).then(|| u64_at(e, rest + 16)),
    }
}

/// The record section of a version-3 index: `len` bytes, at most `max_records` digests.
fn decode_records(b: &[u8], len: u64, max_records: u64) -> Result<RecordDigests, FormatError> {
    if len < RECORDS_HEADER as u64 {
        return Err(bad(format!("the record digests' header is cut short ({len} bytes)")));
    }
    let count = u64_at(b, 16);
    if count > max_records {
        return Err(bad(format!(
            "{count} record digests for a volume of at most {max_records} MFT records"
        )));
    }
    if len - RECORDS_HEADER as u64 != count.saturating_mul(8) {
        return Err(bad(format!(
            "{} bytes of record digests for {count} records",
            len - RECORDS_HEADER as u64
        )));
    }
    Ok(RecordDigests {
        serial: u64_at(b, 0),
        record_size: u32_at(b, 8),
        digests: b[RECORDS_HEADER..].chunks_exact(8).map(|d| u64_at(d, 0)).collect(),
    })
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
                    alloc: Some(u64::from(i) * 7),
                })
                .collect(),
            records: Some(RecordDigests {
                serial: 0x1234,
                record_size: 1024,
                digests: vec![1, 2, 3, 4, 5],
            }),
        }
    }

    #[test]
    fn round_trips_and_matches_its_seek_table() {
        let idx = sample();
        let back = ChunkIndex::decode(&idx.encode(), 3, 5).unwrap();
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
    fn version_1_and_2_indexes_are_still_read() {
        let mut idx = sample();
        idx.records = None;
        for e in &mut idx.entries {
            e.frame_hash = None;
            e.alloc = None;
        }
        let bytes = idx.encode();
        let raw = zstd::decode_all(&bytes[..]).unwrap();
        assert_eq!(u32::from_le_bytes(raw[8..12].try_into().unwrap()), 1);
        assert_eq!(raw.len(), HEADER + 3 * ENTRY_V1);
        assert_eq!(ChunkIndex::decode(&bytes, 3, 0).unwrap(), idx);
        let mut idx2 = sample();
        idx2.records = None;
        for e in &mut idx2.entries {
            e.alloc = None;
        }
        let v2 = zstd::decode_all(&idx2.encode()[..]).unwrap();
        assert_eq!(u32::from_le_bytes(v2[8..12].try_into().unwrap()), 2);
        assert_eq!(v2.len(), HEADER + 3 * ENTRY_V2);
        assert_eq!(ChunkIndex::decode(&idx2.encode(), 3, 0).unwrap(), idx2);
        let v3 = zstd::decode_all(&sample().encode()[..]).unwrap();
        assert_eq!(u32::from_le_bytes(v3[8..12].try_into().unwrap()), 3);
        assert_eq!(v3.len(), HEADER + 3 * ENTRY + RECORDS_HEADER + 5 * 8);
    }

    #[test]
    fn malformed_indexes_are_refused_with_what_is_wrong() {
        let good = sample().encode();
        let raw = zstd::decode_all(&good[..]).unwrap();
        let case = |mutate: &dyn Fn(&mut Vec<u8>), max: u64, says: &str| {
            let mut r = raw.clone();
            mutate(&mut r);
            let err = ChunkIndex::decode(&zstd::encode_all(&r[..], 1).unwrap(), max, 5).unwrap_err();
            assert!(err.to_string().contains(says), "{says}: {err}");
        };
        case(&|r| r[0] = b'X', 3, "bad magic");
        case(&|r| r[8] = 4, 3, "version 4");
        case(&|r| r[12] = 9, 3, "hash algorithm");
        case(&|r| r[32] = 4, 3, "do not make a volume");
        case(&|r| r.truncate(r.len() - 1), 3, "bytes of record digests");
        case(&|r| r.truncate(HEADER + 3 * ENTRY + 4), 3, "cut short");
        case(&|r| r.truncate(HEADER + 3 * ENTRY - 1), 3, "bytes of entries");
        case(
            &|r| r[HEADER + 3 * ENTRY + 16] = 6,
            3,
            "6 record digests for a volume of at most 5",
        );
        case(&|r| r[8] = 2, 3, "bytes of entries"); // a version 2 header over version 3 entries
        case(&|_| {}, 1, "at most"); // more entries than the manifest allows
        let err = ChunkIndex::decode(b"garbage", 3, 5).unwrap_err();
        assert!(err.to_string().contains("not a zstd frame"), "{err}");
    }
}
