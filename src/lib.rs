//! winbundle: images the Windows root volume (C:) of a disk into a bundle of compressed, hashed
//! zstd frames plus a manifest, stored under a bucket and prefix, like EC2's BundleInstance.
//!
//! The data flows through the modules in this order:
//! [`source`] (disk, partitions, which one is C:) → [`ntfs`] (allocation map, exclusions) →
//! [`guest`] (the Windows on it, from its registry: name, EC2 readiness, what it leaves out) →
//! [`chunk`] (read allocated clusters, compress, in parallel) → [`bundle`] (the write path:
//! plan, stream writer, parts, manifest) → [`store`] (where the objects go); [`read`] reads a
//! bundle back (verify, restore, ranged reads for ls/extract/cat). [`format`] defines what both
//! directions write and trust (manifest, keys, chunk index, disk description). [`task`] renders the EC2 bundle-task
//! shapes and runs bundles as tasks; [`api`] serves the EC2 Query API over them (`winbundle
//! serve`); the `winbundle` binary's CLI sits on top of all of it.

pub mod api;
pub mod bundle;
pub mod chunk;
pub mod crypt;
pub mod ebs;
pub mod error;
pub mod format;
pub mod guest;
pub mod ntfs;
pub mod panics;
pub mod progress;
pub mod read;
pub mod signing;
pub mod source;
pub mod store;
pub mod task;
pub mod units;

pub use error::Error;
