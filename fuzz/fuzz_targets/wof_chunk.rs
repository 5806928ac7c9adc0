//! One WOF chunk from outside, decompressed as LZX (src/ntfs/lzx.rs) and as XPRESS Huffman (the
//! `xpress-huffman` crate) into the size its first two bytes name (at most 32 KiB): an error or
//! the bytes, never a panic, a hang or a read outside the output.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let size = usize::from(u16::from_le_bytes([data[0], data[1]])) % (32 << 10) + 1;
    if let Ok(out) = winbundle::ntfs::lzx::decompress(&data[2..], size) {
        assert_eq!(out.len(), size);
    }
    let _ = xpress_huffman::decompress(&data[2..], size.min(16 << 10));
});
