//! A whole disk image from outside: partition tables (MBR, EBR chains, GPT), the NTFS boot
//! sector, MFT file records with their data runs and attribute lists, directory indexes (the
//! default excludes are looked up), the $Bitmap windows; then every chunk the plan would read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use winbundle::bundle::plan::{Plan, PlanOptions};
use winbundle::chunk::source::ChunkBuf;
use winbundle::source::DiskFile;

#[path = "bytes_device.rs"]
mod bytes_device;
use bytes_device::Bytes;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    let disk = DiskFile::from_device("fuzz.img".into(), Box::new(Bytes(data.to_vec())), len);
    let Ok(plan) = Plan::analyse(&disk, &PlanOptions::default()) else {
        return;
    };
    let Ok(mut src) = plan.chunk_source() else { return };
    // The first chunks, as the pipeline reads them (a hostile volume may claim any size).
    let chunk = 64 << 10;
    let mut buf = ChunkBuf::default();
    for i in 0..src.image_len().div_ceil(chunk).min(64) {
        let (start, end) = (i * chunk, ((i + 1) * chunk).min(src.image_len()));
        if src.data_ranges(start, end).is_err() || src.fill(start, end, &mut buf).is_err() {
            return;
        }
    }
});
