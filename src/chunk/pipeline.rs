//! The bundling pipeline: a reader fills chunk buffers with the allocated clusters, N threads
//! compress them into zstd frames, and the frames reach a [`FrameSink`] in chunk order
//! (see [`super::ordered`] for the engine and its memory bound).
//!
//! Memory: at most `2 × threads + 2` chunks are in flight, each holding a read buffer or a
//! frame buffer; with the defaults (4 MiB chunks, 2 threads) that is under 50 MiB.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::frame::{ChunkCompressor, ZeroFrame, is_all_zero};
use super::ordered::{BufPool, Pool, ordered_map};
use super::source::ChunkBuf;
use super::source::ChunkSource;
use crate::Error;
use crate::crypt::FrameCipher;
use crate::format::index::{chunk_hash, frame_hash};
use crate::progress::Progress;

/// Settings of one run.
#[derive(Debug, Clone, Copy)]
pub struct PipelineConfig {
    pub chunk_size: usize,
    pub level: i32,
    pub threads: usize,
}

/// Receives frames in chunk order.
pub trait FrameSink {
    fn frame(&mut self, frame: ChunkFrame<'_>) -> Result<(), Error>;
}

/// One chunk's frame, as the sink receives it.
pub struct ChunkFrame<'a> {
    /// The chunk's number.
    pub index: u64,
    pub bytes: FrameBytes<'a>,
    /// Bytes of plaintext (the chunk size, or less for the last chunk).
    pub raw_len: u32,
    /// The shared all-zero frame.
    pub zero: bool,
    /// [`crate::format::index::chunk_hash`] of the plaintext.
    pub hash: [u8; 32],
    /// [`crate::format::index::frame_hash`] of the frame's bytes.
    pub frame_hash: [u8; 32],
    /// [`crate::format::index::alloc_digest`] of the chunk's data ranges (the volume stream).
    pub alloc: Option<u64>,
}

/// A frame's bytes: new ones; an earlier bundle's frame for the same plaintext, read from that
/// bundle and checked against its frame hash; or an earlier bundle's frame that the store is to
/// copy on the server (the bytes never pass through this machine).
pub enum FrameBytes<'a> {
    New(&'a [u8]),
    Reused { from: ReusedFrame, bytes: &'a [u8] },
    Copied(ReusedFrame),
}

/// Where an earlier bundle (the parent of an incremental one) holds a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReusedFrame {
    /// Offset and length of the frame in the parent's data stream.
    pub offset: u64,
    pub length: u32,
    /// The frame's content checksum (its seek-table entry).
    pub checksum: u32,
    /// BLAKE3 of the frame's bytes, from the parent's chunk index (version 2 and later).
    pub frame_hash: Option<[u8; 32]>,
}

/// The frames of an earlier bundle, by the hash of their plaintext (incremental bundles).
pub trait Reuse: Sync {
    /// The earlier frame of a chunk of `raw_len` bytes whose plaintext hashes to `hash`.
    fn lookup(&self, hash: &[u8; 32], raw_len: u32) -> Option<ReusedFrame>;
    /// True when reused frames are read through this machine and checked by the workers (a
    /// local store); false when the store copies them on the server, unread ([`FrameBytes::Copied`]).
    fn reads_frames(&self) -> bool;
    /// Reads that frame's bytes into `buf`.
    fn read(&self, frame: &ReusedFrame, buf: &mut Vec<u8>) -> Result<(), Error>;
    /// What the volume's metadata says of chunk `index`, whose data ranges have the allocation
    /// digest `alloc`: the earlier bundle's plaintext hash and length for it when nothing in it
    /// changed ([`crate::ntfs::changes`]), `None` when it may have.
    fn unchanged(&self, _index: u64, _alloc: u64) -> Option<([u8; 32], u32)> {
        None
    }
    /// True when a chunk the metadata calls unchanged is not read (the default); false when it
    /// is read and hashed anyway and a disagreement is counted (`--rehash`).
    fn skips_unchanged(&self) -> bool {
        false
    }
}

/// How an incremental bundle's reused frames reached the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReuseStats {
    #[serde(flatten)]
    pub copies: crate::store::CopyStats,
    /// Bytes of the parent's frames read through this machine and sent again (runs too short
    /// to copy; every reused frame in a local store).
    pub fetched_bytes: u64,
    /// The disk stream (partition table, system partitions): `copied` from the parent's when
    /// unchanged, else `written`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_stream: Option<String>,
}

/// What a run did, and where its time went.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PipelineStats {
    pub chunks: u64,
    pub zero_chunks: u64,
    /// Bytes of allocated data read from the source.
    pub data_bytes: u64,
    pub compressed_bytes: u64,
    pub elapsed: Duration,
    /// Time the reader spent in read calls.
    pub read_time: Duration,
    /// Time the workers spent compressing, summed over threads.
    pub compress_time: Duration,
    /// Time the sink spent storing frames.
    pub store_time: Duration,
    /// How the source served its reads (every layer's, metadata included).
    pub source_reads: crate::source::device::ReadStats,
    /// What an interrupted earlier run had stored and this one reused.
    pub resumed: crate::store::ResumeStats,
    /// Chunks (and their plaintext bytes) whose frames came from the parent bundle.
    pub reused_chunks: u64,
    pub reused_bytes: u64,
    /// Parent frames that did not decompress to the chunk their index promised (a damaged
    /// parent): those chunks were compressed instead. The first one's chunk number.
    pub damaged_parent_frames: u64,
    pub first_damaged_chunk: Option<u64>,
    /// How the reused frames reached the store (copied on the server, or read and sent).
    pub parent_io: ReuseStats,
    /// Chunks whose frame came from the parent without being read, on the metadata's word.
    pub unread_chunks: u64,
    /// Chunks the metadata called unchanged whose data did change (read with `--rehash`): a
    /// write that bypassed the file system. The first one's chunk number.
    pub metadata_disagreements: u64,
    pub first_disagreement: Option<u64>,
}

enum Job {
    /// No data in the chunk: nothing was read.
    Empty {
        raw_len: u32,
    },
    Data(ChunkBuf),
    /// Not read: the metadata says the chunk is the earlier bundle's with this plaintext hash;
    /// `frame` is that bundle's frame for it, with its bytes when they pass through this machine.
    Known {
        hash: [u8; 32],
        raw_len: u32,
        frame: ReusedFrame,
        bytes: Option<Vec<u8>>,
    },
}

/// What the reader knows of a chunk besides its bytes.
#[derive(Clone, Copy)]
struct ChunkNote {
    /// Allocation digest of its data ranges.
    alloc: u64,
    /// The earlier bundle's plaintext hash, when the metadata calls the chunk unchanged but it
    /// was read anyway (`--rehash`): a different hash is a disagreement.
    expected: Option<[u8; 32]>,
    /// Not read: its frame is the earlier bundle's on the metadata's word.
    known: bool,
}

enum Frame {
    Zero {
        raw_len: u32,
    },
    /// Compressed here; `repaired` when the parent's frame for it was damaged.
    Data {
        bytes: Vec<u8>,
        raw_len: u32,
        hash: [u8; 32],
        frame_hash: [u8; 32],
        repaired: bool,
    },
    Reused {
        frame: ReusedFrame,
        bytes: Vec<u8>,
        raw_len: u32,
        hash: [u8; 32],
        frame_hash: [u8; 32],
    },
    /// The parent's frame, copied by the store.
    Copied {
        frame: ReusedFrame,
        raw_len: u32,
        hash: [u8; 32],
        frame_hash: [u8; 32],
    },
}

/// Whether `frame` is one zstd frame that decompresses to exactly `plain`.
fn decompresses_to(frame: &[u8], plain: &[u8]) -> bool {
    thread_local! {
        static OUT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    OUT.with_borrow_mut(|out| {
        out.clear();
        out.reserve(plain.len());
        zstd::bulk::Decompressor::new()
            .and_then(|mut d| d.decompress_to_buffer(frame, out))
            .is_ok_and(|n| n == plain.len() && out[..] == *plain)
    })
}

/// Runs the pipeline over every chunk of `source`. With `reuse`, a chunk whose plaintext an
/// earlier bundle holds is not compressed: its frame is that bundle's. With `cipher` (an
/// encrypted bundle), every new frame is sealed after it is compressed, and frame hashes are
/// of the sealed bytes, as stored; reused frames are the earlier bundle's sealed ones (the
/// same data key, so the same bytes).
pub fn run_pipeline(
    source: &mut ChunkSource<'_>,
    cfg: PipelineConfig,
    sink: &mut dyn FrameSink,
    reuse: Option<&dyn Reuse>,
    cipher: Option<&FrameCipher>,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<PipelineStats, Error> {
    let started = Instant::now();
    let image_len = source.image_len();
    let chunks = image_len.div_ceil(cfg.chunk_size as u64);
    let zeros = ZeroChunk::new(cfg, cipher)?;
    let shared = Shared {
        cfg,
        reuse,
        cipher,
        inputs: Pool::default(),
        outputs: BufPool::default(),
        compress_nanos: AtomicU64::new(0),
    };
    let mut stats = PipelineStats {
        chunks,
        ..Default::default()
    };
    let mut reading = ReadTally::default();
    ordered_map(
        chunks,
        cfg.threads,
        2 * cfg.threads + 2,
        cancel,
        |index| shared.read_chunk(source, index, image_len, &mut reading, progress),
        || ChunkCompressor::new(cfg.level).map_err(compress_err),
        |compressor, index, (job, note)| Ok((shared.make_frame(compressor, index, job)?, note)),
        |index, (frame, note)| shared.hand_on(sink, index, frame, note, &zeros, &mut stats),
    )?;
    stats.data_bytes = reading.data_bytes;
    stats.read_time = reading.read_time;
    stats.compress_time = Duration::from_nanos(shared.compress_nanos.load(Ordering::Relaxed));
    stats.elapsed = started.elapsed();
    Ok(stats)
}

fn compress_err(e: std::io::Error) -> Error {
    Error::Compress(e.to_string())
}

/// The shared all-zero chunk: its frame, and the hashes of its plaintext and of that frame.
struct ZeroChunk {
    frame: ZeroFrame,
    hash: [u8; 32],
    frame_hash: [u8; 32],
}

impl ZeroChunk {
    fn new(cfg: PipelineConfig, cipher: Option<&FrameCipher>) -> Result<Self, Error> {
        let mut frame = ZeroFrame::new(cfg.chunk_size, cfg.level).map_err(compress_err)?;
        if let Some(c) = cipher {
            let mut sealed = Vec::new();
            c.seal(&frame.bytes, &mut sealed);
            frame.bytes = sealed;
            frame.checksum = 0;
        }
        let hash = chunk_hash(&vec![0u8; cfg.chunk_size]);
        let frame_hash = frame_hash(&frame.bytes);
        Ok(Self {
            frame,
            hash,
            frame_hash,
        })
    }
}

/// What the reader read, and the time it spent in read calls.
#[derive(Default)]
struct ReadTally {
    data_bytes: u64,
    read_time: Duration,
}

/// What the three stages share: the settings, the earlier bundle's frames, the buffer pools,
/// and the workers' time.
struct Shared<'a> {
    cfg: PipelineConfig,
    reuse: Option<&'a dyn Reuse>,
    /// Seals new frames (an encrypted bundle).
    cipher: Option<&'a FrameCipher>,
    inputs: Pool<ChunkBuf>,
    outputs: BufPool,
    compress_nanos: AtomicU64,
}

impl Shared<'_> {
    /// The reader's step: chunk `index`'s allocated data, read into a pooled buffer (nothing
    /// when it holds none).
    fn read_chunk(
        &self,
        source: &mut ChunkSource<'_>,
        index: u64,
        image_len: u64,
        tally: &mut ReadTally,
        progress: &dyn Progress,
    ) -> Result<(Job, ChunkNote), Error> {
        let chunk = self.cfg.chunk_size as u64;
        let start = index * chunk;
        let end = (start + chunk).min(image_len);
        let n = source.data_ranges(start, end)?;
        let raw_len = (end - start) as u32;
        let mut note = ChunkNote {
            alloc: source.alloc_digest(start),
            expected: None,
            known: false,
        };
        if n == 0 {
            return Ok((Job::Empty { raw_len }, note));
        }
        let known = self
            .reuse
            .and_then(|r| r.unchanged(index, note.alloc).map(|k| (r, k)))
            .filter(|(_, (_, len))| *len == raw_len);
        match known {
            Some((r, (hash, raw_len))) if r.skips_unchanged() => {
                if let Some(job) = self.known_frame(r, hash, raw_len)? {
                    // Not read, but done with: the bar counts the volume's data.
                    progress.read(n);
                    note.known = true;
                    return Ok((job, note));
                }
            }
            Some((_, (hash, _))) => note.expected = Some(hash),
            None => {}
        }
        let mut buf = self.inputs.take();
        let t = Instant::now();
        crate::panics::inject("reader");
        source.fill(start, end, &mut buf)?;
        tally.read_time += t.elapsed();
        tally.data_bytes += n;
        progress.read(n);
        Ok((Job::Data(buf), note))
    }

    /// A worker's step: the chunk's frame, timed, and its buffer back to the pool.
    fn make_frame(&self, compressor: &mut ChunkCompressor, index: u64, job: Job) -> Result<Frame, Error> {
        let buf = match job {
            Job::Empty { raw_len } if raw_len as usize == self.cfg.chunk_size => {
                return Ok(Frame::Zero { raw_len });
            }
            Job::Empty { raw_len } => {
                // The short last chunk, with no data: zeros of its length.
                let mut b = self.inputs.take();
                b.set_len(raw_len as usize);
                b.as_mut_slice().fill(0);
                b
            }
            Job::Data(buf) => buf,
            Job::Known {
                hash,
                raw_len,
                frame,
                bytes,
            } => {
                let frame_hash = frame.frame_hash.unwrap_or_default();
                return Ok(match bytes {
                    Some(bytes) => Frame::Reused {
                        frame,
                        bytes,
                        raw_len,
                        hash,
                        frame_hash,
                    },
                    None => Frame::Copied {
                        frame,
                        raw_len,
                        hash,
                        frame_hash,
                    },
                });
            }
        };
        crate::panics::inject("compressor");
        let t = Instant::now();
        let frame = self.frame_of(compressor, index, buf.as_slice())?;
        self.compress_nanos
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.inputs.give(buf);
        Ok(frame)
    }

    /// The earlier bundle's frame for a chunk the metadata calls unchanged, when it can be
    /// taken without reading the chunk: copied by the store, or (read through this machine)
    /// read here and found to be the frame the earlier index vouches for. `None`: the chunk is
    /// read after all (its frame is then reused or, damaged, compressed again as for any chunk).
    fn known_frame(&self, r: &dyn Reuse, hash: [u8; 32], raw_len: u32) -> Result<Option<Job>, Error> {
        let Some(frame) = r.lookup(&hash, raw_len).filter(|f| f.frame_hash.is_some()) else {
            return Ok(None);
        };
        if !r.reads_frames() {
            return Ok(Some(Job::Known {
                hash,
                raw_len,
                frame,
                bytes: None,
            }));
        }
        let mut bytes = self.outputs.take();
        r.read(&frame, &mut bytes)?;
        if Some(frame_hash(&bytes)) != frame.frame_hash {
            self.outputs.give(bytes);
            return Ok(None);
        }
        Ok(Some(Job::Known {
            hash,
            raw_len,
            frame,
            bytes: Some(bytes),
        }))
    }

    /// The frame of chunk `index`, whose plaintext is `data`: the shared all-zero frame, the
    /// earlier bundle's (copied by the store, or read and checked), or a new one.
    fn frame_of(&self, compressor: &mut ChunkCompressor, index: u64, data: &[u8]) -> Result<Frame, Error> {
        let raw_len = data.len() as u32;
        if data.len() == self.cfg.chunk_size && is_all_zero(data) {
            return Ok(Frame::Zero { raw_len });
        }
        crate::panics::inject("hasher");
        let hash = chunk_hash(data);
        match self.reuse.and_then(|r| r.lookup(&hash, raw_len).map(|f| (r, f))) {
            Some((r, frame)) if !r.reads_frames() => match frame.frame_hash {
                Some(frame_hash) => Ok(Frame::Copied {
                    frame,
                    raw_len,
                    hash,
                    frame_hash,
                }),
                None => self.compress(compressor, index, data, hash, false),
            },
            Some((r, frame)) => self.reuse_read(r, frame, compressor, index, data, hash),
            None => self.compress(compressor, index, data, hash, false),
        }
    }

    /// The earlier bundle's frame for `data`, read through this machine; compressed anew
    /// (`repaired`) when its bytes are not the ones that bundle vouches for.
    fn reuse_read(
        &self,
        r: &dyn Reuse,
        frame: ReusedFrame,
        compressor: &mut ChunkCompressor,
        index: u64,
        data: &[u8],
        hash: [u8; 32],
    ) -> Result<Frame, Error> {
        // The parent's frame is taken only if its bytes are the ones the
        // parent's index vouches for (a version-1 index, without frame hashes:
        // if it gives back this very chunk). A damaged parent must not pass
        // into a bundle whose digests would then vouch for it.
        let mut bytes = self.outputs.take();
        r.read(&frame, &mut bytes)?;
        let got = frame_hash(&bytes);
        let good = match frame.frame_hash {
            Some(h) => h == got,
            None => decompresses_to(&bytes, data),
        };
        if good {
            Ok(Frame::Reused {
                frame,
                bytes,
                raw_len: data.len() as u32,
                hash,
                frame_hash: got,
            })
        } else {
            self.outputs.give(bytes);
            self.compress(compressor, index, data, hash, true)
        }
    }

    /// Compresses one chunk into a new frame (a recycled buffer), sealed in an encrypted bundle.
    fn compress(
        &self,
        compressor: &mut ChunkCompressor,
        index: u64,
        data: &[u8],
        hash: [u8; 32],
        repaired: bool,
    ) -> Result<Frame, Error> {
        let mut out = self.outputs.take();
        compressor
            .compress(data, &mut out)
            .map_err(|e| Error::Compress(format!("chunk {index}: {e}")))?;
        if let Some(c) = self.cipher {
            let mut sealed = self.outputs.take();
            c.seal(&out, &mut sealed);
            self.outputs.give(std::mem::replace(&mut out, sealed));
        }
        Ok(Frame::Data {
            frame_hash: frame_hash(&out),
            bytes: out,
            raw_len: data.len() as u32,
            hash,
            repaired,
        })
    }

    /// The writer's step: counts the frame, hands it to `sink` in chunk order, and gives its
    /// buffer back to the pool.
    fn hand_on(
        &self,
        sink: &mut dyn FrameSink,
        index: u64,
        frame: Frame,
        note: ChunkNote,
        zeros: &ZeroChunk,
        stats: &mut PipelineStats,
    ) -> Result<(), Error> {
        let t = Instant::now();
        let mut chunk_frame = sink_frame(index, &frame, zeros, stats);
        chunk_frame.alloc = Some(note.alloc);
        count_frame(&chunk_frame, stats);
        if note.expected.is_some_and(|h| h != chunk_frame.hash) {
            stats.metadata_disagreements += 1;
            stats.first_disagreement.get_or_insert(index);
        }
        if note.known {
            stats.unread_chunks += 1;
        }
        sink.frame(chunk_frame)?;
        if let Frame::Data { bytes, .. } | Frame::Reused { bytes, .. } = frame {
            self.outputs.give(bytes);
        }
        stats.store_time += t.elapsed();
        Ok(())
    }
}

/// What the sink receives for `frame`; counts zero chunks and repaired (damaged parent) ones.
fn sink_frame<'a>(index: u64, frame: &'a Frame, zeros: &'a ZeroChunk, stats: &mut PipelineStats) -> ChunkFrame<'a> {
    let (bytes, raw_len, zero, hash, frame_hash) = match frame {
        Frame::Zero { raw_len } => {
            stats.zero_chunks += 1;
            let z = zeros;
            (FrameBytes::New(&z.frame.bytes), *raw_len, true, z.hash, z.frame_hash)
        }
        Frame::Data {
            bytes,
            raw_len,
            hash,
            frame_hash,
            repaired,
        } => {
            if *repaired {
                stats.damaged_parent_frames += 1;
                stats.first_damaged_chunk.get_or_insert(index);
            }
            (FrameBytes::New(bytes), *raw_len, false, *hash, *frame_hash)
        }
        Frame::Reused {
            frame,
            bytes,
            raw_len,
            hash,
            frame_hash,
        } => {
            let reused = FrameBytes::Reused { from: *frame, bytes };
            (reused, *raw_len, false, *hash, *frame_hash)
        }
        Frame::Copied {
            frame,
            raw_len,
            hash,
            frame_hash,
        } => (FrameBytes::Copied(*frame), *raw_len, false, *hash, *frame_hash),
    };
    ChunkFrame {
        index,
        bytes,
        raw_len,
        zero,
        hash,
        frame_hash,
        alloc: None,
    }
}

/// Counts the frame's stored bytes, and the chunks that came from the earlier bundle.
fn count_frame(f: &ChunkFrame<'_>, stats: &mut PipelineStats) {
    stats.compressed_bytes += match &f.bytes {
        FrameBytes::New(b) | FrameBytes::Reused { bytes: b, .. } => b.len() as u64,
        FrameBytes::Copied(c) => u64::from(c.length),
    };
    if matches!(f.bytes, FrameBytes::Reused { .. } | FrameBytes::Copied(_)) {
        stats.reused_chunks += 1;
        stats.reused_bytes += u64::from(f.raw_len);
    }
}
