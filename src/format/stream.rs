//! A data stream as the manifest records it: how it is stored (the layout), its size and where
//! its seek table sits, and each object with the SHA-256 of each part. The volume's stream and
//! the disk stream are both described this way.

use serde::{Deserialize, Serialize};

/// How the data stream is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// One object `P.image.zst` (an S3 multipart upload; parts are its upload parts).
    Single,
    /// One object per part, `P.part.0`, `P.part.1`, ... (what upload-policy POSTs write).
    Parts,
    /// Objects `P.image.000000.zst`, `P.image.000001.zst`, ...: one while nothing is copied;
    /// an incremental bundle on S3 starts a new object where a copied run of its parent's
    /// frames meets a short upload part, so no part is padded with bytes sent again.
    Runs,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataInfo {
    pub layout: Layout,
    pub part_size: u64,
    /// Total bytes of the data stream (all objects).
    pub stream_size: u64,
    /// Where the seek-table skippable frame sits in the stream.
    pub seek_table_offset: u64,
    pub seek_table_size: u64,
    pub objects: Vec<ObjectInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// SHA-256 (hex) of each `part_size` piece of the object, in order.
    pub parts_sha256: Vec<String>,
    /// ETag the store returned, where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// ETag of each part of a multipart upload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts_etag: Vec<String>,
    /// Each part's size, when they are not all `part_size` (the last may be shorter): parts an
    /// incremental bundle had the server copy are sized by the runs they copy (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_sizes: Option<Vec<u64>>,
}

impl ObjectInfo {
    /// The size of each part, in order.
    pub fn part_lengths(&self, part_size: u64) -> Vec<u64> {
        match &self.part_sizes {
            Some(sizes) => sizes.clone(),
            None => (0..self.parts_sha256.len() as u64)
                .map(|n| (self.size.saturating_sub(n.saturating_mul(part_size))).min(part_size))
                .collect(),
        }
    }
}
