//! A bare NTFS volume from outside, read the way `winbundle ls`, `extract` and `cat` read the one
//! inside a bundle: the directory tree (indexes, file records, attribute lists), every entry's
//! facts (reparse points included), and the first bytes of every data stream (resident, runs,
//! sparse, LZNT1-compressed units, named streams, WOF-compressed files' XPRESS chunks), every
//! entry's security descriptor (`$Secure:$SDS`, or its own, as `extract --acls` reads them); and the change scan of an incremental bundle (every record parsed
//! against a parent that has none of them: `ntfs::changes::scan`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use winbundle::ntfs::NtfsVolume;
use winbundle::ntfs::wof::Contents;
use winbundle::source::DiskFile;

#[path = "bytes_device.rs"]
mod bytes_device;
use bytes_device::Bytes;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    let disk = DiskFile::from_device("fuzz.img".into(), Box::new(Bytes(data.to_vec())), len);
    let Ok(vol) = NtfsVolume::open(&disk, 0, len) else { return };
    let _ = winbundle::ntfs::changes::scan(&vol, Some(&[]), 1 << 20);
    let descriptors = vol.security_descriptors().ok();
    let mut seen = std::collections::HashSet::from([5u64]);
    let mut dirs = vec![5u64];
    let mut entries = 0;
    let mut buf = vec![0u8; 64 << 10];
    while let Some(dir) = dirs.pop() {
        let Ok(list) = vol.entries(dir, true) else { continue };
        for e in list {
            entries += 1;
            if entries > 500 {
                return;
            }
            if e.info.is_dir && seen.insert(e.info.record) {
                dirs.push(e.info.record);
            }
            if let Some(all) = &descriptors
                && let Ok(Some(d)) = vol.descriptor_of(e.info.record, e.info.security_id, all)
            {
                let _ = d.owner();
            }
            let names = std::iter::once(None).chain(e.info.streams.iter().map(|s| Some(s.name.as_str())));
            for name in names {
                let Ok(mut s) = Contents::open(&vol, &e.info, name, &e.name) else { continue };
                let mut at = 0u64;
                // The first 256 KiB (a hostile record may claim any size).
                while at < s.size().min(256 << 10) {
                    let n = (s.size() - at).min(buf.len() as u64) as usize;
                    if s.read_at(at, &mut buf[..n]).is_err() {
                        break;
                    }
                    at += n as u64;
                }
            }
        }
    }
});
