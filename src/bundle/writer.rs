//! Turns the ordered frames into stored objects: appends each frame to the data stream, cuts
//! the stream into parts of `part_size` bytes (hashing each with SHA-256 as the bytes go by, the
//! only pass over the compressed data), and ends the stream with the seek table.
//!
//! Incremental bundles on a store that copies on the server: frames the parent holds arrive
//! without bytes ([`FrameBytes::Copied`]). Consecutive ones that sit back to back in one parent
//! object form a *run*; a run becomes parts the server copies (UploadPartCopy) when it is long
//! enough, and its bytes are fetched from the parent and sent like new frames when it is not.
//! Every part but the last must hold at least `min_part` bytes (S3: 5 MiB), so an upload part
//! still too short when a run starts takes its missing bytes from the head of that run. Parts
//! then vary in size, and the manifest lists their sizes. The parent bytes sent that way are
//! fetched in the background ([`Fetcher`]): what follows them in the stream waits in a queue,
//! in order, until they arrive.
//!
//! `--layout runs` pads nothing: where a short upload part meets a run to copy, the object
//! ends (the short part is its last part) and the next object begins with the copy; a run
//! shorter than 5 MiB (but at least [`RUN_COPY_MIN`]) is copied as the last part of an object
//! of its own. Objects are completed in the background ([`MAX_FINISHING`] at once), so the
//! stream goes on while the server assembles them.

use std::collections::VecDeque;

use sha2::{Digest, Sha256};

use super::fetch::{Fetcher, Pending};
use super::parent::Parent;
use crate::Error;
use crate::chunk::frame::{SeekEntry, encode_seek_table, frame_checksum};
use crate::chunk::pipeline::{ChunkFrame, FrameBytes, FrameSink, ReuseStats, ReusedFrame};
use crate::format::Keys;
use crate::format::index::{ChunkIndex, IndexEntry};
use crate::format::manifest::{DataInfo, Layout, ObjectInfo};
use crate::progress::Progress;
use crate::store::{CopySource, ObjectStore, ObjectWriter, PartInfo, ResumeStats, StoreError};

/// The largest part copied in one request. S3 allows 5 GiB, but a server copies one part at a
/// time: runs cut in pieces of at most 128 MiB keep several copies going at once (measured
/// against Garage with bench/incremental-s3.sh: 1 GiB pieces 0.52 of a full bundle's wall time,
/// 128 MiB 0.42, 32 MiB 0.49 with three times the requests).
const MAX_COPY_PART: u64 = 128 << 20;
/// Bytes fetched from the parent per read when a run is sent instead of copied.
const FETCH_PIECE: usize = 8 << 20;
/// Bytes waiting behind fetches of the parent (theirs included) before the writer waits for
/// the oldest fetch.
const MAX_QUEUED: u64 = 64 << 20;
/// `--layout runs`: the shortest run of the parent's frames copied on the server; a shorter one
/// is sent (a copy costs an object of its own: three requests).
pub const RUN_COPY_MIN: u64 = 1 << 20;
/// `--layout runs`: objects being completed in the background before the writer waits for the
/// oldest.
const MAX_FINISHING: usize = 8;

/// Server-side copies from the parent (incremental bundles on S3).
pub struct Copying<'a> {
    pub parent: &'a Parent<'a>,
    /// The smallest part but the last.
    pub min_part: u64,
    /// Reads the parent bytes that are sent in the background; without it they are read
    /// when needed.
    pub fetcher: Option<&'a Fetcher>,
}

/// Stream work waiting, in order, behind a fetch of the parent's bytes.
enum Op {
    Bytes(Vec<u8>),
    Fetch(Pending),
    /// Ends the upload part begun, before a copy.
    EndPart,
    /// Ends the object begun (`--layout runs`).
    EndObject,
    Copy {
        start: u64,
        len: u64,
        object_start: u64,
    },
}

/// Frames of the parent, back to back in one of its objects, not yet placed in parts.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Stream offset in the parent, and length.
    start: u64,
    len: u64,
    /// Stream offset of the parent object holding it.
    object_start: u64,
}

impl Run {
    /// Logs (debug) what became of this run.
    fn log(&self, what: &str) {
        tracing::debug!(
            "parent bytes {}..{} ({} bytes): {what}",
            self.start,
            self.start + self.len,
            self.len
        );
    }
}

/// An object whose completion runs in the background, and what its description waits for.
struct Finishing {
    handle: std::thread::JoinHandle<Result<crate::store::ObjectReceipt, Error>>,
    info: ObjectInfo,
    parts: Vec<(u64, Option<[u8; 32]>)>,
}

pub struct StreamWriter<'a> {
    store: &'a dyn ObjectStore,
    keys: Keys,
    layout: Layout,
    part_size: u64,
    progress: &'a dyn Progress,
    current: Option<(Box<dyn ObjectWriter>, ObjectInfo)>,
    hasher: Sha256,
    part_len: u64,
    part_number: u32,
    done: Vec<ObjectInfo>,
    seek: Vec<SeekEntry>,
    stream_size: u64,
    /// SHA-256 over the part digests so far.
    bundle_hasher: Sha256,
    /// Bytes of closed objects, and bytes reported as stored so far.
    stored_before: u64,
    reported: u64,
    resumed: ResumeStats,
    /// The chunk index: each chunk's plaintext hash and where its frame went.
    index: Vec<IndexEntry>,
    /// Each part of the current object: its size and, unless the server copied it, its SHA-256.
    parts: Vec<(u64, Option<[u8; 32]>)>,
    copying: Option<Copying<'a>>,
    /// The server refused to copy: runs are sent from here on.
    copy_refused: bool,
    run: Option<Run>,
    /// Stream bytes of all frames so far, a run not yet placed in parts included.
    frames_end: u64,
    reuse: ReuseStats,
    /// Work behind fetches still under way, and the bytes it holds.
    queue: VecDeque<Op>,
    queued: u64,
    /// The length of the upload part begun once the queue is written: what part boundaries are
    /// planned on.
    plan_part_len: u64,
    /// The first copy has been planned.
    probed: bool,
    /// A local store's parent: its frames are copied by the file system (`write_copy`).
    local_parent: Option<&'a Parent<'a>>,
    /// Objects opened so far (the next one's number).
    objects: u32,
    /// Objects being completed in the background, oldest first.
    finishing: VecDeque<Finishing>,
    /// The frames are sealed (an encrypted bundle): their seek-table checksums are 0.
    sealed: bool,
}

/// A finished data stream.
pub struct Finished {
    pub data: DataInfo,
    /// SHA-256 over the part digests (hex).
    pub bundle_sha256: String,
    /// What an interrupted earlier run had stored and this one reused.
    pub resumed: ResumeStats,
    pub index: ChunkIndex,
    pub reuse: ReuseStats,
}

impl<'a> StreamWriter<'a> {
    pub fn new(
        store: &'a dyn ObjectStore,
        keys: Keys,
        layout: Layout,
        part_size: u64,
        progress: &'a dyn Progress,
    ) -> Self {
        Self {
            store,
            keys,
            layout,
            part_size,
            progress,
            current: None,
            hasher: Sha256::new(),
            part_len: 0,
            part_number: 0,
            done: Vec::new(),
            seek: Vec::new(),
            stream_size: 0,
            bundle_hasher: Sha256::new(),
            stored_before: 0,
            reported: 0,
            resumed: ResumeStats::default(),
            index: Vec::new(),
            parts: Vec::new(),
            copying: None,
            copy_refused: false,
            run: None,
            frames_end: 0,
            reuse: ReuseStats::default(),
            queue: VecDeque::new(),
            queued: 0,
            plan_part_len: 0,
            probed: false,
            local_parent: None,
            objects: 0,
            finishing: VecDeque::new(),
            sealed: false,
        }
    }

    /// The frames it receives are sealed (an encrypted bundle): the seek table records 0 for
    /// each checksum, which inside a seal would tell an observer a hash of the plaintext.
    pub fn sealed(mut self, sealed: bool) -> Self {
        self.sealed = sealed;
        self
    }

    /// Has the store copy runs of the parent's frames on the server.
    pub fn copy_from(mut self, copying: Copying<'a>) -> Self {
        self.copying = Some(copying);
        self
    }

    /// Has a local store copy the parent's frames from its objects (the bytes are still read
    /// and hashed here).
    pub fn copy_locally_from(mut self, parent: &'a Parent<'a>) -> Self {
        self.local_parent = Some(parent);
        self
    }

    fn open_object(&mut self) -> Result<(), Error> {
        if self.current.is_none() {
            let key = self.keys.object(self.layout, self.objects);
            // `--layout runs`: only the first object looks for an upload to resume.
            let w = match (self.layout, self.objects) {
                (Layout::Runs, 1..) => self.store.fresh_writer(&key)?,
                _ => self.store.writer(&key)?,
            };
            self.objects += 1;
            self.current = Some((
                w,
                ObjectInfo {
                    key,
                    size: 0,
                    parts_sha256: Vec::new(),
                    etag: None,
                    parts_etag: Vec::new(),
                    part_sizes: None,
                },
            ));
            self.parts.clear();
            self.part_number = 0;
        }
        Ok(())
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.write_bytes_from(bytes, None)
    }

    /// Writes `bytes`; `from`: an object of the store holds them at that offset (a local
    /// store's parent), so the store may copy them instead.
    fn write_bytes_from(&mut self, mut bytes: &[u8], mut from: Option<CopySource>) -> Result<(), Error> {
        while !bytes.is_empty() {
            self.open_object()?;
            let n = ((self.part_size - self.part_len) as usize).min(bytes.len());
            let (now, rest) = bytes.split_at(n);
            self.hasher.update(now);
            if let Some((w, info)) = self.current.as_mut() {
                match from.as_mut() {
                    Some(source) => {
                        source.len = n as u64;
                        w.write_copy(now, source)?;
                        source.offset += n as u64;
                    }
                    None => w.write(now)?,
                }
                info.size += n as u64;
            }
            self.part_len += n as u64;
            self.stream_size += n as u64;
            self.report_stored();
            if self.part_len == self.part_size {
                self.end_part()?;
            }
            bytes = rest;
        }
        Ok(())
    }

    fn end_part(&mut self) -> Result<(), Error> {
        let digest: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        let part = PartInfo {
            number: self.part_number,
            size: self.part_len,
            sha256: digest,
        };
        self.parts.push((self.part_len, Some(digest)));
        self.part_len = 0;
        self.part_number += 1;
        if let Some((w, _)) = self.current.as_mut() {
            w.end_part(&part)?;
        }
        if self.layout == Layout::Parts {
            self.close_object()?;
        }
        Ok(())
    }

    fn close_object(&mut self) -> Result<(), Error> {
        let Some((w, info)) = self.current.take() else {
            return Ok(());
        };
        self.stored_before += info.size;
        let parts = std::mem::take(&mut self.parts);
        if self.layout != Layout::Runs {
            let receipt = complete(w, info.key.clone())?;
            return self.settle(receipt, info, parts);
        }
        // The stream goes on while the server assembles this object.
        let key = info.key.clone();
        let handle = std::thread::Builder::new()
            .name("winbundle-complete".into())
            .spawn(move || complete(w, key))
            .map_err(|e| Error::Internal(format!("cannot start a thread to complete {}: {e}", info.key)))?;
        self.finishing.push_back(Finishing { handle, info, parts });
        while self.finishing.len() > MAX_FINISHING {
            self.settle_oldest()?;
        }
        Ok(())
    }

    /// Waits for the oldest object completing in the background and records it.
    fn settle_oldest(&mut self) -> Result<(), Error> {
        let Some(f) = self.finishing.pop_front() else {
            return Ok(());
        };
        let receipt = f.handle.join().map_err(|p| {
            Error::Internal(format!(
                "completing {} panicked: {}",
                f.info.key,
                crate::panics::message(p.as_ref())
            ))
        })??;
        self.settle(receipt, f.info, f.parts)
    }

    /// Records a stored object: its ETags, the digests of its parts (the server's for copied
    /// ones) into the bundle digest, in stream order.
    fn settle(
        &mut self,
        receipt: crate::store::ObjectReceipt,
        mut info: ObjectInfo,
        mut parts: Vec<(u64, Option<[u8; 32]>)>,
    ) -> Result<(), Error> {
        info.etag = receipt.etag;
        info.parts_etag = receipt.part_etags;
        self.resumed.add(&receipt.resumed);
        self.reuse.copies.add(&receipt.copy);
        for (number, sum) in receipt.copied {
            if let Some(p) = parts.get_mut(number as usize) {
                p.1 = Some(sum);
            }
        }
        for (n, (_, digest)) in parts.iter().enumerate() {
            let digest = digest.ok_or_else(|| {
                Error::Internal(format!("{}: the store gave no SHA-256 for copied part {n}", info.key))
            })?;
            self.bundle_hasher.update(digest);
            info.parts_sha256.push(hex::encode(digest));
        }
        // Parts of one size (the last may be shorter) need no list.
        let last = parts.len().saturating_sub(1);
        let uneven = parts.iter().enumerate().any(|(i, p)| match i == last {
            false => p.0 != self.part_size,
            true => p.0 > self.part_size,
        });
        if uneven {
            info.part_sizes = Some(parts.iter().map(|p| p.0).collect());
        }
        self.done.push(info);
        self.report_stored();
        Ok(())
    }

    /// Appends a run of the parent's frames to the stream: copied on the server where it is
    /// long enough, otherwise fetched and sent.
    fn close_run(&mut self) -> Result<(), Error> {
        let (Some(run), Some(min)) = (self.run.take(), self.copying.as_ref().map(|c| c.min_part)) else {
            return Ok(());
        };
        if self.copy_refused {
            return self.send_from_parent(run.start, run.len);
        }
        if self.layout == Layout::Runs {
            return self.close_run_in_objects(run, min);
        }
        // An upload part already begun must reach `min` before a copy may follow it.
        let need = if self.plan_part_len > 0 {
            min.saturating_sub(self.plan_part_len)
        } else {
            0
        };
        if run.len < need + min {
            run.log(&format!("too short to copy (parts need {min}), sent"));
            return self.send_from_parent(run.start, run.len);
        }
        run.log(&format!(
            "{need} sent to fill the part before, the rest copied on the server"
        ));
        self.send_from_parent(run.start, need)?;
        self.end_part_for_copy()?;
        self.copy_pieces(run.start + need, run.len - need, run.object_start, min)
    }

    /// `--layout runs`: a run long enough to copy never pads a part: a short upload part begun
    /// ends its object instead, and a run shorter than `min` is copied as the last part of an
    /// object of its own.
    fn close_run_in_objects(&mut self, run: Run, min: u64) -> Result<(), Error> {
        if run.len < RUN_COPY_MIN {
            run.log("too short to copy, sent");
            return self.send_from_parent(run.start, run.len);
        }
        if self.plan_part_len > 0 && self.plan_part_len < min {
            self.end_object_for_copy()?;
        } else {
            self.end_part_for_copy()?;
        }
        if run.len < min {
            run.log("copied as an object's last part");
            self.put_copy(run.start, run.len, run.object_start)?;
            return self.end_object_for_copy();
        }
        self.copy_pieces(run.start, run.len, run.object_start, min)
    }

    /// Copies parent stream bytes [start, start + len) (at least `min`) as parts of at least
    /// `min` bytes each.
    fn copy_pieces(&mut self, start: u64, len: u64, object_start: u64, min: u64) -> Result<(), Error> {
        let (mut start, mut len) = (start, len);
        // The stream's first copy waits for its answer (it tells whether the server copies at
        // all), and the pipeline with it: it is kept to `min` bytes, so that answer comes fast
        // (a 100 MB first copy held a 3 GiB run on Garage up for 0.8 s).
        if !self.probed {
            self.probed = true;
            if len >= 2 * min {
                self.put_copy(start, min, object_start)?;
                (start, len) = (start + min, len - min);
            }
        }
        // Pieces of at most MAX_COPY_PART (or twice `min`, for streams so long that parts must
        // be larger), of near-equal size: each at least `min`.
        let pieces = len.div_ceil(MAX_COPY_PART.max(2 * min));
        let mut at = start;
        for k in 0..pieces {
            let end = start + len * (k + 1) / pieces;
            self.put_copy(at, end - at, object_start)?;
            at = end;
        }
        Ok(())
    }

    /// Bytes for the stream: written now, or queued behind fetches still under way.
    fn put_bytes(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.plan(bytes.len() as u64);
        if self.queue.is_empty() {
            return self.write_bytes(bytes);
        }
        self.queued += bytes.len() as u64;
        self.queue.push_back(Op::Bytes(bytes.to_vec()));
        self.pump(false)
    }

    /// Plans `n` more bytes in upload parts.
    fn plan(&mut self, n: u64) {
        self.plan_part_len = (self.plan_part_len + n) % self.part_size;
    }

    /// Ends the upload part begun, if any, so that a copy can follow.
    fn end_part_for_copy(&mut self) -> Result<(), Error> {
        if self.plan_part_len == 0 {
            return Ok(());
        }
        self.end_for_copy(Op::EndPart)
    }

    /// Ends the object begun, if any (`--layout runs`): its last part may be short.
    fn end_object_for_copy(&mut self) -> Result<(), Error> {
        self.end_for_copy(Op::EndObject)
    }

    /// `end` (EndPart or EndObject) now, or queued behind the fetches under way.
    fn end_for_copy(&mut self, end: Op) -> Result<(), Error> {
        self.plan_part_len = 0;
        if !self.queue.is_empty() {
            self.queue.push_back(end);
            return Ok(());
        }
        match end {
            Op::EndObject => self.end_object_now(),
            _ => self.end_part_now(),
        }
    }

    fn end_object_now(&mut self) -> Result<(), Error> {
        if self.part_len > 0 {
            self.end_part()?;
        }
        self.close_object()
    }

    fn end_part_now(&mut self) -> Result<(), Error> {
        // Once the server has refused a copy every byte is sent: parts are then all of
        // `part_size`, and a part ended early would be one S3 refuses as too small.
        if !self.copy_refused && self.part_len > 0 {
            self.end_part()?;
        }
        Ok(())
    }

    /// Parent stream bytes [start, start + len) as the next copied part.
    fn put_copy(&mut self, start: u64, len: u64, object_start: u64) -> Result<(), Error> {
        if self.queue.is_empty() {
            return self.copy_now(start, len, object_start);
        }
        self.queue.push_back(Op::Copy {
            start,
            len,
            object_start,
        });
        self.pump(false)
    }

    fn copy_now(&mut self, start: u64, len: u64, object_start: u64) -> Result<(), Error> {
        if !self.copy_refused && self.copy_part(start, len, object_start)? {
            return Ok(());
        }
        // The server does not copy: these bytes, and every later run's, are sent.
        self.reuse.fetched_bytes += len;
        self.read_and_write(start, len)
    }

    /// Writes the queued work in order, as far as its fetches have arrived; waits for the
    /// oldest fetch while the queue holds more than MAX_QUEUED bytes, or when `all`.
    fn pump(&mut self, all: bool) -> Result<(), Error> {
        loop {
            let wait = all || self.queued > MAX_QUEUED;
            match self.queue.front_mut() {
                None => return Ok(()),
                Some(Op::Fetch(p)) => {
                    if !wait && !p.is_ready() {
                        return Ok(());
                    }
                }
                Some(_) => {}
            }
            let Some(op) = self.queue.pop_front() else {
                return Ok(());
            };
            match op {
                Op::Bytes(b) => {
                    self.queued -= b.len() as u64;
                    self.write_bytes(&b)?;
                }
                Op::Fetch(p) => {
                    self.queued -= p.len as u64;
                    let b = p.wait()?;
                    self.write_bytes(&b)?;
                }
                Op::EndPart => self.end_part_now()?,
                Op::EndObject => self.end_object_now()?,
                Op::Copy {
                    start,
                    len,
                    object_start,
                } => self.copy_now(start, len, object_start)?,
            }
        }
    }

    /// Has the store copy parent stream bytes [start, start + len) as the next part. False when
    /// the server refused to copy (nothing was stored; copying is off from here on). `object_start`:
    /// where the parent object holding the bytes starts in its stream.
    fn copy_part(&mut self, start: u64, len: u64, object_start: u64) -> Result<bool, Error> {
        let Some(c) = &self.copying else { return Ok(false) };
        let (object, _) = c.parent.object_at(object_start);
        let source = CopySource {
            key: object.key.clone(),
            offset: start - object_start,
            len,
            etag: object.etag.clone(),
        };
        self.open_object()?;
        let number = self.part_number;
        let copied = match self.current.as_mut() {
            Some((w, _)) => w.copy_part(number, &source),
            None => return Err(Error::Internal("no data object to copy into".into())),
        };
        match copied {
            Ok(()) => {}
            Err(StoreError::CopyRefused {
                location,
                code,
                message,
            }) => {
                tracing::warn!("UploadPartCopy refused ({code}: {message}): sending the parent's frames instead");
                self.reuse.copies.note = Some(format!(
                    "the server refused UploadPartCopy ({code}: {message}) at {location}: the parent's frames were read and sent from this machine instead"
                ));
                self.copy_refused = true;
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        }
        if let Some((_, info)) = self.current.as_mut() {
            info.size += len;
        }
        self.parts.push((len, None));
        self.part_number += 1;
        self.stream_size += len;
        self.report_stored();
        Ok(true)
    }

    /// Sends parent stream bytes [start, start + len) like new ones: fetched in the
    /// background, in pieces, or read here without a fetcher.
    fn send_from_parent(&mut self, start: u64, len: u64) -> Result<(), Error> {
        if len == 0 {
            return Ok(());
        }
        self.reuse.fetched_bytes += len;
        self.plan(len);
        let Some(fetcher) = self.copying.as_ref().and_then(|c| c.fetcher) else {
            return self.read_and_write(start, len);
        };
        let mut at = start;
        while at < start + len {
            let n = ((start + len - at) as usize).min(FETCH_PIECE);
            self.queued += n as u64;
            self.queue.push_back(Op::Fetch(fetcher.fetch(at, n)));
            at += n as u64;
        }
        self.pump(false)
    }

    /// Reads parent stream bytes [start, start + len) here and writes them.
    fn read_and_write(&mut self, start: u64, len: u64) -> Result<(), Error> {
        let Some(parent) = self.copying.as_ref().map(|c| c.parent) else {
            return Err(Error::Internal("parent frames to send without a parent".into()));
        };
        let mut buf = vec![0u8; (len as usize).min(FETCH_PIECE)];
        let mut at = start;
        while at < start + len {
            let n = ((start + len - at) as usize).min(FETCH_PIECE);
            parent.read_stream(at, &mut buf[..n])?;
            self.write_bytes(&buf[..n])?;
            at += n as u64;
        }
        Ok(())
    }

    /// Tells the progress how many more bytes the store has taken for good.
    fn report_stored(&mut self) {
        let now = self.stored_before + self.current.as_ref().map_or(0, |(w, _)| w.stored_bytes());
        if now > self.reported {
            self.progress.stored(now - self.reported);
            self.reported = now;
        }
    }

    /// Writes the seek table, closes the last part and object. Returns the data description,
    /// the bundle digest, what an interrupted earlier run had stored that was reused, and the
    /// chunk index of a volume of `volume_size` bytes in chunks of `chunk_size`.
    /// On failure, removes what was written, as [`abort`](Self::abort) does.
    pub fn finish(mut self, chunk_size: u64, volume_size: u64) -> Result<Finished, Error> {
        let finished = crate::panics::catch(|| self.finish_stream(chunk_size, volume_size))
            .unwrap_or_else(|m| Err(Error::Internal(format!("finishing the bundle's stream panicked: {m}"))));
        match finished {
            Ok(f) => Ok(f),
            Err(e) => {
                self.abort();
                Err(e)
            }
        }
    }

    fn finish_stream(&mut self, chunk_size: u64, volume_size: u64) -> Result<Finished, Error> {
        let table = encode_seek_table(&self.seek);
        let seek_table_offset = self.frames_end;
        // An unchanged source has the parent's seek table too: it follows the parent's last
        // frames, so the copy of those takes it along and nothing at all is sent.
        let parent_table = self
            .copying
            .as_ref()
            .filter(|c| encode_seek_table(&c.parent.bundle.seek) == table)
            .map(|c| c.parent.bundle.manifest.data.seek_table_offset);
        match parent_table {
            Some(at) if !self.copy_refused => {
                self.extend_run(at, table.len() as u64)?;
                self.close_run()?;
            }
            _ => {
                self.close_run()?;
                self.put_bytes(&table)?;
            }
        }
        self.pump(true)?;
        if self.part_len > 0 {
            self.end_part()?;
        }
        self.close_object()?;
        while !self.finishing.is_empty() {
            self.settle_oldest()?;
        }
        let digest = hex::encode(std::mem::take(&mut self.bundle_hasher).finalize());
        let info = DataInfo {
            layout: self.layout,
            part_size: self.part_size,
            stream_size: self.stream_size,
            seek_table_offset,
            seek_table_size: table.len() as u64,
            objects: std::mem::take(&mut self.done),
        };
        Ok(Finished {
            data: info,
            bundle_sha256: digest,
            resumed: std::mem::take(&mut self.resumed),
            index: ChunkIndex {
                chunk_size,
                volume_size,
                entries: std::mem::take(&mut self.index),
                records: None,
            },
            reuse: std::mem::take(&mut self.reuse),
        })
    }

    /// Removes everything written so far (best effort).
    pub fn abort(mut self) {
        self.queue.clear();
        if let Some((w, _)) = self.current.take() {
            w.abort();
        }
        // Objects still completing: once done (or failed), removed like the others.
        for f in std::mem::take(&mut self.finishing) {
            let _ = f.handle.join();
            let _ = self.store.delete(&f.info.key);
        }
        for o in &self.done {
            let _ = self.store.delete(&o.key);
        }
    }
}

impl FrameSink for StreamWriter<'_> {
    fn frame(&mut self, mut f: ChunkFrame<'_>) -> Result<(), Error> {
        crate::panics::inject("writer");
        // The same plaintext can sit in several of the parent's frames (zeros, repeated
        // blocks): the one that continues the current run keeps it one copy.
        if let (Some(c), Some(run)) = (&self.copying, &self.run)
            && (f.zero || matches!(f.bytes, FrameBytes::Copied(_)))
            && let Some(next) = c.parent.frame_at(run.start + run.len, &f.hash, f.raw_len)
            && next.frame_hash == Some(f.frame_hash)
        {
            f.bytes = FrameBytes::Copied(next);
        }
        let (length, checksum) = match &f.bytes {
            FrameBytes::New(b) | FrameBytes::Reused { bytes: b, .. } => {
                (b.len() as u32, if self.sealed { 0 } else { frame_checksum(b) })
            }
            FrameBytes::Copied(from) => (from.length, from.checksum),
        };
        self.seek.push(SeekEntry {
            compressed: length,
            raw: f.raw_len,
            checksum,
        });
        self.index.push(IndexEntry {
            hash: f.hash,
            frame_hash: Some(f.frame_hash),
            offset: self.frames_end,
            length,
            raw_len: f.raw_len,
            alloc: f.alloc,
        });
        self.frames_end += u64::from(length);
        match f.bytes {
            FrameBytes::New(b) => {
                self.close_run()?;
                self.put_bytes(b)
            }
            FrameBytes::Reused { bytes, from } => {
                self.close_run()?;
                self.reuse.fetched_bytes += bytes.len() as u64;
                match self.local_source(&from) {
                    Some(source) if self.queue.is_empty() => {
                        self.plan(bytes.len() as u64);
                        self.write_bytes_from(bytes, Some(source))
                    }
                    _ => self.put_bytes(bytes),
                }
            }
            FrameBytes::Copied(from) => self.extend_run(from.offset, u64::from(from.length)),
        }
    }
}

impl StreamWriter<'_> {
    /// Where a local store's parent object holds `frame`, when one object holds all of it.
    fn local_source(&self, frame: &ReusedFrame) -> Option<CopySource> {
        let parent = self.local_parent?;
        let (object, object_start) = parent.bundle.object_at(frame.offset);
        let offset = frame.offset - object_start;
        (offset + u64::from(frame.length) <= object.size).then(|| CopySource {
            key: object.key.clone(),
            offset,
            len: u64::from(frame.length),
            etag: None,
        })
    }

    /// Adds a parent frame at parent stream offset `start` to the run, or starts a new run.
    fn extend_run(&mut self, start: u64, len: u64) -> Result<(), Error> {
        let Some(c) = &self.copying else {
            return Err(Error::Internal("a frame to copy, but no parent to copy from".into()));
        };
        let (object, object_start) = c.parent.object_at(start);
        if start + len > object_start + object.size {
            // The frame spans two of the parent's objects (one object per part): no single
            // copy can take it.
            self.close_run()?;
            return self.send_from_parent(start, len);
        }
        if let Some(run) = self.run.as_mut()
            && run.start + run.len == start
            && run.object_start == object_start
        {
            run.len += len;
            return Ok(());
        }
        self.close_run()?;
        self.run = Some(Run {
            start,
            len,
            object_start,
        });
        Ok(())
    }
}

/// Completes one object's upload. The fault-injection point of the `uploader` stage sits here,
/// caught, so that an injected panic aborts the upload as any failure does.
fn complete(w: Box<dyn ObjectWriter>, key: String) -> Result<crate::store::ObjectReceipt, Error> {
    if let Err(m) = crate::panics::catch(|| crate::panics::inject("uploader")) {
        w.abort();
        return Err(Error::Internal(format!("completing {key}: the upload panicked: {m}")));
    }
    finish_object(w, &key)
}

/// `w.finish()`, where a panic inside the store's own `finish` becomes an error like any other
/// failure. The writer, dropped while unwinding, has already ended its upload: every store's
/// writer aborts (S3: AbortMultipartUpload) or removes its partial file when dropped unfinished.
pub(crate) fn finish_object(w: Box<dyn ObjectWriter>, key: &str) -> Result<crate::store::ObjectReceipt, Error> {
    crate::panics::catch(move || w.finish())
        .map_err(|m| {
            Error::Internal(format!(
                "completing {key}: the store panicked: {m}; its upload was aborted"
            ))
        })?
        .map_err(Error::from)
}
