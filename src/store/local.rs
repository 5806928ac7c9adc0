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

use super::{ObjectReceipt, ObjectStore, ObjectWriter, PartInfo, ResumeStats, StoreError, Upload, names};
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

impl ObjectWriter for LocalWriter {
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
        self.file.sync_data().map_err(LocalStore::io("sync", &self.key))?;
        fs::rename(&self.tmp, &self.path).map_err(LocalStore::io("rename", &self.key))?;
        Ok(ObjectReceipt {
            resumed: std::mem::take(&mut self.resumed),
            ..Default::default()
        })
    }

    fn abort(self: Box<Self>) {
        let _ = fs::remove_file(&self.tmp);
    }
}
