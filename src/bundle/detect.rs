//! Change detection for a bundle: which chunks an incremental bundle must read, told from the
//! volume's metadata ([`crate::ntfs::changes`]) against what its parent's index recorded, and
//! the record digests every bundle keeps for the next one.
//!
//! Two modes, recorded in the manifest (`parent.change_detection`):
//! * `metadata` (the default with a parent): chunks the metadata calls unchanged are not read;
//!   their frames are the parent's.
//! * `rehash` (`--rehash`, every N-th bundle of a chain with `--rehash-every N`, or a parent
//!   whose index has no record digests): every chunk is read and hashed, as a full bundle, and
//!   each chunk where metadata and data disagree is counted and reported.

use crate::Error;
use crate::format::index::{ChunkIndex, RecordDigests};
use crate::ntfs::changes::{self, BitSet};
use crate::ntfs::{NtfsFacts, NtfsVolume};
use crate::source::{DiskFile, DiskLayout};

/// How the user asked to detect changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RehashOptions {
    /// `--rehash`: read and hash every chunk.
    pub always: bool,
    /// `--rehash-every N`: every N-th bundle of a chain is a rehash (N ≥ 1).
    pub every: Option<u32>,
}

/// How this bundle found what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Read only the chunks the metadata says may have changed.
    Metadata,
    /// Read and hash every chunk (and report where the metadata disagrees).
    Rehash,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Metadata => "metadata",
            Mode::Rehash => "rehash",
        }
    }
}

/// The chunks an incremental bundle takes from its parent on the metadata's word.
#[derive(Debug, Clone)]
pub struct ChangePlan {
    /// Chunks the metadata says must be read.
    pub read: BitSet,
    /// False with `--rehash`: unchanged chunks are read anyway, and disagreements counted.
    pub skip_unchanged: bool,
}

/// What the scan gave: the new index's record digests, and with a parent the change plan.
#[derive(Debug, Clone)]
pub struct Detection {
    pub mode: Mode,
    /// Why a bundle with a parent reads everything (for the note), when it does.
    pub why_rehash: Option<String>,
    /// For the new bundle's index (`None`: the scan failed; the index is then version 2).
    pub records: Option<RecordDigests>,
    pub plan: Option<ChangePlan>,
    /// Records that changed since the parent, and bytes of `$MFT` the scan read.
    pub changed_records: u64,
    pub mft_bytes: u64,
    /// Metadata bundles in a row up to this one (0 for a full or rehash bundle).
    pub since_rehash: u32,
}

/// Works out how to read the root volume of `disk` (as `layout` and `facts` describe it).
/// `parent` is the parent's index and its `since_rehash` count, when the bundle has a usable
/// parent.
pub fn detect(
    disk: &DiskFile,
    layout: &DiskLayout,
    facts: &NtfsFacts,
    parent: Option<(&ChunkIndex, u32)>,
    chunk_size: u64,
    opts: RehashOptions,
) -> Result<Detection, Error> {
    let root = &layout.root().partition;
    let vol = NtfsVolume::open(disk, root.offset, root.length).map_err(Error::ntfs_at(root.offset))?;
    let serial = u64::from_str_radix(&facts.serial64, 16).unwrap_or_default();
    let usable = parent.map(|(index, since)| (comparable(index, serial, facts), since));
    let why_rehash = match &usable {
        None => None,
        Some((Err(why), _)) => Some(why.clone()),
        Some((Ok(_), _)) if opts.always => Some("--rehash: every chunk is read and hashed".into()),
        Some((Ok(_), since)) => opts
            .every
            .filter(|n| since.saturating_add(1) >= *n)
            .map(|n| format!("--rehash-every {n}: {since} bundles in a row took chunks on the metadata's word, so this one reads and hashes every chunk")),
    };
    let compare = usable.and_then(|(u, _)| u.ok());
    let mode = if compare.is_some() && why_rehash.is_none() {
        Mode::Metadata
    } else {
        Mode::Rehash
    };
    let scan = match changes::scan(&vol, compare.map(|r| &r.digests[..]), chunk_size) {
        Ok(s) => s,
        Err(e) if parent.is_some() => {
            // The metadata cannot be trusted to tell: read everything, as a full bundle does.
            return Ok(rehash_all(Some(format!(
                "the volume's metadata cannot say what changed ({e}): every chunk is read and hashed"
            ))));
        }
        Err(e) => {
            tracing::warn!(
                "no record digests for this bundle's index ({e}): a later bundle built on it reads every chunk"
            );
            return Ok(rehash_all(None));
        }
    };
    let plan_read = scan.read.map(|mut read| {
        // The tail past the last cluster (the backup boot sector) has no record: always read.
        let fs_end = facts.cluster_count * u64::from(facts.cluster_size);
        read.insert_bytes(fs_end, facts.fs_size + u64::from(facts.sector_size), chunk_size);
        ChangePlan {
            read,
            skip_unchanged: mode == Mode::Metadata,
        }
    });
    Ok(Detection {
        mode,
        why_rehash,
        records: Some(RecordDigests {
            serial,
            record_size: facts.mft_record_size,
            digests: scan.digests,
        }),
        plan: plan_read,
        changed_records: scan.changed_records,
        mft_bytes: scan.mft_bytes,
        since_rehash: match (mode, parent) {
            (Mode::Metadata, Some((_, since))) => since.saturating_add(1),
            _ => 0,
        },
    })
}

/// A detection that reads every chunk and keeps no record digests.
fn rehash_all(why: Option<String>) -> Detection {
    Detection {
        mode: Mode::Rehash,
        why_rehash: why,
        records: None,
        plan: None,
        changed_records: 0,
        mft_bytes: 0,
        since_rehash: 0,
    }
}

/// The parent's record digests, when they describe this volume in a way the scan can compare;
/// else why not.
fn comparable<'i>(index: &'i ChunkIndex, serial: u64, facts: &NtfsFacts) -> Result<&'i RecordDigests, String> {
    let Some(records) = index.records.as_ref() else {
        return Err(
            "the parent's index has no record digests (it was made by an earlier winbundle): every chunk is read and hashed, and the next bundle can build on this one without reading everything".into(),
        );
    };
    if records.serial != serial {
        return Err(format!(
            "the parent is of another NTFS volume (serial {:016X}, this one is {serial:016X}): every chunk is read and hashed",
            records.serial
        ));
    }
    if records.record_size != facts.mft_record_size {
        return Err(format!(
            "the parent's MFT records are {} bytes, this volume's {}: every chunk is read and hashed",
            records.record_size, facts.mft_record_size
        ));
    }
    if index.entries.iter().any(|e| e.alloc.is_none()) {
        return Err("the parent's index has no allocation digests: every chunk is read and hashed".into());
    }
    Ok(records)
}

/// What the parent's index says of chunk `index` with allocation digest `alloc`, under `plan`:
/// its plaintext hash and length when the metadata says nothing in it changed.
pub fn unchanged(plan: &ChangePlan, parent: &ChunkIndex, index: u64, alloc: u64) -> Option<([u8; 32], u32)> {
    if plan.read.contains(index) {
        return None;
    }
    let e = parent.entries.get(usize::try_from(index).ok()?)?;
    (e.alloc == Some(alloc)).then_some((e.hash, e.raw_len))
}
