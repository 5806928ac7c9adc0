//! The rest of a bootable disk: a C: alone does not boot. Besides the root volume, a bundle
//! keeps the partition table and the small system partitions that hold the boot loader and
//! its configuration (EFI system, Microsoft reserved, Windows recovery, an MBR disk's active
//! System Reserved partition; each at most 2 GiB). The instance stores (every other partition)
//! are left out. These pieces form a second data stream, `P.disk.image.zst`, in the same format
//! as the volume's (frames, seek table, part digests); `restore --disk` puts them back around
//! C: at their offsets, removes the left-out partitions from the table (fixing the GPT CRCs),
//! and can end the disk with a fixed-VHD footer.

use super::writer::StreamWriter;
use crate::Error;
use crate::chunk::frame::ChunkCompressor;
use crate::chunk::pipeline::{ChunkFrame, FrameBytes, FrameSink};
use crate::crypt::FrameCipher;
use crate::format::Keys;
use crate::format::disk::{DiskInfo, DiskRegion, KeptPartition};
use crate::format::index::{chunk_hash, frame_hash};
use crate::format::manifest::{DataInfo, Layout, ObjectInfo};
use crate::progress::NoProgress;
use crate::source::DiskFile;
use crate::source::layout::{DiskLayout, FileSystem, PartitionInfo};
use crate::source::partition::{PartitionType, TableKind};
use crate::store::{CopySource, ObjectStore, ObjectWriter, PartInfo, StoreError};

/// The largest partition kept as a system partition.
pub const MAX_SYSTEM_PARTITION: u64 = 2 << 30;
/// The most of the disk's head (before the first partition) kept: the MBR, the GPT, boot code.
const MAX_HEAD: u64 = 16 << 20;
/// The most of the disk's tail (after the last partition) kept: the backup GPT.
const MAX_TAIL: u64 = 16 << 20;

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
    cipher: Option<&FrameCipher>,
    mut each: impl FnMut(u64, &[u8], [u8; 32]) -> Result<(), Error>,
) -> Result<(Vec<DiskRegion>, u64, String), Error> {
    let mut plain = vec![0u8; chunk_size];
    let mut regions = Vec::new();
    // Encrypted: keyed, so that the digest in the clear tests no guess of the plaintext.
    let mut digest = cipher.map_or_else(blake3::Hasher::new, FrameCipher::digest_hasher);
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
    /// Seals the frames (an encrypted bundle).
    pub cipher: Option<&'a FrameCipher>,
}

/// Writes the disk stream of `dp` from `disk` under `P.disk`: each region read in chunks,
/// compressed and stored as a data stream of its own.
fn compress_stream(s: &StreamSettings<'_>, disk: &DiskFile, dp: &DiskPlan) -> Result<DiskInfo, Error> {
    let (store, prefix, layout, part_size, chunk_size, level) =
        (s.store, s.prefix, s.layout, s.part_size, s.chunk_size, s.level);
    let keys = Keys::new(&format!("{prefix}.disk"));
    let mut w = StreamWriter::new(store, keys, layout, part_size, &NoProgress).sealed(s.cipher.is_some());
    let result = (|| {
        let mut comp = ChunkCompressor::new(level).map_err(|e| Error::Compress(e.to_string()))?;
        let (mut frame, mut sealed) = (Vec::new(), Vec::new());
        read_chunks(disk, dp, chunk_size, s.cipher, |index, plain, hash| {
            comp.compress(plain, &mut frame)
                .map_err(|e| Error::Compress(e.to_string()))?;
            let stored = match s.cipher {
                Some(c) => {
                    c.seal(&frame, &mut sealed);
                    &sealed
                }
                None => &frame,
            };
            w.frame(ChunkFrame {
                index,
                bytes: FrameBytes::New(stored),
                raw_len: chunk_size as u32,
                zero: false,
                hash,
                frame_hash: frame_hash(stored),
                alloc: None,
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
        let (regions, chunks, digest) = read_chunks(disk, dp, s.chunk_size, s.cipher, |_, _, _| Ok(()))?;
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
    let receipt = super::writer::finish_object(w, &key)?;
    for (n, sum) in receipt.copied {
        if let Some(s) = sums.get_mut(n as usize) {
            *s = Some(sum);
        }
    }
    for (n, (sum, want)) in sums.iter().zip(&from.parts_sha256).enumerate() {
        if sum.map(hex::encode).as_deref() != Some(want.as_str()) {
            let _ = store.delete(&key);
            return Err(crate::format::FormatError::Integrity {
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
