//! The bundle: what is written (the format, specified in docs/bundle-format.md), how a volume
//! becomes one ([`create`]), and how one becomes a volume again ([`read`]: restore, verify).
//!
//! Format in one paragraph: the volume is cut into chunks; each chunk is one zstd frame; the
//! frames, then a zstd seek table, form the data stream; the stream is cut into parts of
//! `part_size` bytes, each with a SHA-256; the parts are stored as one object `P.image.zst` or
//! as objects `P.part.N`; `P.manifest.json` is written last.

pub mod create;
pub mod disk;
mod fetch;
pub mod index;
pub mod keys;
pub mod manifest;
pub mod output;
pub mod parent;
pub mod plan;
pub mod read;
pub mod view;
pub mod writer;

pub use keys::Keys;
pub use manifest::{Layout, Manifest};

/// Errors in a bundle's format or integrity.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("manifest {key}: {problem}")]
    Manifest { key: String, problem: String },
    #[error("seek table: {0}")]
    SeekTable(String),
    #[error("chunk index: {0}")]
    Index(String),
    #[error("integrity check failed: {what}")]
    Integrity { what: String },
}
