//! Reading a bundle back: `verify` checks every object against the manifest (sizes, the
//! SHA-256 of every part, the bundle digest, the seek table, every frame's content checksum,
//! and, where the bundle has a chunk index, every chunk's BLAKE3); `restore` does the same
//! while it rebuilds the raw volume.
//!
//! A restore writes to `OUTPUT.partial` (sparse where the data is zero) and renames it only
//! once everything checked out; on any failure the partial file is removed, so no file that
//! looks good is left behind.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::index::{ChunkIndex, chunk_hash, frame_hash};
use super::manifest::Manifest;
use super::{FormatError, Keys};
use crate::Error;
use crate::chunk::frame::{SeekEntry, ZeroFrame, frame_checksum, is_all_zero, parse_seek_table};
use crate::chunk::ordered::{BufPool, ordered_map};
use crate::progress::Progress;
use crate::store::ObjectStore;

fn integrity(what: String) -> Error {
    FormatError::Integrity { what }.into()
}

/// A part of the stream, with where it lives.
#[derive(Debug, Clone)]
struct PartSpan {
    object: usize,
    number: usize,
    stream_offset: u64,
    size: u64,
    sha256: [u8; 32],
}

/// A bundle whose manifest and seek table have been read and checked.
pub struct OpenedBundle<'s> {
    store: &'s dyn ObjectStore,
    pub manifest: Manifest,
    pub seek: Vec<SeekEntry>,
    /// The chunk index, checked against the manifest's digest and the seek table (bundles made
    /// before indexes existed have none).
    pub index: Option<ChunkIndex>,
    /// Stream offset of each object.
    object_offsets: Vec<u64>,
    parts: Vec<PartSpan>,
    /// Requests that read the stream at once.
    fetchers: usize,
}

/// What a read did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReadStats {
    pub chunks: u64,
    pub parts_verified: u64,
    pub stream_bytes: u64,
    pub volume_bytes: u64,
    /// Bytes actually written (zeros are skipped in sparse files).
    pub written_bytes: u64,
    pub elapsed: Duration,
}

impl<'s> OpenedBundle<'s> {
    /// Reads the manifest of `prefix` and the seek table; checks that every object is there
    /// with its recorded size.
    pub fn open(store: &'s dyn ObjectStore, prefix: &str) -> Result<Self, Error> {
        let keys = Keys::new(prefix);
        let key = keys.manifest();
        let bytes = store.get(&key)?;
        let manifest = Manifest::parse(&key, &bytes)?;
        let mut object_offsets = Vec::new();
        let mut parts = Vec::new();
        let mut offset = 0u64;
        let ps = manifest.data.part_size;
        for (i, o) in manifest.data.objects.iter().enumerate() {
            let size = store.size(&o.key)?;
            if size != o.size {
                return Err(integrity(format!(
                    "object {} is {size} bytes, the manifest says {}",
                    o.key, o.size
                )));
            }
            object_offsets.push(offset);
            let mut start = 0u64;
            for (n, (h, size)) in o.parts_sha256.iter().zip(o.part_lengths(ps)).enumerate() {
                let mut sha256 = [0u8; 32];
                hex::decode_to_slice(h, &mut sha256).map_err(|e| integrity(format!("{}: {e}", o.key)))?;
                parts.push(PartSpan {
                    object: i,
                    number: n,
                    stream_offset: offset + start,
                    size,
                    sha256,
                });
                start += size;
            }
            offset += o.size;
        }
        let mut b = Self {
            store,
            manifest,
            seek: Vec::new(),
            index: None,
            object_offsets,
            parts,
            fetchers: 2,
        };
        let d = &b.manifest.data;
        let mut table = vec![0u8; d.seek_table_size as usize];
        b.read_stream(d.seek_table_offset, &mut table)?;
        let seek = parse_seek_table(&table).map_err(Error::from)?;
        b.check_seek(&seek)?;
        b.seek = seek;
        b.index = b.read_index()?;
        Ok(b)
    }

    /// Reads the chunk index the manifest names and checks it: its SHA-256, its format, and
    /// that it describes the seek table's frames.
    fn read_index(&self) -> Result<Option<ChunkIndex>, Error> {
        let Some(info) = &self.manifest.index else {
            return Ok(None);
        };
        let bytes = self.store.get(&info.key)?;
        let digest = hex::encode(Sha256::digest(&bytes));
        if bytes.len() as u64 != info.size || digest != info.sha256 {
            return Err(integrity(format!(
                "the chunk index {} ({} bytes, SHA-256 {digest}) is not the one the manifest names ({} bytes, {})",
                info.key,
                bytes.len(),
                info.size,
                info.sha256
            )));
        }
        let m = &self.manifest;
        let index = ChunkIndex::decode(&bytes, m.chunk_count)?;
        let seek: Vec<(u32, u32)> = self.seek.iter().map(|e| (e.compressed, e.raw)).collect();
        index.check(m.chunk_size, m.volume_size, &seek)?;
        Ok(Some(index))
    }

    /// Sets how many ranged reads run at once (S3: more hides latency).
    pub fn set_fetchers(&mut self, n: usize) {
        self.fetchers = n.max(1);
    }

    fn check_seek(&self, seek: &[SeekEntry]) -> Result<(), Error> {
        let m = &self.manifest;
        if seek.len() as u64 != m.chunk_count {
            return Err(FormatError::SeekTable(format!("{} entries for {} chunks", seek.len(), m.chunk_count)).into());
        }
        let mut total = 0u64;
        for (i, e) in seek.iter().enumerate() {
            let expect = if i as u64 + 1 == m.chunk_count {
                m.volume_size - (m.chunk_count - 1) * m.chunk_size
            } else {
                m.chunk_size
            };
            if e.raw as u64 != expect {
                return Err(
                    FormatError::SeekTable(format!("chunk {i} holds {} bytes, expected {expect}", e.raw)).into(),
                );
            }
            total += e.compressed as u64;
        }
        if total != m.data.seek_table_offset {
            return Err(FormatError::SeekTable(format!(
                "frames add up to {total} bytes but the seek table starts at byte {}",
                m.data.seek_table_offset
            ))
            .into());
        }
        Ok(())
    }

    /// Reads stream bytes [offset, offset + buf.len()) across objects.
    pub fn read_stream(&self, mut offset: u64, mut buf: &mut [u8]) -> Result<(), Error> {
        while !buf.is_empty() {
            let i = self.object_offsets.partition_point(|&o| o <= offset) - 1;
            let obj = &self.manifest.data.objects[i];
            let within = offset - self.object_offsets[i];
            let n = ((obj.size - within) as usize).min(buf.len());
            let (head, tail) = buf.split_at_mut(n);
            self.store.read_at(&obj.key, within, head)?;
            buf = tail;
            offset += n as u64;
        }
        Ok(())
    }

    /// The data object holding stream byte `offset`, and where it starts in the stream.
    pub fn object_at(&self, offset: u64) -> (&super::manifest::ObjectInfo, u64) {
        let i = self.object_offsets.partition_point(|&o| o <= offset).saturating_sub(1);
        (&self.manifest.data.objects[i], self.object_offsets[i])
    }

    fn describe_part(&self, p: &PartSpan) -> String {
        let key = &self.manifest.data.objects[p.object].key;
        let (first, last) = self.chunks_in(p.stream_offset, p.stream_offset + p.size);
        format!(
            "SHA-256 mismatch in object {key}, part {} (bytes {}..{} of the object, chunks {first}..={last})",
            p.number,
            p.stream_offset - self.object_offsets[p.object],
            p.stream_offset - self.object_offsets[p.object] + p.size
        )
    }

    fn chunks_in(&self, start: u64, end: u64) -> (u64, u64) {
        let mut off = 0u64;
        let (mut first, mut last) = (None, 0);
        for (i, e) in self.seek.iter().enumerate() {
            let fe = off + e.compressed as u64;
            if fe > start && off < end {
                first.get_or_insert(i as u64);
                last = i as u64;
            }
            off = fe;
        }
        (first.unwrap_or(self.seek.len() as u64), last)
    }

    fn locate(&self, stream_offset: u64) -> (String, u64) {
        let i = self.object_offsets.partition_point(|&o| o <= stream_offset) - 1;
        (
            self.manifest.data.objects[i].key.clone(),
            stream_offset - self.object_offsets[i],
        )
    }

    /// Streams every frame through parallel decompression, checking parts and frames, and
    /// hands each chunk's bytes in order to `out`.
    fn stream(
        &self,
        threads: usize,
        progress: &dyn Progress,
        cancel: &AtomicBool,
        mut out: impl FnMut(u64, &[u8], bool) -> Result<(), Error>,
    ) -> Result<ReadStats, Error> {
        let started = Instant::now();
        // The shared all-zero frame (the free space of a volume): recognised by its bytes and
        // handed on as zeros without decompressing 4 MiB each time. `out` is told (true), so a
        // file restore leaves a hole without scanning the bytes.
        let chunk_size = self.manifest.chunk_size as usize;
        let zero = ZeroFrame::new(chunk_size, self.manifest.compression.level).ok();
        let zeros = vec![0u8; if zero.is_some() { chunk_size } else { 0 }];
        let zero_hash = self.index.as_ref().map(|_| chunk_hash(&vec![0u8; chunk_size]));
        let hash_of = |i: u64| self.index.as_ref().map(|idx| idx.entries[i as usize].hash);
        let frame_hash_of = |i: u64| self.index.as_ref().and_then(|idx| idx.entries[i as usize].frame_hash);
        let frames = BufPool::default();
        let raws = BufPool::default();
        let mut stats = ReadStats::default();
        let mut offsets = Vec::with_capacity(self.seek.len());
        let mut off = 0u64;
        for e in &self.seek {
            offsets.push(off);
            off += e.compressed as u64;
        }
        // Part hashing follows the stream as the producer reads it.
        let mut hasher = Sha256::new();
        let mut part_index = 0usize;
        let mut part_filled = 0u64;
        let mut bundle = Sha256::new();
        let mut parts_verified = 0u64;
        let mut feed = |mut bytes: &[u8]| -> Result<(), Error> {
            while !bytes.is_empty() {
                let p = &self.parts[part_index];
                let n = ((p.size - part_filled) as usize).min(bytes.len());
                hasher.update(&bytes[..n]);
                part_filled += n as u64;
                bytes = &bytes[n..];
                if part_filled == p.size {
                    let digest: [u8; 32] = std::mem::take(&mut hasher).finalize().into();
                    if digest != p.sha256 {
                        return Err(integrity(self.describe_part(p)));
                    }
                    bundle.update(digest);
                    parts_verified += 1;
                    part_index += 1;
                    part_filled = 0;
                }
            }
            Ok(())
        };
        let count = self.seek.len() as u64;
        let fetchers = self.fetchers;
        let stream_size = self.manifest.data.stream_size;
        let blocks = stream_size.div_ceil(FETCH_BLOCK);
        // Memory: `fetchers` blocks being fetched, as many waiting their turn, one in the
        // channel and one being read: 2 × fetchers + 2 blocks, recycled through `pool`.
        let (block_tx, block_rx) = crossbeam_channel::bounded::<Result<Vec<u8>, Error>>(1);
        let pool = BufPool::default();
        let pool = &pool;
        std::thread::scope(|scope| {
            // Fetchers: the stream in FETCH_BLOCK pieces, several at once, handed on in order.
            scope.spawn(move || {
                let sent = ordered_map(
                    blocks,
                    fetchers,
                    fetchers,
                    cancel,
                    Ok,
                    || Ok(()),
                    |_, k, _| {
                        let start = k * FETCH_BLOCK;
                        let mut buf = pool.take();
                        buf.resize((stream_size - start).min(FETCH_BLOCK) as usize, 0);
                        self.read_stream(start, &mut buf)?;
                        Ok(buf)
                    },
                    |_, block| block_tx.send(Ok(block)).map_err(|_| Error::Cancelled),
                );
                if let Err(e) = sent {
                    let _ = block_tx.send(Err(e));
                }
            });
            let mut cursor = BlockCursor {
                rx: block_rx,
                block: Vec::new(),
                pos: 0,
                pool,
            };
            ordered_map(
                count,
                threads,
                2 * threads + 2,
                cancel,
                |i| {
                    let e = self.seek[i as usize];
                    let mut buf = frames.take();
                    buf.resize(e.compressed as usize, 0);
                    cursor.read_exact(&mut buf)?;
                    feed(&buf)?;
                    progress.read(buf.len() as u64);
                    if i + 1 == count {
                        let mut table = vec![0u8; self.manifest.data.seek_table_size as usize];
                        cursor.read_exact(&mut table)?;
                        feed(&table)?;
                    }
                    Ok(buf)
                },
                || zstd::bulk::Decompressor::new().map_err(|e| Error::Compress(e.to_string())),
                |dec, i, frame| {
                    let e = self.seek[i as usize];
                    let fail = |why: String| {
                        let (key, at) = self.locate(offsets[i as usize]);
                        integrity(format!("chunk {i} (object {key}, byte {at}): {why}"))
                    };
                    if frame_checksum(&frame) != e.checksum {
                        return Err(fail("its frame checksum differs from the seek table".into()));
                    }
                    if frame_hash_of(i).is_some_and(|h| h != frame_hash(&frame)) {
                        return Err(fail("its bytes' BLAKE3 differs from the chunk index".into()));
                    }
                    if e.raw as usize == chunk_size && zero.as_ref().is_some_and(|z| z.bytes == frame) {
                        if hash_of(i).is_some_and(|h| Some(h) != zero_hash) {
                            return Err(fail("its plaintext's BLAKE3 differs from the chunk index".into()));
                        }
                        frames.give(frame);
                        return Ok((Vec::new(), true));
                    }
                    let mut raw = raws.take();
                    raw.clear();
                    raw.reserve(e.raw as usize);
                    let n = dec
                        .decompress_to_buffer(&frame, &mut raw)
                        .map_err(|err| fail(format!("zstd: {err}")))?;
                    if n != e.raw as usize {
                        return Err(fail(format!("decompressed to {n} bytes, expected {}", e.raw)));
                    }
                    if hash_of(i).is_some_and(|h| h != chunk_hash(&raw)) {
                        return Err(fail("its plaintext's BLAKE3 differs from the chunk index".into()));
                    }
                    frames.give(frame);
                    Ok((raw, false))
                },
                |i, (raw, is_zero)| {
                    if is_zero {
                        out(i, &zeros, true)?;
                        stats.volume_bytes += zeros.len() as u64;
                    } else {
                        out(i, &raw, false)?;
                        stats.volume_bytes += raw.len() as u64;
                        raws.give(raw);
                    }
                    Ok(())
                },
            )
        })?;
        if part_index != self.parts.len() {
            return Err(integrity(format!(
                "only {part_index} of {} parts were read",
                self.parts.len()
            )));
        }
        let digest = hex::encode(bundle.finalize());
        if digest != self.manifest.bundle_sha256 {
            return Err(integrity(format!(
                "the bundle digest is {digest}, the manifest says {}",
                self.manifest.bundle_sha256
            )));
        }
        tracing::info!(
            "{} chunks and {parts_verified} parts checked ({} bytes of stream) in {:.2} s",
            count,
            self.manifest.data.stream_size,
            started.elapsed().as_secs_f64()
        );
        stats.chunks = count;
        stats.parts_verified = parts_verified;
        stats.stream_bytes = self.manifest.data.stream_size;
        stats.elapsed = started.elapsed();
        Ok(stats)
    }

    /// Checks everything, writes nothing.
    pub fn verify(&self, threads: usize, progress: &dyn Progress, cancel: &AtomicBool) -> Result<ReadStats, Error> {
        progress.start(self.manifest.data.stream_size);
        let r = self.stream(threads, progress, cancel, |_, _, _| Ok(()));
        progress.finish();
        r
    }

    /// Restores the raw volume to `target`.
    pub fn restore(
        &self,
        target: &RestoreTarget,
        threads: usize,
        progress: &dyn Progress,
        cancel: &AtomicBool,
    ) -> Result<ReadStats, Error> {
        progress.start(self.manifest.data.stream_size);
        let chunk = self.manifest.chunk_size;
        let r = match target {
            RestoreTarget::Stdout => {
                let stdout = std::io::stdout();
                let mut w = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
                let mut written = 0u64;
                let mut stats = self.stream(threads, progress, cancel, |_, raw, _| {
                    written += raw.len() as u64;
                    w.write_all(raw).map_err(|e| io_err("write to standard output", e))
                })?;
                w.flush().map_err(|e| io_err("write to standard output", e))?;
                stats.written_bytes = written;
                Ok(stats)
            }
            RestoreTarget::File { path, force } => self.restore_file(path, *force, chunk, threads, progress, cancel),
        };
        progress.finish();
        r
    }

    fn restore_file(
        &self,
        path: &Path,
        force: bool,
        chunk: u64,
        threads: usize,
        progress: &dyn Progress,
        cancel: &AtomicBool,
    ) -> Result<ReadStats, Error> {
        let meta = std::fs::metadata(path).ok();
        let device = meta.as_ref().is_some_and(|m| !m.is_file() && !m.is_dir());
        if meta.as_ref().is_some_and(|m| m.is_dir()) {
            return Err(Error::InvalidParameter {
                parameter: "--output",
                message: format!("{} is a directory", path.display()),
            });
        }
        if meta.is_some() && !device && !force {
            return Err(Error::InvalidParameter {
                parameter: "--output",
                message: format!("{} exists: pass --force to replace it", path.display()),
            });
        }
        let volume = self.manifest.volume_size;
        if device {
            // A block device: write every chunk, zeros included; it cannot be renamed.
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| io_err(&format!("open {}", path.display()), e))?;
            let mut written = 0;
            let mut stats = self.stream(threads, progress, cancel, |i, raw, _| {
                written += raw.len() as u64;
                write_at(&f, raw, i * chunk).map_err(|e| io_err(&format!("write {}", path.display()), e))
            })?;
            f.sync_all()
                .map_err(|e| io_err(&format!("sync {}", path.display()), e))?;
            stats.written_bytes = written;
            return Ok(stats);
        }
        let tmp = partial_path(path);
        let f = File::create(&tmp).map_err(|e| io_err(&format!("create {}", tmp.display()), e))?;
        let result = (|| {
            f.set_len(volume)
                .map_err(|e| io_err(&format!("size {}", tmp.display()), e))?;
            let mut written = 0;
            let mut stats = self.stream(threads, progress, cancel, |i, raw, known_zero| {
                if known_zero || is_all_zero(raw) {
                    return Ok(()); // a hole in the sparse file
                }
                written += raw.len() as u64;
                write_at(&f, raw, i * chunk).map_err(|e| io_err(&format!("write {}", tmp.display()), e))
            })?;
            f.sync_all()
                .map_err(|e| io_err(&format!("sync {}", tmp.display()), e))?;
            stats.written_bytes = written;
            std::fs::rename(&tmp, path)
                .map_err(|e| io_err(&format!("rename {} to {}", tmp.display(), path.display()), e))?;
            Ok(stats)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// Stream bytes fetched per request when reading a bundle.
const FETCH_BLOCK: u64 = 8 << 20;

/// Reads the stream sequentially from the blocks the fetchers deliver in order.
struct BlockCursor<'p> {
    rx: crossbeam_channel::Receiver<Result<Vec<u8>, Error>>,
    block: Vec<u8>,
    pos: usize,
    /// Where a finished block goes back to, for the fetchers to fill again.
    pool: &'p BufPool,
}

impl BlockCursor<'_> {
    fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<(), Error> {
        while !buf.is_empty() {
            if self.pos == self.block.len() {
                let next = self
                    .rx
                    .recv()
                    .map_err(|_| Error::Internal("the stream ended before the seek table said".into()))??;
                self.pool.give(std::mem::replace(&mut self.block, next));
                self.pos = 0;
            }
            let n = (self.block.len() - self.pos).min(buf.len());
            let (head, tail) = buf.split_at_mut(n);
            head.copy_from_slice(&self.block[self.pos..self.pos + n]);
            self.pos += n;
            buf = tail;
        }
        Ok(())
    }
}

/// Where a restore goes.
#[derive(Debug, Clone)]
pub enum RestoreTarget {
    File { path: PathBuf, force: bool },
    Stdout,
}

fn partial_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".partial");
    PathBuf::from(s)
}

fn io_err(context: &str, source: std::io::Error) -> Error {
    Error::Io {
        context: context.to_string(),
        source,
    }
}

use crate::source::disk::write_all_at as write_at;
