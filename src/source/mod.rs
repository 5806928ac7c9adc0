//! Where the bytes come from: the disk or volume image ([`disk`]), its partition table
//! ([`partition`]) and the choice of the Windows root volume among its partitions ([`layout`]).
//! Nothing here knows about NTFS internals beyond "does this partition start with an NTFS boot
//! sector"; that lives in [`crate::ntfs`].

pub mod device;
pub mod disk;
#[cfg(debug_assertions)]
pub mod fake_snapshot;
mod fileio;
pub mod filesystem;
pub mod layout;
pub mod live;
pub mod partition;
pub mod snapshot;
#[cfg(windows)]
pub mod windows;

use std::path::PathBuf;

pub use disk::DiskFile;
pub use layout::{DiskLayout, FileSystem, PartitionInfo, RootChoice};
pub use partition::{Partition, PartitionTable, TableKind};

/// Errors reading the source disk and its partition table.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{path} is a directory: give a disk image file, a volume image or a block device")]
    IsDirectory { path: PathBuf },
    #[error("cannot read {path} at byte {offset}: {source}")]
    Read {
        path: PathBuf,
        offset: u64,
        source: std::io::Error,
    },
    #[error(
        "cannot read {path} at byte {offset} (partition {partition}, byte {volume_offset} of the root volume): {source}"
    )]
    ReadVolume {
        path: PathBuf,
        offset: u64,
        partition: u32,
        volume_offset: u64,
        source: std::io::Error,
    },
    #[error("{path} is truncated: reading {len} bytes at byte {offset} goes past its end ({size} bytes)")]
    PastEnd {
        path: PathBuf,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("bad partition table: {0}")]
    Table(String),
    #[error(
        "partition {index} ends at byte {end} but the image is only {size} bytes long: the image is truncated or the partition table is damaged"
    )]
    PartitionPastEnd { index: u32, end: u64, size: u64 },
    #[error("no Windows root volume found on {path}: {reason}")]
    NoRootVolume {
        path: PathBuf,
        reason: String,
        /// A BitLocker volume is among what was found.
        bitlocker: bool,
    },
    /// An NTFS boot sector was found, but the volume's structures cannot be read.
    #[error("partition {index} of {path} looks like NTFS but cannot be read: {problem}")]
    DamagedVolume { path: PathBuf, index: u32, problem: String },
    #[error("cannot tell which volume is C: on {path}: {candidates}; choose one with --partition N")]
    AmbiguousRoot { path: PathBuf, candidates: String },
    #[error("--partition {index}: {reason}")]
    BadPartitionChoice { index: u32, reason: String },
    #[error("{source_name}: {message}")]
    Live { source_name: String, message: String },
    #[error(
        "{source_name}: reading a live volume or disk needs an elevated prompt (Administrator): run from an elevated prompt (Administrator){detail}"
    )]
    NotElevated { source_name: String, detail: String },
    #[error("cannot make a shadow copy of {volume}: {source}")]
    Snapshot {
        volume: String,
        source: snapshot::SnapshotError,
        hint: &'static str,
    },
}
