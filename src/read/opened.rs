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

use super::frames::{Opened, StoredFrames};
use super::output::{self, ChunkSink};
use crate::Error;
use crate::chunk::frame::{SeekEntry, parse_seek_table};
use crate::chunk::ordered::{BufPool, ordered_map};
use crate::crypt::keyring::Keyring;
use crate::crypt::{CryptError, FrameCipher};
use crate::format::index::{ChunkIndex, chunk_hash};
use crate::format::manifest::{MAX_KEY_OBJECT_BYTES, MAX_MANIFEST_BYTES, Manifest};
use crate::format::{FormatError, Keys};
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
    /// An encrypted bundle's frame cipher, when its data key was unlocked.
    cipher: Option<FrameCipher>,
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
    /// What was checked: "full" (part digests, bundle digest, frame checksums and hashes,
    /// plaintext hashes), "frames" (every frame's bytes against the chunk index, and its
    /// checksum), "parts" (part digests and frame checksums), or "stored" (an encrypted bundle
    /// without its key: part digests, the bundle digest, the index and key objects' digests).
    pub checked: &'static str,
    pub elapsed: Duration,
}

impl<'s> OpenedBundle<'s> {
    /// Reads the manifest of `prefix` and the seek table; checks that every object is there
    /// with its recorded size. An encrypted bundle's data key is unlocked with `keyring` (a
    /// key object no identity in it opens is an error); with an empty keyring it stays locked:
    /// only its stored bytes can be checked ([`Self::verify`]), and the chunk index is not read.
    pub fn open(store: &'s dyn ObjectStore, prefix: &str, keyring: &Keyring) -> Result<Self, Error> {
        let keys = Keys::new(prefix);
        let key = keys.manifest();
        let bytes = get_manifest(store, &key)?;
        let manifest = Manifest::parse(&key, &bytes)?;
        manifest.check_keys(&keys)?;
        let cipher = unlock(store, &manifest, keyring)?;
        Self::from_manifest(store, manifest, cipher)
    }

    /// [`Self::open`], then [`Self::require_key`]: for readers of the plaintext.
    pub fn open_readable(store: &'s dyn ObjectStore, prefix: &str, keyring: &Keyring) -> Result<Self, Error> {
        let b = Self::open(store, prefix, keyring)?;
        b.require_key(prefix)?;
        Ok(b)
    }

    /// True for an encrypted bundle (format version 4).
    pub fn encrypted(&self) -> bool {
        self.manifest.encryption.is_some()
    }

    /// An error naming what to pass when the bundle is encrypted and its key was not unlocked.
    pub fn require_key(&self, prefix: &str) -> Result<(), Error> {
        match (&self.manifest.encryption, &self.cipher) {
            (Some(e), None) => Err(CryptError::Locked {
                prefix: prefix.to_string(),
                key_id: e.key_id.clone(),
            }
            .into()),
            _ => Ok(()),
        }
    }

    /// How this bundle's stored frames are checked and opened.
    pub(crate) fn stored_frames(&self) -> StoredFrames {
        StoredFrames::new(
            self.manifest.chunk_size as usize,
            self.manifest.compression.level,
            self.encrypted(),
            self.cipher.clone(),
        )
    }

    /// The frame cipher of an encrypted bundle whose key was unlocked.
    pub fn cipher(&self) -> Option<&FrameCipher> {
        self.cipher.as_ref()
    }

    /// The disk stream around C: (format 3), opened like a bundle of its own: its objects, seek
    /// table and part digests. None for bundles that keep C: only.
    pub fn disk_stream(&self) -> Result<Option<OpenedBundle<'s>>, Error> {
        let Some(d) = self.manifest.disk.clone() else {
            return Ok(None);
        };
        let mut m = self.manifest.clone();
        m.disk = None;
        m.volume_size = d.stream_plain_size;
        m.chunk_count = d.chunk_count;
        m.data = d.data;
        m.bundle_sha256 = d.bundle_sha256;
        m.index = None;
        m.parent = None;
        let mut b = Self::from_manifest(self.store, m, self.cipher.clone())?;
        b.fetchers = self.fetchers;
        Ok(Some(b))
    }

    /// Opens the data stream a parsed manifest describes.
    fn from_manifest(
        store: &'s dyn ObjectStore,
        manifest: Manifest,
        cipher: Option<FrameCipher>,
    ) -> Result<Self, Error> {
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
                    stream_offset: add(offset, start, &o.key)?,
                    size,
                    sha256,
                });
                start = add(start, size, &o.key)?;
            }
            offset = add(offset, o.size, &o.key)?;
        }
        let mut b = Self {
            store,
            manifest,
            seek: Vec::new(),
            index: None,
            object_offsets,
            parts,
            fetchers: 2,
            cipher,
        };
        let d = &b.manifest.data;
        // Its size was checked against the chunk count (at most MAX_CHUNKS) and the objects'
        // stored sizes before this allocation.
        let mut table = vec![0u8; usize::try_from(d.seek_table_size).map_err(|_| too_big("seek table"))?];
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
        // The index of `chunk_count` chunks is one zstd frame of at most this many bytes: checked
        // before it is read (a frame does not grow much past its content).
        let limit = crate::format::index::max_size(self.manifest.chunk_count, self.manifest.source.ntfs.mft_records)
            + crate::crypt::OVERHEAD as u64;
        let stored = self.store.size(&info.key)?;
        if stored != info.size || stored > limit {
            return Err(FormatError::Index(format!(
                "{} is {stored} bytes; the manifest says {}, and an index of {} chunks is at most {limit}",
                info.key, info.size, self.manifest.chunk_count
            ))
            .into());
        }
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
        let mut opened = Vec::new();
        let bytes = match (&m.encryption, &self.cipher) {
            (None, _) => &bytes,
            // Locked: its digest is checked, its contents stay sealed.
            (Some(_), None) => return Ok(None),
            (Some(_), Some(c)) => {
                c.open(&bytes, &mut opened)
                    .map_err(|e| integrity(format!("the chunk index {}: {e}", info.key)))?;
                &opened
            }
        };
        let index = ChunkIndex::decode(bytes, m.chunk_count, m.source.ntfs.mft_records)?;
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
        // (Manifest::parse checked that chunk_count chunks of chunk_size make the volume.)
        let last = m.volume_size - (m.chunk_count - 1) * m.chunk_size;
        for (i, e) in seek.iter().enumerate() {
            let expect = if i as u64 + 1 == m.chunk_count {
                last
            } else {
                m.chunk_size
            };
            if e.raw as u64 != expect {
                return Err(
                    FormatError::SeekTable(format!("chunk {i} holds {} bytes, expected {expect}", e.raw)).into(),
                );
            }
            // u32 sizes of at most MAX_CHUNKS frames: no u64 overflow.
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
    pub fn object_at(&self, offset: u64) -> (&crate::format::manifest::ObjectInfo, u64) {
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

    /// The data object holding stream byte `stream_offset`, and the byte within it.
    pub(crate) fn locate(&self, stream_offset: u64) -> (String, u64) {
        let i = self.object_offsets.partition_point(|&o| o <= stream_offset) - 1;
        (
            self.manifest.data.objects[i].key.clone(),
            stream_offset - self.object_offsets[i],
        )
    }

    /// How a read checks the bundle: everything (`verify`), or what proves every restored byte
    /// (`restore`). With a chunk index that has frame hashes: every frame's bytes against its
    /// BLAKE3 (the index is covered by the manifest's SHA-256) and zstd's content checksum as it
    /// decompresses; BLAKE3 runs at several times SHA-256's speed, in the decompressing threads.
    /// Without: every part's SHA-256, the bundle digest, and the content checksums. The part
    /// digests (with frame hashes) and the plaintext hashes see the same bytes again; `verify`
    /// checks those too.
    fn check_for(&self, restore: bool) -> Check {
        if self.encrypted() && self.cipher.is_none() {
            return Check::Stored;
        }
        let frame_hashes = self
            .index
            .as_ref()
            .is_some_and(|i| i.entries.iter().all(|e| e.frame_hash.is_some()));
        match (restore, frame_hashes) {
            (false, _) => Check::Full,
            (true, true) => Check::Frames,
            (true, false) => Check::Parts,
        }
    }

    /// Streams every frame through parallel decompression, checking parts and frames as
    /// `check` says, and hands each chunk's bytes to `out`.
    fn stream(
        &self,
        threads: usize,
        progress: &dyn Progress,
        cancel: &AtomicBool,
        check: Check,
        mut out: Output<'_>,
    ) -> Result<ReadStats, Error> {
        let started = Instant::now();
        let hash_parts = check != Check::Frames;
        let mut zeros_buf = Vec::new();
        let decoder = Decoder::new(self, check, out.positional(), &mut zeros_buf);
        let units = &self.fetch_units();
        // Memory: `fetchers` units being fetched, as many waiting their turn, one in the channel
        // and one being read: 2 × fetchers + 2 units, recycled through `pool`.
        let (block_tx, block_rx) = crossbeam_channel::bounded::<Result<Vec<u8>, Error>>(1);
        let pool = &BufPool::default();
        let mut stats = ReadStats::default();
        let (parts_verified, bundle_digest) = std::thread::scope(|scope| {
            let fetched = scope.spawn(move || self.fetch(units, hash_parts, cancel, pool, block_tx));
            let mut cursor = BlockCursor::new(block_rx, pool);
            let decoded = decoder.run(threads, progress, cancel, &mut cursor, &mut out, &mut stats);
            // The fetchers stop once nobody reads what they send.
            drop(cursor);
            join_fetchers(fetched, decoded)
        })?;
        self.check_digests(hash_parts, parts_verified, bundle_digest)?;
        Ok(self.finish_stats(stats, check, parts_verified, started))
    }

    /// The fetch units: each part whole (its SHA-256 computed by the fetcher that read it, so
    /// parts are hashed in parallel), or, for parts over WHOLE_PART, pieces of FETCH_BLOCK
    /// hashed in stream order.
    fn fetch_units(&self) -> Vec<FetchUnit> {
        let mut units = Vec::new();
        for (n, p) in self.parts.iter().enumerate() {
            if p.size <= WHOLE_PART {
                units.push(FetchUnit {
                    start: p.stream_offset,
                    len: p.size,
                    whole: Some(n),
                });
            } else {
                let mut at = 0;
                while at < p.size {
                    units.push(FetchUnit {
                        start: p.stream_offset + at,
                        len: (p.size - at).min(FETCH_BLOCK),
                        whole: None,
                    });
                    at += FETCH_BLOCK;
                }
            }
        }
        units
    }

    /// The fetchers: the stream unit by unit, several at once, handed on in order through
    /// `blocks`; with `hash_parts`, each part's digest checked in order, and the bundle digest
    /// over them. Returns the parts checked and the bundle digest, or None once it has sent
    /// its error down `blocks`.
    fn fetch(
        &self,
        units: &[FetchUnit],
        hash_parts: bool,
        cancel: &AtomicBool,
        pool: &BufPool,
        blocks: crossbeam_channel::Sender<Result<Vec<u8>, Error>>,
    ) -> Option<(u64, Sha256)> {
        let mut parts = PartChecker::new(self);
        let sent = ordered_map(
            units.len() as u64,
            self.fetchers,
            self.fetchers,
            cancel,
            Ok,
            || Ok(()),
            |_, k, _| self.fetch_unit(units[k as usize], hash_parts, pool),
            |k, (block, digest)| {
                if hash_parts {
                    parts.check_unit(units[k as usize], digest, &block)?;
                }
                blocks.send(Ok(block)).map_err(|_| Error::Cancelled)
            },
        );
        if let Err(e) = sent {
            let _ = blocks.send(Err(e));
            return None;
        }
        Some(parts.finish())
    }

    /// Reads one fetch unit into a buffer from `pool`; a whole part's SHA-256 with it if `hash`.
    fn fetch_unit(&self, unit: FetchUnit, hash: bool, pool: &BufPool) -> Result<(Vec<u8>, Option<[u8; 32]>), Error> {
        let mut buf = pool.take();
        buf.resize(unit.len as usize, 0);
        self.read_stream(unit.start, &mut buf)?;
        let digest: Option<[u8; 32]> = unit.whole.filter(|_| hash).map(|_| Sha256::digest(&buf).into());
        Ok((buf, digest))
    }

    /// With part digests checked (`hash_parts`): that every part was read, and that the bundle
    /// digest over them is the manifest's.
    fn check_digests(&self, hash_parts: bool, parts_verified: u64, bundle_digest: Sha256) -> Result<(), Error> {
        if hash_parts && parts_verified != self.parts.len() as u64 {
            return Err(integrity(format!(
                "only {parts_verified} of {} parts were read",
                self.parts.len()
            )));
        }
        let digest = hex::encode(bundle_digest.finalize());
        if hash_parts && digest != self.manifest.bundle_sha256 {
            return Err(integrity(format!(
                "the bundle digest is {digest}, the manifest says {}",
                self.manifest.bundle_sha256
            )));
        }
        Ok(())
    }

    /// Logs what the read checked and fills in the rest of its `stats`.
    fn finish_stats(&self, mut stats: ReadStats, check: Check, parts_verified: u64, started: Instant) -> ReadStats {
        let count = self.seek.len() as u64;
        tracing::info!(
            "{} chunks{} checked ({} bytes of stream) in {:.2} s",
            count,
            match check {
                Check::Full => format!(", {parts_verified} parts and every plaintext"),
                Check::Parts => format!(" and {parts_verified} parts"),
                Check::Frames => " (every frame against the chunk index)".to_string(),
                Check::Stored =>
                    format!(" and {parts_verified} parts (encrypted, no identity given: the stored bytes only)"),
            },
            self.manifest.data.stream_size,
            started.elapsed().as_secs_f64()
        );
        stats.chunks = count;
        stats.parts_verified = parts_verified;
        stats.checked = match check {
            Check::Full => "full",
            Check::Parts => "parts",
            Check::Frames => "frames",
            Check::Stored => "stored",
        };
        stats.stream_bytes = self.manifest.data.stream_size;
        stats.elapsed = started.elapsed();
        stats
    }

    /// Checks everything, writes nothing.
    pub fn verify(&self, threads: usize, progress: &dyn Progress, cancel: &AtomicBool) -> Result<ReadStats, Error> {
        let disk = self.disk_stream()?;
        let extra = disk.as_ref().map_or(0, |d| d.manifest.data.stream_size);
        progress.start(self.manifest.data.stream_size + extra);
        let check = match self.check_for(false) {
            Check::Stored => Check::Stored,
            _ => Check::Full,
        };
        let mut r = self.stream(threads, progress, cancel, check, Output::Nothing);
        // The disk around C: too (its part digests and frame checksums).
        if let (Ok(stats), Some(d)) = (&mut r, &disk) {
            let disk_check = match check {
                Check::Stored => Check::Stored,
                _ => Check::Parts,
            };
            match d.stream(threads, progress, cancel, disk_check, Output::Nothing) {
                Ok(s) => {
                    stats.parts_verified += s.parts_verified;
                    stats.stream_bytes += s.stream_bytes;
                }
                Err(e) => r = Err(e),
            }
        }
        progress.finish();
        r
    }

    /// Writes every chunk into `sink` where `place` says: `place(i, len)` gives how many of
    /// chunk `i`'s bytes to write and at which offset (None: none of them). Checks what
    /// `restore` checks. For `restore --disk`: C: at its offset, the disk pieces at theirs.
    pub fn restore_placed(
        &self,
        sink: &ChunkSink<'_>,
        place: &(dyn Fn(u64, usize) -> Option<(usize, u64)> + Sync),
        threads: usize,
        progress: &dyn Progress,
        cancel: &AtomicBool,
    ) -> Result<ReadStats, Error> {
        let check = self.check_for(true);
        let write = |i: u64, raw: &[u8], known_zero: bool| -> Result<u64, Error> {
            let Some((n, at)) = place(i, raw.len()) else {
                return Ok(0);
            };
            sink.write(&raw[..n.min(raw.len())], at, known_zero)
        };
        self.stream(threads, progress, cancel, check, Output::Positional(&write))
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
        let check = self.check_for(true);
        let r = match target {
            RestoreTarget::Stdout => {
                let mut w = std::io::BufWriter::with_capacity(1 << 20, raw_stdout()?);
                let mut written = 0u64;
                let mut write = |_: u64, raw: &[u8]| {
                    written += raw.len() as u64;
                    w.write_all(raw).map_err(|e| io_err("write to standard output", e))
                };
                let mut stats = self.stream(threads, progress, cancel, check, Output::Ordered(&mut write))?;
                w.flush().map_err(|e| io_err("write to standard output", e))?;
                stats.written_bytes = written;
                Ok(stats)
            }
            RestoreTarget::File {
                path,
                force,
                assume_zeroed,
                direct,
            } => self.restore_file(path, *force, *assume_zeroed, *direct, check, threads, progress, cancel),
        };
        progress.finish();
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn restore_file(
        &self,
        path: &Path,
        force: bool,
        assume_zeroed: bool,
        direct: bool,
        check: Check,
        threads: usize,
        progress: &dyn Progress,
        cancel: &AtomicBool,
    ) -> Result<ReadStats, Error> {
        let chunk = self.manifest.chunk_size;
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
            // A block device: every chunk written, zeros included (it may hold old data), unless
            // the user says it reads back zeros (--assume-zeroed); it cannot be renamed.
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| io_err(&format!("open {}", path.display()), e))?;
            // Zeros are written unless the device reads them back (--assume-zeroed).
            let sink = ChunkSink::new(&f, path, assume_zeroed, direct);
            let write = |i: u64, raw: &[u8], known_zero: bool| sink.write(raw, i * chunk, known_zero);
            let stats = self.stream(threads, progress, cancel, check, Output::Positional(&write))?;
            f.sync_all()
                .map_err(|e| io_err(&format!("sync {}", path.display()), e))?;
            return Ok(stats);
        }
        let tmp = partial_path(path);
        let f = File::create(&tmp).map_err(|e| io_err(&format!("create {}", tmp.display()), e))?;
        let result = (|| {
            f.set_len(volume)
                .map_err(|e| io_err(&format!("size {}", tmp.display()), e))?;
            // A new file reads back zeros where nothing was written: zero chunks, and zero runs
            // of SPARSE_RUN bytes or more inside chunks, stay holes.
            let sink = ChunkSink::new(&f, &tmp, true, direct);
            let write = |i: u64, raw: &[u8], known_zero: bool| sink.write(raw, i * chunk, known_zero);
            let stats = self.stream(threads, progress, cancel, check, Output::Positional(&write))?;
            f.sync_all()
                .map_err(|e| io_err(&format!("sync {}", tmp.display()), e))?;
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

/// An encrypted bundle's frame cipher: its key object read and checked against the manifest
/// (size, SHA-256) whenever the bundle is encrypted, then unlocked with `keyring`. None for a
/// plaintext bundle, or an encrypted one the keyring has nothing for (locked).
fn unlock(store: &dyn ObjectStore, m: &Manifest, keyring: &Keyring) -> Result<Option<FrameCipher>, Error> {
    let Some(e) = &m.encryption else {
        return Ok(None);
    };
    let k = &e.key_object;
    let size = store.size(&k.key)?;
    if size != k.size || size > MAX_KEY_OBJECT_BYTES {
        return Err(integrity(format!(
            "the key object {} is {size} bytes, the manifest says {}",
            k.key, k.size
        )));
    }
    let bytes = store.get(&k.key)?;
    let digest = hex::encode(Sha256::digest(&bytes));
    if digest != k.sha256 {
        return Err(integrity(format!(
            "the key object {} has SHA-256 {digest}, the manifest says {}",
            k.key, k.sha256
        )));
    }
    Ok(keyring.unlock(&e.key_id, &bytes)?.map(|key| key.frame_cipher()))
}

/// Reads the manifest `key`, refusing one over [`MAX_MANIFEST_BYTES`] by its size, unread.
pub fn get_manifest(store: &dyn ObjectStore, key: &str) -> Result<Vec<u8>, Error> {
    let size = store.size(key)?;
    if size > MAX_MANIFEST_BYTES {
        return Err(FormatError::Manifest {
            key: key.to_string(),
            problem: format!(
                "{size} bytes is larger than any manifest winbundle writes (at most {MAX_MANIFEST_BYTES}); it was not read"
            ),
        }
        .into());
    }
    Ok(store.get(key)?)
}

/// The most memory `OpenedBundle::open` then `verify` or `restore` with `threads` threads and
/// `fetchers` requests at once allocate for a bundle whose manifest is `manifest_bytes` long
/// and says `m` (the formula docs/file-access.md, "Reading bundles: limits", documents):
/// 32 MiB + 16 × the manifest + 256 bytes a chunk (seek table, index, offsets) + 160 bytes a
/// part + (2 × fetchers + 3) fetch units of min(stream, 32 MiB) + (2 × threads + 2) frames of
/// min(stream, …) (3 × threads + 2 for an encrypted bundle) + (2 × threads + 5) chunks of min(chunk size, volume). Every term is bounded
/// by the manifest's checked numbers, which `open` checks against the stored objects' sizes.
pub fn memory_bound(manifest_bytes: u64, m: &Manifest, threads: usize, fetchers: usize) -> u64 {
    let (t, f) = (threads.max(1) as u64, fetchers.max(1) as u64);
    let disk = m.disk.as_ref();
    let chunks = m.chunk_count + disk.map_or(0, |d| d.chunk_count);
    let parts: u64 = m
        .data
        .objects
        .iter()
        .chain(disk.map(|d| d.data.objects.iter()).into_iter().flatten())
        .map(|o| o.parts_sha256.len() as u64)
        .sum();
    let stream = m.data.stream_size.max(disk.map_or(0, |d| d.data.stream_size));
    let chunk = m
        .chunk_size
        .min(m.volume_size.max(disk.map_or(0, |d| d.stream_plain_size)));
    // An encrypted bundle's workers each hold one opened frame besides the sealed ones.
    let frames = if m.encryption.is_some() { 3 * t + 2 } else { 2 * t + 2 };
    (32u64 << 20)
        .saturating_add(manifest_bytes.saturating_mul(16))
        .saturating_add(chunks.saturating_mul(256))
        .saturating_add(parts.saturating_mul(160))
        .saturating_add((2 * f + 3).saturating_mul(stream.min(WHOLE_PART)))
        .saturating_add(frames.saturating_mul(stream))
        .saturating_add((2 * t + 5).saturating_mul(chunk + super::output::ALIGN as u64))
}

/// `a + b` for stream offsets from a manifest (checked: a manifest is input).
fn add(a: u64, b: u64, key: &str) -> Result<u64, Error> {
    a.checked_add(b).ok_or_else(|| {
        FormatError::Manifest {
            key: key.to_string(),
            problem: "its sizes add up to more than 2^64 bytes".into(),
        }
        .into()
    })
}

fn too_big(what: &str) -> Error {
    FormatError::SeekTable(format!("the {what} is larger than this system can address")).into()
}

/// What a read checks (see [`OpenedBundle::check_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Part digests, the bundle digest, frame checksums, frame hashes, plaintext hashes.
    Full,
    /// Part digests, the bundle digest, frame checksums (bundles without frame hashes).
    Parts,
    /// Frame hashes (BLAKE3, against the chunk index the manifest's digest covers) and frame
    /// checksums.
    Frames,
    /// An encrypted bundle without its key: part digests and the bundle digest (the index and
    /// key objects' digests were checked when it was opened); frames are not opened.
    Stored,
}

/// Writes chunk `i` in chunk order.
type OrderedWrite<'a> = dyn FnMut(u64, &[u8]) -> Result<(), Error> + 'a;
/// Writes chunk `i` at its offset, from any thread; `true` for the shared all-zero chunk.
/// Returns the bytes actually written.
type PositionalWrite<'a> = dyn Fn(u64, &[u8], bool) -> Result<u64, Error> + Sync + 'a;

/// Where decompressed chunks go.
enum Output<'a> {
    Nothing,
    /// In chunk order, from one thread (standard output).
    Ordered(&'a mut OrderedWrite<'a>),
    /// At each chunk's offset, from the worker threads (files, devices).
    Positional(&'a PositionalWrite<'a>),
}

impl<'a> Output<'a> {
    /// The writer the worker threads call, for a positional output.
    fn positional(&self) -> Option<&'a PositionalWrite<'a>> {
        match self {
            Output::Positional(w) => Some(*w),
            _ => None,
        }
    }
}

/// Waits for the fetchers: a panic in them first, then the decoders' error, then theirs (sent
/// down the channel, so the decoders saw it); else the parts they checked and the bundle digest.
fn join_fetchers(
    fetched: std::thread::ScopedJoinHandle<'_, Option<(u64, Sha256)>>,
    decoded: Result<(), Error>,
) -> Result<(u64, Sha256), Error> {
    let fetched = fetched
        .join()
        .map_err(|_| Error::Internal("a fetcher thread panicked".into()))?;
    decoded?;
    fetched.ok_or_else(|| Error::Internal("the fetchers stopped without an error".into()))
}

/// Stream bytes one fetcher reads with one request.
#[derive(Debug, Clone, Copy)]
struct FetchUnit {
    start: u64,
    len: u64,
    /// The part it is, when it is a whole part (else a piece of a large one).
    whole: Option<usize>,
}

/// Checks each part's SHA-256 against the manifest, in stream order, and makes the bundle
/// digest over them.
struct PartChecker<'b, 's> {
    bundle: &'b OpenedBundle<'s>,
    /// The bundle digest: SHA-256 over the parts' digests.
    digest: Sha256,
    verified: u64,
    next_part: usize,
    /// A large part being hashed piece by piece: its number, bytes so far, and hash.
    serial: Option<(usize, u64, Sha256)>,
}

impl<'b, 's> PartChecker<'b, 's> {
    fn new(bundle: &'b OpenedBundle<'s>) -> Self {
        Self {
            bundle,
            digest: Sha256::new(),
            verified: 0,
            next_part: 0,
            serial: None,
        }
    }

    /// Checks a fetched unit: a whole part by the `digest` its fetcher computed, a piece of a
    /// large part by hashing it here, the part checked once its last piece is in.
    fn check_unit(&mut self, unit: FetchUnit, digest: Option<[u8; 32]>, block: &[u8]) -> Result<(), Error> {
        match (unit.whole, digest) {
            (Some(n), Some(d)) => self.check_part(n, d),
            _ => {
                // A piece of a large part: hashed here, in stream order.
                let parts = &self.bundle.parts;
                let n = parts.partition_point(|p| p.stream_offset + p.size <= unit.start);
                let (_, done, h) = self.serial.get_or_insert_with(|| (n, 0, Sha256::new()));
                h.update(block);
                *done += unit.len;
                if *done == parts[n].size {
                    let (n, _, h) = self.serial.take().unwrap_or((n, 0, Sha256::new()));
                    self.check_part(n, h.finalize().into())?;
                }
                Ok(())
            }
        }
    }

    /// Checks part `n`'s digest (the error names its object, bytes and chunks) and that it is
    /// the next part; adds it to the bundle digest.
    fn check_part(&mut self, n: usize, digest: [u8; 32]) -> Result<(), Error> {
        let p = &self.bundle.parts[n];
        if n != self.next_part || digest != p.sha256 {
            return Err(integrity(self.bundle.describe_part(p)));
        }
        self.digest.update(digest);
        self.verified += 1;
        self.next_part += 1;
        Ok(())
    }

    /// The parts checked and the bundle digest.
    fn finish(self) -> (u64, Sha256) {
        (self.verified, self.digest)
    }
}

/// A chunk decoded, on its way to [`Decoder::deliver`].
struct Decoded {
    /// Its bytes, for an ordered output (empty: a positional writer has written them, or it
    /// is the shared all-zero chunk).
    raw: Vec<u8>,
    /// It is the shared all-zero frame, not decompressed.
    zero: bool,
    /// Its length.
    len: u64,
    /// Bytes a positional writer wrote.
    written: u64,
}

/// Turns the stream's frames into chunks: reads each from the fetched blocks, checks and
/// decompresses it on a worker thread, and hands it to the output in chunk order.
struct Decoder<'a, 's> {
    bundle: &'a OpenedBundle<'s>,
    check: Check,
    /// Checks and opens the stored frames. The shared all-zero frame (the free space of a
    /// volume) is recognised by its bytes and handed on as zeros without decompressing 4 MiB
    /// each time. The output is told (true), so a file restore leaves a hole without scanning
    /// the bytes.
    frames_in: StoredFrames,
    /// The all-zero chunk (page-aligned; empty without a known zero frame).
    zeros: &'a [u8],
    zero_hash: Option<[u8; 32]>,
    /// Stream offset of each frame.
    offsets: Vec<u64>,
    /// A positional output, which the worker threads write to.
    positional: Option<&'a PositionalWrite<'a>>,
    frames: BufPool,
    raws: BufPool,
}

impl<'a, 's> Decoder<'a, 's> {
    /// A decoder for `bundle`'s frames; `zeros_buf` holds the all-zero chunk it hands on.
    fn new(
        bundle: &'a OpenedBundle<'s>,
        check: Check,
        positional: Option<&'a PositionalWrite<'a>>,
        zeros_buf: &'a mut Vec<u8>,
    ) -> Self {
        let chunk_size = bundle.manifest.chunk_size as usize;
        let frames_in = bundle.stored_frames();
        let zero = frames_in.zero_frame().is_some();
        let zeros: &[u8] = output::aligned(zeros_buf, if zero { chunk_size } else { 0 });
        let zero_hash = bundle.index.as_ref().map(|_| chunk_hash(&vec![0u8; chunk_size]));
        let mut offsets = Vec::with_capacity(bundle.seek.len());
        let mut off = 0u64;
        for e in &bundle.seek {
            offsets.push(off);
            off += e.compressed as u64;
        }
        Self {
            bundle,
            check,
            frames_in,
            zeros,
            zero_hash,
            offsets,
            positional,
            frames: BufPool::default(),
            raws: BufPool::default(),
        }
    }

    /// Reads, decodes and delivers every frame: `threads` decompressing, 2 × threads + 2
    /// frames in flight.
    fn run(
        &self,
        threads: usize,
        progress: &dyn Progress,
        cancel: &AtomicBool,
        cursor: &mut BlockCursor<'_>,
        out: &mut Output<'_>,
        stats: &mut ReadStats,
    ) -> Result<(), Error> {
        ordered_map(
            self.bundle.seek.len() as u64,
            threads,
            2 * threads + 2,
            cancel,
            |i| self.read_frame(cursor, i, progress),
            || zstd::bulk::Decompressor::new().map_err(|e| Error::Compress(e.to_string())),
            |dec, i, frame| self.decode_frame(dec, i, frame),
            |i, decoded| self.deliver(i, decoded, out, stats),
        )
    }

    /// Reads frame `i`'s bytes from the stream (after the last, the seek table too).
    fn read_frame(&self, cursor: &mut BlockCursor<'_>, i: u64, progress: &dyn Progress) -> Result<Vec<u8>, Error> {
        let e = self.bundle.seek[i as usize];
        let mut buf = self.frames.take();
        buf.resize(e.compressed as usize, 0);
        cursor.read_exact(&mut buf)?;
        progress.read(buf.len() as u64);
        if i + 1 == self.bundle.seek.len() as u64 {
            // The seek table ends the stream; its part digest is checked like any.
            let mut table = vec![0u8; self.bundle.manifest.data.seek_table_size as usize];
            cursor.read_exact(&mut table)?;
        }
        Ok(buf)
    }

    /// Checks frame `i` (checksum, BLAKE3 as `check` says) and decompresses it; a positional
    /// output gets it written here, by the worker thread.
    fn decode_frame(&self, dec: &mut zstd::bulk::Decompressor<'_>, i: u64, stored: Vec<u8>) -> Result<Decoded, Error> {
        let e = self.bundle.seek[i as usize];
        if self.check == Check::Stored {
            // Sealed, without the key: its bytes were hashed with their part.
            self.frames.give(stored);
            return Ok(Decoded {
                raw: Vec::new(),
                zero: false,
                len: e.raw as u64,
                written: 0,
            });
        }
        // A sealed frame is opened into a second buffer; a plain one is read where it is.
        let mut scratch = match self.bundle.encrypted() {
            true => self.frames.take(),
            false => Vec::new(),
        };
        let result = self.decode_opened(dec, i, e, &stored, &mut scratch);
        if scratch.capacity() > 0 {
            self.frames.give(scratch);
        }
        self.frames.give(stored);
        result
    }

    /// [`Self::decode_frame`] of a frame checked and opened (sealed ones into `scratch`).
    fn decode_opened(
        &self,
        dec: &mut zstd::bulk::Decompressor<'_>,
        i: u64,
        e: SeekEntry,
        stored: &[u8],
        scratch: &mut Vec<u8>,
    ) -> Result<Decoded, Error> {
        let frame = match self.frames_in.open(stored, e, self.frame_hash_of(i), scratch) {
            Err(why) => return Err(self.fail(i, why)),
            Ok(Opened::Zero) => {
                if self.hash_of(i).is_some_and(|h| Some(h) != self.zero_hash) {
                    return Err(self.fail(i, "its plaintext's BLAKE3 differs from the chunk index".into()));
                }
                return Ok(Decoded {
                    raw: Vec::new(),
                    zero: true,
                    len: 0,
                    written: 0,
                });
            }
            Ok(Opened::Frame(f)) => f,
        };
        let mut raw = self.raws.take();
        // Files and devices are written here, by the worker threads, each chunk at its own
        // offset, from a page-aligned window (a direct write needs one).
        if let Some(write) = self.positional {
            let window = output::aligned(&mut raw, e.raw as usize);
            self.decompress(dec, i, frame, window)?;
            let written = write(i, window, false)?;
            self.raws.give(raw);
            return Ok(Decoded {
                raw: Vec::new(),
                zero: false,
                len: e.raw as u64,
                written,
            });
        }
        raw.resize(e.raw as usize, 0);
        self.decompress(dec, i, frame, &mut raw)?;
        let len = raw.len() as u64;
        Ok(Decoded {
            raw,
            zero: false,
            len,
            written: 0,
        })
    }

    /// Decompresses frame `i` into `out` (its exact size) and checks its plaintext's BLAKE3
    /// when `check` says.
    fn decompress(
        &self,
        dec: &mut zstd::bulk::Decompressor<'_>,
        i: u64,
        frame: &[u8],
        out: &mut [u8],
    ) -> Result<(), Error> {
        let raw = self.bundle.seek[i as usize].raw;
        let n = dec
            .decompress_to_buffer(frame, out)
            .map_err(|err| self.fail(i, format!("zstd: {err}")))?;
        if n != raw as usize {
            return Err(self.fail(i, format!("decompressed to {n} bytes, expected {raw}")));
        }
        if self.hash_of(i).is_some_and(|h| h != chunk_hash(&out[..n])) {
            return Err(self.fail(i, "its plaintext's BLAKE3 differs from the chunk index".into()));
        }
        Ok(())
    }

    /// Hands chunk `i` to the output (in chunk order) and counts it in `stats`.
    fn deliver(&self, i: u64, d: Decoded, out: &mut Output<'_>, stats: &mut ReadStats) -> Result<(), Error> {
        stats.written_bytes += d.written;
        match out {
            Output::Ordered(write) if d.zero => write(i, self.zeros)?,
            Output::Ordered(write) => write(i, &d.raw)?,
            Output::Positional(write) if d.zero => stats.written_bytes += write(i, self.zeros, true)?,
            _ => {}
        }
        if d.zero {
            stats.volume_bytes += self.zeros.len() as u64;
        } else {
            stats.volume_bytes += d.len;
        }
        // (Positional writers gave their buffer back already: an empty one here would bury the
        // pooled ones and make every chunk allocate anew.)
        if d.raw.capacity() > 0 {
            self.raws.give(d.raw);
        }
        Ok(())
    }

    /// The plaintext BLAKE3 chunk `i` must have, when the read checks plaintexts (`Full`).
    fn hash_of(&self, i: u64) -> Option<[u8; 32]> {
        self.bundle
            .index
            .as_ref()
            .filter(|_| self.check == Check::Full)
            .map(|idx| idx.entries[i as usize].hash)
    }

    /// The BLAKE3 frame `i`'s bytes must have, unless the read checks parts instead (`Parts`).
    fn frame_hash_of(&self, i: u64) -> Option<[u8; 32]> {
        self.bundle
            .index
            .as_ref()
            .filter(|_| self.check != Check::Parts)
            .and_then(|idx| idx.entries[i as usize].frame_hash)
    }

    /// An integrity error about chunk `i`, naming its object and byte.
    fn fail(&self, i: u64, why: String) -> Error {
        let (key, at) = self.bundle.locate(self.offsets[i as usize]);
        integrity(format!("chunk {i} (object {key}, byte {at}): {why}"))
    }
}

/// Standard output as a plain file handle: Rust's `Stdout` is line-buffered and scans every
/// write for a newline, gigabytes of it here.
pub fn raw_stdout() -> Result<File, Error> {
    #[cfg(unix)]
    let owned = std::os::fd::AsFd::as_fd(&std::io::stdout()).try_clone_to_owned();
    #[cfg(windows)]
    let owned = std::os::windows::io::AsHandle::as_handle(&std::io::stdout()).try_clone_to_owned();
    owned.map(File::from).map_err(|e| io_err("open standard output", e))
}

/// Stream bytes fetched per request for a part larger than WHOLE_PART.
const FETCH_BLOCK: u64 = 8 << 20;
/// Parts up to this size are fetched whole, and hashed by the fetcher that read them.
const WHOLE_PART: u64 = 32 << 20;

/// Reads the stream sequentially from the blocks the fetchers deliver in order.
struct BlockCursor<'p> {
    rx: crossbeam_channel::Receiver<Result<Vec<u8>, Error>>,
    block: Vec<u8>,
    pos: usize,
    /// Where a finished block goes back to, for the fetchers to fill again.
    pool: &'p BufPool,
}

impl<'p> BlockCursor<'p> {
    /// A cursor over the blocks `rx` delivers, giving each back to `pool` once read.
    fn new(rx: crossbeam_channel::Receiver<Result<Vec<u8>, Error>>, pool: &'p BufPool) -> Self {
        Self {
            rx,
            block: Vec::new(),
            pos: 0,
            pool,
        }
    }

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
    /// A file (written as FILE.partial, sparse, then renamed) or a block device; `assume_zeroed`:
    /// the device reads back zeros where nothing is written, so zero runs are skipped.
    File {
        path: PathBuf,
        force: bool,
        assume_zeroed: bool,
        /// Write around the page cache where the system allows it (see [`ChunkSink`]).
        direct: bool,
    },
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
