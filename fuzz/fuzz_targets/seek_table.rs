//! The seek table at the end of a bundle's data stream (zstd skippable frame). A counting
//! allocator asserts the documented bound (`frame::seek_table_memory_bound`): parsing never
//! allocates more than the table's own size, whatever its count field says.
#![no_main]

use std::sync::atomic::Ordering;

#[path = "common/counting.rs"]
mod counting;
use counting::{NOW, PEAK};

use libfuzzer_sys::fuzz_target;
use winbundle::chunk::frame;

fuzz_target!(|data: &[u8]| {
    let base = NOW.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let parsed = frame::parse_seek_table(data);
    let peak = PEAK.load(Ordering::Relaxed) - base;
    let bound = frame::seek_table_memory_bound(data.len() as u64);
    assert!(
        peak <= bound,
        "parsing a seek table of {} bytes allocated {peak}, over its bound of {bound}",
        data.len()
    );
    drop(parsed);
});
