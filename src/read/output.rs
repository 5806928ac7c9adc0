//! Where a restore to a file or block device writes: each chunk at its own offset, from the
//! decompressing threads. Zero runs stay holes where the target reads back zeros, and on Linux
//! the chunks go around the page cache (`O_DIRECT`): copying gigabytes into the page cache, and
//! the kernel's work writing them back, cost as much CPU as the decompression did
//! (bench/README.md, "Restore against `zstd -d`"). `--buffered` writes through the page cache as
//! before.

use std::fs::File;
use std::path::Path;

use crate::Error;
use crate::chunk::frame::is_all_zero;
use crate::source::disk::write_all_at;

/// Alignment of the buffers and offsets of direct writes (a page: every logical block size
/// Linux supports divides it).
pub const ALIGN: usize = 4096;

/// Zero runs at least this long (and aligned to it) inside a chunk are not written to a file:
/// they stay holes (`zstd -d --sparse` does the same with 32 KiB).
pub const SPARSE_RUN: usize = 32 << 10;

/// A file or block device being restored into.
pub struct ChunkSink<'f> {
    file: &'f File,
    /// The same file opened again with `O_DIRECT`, when that worked.
    direct: Option<File>,
    name: &'f Path,
    /// The target reads back zeros where nothing is written: zero runs are skipped.
    sparse: bool,
}

impl<'f> ChunkSink<'f> {
    /// Writes go to `file` (opened from `name`); with `direct`, through a second descriptor
    /// opened with `O_DIRECT` where the system and file system allow it (Linux), else buffered.
    pub fn new(file: &'f File, name: &'f Path, sparse: bool, direct: bool) -> Self {
        let direct = if direct { open_direct(name) } else { None };
        tracing::debug!(
            "{}: writing {}",
            name.display(),
            if direct.is_some() {
                "with direct I/O"
            } else {
                "through the page cache"
            }
        );
        ChunkSink {
            file,
            direct,
            name,
            sparse,
        }
    }

    /// Writes `buf` at `offset`; `known_zero`: `buf` is all zeros. Returns the bytes written
    /// (holes left out). Only whole pages are written directly (buffer, offset and length on
    /// the page grid); anything else (the unaligned tail of a volume, a disk piece off the
    /// grid) goes through the page cache. So no page is written both ways: a buffered write
    /// into part of a page reads the rest from the disk, and would race with a direct write of
    /// that rest by another thread. A direct write the kernel still refuses for its alignment
    /// (EINVAL) is written buffered too.
    pub fn write(&self, buf: &[u8], offset: u64, known_zero: bool) -> Result<u64, Error> {
        if self.sparse && known_zero {
            return Ok(0);
        }
        let put = |f: &File| {
            if self.sparse {
                write_sparse(f, buf, offset)
            } else {
                write_all_at(f, buf, offset).map(|()| buf.len() as u64)
            }
        };
        if let Some(d) = &self.direct
            && buf.as_ptr().align_offset(ALIGN) == 0
            && offset.is_multiple_of(ALIGN as u64)
            && buf.len().is_multiple_of(ALIGN)
        {
            match put(d) {
                Ok(n) => return Ok(n),
                Err(e) if e.raw_os_error() == Some(EINVAL) => {} // alignment: buffered below
                Err(e) => return Err(self.error(e)),
            }
        }
        let written = put(self.file).map_err(|e| self.error(e))?;
        start_writeback(self.file, offset, written, buf.len());
        Ok(written)
    }

    fn error(&self, source: std::io::Error) -> Error {
        Error::Io {
            context: format!("write {}", self.name.display()),
            source,
        }
    }
}

#[cfg(target_os = "linux")]
const EINVAL: i32 = libc::EINVAL;
#[cfg(not(target_os = "linux"))]
const EINVAL: i32 = 22;

#[cfg(target_os = "linux")]
fn open_direct(name: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(name)
    {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::debug!(
                "{}: no direct I/O ({e}); writing through the page cache",
                name.display()
            );
            None
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_: &Path) -> Option<File> {
    None
}

/// A window of `buf` of `len` bytes starting on an [`ALIGN`] boundary (`buf` grown to hold it),
/// for a chunk that may be written directly.
pub fn aligned(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() < len + ALIGN {
        buf.resize(len + ALIGN, 0);
    }
    let skip = buf.as_ptr().align_offset(ALIGN).min(ALIGN);
    &mut buf[skip..skip + len]
}

/// Writes `buf` at `offset`, leaving out its all-zero SPARSE_RUN-sized blocks. Returns the bytes
/// written.
pub fn write_sparse(f: &File, buf: &[u8], offset: u64) -> std::io::Result<u64> {
    let mut written = 0u64;
    let mut start = None; // start of the pending run of non-zero blocks
    let blocks = buf.len().div_ceil(SPARSE_RUN);
    for b in 0..=blocks {
        let block = (b < blocks).then(|| &buf[b * SPARSE_RUN..((b + 1) * SPARSE_RUN).min(buf.len())]);
        match (block.is_some_and(|blk| !is_all_zero(blk)), start) {
            (true, None) => start = Some(b * SPARSE_RUN),
            (false, Some(s)) => {
                let end = (b * SPARSE_RUN).min(buf.len());
                write_all_at(f, &buf[s..end], offset + s as u64)?;
                written += (end - s) as u64;
                start = None;
            }
            _ => {}
        }
    }
    Ok(written)
}

/// Has the kernel start writing back the `len` bytes at `offset` that a chunk just wrote
/// (`written` of them were not holes), without waiting: the sync that ends a restore then waits
/// for the last chunks only, not for the whole volume (Linux; elsewhere the sync does it all).
/// Advice only: the sync reports any write error.
fn start_writeback(f: &File, offset: u64, written: u64, len: usize) {
    #[cfg(target_os = "linux")]
    if written > 0 {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: a system call on a descriptor `f` holds open; it touches no memory of ours.
        unsafe {
            libc::sync_file_range(f.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (f, offset, written, len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::disk::read_exact_at;
    use std::fs::OpenOptions;
    use std::path::PathBuf;

    fn new_file(dir: &Path) -> (PathBuf, File) {
        let path = dir.join("out.img");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("create");
        (path, f)
    }

    #[test]
    fn zero_runs_inside_a_chunk_are_left_as_holes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_, f) = new_file(dir.path());
        let len = 16 * SPARSE_RUN;
        f.set_len(len as u64 * 2).expect("size");
        let mut buf = vec![7u8; len];
        // Zeros: one whole aligned block, a run spanning two blocks, and a short run.
        buf[2 * SPARSE_RUN..3 * SPARSE_RUN].fill(0);
        buf[5 * SPARSE_RUN..7 * SPARSE_RUN].fill(0);
        buf[10 * SPARSE_RUN + 5..10 * SPARSE_RUN + 100].fill(0);
        let written = write_sparse(&f, &buf, len as u64).expect("write");
        assert_eq!(written, (len - 3 * SPARSE_RUN) as u64);
        let mut back = vec![1u8; len];
        read_exact_at(&f, &mut back, len as u64).expect("read");
        assert!(back == buf, "the bytes read back are the chunk's");
        // A chunk that is all zeros writes nothing; one with no zero block writes whole.
        assert_eq!(write_sparse(&f, &vec![0u8; len], 0).expect("zeros"), 0);
        assert_eq!(write_sparse(&f, &[1u8; 100], 0).expect("short"), 100);
    }

    /// Aligned chunks go around the page cache, an unaligned tail and an unaligned buffer are
    /// written buffered, and every byte reads back as written.
    #[test]
    fn direct_and_buffered_writes_read_back_the_same_bytes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, f) = new_file(dir.path());
        let size = 3 * SPARSE_RUN as u64 + 1000;
        f.set_len(size).expect("size");
        let sink = ChunkSink::new(&f, &path, true, true);
        let mut a = Vec::new();
        let chunk = aligned(&mut a, 2 * SPARSE_RUN);
        assert_eq!(chunk.as_ptr().align_offset(ALIGN), 0);
        chunk.fill(3);
        assert_eq!(sink.write(chunk, 0, false).expect("aligned"), 2 * SPARSE_RUN as u64);
        // The tail: 1000 bytes past a full block, not a multiple of any block size.
        let tail = vec![9u8; SPARSE_RUN + 1000];
        assert_eq!(
            sink.write(&tail, 2 * SPARSE_RUN as u64, false).expect("tail"),
            tail.len() as u64
        );
        // Overwrite a middle piece at an offset off the page grid.
        sink.write(&[5u8; 10], 4097, false).expect("unaligned");
        f.sync_all().expect("sync");
        let mut back = vec![0u8; size as usize];
        read_exact_at(&f, &mut back, 0).expect("read");
        let mut want = vec![3u8; 2 * SPARSE_RUN];
        want[4097..4107].fill(5);
        want.extend_from_slice(&tail);
        assert!(back == want, "the file holds what was written");
    }
}
