//! The seek table at the end of a bundle's data stream (zstd skippable frame).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = winbundle::chunk::frame::parse_seek_table(data);
});
