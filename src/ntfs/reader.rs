//! A `Read + Seek` view of one volume for the `ntfs` crate, with two additions:
//!
//! * **Multi-extent attributes, remapped.** The `ntfs` crate 0.4 reads a non-resident attribute
//!   only through its first extent: it finds MFT records through record 0's first `$DATA`
//!   extent (so records of a fragmented MFT, one with an `$ATTRIBUTE_LIST`, fail to load), and
//!   it links further extents by attribute instance, which differs between records (so large
//!   directory indexes split across records fail too). Whenever the crate reads a file record
//!   that has an `$ATTRIBUTE_LIST`, this view serves a patched copy in which the first extent of
//!   every split attribute is one run covering the whole attribute at a *virtual* cluster past
//!   the end of the volume; reads of that virtual range are mapped back to the real clusters.
//! * **A read budget.** A damaged directory index or attribute list could make a walk loop; the
//!   view counts the bytes it serves and fails once a generous limit is passed.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};

use super::NtfsError;
use super::mft::{MftMap, read_runs};
use super::record::{self, ATTR_ATTRIBUTE_LIST, ATTR_DATA, Run};
use crate::source::DiskFile;

/// Metadata reads allowed per view before the walk is declared a loop.
pub const METADATA_READ_BUDGET: u64 = 512 << 20;

/// Errors this view raises; they travel through the crate inside `io::Error`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReaderError {
    #[error(
        "a read at byte {offset} of the volume goes past its end ({len} bytes): a data run points outside the volume"
    )]
    PastVolume { offset: u64, len: u64 },
    #[error("metadata read budget of {limit_mib} MiB exhausted")]
    Budget { limit_mib: u64 },
    #[error("{0}")]
    Other(String),
}

impl From<ReaderError> for NtfsError {
    fn from(e: ReaderError) -> Self {
        match e {
            ReaderError::Budget { limit_mib } => NtfsError::ReadBudget { limit: limit_mib },
            other => NtfsError::Crate(other.to_string()),
        }
    }
}

/// What a virtual range holds.
#[derive(Debug, Clone)]
enum Backing {
    /// A whole multi-extent attribute, through its real runs.
    Runs(Vec<Run>),
    /// Bytes made here (a pruned non-resident attribute list).
    Bytes(Arc<Vec<u8>>),
}

/// A virtual range past the end of the volume.
#[derive(Debug)]
struct Region {
    start: u64,
    len: u64,
    backing: Backing,
    /// True for the `$MFT`'s own `$DATA`: records read through it get patched too.
    is_mft: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Record number → patched (fixups applied) bytes, or None when it needs no patch.
    patched: HashMap<u64, Option<Arc<Vec<u8>>>>,
    regions: Vec<Region>,
    next_virtual: u64,
}

/// The shared remapping state of one volume.
#[derive(Debug)]
pub struct Remap<'d> {
    disk: &'d DiskFile,
    map: MftMap,
    volume_offset: u64,
    volume_len: u64,
    state: Mutex<State>,
}

impl<'d> Remap<'d> {
    pub fn new(disk: &'d DiskFile, map: MftMap, volume_offset: u64, volume_len: u64) -> Self {
        let cs = map.cluster_size();
        let first_virtual = (volume_len.div_ceil(cs) + 16) * cs;
        Self {
            disk,
            map,
            volume_offset,
            volume_len,
            state: Mutex::new(State {
                next_virtual: first_virtual,
                ..Default::default()
            }),
        }
    }

    pub fn map(&self) -> &MftMap {
        &self.map
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn first_virtual(&self) -> u64 {
        let cs = self.map.cluster_size();
        (self.volume_len.div_ceil(cs) + 16) * cs
    }

    /// The patched bytes of record `r`, if it needs patching.
    fn patch_for(&self, r: u64) -> Option<Arc<Vec<u8>>> {
        if let Some(p) = self.state().patched.get(&r) {
            return p.clone();
        }
        let base = match self.map.read_record(self.disk, r) {
            Ok(rec) if record::in_use(&rec) => {
                let base = u64::from_le_bytes(rec[0x20..0x28].try_into().unwrap_or_default()) & 0xffff_ffff_ffff;
                if base == 0 { r } else { base }
            }
            _ => r,
        };
        self.patch_group(base);
        let mut st = self.state();
        st.patched.entry(r).or_insert(None).clone()
    }

    /// Computes the patches for base record `base` and its extension records.
    fn patch_group(&self, base: u64) {
        if self.state().patched.contains_key(&base) {
            return;
        }
        let mut out: HashMap<u64, Vec<u8>> = HashMap::new();
        if self.compute_patches(base, &mut out).is_err() {
            // Damage here is left for the crate (and our own readers) to report.
            out.clear();
        }
        let mut st = self.state();
        st.patched.entry(base).or_insert(None);
        for (r, bytes) in out {
            st.patched.insert(r, Some(Arc::new(bytes)));
        }
    }

    fn compute_patches(&self, base: u64, out: &mut HashMap<u64, Vec<u8>>) -> Result<(), NtfsError> {
        let rec = self.map.read_record(self.disk, base)?;
        let attrs = record::attributes(&rec, base)?;
        let Some(list_attr) = attrs.iter().find(|a| a.ty == ATTR_ATTRIBUTE_LIST) else {
            return Ok(());
        };
        let list = self.map.attribute_list_bytes(self.disk, &rec, list_attr, base)?;
        let cs = self.map.cluster_size();
        let mut remapped = Vec::new();
        for (ty, name) in record::attribute_list_names(&list) {
            if record::attribute_list_entries(&list, ty, &name, base)?.len() < 2 {
                continue;
            }
            let Some(x) = self.map.extents(self.disk, base, ty, &name)? else {
                continue;
            };
            let total = x.runs.last().map_or(0, |r| r.vcn + r.count);
            if x.resident || total == 0 {
                continue;
            }
            let is_mft = base == 0 && ty == ATTR_DATA && name.is_empty();
            let start = self.add_region(total * cs, Backing::Runs(x.runs.clone()), is_mft);
            let mut bytes = match out.remove(&x.first_record) {
                Some(b) => b,
                None => self.map.read_record(self.disk, x.first_record)?,
            };
            MftMap::patch_first_extent(&mut bytes, x.first_record, ty, &name, total, start / cs)?;
            out.insert(x.first_record, bytes);
            remapped.push((ty, name));
        }
        if !remapped.is_empty() {
            // The crate picks the first list entry of a type, whatever its VCN: leave only the
            // first extents of the remapped attributes in the list.
            let mut bytes = match out.remove(&base) {
                Some(b) => b,
                None => rec,
            };
            let pruned = record::prune_attribute_list(&list, &remapped);
            if list_attr.non_resident {
                let clusters = (pruned.len() as u64).div_ceil(cs).max(1);
                let mut data = pruned.clone();
                data.resize((clusters * cs) as usize, 0);
                let start = self.add_region(clusters * cs, Backing::Bytes(Arc::new(data)), false);
                MftMap::set_virtual_list(&mut bytes, base, clusters, start / cs, pruned.len() as u64, cs)?;
            } else {
                MftMap::set_resident_list(&mut bytes, base, &pruned)?;
            }
            out.insert(base, bytes);
        }
        for bytes in out.values_mut() {
            record::encode_fixups(bytes);
        }
        Ok(())
    }

    /// Reserves a virtual range of `len` bytes; returns its start.
    fn add_region(&self, len: u64, backing: Backing, is_mft: bool) -> u64 {
        let cs = self.map.cluster_size();
        let mut st = self.state();
        let start = st.next_virtual;
        st.next_virtual += len.div_ceil(cs) * cs + 16 * cs;
        st.regions.push(Region {
            start,
            len,
            backing,
            is_mft,
        });
        start
    }

    /// Overlays patched records onto `buf`, which holds MFT stream bytes from `mft_offset`.
    fn overlay_records(&self, buf: &mut [u8], mft_offset: u64) {
        let rs = self.map.record_size();
        for r in self.map.records_in(mft_offset, mft_offset + buf.len() as u64) {
            if let Some(p) = self.patch_for(r) {
                overlay(buf, mft_offset, r * rs, &p);
            }
        }
    }

    fn read_virtual(&self, pos: u64, buf: &mut [u8]) -> Result<usize, ReaderError> {
        let st = self.state();
        let Some(region) = st.regions.iter().find(|g| pos >= g.start && pos < g.start + g.len) else {
            return Err(ReaderError::PastVolume {
                offset: pos,
                len: self.volume_len,
            });
        };
        let o = pos - region.start;
        let n = buf.len().min((region.len - o) as usize);
        let (backing, is_mft) = (region.backing.clone(), region.is_mft);
        drop(st);
        match backing {
            Backing::Runs(runs) => read_runs(
                self.disk,
                self.volume_offset,
                self.map.cluster_size(),
                &runs,
                o,
                &mut buf[..n],
            )
            .map_err(|e| ReaderError::Other(e.to_string()))?,
            Backing::Bytes(b) => buf[..n].copy_from_slice(&b[o as usize..o as usize + n]),
        }
        if is_mft {
            self.overlay_records(&mut buf[..n], o);
        }
        Ok(n)
    }

    fn read_real(&self, pos: u64, buf: &mut [u8]) -> Result<usize, ReaderError> {
        if pos >= self.volume_len {
            return Err(ReaderError::PastVolume {
                offset: pos,
                len: self.volume_len,
            });
        }
        let n = buf.len().min((self.volume_len - pos) as usize);
        self.disk
            .read_exact_at(&mut buf[..n], self.volume_offset + pos)
            .map_err(|e| ReaderError::Other(e.to_string()))?;
        if let Some(o) = self.map.stream_offset_of(pos) {
            // Only the part of the read inside this MFT run maps to consecutive records.
            let cs = self.map.cluster_size();
            let run_left = self
                .map
                .runs()
                .iter()
                .find_map(|r| {
                    let l = r.lcn?;
                    let c = pos / cs;
                    (c >= l && c < l + r.count).then(|| (l + r.count) * cs - pos)
                })
                .unwrap_or(0);
            let m = (n as u64).min(run_left) as usize;
            self.overlay_records(&mut buf[..m], o);
        }
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

/// The view. Cheap to create; each user makes its own.
pub struct VolumeReader<'r, 'd> {
    remap: &'r Remap<'d>,
    pos: u64,
    used: u64,
    budget: u64,
}

impl<'r, 'd> VolumeReader<'r, 'd> {
    pub fn new(remap: &'r Remap<'d>) -> Self {
        Self {
            remap,
            pos: 0,
            used: 0,
            budget: METADATA_READ_BUDGET,
        }
    }
}

impl Read for VolumeReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.used += buf.len() as u64;
        if self.used > self.budget {
            return Err(io::Error::other(ReaderError::Budget {
                limit_mib: self.budget >> 20,
            }));
        }
        let r = if self.pos >= self.remap.first_virtual() {
            self.remap.read_virtual(self.pos, buf)
        } else {
            self.remap.read_real(self.pos, buf)
        };
        let n = r.map_err(io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for VolumeReader<'_, '_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.remap.volume_len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))?;
        Ok(self.pos)
    }
}
