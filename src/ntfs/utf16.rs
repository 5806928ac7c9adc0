//! Names as NTFS stores them: UTF-16LE bytes, to and from Rust strings.

/// UTF-16LE bytes to a String (unpaired surrogates replaced).
pub fn name_from_utf16(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

/// A String to UTF-16LE bytes (attribute names as records hold them).
pub fn name_to_utf16(name: &str) -> Vec<u8> {
    name.encode_utf16().flat_map(u16::to_le_bytes).collect()
}
