//! Stream-optimized VMDK (VMware's "Virtual Disk Format 1.1", the form an OVF export and EC2
//! VM Import use): a sparse extent header whose grain directory is "at the end", the embedded
//! descriptor (`createType="streamOptimized"`), then each allocated grain (128 sectors, 64 KiB)
//! deflated (zlib) behind a grain marker (its LBA and compressed size), each grain table behind
//! its marker once its 512 grains are past (tables of no grain are left out), the grain
//! directory behind its marker, a footer (the header again, with the directory's offset), and an
//! end-of-stream marker. Grains of zeros are never written. Everything is written in one pass,
//! in order: only the grain directory (4 bytes per 32 MiB of disk) stays in memory.

use std::io::Write;
use std::sync::atomic::AtomicBool;

use super::disk_source::{DiskSource, for_each_present};
use super::image_out::Target;
use crate::Error;

pub const SECTOR: u64 = 512;
/// Sectors of a grain.
pub const GRAIN_SECTORS: u64 = 128;
pub const GRAIN: u64 = GRAIN_SECTORS * SECTOR;
/// Grain table entries per table.
pub const GT_ENTRIES: u64 = 512;
/// Sectors before the first grain: the header, the descriptor, padding to a grain.
const OVERHEAD: u64 = GRAIN_SECTORS;
const DESCRIPTOR_SECTORS: u64 = 2;
const GD_AT_END: u64 = u64::MAX;
/// Flags: valid newline test, compressed grains, markers.
const FLAGS: u32 = 1 | (1 << 16) | (1 << 17);
const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;
/// Deflate level: 1, so compression keeps up with the reads on few cores.
const LEVEL: u32 = 1;

/// The writer's state: where it is in the file, the grain table being filled, the directory.
pub struct Vmdk {
    capacity: u64,
    gd: Vec<u32>,
    gt: Vec<u32>,
    /// The table `gt` belongs to.
    gt_index: u64,
    /// The next grain accepted (grains come in ascending order).
    next_grain: u64,
    /// Bytes of the file so far (always whole sectors).
    pos: u64,
}

/// The sparse extent header; `gd_offset` in sectors, or [`GD_AT_END`].
fn header(capacity: u64, gd_offset: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[0..4].copy_from_slice(b"KDMV");
    h[4..8].copy_from_slice(&3u32.to_le_bytes());
    h[8..12].copy_from_slice(&FLAGS.to_le_bytes());
    h[12..20].copy_from_slice(&capacity.to_le_bytes());
    h[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
    h[28..36].copy_from_slice(&1u64.to_le_bytes());
    h[36..44].copy_from_slice(&DESCRIPTOR_SECTORS.to_le_bytes());
    h[44..48].copy_from_slice(&(GT_ENTRIES as u32).to_le_bytes());
    h[48..56].copy_from_slice(&0u64.to_le_bytes());
    h[56..64].copy_from_slice(&gd_offset.to_le_bytes());
    h[64..72].copy_from_slice(&OVERHEAD.to_le_bytes());
    h[72] = 0;
    h[73] = b'\n';
    h[74] = b' ';
    h[75] = b'\r';
    h[76] = b'\n';
    h[77..79].copy_from_slice(&1u16.to_le_bytes());
    h
}

/// A metadata marker: `sectors` of metadata of `kind` follow.
fn marker(sectors: u64, kind: u32) -> [u8; 512] {
    let mut m = [0u8; 512];
    m[0..8].copy_from_slice(&sectors.to_le_bytes());
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    m
}

fn pad(v: &mut Vec<u8>) {
    v.resize(v.len().div_ceil(SECTOR as usize) * SECTOR as usize, 0);
}

/// Deflates (zlib) one grain.
pub fn compress(grain: &[u8]) -> Result<Vec<u8>, Error> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::with_capacity(grain.len() / 2), flate2::Compression::new(LEVEL));
    z.write_all(grain)
        .and_then(|()| z.finish())
        .map_err(|e| Error::Compress(format!("deflate a VMDK grain: {e}")))
}

impl Vmdk {
    /// A VMDK of a disk of `disk_size` bytes (rounded up to whole sectors).
    pub fn new(disk_size: u64) -> Self {
        let capacity = disk_size.div_ceil(SECTOR);
        let tables = capacity.div_ceil(GRAIN_SECTORS * GT_ENTRIES);
        Self {
            capacity,
            gd: vec![0; tables as usize],
            gt: vec![0; GT_ENTRIES as usize],
            gt_index: 0,
            next_grain: 0,
            pos: 0,
        }
    }

    /// Grains of the disk.
    pub fn grains(&self) -> u64 {
        self.capacity.div_ceil(GRAIN_SECTORS)
    }

    /// The start of the file: the header, the descriptor naming the extent `name`, padding.
    pub fn head(&mut self, name: &str, cid: u32) -> Vec<u8> {
        let mut v = header(self.capacity, GD_AT_END).to_vec();
        let cylinders = (self.capacity / (255 * 63)).clamp(1, 65535);
        let desc = format!(
            "# Disk DescriptorFile\nversion=1\nCID={cid:08x}\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n\n# Extent description\nRW {} SPARSE \"{name}\"\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.adapterType = \"lsilogic\"\nddb.geometry.cylinders = \"{cylinders}\"\nddb.geometry.heads = \"255\"\nddb.geometry.sectors = \"63\"\n",
            self.capacity
        );
        let room = (DESCRIPTOR_SECTORS * SECTOR) as usize;
        let mut d = desc.into_bytes();
        if d.len() > room {
            // Only a very long name gets here: the descriptor names the extent generically.
            d = String::from_utf8_lossy(&d).replace(name, "disk.vmdk").into_bytes();
        }
        d.truncate(room);
        v.extend_from_slice(&d);
        v.resize((OVERHEAD * SECTOR) as usize, 0);
        self.pos = v.len() as u64;
        v
    }

    /// The bytes of grain `index` (deflated as `compressed`), after the grain table of the
    /// grains before it when this grain starts a new table.
    pub fn grain(&mut self, index: u64, compressed: &[u8]) -> Result<Vec<u8>, Error> {
        if index < self.next_grain || index >= self.grains() {
            return Err(Error::Internal(format!(
                "VMDK grain {index} out of order or past the disk"
            )));
        }
        self.next_grain = index + 1;
        let mut v = Vec::with_capacity(compressed.len() + 2 * SECTOR as usize);
        if index / GT_ENTRIES != self.gt_index {
            v = self.flush_table(self.pos);
            self.gt_index = index / GT_ENTRIES;
        }
        let size =
            u32::try_from(compressed.len()).map_err(|_| Error::Internal("a compressed grain over 4 GiB".into()))?;
        self.gt[(index % GT_ENTRIES) as usize] = u32::try_from((self.pos + v.len() as u64) / SECTOR)
            .map_err(|_| Error::InvalidParameter {
                parameter: "--format",
                message: "the VMDK would pass 2 TiB of compressed grains, more than its grain tables address: pick --format vhdx".into(),
            })?;
        v.extend_from_slice(&(index * GRAIN_SECTORS).to_le_bytes());
        v.extend_from_slice(&size.to_le_bytes());
        v.extend_from_slice(compressed);
        pad(&mut v);
        self.pos += v.len() as u64;
        Ok(v)
    }

    /// The current grain table behind its marker (nothing when it has no grain), to be written
    /// at file offset `at`, recorded in the directory; the table is emptied.
    fn flush_table(&mut self, at: u64) -> Vec<u8> {
        if self.gt.iter().all(|&e| e == 0) {
            return Vec::new();
        }
        let sectors = GT_ENTRIES * 4 / SECTOR;
        let mut v = marker(sectors, MARKER_GT).to_vec();
        // The directory points at the table itself, after its marker.
        self.gd[self.gt_index as usize] = ((at + SECTOR) / SECTOR) as u32;
        for e in &mut self.gt {
            v.extend_from_slice(&e.to_le_bytes());
            *e = 0;
        }
        v
    }

    /// The end of the file: the last grain table, the directory, the footer, end of stream.
    pub fn tail(&mut self) -> Vec<u8> {
        let mut v = self.flush_table(self.pos);
        let gd_sectors = (self.gd.len() as u64 * 4).div_ceil(SECTOR).max(1);
        v.extend_from_slice(&marker(gd_sectors, MARKER_GD));
        let gd_offset = (self.pos + v.len() as u64) / SECTOR;
        for e in &self.gd {
            v.extend_from_slice(&e.to_le_bytes());
        }
        v.resize(v.len() + (gd_sectors * SECTOR) as usize - self.gd.len() * 4, 0);
        v.extend_from_slice(&marker(1, MARKER_FOOTER));
        v.extend_from_slice(&header(self.capacity, gd_offset));
        v.extend_from_slice(&marker(0, MARKER_EOS));
        self.pos += v.len() as u64;
        v
    }
}

/// Writes the disk of `src` as a stream-optimized VMDK; returns (image bytes, disk bytes
/// written).
pub fn write(
    src: &DiskSource,
    target: &Target<'_>,
    seed: [u8; 32],
    threads: usize,
    progress: &dyn crate::progress::Progress,
    cancel: &AtomicBool,
) -> Result<(u64, u64), Error> {
    let mut v = Vmdk::new(src.size());
    let mut out = target.open(0, src.size())?;
    let cid = u32::from_le_bytes([seed[0], seed[1], seed[2], seed[3]]);
    let mut written = 0u64;
    let r = (|| {
        out.write(&v.head(&target.file_name(), cid))?;
        for_each_present(src, GRAIN, threads, progress, cancel, &compress, &mut |k, z| {
            let bytes = v.grain(k, &z)?;
            out.write(&bytes)?;
            progress.stored(GRAIN);
            written += GRAIN.min(src.size() - k * GRAIN);
            Ok(())
        })?;
        out.write(&v.tail())
    })();
    match r {
        Ok(()) => Ok((out.finish(&[])?, written)),
        Err(e) => {
            out.abort();
            Err(e)
        }
    }
}

/// Reads a VMDK this module wrote back into the disk it holds and the number of grains
/// allocated (tests, fuzzing): follows the footer's grain directory, the tables, and inflates
/// each grain.
pub fn read_back(file: &[u8]) -> Result<(Vec<u8>, usize), String> {
    use std::io::Read;
    let n = file.len();
    if n < 3 * 512 || &file[..4] != b"KDMV" {
        return Err("not a VMDK".into());
    }
    let footer = &file[n - 1024..n - 512];
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default());
    if &footer[..4] != b"KDMV" || u32_at(&file[n - 1536..], 12) != MARKER_FOOTER {
        return Err("no footer".into());
    }
    let capacity = u64_at(footer, 12);
    let gd_off = (u64_at(footer, 56) * SECTOR) as usize;
    let tables = capacity.div_ceil(GRAIN_SECTORS * GT_ENTRIES) as usize;
    let mut disk = vec![0u8; (capacity * SECTOR) as usize];
    let mut allocated = 0;
    for t in 0..tables {
        let gt = u32_at(file.get(gd_off + 4 * t..).ok_or("GD past the end")?, 0) as usize * 512;
        if gt == 0 {
            continue;
        }
        for g in 0..GT_ENTRIES as usize {
            let at = u32_at(file.get(gt + 4 * g..).ok_or("GT past the end")?, 0) as usize * 512;
            if at == 0 {
                continue;
            }
            let lba = u64_at(file, at);
            let size = u32_at(file, at + 8) as usize;
            let index = t * GT_ENTRIES as usize + g;
            allocated += 1;
            if lba != index as u64 * GRAIN_SECTORS {
                return Err(format!("grain {index} says LBA {lba}"));
            }
            let mut plain = Vec::new();
            flate2::read::ZlibDecoder::new(file.get(at + 12..at + 12 + size).ok_or("grain past the end")?)
                .read_to_end(&mut plain)
                .map_err(|e| e.to_string())?;
            let start = index * GRAIN as usize;
            let end = (start + plain.len()).min(disk.len());
            disk[start..end].copy_from_slice(&plain[..end - start]);
        }
    }
    Ok((disk, allocated))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// xorshift64*: the tests' random numbers, reproducible.
    pub(crate) struct Rng(pub u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    /// A disk of `size` bytes with random sectors (and the last one) filled.
    pub(crate) fn sparse_disk(rng: &mut Rng, size: usize) -> Vec<u8> {
        let mut d = vec![0u8; size];
        let sectors = size / 512;
        for _ in 0..1 + rng.next() % 24 {
            let s = (rng.next() as usize) % sectors;
            let n = (1 + rng.next() as usize % 300).min(sectors - s);
            for b in &mut d[s * 512..(s + n) * 512] {
                *b = rng.next() as u8 | 1;
            }
        }
        d[size - 1] = 0xee;
        d
    }

    pub(crate) fn vmdk_of(disk: &[u8]) -> Vec<u8> {
        let mut v = Vmdk::new(disk.len() as u64);
        let mut out = v.head("t.vmdk", 7);
        for (k, g) in disk.chunks(GRAIN as usize).enumerate() {
            if g.iter().any(|&b| b != 0) {
                let mut full = g.to_vec();
                full.resize(GRAIN as usize, 0);
                out.extend(v.grain(k as u64, &compress(&full).unwrap()).unwrap());
            }
        }
        out.extend(v.tail());
        out
    }

    /// Odd disk sizes (not a multiple of the grain, or of the 32 MiB a grain table covers),
    /// random sparse contents: the grain tables and directory map every grain back, and only
    /// non-zero grains are allocated.
    #[test]
    fn grain_tables_map_odd_sized_disks_back() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut sizes: Vec<usize> = vec![
            512,
            1024,
            65536 - 512,
            65536 + 512,
            (32 << 20) - 512,
            (32 << 20) + 512,
            (64 << 20) + 3 * 512,
        ];
        for _ in 0..40 {
            sizes.push((1 + rng.next() as usize % (6 << 11)) * 512);
        }
        for size in sizes {
            let disk = sparse_disk(&mut rng, size);
            let file = vmdk_of(&disk);
            assert_eq!(file.len() % 512, 0);
            let (back, allocated) = read_back(&file).unwrap();
            assert_eq!(back, disk, "size {size}");
            let nonzero = disk
                .chunks(GRAIN as usize)
                .filter(|g| g.iter().any(|&b| b != 0))
                .count();
            assert_eq!(allocated, nonzero, "size {size}");
            let capacity = u64::from_le_bytes(file[12..20].try_into().unwrap());
            assert_eq!(capacity * 512, size as u64);
        }
    }

    #[test]
    fn grains_out_of_order_or_past_the_end_are_refused() {
        let mut v = Vmdk::new(3 * GRAIN);
        v.head("x", 0);
        v.grain(1, &[1]).unwrap();
        assert!(v.grain(1, &[1]).is_err());
        assert!(v.grain(0, &[1]).is_err());
        assert!(v.grain(3, &[1]).is_err());
    }
}
