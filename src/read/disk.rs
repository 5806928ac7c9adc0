//! `restore --disk`: the disk of a bundle rebuilt around C: — its partition table without the
//! left-out partitions (GPT CRCs fixed), the system partitions and C:, each at its original
//! offset — as a raw disk or a fixed VHD.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::opened::OpenedBundle;
use super::output::ChunkSink;
use crate::Error;
use crate::format::FormatError;
use crate::format::disk::{DiskInfo, place};
use crate::source::disk::{read_exact_at, write_all_at};
use crate::source::partition::TableKind;

/// The largest disk a VHD can describe.
pub(crate) const MAX_VHD: u64 = 2040 << 30;

fn damaged(what: String) -> Error {
    FormatError::Manifest {
        key: "disk".into(),
        problem: what,
    }
    .into()
}

fn io(context: &str, e: std::io::Error) -> Error {
    Error::Io {
        context: context.to_string(),
        source: e,
    }
}

/// Where [`patch_table`] reads and writes the table: the restored file, or the patched bytes
/// of a disk image that is streamed ([`super::image`]).
pub trait TableIo {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()>;
}

impl TableIo for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        read_exact_at(self, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        write_all_at(self, buf, offset)
    }
}

/// Removes the dropped partitions from the table written in `f` (a disk of `d.disk_size`
/// bytes): MBR entries (and an extended partition left with none of the kept ones), or GPT
/// entries with both headers' CRCs recomputed.
pub fn patch_table(f: &dyn TableIo, d: &DiskInfo) -> Result<(), Error> {
    let ss = u64::from(d.sector_size);
    let kept = |start: u64, len: u64| d.kept_partitions.iter().any(|p| p.offset == start && p.length == len);
    match d.partition_table {
        TableKind::Mbr => {
            let mut mbr = [0u8; 512];
            f.read_exact_at(&mut mbr, 0)
                .map_err(|e| io("read the restored MBR", e))?;
            for e in 0..4 {
                let at = 446 + 16 * e;
                let ty = mbr[at + 4];
                let start = u64::from(u32::from_le_bytes([
                    mbr[at + 8],
                    mbr[at + 9],
                    mbr[at + 10],
                    mbr[at + 11],
                ])) * ss;
                let len = u64::from(u32::from_le_bytes([
                    mbr[at + 12],
                    mbr[at + 13],
                    mbr[at + 14],
                    mbr[at + 15],
                ])) * ss;
                let keep = match ty {
                    0 => true,
                    0x05 | 0x0f | 0x85 => d
                        .kept_partitions
                        .iter()
                        .any(|p| p.offset >= start && p.offset + p.length <= start + len),
                    _ => kept(start, len),
                };
                if !keep {
                    mbr[at..at + 16].fill(0);
                }
            }
            f.write_all_at(&mbr, 0).map_err(|e| io("write the restored MBR", e))
        }
        TableKind::Gpt => {
            let last_lba = d.disk_size / ss - 1;
            for header_lba in [1, last_lba] {
                let mut h = vec![0u8; ss as usize];
                f.read_exact_at(&mut h, header_lba * ss)
                    .map_err(|e| io("read the restored GPT", e))?;
                if &h[..8] != b"EFI PART" {
                    return Err(damaged(format!("no GPT header at LBA {header_lba} of the kept table")));
                }
                let size = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) as usize;
                let entries_lba = u64::from_le_bytes(h[72..80].try_into().unwrap_or_default());
                let count = u32::from_le_bytes([h[80], h[81], h[82], h[83]]) as usize;
                let esize = u32::from_le_bytes([h[84], h[85], h[86], h[87]]) as usize;
                if !(92..=h.len()).contains(&size) || esize < 128 || count.saturating_mul(esize) > 1 << 20 {
                    return Err(damaged(format!("the GPT header at LBA {header_lba} is malformed")));
                }
                let mut entries = vec![0u8; count * esize];
                f.read_exact_at(&mut entries, entries_lba * ss)
                    .map_err(|e| io("read the restored GPT entries", e))?;
                for e in entries.chunks_mut(esize) {
                    if e[..16].iter().all(|&b| b == 0) {
                        continue;
                    }
                    let first = u64::from_le_bytes(e[32..40].try_into().unwrap_or_default());
                    let last = u64::from_le_bytes(e[40..48].try_into().unwrap_or_default());
                    if !kept(first * ss, (last + 1).saturating_sub(first) * ss) {
                        e.fill(0);
                    }
                }
                h[88..92].copy_from_slice(&crc32fast::hash(&entries).to_le_bytes());
                h[16..20].fill(0);
                let crc = crc32fast::hash(&h[..size]);
                h[16..20].copy_from_slice(&crc.to_le_bytes());
                f.write_all_at(&entries, entries_lba * ss)
                    .map_err(|e| io("write the restored GPT entries", e))?;
                f.write_all_at(&h, header_lba * ss)
                    .map_err(|e| io("write the restored GPT", e))?;
            }
            Ok(())
        }
        TableKind::None => Ok(()),
    }
}

/// The 512-byte footer that makes a raw disk of `size` bytes a fixed VHD. The creator is
/// recorded as Hyper-V's (`win `), so readers take the size from the footer rather than from
/// the CHS geometry (which cannot express every size).
pub fn vhd_footer(size: u64, unique_id: [u8; 16], seconds_since_2000: u32) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // format version 1.0
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset: none (fixed disk)
    f[24..28].copy_from_slice(&seconds_since_2000.to_be_bytes());
    f[28..32].copy_from_slice(b"win ");
    f[32..36].copy_from_slice(&0x0006_0001u32.to_be_bytes()); // creator version
    f[36..40].copy_from_slice(b"Wi2k"); // creator host OS: Windows
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    let (c, h, s) = chs(size);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&2u32.to_be_bytes()); // disk type: fixed
    f[68..84].copy_from_slice(&unique_id);
    let sum: u32 = f.iter().map(|&b| u32::from(b)).sum();
    f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    f
}

/// The VHD specification's CHS geometry for a disk of `size` bytes.
fn chs(size: u64) -> (u16, u8, u8) {
    let mut total = size / 512;
    total = total.min(65535 * 16 * 255);
    let (spt, heads, cth);
    if total >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = total / spt;
    } else {
        let mut s = 17;
        let mut c = total / s;
        let mut h = c.div_ceil(1024).max(4);
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    ((cth / heads).min(65535) as u16, heads as u8, spt as u8)
}

/// The format of a restored disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// The raw disk, byte for byte.
    Raw,
    /// The raw disk followed by a fixed-VHD footer (Hyper-V, EC2 VM import, qemu's `vpc`).
    Vhd,
    /// A stream-optimized VMDK: deflated grains, allocated ones only ([`super::vmdk`]).
    Vmdk,
    /// A dynamic VHDX: zero blocks left unallocated ([`super::vhdx`]).
    Vhdx,
}

/// What `restore --disk` did.
#[derive(Debug, Clone)]
pub struct DiskRestore {
    pub disk: DiskInfo,
    /// Bytes of the file or device written (the footer included).
    pub size: u64,
    pub written_bytes: u64,
}

/// Rebuilds the disk of bundle `b` at `out` (a file, written as `OUT.partial` and renamed once
/// everything checked out, or a block device): its partition table without the left-out
/// partitions, the system partitions, and C:, each at its original offset.
#[allow(clippy::too_many_arguments)]
pub fn restore(
    b: &OpenedBundle<'_>,
    out: &Path,
    format: DiskFormat,
    force: bool,
    direct: bool,
    threads: usize,
    progress: &dyn crate::progress::Progress,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<DiskRestore, Error> {
    let (d, ds) = disk_of(b)?;
    let (size, device) = check_target(&d, out, format, force)?;
    let target = if device { out.to_path_buf() } else { partial_path(out) };
    let f = open_output(&target, device)?;
    let result = (|| {
        size_output(&f, &target, out, size, device)?;
        progress.start(b.manifest.data.stream_size + ds.manifest.data.stream_size);
        // A new file reads back zeros where nothing is written; a device may hold old data.
        let sink = ChunkSink::new(&f, &target, !device, direct);
        let written = place_streams(b, &ds, &d, &sink, threads, progress, cancel)?;
        finish(&f, &d, format, &target, out, device)?;
        progress.finish();
        Ok(written)
    })();
    match result {
        Ok(written_bytes) => Ok(DiskRestore {
            disk: d,
            size,
            written_bytes,
        }),
        Err(e) => {
            if !device {
                let _ = std::fs::remove_file(&target);
            }
            Err(e)
        }
    }
}

/// The disk description and the disk stream of `b`, or why `restore --disk` cannot use it.
pub(crate) fn disk_of<'s>(b: &OpenedBundle<'s>) -> Result<(DiskInfo, OpenedBundle<'s>), Error> {
    let (Some(d), Some(ds)) = (b.manifest.disk.clone(), b.disk_stream()?) else {
        return Err(Error::InvalidParameter {
            parameter: "--disk",
            message: format!(
                "bundle {} keeps only C: (it was made from a bare volume, with --volume-only, or by an earlier winbundle: before format 3, or an incremental bundle before they kept the disk): restore the volume without --disk, or bundle the disk again",
                b.manifest.bundle_id
            ),
        });
    };
    Ok((d, ds))
}

/// Checks that the disk fits `format` and that `out` may be written: returns the size to
/// write and whether `out` is a device.
fn check_target(d: &DiskInfo, out: &Path, format: DiskFormat, force: bool) -> Result<(u64, bool), Error> {
    if matches!(format, DiskFormat::Vmdk | DiskFormat::Vhdx) {
        return Err(Error::Internal(
            "VMDK and VHDX are written by read::image::write_image".into(),
        ));
    }
    if format == DiskFormat::Vhd && d.disk_size > MAX_VHD {
        return Err(Error::InvalidParameter {
            parameter: "--format",
            message: format!(
                "a VHD holds at most 2040 GiB and this disk is {} bytes: restore it raw, then convert it (`qemu-img convert -f raw -O vhdx disk.img disk.vhdx`)",
                d.disk_size
            ),
        });
    }
    let size = d.disk_size + if format == DiskFormat::Vhd { 512 } else { 0 };
    let meta = std::fs::metadata(out).ok();
    if meta.as_ref().is_some_and(|m| m.is_dir()) {
        return Err(Error::InvalidParameter {
            parameter: "--disk",
            message: format!("{} is a directory", out.display()),
        });
    }
    let device = meta.as_ref().is_some_and(|m| !m.is_file());
    if meta.is_some() && !device && !force {
        return Err(Error::InvalidParameter {
            parameter: "--output",
            message: format!("{} exists: pass --force to replace it", out.display()),
        });
    }
    Ok((size, device))
}

/// `OUT.partial`.
pub(crate) fn partial_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_os_string();
    s.push(".partial");
    PathBuf::from(s)
}

/// Opens the device, or creates the file, that the disk is written to.
fn open_output(target: &Path, device: bool) -> Result<File, Error> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(!device)
        .truncate(!device)
        .open(target)
        .map_err(|e| io(&format!("open {}", target.display()), e))
}

/// Checks that a device holds `size` bytes, or sizes the file to them.
fn size_output(f: &File, target: &Path, out: &Path, size: u64, device: bool) -> Result<(), Error> {
    if device {
        let have = std::io::Seek::seek(&mut &*f, std::io::SeekFrom::End(0))
            .map_err(|e| io(&format!("size {}", target.display()), e))?;
        if have < size {
            return Err(Error::InvalidParameter {
                parameter: "--output",
                message: format!("{} holds {have} bytes, the disk needs {size}", out.display()),
            });
        }
    } else {
        f.set_len(size)
            .map_err(|e| io(&format!("size {}", target.display()), e))?;
    }
    Ok(())
}

/// Writes C: at its offset, then the disk stream's pieces at theirs; returns the bytes written.
fn place_streams(
    b: &OpenedBundle<'_>,
    ds: &OpenedBundle<'_>,
    d: &DiskInfo,
    sink: &ChunkSink<'_>,
    threads: usize,
    progress: &dyn crate::progress::Progress,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<u64, Error> {
    let cs = b.manifest.chunk_size;
    let root = b.manifest.source.root.offset;
    let mut written = 0;
    written += b
        .restore_placed(sink, &|i, n| Some((n, root + i * cs)), threads, progress, cancel)?
        .written_bytes;
    written += ds
        .restore_placed(sink, &|i, _| place(d, cs, i), threads, progress, cancel)?
        .written_bytes;
    Ok(written)
}

/// Patches the partition table, adds the VHD footer, syncs, and renames the file into place.
fn finish(f: &File, d: &DiskInfo, format: DiskFormat, target: &Path, out: &Path, device: bool) -> Result<(), Error> {
    patch_table(f, d)?;
    if format == DiskFormat::Vhd {
        let mut id = [0u8; 16];
        let _ = getrandom::fill(&mut id);
        let since_2000 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_secs().saturating_sub(946_684_800) as u32);
        write_all_at(f, &vhd_footer(d.disk_size, id, since_2000), d.disk_size)
            .map_err(|e| io(&format!("write {}", target.display()), e))?;
    }
    f.sync_all().map_err(|e| io(&format!("sync {}", target.display()), e))?;
    if !device {
        std::fs::rename(target, out)
            .map_err(|e| io(&format!("rename {} to {}", target.display(), out.display()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vhd_footer_checks_out() {
        let f = vhd_footer(96 << 20, [7; 16], 12345);
        assert_eq!(&f[..8], b"conectix");
        let mut copy = f;
        copy[64..68].fill(0);
        let sum: u32 = copy.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(u32::from_be_bytes(f[64..68].try_into().unwrap()), !sum);
        assert_eq!(u64::from_be_bytes(f[48..56].try_into().unwrap()), 96 << 20);
        // 96 MiB: 196608 sectors → 17 sectors a track, 12 heads, 963 cylinders (the spec's table).
        assert_eq!(chs(96 << 20), (963, 12, 17));
    }
}
