//! A local folder as an object store: object `KEY` of bucket `B` is the file `DIR/B/KEY`.
//! Data objects are written to `KEY.partial` and renamed when complete; small objects are
//! written to a temporary name and renamed, so a reader never sees half an object.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{ObjectReceipt, ObjectStore, ObjectWriter, PartInfo, StoreError, names};
use crate::source::disk::read_exact_at;

pub struct LocalStore {
    root: PathBuf,
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
        Ok(Self { root })
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
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(Self::io("create", key))?;
        Ok(Box::new(LocalWriter {
            file,
            tmp,
            path,
            key: key.to_string(),
            written: 0,
        }))
    }
}

struct LocalWriter {
    file: File,
    tmp: PathBuf,
    path: PathBuf,
    key: String,
    written: u64,
}

impl ObjectWriter for LocalWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.file.write_all(bytes).map_err(|source| StoreError::Io {
            op: "write",
            key: self.key.clone(),
            source,
        })?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn stored_bytes(&self) -> u64 {
        self.written
    }

    fn end_part(&mut self, _part: &PartInfo) -> Result<(), StoreError> {
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<ObjectReceipt, StoreError> {
        let key = self.key.clone();
        self.file.sync_data().map_err(|source| StoreError::Io {
            op: "sync",
            key: key.clone(),
            source,
        })?;
        fs::rename(&self.tmp, &self.path).map_err(|source| StoreError::Io {
            op: "rename",
            key,
            source,
        })?;
        Ok(ObjectReceipt::default())
    }

    fn abort(self: Box<Self>) {
        let _ = fs::remove_file(&self.tmp);
    }
}
