//! A `Read + Seek` view of one volume for the `ntfs` crate, with two additions:
//!
//! * **MFT remap.** The crate finds file record N through the runs in record 0's first `$DATA`
//!   extent only, so on a fragmented MFT (one with an `$ATTRIBUTE_LIST`) records past that
//!   extent fail to load. When that is the case, this view serves a patched record 0 whose
//!   `$DATA` is one run at a virtual cluster past the end of the volume, and maps that virtual
//!   range back to the real MFT clusters ([`super::mft::MftMap`]).
//! * **A read budget.** A damaged directory index or attribute list could make a walk loop; the
//!   view counts the bytes it serves and fails once a generous limit is passed.

use std::cell::Cell;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

use super::mft::MftMap;
use crate::source::DiskFile;

/// Metadata reads allowed per view before the walk is declared a loop.
pub const METADATA_READ_BUDGET: u64 = 512 << 20;

/// Errors this view raises; they travel through the crate inside `io::Error`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReaderError {
    #[error("a read at byte {offset} of the volume goes past its end ({len} bytes): a data run points outside the volume")]
    PastVolume { offset: u64, len: u64 },
    #[error("metadata read budget of {limit_mib} MiB exhausted")]
    Budget { limit_mib: u64 },
    #[error("{0}")]
    Other(String),
}

impl From<ReaderError> for super::NtfsError {
    fn from(e: ReaderError) -> Self {
        match e {
            ReaderError::Budget { limit_mib } => super::NtfsError::ReadBudget { limit: limit_mib },
            other => super::NtfsError::Crate(other.to_string()),
        }
    }
}

/// The MFT remap described in the module docs.
#[derive(Debug)]
pub struct Remap {
    pub map: MftMap,
    /// Patched record 0.
    pub record0: Vec<u8>,
    /// Where record 0 really is, relative to the volume.
    pub real_record0: u64,
    /// Where the virtual contiguous MFT starts (past the volume's end).
    pub virtual_start: u64,
}

/// The view. Cheap to create; each user makes its own.
pub struct VolumeReader<'d> {
    disk: &'d DiskFile,
    offset: u64,
    len: u64,
    pos: u64,
    remap: Option<Arc<Remap>>,
    used: Cell<u64>,
    budget: u64,
}

impl<'d> VolumeReader<'d> {
    pub fn new(disk: &'d DiskFile, offset: u64, len: u64, remap: Option<Arc<Remap>>) -> Self {
        Self { disk, offset, len, pos: 0, remap, used: Cell::new(0), budget: METADATA_READ_BUDGET }
    }

    fn fail(e: ReaderError) -> io::Error {
        io::Error::other(e)
    }

    fn read_virtual(&self, remap: &Remap, buf: &mut [u8]) -> io::Result<usize> {
        let o = self.pos - remap.virtual_start;
        let total = remap.map.data_size();
        if o >= total {
            return Err(Self::fail(ReaderError::PastVolume { offset: self.pos, len: self.len }));
        }
        let n = buf.len().min((total - o) as usize);
        remap
            .map
            .read_bytes(self.disk, o, &mut buf[..n])
            .map_err(|e| Self::fail(ReaderError::Other(e.to_string())))?;
        overlay(&mut buf[..n], o, 0, &remap.record0);
        Ok(n)
    }
}

/// Copies the part of `patch` (which sits at `patch_at`) that overlaps `buf` (which sits at `at`).
fn overlay(buf: &mut [u8], at: u64, patch_at: u64, patch: &[u8]) {
    let start = at.max(patch_at);
    let end = (at + buf.len() as u64).min(patch_at + patch.len() as u64);
    if start < end {
        buf[(start - at) as usize..(end - at) as usize]
            .copy_from_slice(&patch[(start - patch_at) as usize..(end - patch_at) as usize]);
    }
}

impl Read for VolumeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let used = self.used.get() + buf.len() as u64;
        if used > self.budget {
            return Err(Self::fail(ReaderError::Budget { limit_mib: self.budget >> 20 }));
        }
        self.used.set(used);
        let n = match &self.remap {
            Some(r) if self.pos >= r.virtual_start => self.read_virtual(r, buf)?,
            _ => {
                if self.pos >= self.len {
                    return Err(Self::fail(ReaderError::PastVolume { offset: self.pos, len: self.len }));
                }
                let n = buf.len().min((self.len - self.pos) as usize);
                self.disk
                    .read_exact_at(&mut buf[..n], self.offset + self.pos)
                    .map_err(|e| Self::fail(ReaderError::Other(e.to_string())))?;
                if let Some(r) = &self.remap {
                    overlay(&mut buf[..n], self.pos, r.real_record0, &r.record0);
                }
                n
            }
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for VolumeReader<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))?;
        Ok(self.pos)
    }
}
