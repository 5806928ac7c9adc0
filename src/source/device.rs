//! What a [`DiskFile`](super::DiskFile) reads from: a [`Device`] gives positioned reads and says
//! what alignment it needs. An image file or a Linux block device needs none; a Windows volume,
//! disk or shadow-copy handle opened for unbuffered I/O needs offsets and lengths in whole
//! sectors and page-aligned buffers. [`read`] serves any read from any device, going through
//! aligned bounce buffers only when the read itself is not aligned, and counts what it did.

use std::alloc::Layout;
use std::fs::File;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Positioned reads from a disk, a volume or an image.
pub trait Device: Send + Sync {
    /// Fills `buf` from byte `offset`. With an [`Alignment`] other than none, only ever called
    /// with an aligned offset, length and buffer.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;

    /// What every read must respect.
    fn alignment(&self) -> Alignment {
        Alignment::NONE
    }

    /// How many reads the system can serve at once: open handles (a synchronous handle serves
    /// one request at a time).
    fn handles(&self) -> usize {
        1
    }
}

/// Read constraints: offsets and lengths in multiples of `sector` bytes, buffers at addresses
/// that are multiples of `memory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alignment {
    pub sector: u64,
    pub memory: usize,
}

impl Alignment {
    pub const NONE: Alignment = Alignment { sector: 1, memory: 1 };

    /// Unbuffered I/O on a device with `sector`-byte sectors: page-aligned buffers (page
    /// alignment satisfies any physical sector size up to 4 KiB).
    pub fn unbuffered(sector: u64) -> Self {
        Alignment {
            sector: sector.max(1),
            memory: (sector as usize).clamp(4096, 1 << 16),
        }
    }

    /// Unbuffered I/O on a device with these logical and physical sector sizes: offsets and
    /// lengths in whole *logical* sectors (a 512e disk, 512 logical / 4096 physical, has lengths
    /// that are multiples of 512 only), buffers aligned to the physical size (at least a page).
    pub fn for_sectors(logical: u64, physical: u64) -> Self {
        let logical = logical.max(1);
        Alignment {
            sector: logical,
            memory: (physical.max(logical) as usize).clamp(4096, 1 << 16),
        }
    }

    fn fits(&self, buf: &[u8], offset: u64) -> bool {
        offset.is_multiple_of(self.sector)
            && (buf.len() as u64).is_multiple_of(self.sector)
            && (buf.as_ptr() as usize).is_multiple_of(self.memory)
    }
}

/// An image file or a block device: no alignment needed.
#[derive(Debug)]
pub struct FileDevice(pub File);

impl Device for FileDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        super::fileio::read_exact_at(&self.0, buf, offset)
    }
}

/// A zeroed heap buffer with a chosen alignment.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: Layout,
}

// The buffer is plain bytes owned by this value.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    pub fn new(len: usize, align: usize) -> Self {
        let layout = Layout::from_size_align(len.max(1), align.max(1).next_power_of_two())
            .unwrap_or_else(|_| std::alloc::handle_alloc_error(Layout::new::<u8>()));
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self { ptr, layout }
    }

    pub fn len(&self) -> usize {
        self.layout.size()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: as in as_mut_slice, shared.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for layout.size() bytes, initialised (zeroed), owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// The largest bounce buffer: reads bigger than this are split, so memory stays bounded while
/// chunk-sized reads stay one request each.
pub const MAX_BOUNCE: usize = 4 << 20;

/// Counts of reads, kept by every [`DiskFile`](super::DiskFile).
#[derive(Debug, Default)]
pub struct ReadCounters {
    /// Reads asked for.
    pub reads: AtomicU64,
    /// Requests to the device that went straight into the caller's buffer.
    pub direct: AtomicU64,
    /// Requests to the device that went through an aligned bounce buffer.
    pub bounced: AtomicU64,
    /// Bytes the device delivered.
    pub device_bytes: AtomicU64,
    /// Requests at the device now, and the most there were at once.
    pub in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
}

/// Counts one request at the device while it lives.
struct InFlight<'a>(&'a ReadCounters);

impl<'a> InFlight<'a> {
    fn start(c: &'a ReadCounters) -> Self {
        let now = c.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        c.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A snapshot of [`ReadCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReadStats {
    /// Alignment the device needs (1: none).
    pub sector_alignment: u64,
    pub reads: u64,
    pub direct_requests: u64,
    pub bounced_requests: u64,
    pub device_bytes: u64,
    /// Handles open on the device (reads it can serve at once).
    pub handles: u64,
    /// The most requests that were at the device at once.
    pub max_in_flight: u64,
}

impl ReadCounters {
    pub fn stats(&self, a: Alignment, handles: usize) -> ReadStats {
        ReadStats {
            handles: handles as u64,
            max_in_flight: self.max_in_flight.load(Ordering::Relaxed),
            sector_alignment: a.sector,
            reads: self.reads.load(Ordering::Relaxed),
            direct_requests: self.direct.load(Ordering::Relaxed),
            bounced_requests: self.bounced.load(Ordering::Relaxed),
            device_bytes: self.device_bytes.load(Ordering::Relaxed),
        }
    }
}

/// Bounce buffers kept for reuse.
#[derive(Default)]
pub struct BouncePool(Mutex<Vec<AlignedBuf>>);

impl BouncePool {
    fn take(&self, len: usize, align: usize) -> AlignedBuf {
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match pool.iter().position(|b| b.len() >= len && b.layout.align() >= align) {
            Some(i) => pool.swap_remove(i),
            None => AlignedBuf::new(len.next_power_of_two().min(MAX_BOUNCE).max(len), align),
        }
    }

    fn give(&self, buf: AlignedBuf) {
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < 4 {
            pool.push(buf);
        }
    }
}

/// Fills `buf` from `offset` on `dev` (`size` bytes long), respecting its alignment: an aligned
/// read goes straight through; any other is widened to whole sectors, never past the end of the
/// device (Windows refuses such a read), and read into aligned bounce buffers (at most
/// [`MAX_BOUNCE`] bytes per request), and the asked-for bytes are copied out.
pub fn read(
    dev: &dyn Device,
    pool: &BouncePool,
    counters: &ReadCounters,
    buf: &mut [u8],
    offset: u64,
    size: u64,
) -> std::io::Result<()> {
    let a = dev.alignment();
    counters.reads.fetch_add(1, Ordering::Relaxed);
    if buf.is_empty() {
        return Ok(());
    }
    if a.fits(buf, offset) {
        counters.direct.fetch_add(1, Ordering::Relaxed);
        counters.device_bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        let _at_device = InFlight::start(counters);
        return dev.read_at(buf, offset);
    }
    let end = offset + buf.len() as u64;
    let mut pos = offset - offset % a.sector; // aligned start of the next request
    let piece = (MAX_BOUNCE as u64 / a.sector).max(1) * a.sector;
    while pos < end {
        let req_end = (pos + piece).min(end.div_ceil(a.sector) * a.sector).min(size.max(end));
        let len = (req_end - pos) as usize;
        if !(len as u64).is_multiple_of(a.sector) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "the device is {size} bytes, not a whole number of its {}-byte sectors: its last {} bytes cannot be read unbuffered",
                    a.sector,
                    size % a.sector
                ),
            ));
        }
        let mut bounce = pool.take(len, a.memory);
        let r = {
            let _at_device = InFlight::start(counters);
            dev.read_at(&mut bounce.as_mut_slice()[..len], pos)
        };
        counters.bounced.fetch_add(1, Ordering::Relaxed);
        counters.device_bytes.fetch_add(len as u64, Ordering::Relaxed);
        if let Err(e) = r {
            pool.give(bounce);
            return Err(e);
        }
        let (from, to) = (pos.max(offset), req_end.min(end));
        buf[(from - offset) as usize..(to - offset) as usize]
            .copy_from_slice(&bounce.as_mut_slice()[(from - pos) as usize..(to - pos) as usize]);
        pool.give(bounce);
        pos = req_end;
    }
    Ok(())
}

/// A device that refuses any read Windows would refuse on an unbuffered handle `size` bytes
/// long: unaligned, or extending past the end (ERROR_INVALID_PARAMETER). For tests, so the rules
/// are exercised on every platform.
pub struct StrictDevice<D> {
    pub inner: D,
    pub alignment: Alignment,
    pub size: u64,
}

impl<D: Device> Device for StrictDevice<D> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if offset.saturating_add(buf.len() as u64) > self.size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "read of {} bytes at byte {offset} extends past the end of the device ({} bytes): Windows refuses it (ERROR_INVALID_PARAMETER)",
                    buf.len(),
                    self.size
                ),
            ));
        }
        if !self.alignment.fits(buf, offset) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "unaligned read of {} bytes at byte {offset} into a buffer at {:p} (this device needs {}-byte sectors and {}-byte aligned buffers)",
                    buf.len(),
                    buf.as_ptr(),
                    self.alignment.sector,
                    self.alignment.memory
                ),
            ));
        }
        self.inner.read_at(buf, offset)
    }

    fn alignment(&self) -> Alignment {
        self.alignment
    }

    fn handles(&self) -> usize {
        self.inner.handles()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device whose byte at offset i is (i * 7 + i / 251) as u8.
    struct Pattern(u64);

    fn byte(i: u64) -> u8 {
        (i.wrapping_mul(7) + i / 251) as u8
    }

    impl Device for Pattern {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            assert!(offset + buf.len() as u64 <= self.0, "read past the end");
            for (k, b) in buf.iter_mut().enumerate() {
                *b = byte(offset + k as u64);
            }
            Ok(())
        }
    }

    #[test]
    fn any_read_through_a_strict_device_gives_the_right_bytes() {
        let size = 3 * MAX_BOUNCE as u64;
        for sector in [512u64, 4096] {
            let dev = StrictDevice {
                inner: Pattern(size),
                alignment: Alignment::unbuffered(sector),
                size,
            };
            let (pool, counters) = (BouncePool::default(), ReadCounters::default());
            for (offset, len) in [
                (0u64, 1usize),
                (1, 100),
                (511, 2),
                (4095, 4097),
                (sector, sector as usize),
                (12345, MAX_BOUNCE + 777),
                (size - 3, 3),
            ] {
                let mut v = vec![0u8; len + 1];
                let buf = &mut v[1..]; // never page-aligned
                read(&dev, &pool, &counters, buf, offset, size).unwrap();
                assert!(
                    buf.iter().enumerate().all(|(k, &b)| b == byte(offset + k as u64)),
                    "{offset}+{len}"
                );
            }
            // An aligned read into an aligned buffer goes straight through.
            let mut a = AlignedBuf::new(1 << 20, 4096);
            read(&dev, &pool, &counters, a.as_mut_slice(), 2 * sector, size).unwrap();
            let s = counters.stats(dev.alignment(), dev.handles());
            assert_eq!((s.reads, s.direct_requests), (8, 1), "{s:?}");
            assert!(s.bounced_requests >= 8, "{s:?}");
        }
    }

    #[test]
    fn the_tail_of_a_512e_device_is_read_in_logical_sectors_never_past_its_end() {
        // 512 logical, 4096 physical; a length that is a multiple of 512, not of 4096 (a GPT C:
        // ending at the last usable sector).
        let size = 4096 * 300 + 512 * 3;
        let a = Alignment::for_sectors(512, 4096);
        assert_eq!((a.sector, a.memory), (512, 4096));
        let dev = StrictDevice {
            inner: Pattern(size),
            alignment: a,
            size,
        };
        let (pool, counters) = (BouncePool::default(), ReadCounters::default());
        for (offset, len) in [
            (size - 1, 1usize),
            (size - 700, 700),
            (size - 5000, 5000),
            (4096 * 299 + 7, 4096),
        ] {
            let mut v = vec![0u8; len + 1];
            let buf = &mut v[1..];
            read(&dev, &pool, &counters, buf, offset, size).unwrap_or_else(|e| panic!("{offset}+{len}: {e}"));
            assert!(buf.iter().enumerate().all(|(k, &b)| b == byte(offset + k as u64)));
        }
        // The double refuses what Windows refuses: a whole 4096-byte read over the end.
        let mut b = AlignedBuf::new(4096, 4096);
        let e = dev.read_at(b.as_mut_slice(), 4096 * 300).unwrap_err();
        assert!(e.to_string().contains("past the end of the device"), "{e}");
        // A device whose length is not whole sectors of the alignment says so, without reading past it.
        let dev4k = StrictDevice {
            inner: Pattern(size),
            alignment: Alignment::unbuffered(4096),
            size,
        };
        let e = read(&dev4k, &pool, &counters, &mut [0u8; 10], size - 10, size).unwrap_err();
        assert!(
            e.to_string().contains("not a whole number of its 4096-byte sectors"),
            "{e}"
        );
    }

    #[test]
    fn reads_in_flight_are_counted() {
        struct Slow;
        impl Device for Slow {
            fn read_at(&self, buf: &mut [u8], _offset: u64) -> std::io::Result<()> {
                std::thread::sleep(std::time::Duration::from_millis(50));
                buf.fill(1);
                Ok(())
            }
        }
        let (pool, counters) = (BouncePool::default(), ReadCounters::default());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| read(&Slow, &pool, &counters, &mut [0u8; 10], 0, 100).unwrap());
            }
        });
        let st = counters.stats(Slow.alignment(), Slow.handles());
        assert_eq!(st.handles, 1);
        assert!(st.max_in_flight > 1, "{st:?}");
        assert_eq!(counters.in_flight.load(Ordering::SeqCst), 0);
    }
}
