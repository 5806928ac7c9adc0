//! What changed on the volume since an earlier bundle, told from NTFS metadata alone.
//!
//! Every bundle records a digest of each `$MFT` record as written ([`record_digest`]). A later
//! bundle reads `$MFT` (never the files), compares, and marks for reading the chunks that may
//! hold changed data ([`BitSet`]): the clusters of every record that changed (a file written
//! through the file system has its record rewritten: times, sizes, runs, update sequence), of the
//! directories that hold a changed record, of the system files whose contents change without
//! their record changing (`$MFT`, `$MFTMirr`, `$LogFile`, `$Bitmap`, `$Boot`, `$Secure`, the
//! `$Extend` files such as `$UsnJrnl`: records below 24 and everything under `$Extend`), and
//! clusters that are allocated but belong to no record. Chunks whose allocation changed are
//! told apart by the caller, which compares each chunk's allocation digest.
//!
//! The scan refuses to guess: a record it cannot parse, in use, is an error, and the caller
//! reads everything instead. It runs inside [`super::guard::contain`], like every walk of NTFS
//! structures.

use super::NtfsError;
use super::record::{self, ATTR_FILE_NAME};
use super::volume::NtfsVolume;

/// Records below this number are the volume's own (`$MFT` … `$Extend` and the reserved ones).
pub const SYSTEM_RECORDS: u64 = 24;
/// `$Extend`, the folder of `$UsnJrnl`, `$ObjId`, `$Quota`, `$Reparse`, `$RmMetadata`.
const EXTEND_RECORD: u64 = 11;
/// The `$MFT` is read in pieces of this many bytes.
const READ_PIECE: usize = 4 << 20;
/// Records without a parent or base (unused, or the root's parent).
const NONE: u32 = u32::MAX;

/// The digest a bundle records for one MFT record: the first 8 bytes of the BLAKE3 of the
/// record exactly as stored (update sequence array included, so every rewrite shows).
pub fn record_digest(raw: &[u8]) -> u64 {
    let h = blake3::hash(raw);
    u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or_default())
}

/// A set of numbers: chunks, or records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BitSet {
    bits: Vec<u64>,
}

impl BitSet {
    pub fn insert(&mut self, chunk: u64) {
        let (w, b) = ((chunk / 64) as usize, chunk % 64);
        if self.bits.len() <= w {
            self.bits.resize(w + 1, 0);
        }
        self.bits[w] |= 1 << b;
    }

    pub fn contains(&self, chunk: u64) -> bool {
        self.bits
            .get((chunk / 64) as usize)
            .is_some_and(|w| w & (1 << (chunk % 64)) != 0)
    }

    /// Every chunk that holds a byte of volume bytes [start, end).
    pub fn insert_bytes(&mut self, start: u64, end: u64, chunk_size: u64) {
        if start >= end {
            return;
        }
        for c in start / chunk_size..=(end - 1) / chunk_size {
            self.insert(c);
        }
    }

    pub fn len(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one pass over `$MFT` found.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Every record's [`record_digest`], in record order: the new bundle's index keeps them.
    pub digests: Vec<u64>,
    /// With a parent's digests: the chunks the metadata says must be read.
    pub read: Option<BitSet>,
    /// Records whose digest differs from the parent's (or that are new).
    pub changed_records: u64,
    /// Bytes of `$MFT` read.
    pub mft_bytes: u64,
}

/// Facts of one record kept through the pass (for the second step).
#[derive(Debug, Clone, Copy)]
struct Links {
    /// The first `$FILE_NAME`'s parent folder.
    parent: u32,
    /// The base record of an extension record.
    base: u32,
}

/// Reads every record of `$MFT`. Without `parent` it only computes the digests (a full
/// bundle); with the parent bundle's digests it also works out which chunks of `chunk_size`
/// bytes must be read.
pub fn scan(vol: &NtfsVolume<'_>, parent: Option<&[u64]>, chunk_size: u64) -> Result<Scan, NtfsError> {
    super::guard::contain(0, "$MFT (change scan)", || scan_unguarded(vol, parent, chunk_size))
}

fn scan_unguarded(vol: &NtfsVolume<'_>, parent: Option<&[u64]>, chunk_size: u64) -> Result<Scan, NtfsError> {
    let (disk, _) = vol.disk();
    let map = vol.mft();
    let rs = map.record_size() as usize;
    let count = map.record_count();
    let cs = map.cluster_size();
    let clusters = vol.facts().cluster_count;
    let mut out = Scan {
        digests: Vec::with_capacity(count as usize),
        ..Default::default()
    };
    let mut owned = parent.map(|_| Ownership::new(clusters));
    let mut links = Vec::new();
    let mut changed = Vec::new();
    let per_piece = (READ_PIECE / rs).max(1) as u64;
    let mut buf = vec![0u8; per_piece as usize * rs];
    let mut n = 0u64;
    while n < count {
        let k = per_piece.min(count - n);
        let piece = &mut buf[..k as usize * rs];
        map.read_bytes(disk, n * rs as u64, piece)?;
        out.mft_bytes += piece.len() as u64;
        for (i, raw) in piece.chunks_exact_mut(rs).enumerate() {
            let r = n + i as u64;
            let digest = record_digest(raw);
            out.digests.push(digest);
            let Some(old) = parent else { continue };
            let is_changed = old.get(r as usize) != Some(&digest);
            if is_changed {
                changed.push(r);
            }
            let facts = parse(raw, r, clusters)?;
            if let (Some(own), Some(f)) = (owned.as_mut(), facts.as_ref()) {
                for &(lcn, n) in &f.runs {
                    own.mark(lcn, n);
                }
            }
            links.push(facts.map_or(
                Links {
                    parent: NONE,
                    base: NONE,
                },
                |f| f.links,
            ));
        }
        n += k;
    }
    let (Some(_), Some(own)) = (parent, owned) else {
        return Ok(out);
    };
    out.changed_records = changed.len() as u64;
    let mut set = BitSet::default();
    own.mark_unowned(vol, chunk_size, &mut set)?;
    let wanted = records_to_read(&links, &changed);
    for r in 0..count {
        let base = links[r as usize].base;
        let needed = wanted.contains(r) || (base != NONE && wanted.contains(u64::from(base)));
        if !needed {
            continue;
        }
        let mut raw = vec![0u8; rs];
        map.read_bytes(disk, r * rs as u64, &mut raw)?;
        out.mft_bytes += rs as u64;
        // A changed record no longer in use (a deleted file) still names its old clusters.
        for (lcn, n) in runs_of(&mut raw, r, clusters).unwrap_or_default() {
            set.insert_bytes(lcn * cs, (lcn + n) * cs, chunk_size);
        }
    }
    out.read = Some(set);
    Ok(out)
}

/// The records whose clusters must be read: the changed ones, the folders that hold them,
/// and the volume's own files (records below [`SYSTEM_RECORDS`] and everything under
/// `$Extend`).
fn records_to_read(links: &[Links], changed: &[u64]) -> BitSet {
    let mut wanted = BitSet::default();
    for r in 0..SYSTEM_RECORDS.min(links.len() as u64) {
        wanted.insert(r);
    }
    for &r in changed {
        wanted.insert(r);
        let p = links[r as usize].parent;
        if p != NONE {
            wanted.insert(u64::from(p));
        }
    }
    // Everything under $Extend, however deep (a few levels: $RmMetadata\$Txf…).
    let under_extend = |r: usize| {
        let mut p = links[r].parent;
        for _ in 0..16 {
            if p == NONE || u64::from(p) < SYSTEM_RECORDS {
                return u64::from(p) == EXTEND_RECORD;
            }
            p = links.get(p as usize).map_or(NONE, |l| l.parent);
        }
        false
    };
    for r in SYSTEM_RECORDS as usize..links.len() {
        if under_extend(r) {
            wanted.insert(r as u64);
        }
    }
    wanted
}

/// What the pass keeps of a record in use.
struct Facts {
    links: Links,
    /// Allocated runs (LCN, clusters) of its non-resident attributes.
    runs: Vec<(u64, u64)>,
}

/// Parses record `r` (its fixups undone in place). `None` for a record not in use; an error
/// for one in use that does not parse.
fn parse(raw: &mut [u8], r: u64, clusters: u64) -> Result<Option<Facts>, NtfsError> {
    if raw.len() < 48 || &raw[0..4] != b"FILE" || !record::in_use(raw) {
        return Ok(None);
    }
    let unparsable = |e: NtfsError| NtfsError::Record {
        record: r,
        problem: format!("in use but cannot be parsed: {e}"),
    };
    record::apply_fixups(raw, r).map_err(unparsable)?;
    // A base record has a zero base reference; an extension record of record 0 (`$MFT`'s own)
    // has record number 0 with a non-zero sequence number.
    let base_ref = record::u64_at(raw, 0x20);
    let attrs = record::attributes(raw, r).map_err(unparsable)?;
    let mut parent = NONE;
    let mut runs = Vec::new();
    for a in &attrs {
        if a.non_resident {
            let nr = a.non_resident(raw, r).map_err(unparsable)?;
            let end = a.offset + a.length;
            for run in
                record::decode_runs(&raw[nr.mapping_pairs..end], nr.lowest_vcn, clusters, r).map_err(unparsable)?
            {
                if let Some(lcn) = run.lcn {
                    runs.push((lcn, run.count));
                }
            }
        } else if a.ty == ATTR_FILE_NAME && parent == NONE {
            let v = a.resident_value(raw, r).map_err(unparsable)?;
            if v.len() >= 8 {
                parent = u32::try_from(record::u64_at(v, 0) & 0xffff_ffff_ffff).unwrap_or(NONE);
            }
        }
    }
    Ok(Some(Facts {
        links: Links {
            parent,
            base: if base_ref == 0 {
                NONE
            } else {
                u32::try_from(base_ref & 0xffff_ffff_ffff).unwrap_or(NONE)
            },
        },
        runs,
    }))
}

/// The allocated runs of a record read again, in use or not (errors: nothing to add).
fn runs_of(raw: &mut [u8], r: u64, clusters: u64) -> Result<Vec<(u64, u64)>, NtfsError> {
    record::apply_fixups(raw, r)?;
    let mut runs = Vec::new();
    for a in record::attributes(raw, r)?.iter().filter(|a| a.non_resident) {
        let nr = a.non_resident(raw, r)?;
        for run in record::decode_runs(&raw[nr.mapping_pairs..a.offset + a.length], nr.lowest_vcn, clusters, r)? {
            if let Some(lcn) = run.lcn {
                runs.push((lcn, run.count));
            }
        }
    }
    Ok(runs)
}

/// Which clusters some record in use owns: one bit per cluster.
struct Ownership {
    bits: Vec<u64>,
    clusters: u64,
}

impl Ownership {
    fn new(clusters: u64) -> Self {
        Self {
            bits: vec![0; clusters.div_ceil(64) as usize],
            clusters,
        }
    }

    fn mark(&mut self, lcn: u64, n: u64) {
        let end = lcn.saturating_add(n).min(self.clusters);
        let mut c = lcn;
        while c < end {
            if c.is_multiple_of(64) && end - c >= 64 {
                self.bits[(c / 64) as usize] = u64::MAX;
                c += 64;
            } else {
                self.bits[(c / 64) as usize] |= 1 << (c % 64);
                c += 1;
            }
        }
    }

    /// Adds the chunks of clusters [s, e) that no record owns.
    fn unowned_in(&self, s: u64, e: u64, cs: u64, chunk_size: u64, set: &mut BitSet) {
        let mut c = s;
        while c < e {
            if c.is_multiple_of(64) && e - c >= 64 && self.bits[(c / 64) as usize] == u64::MAX {
                c += 64;
                continue;
            }
            if !self.owned(c) {
                set.insert_bytes(c * cs, (c + 1) * cs, chunk_size);
            }
            c += 1;
        }
    }

    fn owned(&self, c: u64) -> bool {
        self.bits[(c / 64) as usize] & (1 << (c % 64)) != 0
    }

    /// Adds every chunk with a cluster that `$Bitmap` says is allocated and no record owns.
    fn mark_unowned(&self, vol: &NtfsVolume<'_>, chunk_size: u64, set: &mut BitSet) -> Result<(), NtfsError> {
        let mut map = vol.plain_allocation_map()?;
        let cs = u64::from(vol.facts().cluster_size);
        let mut runs = Vec::new();
        let step = 1 << 24;
        for c0 in (0..self.clusters).step_by(step) {
            runs.clear();
            map.runs(c0, (c0 + step as u64).min(self.clusters), &mut runs)?;
            for &(s, n) in &runs {
                self.unowned_in(s, s + n, cs, chunk_size, set);
            }
        }
        Ok(())
    }
}
