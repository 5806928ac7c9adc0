//! What a bundle is, as written and as trusted when read back (specified in
//! docs/bundle-format.md): the manifest, the object keys a prefix may have, the chunk index, and
//! the description of the disk around C:. Both directions import this folder — the write path
//! ([`crate::bundle`]) and the read path ([`crate::read`]) — and it imports neither.
//!
//! The format in one paragraph: the volume is cut into chunks; each chunk is one zstd frame; the
//! frames, then a zstd seek table, form the data stream; the stream is cut into parts of
//! `part_size` bytes, each with a SHA-256; the parts are stored as one object `P.image.zst`, as
//! objects `P.part.N`, or as runs `P.image.NNNNNN.zst`; `P.manifest.json` is written last.

pub mod disk;
pub mod index;
pub mod keys;
pub mod manifest;
pub mod stream;

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
