//! The chunk index object (`P.index.zst`) of a bundle: a parent of an incremental bundle and
//! `verify` read it. Whatever parses must encode back to itself and pass or fail its own check
//! without a panic. A counting allocator asserts the documented bound
//! (`ChunkIndex::decode_memory_bound`): decoding allocates no more than that formula of the
//! chunk and record counts it was allowed, whatever the frame declares or holds.
#![no_main]

use std::sync::atomic::Ordering;

#[path = "common/counting.rs"]
mod counting;
use counting::{NOW, PEAK};

use libfuzzer_sys::fuzz_target;
use winbundle::format::index::ChunkIndex;

const MAX_CHUNKS: u64 = 1 << 16;
const MAX_RECORDS: u64 = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let base = NOW.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let decoded = ChunkIndex::decode(data, MAX_CHUNKS, MAX_RECORDS);
    let peak = PEAK.load(Ordering::Relaxed) - base;
    let bound = ChunkIndex::decode_memory_bound(MAX_CHUNKS, MAX_RECORDS);
    assert!(
        peak <= bound,
        "decoding an index allocated {peak} bytes, over its bound of {bound}"
    );
    if let Ok(index) = decoded {
        let again = ChunkIndex::decode(&index.encode(), MAX_CHUNKS, MAX_RECORDS).expect("an encoded index decodes");
        assert_eq!(again, index);
        let seek: Vec<(u32, u32)> = index.entries.iter().map(|e| (e.length, e.raw_len)).collect();
        let _ = index.check(index.chunk_size, index.volume_size, &seek);
    }
});
