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
use crate::bundle::index::{chunk_hash, frame_hash};
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
    /// [`crate::bundle::index::chunk_hash`] of the plaintext.
    pub hash: [u8; 32],
    /// [`crate::bundle::index::frame_hash`] of the frame's bytes.
    pub frame_hash: [u8; 32],
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
    pub parent_io: crate::bundle::writer::ReuseStats,
}

enum Job {
    /// No data in the chunk: nothing was read.
    Empty {
        raw_len: u32,
    },
    Data(ChunkBuf),
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

/// Compresses one chunk into a new frame (in `out`, a recycled buffer).
fn compress(
    compressor: &mut ChunkCompressor,
    index: u64,
    data: &[u8],
    hash: [u8; 32],
    repaired: bool,
    mut out: Vec<u8>,
) -> Result<Frame, Error> {
    compressor
        .compress(data, &mut out)
        .map_err(|e| Error::Compress(format!("chunk {index}: {e}")))?;
    Ok(Frame::Data {
        frame_hash: frame_hash(&out),
        bytes: out,
        raw_len: data.len() as u32,
        hash,
        repaired,
    })
}

/// Runs the pipeline over every chunk of `source`. With `reuse`, a chunk whose plaintext an
/// earlier bundle holds is not compressed: its frame is that bundle's.
pub fn run_pipeline(
    source: &mut ChunkSource<'_>,
    cfg: PipelineConfig,
    sink: &mut dyn FrameSink,
    reuse: Option<&dyn Reuse>,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<PipelineStats, Error> {
    let started = Instant::now();
    let chunk = cfg.chunk_size as u64;
    let image_len = source.image_len();
    let chunks = image_len.div_ceil(chunk);
    let compress_err = |e: std::io::Error| Error::Compress(e.to_string());
    let zero = ZeroFrame::new(cfg.chunk_size, cfg.level).map_err(compress_err)?;
    let zero_hash = chunk_hash(&vec![0u8; cfg.chunk_size]);
    let zero_frame_hash = frame_hash(&zero.bytes);
    let inputs = Pool::<ChunkBuf>::default();
    let outputs = BufPool::default();
    let compress_nanos = AtomicU64::new(0);
    let mut stats = PipelineStats {
        chunks,
        ..Default::default()
    };
    let (mut data_bytes, mut read_time) = (0u64, Duration::ZERO);

    ordered_map(
        chunks,
        cfg.threads,
        2 * cfg.threads + 2,
        cancel,
        |index| {
            let start = index * chunk;
            let end = (start + chunk).min(image_len);
            let n = source.data_ranges(start, end)?;
            if n == 0 {
                return Ok(Job::Empty {
                    raw_len: (end - start) as u32,
                });
            }
            let mut buf = inputs.take();
            let t = Instant::now();
            crate::panics::inject("reader");
            source.fill(start, end, &mut buf)?;
            read_time += t.elapsed();
            data_bytes += n;
            progress.read(n);
            Ok(Job::Data(buf))
        },
        || ChunkCompressor::new(cfg.level).map_err(compress_err),
        |compressor, index, job| {
            let buf = match job {
                Job::Empty { raw_len } if raw_len as usize == cfg.chunk_size => {
                    return Ok(Frame::Zero { raw_len });
                }
                Job::Empty { raw_len } => {
                    // The short last chunk, with no data: zeros of its length.
                    let mut b = inputs.take();
                    b.set_len(raw_len as usize);
                    b.as_mut_slice().fill(0);
                    b
                }
                Job::Data(buf) => buf,
            };
            crate::panics::inject("compressor");
            let data = buf.as_slice();
            let raw_len = data.len() as u32;
            let t = Instant::now();
            let frame = if data.len() == cfg.chunk_size && is_all_zero(data) {
                Frame::Zero { raw_len }
            } else {
                crate::panics::inject("hasher");
                let hash = chunk_hash(data);
                match reuse.and_then(|r| r.lookup(&hash, raw_len).map(|f| (r, f))) {
                    Some((r, frame)) if !r.reads_frames() => match frame.frame_hash {
                        Some(frame_hash) => Frame::Copied {
                            frame,
                            raw_len,
                            hash,
                            frame_hash,
                        },
                        None => compress(compressor, index, data, hash, false, outputs.take())?,
                    },
                    Some((r, frame)) => {
                        // The parent's frame is taken only if its bytes are the ones the
                        // parent's index vouches for (a version-1 index, without frame hashes:
                        // if it gives back this very chunk). A damaged parent must not pass
                        // into a bundle whose digests would then vouch for it.
                        let mut bytes = outputs.take();
                        r.read(&frame, &mut bytes)?;
                        let got = frame_hash(&bytes);
                        let good = match frame.frame_hash {
                            Some(h) => h == got,
                            None => decompresses_to(&bytes, data),
                        };
                        if good {
                            Frame::Reused {
                                frame,
                                bytes,
                                raw_len,
                                hash,
                                frame_hash: got,
                            }
                        } else {
                            outputs.give(bytes);
                            compress(compressor, index, data, hash, true, outputs.take())?
                        }
                    }
                    None => compress(compressor, index, data, hash, false, outputs.take())?,
                }
            };
            compress_nanos.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            inputs.give(buf);
            Ok(frame)
        },
        |index, frame| {
            let t = Instant::now();
            let (bytes, raw_len, zero_frame, hash, frame_hash) = match &frame {
                Frame::Zero { raw_len } => {
                    stats.zero_chunks += 1;
                    (FrameBytes::New(&zero.bytes), *raw_len, true, zero_hash, zero_frame_hash)
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
            stats.compressed_bytes += match &bytes {
                FrameBytes::New(b) | FrameBytes::Reused { bytes: b, .. } => b.len() as u64,
                FrameBytes::Copied(f) => u64::from(f.length),
            };
            if matches!(bytes, FrameBytes::Reused { .. } | FrameBytes::Copied(_)) {
                stats.reused_chunks += 1;
                stats.reused_bytes += u64::from(raw_len);
            }
            sink.frame(ChunkFrame {
                index,
                bytes,
                raw_len,
                zero: zero_frame,
                hash,
                frame_hash,
            })?;
            if let Frame::Data { bytes, .. } | Frame::Reused { bytes, .. } = frame {
                outputs.give(bytes);
            }
            stats.store_time += t.elapsed();
            Ok(())
        },
    )?;
    stats.data_bytes = data_bytes;
    stats.read_time = read_time;
    stats.compress_time = Duration::from_nanos(compress_nanos.load(Ordering::Relaxed));
    stats.elapsed = started.elapsed();
    Ok(stats)
}
