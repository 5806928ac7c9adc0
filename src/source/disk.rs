//! The raw source: a disk image file, a bare volume image or a block device, opened read-only
//! and read with positioned reads (no shared seek position, so several threads can read at once).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::SourceError;

/// A read-only disk (or volume) with a known size.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    path: PathBuf,
    size: u64,
}

impl DiskFile {
    /// Opens `path` read-only and finds its size (seeking to the end also works for block
    /// devices). A zstd-compressed image (`disk.img.zst`) is first decompressed into a sparse
    /// temporary file, which is removed when the `DiskFile` is dropped.
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let open_err = |source| SourceError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(open_err)?;
        if file.metadata().map_err(open_err)?.is_dir() {
            return Err(SourceError::IsDirectory {
                path: path.to_path_buf(),
            });
        }
        let mut magic = [0u8; 4];
        if file.read_exact(&mut magic).is_ok() && magic == ZSTD_MAGIC {
            file = decompress_to_temp(path, file).map_err(open_err)?;
        }
        let size = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            size,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Fills `buf` from `offset`. Reading past the end is an error that names the range:
    /// a source shorter than its own structures say is a truncated image.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SourceError> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.size) {
            return Err(SourceError::PastEnd {
                path: self.path.clone(),
                offset,
                len: buf.len() as u64,
                size: self.size,
            });
        }
        read_exact_at(&self.file, buf, offset).map_err(|source| SourceError::Read {
            path: self.path.clone(),
            offset,
            source,
        })
    }
}

/// The first bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Decompresses a zstd image into an anonymous temporary file, leaving holes where the data is
/// zero, and returns it.
fn decompress_to_temp(path: &Path, mut compressed: File) -> std::io::Result<File> {
    compressed.seek(SeekFrom::Start(0))?;
    let mut out = tempfile::tempfile()?;
    let mut dec = zstd::stream::read::Decoder::new(compressed)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match dec.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("decompressing {}: {e}", path.display()),
                    ));
                }
            }
        }
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            out.seek(SeekFrom::Start(len))?;
            out.write_all(&buf[..n])?;
        }
        len += n as u64;
    }
    out.set_len(len)?;
    Ok(out)
}

/// Positioned read of exactly `buf.len()` bytes (shared with the local store).
#[cfg(unix)]
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
pub(crate) fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
