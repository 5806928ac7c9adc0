//! Where bundles are kept. [`ObjectStore`] is the one small trait every destination implements
//! (a local folder now; S3 multipart and S3 POST policies plug in beside it). Keys are exactly
//! the S3 keys; [`names`] checks bucket names and prefixes the way S3 does.

pub mod local;
pub mod names;
pub mod post;
pub mod s3;

use std::path::PathBuf;

pub use local::LocalStore;
pub use s3::uploads::Upload;
pub use s3::{S3Options, S3Store};

/// Errors of a store, naming the bucket/key and the operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {key}: {source}")]
    Io {
        op: &'static str,
        key: String,
        source: std::io::Error,
    },
    #[error("a bundle already exists at {bucket}/{prefix} ({manifest} is present)")]
    BundleExists {
        bucket: String,
        prefix: String,
        manifest: String,
    },
    #[error("{key} not found in {location}")]
    NotFound { key: String, location: String },
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("local store {path}: {problem}")]
    Local { path: PathBuf, problem: String },
    #[error("S3 {op} {location}: {code}: {message}")]
    S3 {
        op: &'static str,
        location: String,
        code: String,
        message: String,
    },
    #[error("S3 {op} {location}: {detail}")]
    S3Transport {
        op: &'static str,
        location: String,
        detail: String,
    },
    #[error("S3 UploadPartCopy {location}: {code}: {message} (the server does not copy parts)")]
    CopyRefused {
        location: String,
        code: String,
        message: String,
    },
    #[error("S3 setup: {0}")]
    S3Config(String),
    #[error("{op} stopped: the run was cancelled")]
    Cancelled { op: &'static str },
    #[error(transparent)]
    Policy(#[from] post::PolicyError),
}

/// What a finished data object is, per the store.
#[derive(Debug, Clone, Default)]
pub struct ObjectReceipt {
    pub etag: Option<String>,
    /// ETag of each part (S3 multipart uploads).
    pub part_etags: Vec<String>,
    /// What an interrupted earlier run had already stored and this one reused.
    pub resumed: ResumeStats,
    /// The SHA-256 of each part stored as a server-side copy ([`ObjectWriter::copy_part`]),
    /// by part number.
    pub copied: Vec<(u32, [u8; 32])>,
    /// How those copies went.
    pub copy: CopyStats,
}

/// Parts an incremental bundle had the server copy from its parent.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CopyStats {
    /// Parts copied on the server (UploadPartCopy) and their bytes.
    pub copied_parts: u32,
    pub copied_bytes: u64,
    /// Bytes of copied parts read back to compute their SHA-256, where the server returned no
    /// checksum for the copy.
    pub read_back_bytes: u64,
    /// Parts meant as copies that were uploaded instead (the server refused to copy), and why.
    pub uploaded_instead: u32,
    /// Reused bytes a local store had the file system copy from the parent's object
    /// (`copy_file_range`: a reflink where the file system shares blocks) instead of writing them.
    pub file_copied_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl CopyStats {
    pub fn add(&mut self, o: &CopyStats) {
        self.copied_parts += o.copied_parts;
        self.copied_bytes += o.copied_bytes;
        self.read_back_bytes += o.read_back_bytes;
        self.uploaded_instead += o.uploaded_instead;
        self.file_copied_bytes += o.file_copied_bytes;
        if self.note.is_none() {
            self.note.clone_from(&o.note);
        }
    }
}

/// A byte range of an object in the same bucket, for a server-side copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySource {
    pub key: String,
    pub offset: u64,
    pub len: u64,
    /// The object's ETag as its manifest records it: the copy is made only if the object still
    /// has it (`x-amz-copy-source-if-match`).
    pub etag: Option<String>,
}

impl CopySource {
    /// The HTTP range of the bytes (`bytes=FIRST-LAST`), for a copy or a ranged read.
    pub fn range_header(&self) -> String {
        format!("bytes={}-{}", self.offset, self.offset + self.len - 1)
    }
}

/// An interrupted upload picked up again: what of it was reused.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResumeStats {
    /// The unfinished upload (S3) or partial file (local store) that was picked up.
    pub resumed_from: Option<String>,
    /// Parts already stored that equal the recomputed ones: not sent again.
    pub reused_parts: u32,
    pub reused_bytes: u64,
    /// Parts already stored that differ from the recomputed ones (the source changed since):
    /// stored again.
    pub replaced_parts: u32,
    /// Why no earlier upload could be looked for or picked up, when that is worth saying.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl ResumeStats {
    /// Adds up the stats of the objects of one bundle.
    pub fn add(&mut self, o: &ResumeStats) {
        if self.resumed_from.is_none() {
            self.resumed_from.clone_from(&o.resumed_from);
        }
        self.reused_parts += o.reused_parts;
        self.reused_bytes += o.reused_bytes;
        self.replaced_parts += o.replaced_parts;
        if self.note.is_none() {
            self.note.clone_from(&o.note);
        }
    }
}

/// A part of a data object as it is being written.
#[derive(Debug, Clone, Copy)]
pub struct PartInfo {
    /// 0-based part number within the object.
    pub number: u32,
    pub size: u64,
    pub sha256: [u8; 32],
}

/// Writes one data object as a stream of bytes cut into parts.
pub trait ObjectWriter: Send {
    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError>;
    /// The bytes written since the last part boundary form `part`.
    fn end_part(&mut self, part: &PartInfo) -> Result<(), StoreError>;
    /// Stores part `number` as a server-side copy of `source`: the bytes do not pass through
    /// this machine. The part's SHA-256 comes back in the receipt ([`ObjectReceipt::copied`]).
    /// Only stores whose [`ObjectStore::copies_parts`] is true take it.
    fn copy_part(&mut self, number: u32, source: &CopySource) -> Result<(), StoreError> {
        let _ = (number, source);
        Err(StoreError::S3Config(
            "this store cannot copy parts on the server".into(),
        ))
    }
    /// Writes `bytes`, which object `source.key` of the same store holds at `source.offset`: a
    /// local store has the file system copy them (see [`CopyStats::file_copied_bytes`]); others
    /// write them.
    fn write_copy(&mut self, bytes: &[u8], source: &CopySource) -> Result<(), StoreError> {
        let _ = source;
        self.write(bytes)
    }
    /// Bytes durably stored so far (written to disk, or parts whose upload completed).
    fn stored_bytes(&self) -> u64;
    /// Makes the object visible under its key.
    fn finish(self: Box<Self>) -> Result<ObjectReceipt, StoreError>;
    /// Drops what was written.
    fn abort(self: Box<Self>);
}

/// A bucket in some store.
pub trait ObjectStore: Send + Sync {
    /// Where this is, for messages (`local folder /x/bucket`, `s3://bucket`).
    fn location(&self) -> String;
    /// How the store encrypts what it writes, when asked to (S3's SSE), for the JSON summary.
    fn server_side_encryption(&self) -> Option<serde_json::Value> {
        None
    }
    fn exists(&self, key: &str) -> Result<bool, StoreError>;
    fn size(&self, key: &str) -> Result<u64, StoreError>;
    /// Reads `buf.len()` bytes of `key` from `offset`.
    fn read_at(&self, key: &str, offset: u64, buf: &mut [u8]) -> Result<(), StoreError>;
    /// Writes a small object whole and atomically (the manifest).
    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError>;
    fn delete(&self, key: &str) -> Result<(), StoreError>;
    fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StoreError>;
    /// A writer that does not look for an unfinished upload of `key` to resume (one request
    /// fewer on S3): for the many small objects of `--layout runs`, where little is in flight.
    fn fresh_writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StoreError> {
        self.writer(key)
    }

    /// Waits until everything handed to the store is stored (background uploads).
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// What a failed bundle left behind and could not remove, as a sentence (objects a store
    /// that cannot delete wrote, an upload that could not be aborted).
    fn leftovers(&self) -> Option<String> {
        None
    }

    /// Checks a planned bundle (its keys, part size, expected duration) before any data is
    /// read; returns warnings.
    fn preflight(&self, _keys: &[String], _part_size: u64, _seconds: f64) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    /// The smallest part (but the last) a single-object data upload may have.
    fn min_part_size(&self) -> u64 {
        1
    }

    /// Keys of the complete objects whose key starts with `prefix`, sorted.
    fn list(&self, _prefix: &str) -> Result<Vec<String>, StoreError> {
        Err(StoreError::S3Config(format!("{} cannot list objects", self.location())))
    }

    /// Whether reading back what is stored costs nothing worth counting (a local folder), so an
    /// incremental bundle may copy its parent's frames through this machine.
    fn is_local(&self) -> bool {
        false
    }

    /// Whether data objects can take parts copied on the server from another object of the same
    /// bucket (S3 UploadPartCopy), so an incremental bundle's reused frames never pass through
    /// this machine.
    fn copies_parts(&self) -> bool {
        false
    }

    /// Unfinished uploads under `prefix`: S3 multipart uploads, a local store's partial files.
    fn unfinished(&self, _prefix: &str) -> Result<Vec<Upload>, StoreError> {
        Ok(Vec::new())
    }

    /// Ends one unfinished upload (aborts it; removes the partial file).
    fn discard_unfinished(&self, _upload: &Upload) -> Result<(), StoreError> {
        Ok(())
    }

    /// Reads a whole (small) object.
    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let size = self.size(key)?;
        let mut buf = vec![0u8; size as usize];
        self.read_at(key, 0, &mut buf)?;
        Ok(buf)
    }
}
