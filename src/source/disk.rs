//! The raw source: a disk image file, a bare volume image, a block device, or (on Windows) a
//! volume, disk or shadow-copy handle, opened read-only and read with positioned reads (no
//! shared seek position, so several threads can read at once). Every read of every layer above
//! (partition tables, NTFS metadata, chunks) goes through [`DiskFile::read_exact_at`], which
//! respects the device's alignment ([`super::device`]).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::SourceError;
use super::device::{Alignment, BouncePool, Device, FileDevice, ReadCounters, ReadStats, StrictDevice};

/// A read-only disk (or volume) with a known size.
pub struct DiskFile {
    device: Box<dyn Device>,
    path: PathBuf,
    size: u64,
    bounce: BouncePool,
    counters: ReadCounters,
}

impl std::fmt::Debug for DiskFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskFile")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("alignment", &self.device.alignment())
            .finish_non_exhaustive()
    }
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
        // Before opening: Windows refuses to open a directory as a file ("Access denied").
        if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            return Err(SourceError::IsDirectory {
                path: path.to_path_buf(),
            });
        }
        let mut file = File::open(path).map_err(open_err)?;
        let mut magic = [0u8; 4];
        if file.read_exact(&mut magic).is_ok() && magic == ZSTD_MAGIC {
            file = decompress_to_temp(path, file).map_err(open_err)?;
        }
        let size = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        let device: Box<dyn Device> = match strict_alignment() {
            Some((logical, physical)) => Box::new(StrictDevice {
                inner: FileDevice(file),
                alignment: Alignment::for_sectors(logical, physical),
                size,
            }),
            None => Box::new(FileDevice(file)),
        };
        Ok(Self::from_device(path.to_path_buf(), device, size))
    }

    /// A source read from `device`, `size` bytes long, named `path` in messages.
    pub fn from_device(path: PathBuf, device: Box<dyn Device>, size: u64) -> Self {
        Self {
            device,
            path,
            size,
            bounce: BouncePool::default(),
            counters: ReadCounters::default(),
        }
    }

    /// The name, size and device, to wrap the device in another.
    pub fn into_parts(self) -> (PathBuf, u64, Box<dyn Device>) {
        (self.path, self.size, self.device)
    }

    /// What the device needs of every read.
    pub fn alignment(&self) -> Alignment {
        self.device.alignment()
    }

    /// How reads were served so far (the aligned layer made observable).
    pub fn read_stats(&self) -> ReadStats {
        self.counters.stats(self.device.alignment(), self.device.handles())
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
        super::device::read(
            self.device.as_ref(),
            &self.bounce,
            &self.counters,
            buf,
            offset,
            self.size,
        )
        .map_err(|source| SourceError::Read {
            path: self.path.clone(),
            offset,
            source,
        })
    }
}

/// `WINBUNDLE_STRICT_ALIGNMENT=N` or `L/P` (powers of two, 512 to 65536): image files are read
/// as a Windows unbuffered handle would be on a disk with N-byte sectors, or L-byte logical and
/// P-byte physical ones (`512/4096`: a 512e disk), refusing any unaligned read and any read past
/// the end. The alignment is chosen from the two sizes as for a real handle. A test aid: it
/// proves on any platform (and under Wine, which enforces neither rule) that every layer's reads
/// go through the aligned path and stop at the end of the device.
fn strict_alignment() -> Option<(u64, u64)> {
    let v = std::env::var("WINBUNDLE_STRICT_ALIGNMENT").ok()?;
    let (l, p) = v.trim().split_once('/').unwrap_or((v.trim(), v.trim()));
    let ok = |n: u64| n.is_power_of_two() && (512..=65536).contains(&n);
    let (l, p): (u64, u64) = (l.trim().parse().ok()?, p.trim().parse().ok()?);
    (ok(l) && ok(p) && p >= l).then_some((l, p))
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

pub(crate) use super::fileio::{read_exact_at, write_all_at};
