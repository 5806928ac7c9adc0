//! How a volume becomes a bundle (the write path): [`plan`] works out what to read, [`create`]
//! runs a bundle as a sequence of steps, [`writer`] cuts the frames the chunk pipeline makes into
//! parts and objects, [`parent`] and `fetch` reuse an earlier bundle's frames for an incremental
//! one, and [`disk`] writes the disk around C: as a stream of its own.
//!
//! What is written is defined in [`crate::format`]; how it is read back is [`crate::read`].

pub mod create;
pub mod detect;
pub mod disk;
pub mod encrypt;
mod fetch;
pub mod parent;
pub mod plan;
pub mod writer;
