//! Reads one chunk of the root volume: only allocated, non-excluded clusters (plus the tail of
//! the partition that holds the backup boot sector); everything else is zeros.

use crate::ntfs::AllocationMap;
use crate::source::DiskFile;
use crate::source::device::AlignedBuf;

/// A chunk's bytes in page-aligned memory: a device that needs aligned buffers (a Windows
/// volume opened for unbuffered I/O) reads whole cluster runs straight into it.
#[derive(Default)]
pub struct ChunkBuf {
    buf: Option<AlignedBuf>,
    len: usize,
}

impl ChunkBuf {
    /// Memory alignment of every chunk buffer.
    pub const ALIGN: usize = 4096;

    /// `len` bytes, zeroed if newly allocated (existing contents are left as they are).
    pub fn set_len(&mut self, len: usize) {
        if self.buf.as_ref().is_none_or(|b| b.len() < len) {
            self.buf = Some(AlignedBuf::new(len, Self::ALIGN));
        }
        self.len = len;
    }

    pub fn as_slice(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], |b| &b.as_slice()[..self.len])
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len;
        self.buf.as_mut().map_or(&mut [], |b| &mut b.as_mut_slice()[..len])
    }
}

/// Gaps smaller than this between two runs are read through (and zeroed) in one request.
const COALESCE_GAP: u64 = 64 << 10;

/// The volume as chunks.
pub struct ChunkSource<'d> {
    disk: &'d DiskFile,
    /// The root partition's number, for errors.
    partition: u32,
    volume_offset: u64,
    image_len: u64,
    map: AllocationMap<'d>,
    /// Byte range (relative to the volume) always read: past the last whole cluster up to and
    /// including the backup boot sector.
    tail: (u64, u64),
    runs: Vec<(u64, u64)>,
    ranges: Vec<(u64, u64)>,
}

impl<'d> ChunkSource<'d> {
    /// `image_len` is the partition length; `fs_size` the file system's size per its boot sector.
    pub fn new(
        disk: &'d DiskFile,
        partition: u32,
        volume_offset: u64,
        image_len: u64,
        fs_size: u64,
        sector_size: u64,
        map: AllocationMap<'d>,
    ) -> Self {
        let cluster_end = map.clusters() * map.cluster_size();
        let tail_end = (fs_size + sector_size).min(image_len);
        Self {
            disk,
            partition,
            volume_offset,
            image_len,
            map,
            tail: (cluster_end.min(tail_end), tail_end),
            runs: Vec::new(),
            ranges: Vec::new(),
        }
    }

    pub fn image_len(&self) -> u64 {
        self.image_len
    }

    /// After a failed read of `buf.len()` bytes at volume byte `start`: the error of the first
    /// 4 KiB piece that cannot be read, so the message names the bad spot, not the request.
    fn first_unreadable(
        &self,
        start: u64,
        e: crate::source::SourceError,
        buf: &mut [u8],
    ) -> crate::source::SourceError {
        for (i, piece) in buf.chunks_mut(4096).enumerate() {
            if let Err(bad) = self
                .disk
                .read_exact_at(piece, self.volume_offset + start + i as u64 * 4096)
            {
                return bad;
            }
        }
        e
    }

    /// A read error of the disk, told in the volume's terms too.
    fn in_volume(&self, e: crate::source::SourceError) -> crate::source::SourceError {
        use crate::source::SourceError;
        match e {
            SourceError::Read { path, offset, source } => SourceError::ReadVolume {
                path,
                offset,
                partition: self.partition,
                volume_offset: offset.saturating_sub(self.volume_offset),
                source,
            },
            e => e,
        }
    }

    /// Bytes the tail range adds to every bundle.
    pub fn tail_len(&self) -> u64 {
        self.tail.1 - self.tail.0
    }

    /// The byte ranges of [start, end) that hold data, coalesced; returns their total length.
    pub fn data_ranges(&mut self, start: u64, end: u64) -> Result<u64, crate::Error> {
        let cs = self.map.cluster_size();
        self.runs.clear();
        self.ranges.clear();
        self.map.runs(start / cs, end.div_ceil(cs), &mut self.runs)?;
        let mut data = 0;
        let mut push = |ranges: &mut Vec<(u64, u64)>, s: u64, e: u64| {
            let (s, e) = (s.max(start), e.min(end));
            if s < e {
                data += e - s;
                ranges.push((s, e));
            }
        };
        for &(c, n) in &self.runs {
            push(&mut self.ranges, c * cs, (c + n) * cs);
        }
        push(&mut self.ranges, self.tail.0, self.tail.1);
        Ok(data)
    }

    /// [`crate::format::index::alloc_digest`] of the ranges [`Self::data_ranges`] found in the
    /// chunk that starts at `start`.
    pub fn alloc_digest(&self, start: u64) -> u64 {
        crate::format::index::alloc_digest(start, &self.ranges)
    }

    /// Fills `buf` (resized to the chunk length) with chunk [start, end) after
    /// [`Self::data_ranges`] for the same range. Returns the bytes read from the disk.
    pub fn fill(&self, start: u64, end: u64, buf: &mut ChunkBuf) -> Result<u64, crate::Error> {
        let len = (end - start) as usize;
        buf.set_len(len);
        let buf = buf.as_mut_slice();
        let mut zero_from = 0u64; // relative offset up to which the buffer is final
        let mut read = 0;
        let mut i = 0;
        while i < self.ranges.len() {
            // Coalesce ranges separated by small gaps into one read.
            let (s, mut e) = self.ranges[i];
            let mut j = i + 1;
            while j < self.ranges.len() && self.ranges[j].0 - e <= COALESCE_GAP {
                e = self.ranges[j].1;
                j += 1;
            }
            let (rs, re) = ((s - start) as usize, (e - start) as usize);
            buf[zero_from as usize..rs].fill(0);
            if let Err(e) = self.disk.read_exact_at(&mut buf[rs..re], self.volume_offset + s) {
                return Err(self.in_volume(self.first_unreadable(s, e, &mut buf[rs..re])).into());
            }
            read += e - s;
            // Zero the gaps inside the coalesced span.
            for k in i..j - 1 {
                let (gs, ge) = (
                    (self.ranges[k].1 - start) as usize,
                    (self.ranges[k + 1].0 - start) as usize,
                );
                buf[gs..ge].fill(0);
            }
            zero_from = re as u64;
            i = j;
        }
        buf[zero_from as usize..].fill(0);
        Ok(read)
    }
}
