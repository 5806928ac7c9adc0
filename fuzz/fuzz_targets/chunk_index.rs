//! The chunk index object (`P.index.zst`) of a bundle: a parent of an incremental bundle and
//! `verify` read it. Whatever parses must encode back to itself and pass or fail its own check
//! without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use winbundle::bundle::index::ChunkIndex;

fuzz_target!(|data: &[u8]| {
    if let Ok(index) = ChunkIndex::decode(data, 1 << 16) {
        let again = ChunkIndex::decode(&index.encode(), 1 << 16).expect("an encoded index decodes");
        assert_eq!(again, index);
        let seek: Vec<(u32, u32)> = index.entries.iter().map(|e| (e.length, e.raw_len)).collect();
        let _ = index.check(index.chunk_size, index.volume_size, &seek);
    }
});
