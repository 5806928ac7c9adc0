//! How a bundle is read back: [`opened`] opens one (its manifest, seek table and chunk index,
//! each checked and bounded before it is trusted) and streams it through parallel decompression
//! to `verify` or `restore` it; [`output`] writes restored chunks to files and devices; [`disk`]
//! rebuilds the whole disk around C: (`restore --disk`); [`view`] reads any byte range of the
//! volume, for `ls`, `extract` and `cat`.
//!
//! Nothing here writes a bundle: this folder imports the format ([`crate::format`]), the stores
//! and the frame code, never the write path ([`crate::bundle`]).

pub mod disk;
pub mod disk_source;
pub mod frames;
pub mod image;
pub mod image_out;
pub mod opened;
pub mod output;
pub mod vhdx;
pub mod view;
pub mod vmdk;

pub use opened::{OpenedBundle, ReadStats, RestoreTarget, memory_bound};
