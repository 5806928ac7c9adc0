//! The parent of an incremental bundle: an earlier complete bundle whose frames this one reuses
//! for chunks whose plaintext did not change. Chosen by prefix (`--parent`) or as the newest
//! bundle of the same instance next to the new one (`--incremental`); opened and checked like
//! any bundle (manifest, seek table, chunk index with its digest) before anything is reused.

use std::collections::HashMap;

use crate::Error;
use crate::chunk::{Reuse, ReusedFrame};
use crate::format::Keys;
use crate::format::index::ChunkIndex;
use crate::read::opened::OpenedBundle;
use crate::store::ObjectStore;

/// Which bundle an incremental bundle builds on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParentChoice {
    /// The bundle under this prefix.
    Prefix(String),
    /// The newest complete bundle of the same instance beside the new one (same folder).
    Newest,
}

/// An opened parent: the bundle, and its frames by plaintext hash.
pub struct Parent<'s> {
    pub prefix: String,
    pub bundle: OpenedBundle<'s>,
    frames: HashMap<([u8; 32], u32), ReusedFrame>,
    /// Frames are read through this machine (a local store), not copied on the server.
    reads_frames: bool,
    /// Which chunks the volume's metadata says changed since this parent (set once the volume
    /// was scanned; `None`: every chunk is read and hashed).
    pub change: Option<super::detect::ChangePlan>,
}

impl Parent<'_> {
    /// Whether every entry of the parent's index has its frame hash (index version 2), which
    /// copies on the server need: the new index carries them over for bytes it never sees.
    pub fn has_frame_hashes(&self) -> bool {
        self.bundle
            .index
            .as_ref()
            .is_some_and(|i| i.entries.iter().all(|e| e.frame_hash.is_some()))
    }

    /// The parent's data object holding stream byte `offset`, and where it starts in the
    /// stream.
    pub fn object_at(&self, offset: u64) -> (&crate::format::manifest::ObjectInfo, u64) {
        self.bundle.object_at(offset)
    }

    /// The parent's frame that starts at stream offset `offset`, if it holds a chunk of
    /// `raw_len` bytes whose plaintext hashes to `hash`: the frame that continues a run, where
    /// the same plaintext sits in several chunks (zeros, repeated blocks).
    pub fn frame_at(&self, offset: u64, hash: &[u8; 32], raw_len: u32) -> Option<ReusedFrame> {
        let index = self.bundle.index.as_ref()?;
        let i = index.entries.binary_search_by_key(&offset, |e| e.offset).ok()?;
        let e = &index.entries[i];
        (e.hash == *hash && e.raw_len == raw_len).then(|| ReusedFrame {
            offset: e.offset,
            length: e.length,
            checksum: self.bundle.seek[i].checksum,
            frame_hash: e.frame_hash,
        })
    }

    /// Reads stream bytes of the parent.
    pub fn read_stream(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.bundle.read_stream(offset, buf)
    }
}

impl Reuse for Parent<'_> {
    fn lookup(&self, hash: &[u8; 32], raw_len: u32) -> Option<ReusedFrame> {
        self.frames.get(&(*hash, raw_len)).copied()
    }

    fn reads_frames(&self) -> bool {
        self.reads_frames
    }

    fn read(&self, frame: &ReusedFrame, buf: &mut Vec<u8>) -> Result<(), Error> {
        buf.resize(frame.length as usize, 0);
        self.bundle.read_stream(frame.offset, buf)
    }

    fn unchanged(&self, index: u64, alloc: u64) -> Option<([u8; 32], u32)> {
        super::detect::unchanged(self.change.as_ref()?, self.bundle.index.as_ref()?, index, alloc)
    }

    fn skips_unchanged(&self) -> bool {
        self.change.as_ref().is_some_and(|c| c.skip_unchanged)
    }
}

fn refuse(message: String) -> Error {
    Error::InvalidParameter {
        parameter: "--parent",
        message,
    }
}

/// Finds and opens the parent. `prefix` is the new bundle's; `instance_id` its instance.
pub fn open<'s>(
    store: &'s dyn ObjectStore,
    choice: &ParentChoice,
    prefix: &str,
    instance_id: &str,
    force: bool,
    keyring: &crate::crypt::keyring::Keyring,
) -> Result<Parent<'s>, Error> {
    let parent_prefix = match choice {
        ParentChoice::Prefix(p) => p.clone(),
        ParentChoice::Newest => newest(store, prefix, instance_id)?,
    };
    if parent_prefix == prefix {
        return Err(refuse(format!(
            "{parent_prefix} is the prefix of the new bundle itself: name an earlier bundle"
        )));
    }
    let bundle = OpenedBundle::open(store, &parent_prefix, keyring).map_err(|e| {
        refuse(format!(
            "the parent bundle {parent_prefix} cannot be used: {e} (check --parent and the store, or bundle without --parent)"
        ))
    })?;
    // Encrypted, and this machine does not keep its key: the caller decides (a new chain).
    bundle.require_key(&parent_prefix)?;
    let m = &bundle.manifest;
    if m.instance_id != instance_id && !force {
        return Err(refuse(format!(
            "the parent bundle {parent_prefix} is of instance {}, this bundle is of {instance_id}: pass --force-parent to reuse its frames anyway",
            m.instance_id
        )));
    }
    let Some(index) = bundle.index.as_ref() else {
        return Err(refuse(format!(
            "the parent bundle {parent_prefix} has no chunk index (it was made by an older winbundle): bundle without --parent once, then use that bundle as the parent"
        )));
    };
    let frames = frames_by_hash(index, &bundle.seek);
    tracing::info!(
        "parent {parent_prefix} ({}, made {}): {} chunks indexed, {} distinct",
        bundle.manifest.bundle_id,
        bundle.manifest.end_time,
        index.entries.len(),
        frames.len()
    );
    Ok(Parent {
        prefix: parent_prefix,
        bundle,
        frames,
        reads_frames: store.is_local(),
        change: None,
    })
}

/// Each distinct plaintext's first frame.
fn frames_by_hash(index: &ChunkIndex, seek: &[crate::chunk::SeekEntry]) -> HashMap<([u8; 32], u32), ReusedFrame> {
    let mut frames = HashMap::with_capacity(index.entries.len());
    // The index was checked against the seek table: one entry per frame.
    for (e, s) in index.entries.iter().zip(seek) {
        frames.entry((e.hash, e.raw_len)).or_insert(ReusedFrame {
            offset: e.offset,
            length: e.length,
            checksum: s.checksum,
            frame_hash: e.frame_hash,
        });
    }
    frames
}

/// The folder of a prefix: what comes before its last `/` (with it), or "" for the bucket.
fn folder(prefix: &str) -> &str {
    prefix.rfind('/').map_or("", |i| &prefix[..=i])
}

/// The newest complete bundle of `instance_id` with a chunk index in the folder of `prefix`.
fn newest(store: &dyn ObjectStore, prefix: &str, instance_id: &str) -> Result<String, Error> {
    let dir = folder(prefix);
    let mut best: Option<(String, String)> = None; // (end time, prefix)
    for key in store.list(dir)? {
        let Some(p) = key.strip_suffix(".manifest.json") else {
            continue;
        };
        if p == prefix {
            continue;
        }
        let Ok(bytes) = crate::read::opened::get_manifest(store, &Keys::new(p).manifest()) else {
            continue;
        };
        let Ok(m) = crate::format::Manifest::parse(&key, &bytes) else {
            continue;
        };
        if m.instance_id != instance_id || m.index.is_none() {
            continue;
        }
        if best.as_ref().is_none_or(|(t, _)| m.end_time > *t) {
            best = Some((m.end_time, p.to_string()));
        }
    }
    best.map(|(_, p)| p).ok_or_else(|| {
        refuse(format!(
            "--incremental found no complete bundle of instance {instance_id} with a chunk index under {:?} in {}: make a full bundle first, or name the parent with --parent",
            dir,
            store.location()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_folder_of_a_prefix() {
        assert_eq!(folder("win/2026-11-27"), "win/");
        assert_eq!(folder("a/b/c"), "a/b/");
        assert_eq!(folder("flat"), "");
    }
}
