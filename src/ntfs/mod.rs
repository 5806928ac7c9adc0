//! The NTFS root volume: its boot-sector facts, the `$MFT` layout (including an `$MFT` whose
//! `$DATA` is split across an `$ATTRIBUTE_LIST`, which the `ntfs` crate 0.4 cannot follow),
//! the allocation bitmap, and the files whose contents a bundle leaves out.
//!
//! Every structure is parsed here, bounds-checked against the record, the node and the volume:
//! file records, attributes and data runs ([`record`], [`mft`]), directory indexes ([`index`]),
//! `$Bitmap` ([`bitmap`]). Of the `ntfs` crate only the boot-sector parser is used; it and every
//! other entry point run inside [`guard::contain`], which turns an escaped panic into
//! [`NtfsError::Panic`] naming the record, structure and offset. No walk can loop forever: index
//! blocks are visited once each, attribute lists and extents are checked for order.

pub mod bitmap;
pub mod catalog;
pub mod changes;
pub mod content;
pub mod exclude;
pub mod guard;
pub mod index;
pub mod lzx;
pub mod mft;
pub mod record;
pub mod reparse;
pub mod security;
pub mod utf16;
pub mod volume;
pub mod wof;

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
    #[error("MFT record {record}, {structure} at byte {offset}: {problem}")]
    Structure {
        record: u64,
        structure: &'static str,
        offset: u64,
        problem: String,
    },
    #[error(
        "MFT record {record}, {structure} at byte {offset}: the volume is damaged in a way the reader does not check ({message})"
    )]
    Panic {
        record: u64,
        structure: &'static str,
        offset: u64,
        message: String,
    },
    #[error("the $MFT is damaged: {0}")]
    Mft(String),
    #[error("$Bitmap covers {bits} clusters but the volume has {clusters}: the bitmap is shorter than the volume")]
    BitmapTooShort { bits: u64, clusters: u64 },
    #[error("reading NTFS metadata: {0}")]
    Crate(String),
    #[error("{path}: {problem}")]
    Path { path: String, problem: String },
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
}
