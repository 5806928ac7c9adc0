//! A local folder as an object store: object `KEY` of bucket `B` is the file `DIR/B/KEY`.
//! Data objects are written to `KEY.partial` and renamed when complete; small objects are
//! written to a temporary name and renamed, so a reader never sees half an object.
//!
//! Resume: a `KEY.partial` left by an interrupted run is picked up. The partial file is its own
//! journal: each recomputed part is compared (SHA-256) with the bytes the file holds at that
//! offset; equal parts are not written again, others are written over.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{
    CopySource, CopyStats, ObjectReceipt, ObjectStore, ObjectWriter, PartInfo, ResumeStats, StoreError, Upload, names,
};
use crate::source::disk::{read_exact_at, write_all_at};

pub struct LocalStore {
    root: PathBuf,
    resume: bool,
}

impl LocalStore {
    /// Opens bucket `bucket` under `dir`, creating the bucket folder when `create` is set.
    pub fn open(dir: &Path, bucket: &str, create: bool) -> Result<Self, StoreError> {
        names::check_bucket(bucket)?;
        let root = dir.join(bucket);
        if create {
            fs::create_dir_all(&root).map_err(|e| StoreError::Local {
                path: root.clone(),
                problem: format!("cannot create the bucket folder: {e}"),
            })?;
        } else if !root.is_dir() {
            return Err(StoreError::Local {
                path: root,
                problem: "no such bucket folder (check --local-store and --bucket)".into(),
            });
        }
        Ok(Self { root, resume: true })
    }

    /// `false`: drop a partial file left by an interrupted run instead of picking it up
    /// (`--no-resume`).
    pub fn with_resume(mut self, resume: bool) -> Self {
        self.resume = resume;
        self
    }

    /// Every file under the bucket whose key starts with `prefix`: (key, entry).
    fn files(&self, prefix: &str) -> Result<Vec<(String, fs::DirEntry)>, StoreError> {
        let mut out = Vec::new();
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Self::io("list", prefix)(e)),
            };
            for entry in entries.flatten() {
                let p = entry.path();
                if p.is_dir() {
                    dirs.push(p);
                    continue;
                }
                let Some(rel) = p.strip_prefix(&self.root).ok().and_then(|r| r.to_str()) else {
                    continue;
                };
                let rel = rel.replace('\\', "/");
                if rel.starts_with(prefix) {
                    out.push((rel, entry));
                }
            }
        }
        Ok(out)
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn io<'k>(op: &'static str, key: &'k str) -> impl FnOnce(std::io::Error) -> StoreError + 'k {
        move |source| StoreError::Io {
            op,
            key: key.to_string(),
            source,
        }
    }

    fn not_found(&self, key: &str) -> StoreError {
        StoreError::NotFound {
            key: key.to_string(),
            location: self.location(),
        }
    }

    fn parent_dirs(&self, key: &str) -> Result<(), StoreError> {
        if let Some(parent) = self.path(key).parent() {
            fs::create_dir_all(parent).map_err(Self::io("create folder for", key))?;
        }
        Ok(())
    }
}

fn partial(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".partial");
    PathBuf::from(s)
}

impl ObjectStore for LocalStore {
    fn location(&self) -> String {
        format!("local folder {}", self.root.display())
    }

    fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.path(key).is_file())
    }

    fn size(&self, key: &str) -> Result<u64, StoreError> {
        match fs::metadata(self.path(key)) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(self.not_found(key)),
            Err(e) => Err(Self::io("stat", key)(e)),
        }
    }

    fn read_at(&self, key: &str, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let f = match File::open(self.path(key)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(self.not_found(key)),
            Err(e) => return Err(Self::io("open", key)(e)),
        };
        read_exact_at(&f, buf, offset).map_err(Self::io("read", key))
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.parent_dirs(key)?;
        let path = self.path(key);
        let tmp = partial(&path);
        let mut f = File::create(&tmp).map_err(Self::io("create", key))?;
        f.write_all(bytes).map_err(Self::io("write", key))?;
        f.sync_all().map_err(Self::io("sync", key))?;
        fs::rename(&tmp, &path).map_err(Self::io("rename", key))
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        match fs::remove_file(self.path(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::io("delete", key)(e)),
        }
    }

    fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StoreError> {
        self.parent_dirs(key)?;
        let path = self.path(key);
        let tmp = partial(&path);
        let resume = self.resume && tmp.is_file();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(!resume)
            .open(&tmp)
            .map_err(Self::io("create", key))?;
        let old_len = if resume {
            file.metadata().map_err(Self::io("stat", key))?.len()
        } else {
            0
        };
        Ok(Box::new(LocalWriter {
            file,
            root: self.root.clone(),
            sources: Vec::new(),
            file_copied: 0,
            tmp,
            path,
            key: key.to_string(),
            written: 0,
            old_len,
            part: Vec::new(),
            resumed: ResumeStats {
                resumed_from: resume.then(|| format!("{key}.partial")),
                ..Default::default()
            },
        }))
    }

    fn unfinished(&self, prefix: &str) -> Result<Vec<Upload>, StoreError> {
        let mut out = Vec::new();
        for (rel, entry) in self.files(prefix)? {
            let Some(key) = rel.strip_suffix(".partial") else {
                continue;
            };
            let modified = entry.metadata().ok().and_then(|m| m.modified().ok());
            let epoch = modified
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64);
            out.push(Upload {
                key: key.to_string(),
                upload_id: rel.clone(),
                initiated: modified.map(|t| {
                    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                }),
                initiated_epoch: epoch,
            });
        }
        out.sort_by(|a, b| a.initiated_epoch.cmp(&b.initiated_epoch).then(a.key.cmp(&b.key)));
        Ok(out)
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys: Vec<String> = self
            .files(prefix)?
            .into_iter()
            .map(|(rel, _)| rel)
            .filter(|k| !k.ends_with(".partial"))
            .collect();
        keys.sort();
        Ok(keys)
    }

    fn is_local(&self) -> bool {
        true
    }

    fn discard_unfinished(&self, u: &Upload) -> Result<(), StoreError> {
        match fs::remove_file(partial(&self.path(&u.key))) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::io("delete", &u.key)(e)),
        }
    }
}

struct LocalWriter {
    file: File,
    /// The bucket folder, and the objects copied from (write_copy): each opened once, with its
    /// modification time then, which must be the same when the object is finished.
    root: PathBuf,
    sources: Vec<(String, File, Option<std::time::SystemTime>)>,
    file_copied: u64,
    tmp: PathBuf,
    path: PathBuf,
    key: String,
    written: u64,
    /// Length of the partial file picked up (0: a new file, written straight through).
    old_len: u64,
    /// Resuming: the bytes of the current part, until they are compared with the file's.
    part: Vec<u8>,
    resumed: ResumeStats,
}

impl LocalWriter {
    /// Where the buffered part starts in the object.
    fn part_start(&self) -> u64 {
        self.written - self.part.len() as u64
    }

    /// True if the partial file already holds `part` at its offset.
    fn already_stored(&self, part: &PartInfo) -> Result<bool, StoreError> {
        let start = self.part_start();
        if start + part.size > self.old_len {
            return Ok(false);
        }
        let mut old = vec![0u8; self.part.len()];
        read_exact_at(&self.file, &mut old, start).map_err(LocalStore::io("read", &self.key))?;
        Ok(<[u8; 32]>::from(Sha256::digest(&old)) == part.sha256)
    }
}

impl LocalWriter {
    /// The object `key` of this bucket, opened for reading (once): its place in `sources`.
    fn source(&mut self, key: &str) -> Result<usize, StoreError> {
        let i = match self.sources.iter().position(|(k, _, _)| k == key) {
            Some(i) => i,
            None => {
                let f = File::open(self.root.join(key)).map_err(LocalStore::io("open", key))?;
                let modified = f.metadata().and_then(|m| m.modified()).ok();
                self.sources.push((key.to_string(), f, modified));
                self.sources.len() - 1
            }
        };
        Ok(i)
    }
}

impl ObjectWriter for LocalWriter {
    fn write_copy(&mut self, bytes: &[u8], source: &CopySource) -> Result<(), StoreError> {
        // Resuming: parts are compared before they are written. Without copy_file_range
        // (not Linux) there is nothing to copy with.
        if self.old_len > 0 || !cfg!(target_os = "linux") {
            return self.write(bytes);
        }
        let i = self.source(&source.key)?;
        let copied = copy_to_end(&self.sources[i].1, source.offset, &self.file, bytes.len());
        let done = match copied {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("{}: copy_file_range failed ({e}): writing instead", source.key);
                0
            }
        };
        // What the file system did not copy is written (the file position follows the copy).
        self.file
            .write_all(&bytes[done..])
            .map_err(LocalStore::io("write", &self.key))?;
        self.file_copied += done as u64;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        if self.old_len > 0 {
            self.part.extend_from_slice(bytes);
        } else {
            self.file.write_all(bytes).map_err(LocalStore::io("write", &self.key))?;
        }
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn stored_bytes(&self) -> u64 {
        self.part_start()
    }

    fn end_part(&mut self, part: &PartInfo) -> Result<(), StoreError> {
        if self.old_len == 0 {
            return Ok(());
        }
        let start = self.part_start();
        if self.already_stored(part)? {
            self.resumed.reused_parts += 1;
            self.resumed.reused_bytes += part.size;
        } else {
            if start + part.size <= self.old_len {
                self.resumed.replaced_parts += 1; // whole, but different: the source changed
            }
            write_all_at(&self.file, &self.part, start).map_err(LocalStore::io("write", &self.key))?;
        }
        self.part.clear();
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<ObjectReceipt, StoreError> {
        if self.old_len > 0 {
            if !self.part.is_empty() {
                let start = self.part_start();
                write_all_at(&self.file, &self.part, start).map_err(LocalStore::io("write", &self.key))?;
            }
            // The interrupted run may have written further than this one ends.
            self.file
                .set_len(self.written)
                .map_err(LocalStore::io("truncate", &self.key))?;
        }
        // Copied bytes were hashed as read before the copy: an object changed in place since
        // would make the copy differ from them (winbundle never writes an object in place).
        for (key, f, modified) in &self.sources {
            if f.metadata().and_then(|m| m.modified()).ok() != *modified {
                return Err(StoreError::Local {
                    path: self.root.join(key),
                    problem: "changed while this bundle copied from it; run the bundle again".into(),
                });
            }
        }
        self.file.sync_data().map_err(LocalStore::io("sync", &self.key))?;
        crate::panics::inject("store-finish");
        fs::rename(&self.tmp, &self.path).map_err(LocalStore::io("rename", &self.key))?;
        Ok(ObjectReceipt {
            resumed: std::mem::take(&mut self.resumed),
            copy: CopyStats {
                file_copied_bytes: self.file_copied,
                ..Default::default()
            },
            ..Default::default()
        })
    }

    fn abort(self: Box<Self>) {
        // Dropping removes the partial file.
    }
}

/// A writer dropped before its object was finished (a failure in `finish`, a panic anywhere)
/// removes its partial file, as an abort does: only a killed process leaves one to resume.
impl Drop for LocalWriter {
    fn drop(&mut self) {
        match fs::remove_file(&self.tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!("cannot remove {}: {e}", self.tmp.display());
            }
            _ => {}
        }
    }
}

/// Appends `len` bytes at `offset` of `src` to `dst` (at its file position) inside the kernel:
/// `copy_file_range`, which XFS and Btrfs turn into shared blocks (a reflink) where the offsets
/// are block-aligned. Returns the bytes copied; fewer than `len` (0 where the system has no
/// such call) leaves the rest to the caller.
#[cfg(target_os = "linux")]
fn copy_to_end(src: &File, offset: u64, dst: &File, len: usize) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut off_in = i64::try_from(offset).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut done = 0;
    while done < len {
        // SAFETY: both descriptors are open for the call; `off_in` is a live i64 the kernel
        // updates; a null output offset means dst's file position, which the kernel advances.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                std::ptr::null_mut(),
                len - done,
                0,
            )
        };
        match n {
            n if n > 0 => done += n as usize,
            0 => break, // the source ended early: the caller writes the rest
            _ if done > 0 => break,
            _ => return Err(std::io::Error::last_os_error()),
        }
    }
    Ok(done)
}

#[cfg(not(target_os = "linux"))]
fn copy_to_end(_: &File, _: u64, _: &File, _: usize) -> std::io::Result<usize> {
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_source(key: &str, offset: u64, len: u64) -> CopySource {
        CopySource {
            key: key.into(),
            offset,
            len,
            etag: None,
        }
    }

    /// Bytes copied from another object land where written bytes would, and are counted.
    #[test]
    fn write_copy_appends_the_source_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path(), "bkt", true).unwrap();
        let parent: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        store.put("p.image.zst", &parent).unwrap();
        let mut w = store.writer("c.image.zst").unwrap();
        w.write(b"new").unwrap();
        w.write_copy(&parent[1000..61_000], &copy_source("p.image.zst", 1000, 60_000))
            .unwrap();
        w.write(b"tail").unwrap();
        let receipt = w.finish().unwrap();
        let mut want = b"new".to_vec();
        want.extend_from_slice(&parent[1000..61_000]);
        want.extend_from_slice(b"tail");
        assert_eq!(store.get("c.image.zst").unwrap(), want);
        if cfg!(target_os = "linux") {
            assert_eq!(receipt.copy.file_copied_bytes, 60_000);
        }
    }

    /// A source object rewritten in place while it was copied from fails the object, by name.
    /// Only where the file system copies (Linux): elsewhere the bytes are written, not copied,
    /// so the source is never opened and a change to it cannot matter.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_source_changed_during_the_copy_fails_the_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path(), "bkt", true).unwrap();
        store.put("p.image.zst", &[7u8; 8192]).unwrap();
        let mut w = store.writer("c.image.zst").unwrap();
        w.write_copy(&[7u8; 4096], &copy_source("p.image.zst", 0, 4096))
            .unwrap();
        let f = OpenOptions::new().write(true).open(store.path("p.image.zst")).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains("p.image.zst") && e.contains("changed while"), "{e}");
        assert!(!store.exists("c.image.zst").unwrap());
    }
}
