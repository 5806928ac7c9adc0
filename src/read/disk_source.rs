//! The disk of a bundle as [`DiskSource`]: readable at any offset through two [`BundleView`]s
//! (C: and the disk stream), its partition table patched in memory, zeros wherever the bundle
//! holds nothing; and [`for_each_present`], which walks it in ascending order, skipping zero
//! runs, for the image writers ([`super::image`], [`super::vmdk`], [`super::vhdx`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::disk::{TableIo, disk_of, patch_table};
use super::opened::OpenedBundle;
use super::view::BundleView;
use crate::Error;
use crate::format::disk::DiskInfo;

/// Bytes of the disk read, checked for zeros and converted at a time.
const WINDOW: u64 = 16 << 20;

/// Where a run of the disk comes from.
#[derive(Debug, Clone, Copy)]
enum Src {
    /// C:, from this offset of the volume.
    Volume(u64),
    /// The disk stream, from this offset.
    Stream(u64),
}

#[derive(Debug, Clone, Copy)]
struct Extent {
    offset: u64,
    len: u64,
    src: Src,
}

/// The disk of a bundle, readable at any offset; zeros wherever the bundle holds nothing.
pub struct DiskSource {
    size: u64,
    volume: BundleView,
    stream: BundleView,
    extents: Vec<Extent>,
    /// Sectors of the partition table as [`patch_table`] rewrote them.
    patches: Vec<(u64, Vec<u8>)>,
}

/// The partition table patched over a [`DiskSource`], in memory.
struct Patcher<'a> {
    src: &'a DiskSource,
    writes: Mutex<Vec<(u64, Vec<u8>)>>,
}

impl TableIo for Patcher<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.src
            .read_unpatched(buf, offset)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let w = self.writes.lock().map_err(|_| std::io::Error::other("poisoned"))?;
        overlay(buf, offset, &w);
        Ok(())
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|e| e > self.src.size) {
            return Err(std::io::Error::other(
                "a partition table write past the end of the disk",
            ));
        }
        self.writes
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .push((offset, buf.to_vec()));
        Ok(())
    }
}

/// Copies over `buf` (disk bytes from `offset`) the parts of `writes` it covers, in order.
fn overlay(buf: &mut [u8], offset: u64, writes: &[(u64, Vec<u8>)]) {
    let end = offset + buf.len() as u64;
    for (at, bytes) in writes {
        let (a, b) = ((*at).max(offset), (at + bytes.len() as u64).min(end));
        if a < b {
            buf[(a - offset) as usize..(b - offset) as usize]
                .copy_from_slice(&bytes[(a - at) as usize..(b - at) as usize]);
        }
    }
}

impl DiskSource {
    /// The disk of bundle `b` (which must keep it: format 3, not `--volume-only`), its table
    /// patched as `restore --disk` patches it; `fetchers` ranged reads at once per stream.
    pub fn open(b: OpenedBundle<'static>, fetchers: usize) -> Result<(Self, DiskInfo), Error> {
        let (d, ds) = disk_of(&b)?;
        let root = b.manifest.source.root.offset;
        let vsize = b.manifest.volume_size;
        let stream_size = ds.manifest.volume_size;
        let mut extents = vec![Extent {
            offset: root,
            len: vsize,
            src: Src::Volume(0),
        }];
        for r in &d.regions {
            let len = r.length.min(stream_size.saturating_sub(r.stream_offset));
            if len > 0 {
                extents.push(Extent {
                    offset: r.offset,
                    len,
                    src: Src::Stream(r.stream_offset),
                });
            }
        }
        extents.sort_by_key(|e| e.offset);
        if extents
            .iter()
            .any(|e| e.offset.checked_add(e.len).is_none_or(|end| end > d.disk_size))
        {
            return Err(crate::format::FormatError::Manifest {
                key: "disk".into(),
                problem: format!("a region lies past the end of the {}-byte disk", d.disk_size),
            }
            .into());
        }
        let mut s = Self {
            size: d.disk_size,
            volume: BundleView::new(b, fetchers),
            stream: BundleView::new(ds, fetchers),
            extents,
            patches: Vec::new(),
        };
        let p = Patcher {
            src: &s,
            writes: Mutex::new(Vec::new()),
        };
        patch_table(&p, &d)?;
        let patches = p.writes.into_inner().unwrap_or_default();
        s.patches = patches;
        Ok((s, d))
    }

    /// Bytes of the disk.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether any byte of `offset..offset + len` comes from the bundle (elsewhere: zeros).
    pub fn has_data(&self, offset: u64, len: u64) -> bool {
        let end = offset.saturating_add(len);
        self.extents.iter().any(|e| e.offset < end && offset < e.offset + e.len)
    }

    fn read_unpatched(&self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        buf.fill(0);
        let end = offset + buf.len() as u64;
        for e in &self.extents {
            let (a, b) = (e.offset.max(offset), (e.offset + e.len).min(end));
            if a >= b {
                continue;
            }
            let dst = &mut buf[(a - offset) as usize..(b - offset) as usize];
            match e.src {
                Src::Volume(at) => self.volume.read_volume(dst, at + (a - e.offset))?,
                Src::Stream(at) => self.stream.read_volume(dst, at + (a - e.offset))?,
            }
        }
        Ok(())
    }

    /// Fills `buf` with the disk's bytes from `offset` (zeros past the end).
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        let n = (buf.len() as u64).min(self.size.saturating_sub(offset)) as usize;
        buf[n..].fill(0);
        self.read_unpatched(&mut buf[..n], offset)?;
        overlay(&mut buf[..n], offset, &self.patches);
        Ok(())
    }
}

/// Calls `prepare` (in parallel, `threads` at once) then `emit` (in ascending order) for every
/// `unit`-sized piece of the disk that holds a non-zero byte; pieces of zeros are skipped, and
/// runs the bundle holds nothing for are never read. The last piece is padded with zeros.
pub fn for_each_present<T: Send>(
    src: &DiskSource,
    unit: u64,
    threads: usize,
    progress: &dyn crate::progress::Progress,
    cancel: &AtomicBool,
    prepare: &(dyn Fn(&[u8]) -> Result<T, Error> + Sync),
    emit: &mut dyn FnMut(u64, T) -> Result<(), Error>,
) -> Result<(), Error> {
    let window = WINDOW.div_ceil(unit).max(1) * unit;
    let end = src.size().div_ceil(unit) * unit;
    let mut buf = Vec::new();
    let mut at = 0;
    while at < end {
        if cancel.load(Ordering::SeqCst) {
            return Err(crate::store::StoreError::Cancelled { op: "restore --disk" }.into());
        }
        let n = window.min(end - at);
        if !src.has_data(at, n) {
            progress.read(n);
            at += n;
            continue;
        }
        buf.resize(n as usize, 0);
        src.read(&mut buf, at)?;
        progress.read(n);
        let pieces: Vec<(u64, &[u8])> = buf
            .chunks(unit as usize)
            .enumerate()
            .filter(|(_, c)| c.iter().any(|&x| x != 0))
            .map(|(k, c)| (at / unit + k as u64, c))
            .collect();
        for (k, r) in parallel_map(&pieces, threads, prepare) {
            emit(k, r?)?;
        }
        at += n;
    }
    Ok(())
}

/// `f` over every piece, `threads` at once, the results in the pieces' order.
fn parallel_map<T: Send>(
    pieces: &[(u64, &[u8])],
    threads: usize,
    f: &(dyn Fn(&[u8]) -> Result<T, Error> + Sync),
) -> Vec<(u64, Result<T, Error>)> {
    let per = pieces.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = pieces
            .chunks(per)
            .map(|group| s.spawn(move || group.iter().map(|(k, p)| (*k, f(p))).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![(0, Err(Error::Internal("a disk image thread panicked".into())))])
            })
            .collect()
    })
}
