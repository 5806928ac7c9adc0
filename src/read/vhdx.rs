//! Dynamic VHDX ([MS-VHDX]): the file type identifier, two headers and two region tables
//! (CRC-32C each) in the first MiB, an empty 1 MiB log, the metadata region (file parameters,
//! virtual disk size and id, logical and physical sector size, page 83 data), the BAT, then the
//! payload blocks (1 MiB each) that hold a non-zero byte, in ascending order. Blocks of zeros
//! stay `PAYLOAD_BLOCK_NOT_PRESENT`: never written.
//!
//! The tables come first in the file but are known only at the end: the body is written after
//! a head of known size (the BAT's size follows from the disk's), and the head last (a file:
//! at offset 0; an S3 upload: as part 1, sent after the others).

use std::sync::atomic::AtomicBool;

use super::disk_source::{DiskSource, for_each_present};
use super::image_out::Target;
use crate::Error;

const MIB: u64 = 1 << 20;
/// Bytes of a payload block.
pub const BLOCK: u64 = MIB;
const LOG_OFFSET: u64 = MIB;
const LOG_LENGTH: u64 = MIB;
const METADATA_OFFSET: u64 = 2 * MIB;
const METADATA_LENGTH: u64 = MIB;
const BAT_OFFSET: u64 = 3 * MIB;
pub const PAYLOAD_BLOCK_NOT_PRESENT: u64 = 0;
pub const PAYLOAD_BLOCK_FULLY_PRESENT: u64 = 6;

const BAT_GUID: &str = "2DC27766-F623-4200-9D64-115E9BFD4A08";
const METADATA_GUID: &str = "8B7CA206-4790-4B9A-B8FE-575F050F886E";
const FILE_PARAMETERS: &str = "CAA16737-FA36-4D43-B3B6-33F0AA44E76B";
const VIRTUAL_DISK_SIZE: &str = "2FA54224-CD1B-4876-B211-5DBED83BF4B8";
const VIRTUAL_DISK_ID: &str = "BECA12AB-B2E6-4523-93EF-C309E000C746";
const LOGICAL_SECTOR_SIZE: &str = "8141BF1D-A96F-4709-BA47-F233A8FAAB5F";
const PHYSICAL_SECTOR_SIZE: &str = "CDA348C7-445D-4471-9CC9-E9885251C556";

/// A GUID in its on-disk form (the first three fields little-endian).
fn guid(s: &str) -> [u8; 16] {
    let h: Vec<u8> = s
        .split('-')
        .flat_map(|p| {
            p.as_bytes()
                .chunks(2)
                .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap_or("0"), 16).unwrap_or(0))
        })
        .collect();
    let mut g = [0u8; 16];
    g.copy_from_slice(&h[..16]);
    g[0..4].reverse();
    g[4..6].reverse();
    g[6..8].reverse();
    g
}

/// The layout of a VHDX of a disk.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub disk_size: u64,
    pub sector_size: u32,
    pub blocks: u64,
    pub chunk_ratio: u64,
    pub bat_entries: u64,
    pub bat_bytes: u64,
    /// Bytes before the first payload block.
    pub head_len: u64,
}

impl Layout {
    /// The layout for a disk of `disk_size` bytes with `sector_size`-byte logical sectors,
    /// the head at least `min_head` bytes long.
    pub fn new(disk_size: u64, sector_size: u32, min_head: u64) -> Result<Self, Error> {
        if !matches!(sector_size, 512 | 4096) || disk_size == 0 || !disk_size.is_multiple_of(u64::from(sector_size)) {
            return Err(Error::InvalidParameter {
                parameter: "--format",
                message: format!(
                    "a VHDX needs 512- or 4096-byte sectors and a whole number of them; this disk has {disk_size} bytes of {sector_size}-byte sectors: pick --format vmdk or raw"
                ),
            });
        }
        if disk_size > 64 << 40 {
            return Err(Error::InvalidParameter {
                parameter: "--format",
                message: format!("a VHDX holds at most 64 TiB and this disk is {disk_size} bytes"),
            });
        }
        let blocks = disk_size.div_ceil(BLOCK);
        let chunk_ratio = (1u64 << 23) * u64::from(sector_size) / BLOCK;
        let bat_entries = blocks + (blocks - 1) / chunk_ratio;
        let bat_bytes = (bat_entries * 8).div_ceil(MIB) * MIB;
        let head_len = (BAT_OFFSET + bat_bytes).max(min_head).div_ceil(MIB) * MIB;
        Ok(Self {
            disk_size,
            sector_size,
            blocks,
            chunk_ratio,
            bat_entries,
            bat_bytes,
            head_len,
        })
    }

    /// The BAT entry of payload block `i`.
    pub fn bat_index(&self, block: u64) -> usize {
        (block + block / self.chunk_ratio) as usize
    }

    /// The head: identifier, headers, region tables, log, metadata, and `bat`.
    pub fn head(&self, bat: &[u64], seed: [u8; 32]) -> Vec<u8> {
        let mut h = vec![0u8; self.head_len as usize];
        h[0..8].copy_from_slice(b"vhdxfile");
        for (k, c) in "winbundle".encode_utf16().enumerate() {
            h[8 + 2 * k..10 + 2 * k].copy_from_slice(&c.to_le_bytes());
        }
        let mut ids = [[0u8; 16]; 3];
        for (k, id) in ids.iter_mut().enumerate() {
            id.copy_from_slice(&seed[k * 8..k * 8 + 16]);
            id[7] = (id[7] & 0x0f) | 0x40; // version 4
            id[8] = (id[8] & 0x3f) | 0x80;
        }
        for (seq, at) in [(1u64, 64 * 1024), (2, 128 * 1024)] {
            let x = &mut h[at..at + 4096];
            x[0..4].copy_from_slice(b"head");
            x[8..16].copy_from_slice(&seq.to_le_bytes());
            x[16..32].copy_from_slice(&ids[0]); // file write GUID
            x[32..48].copy_from_slice(&ids[1]); // data write GUID
            // log GUID zero: no log to replay
            x[64..66].copy_from_slice(&0u16.to_le_bytes());
            x[66..68].copy_from_slice(&1u16.to_le_bytes());
            x[68..72].copy_from_slice(&(LOG_LENGTH as u32).to_le_bytes());
            x[72..80].copy_from_slice(&LOG_OFFSET.to_le_bytes());
            let crc = crc32c::crc32c(x);
            x[4..8].copy_from_slice(&crc.to_le_bytes());
        }
        for at in [192 * 1024, 256 * 1024] {
            let x = &mut h[at..at + 64 * 1024];
            x[0..4].copy_from_slice(b"regi");
            x[8..12].copy_from_slice(&2u32.to_le_bytes());
            let regions = [
                (BAT_GUID, BAT_OFFSET, self.bat_bytes),
                (METADATA_GUID, METADATA_OFFSET, METADATA_LENGTH),
            ];
            for (k, (g, off, len)) in regions.iter().enumerate() {
                let e = &mut x[16 + 32 * k..48 + 32 * k];
                e[0..16].copy_from_slice(&guid(g));
                e[16..24].copy_from_slice(&off.to_le_bytes());
                e[24..28].copy_from_slice(&(*len as u32).to_le_bytes());
                e[28..32].copy_from_slice(&1u32.to_le_bytes()); // required
            }
            let crc = crc32c::crc32c(x);
            x[4..8].copy_from_slice(&crc.to_le_bytes());
        }
        let m = &mut h[METADATA_OFFSET as usize..(METADATA_OFFSET + METADATA_LENGTH) as usize];
        m[0..8].copy_from_slice(b"metadata");
        let mut file_params = [0u8; 8];
        file_params[0..4].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        // Flags: 4 required, 2 a property of the virtual disk. The virtual disk id is what
        // SCSI page 83 reports (the item qemu calls "page 83 data").
        let items: [(&str, Vec<u8>, u32); 5] = [
            (FILE_PARAMETERS, file_params.to_vec(), 4),
            (VIRTUAL_DISK_SIZE, self.disk_size.to_le_bytes().to_vec(), 6),
            (VIRTUAL_DISK_ID, ids[2].to_vec(), 6),
            (LOGICAL_SECTOR_SIZE, self.sector_size.to_le_bytes().to_vec(), 6),
            (PHYSICAL_SECTOR_SIZE, self.sector_size.to_le_bytes().to_vec(), 6),
        ];
        m[10..12].copy_from_slice(&(items.len() as u16).to_le_bytes());
        let mut data_at = 64 * 1024usize;
        for (k, (g, value, flags)) in items.iter().enumerate() {
            let e = &mut m[32 + 32 * k..64 + 32 * k];
            e[0..16].copy_from_slice(&guid(g));
            e[16..20].copy_from_slice(&(data_at as u32).to_le_bytes());
            e[20..24].copy_from_slice(&(value.len() as u32).to_le_bytes());
            e[24..28].copy_from_slice(&flags.to_le_bytes());
            m[data_at..data_at + value.len()].copy_from_slice(value);
            data_at += value.len().div_ceil(8) * 8;
        }
        let b = &mut h[BAT_OFFSET as usize..(BAT_OFFSET + self.bat_bytes) as usize];
        for (k, e) in bat.iter().enumerate() {
            b[8 * k..8 * k + 8].copy_from_slice(&e.to_le_bytes());
        }
        h
    }
}

/// The VHDX writer's state: the layout and the BAT as blocks are placed.
pub struct Vhdx {
    pub layout: Layout,
    bat: Vec<u64>,
    /// File offset of the next payload block.
    next_at: u64,
    last_block: Option<u64>,
}

impl Vhdx {
    pub fn new(layout: Layout) -> Self {
        Self {
            bat: vec![PAYLOAD_BLOCK_NOT_PRESENT; layout.bat_entries as usize],
            next_at: layout.head_len,
            last_block: None,
            layout,
        }
    }

    /// Records payload block `block` as the next one in the file (blocks in ascending order).
    pub fn place(&mut self, block: u64) -> Result<(), Error> {
        if self.last_block.is_some_and(|l| block <= l) || block >= self.layout.blocks {
            return Err(Error::Internal(format!(
                "VHDX block {block} out of order or past the disk"
            )));
        }
        self.last_block = Some(block);
        let i = self.layout.bat_index(block);
        self.bat[i] = self.next_at | PAYLOAD_BLOCK_FULLY_PRESENT;
        self.next_at += BLOCK;
        Ok(())
    }

    pub fn head(&self, seed: [u8; 32]) -> Vec<u8> {
        self.layout.head(&self.bat, seed)
    }
}

/// Writes the disk of `src` as a dynamic VHDX; returns (image bytes, disk bytes written).
pub fn write(
    src: &DiskSource,
    sector_size: u32,
    target: &Target<'_>,
    seed: [u8; 32],
    progress: &dyn crate::progress::Progress,
    cancel: &AtomicBool,
) -> Result<(u64, u64), Error> {
    let layout = Layout::new(src.size(), sector_size, target.min_head(src.size()))?;
    let mut v = Vhdx::new(layout);
    let mut out = target.open(layout.head_len, src.size())?;
    let mut written = 0u64;
    let r = for_each_present(src, BLOCK, 1, progress, cancel, &|p| Ok(p.to_vec()), &mut |k, block| {
        v.place(k)?;
        let at = k * BLOCK;
        out.write(&block)?;
        progress.stored(BLOCK);
        written += BLOCK.min(src.size() - at);
        Ok(())
    });
    match r {
        Ok(()) => Ok((out.finish(&v.head(seed))?, written)),
        Err(e) => {
            out.abort();
            Err(e)
        }
    }
}

/// Reads a VHDX this module wrote back into its disk and the number of blocks present (tests,
/// fuzzing): checks the header and region table CRCs and follows the BAT.
pub fn read_back(file: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default());
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
    if file.len() < 4 * MIB as usize || &file[..8] != b"vhdxfile" {
        return Err("not a VHDX".into());
    }
    for (at, len) in [(65536, 4096), (131072, 4096), (196608, 65536), (262144, 65536)] {
        let mut x = file[at..at + len].to_vec();
        let crc = u32_at(&x, 4);
        x[4..8].fill(0);
        if crc32c::crc32c(&x) != crc {
            return Err(format!("bad CRC-32C at {at}"));
        }
    }
    let m = &file[METADATA_OFFSET as usize..];
    let mut size = None;
    let mut ss = None;
    for k in 0..usize::from(u16::from_le_bytes([m[10], m[11]])) {
        let e = &m[32 + 32 * k..64 + 32 * k];
        let off = u32_at(e, 16) as usize;
        if e[..16] == guid(VIRTUAL_DISK_SIZE) {
            size = Some(u64_at(m, off));
        }
        if e[..16] == guid(LOGICAL_SECTOR_SIZE) {
            ss = Some(u32_at(m, off));
        }
    }
    let (Some(size), Some(ss)) = (size, ss) else {
        return Err("metadata lacks the size or the sector size".into());
    };
    let l = Layout::new(size, ss, 0).map_err(|e| e.to_string())?;
    let mut disk = vec![0u8; size as usize];
    let mut present = 0;
    for b in 0..l.blocks {
        let e = u64_at(file, BAT_OFFSET as usize + 8 * l.bat_index(b));
        match e & 7 {
            PAYLOAD_BLOCK_NOT_PRESENT => {}
            PAYLOAD_BLOCK_FULLY_PRESENT => {
                present += 1;
                let off = (e & !0xfffff) as usize;
                let start = (b * BLOCK) as usize;
                let n = (BLOCK as usize).min(disk.len() - start);
                disk[start..start + n].copy_from_slice(file.get(off..off + n).ok_or("block past the end")?);
            }
            s => return Err(format!("block {b}: state {s}")),
        }
    }
    Ok((disk, present))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::vmdk::tests::{Rng, sparse_disk};

    fn vhdx_of(disk: &[u8], ss: u32) -> Vec<u8> {
        let mut v = Vhdx::new(Layout::new(disk.len() as u64, ss, 0).unwrap());
        let mut body = Vec::new();
        for (k, b) in disk.chunks(BLOCK as usize).enumerate() {
            if b.iter().any(|&x| x != 0) {
                v.place(k as u64).unwrap();
                body.extend_from_slice(b);
                body.resize(body.len().div_ceil(BLOCK as usize) * BLOCK as usize, 0);
            }
        }
        let mut file = v.head([3; 32]);
        file.extend(body);
        file
    }

    /// Odd disk sizes (not a multiple of the 1 MiB block), random sparse contents, both sector
    /// sizes: the BAT maps every block back, and only non-zero blocks are present.
    #[test]
    fn the_bat_maps_odd_sized_disks_back() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let mut sizes: Vec<usize> = vec![4096, (1 << 20) - 4096, (1 << 20) + 4096, (3 << 20) + 512];
        for _ in 0..40 {
            sizes.push((1 + rng.next() as usize % (8 << 11)) * 512);
        }
        for size in sizes {
            for ss in [512u32, 4096] {
                if size % ss as usize != 0 {
                    assert!(Layout::new(size as u64, ss, 0).is_err());
                    continue;
                }
                let disk = sparse_disk(&mut rng, size);
                let (back, present) = read_back(&vhdx_of(&disk, ss)).unwrap();
                assert_eq!(back, disk, "size {size}, sectors of {ss}");
                let nonzero = disk
                    .chunks(BLOCK as usize)
                    .filter(|b| b.iter().any(|&x| x != 0))
                    .count();
                assert_eq!(present, nonzero);
            }
        }
    }

    /// Past 4 GiB (512-byte sectors) the BAT interleaves a sector bitmap entry after every
    /// 4096 payload entries: block 4096 is entry 4097.
    #[test]
    fn sector_bitmap_entries_interleave_the_bat() {
        let l = Layout::new((5 << 30) + 512, 512, 0).unwrap();
        assert_eq!((l.blocks, l.chunk_ratio, l.bat_entries), (5121, 4096, 5122));
        assert_eq!(
            (l.bat_index(4095), l.bat_index(4096), l.bat_index(5120)),
            (4095, 4097, 5121)
        );
        let mut v = Vhdx::new(l);
        for b in [0, 4095, 4096, 5120] {
            v.place(b).unwrap();
        }
        assert!(v.place(5120).is_err());
        let head = v.head([9; 32]);
        let entry = |i: usize| u64::from_le_bytes(head[BAT_OFFSET as usize + 8 * i..][..8].try_into().unwrap());
        assert_eq!(entry(4096), PAYLOAD_BLOCK_NOT_PRESENT, "the sector bitmap entry");
        assert_eq!(entry(4097), (l.head_len + 2 * BLOCK) | PAYLOAD_BLOCK_FULLY_PRESENT);
        assert_eq!(entry(5121), (l.head_len + 3 * BLOCK) | PAYLOAD_BLOCK_FULLY_PRESENT);
        let l4k = Layout::new(5 << 30, 4096, 0).unwrap();
        assert_eq!((l4k.chunk_ratio, l4k.bat_entries), (32768, 5120));
        assert!(Layout::new((1 << 20) + 512, 4096, 0).is_err());
    }
}
