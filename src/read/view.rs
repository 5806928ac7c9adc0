//! The volume inside a bundle, read at any offset without restoring it: a [`Device`] over the
//! seek table, so the partition and NTFS code (`winbundle ls`, `extract`, `cat`) read a bundle
//! the way they read a disk.
//!
//! A read maps to chunks; the chunks not in the cache are fetched (consecutive frames in one
//! ranged read, several reads at once), each frame checked as a restore checks it (its content
//! checksum against the seek table, its BLAKE3 against the chunk index, zstd's checksum as it
//! decompresses, the plaintext's BLAKE3 against the index), and kept in a bounded cache of
//! decompressed chunks. The all-zero chunk (free space, left-out files) is recognised by its
//! frame and costs no memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::frames::{Opened, StoredFrames};
use super::opened::OpenedBundle;
use crate::Error;
use crate::format::FormatError;
use crate::format::index::chunk_hash;
use crate::source::device::Device;

/// Decompressed chunks kept, by default: 128 MiB of 4 MiB chunks.
pub const DEFAULT_CACHE_BYTES: u64 = 128 << 20;
/// The most compressed bytes one ranged read fetches.
const MAX_FETCH: u64 = 16 << 20;

/// What reading through a view cost.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ViewStats {
    /// Ranged reads of the data objects.
    pub requests: u64,
    /// Frames fetched and checked.
    pub frames: u64,
    /// Compressed bytes fetched.
    pub fetched_bytes: u64,
    /// Reads served from the cache alone.
    pub cache_hits: u64,
    /// Bytes of the bundle's data stream, for scale.
    pub stream_bytes: u64,
}

struct Cache {
    chunks: HashMap<u64, (Arc<Vec<u8>>, u64)>,
    bytes: u64,
    tick: u64,
}

/// A bundle's volume, readable at any offset.
pub struct BundleView {
    bundle: OpenedBundle<'static>,
    /// Stream offset of each frame.
    offsets: Vec<u64>,
    /// Checks and opens the frames (sealed ones too, with the bundle's key).
    frames_in: StoredFrames,
    zeros: Arc<Vec<u8>>,
    cache: Mutex<Cache>,
    cache_limit: u64,
    fetchers: usize,
    requests: AtomicU64,
    frames: AtomicU64,
    fetched: AtomicU64,
    hits: AtomicU64,
    /// The first error a read met, with its own type (the NTFS layer sees only an io::Error).
    failure: Mutex<Option<Error>>,
}

impl BundleView {
    /// A view of an opened bundle; `fetchers` ranged reads at once.
    pub fn new(bundle: OpenedBundle<'static>, fetchers: usize) -> Self {
        let mut offsets = Vec::with_capacity(bundle.seek.len() + 1);
        let mut off = 0u64;
        for e in &bundle.seek {
            offsets.push(off);
            off += u64::from(e.compressed);
        }
        offsets.push(off);
        let chunk_size = bundle.manifest.chunk_size as usize;
        Self {
            offsets,
            frames_in: bundle.stored_frames(),
            zeros: Arc::new(vec![0u8; chunk_size]),
            cache: Mutex::new(Cache {
                chunks: HashMap::new(),
                bytes: 0,
                tick: 0,
            }),
            cache_limit: DEFAULT_CACHE_BYTES.max(4 * chunk_size as u64),
            fetchers: fetchers.max(1),
            requests: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            fetched: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            failure: Mutex::new(None),
            bundle,
        }
    }

    pub fn bundle(&self) -> &OpenedBundle<'static> {
        &self.bundle
    }

    /// Bytes of the volume.
    pub fn size(&self) -> u64 {
        self.bundle.manifest.volume_size
    }

    /// Chunks read at once for large sequential reads: one per fetcher.
    pub fn read_ahead(&self) -> u64 {
        self.fetchers as u64 * self.bundle.manifest.chunk_size
    }

    pub fn stats(&self) -> ViewStats {
        ViewStats {
            requests: self.requests.load(Ordering::Relaxed),
            frames: self.frames.load(Ordering::Relaxed),
            fetched_bytes: self.fetched.load(Ordering::Relaxed),
            cache_hits: self.hits.load(Ordering::Relaxed),
            stream_bytes: self.bundle.manifest.data.stream_size,
        }
    }

    /// The first error a read met, if any (integrity, store): what to report instead of the
    /// io::Error the NTFS layer passed on.
    pub fn take_failure(&self) -> Option<Error> {
        self.failure.lock().ok().and_then(|mut f| f.take())
    }

    fn cached(&self, chunk: u64) -> Option<Arc<Vec<u8>>> {
        let mut c = self.cache.lock().ok()?;
        c.tick += 1;
        let tick = c.tick;
        let e = c.chunks.get_mut(&chunk)?;
        e.1 = tick;
        Some(e.0.clone())
    }

    fn keep(&self, chunk: u64, bytes: Arc<Vec<u8>>) {
        let Ok(mut c) = self.cache.lock() else { return };
        let len = if Arc::ptr_eq(&bytes, &self.zeros) {
            0
        } else {
            bytes.len() as u64
        };
        c.tick += 1;
        let tick = c.tick;
        if let Some(old) = c.chunks.insert(chunk, (bytes, tick)) {
            c.bytes -= if Arc::ptr_eq(&old.0, &self.zeros) {
                0
            } else {
                old.0.len() as u64
            };
        }
        c.bytes += len;
        while c.bytes > self.cache_limit {
            let Some((&victim, _)) = c.chunks.iter().filter(|(k, _)| **k != chunk).min_by_key(|(_, v)| v.1) else {
                break;
            };
            if let Some((b, _)) = c.chunks.remove(&victim) {
                c.bytes -= if Arc::ptr_eq(&b, &self.zeros) {
                    0
                } else {
                    b.len() as u64
                };
            }
        }
    }

    /// Fetches chunks `first..=last` (consecutive frames) in one ranged read, checks and
    /// decompresses each, and caches them.
    fn fetch(&self, first: u64, last: u64) -> Result<(), Error> {
        let (start, end) = (self.offsets[first as usize], self.offsets[last as usize + 1]);
        let mut buf = vec![0u8; (end - start) as usize];
        self.bundle.read_stream(start, &mut buf)?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.fetched.fetch_add(end - start, Ordering::Relaxed);
        let mut dec = zstd::bulk::Decompressor::new().map_err(|e| Error::Compress(e.to_string()))?;
        for i in first..=last {
            let a = (self.offsets[i as usize] - start) as usize;
            let b = (self.offsets[i as usize + 1] - start) as usize;
            let plain = self.check_frame(&mut dec, i, &buf[a..b])?;
            self.frames.fetch_add(1, Ordering::Relaxed);
            self.keep(i, plain);
        }
        Ok(())
    }

    /// Checks frame `i` (its stored bytes) and returns its plaintext.
    fn check_frame(
        &self,
        dec: &mut zstd::bulk::Decompressor<'_>,
        i: u64,
        stored: &[u8],
    ) -> Result<Arc<Vec<u8>>, Error> {
        let e = self.bundle.seek[i as usize];
        let entry = self.bundle.index.as_ref().map(|x| &x.entries[i as usize]);
        let fail = |why: String| -> Error {
            let (key, at) = self.bundle.locate(self.offsets[i as usize]);
            FormatError::Integrity {
                what: format!("chunk {i} (object {key}, byte {at}): {why}"),
            }
            .into()
        };
        let mut scratch = Vec::new();
        let plain = match self
            .frames_in
            .open(stored, e, entry.and_then(|x| x.frame_hash), &mut scratch)
        {
            Err(why) => return Err(fail(why)),
            Ok(Opened::Zero) => self.zeros.clone(),
            Ok(Opened::Frame(frame)) => {
                let mut raw = Vec::with_capacity(e.raw as usize);
                let n = dec
                    .decompress_to_buffer(frame, &mut raw)
                    .map_err(|err| fail(format!("zstd: {err}")))?;
                if n != e.raw as usize {
                    return Err(fail(format!("decompressed to {n} bytes, expected {}", e.raw)));
                }
                Arc::new(raw)
            }
        };
        if entry.is_some_and(|x| x.hash != chunk_hash(&plain)) {
            return Err(fail("its plaintext's BLAKE3 differs from the chunk index".into()));
        }
        Ok(plain)
    }

    /// Makes sure chunks `c0..=c1` are cached: the missing ones fetched, runs of consecutive
    /// ones in one read each, up to `fetchers` reads at once.
    fn load(&self, c0: u64, c1: u64) -> Result<Vec<Arc<Vec<u8>>>, Error> {
        let mut have: Vec<Option<Arc<Vec<u8>>>> = (c0..=c1).map(|c| self.cached(c)).collect();
        if have.iter().all(Option::is_some) {
            self.hits.fetch_add(1, Ordering::Relaxed);
        } else {
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for (k, h) in have.iter().enumerate() {
                let c = c0 + k as u64;
                if h.is_some() {
                    continue;
                }
                match runs.last_mut() {
                    Some((a, b))
                        if *b + 1 == c
                            && self.offsets[c as usize + 1] - self.offsets[*a as usize] <= MAX_FETCH
                            && c - *a < (c1 - c0 + 1).div_ceil(self.fetchers as u64) =>
                    {
                        *b = c
                    }
                    _ => runs.push((c, c)),
                }
            }
            let next = AtomicU64::new(0);
            let results: Vec<Result<(), Error>> = std::thread::scope(|s| {
                let workers: Vec<_> = (0..self.fetchers.min(runs.len()))
                    .map(|_| {
                        s.spawn(|| {
                            loop {
                                let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                                let Some(&(a, b)) = runs.get(k) else { return Ok(()) };
                                self.fetch(a, b)?;
                            }
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| {
                        w.join()
                            .unwrap_or_else(|_| Err(Error::Internal("a fetch thread panicked".into())))
                    })
                    .collect()
            });
            for r in results {
                r?;
            }
            // Everything fetched is in the cache, unless it was evicted at once by a read
            // larger than the cache: fetch those one by one.
            for (k, h) in have.iter_mut().enumerate() {
                let c = c0 + k as u64;
                if h.is_none() {
                    *h = match self.cached(c) {
                        Some(b) => Some(b),
                        None => {
                            self.fetch(c, c)?;
                            self.cached(c)
                        }
                    };
                }
            }
        }
        have.into_iter()
            .enumerate()
            .map(|(k, h)| h.ok_or_else(|| Error::Internal(format!("chunk {} vanished from the cache", c0 + k as u64))))
            .collect()
    }

    /// Fills `buf` with volume bytes from `offset`.
    pub fn read_volume(&self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size())
            .ok_or_else(|| Error::Internal(format!("read of {} bytes at {offset} past the volume", buf.len())))?;
        let cs = self.bundle.manifest.chunk_size;
        let (c0, c1) = (offset / cs, (end - 1) / cs);
        let chunks = self.load(c0, c1)?;
        let mut at = offset;
        let mut filled = 0usize;
        for (k, chunk) in chunks.iter().enumerate() {
            let base = (c0 + k as u64) * cs;
            let from = (at - base) as usize;
            let n = (chunk.len() - from).min(buf.len() - filled);
            buf[filled..filled + n].copy_from_slice(&chunk[from..from + n]);
            filled += n;
            at += n as u64;
        }
        Ok(())
    }
}

/// A shared view as a device for [`crate::source::DiskFile`].
pub struct ViewDevice(pub Arc<BundleView>);

impl Device for ViewDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_volume(buf, offset).map_err(|e| {
            let text = e.to_string();
            if let Ok(mut f) = self.0.failure.lock()
                && f.is_none()
            {
                *f = Some(e);
            }
            std::io::Error::other(text)
        })
    }
}
