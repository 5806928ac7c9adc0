//! Where a disk image goes ([`Target`]) and how it is written there ([`ImageOut`]): a file,
//! written as `PATH.partial` and renamed once complete, or an object of a store (on S3 a
//! multipart upload: parallel parts, SHA-256 checksums and resume, as for bundles).

use sha2::{Digest, Sha256};
use std::fs::File;
use std::path::{Path, PathBuf};

use super::disk::partial_path;
use crate::Error;
use crate::store::{ObjectStore, ObjectWriter, PartInfo};

/// The smallest part of an image uploaded to a store; larger for disks past ~140 GiB, so that
/// an image fits S3's 10,000 parts.
const MIN_PART: u64 = 16 << 20;

fn io(context: String, e: std::io::Error) -> Error {
    Error::Io { context, source: e }
}

/// A disk image being written: a head (`head_len` bytes, written last, at the start) and a
/// body written in order after it.
pub trait ImageOut {
    fn write(&mut self, bytes: &[u8]) -> Result<(), Error>;
    /// Writes the head and makes the image visible; returns the image's size in bytes.
    fn finish(self: Box<Self>, head: &[u8]) -> Result<u64, Error>;
    /// Drops what was written.
    fn abort(self: Box<Self>);
}

/// Where a disk image goes.
pub enum Target<'a> {
    /// A file, written as `PATH.partial` and renamed once complete.
    File { path: PathBuf, force: bool },
    /// An object of a store: on S3 a multipart upload, complete only when it completes.
    Store { store: &'a dyn ObjectStore, key: String },
}

impl Target<'_> {
    /// Where, for messages.
    pub fn describe(&self) -> String {
        match self {
            Target::File { path, .. } => path.display().to_string(),
            Target::Store { store, key } => format!("{key} in {}", store.location()),
        }
    }

    /// The name of the image without its folder (for a VMDK's descriptor).
    pub fn file_name(&self) -> String {
        match self {
            Target::File { path, .. } => path.file_name().map(|n| n.to_string_lossy().into_owned()),
            Target::Store { key, .. } => key.rsplit('/').next().map(str::to_string),
        }
        .filter(|n| !n.is_empty() && n.chars().all(|c| c != '"' && !c.is_control()))
        .unwrap_or_else(|| "disk.vmdk".into())
    }

    /// The smallest head this target takes: the first part of a multipart upload must be a
    /// full part.
    pub fn min_head(&self, image_size: u64) -> u64 {
        match self {
            Target::File { .. } => 0,
            Target::Store { store, .. } => part_size(*store, image_size),
        }
    }

    /// Opens the image with a head of `head_len` bytes (0: none).
    pub fn open(&self, head_len: u64, image_size: u64) -> Result<Box<dyn ImageOut>, Error> {
        match self {
            Target::File { path, force } => Ok(Box::new(FileOut::create(path, *force, head_len)?)),
            Target::Store { store, key } => {
                if head_len > 0 && store.is_local() {
                    return Err(Error::InvalidParameter {
                        parameter: "--output-key",
                        message: "a local store writes objects in order, and a VHDX's tables come first: write the VHDX to a file with --output PATH, or pick --format vmdk".into(),
                    });
                }
                let w = store.writer(key)?;
                Ok(Box::new(StoreOut {
                    w: Some(w),
                    part_size: part_size(*store, image_size),
                    head_len,
                    in_part: 0,
                    hasher: Sha256::new(),
                    number: u32::from(head_len > 0),
                    total: 0,
                }))
            }
        }
    }
}

/// Part size for an image of about `image_size` bytes.
fn part_size(store: &dyn ObjectStore, image_size: u64) -> u64 {
    let fit = image_size.div_ceil(9_000).div_ceil(1 << 20) << 20;
    MIN_PART.max(store.min_part_size()).max(fit)
}

/// A disk image in a file.
struct FileOut {
    f: File,
    target: PathBuf,
    out: PathBuf,
    pos: u64,
    buf: Vec<u8>,
}

const FILE_BUF: usize = 8 << 20;

impl FileOut {
    fn create(out: &Path, force: bool, head_len: u64) -> Result<Self, Error> {
        let meta = std::fs::metadata(out).ok();
        if meta.as_ref().is_some_and(|m| !m.is_file()) {
            return Err(Error::InvalidParameter {
                parameter: "--output",
                message: format!(
                    "{} is not a regular file: a VMDK or VHDX is written to a file (write a device with --format raw)",
                    out.display()
                ),
            });
        }
        if meta.is_some() && !force {
            return Err(Error::InvalidParameter {
                parameter: "--output",
                message: format!("{} exists: pass --force to replace it", out.display()),
            });
        }
        let target = partial_path(out);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&target)
            .map_err(|e| io(format!("create {}", target.display()), e))?;
        Ok(Self {
            f,
            target,
            out: out.to_path_buf(),
            pos: head_len,
            buf: Vec::with_capacity(FILE_BUF),
        })
    }

    fn flush(&mut self) -> Result<(), Error> {
        crate::source::disk::write_all_at(&self.f, &self.buf, self.pos)
            .map_err(|e| io(format!("write {}", self.target.display()), e))?;
        self.pos += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

impl ImageOut for FileOut {
    fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= FILE_BUF {
            self.flush()?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>, head: &[u8]) -> Result<u64, Error> {
        let r = (|| {
            self.flush()?;
            crate::source::disk::write_all_at(&self.f, head, 0)
                .map_err(|e| io(format!("write {}", self.target.display()), e))?;
            self.f
                .sync_all()
                .map_err(|e| io(format!("sync {}", self.target.display()), e))?;
            std::fs::rename(&self.target, &self.out)
                .map_err(|e| io(format!("rename {} to {}", self.target.display(), self.out.display()), e))?;
            Ok(self.pos)
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&self.target);
        }
        r
    }

    fn abort(self: Box<Self>) {
        let _ = std::fs::remove_file(&self.target);
    }
}

/// A disk image in an object of a store, cut into parts with their SHA-256; a head is part 0,
/// sent last.
struct StoreOut {
    w: Option<Box<dyn ObjectWriter>>,
    part_size: u64,
    head_len: u64,
    in_part: u64,
    hasher: Sha256,
    number: u32,
    total: u64,
}

impl StoreOut {
    fn writer(&mut self) -> Result<&mut Box<dyn ObjectWriter>, Error> {
        self.w
            .as_mut()
            .ok_or_else(|| Error::Internal("the image's upload is already closed".into()))
    }

    fn end_part(&mut self) -> Result<(), Error> {
        let part = PartInfo {
            number: self.number,
            size: self.in_part,
            sha256: std::mem::take(&mut self.hasher).finalize().into(),
        };
        self.writer()?.end_part(&part)?;
        self.number += 1;
        self.in_part = 0;
        Ok(())
    }
}

impl ImageOut for StoreOut {
    fn write(&mut self, mut bytes: &[u8]) -> Result<(), Error> {
        while !bytes.is_empty() {
            let k = ((self.part_size - self.in_part) as usize).min(bytes.len());
            self.writer()?.write(&bytes[..k])?;
            self.hasher.update(&bytes[..k]);
            self.in_part += k as u64;
            self.total += k as u64;
            bytes = &bytes[k..];
            if self.in_part == self.part_size {
                self.end_part()?;
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>, head: &[u8]) -> Result<u64, Error> {
        let r = (|| {
            if head.len() as u64 != self.head_len {
                return Err(Error::Internal(format!(
                    "an image head of {} bytes, {} planned",
                    head.len(),
                    self.head_len
                )));
            }
            if self.in_part > 0 {
                self.end_part()?;
            }
            if !head.is_empty() {
                self.number = 0;
                self.writer()?.write(head)?;
                self.hasher.update(head);
                self.in_part = head.len() as u64;
                self.end_part()?;
            }
            Ok(())
        })();
        let Some(w) = self.w.take() else {
            return Err(Error::Internal("the image's upload is already closed".into()));
        };
        match r {
            Ok(()) => {
                w.finish()?;
                Ok(self.total + self.head_len)
            }
            Err(e) => {
                w.abort();
                Err(e)
            }
        }
    }

    fn abort(mut self: Box<Self>) {
        if let Some(w) = self.w.take() {
            w.abort();
        }
    }
}
