//! `P.manifest.json`: everything needed to check and restore a bundle, and nothing per chunk
//! (per-chunk sizes and checksums live in the seek table at the end of the data stream), so it
//! stays small: about 70 bytes per part, well under 1 MiB for a 2 TiB volume.

use serde::{Deserialize, Serialize};

pub use super::stream::{DataInfo, Layout, ObjectInfo};
use super::{FormatError, Keys};
use crate::ntfs::{Exclusion, NtfsFacts};
use crate::source::TableKind;

pub const FORMAT_NAME: &str = "winbundle";
/// The version a bundle is written with: 1, or 2 when its parts vary in size (an incremental
/// bundle whose parts the server copied). Readers take both.
pub const FORMAT_VERSION: u32 = 1;
pub const FORMAT_VERSION_PART_SIZES: u32 = 2;
/// Version 3: the disk around C: (partition table, system partitions) kept as `disk`.
pub const FORMAT_VERSION_DISK: u32 = 3;
/// Version 4: an encrypted bundle (`encryption`): every stored frame and the chunk index are
/// sealed under a data key wrapped for the bundle's recipients. Readers of versions 1 to 3
/// refuse it by its version; it may describe the disk around C: and list part sizes.
pub const FORMAT_VERSION_ENCRYPTED: u32 = 4;

/// The largest manifest a reader reads (its size is checked before it is read). A manifest
/// takes about 70 bytes per part, and a stream at most 10,000 parts per object: far below.
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;
/// Chunk sizes the writer makes (`--chunk-size`): a multiple of 4 KiB from 64 KiB to 1 GiB.
/// The reader accepts these and nothing else.
pub const MIN_CHUNK_SIZE: u64 = 64 << 10;
pub const MAX_CHUNK_SIZE: u64 = 1 << 30;
/// The most chunks a bundle has (the writer refuses a volume that needs more: a larger
/// `--chunk-size` makes fewer). 256 TiB at the default 4 MiB; it bounds the seek table
/// (12 bytes a chunk, 768 MiB) and the chunk index (112 bytes a chunk) before either is read.
pub const MAX_CHUNKS: u64 = 1 << 26;
/// Bytes of the seek table of `chunks` chunks: skippable-frame header, 12 bytes per entry,
/// footer (what [`crate::chunk::frame::encode_seek_table`] writes).
pub fn seek_table_size(chunks: u64) -> Option<u64> {
    chunks
        .checked_mul(12)?
        .checked_add(8 + crate::chunk::frame::FOOTER_LEN as u64)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub tool_version: String,
    pub bundle_id: String,
    pub instance_id: String,
    pub start_time: String,
    pub end_time: String,
    pub source: SourceInfo,
    /// Bytes of the restored image: the whole root partition.
    pub volume_size: u64,
    pub chunk_size: u64,
    pub chunk_count: u64,
    pub compression: Compression,
    pub data: DataInfo,
    /// SHA-256 over the 32-byte SHA-256 digests of every part, in stream order (hex).
    pub bundle_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentInfo>,
    /// The partition table and system partitions around C: (format version 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<super::disk::DiskInfo>,
    pub stats: Stats,
    pub excluded_partitions: Vec<ExcludedPartition>,
    pub excluded_files: Vec<Exclusion>,
    /// A live volume read from a Volume Shadow Copy: how its writers fared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotInfo>,
    /// How the bundle is encrypted (format version 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionInfo>,
    /// The Windows on the volume, from its registry: its name, EC2 readiness, page files.
    /// Absent when the volume holds no Windows; readers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<crate::guest::WindowsFacts>,
}

/// An encrypted bundle's scheme and wrapped data key (docs/bundle-format.md, "Encrypted
/// bundles").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EncryptionInfo {
    /// [`ENCRYPTION_SCHEME`]: what seals the frames and wraps the key.
    pub scheme: String,
    /// The data key, as an age file (`P.key.age`).
    pub key_object: KeyObject,
    /// 16 hex digits naming the data key (HKDF of it): equal along a chain that shares one.
    pub key_id: String,
}

/// The stored age file that holds a bundle's data key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyObject {
    pub key: String,
    pub size: u64,
    /// SHA-256 (hex) of the object.
    pub sha256: String,
}

/// The one encryption scheme: the data key wrapped by age (X25519 or SSH recipients), each
/// frame sealed by AES-256-GCM with a synthetic nonce, under keys derived from it by
/// HKDF-SHA256.
pub const ENCRYPTION_SCHEME: &str = "age-wrapped-key+aes-256-gcm-synthetic-nonce-v1";
/// The largest key object a reader reads: an age header of a few hundred bytes per recipient.
pub const MAX_KEY_OBJECT_BYTES: u64 = 1 << 20;

/// The snapshot a live volume was read from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub writers: Vec<crate::source::snapshot::WriterStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceInfo {
    pub path: String,
    pub disk_size: u64,
    pub partition_table: TableKind,
    pub sector_size: u32,
    pub disk_id: Option<String>,
    pub root: RootInfo,
    pub ntfs: NtfsFacts,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootInfo {
    pub index: u32,
    pub offset: u64,
    pub length: u64,
    pub type_id: String,
    pub type_name: String,
    pub name: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Compression {
    pub algorithm: String,
    pub level: i32,
    /// Each frame carries zstd's content checksum (low 32 bits of XXH64), repeated in the seek table.
    pub frame_checksum: String,
    pub zero_chunks: u64,
    /// The zstd library version that made the frames (`1.5.7`): frames of the same version,
    /// level and chunk size are byte-identical for the same plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zstd_version: Option<String>,
}

/// The chunk index object (absent in bundles made before it existed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexInfo {
    pub key: String,
    pub size: u64,
    /// SHA-256 (hex) of the index object.
    pub sha256: String,
    /// The plaintext hash per chunk: `blake3`.
    pub chunk_hash: String,
}

/// The bundle an incremental bundle reused frames of (for information: the bundle does not
/// need it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParentInfo {
    pub prefix: String,
    pub bundle_id: String,
    /// Chunks whose frames were taken from the parent instead of compressed again.
    pub reused_chunks: u64,
    pub reused_bytes: u64,
    /// Parts the server copied from the parent's object, and their bytes (S3).
    #[serde(default)]
    pub copied_parts: u32,
    #[serde(default)]
    pub copied_bytes: u64,
    /// How the changed chunks were found: `metadata` (only the chunks the volume's metadata
    /// says changed were read) or `rehash` (every chunk read and hashed). Absent in bundles
    /// made before 2026-12-05, which all read every chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_detection: Option<String>,
    /// Chunks taken from the parent without being read (`metadata`).
    #[serde(default)]
    pub unread_chunks: u64,
    /// MFT records that changed since the parent.
    #[serde(default)]
    pub changed_records: u64,
    /// Chunks the metadata called unchanged whose data differed (`rehash`), and the first.
    #[serde(default)]
    pub metadata_disagreements: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_disagreement: Option<u64>,
    /// `metadata` bundles in a row up to this one, since the last that read everything
    /// (`--rehash-every` counts them).
    #[serde(default)]
    pub since_rehash: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    /// Bytes of allocated clusters in the volume (per $Bitmap).
    pub allocated_bytes: u64,
    /// Bytes read from the source (allocated, minus exclusions, plus the boot-sector tail).
    pub data_bytes: u64,
    /// Allocated bytes left out by file exclusions.
    pub excluded_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExcludedPartition {
    pub index: u32,
    pub offset: u64,
    pub length: u64,
    pub type_id: String,
    pub type_name: String,
    pub file_system: String,
    pub label: Option<String>,
    pub reason: String,
}

impl Manifest {
    /// Parses and checks a manifest read from `key`.
    pub fn parse(key: &str, bytes: &[u8]) -> Result<Self, FormatError> {
        let bad = |problem: String| FormatError::Manifest {
            key: key.to_string(),
            problem,
        };
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(format!("not a valid manifest: {e}")))?;
        if m.format != FORMAT_NAME {
            return Err(bad(format!("format is {:?}, not {FORMAT_NAME:?}", m.format)));
        }
        if !(FORMAT_VERSION..=FORMAT_VERSION_ENCRYPTED).contains(&m.format_version) {
            return Err(bad(format!(
                "format version {} is not supported by this winbundle (it reads versions {FORMAT_VERSION} to {FORMAT_VERSION_ENCRYPTED}); use a matching winbundle release",
                m.format_version
            )));
        }
        check_encryption(&m, &bad)?;
        let encrypted = m.format_version == FORMAT_VERSION_ENCRYPTED;
        if !encrypted && m.disk.is_some() != (m.format_version == FORMAT_VERSION_DISK) {
            return Err(bad(format!(
                "format version {} {} the disk around C:",
                m.format_version,
                if m.disk.is_some() {
                    "does not describe"
                } else {
                    "must describe"
                }
            )));
        }
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&m.chunk_size) || !m.chunk_size.is_multiple_of(4096) {
            return Err(bad(format!(
                "chunk size {} is not one winbundle makes (a multiple of 4 KiB from 64 KiB to 1 GiB)",
                m.chunk_size
            )));
        }
        if m.chunk_count != m.volume_size.div_ceil(m.chunk_size) || m.chunk_count == 0 {
            return Err(bad(format!(
                "{} chunks of {} bytes do not make a volume of {} bytes",
                m.chunk_count, m.chunk_size, m.volume_size
            )));
        }
        check_chunks(m.chunk_count, &m.data, "", &bad)?;
        check_data(&m.data, m.format_version, &bad)?;
        if let Some(disk) = &m.disk {
            check_data(&disk.data, m.format_version, &bad)?;
            if disk.chunk_count.checked_mul(m.chunk_size) != Some(disk.stream_plain_size) {
                return Err(bad("the disk stream is not whole chunks".into()));
            }
            check_chunks(disk.chunk_count, &disk.data, "disk ", &bad)?;
        }
        if let Some(i) = &m.index
            && (i.sha256.len() != 64 || hex::decode(&i.sha256).is_err() || i.chunk_hash != "blake3")
        {
            return Err(bad(format!(
                "index {} has a malformed SHA-256 or an unknown chunk hash {:?}",
                i.key, i.chunk_hash
            )));
        }
        Ok(m)
    }

    /// Checks that every key the manifest names is one the `Keys` rules derive from the
    /// bundle's prefix: the data objects (`P.image.zst`, `P.part.N`, `P.image.NNNNNN.zst`, in
    /// order), the chunk index (`P.index.zst`) and the disk stream's objects (under `P.disk`).
    /// A manifest that names any other key (`../../etc/passwd`, `/etc/shadow`, another bundle's
    /// object) is refused before anything is read.
    pub fn check_keys(&self, keys: &Keys) -> Result<(), FormatError> {
        let bad = |problem: String| FormatError::Manifest {
            key: keys.manifest(),
            problem,
        };
        check_object_keys(&self.data, keys, "", &bad)?;
        if let Some(disk) = &self.disk {
            check_object_keys(&disk.data, &keys.disk(), "disk stream ", &bad)?;
        }
        if let Some(k) = &self.encryption
            && k.key_object.key != keys.data_key()
        {
            return Err(bad(format!(
                "it names the key object {:?}, which is not this bundle's ({:?}): a manifest names only its own bundle's objects",
                k.key_object.key,
                keys.data_key()
            )));
        }
        if let Some(i) = &self.index
            && i.key != keys.index()
        {
            return Err(bad(format!(
                "it names the chunk index {:?}, which is not this bundle's ({:?}): a manifest names only its own bundle's objects",
                i.key,
                keys.index()
            )));
        }
        Ok(())
    }
}

/// Version 4 and `encryption` go together; the scheme is the one this winbundle knows, and an
/// encrypted bundle has a chunk index (sealed, like its frames).
fn check_encryption(m: &Manifest, bad: &dyn Fn(String) -> FormatError) -> Result<(), FormatError> {
    let encrypted = m.format_version == FORMAT_VERSION_ENCRYPTED;
    let Some(e) = &m.encryption else {
        return match encrypted {
            true => Err(bad("format version 4 (encrypted) but no `encryption` section".into())),
            false => Ok(()),
        };
    };
    if !encrypted {
        return Err(bad(format!(
            "format version {} does not have encryption, but the manifest has an `encryption` section",
            m.format_version
        )));
    }
    if e.scheme != ENCRYPTION_SCHEME {
        return Err(bad(format!(
            "encryption scheme {:?} is not one this winbundle reads ({ENCRYPTION_SCHEME:?}); use a matching winbundle release",
            e.scheme
        )));
    }
    let k = &e.key_object;
    if k.sha256.len() != 64 || hex::decode(&k.sha256).is_err() || k.size == 0 || k.size > MAX_KEY_OBJECT_BYTES {
        return Err(bad(format!(
            "key object {} has a malformed SHA-256 or an impossible size ({} bytes)",
            k.key, k.size
        )));
    }
    if e.key_id.len() != 16 || hex::decode(&e.key_id).is_err() {
        return Err(bad(format!("key id {:?} is not 16 hex digits", e.key_id)));
    }
    if m.index.is_none() {
        return Err(bad("an encrypted bundle must name its chunk index".into()));
    }
    Ok(())
}

/// The objects of a data stream have the keys its layout gives under `keys`, in order.
fn check_object_keys(
    d: &DataInfo,
    keys: &Keys,
    what: &str,
    bad: &dyn Fn(String) -> FormatError,
) -> Result<(), FormatError> {
    if d.layout == Layout::Single && d.objects.len() != 1 {
        return Err(bad(format!(
            "the {what}layout single has {} objects instead of one",
            d.objects.len()
        )));
    }
    for (n, o) in d.objects.iter().enumerate() {
        let want = u32::try_from(n).map(|n| keys.object(d.layout, n));
        if want.as_ref().ok() != Some(&o.key) {
            return Err(bad(format!(
                "its {what}object {n} has the key {:?}, not {:?}: a manifest names only its own bundle's objects",
                o.key,
                want.unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// The chunk count is within [`MAX_CHUNKS`] and the seek table has the size its entries need.
fn check_chunks(chunks: u64, d: &DataInfo, what: &str, bad: &dyn Fn(String) -> FormatError) -> Result<(), FormatError> {
    if chunks > MAX_CHUNKS {
        return Err(bad(format!(
            "the {what}stream has {chunks} chunks, more than the {MAX_CHUNKS} winbundle makes"
        )));
    }
    if seek_table_size(chunks) != Some(d.seek_table_size) {
        return Err(bad(format!(
            "the {what}seek table is {} bytes, but {chunks} chunks need {}",
            d.seek_table_size,
            seek_table_size(chunks).unwrap_or(u64::MAX)
        )));
    }
    Ok(())
}

/// Checks one data stream's description: sizes add up, one digest per part, the seek table
/// ends the stream.
fn check_data(d: &DataInfo, version: u32, bad: &dyn Fn(String) -> FormatError) -> Result<(), FormatError> {
    if d.part_size == 0 {
        return Err(bad("part size is 0".into()));
    }
    let total = d.objects.iter().try_fold(0u64, |a, o| a.checked_add(o.size));
    if total != Some(d.stream_size) {
        return Err(bad(format!(
            "objects add up to {} bytes, the stream is {}",
            total.map_or("more than 2^64".to_string(), |t| t.to_string()),
            d.stream_size
        )));
    }
    for o in &d.objects {
        if let Some(sizes) = &o.part_sizes {
            if version < FORMAT_VERSION_PART_SIZES {
                return Err(bad(format!(
                    "object {} lists part sizes, which format version {} does not have",
                    o.key, version
                )));
            }
            let sum = sizes.iter().try_fold(0u64, |a, &s| a.checked_add(s));
            if sizes.len() != o.parts_sha256.len() || sum != Some(o.size) || sizes.contains(&0) {
                return Err(bad(format!(
                    "object {} lists {} part sizes adding up to {:?} for {} part digests and {} bytes",
                    o.key,
                    sizes.len(),
                    sum,
                    o.parts_sha256.len(),
                    o.size
                )));
            }
        } else if o.parts_sha256.len() as u64 != o.size.div_ceil(d.part_size).max(1) {
            return Err(bad(format!(
                "object {} lists {} part digests for {} bytes",
                o.key,
                o.parts_sha256.len(),
                o.size
            )));
        }
        if o.parts_sha256.iter().any(|h| h.len() != 64 || hex::decode(h).is_err()) {
            return Err(bad(format!("object {} has a malformed SHA-256", o.key)));
        }
    }
    if d.seek_table_offset.checked_add(d.seek_table_size) != Some(d.stream_size) {
        return Err(bad("the seek table does not end the stream".into()));
    }
    Ok(())
}
