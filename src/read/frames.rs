//! A stored frame checked and turned back into the zstd frame it holds, the one way every
//! reader does it (`restore`, `verify`, and the views `ls`, `extract` and `cat` read through):
//! its seek-table checksum, its BLAKE3 against the chunk index, the shared all-zero frame
//! recognised by its bytes, and in an encrypted bundle the seal opened (its AEAD tag checked).

use crate::chunk::SeekEntry;
use crate::chunk::frame::{ZeroFrame, frame_checksum};
use crate::crypt::FrameCipher;
use crate::format::index::frame_hash;

/// What a stored frame holds.
pub enum Opened<'a> {
    /// The shared all-zero frame: a full chunk of zeros, not decompressed.
    Zero,
    /// A zstd frame to decompress.
    Frame(&'a [u8]),
}

/// How one bundle's stored frames are checked and opened.
pub struct StoredFrames {
    /// The bundle is encrypted: frames are sealed, seek-table checksums are 0.
    sealed: bool,
    /// The cipher, when the data key is known.
    cipher: Option<FrameCipher>,
    /// The shared all-zero frame as stored (sealed in an encrypted bundle).
    zero: Option<Vec<u8>>,
    chunk_size: usize,
}

impl StoredFrames {
    pub fn new(chunk_size: usize, level: i32, sealed: bool, cipher: Option<FrameCipher>) -> Self {
        let zero = ZeroFrame::new(chunk_size, level)
            .ok()
            .and_then(|z| match (&cipher, sealed) {
                (_, false) => Some(z.bytes),
                (Some(c), true) => {
                    let mut out = Vec::new();
                    c.seal(&z.bytes, &mut out);
                    Some(out)
                }
                (None, true) => None,
            });
        Self {
            sealed,
            cipher,
            zero,
            chunk_size,
        }
    }

    /// True when the frames can be opened (a plaintext bundle, or an encrypted one whose key
    /// is known).
    pub fn readable(&self) -> bool {
        !self.sealed || self.cipher.is_some()
    }

    /// The shared all-zero frame as stored, when known.
    pub fn zero_frame(&self) -> Option<&[u8]> {
        self.zero.as_deref()
    }

    /// Checks the stored frame of a chunk with seek-table entry `e` (and BLAKE3 `want_hash`, from
    /// the chunk index, when the read checks it) and opens it, into `scratch` when it is
    /// sealed. The error says what is wrong with it; the caller names the chunk.
    pub fn open<'a>(
        &self,
        stored: &'a [u8],
        e: SeekEntry,
        want_hash: Option<[u8; 32]>,
        scratch: &'a mut Vec<u8>,
    ) -> Result<Opened<'a>, String> {
        if self.sealed {
            if e.checksum != 0 {
                return Err("its seek-table checksum is not 0, as every encrypted bundle's is".into());
            }
        } else if frame_checksum(stored) != e.checksum {
            return Err("its frame checksum differs from the seek table".into());
        }
        if want_hash.is_some_and(|h| h != frame_hash(stored)) {
            return Err("its bytes' BLAKE3 differs from the chunk index".into());
        }
        if e.raw as usize == self.chunk_size && self.zero.as_deref() == Some(stored) {
            return Ok(Opened::Zero);
        }
        if !self.sealed {
            return Ok(Opened::Frame(stored));
        }
        let cipher = self
            .cipher
            .as_ref()
            .ok_or_else(|| "it is encrypted and no data key was given".to_string())?;
        cipher.open(stored, scratch).map_err(|e| e.to_string())?;
        Ok(Opened::Frame(scratch))
    }
}
