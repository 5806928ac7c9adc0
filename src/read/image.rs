//! `restore --disk` as one ordered stream: the disk of a bundle read in ascending offsets
//! through a [`DiskSource`] (C: and the disk stream), its partition table patched in memory,
//! and written as a disk image ([`super::vmdk`], [`super::vhdx`], raw, fixed VHD) to a file or
//! into an object of a store (an S3 multipart upload: parallel parts, SHA-256 checksums and
//! resume, as for bundles), never through a local copy.
//!
//! Memory stays bounded: a window of the disk (16 MiB), the views' chunk caches, and the
//! format's own tables (a VMDK grain directory, a VHDX BAT: 8 bytes per MiB of disk).

use std::sync::atomic::AtomicBool;

use sha2::{Digest, Sha256};

use super::disk::DiskFormat;
pub use super::disk_source::{DiskSource, for_each_present};
pub use super::image_out::{ImageOut, Target};
use super::opened::OpenedBundle;
use crate::Error;
use crate::format::disk::DiskInfo;

/// What [`write_image`] did.
#[derive(Debug, Clone)]
pub struct ImageRestore {
    pub disk: DiskInfo,
    /// Bytes of the image.
    pub size: u64,
    /// Bytes of the disk that hold data and were written (zero runs are not).
    pub written_bytes: u64,
}

/// Writes the disk of bundle `b` as a `format` image to `target`, in one ordered pass.
pub fn write_image(
    b: OpenedBundle<'static>,
    format: DiskFormat,
    target: &Target<'_>,
    threads: usize,
    fetchers: usize,
    progress: &dyn crate::progress::Progress,
    cancel: &AtomicBool,
) -> Result<ImageRestore, Error> {
    let id = b.manifest.bundle_id.clone();
    let (src, d) = DiskSource::open(b, fetchers)?;
    progress.start(src.size());
    let seed: [u8; 32] = Sha256::digest(format!("winbundle disk image {id} {format:?}")).into();
    let (size, written_bytes) = match format {
        DiskFormat::Vmdk => super::vmdk::write(&src, target, seed, threads, progress, cancel)?,
        DiskFormat::Vhdx => super::vhdx::write(&src, d.sector_size, target, seed, progress, cancel)?,
        DiskFormat::Raw | DiskFormat::Vhd => write_flat(&src, format, target, seed, threads, progress, cancel)?,
    };
    progress.finish();
    Ok(ImageRestore {
        disk: d,
        size,
        written_bytes,
    })
}

/// Raw or fixed VHD, every byte (zeros included), in order.
fn write_flat(
    src: &DiskSource,
    format: DiskFormat,
    target: &Target<'_>,
    seed: [u8; 32],
    threads: usize,
    progress: &dyn crate::progress::Progress,
    cancel: &AtomicBool,
) -> Result<(u64, u64), Error> {
    const UNIT: u64 = 1 << 20;
    let size = src.size();
    let image = size + if format == DiskFormat::Vhd { 512 } else { 0 };
    if format == DiskFormat::Vhd && size > super::disk::MAX_VHD {
        return Err(Error::InvalidParameter {
            parameter: "--format",
            message: format!("a VHD holds at most 2040 GiB and this disk is {size} bytes: pick --format vhdx or vmdk"),
        });
    }
    let mut out = target.open(0, image)?;
    let zeros = vec![0u8; UNIT as usize];
    let mut next = 0u64;
    let mut written = 0u64;
    let fill = |out: &mut Box<dyn ImageOut>, from: u64, to: u64| -> Result<(), Error> {
        let mut at = from;
        while at < to {
            let k = (to - at).min(UNIT);
            out.write(&zeros[..k as usize])?;
            at += k;
        }
        Ok(())
    };
    let r = (|| {
        for_each_present(
            src,
            UNIT,
            threads,
            progress,
            cancel,
            &|p| Ok(p.to_vec()),
            &mut |k, p| {
                let at = k * UNIT;
                fill(&mut out, next, at)?;
                let n = (size - at).min(UNIT) as usize;
                out.write(&p[..n])?;
                progress.stored(n as u64);
                written += n as u64;
                next = at + n as u64;
                Ok(())
            },
        )?;
        fill(&mut out, next, size)?;
        if format == DiskFormat::Vhd {
            let mut id = [0u8; 16];
            id.copy_from_slice(&seed[..16]);
            let since_2000 = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |t| t.as_secs().saturating_sub(946_684_800) as u32);
            out.write(&super::disk::vhd_footer(size, id, since_2000))?;
        }
        Ok(())
    })();
    match r {
        Ok(()) => Ok((out.finish(&[])?, written)),
        Err(e) => {
            out.abort();
            Err(e)
        }
    }
}
