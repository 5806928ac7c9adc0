//! The disk around C: as a bundle records it (format version 3): the regions of the source disk
//! kept in the disk stream (partition table, system partitions), the partitions a restored disk
//! has, and where each chunk of the disk stream goes back. Written by [`crate::bundle::disk`],
//! read back by [`crate::read::disk`].

use serde::{Deserialize, Serialize};

use super::stream::DataInfo;
use crate::source::partition::TableKind;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Layout;

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
