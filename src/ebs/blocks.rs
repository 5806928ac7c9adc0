//! Which 512 KiB blocks of the restored disk a snapshot needs.
//!
//! A full snapshot: every block with a non-zero byte (EBS reads unwritten blocks as zeros).
//! An incremental one on the parent bundle's snapshot: the blocks that any chunk which differs
//! between the two bundles touches (the chunk indexes' plaintext hashes for C:, the disk
//! stream's digest for the partition table and system partitions), and the blocks of the
//! partition tables; every other block is the parent's, inherited through `ParentSnapshotId`.

use std::fs::File;

use super::{BLOCK_SIZE, EbsError};
use crate::read::OpenedBundle;

/// Blocks of a disk of `disk_size` bytes (the last one padded with zeros).
pub fn block_count(disk_size: u64) -> u64 {
    disk_size.div_ceil(BLOCK_SIZE)
}

/// Reads block `i` of the disk image `f` of `disk_size` bytes into `buf` (BLOCK_SIZE bytes),
/// zero-padding the last one. Returns true when the block is all zeros.
pub fn read_block(f: &File, disk_size: u64, i: u64, buf: &mut [u8]) -> std::io::Result<bool> {
    let at = i * BLOCK_SIZE;
    let n = (disk_size.saturating_sub(at)).min(BLOCK_SIZE) as usize;
    crate::source::disk::read_exact_at(f, &mut buf[..n], at)?;
    buf[n..].fill(0);
    Ok(buf.iter().all(|&b| b == 0))
}

/// Marks the blocks that bytes `[start, start + len)` touch.
fn mark(set: &mut [bool], start: u64, len: u64) {
    if len == 0 {
        return;
    }
    let first = start / BLOCK_SIZE;
    let last = (start + len - 1) / BLOCK_SIZE;
    for b in first..=last.min(set.len() as u64 - 1) {
        set[b as usize] = true;
    }
}

fn refuse(why: String) -> EbsError {
    EbsError::Refused(why)
}

/// For an incremental snapshot of `child` on the snapshot of `parent`: per block of the disk,
/// whether it must be sent. Refuses bundles whose disks are not laid out alike.
pub fn changed_blocks(child: &OpenedBundle<'_>, parent: &OpenedBundle<'_>) -> Result<Vec<bool>, EbsError> {
    let (c, p) = (&child.manifest, &parent.manifest);
    let (Some(cd), Some(pd)) = (&c.disk, &p.disk) else {
        return Err(refuse(
            "an incremental snapshot needs both bundles to keep the whole disk (format 3)".into(),
        ));
    };
    let same_layout = cd.disk_size == pd.disk_size
        && cd.regions == pd.regions
        && cd.kept_partitions == pd.kept_partitions
        && cd.dropped_partitions == pd.dropped_partitions
        && c.source.root.offset == p.source.root.offset
        && c.volume_size == p.volume_size
        && c.chunk_size == p.chunk_size;
    if !same_layout {
        return Err(refuse(format!(
            "bundle {} and its parent {} do not lay out the disk alike (disk size, partitions or chunk size differ): only a full snapshot can describe it",
            c.bundle_id, p.bundle_id
        )));
    }
    let (Some(ci), Some(pi)) = (&child.index, &parent.index) else {
        return Err(refuse(format!(
            "bundle {} or its parent {} has no chunk index (made by an earlier winbundle): the chunks that changed are not known",
            c.bundle_id, p.bundle_id
        )));
    };
    let mut set = vec![false; block_count(cd.disk_size) as usize];
    let root = c.source.root.offset;
    let cs = c.chunk_size;
    for (i, e) in ci.entries.iter().enumerate() {
        let i = i as u64;
        if pi.entries.get(i as usize).is_none_or(|pe| pe.hash != e.hash) {
            let len = cs.min(c.volume_size.saturating_sub(i * cs));
            mark(&mut set, root + i * cs, len);
        }
    }
    let disk_same = cd.plain_blake3.is_some() && cd.plain_blake3 == pd.plain_blake3;
    if !disk_same {
        for r in &cd.regions {
            mark(&mut set, r.offset, r.length);
        }
    }
    // The partition tables, which `restore --disk` patches: the first block, and the last MiB
    // (the backup GPT).
    mark(&mut set, 0, 1);
    let tail = (1u64 << 20).min(cd.disk_size);
    mark(&mut set, cd.disk_size - tail, tail);
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marking_covers_every_block_a_range_touches() {
        let mut s = vec![false; 4];
        mark(&mut s, BLOCK_SIZE - 1, 2);
        assert_eq!(s, [true, true, false, false]);
        mark(&mut s, 3 * BLOCK_SIZE, 10 * BLOCK_SIZE);
        assert_eq!(s, [true, true, false, true]);
        assert_eq!(block_count(BLOCK_SIZE + 1), 2);
    }
}
