//! NTFS mapping pairs (data runs) of a non-resident attribute, as a file record holds them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let first_vcn = u64::from(u16::from_le_bytes([data[0], data[1]]));
    let clusters = u64::from(u16::from_le_bytes([data[2], data[3]])) << 8;
    let _ = winbundle::ntfs::record::decode_runs(&data[4..], first_vcn, clusters, 5);
});
