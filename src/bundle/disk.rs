//! The rest of a bootable disk: a C: alone does not boot. Besides the root volume, a bundle
//! keeps the partition table and the small system partitions that hold the boot loader and
//! its configuration (EFI system, Microsoft reserved, Windows recovery, an MBR disk's active
//! System Reserved partition; each at most 2 GiB). The instance stores (every other partition)
//! are left out. These pieces form a second data stream, `P.disk.image.zst`, in the same format
//! as the volume's (frames, seek table, part digests); `restore --disk` puts them back around
//! C: at their offsets, removes the left-out partitions from the table (fixing the GPT CRCs),
//! and can end the disk with a fixed-VHD footer.

use std::fs::File;

use serde::{Deserialize, Serialize};

use super::Keys;
use super::index::{chunk_hash, frame_hash};
use super::manifest::{DataInfo, Layout, ObjectInfo};
use super::output::ChunkSink;
use super::writer::StreamWriter;
use crate::Error;
use crate::chunk::frame::ChunkCompressor;
use crate::chunk::pipeline::{ChunkFrame, FrameBytes, FrameSink};
use crate::progress::NoProgress;
use crate::source::layout::{DiskLayout, FileSystem, PartitionInfo};
use crate::source::partition::{PartitionType, TableKind};
use crate::source::{DiskFile, disk::read_exact_at, disk::write_all_at};
use crate::store::{CopySource, ObjectStore, ObjectWriter, PartInfo, StoreError};

/// The largest partition kept as a system partition.
pub const MAX_SYSTEM_PARTITION: u64 = 2 << 30;
/// The most of the disk's head (before the first partition) kept: the MBR, the GPT, boot code.
const MAX_HEAD: u64 = 16 << 20;
/// The most of the disk's tail (after the last partition) kept: the backup GPT.
const MAX_TAIL: u64 = 16 << 20;
/// The largest disk a VHD can describe.
const MAX_VHD: u64 = 2040 << 30;

/// A stretch of the source disk kept in the disk stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRegion {
    pub what: String,
    /// Where it is on the disk, and how long.
    pub offset: u64,
    pub length: u64,
    /// Where it starts in the disk stream's plaintext (a multiple of the chunk size; the rest
    /// of its last chunk is zeros).
    pub stream_offset: u64,
}

/// A partition the restored disk has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptPartition {
    pub index: u32,
    pub offset: u64,
    pub length: u64,
    pub type_id: String,
    /// `root volume (C:)`, `EFI system`, `Microsoft reserved`, `Windows recovery`,
    /// `System Reserved (active)`.
    pub role: String,
}

/// What the manifest records of the disk around C: (format version 3).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskInfo {
    pub disk_size: u64,
    pub sector_size: u32,
    pub partition_table: TableKind,
    pub regions: Vec<DiskRegion>,
    pub kept_partitions: Vec<KeptPartition>,
    /// Partitions left out (instance stores): their entries are removed from the table.
    pub dropped_partitions: Vec<u32>,
    /// The disk stream: its plaintext length (whole chunks), chunks, objects and digests.
    pub stream_plain_size: u64,
    pub chunk_count: u64,
    pub data: DataInfo,
    pub bundle_sha256: String,
    /// BLAKE3 (hex) over the BLAKE3 of each chunk's plaintext, in order: what an incremental
    /// bundle compares to reuse this stream whole. Absent in bundles made before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain_blake3: Option<String>,
}

/// What a bundle of this disk will keep besides C:, worked out before anything is read.
#[derive(Debug, Clone)]
pub struct DiskPlan {
    /// (what, offset, length), in disk order.
    pub regions: Vec<(String, u64, u64)>,
    pub kept: Vec<KeptPartition>,
    pub dropped: Vec<u32>,
    pub table: TableKind,
    pub disk_size: u64,
    pub sector_size: u32,
}

/// The system role of a partition that is not C:, if it has one.
pub fn system_role(p: &PartitionInfo) -> Option<&'static str> {
    match &p.partition.ptype {
        PartitionType::Gpt(_) => match p.partition.ptype.name() {
            r @ ("EFI system" | "Microsoft reserved" | "Windows recovery") => Some(r),
            _ => None,
        },
        PartitionType::Mbr(0xef) => Some("EFI system"),
        PartitionType::Mbr(0x27) => Some("Windows recovery"),
        PartitionType::Mbr(_) if p.partition.bootable && p.partition.index <= 4 && p.fs == FileSystem::Ntfs => {
            Some("System Reserved (active)")
        }
        _ => None,
    }
}

/// What to keep of `layout` besides C:; an error says why a disk cannot be kept (a bare volume,
/// a C: inside an MBR extended partition).
pub fn plan(layout: &DiskLayout) -> Result<DiskPlan, String> {
    let table = layout.table.kind;
    if table == TableKind::None {
        return Err("the source is a bare volume: there is no partition table to keep".into());
    }
    let root = layout.root();
    if table == TableKind::Mbr && root.partition.index > 4 {
        return Err(format!(
            "C: is logical partition {} inside an extended partition: only a disk whose kept partitions are primary can be rebuilt",
            root.partition.index
        ));
    }
    let mut parts: Vec<&PartitionInfo> = layout.partitions.iter().collect();
    parts.sort_by_key(|p| p.partition.offset);
    let first = parts.first().map_or(0, |p| p.partition.offset);
    let last_end = parts
        .iter()
        .map(|p| p.partition.offset + p.partition.length)
        .max()
        .unwrap_or(0);
    let mut regions = vec![("partition table and boot area".to_string(), 0, first.min(MAX_HEAD))];
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for p in parts {
        let q = &p.partition;
        let keep = |role: &str| KeptPartition {
            index: q.index,
            offset: q.offset,
            length: q.length,
            type_id: q.ptype.id(),
            role: role.to_string(),
        };
        if q.index == root.partition.index {
            kept.push(keep("root volume (C:)"));
            continue;
        }
        match system_role(p) {
            Some(role) if q.length <= MAX_SYSTEM_PARTITION && (table == TableKind::Gpt || q.index <= 4) => {
                regions.push((format!("partition {} ({role})", q.index), q.offset, q.length));
                kept.push(keep(role));
            }
            _ => dropped.push(q.index),
        }
    }
    if table == TableKind::Gpt && layout.disk_size > last_end {
        let start = last_end.max(layout.disk_size.saturating_sub(MAX_TAIL));
        regions.push(("backup GPT".into(), start, layout.disk_size - start));
    }
    regions.retain(|r| r.2 > 0);
    Ok(DiskPlan {
        regions,
        kept,
        dropped,
        table,
        disk_size: layout.disk_size,
        sector_size: layout.table.sector_size,
    })
}

/// Reads the regions of `dp` from `disk` chunk by chunk (each region padded with zeros to whole
/// chunks) and hands each chunk's index, plaintext and BLAKE3 to `each`. Returns the regions as
/// the disk stream holds them, the chunk count and the plaintext digest (`plain_blake3`).
fn read_chunks(
    disk: &DiskFile,
    dp: &DiskPlan,
    chunk_size: usize,
    mut each: impl FnMut(u64, &[u8], [u8; 32]) -> Result<(), Error>,
) -> Result<(Vec<DiskRegion>, u64, String), Error> {
    let mut plain = vec![0u8; chunk_size];
    let mut regions = Vec::new();
    let mut digest = blake3::Hasher::new();
    let mut index = 0u64;
    let cs = chunk_size as u64;
    for (what, offset, length) in &dp.regions {
        regions.push(DiskRegion {
            what: what.clone(),
            offset: *offset,
            length: *length,
            stream_offset: index * cs,
        });
        let mut at = 0u64;
        while at < *length {
            let n = (length - at).min(cs) as usize;
            plain.fill(0);
            disk.read_exact_at(&mut plain[..n], offset + at)?;
            let hash = chunk_hash(&plain);
            digest.update(&hash);
            each(index, &plain, hash)?;
            index += 1;
            at += n as u64;
        }
    }
    Ok((regions, index, digest.finalize().to_hex().to_string()))
}

/// Where and how a disk stream is stored.
pub struct StreamSettings<'a> {
    pub store: &'a dyn ObjectStore,
    /// The bundle's prefix (the stream goes under `P.disk`).
    pub prefix: &'a str,
    pub layout: Layout,
    pub part_size: u64,
    pub chunk_size: usize,
    pub level: i32,
}

/// Writes the disk stream of `dp` from `disk` under `P.disk`: each region read in chunks,
/// compressed and stored as a data stream of its own.
fn compress_stream(s: &StreamSettings<'_>, disk: &DiskFile, dp: &DiskPlan) -> Result<DiskInfo, Error> {
    let (store, prefix, layout, part_size, chunk_size, level) =
        (s.store, s.prefix, s.layout, s.part_size, s.chunk_size, s.level);
    let keys = Keys::new(&format!("{prefix}.disk"));
    let mut w = StreamWriter::new(store, keys, layout, part_size, &NoProgress);
    let result = (|| {
        let mut comp = ChunkCompressor::new(level).map_err(|e| Error::Compress(e.to_string()))?;
        let mut frame = Vec::new();
        read_chunks(disk, dp, chunk_size, |index, plain, hash| {
            comp.compress(plain, &mut frame)
                .map_err(|e| Error::Compress(e.to_string()))?;
            w.frame(ChunkFrame {
                index,
                bytes: FrameBytes::New(&frame),
                raw_len: chunk_size as u32,
                zero: false,
                hash,
                frame_hash: frame_hash(&frame),
            })
        })
    })();
    let (regions, chunks, plain_blake3) = match result {
        Ok(r) => r,
        Err(e) => {
            w.abort();
            return Err(e);
        }
    };
    let plain_size = chunks * chunk_size as u64;
    let fin = w.finish(chunk_size as u64, plain_size)?;
    Ok(DiskInfo {
        disk_size: dp.disk_size,
        sector_size: dp.sector_size,
        partition_table: dp.table,
        regions,
        kept_partitions: dp.kept.clone(),
        dropped_partitions: dp.dropped.clone(),
        stream_plain_size: plain_size,
        chunk_count: chunks,
        data: fin.data,
        bundle_sha256: fin.bundle_sha256,
        plain_blake3: Some(plain_blake3),
    })
}

/// Writes the disk stream of `dp` from `disk`. For an incremental bundle (`parent`: the parent's
/// disk description), when the parent's disk stream holds the same plaintext (the same regions,
/// the same bytes: its `plain_blake3`) and the same table facts, its objects are copied (on the
/// server where the store can, else read and written here) and nothing is compressed or sent;
/// otherwise the stream is compressed and written as in a full bundle. Returns the description
/// and whether it was copied. Frames are the same either way: the parent was compressed by the
/// same zstd at the same level with the same chunk size (checked when the parent was chosen).
pub fn write_stream(
    s: &StreamSettings<'_>,
    disk: &DiskFile,
    dp: &DiskPlan,
    parent: Option<&DiskInfo>,
) -> Result<(DiskInfo, bool), Error> {
    if let Some(from) = parent.filter(|p| {
        p.plain_blake3.is_some()
            && p.disk_size == dp.disk_size
            && p.sector_size == dp.sector_size
            && p.partition_table == dp.table
            && p.kept_partitions == dp.kept
            && p.dropped_partitions == dp.dropped
    }) {
        let (regions, chunks, digest) = read_chunks(disk, dp, s.chunk_size, |_, _, _| Ok(()))?;
        if from.regions == regions && from.chunk_count == chunks && from.plain_blake3.as_deref() == Some(&*digest) {
            let data = copy_stream(s.store, s.prefix, &from.data)?;
            return Ok((DiskInfo { data, ..from.clone() }, true));
        }
    }
    compress_stream(s, disk, dp).map(|d| (d, false))
}

/// Copies a parent's disk stream objects under `P.disk`, part for part, so that every part
/// keeps its SHA-256; each part's digest (the server's for a copy, computed here otherwise) is
/// checked against the one the parent's manifest records.
fn copy_stream(store: &dyn ObjectStore, prefix: &str, from: &DataInfo) -> Result<DataInfo, Error> {
    let keys = Keys::new(&format!("{prefix}.disk"));
    let mut objects: Vec<ObjectInfo> = Vec::new();
    let mut copies = store.copies_parts();
    for (i, o) in from.objects.iter().enumerate() {
        match copy_object(
            store,
            o,
            keys.object(from.layout, i as u32),
            from.part_size,
            &mut copies,
        ) {
            Ok(info) => objects.push(info),
            Err(e) => {
                for done in &objects {
                    let _ = store.delete(&done.key);
                }
                return Err(e);
            }
        }
    }
    Ok(DataInfo {
        objects,
        ..from.clone()
    })
}

/// Bytes read per request when a part is copied through this machine.
const COPY_PIECE: u64 = 8 << 20;

/// One object of [`copy_stream`]. `copies`: the store copies parts on the server (turned off
/// when the server refuses the first copy).
fn copy_object(
    store: &dyn ObjectStore,
    from: &ObjectInfo,
    key: String,
    part_size: u64,
    copies: &mut bool,
) -> Result<ObjectInfo, Error> {
    let lengths = from.part_lengths(part_size);
    let mut w = store.writer(&key)?;
    let mut sums = match fill_object(&mut *w, store, from, &lengths, copies) {
        Ok(s) => s,
        Err(e) => {
            w.abort();
            return Err(e);
        }
    };
    let receipt = w.finish()?;
    for (n, sum) in receipt.copied {
        if let Some(s) = sums.get_mut(n as usize) {
            *s = Some(sum);
        }
    }
    for (n, (sum, want)) in sums.iter().zip(&from.parts_sha256).enumerate() {
        if sum.map(hex::encode).as_deref() != Some(want.as_str()) {
            let _ = store.delete(&key);
            return Err(super::FormatError::Integrity {
                what: format!(
                    "the parent's disk stream object {} has a part {n} that is not the bytes its manifest names (SHA-256 {want}): check the parent with `winbundle verify`, or bundle without --parent",
                    from.key
                ),
            }
            .into());
        }
    }
    Ok(ObjectInfo {
        key,
        size: from.size,
        parts_sha256: from.parts_sha256.clone(),
        etag: receipt.etag,
        parts_etag: receipt.part_etags,
        part_sizes: from.part_sizes.clone(),
    })
}

/// Stores `from`'s parts into `w`: copied on the server while `copies`, else read and written.
/// Returns the SHA-256 of each part written here (copied parts' come with the receipt).
fn fill_object(
    w: &mut dyn ObjectWriter,
    store: &dyn ObjectStore,
    from: &ObjectInfo,
    lengths: &[u64],
    copies: &mut bool,
) -> Result<Vec<Option<[u8; 32]>>, Error> {
    use sha2::{Digest, Sha256};
    let mut sums = vec![None; lengths.len()];
    let mut offset = 0u64;
    let mut buf = Vec::new();
    for (n, &len) in lengths.iter().enumerate() {
        if *copies {
            let source = CopySource {
                key: from.key.clone(),
                offset,
                len,
                etag: from.etag.clone(),
            };
            match w.copy_part(n as u32, &source) {
                Ok(()) => {
                    offset += len;
                    continue;
                }
                Err(StoreError::CopyRefused { code, message, .. }) => {
                    tracing::warn!(
                        "UploadPartCopy refused ({code}: {message}): the disk stream is read and sent instead"
                    );
                    *copies = false;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut hasher = Sha256::new();
        let mut at = 0u64;
        while at < len {
            let k = (len - at).min(COPY_PIECE) as usize;
            buf.resize(k, 0);
            store.read_at(&from.key, offset + at, &mut buf)?;
            hasher.update(&buf);
            w.write(&buf)?;
            at += k as u64;
        }
        let sha256: [u8; 32] = hasher.finalize().into();
        w.end_part(&PartInfo {
            number: n as u32,
            size: len,
            sha256,
        })?;
        sums[n] = Some(sha256);
        offset += len;
    }
    Ok(sums)
}

/// Where chunk `i` of the disk stream goes on the disk: (bytes of it to write, disk offset);
/// None for a chunk past every region.
pub fn place(d: &DiskInfo, chunk_size: u64, i: u64) -> Option<(usize, u64)> {
    let at = i * chunk_size;
    let r = d.regions.iter().rev().find(|r| r.stream_offset <= at)?;
    let within = at - r.stream_offset;
    if within >= r.length {
        return None;
    }
    Some(((r.length - within).min(chunk_size) as usize, r.offset + within))
}

fn damaged(what: String) -> Error {
    super::FormatError::Manifest {
        key: "disk".into(),
        problem: what,
    }
    .into()
}

fn io(context: &str, e: std::io::Error) -> Error {
    Error::Io {
        context: context.to_string(),
        source: e,
    }
}

/// Removes the dropped partitions from the table written in `f` (a disk of `d.disk_size`
/// bytes): MBR entries (and an extended partition left with none of the kept ones), or GPT
/// entries with both headers' CRCs recomputed.
pub fn patch_table(f: &File, d: &DiskInfo) -> Result<(), Error> {
    let ss = u64::from(d.sector_size);
    let kept = |start: u64, len: u64| d.kept_partitions.iter().any(|p| p.offset == start && p.length == len);
    match d.partition_table {
        TableKind::Mbr => {
            let mut mbr = [0u8; 512];
            read_exact_at(f, &mut mbr, 0).map_err(|e| io("read the restored MBR", e))?;
            for e in 0..4 {
                let at = 446 + 16 * e;
                let ty = mbr[at + 4];
                let start = u64::from(u32::from_le_bytes([
                    mbr[at + 8],
                    mbr[at + 9],
                    mbr[at + 10],
                    mbr[at + 11],
                ])) * ss;
                let len = u64::from(u32::from_le_bytes([
                    mbr[at + 12],
                    mbr[at + 13],
                    mbr[at + 14],
                    mbr[at + 15],
                ])) * ss;
                let keep = match ty {
                    0 => true,
                    0x05 | 0x0f | 0x85 => d
                        .kept_partitions
                        .iter()
                        .any(|p| p.offset >= start && p.offset + p.length <= start + len),
                    _ => kept(start, len),
                };
                if !keep {
                    mbr[at..at + 16].fill(0);
                }
            }
            write_all_at(f, &mbr, 0).map_err(|e| io("write the restored MBR", e))
        }
        TableKind::Gpt => {
            let last_lba = d.disk_size / ss - 1;
            for header_lba in [1, last_lba] {
                let mut h = vec![0u8; ss as usize];
                read_exact_at(f, &mut h, header_lba * ss).map_err(|e| io("read the restored GPT", e))?;
                if &h[..8] != b"EFI PART" {
                    return Err(damaged(format!("no GPT header at LBA {header_lba} of the kept table")));
                }
                let size = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) as usize;
                let entries_lba = u64::from_le_bytes(h[72..80].try_into().unwrap_or_default());
                let count = u32::from_le_bytes([h[80], h[81], h[82], h[83]]) as usize;
                let esize = u32::from_le_bytes([h[84], h[85], h[86], h[87]]) as usize;
                if !(92..=h.len()).contains(&size) || esize < 128 || count.saturating_mul(esize) > 1 << 20 {
                    return Err(damaged(format!("the GPT header at LBA {header_lba} is malformed")));
                }
                let mut entries = vec![0u8; count * esize];
                read_exact_at(f, &mut entries, entries_lba * ss).map_err(|e| io("read the restored GPT entries", e))?;
                for e in entries.chunks_mut(esize) {
                    if e[..16].iter().all(|&b| b == 0) {
                        continue;
                    }
                    let first = u64::from_le_bytes(e[32..40].try_into().unwrap_or_default());
                    let last = u64::from_le_bytes(e[40..48].try_into().unwrap_or_default());
                    if !kept(first * ss, (last + 1).saturating_sub(first) * ss) {
                        e.fill(0);
                    }
                }
                h[88..92].copy_from_slice(&crc32fast::hash(&entries).to_le_bytes());
                h[16..20].fill(0);
                let crc = crc32fast::hash(&h[..size]);
                h[16..20].copy_from_slice(&crc.to_le_bytes());
                write_all_at(f, &entries, entries_lba * ss).map_err(|e| io("write the restored GPT entries", e))?;
                write_all_at(f, &h, header_lba * ss).map_err(|e| io("write the restored GPT", e))?;
            }
            Ok(())
        }
        TableKind::None => Ok(()),
    }
}

/// The 512-byte footer that makes a raw disk of `size` bytes a fixed VHD. The creator is
/// recorded as Hyper-V's (`win `), so readers take the size from the footer rather than from
/// the CHS geometry (which cannot express every size).
pub fn vhd_footer(size: u64, unique_id: [u8; 16], seconds_since_2000: u32) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // format version 1.0
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset: none (fixed disk)
    f[24..28].copy_from_slice(&seconds_since_2000.to_be_bytes());
    f[28..32].copy_from_slice(b"win ");
    f[32..36].copy_from_slice(&0x0006_0001u32.to_be_bytes()); // creator version
    f[36..40].copy_from_slice(b"Wi2k"); // creator host OS: Windows
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    let (c, h, s) = chs(size);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&2u32.to_be_bytes()); // disk type: fixed
    f[68..84].copy_from_slice(&unique_id);
    let sum: u32 = f.iter().map(|&b| u32::from(b)).sum();
    f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    f
}

/// The VHD specification's CHS geometry for a disk of `size` bytes.
fn chs(size: u64) -> (u16, u8, u8) {
    let mut total = size / 512;
    total = total.min(65535 * 16 * 255);
    let (spt, heads, cth);
    if total >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = total / spt;
    } else {
        let mut s = 17;
        let mut c = total / s;
        let mut h = c.div_ceil(1024).max(4);
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    ((cth / heads).min(65535) as u16, heads as u8, spt as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vhd_footer_checks_out() {
        let f = vhd_footer(96 << 20, [7; 16], 12345);
        assert_eq!(&f[..8], b"conectix");
        let mut copy = f;
        copy[64..68].fill(0);
        let sum: u32 = copy.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(u32::from_be_bytes(f[64..68].try_into().unwrap()), !sum);
        assert_eq!(u64::from_be_bytes(f[48..56].try_into().unwrap()), 96 << 20);
        // 96 MiB: 196608 sectors → 17 sectors a track, 12 heads, 963 cylinders (the spec's table).
        assert_eq!(chs(96 << 20), (963, 12, 17));
    }

    #[test]
    fn chunks_map_back_to_their_regions() {
        let d = DiskInfo {
            disk_size: 100 << 20,
            sector_size: 512,
            partition_table: TableKind::Gpt,
            regions: vec![
                DiskRegion {
                    what: "head".into(),
                    offset: 0,
                    length: 1 << 20,
                    stream_offset: 0,
                },
                DiskRegion {
                    what: "efi".into(),
                    offset: 1 << 20,
                    length: 9 << 20,
                    stream_offset: 4 << 20,
                },
            ],
            kept_partitions: vec![],
            dropped_partitions: vec![],
            stream_plain_size: 16 << 20,
            chunk_count: 4,
            data: DataInfo {
                layout: Layout::Single,
                part_size: 1,
                stream_size: 0,
                seek_table_offset: 0,
                seek_table_size: 0,
                objects: vec![],
            },
            bundle_sha256: String::new(),
            plain_blake3: None,
        };
        let cs = 4 << 20;
        assert_eq!(place(&d, cs, 0), Some((1 << 20, 0)));
        assert_eq!(place(&d, cs, 1), Some((4 << 20, 1 << 20)));
        assert_eq!(place(&d, cs, 2), Some((4 << 20, 5 << 20)));
        assert_eq!(place(&d, cs, 3), Some((1 << 20, 9 << 20)));
    }
}

/// The format of a restored disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// The raw disk, byte for byte.
    Raw,
    /// The raw disk followed by a fixed-VHD footer (Hyper-V, EC2 VM import, qemu's `vpc`).
    Vhd,
}

/// What `restore --disk` did.
#[derive(Debug, Clone)]
pub struct DiskRestore {
    pub disk: DiskInfo,
    /// Bytes of the file or device written (the footer included).
    pub size: u64,
    pub written_bytes: u64,
}

/// Rebuilds the disk of bundle `b` at `out` (a file, written as `OUT.partial` and renamed once
/// everything checked out, or a block device): its partition table without the left-out
/// partitions, the system partitions, and C:, each at its original offset.
#[allow(clippy::too_many_arguments)]
pub fn restore(
    b: &super::read::OpenedBundle<'_>,
    out: &std::path::Path,
    format: DiskFormat,
    force: bool,
    direct: bool,
    threads: usize,
    progress: &dyn crate::progress::Progress,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<DiskRestore, Error> {
    let refuse = |message: String| Error::InvalidParameter {
        parameter: "--disk",
        message,
    };
    let (Some(d), Some(ds)) = (b.manifest.disk.clone(), b.disk_stream()?) else {
        return Err(refuse(format!(
            "bundle {} keeps only C: (it was made from a bare volume, with --volume-only, or by an earlier winbundle: before format 3, or an incremental bundle before they kept the disk): restore the volume without --disk, or bundle the disk again",
            b.manifest.bundle_id
        )));
    };
    if format == DiskFormat::Vhd && d.disk_size > MAX_VHD {
        return Err(Error::InvalidParameter {
            parameter: "--format",
            message: format!(
                "a VHD holds at most 2040 GiB and this disk is {} bytes: restore it raw, then convert it (`qemu-img convert -f raw -O vhdx disk.img disk.vhdx`)",
                d.disk_size
            ),
        });
    }
    let size = d.disk_size + if format == DiskFormat::Vhd { 512 } else { 0 };
    let meta = std::fs::metadata(out).ok();
    if meta.as_ref().is_some_and(|m| m.is_dir()) {
        return Err(refuse(format!("{} is a directory", out.display())));
    }
    let device = meta.as_ref().is_some_and(|m| !m.is_file());
    if meta.is_some() && !device && !force {
        return Err(Error::InvalidParameter {
            parameter: "--output",
            message: format!("{} exists: pass --force to replace it", out.display()),
        });
    }
    let target = if device {
        out.to_path_buf()
    } else {
        let mut s = out.as_os_str().to_os_string();
        s.push(".partial");
        std::path::PathBuf::from(s)
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(!device)
        .truncate(!device)
        .open(&target)
        .map_err(|e| io(&format!("open {}", target.display()), e))?;
    let result = (|| {
        if device {
            let have = std::io::Seek::seek(&mut &f, std::io::SeekFrom::End(0))
                .map_err(|e| io(&format!("size {}", target.display()), e))?;
            if have < size {
                return Err(Error::InvalidParameter {
                    parameter: "--output",
                    message: format!("{} holds {have} bytes, the disk needs {size}", out.display()),
                });
            }
        } else {
            f.set_len(size)
                .map_err(|e| io(&format!("size {}", target.display()), e))?;
        }
        progress.start(b.manifest.data.stream_size + ds.manifest.data.stream_size);
        let cs = b.manifest.chunk_size;
        let root = b.manifest.source.root.offset;
        // A new file reads back zeros where nothing is written; a device may hold old data.
        let sink = ChunkSink::new(&f, &target, !device, direct);
        let mut written = 0;
        written += b
            .restore_placed(&sink, &|i, n| Some((n, root + i * cs)), threads, progress, cancel)?
            .written_bytes;
        written += ds
            .restore_placed(&sink, &|i, _| place(&d, cs, i), threads, progress, cancel)?
            .written_bytes;
        patch_table(&f, &d)?;
        if format == DiskFormat::Vhd {
            let mut id = [0u8; 16];
            let _ = getrandom::fill(&mut id);
            let since_2000 = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |t| t.as_secs().saturating_sub(946_684_800) as u32);
            write_all_at(&f, &vhd_footer(d.disk_size, id, since_2000), d.disk_size)
                .map_err(|e| io(&format!("write {}", target.display()), e))?;
        }
        f.sync_all().map_err(|e| io(&format!("sync {}", target.display()), e))?;
        if !device {
            std::fs::rename(&target, out)
                .map_err(|e| io(&format!("rename {} to {}", target.display(), out.display()), e))?;
        }
        progress.finish();
        Ok(written)
    })();
    match result {
        Ok(written_bytes) => Ok(DiskRestore {
            disk: d,
            size,
            written_bytes,
        }),
        Err(e) => {
            if !device {
                let _ = std::fs::remove_file(&target);
            }
            Err(e)
        }
    }
}
