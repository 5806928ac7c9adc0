//! The NTFS root volume: its boot-sector facts, the `$MFT` layout (including an `$MFT` whose
//! `$DATA` is split across an `$ATTRIBUTE_LIST`, which the `ntfs` crate 0.4 cannot follow),
//! the allocation bitmap, and the files whose contents a bundle leaves out.
//!
//! The `ntfs` crate reads directories and names; file records, data runs and `$Bitmap` are
//! parsed here ([`record`], [`mft`]) so that every structure is bounds-checked against the
//! volume and no walk can loop forever.

pub mod bitmap;
pub mod catalog;
pub mod content;
pub mod exclude;
pub mod mft;
pub mod reader;
pub mod record;
pub mod volume;

pub use bitmap::AllocationMap;
pub use exclude::{Exclusion, ExclusionSet};
pub use volume::{NtfsFacts, NtfsVolume};

/// Errors reading NTFS structures. Each names the structure and where it is.
#[derive(Debug, thiserror::Error)]
pub enum NtfsError {
    #[error("not an NTFS volume: {0}")]
    NotNtfs(String),
    #[error("bad NTFS boot sector: {0}")]
    BootSector(String),
    #[error("MFT record {record}: {problem}")]
    Record { record: u64, problem: String },
    #[error(
        "MFT record {record}: a data run points outside the volume (clusters {lcn}..{end}, the volume has {clusters})"
    )]
    RunOutsideVolume {
        record: u64,
        lcn: u64,
        end: u64,
        clusters: u64,
    },
    #[error("the $MFT is damaged: {0}")]
    Mft(String),
    #[error("$Bitmap covers {bits} clusters but the volume has {clusters}: the bitmap is shorter than the volume")]
    BitmapTooShort { bits: u64, clusters: u64 },
    #[error("reading NTFS metadata: {0}")]
    Crate(String),
    #[error(
        "walking NTFS metadata read more than {limit} MiB: the structures probably loop (a damaged directory index or attribute list)"
    )]
    ReadBudget { limit: u64 },
    #[error("{path}: {problem}")]
    Path { path: String, problem: String },
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
}

impl From<ntfs::NtfsError> for NtfsError {
    fn from(e: ntfs::NtfsError) -> Self {
        // Errors that our reader raised (bounds, budget) travel through the crate as io errors.
        if let ntfs::NtfsError::Io(io) = &e
            && let Some(inner) = io.get_ref().and_then(|i| i.downcast_ref::<reader::ReaderError>())
        {
            return inner.clone().into();
        }
        NtfsError::Crate(e.to_string())
    }
}
