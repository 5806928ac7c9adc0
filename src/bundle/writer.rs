//! Turns the ordered frames into stored objects: appends each frame to the data stream, cuts
//! the stream into parts of `part_size` bytes (hashing each with SHA-256 as the bytes go by, the
//! only pass over the compressed data), and ends the stream with the seek table.

use sha2::{Digest, Sha256};

use super::Keys;
use super::index::{ChunkIndex, IndexEntry};
use super::manifest::{DataInfo, Layout, ObjectInfo};
use crate::Error;
use crate::chunk::frame::{SeekEntry, encode_seek_table, frame_checksum};
use crate::chunk::pipeline::{FrameBytes, FrameSink};
use crate::progress::Progress;
use crate::store::{ObjectStore, ObjectWriter, PartInfo, ResumeStats};

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
}

/// A finished data stream.
pub struct Finished {
    pub data: DataInfo,
    /// SHA-256 over the part digests (hex).
    pub bundle_sha256: String,
    /// What an interrupted earlier run had stored and this one reused.
    pub resumed: ResumeStats,
    pub index: ChunkIndex,
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
        }
    }

    fn open_object(&mut self) -> Result<(), Error> {
        if self.current.is_none() {
            let key = match self.layout {
                Layout::Single => self.keys.image(),
                Layout::Parts => self.keys.part(self.done.len() as u32),
            };
            let w = self.store.writer(&key)?;
            self.current = Some((
                w,
                ObjectInfo {
                    key,
                    size: 0,
                    parts_sha256: Vec::new(),
                    etag: None,
                    parts_etag: Vec::new(),
                },
            ));
            self.part_number = 0;
        }
        Ok(())
    }

    fn write_bytes(&mut self, mut bytes: &[u8]) -> Result<(), Error> {
        while !bytes.is_empty() {
            self.open_object()?;
            let n = ((self.part_size - self.part_len) as usize).min(bytes.len());
            let (now, rest) = bytes.split_at(n);
            self.hasher.update(now);
            if let Some((w, info)) = self.current.as_mut() {
                w.write(now)?;
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
        self.bundle_hasher.update(digest);
        let part = PartInfo {
            number: self.part_number,
            size: self.part_len,
            sha256: digest,
        };
        self.part_len = 0;
        self.part_number += 1;
        if let Some((w, info)) = self.current.as_mut() {
            w.end_part(&part)?;
            info.parts_sha256.push(hex::encode(digest));
        }
        if self.layout == Layout::Parts {
            self.close_object()?;
        }
        Ok(())
    }

    fn close_object(&mut self) -> Result<(), Error> {
        if let Some((w, mut info)) = self.current.take() {
            let receipt = w.finish()?;
            self.stored_before += info.size;
            info.etag = receipt.etag;
            info.parts_etag = receipt.part_etags;
            self.resumed.add(&receipt.resumed);
            self.done.push(info);
            self.report_stored();
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
    pub fn finish(mut self, chunk_size: u64, volume_size: u64) -> Result<Finished, Error> {
        let table = encode_seek_table(&self.seek);
        let seek_table_offset = self.stream_size;
        self.write_bytes(&table)?;
        if self.part_len > 0 {
            self.end_part()?;
        }
        self.close_object()?;
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
            },
        })
    }

    /// Removes everything written so far (best effort).
    pub fn abort(mut self) {
        if let Some((w, _)) = self.current.take() {
            w.abort();
        }
        for o in &self.done {
            let _ = self.store.delete(&o.key);
        }
    }
}

impl FrameSink for StreamWriter<'_> {
    fn frame(
        &mut self,
        _index: u64,
        frame: FrameBytes<'_>,
        raw_len: u32,
        _zero: bool,
        hash: &[u8; 32],
    ) -> Result<(), Error> {
        let bytes = match frame {
            FrameBytes::New(b) | FrameBytes::Reused { bytes: b, .. } => b,
        };
        self.seek.push(SeekEntry {
            compressed: bytes.len() as u32,
            raw: raw_len,
            checksum: frame_checksum(bytes),
        });
        self.index.push(IndexEntry {
            hash: *hash,
            offset: self.stream_size,
            length: bytes.len() as u32,
            raw_len,
        });
        self.write_bytes(bytes)
    }
}
