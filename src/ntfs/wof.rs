//! WOF-compressed files (`compact /EXE`, CompactOS): the unnamed stream is sparse and says only
//! the file's size; the data is in the `WofCompressedData` stream, cut into chunks of 4, 8, 16
//! or 32 KiB of file data, each compressed alone (XPRESS Huffman, or LZX), or stored as it is
//! when compressing did not shrink it. The stream starts with a table of where each chunk but
//! the first starts (u32 entries for files under 4 GiB, else u64), counted from the table's end.
//! (Layout as wimlib documents and writes it.)
//!
//! XPRESS Huffman chunks are decoded by the `xpress-huffman` crate (MS-XCA 2.2.4), LZX chunks by
//! [`super::lzx`]; both are checked against wimlib's compressor (testdata/make-reparse-fixture.sh).

use super::NtfsError;
use super::content::FileStream;
use super::reparse::WofAlgorithm;
use super::volume::NtfsVolume;

/// The stream that holds a WOF file's data.
pub const WOF_STREAM: &str = "WofCompressedData";

/// A WOF-compressed file's contents, readable at any offset.
pub struct WofStream<'v, 'd> {
    data: FileStream<'v, 'd>,
    record: u64,
    what: String,
    size: u64,
    algorithm: WofAlgorithm,
    /// Where each chunk starts in `data`, and after the last, where the last ends.
    bounds: Vec<u64>,
    /// The last chunk decoded: (number, bytes).
    chunk: Option<(u64, Vec<u8>)>,
}

impl<'v, 'd> WofStream<'v, 'd> {
    /// The contents of record `record`, `size` bytes compressed with `algorithm` (from its
    /// reparse point). `what` names it in errors.
    pub fn open(
        vol: &'v NtfsVolume<'d>,
        record: u64,
        size: u64,
        algorithm: WofAlgorithm,
        what: &str,
    ) -> Result<Self, NtfsError> {
        let fail = |problem: String| NtfsError::Path {
            path: what.to_string(),
            problem,
        };
        let mut data = FileStream::open(vol, record, Some(WOF_STREAM), what)?;
        let stored = data.size();
        let chunk = algorithm.chunk_size() as u64;
        let chunks = size.div_ceil(chunk);
        let width: u64 = if size > u64::from(u32::MAX) { 8 } else { 4 };
        let table = chunks.saturating_sub(1).saturating_mul(width);
        if table > stored {
            return Err(fail(format!(
                "its WofCompressedData stream ({stored} bytes) is too short for the chunk table of a {size}-byte file: the file is damaged"
            )));
        }
        let mut raw = vec![0u8; table as usize];
        data.read_at(0, &mut raw)?;
        let mut bounds = Vec::with_capacity(chunks as usize + 1);
        bounds.push(table);
        for e in raw.chunks_exact(width as usize) {
            let off = if width == 4 {
                u64::from(u32::from_le_bytes([e[0], e[1], e[2], e[3]]))
            } else {
                u64::from_le_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]])
            };
            bounds.push(table.saturating_add(off));
        }
        bounds.push(stored);
        if bounds.windows(2).any(|w| w[0] > w[1]) || bounds.last().is_some_and(|&e| e > stored) {
            return Err(fail(
                "its WofCompressedData chunk table is not in order or points past the stream: the file is damaged"
                    .into(),
            ));
        }
        Ok(Self {
            data,
            record,
            what: what.to_string(),
            size,
            algorithm,
            bounds,
            chunk: None,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Fills `buf` from byte `offset` of the file. A panic in a decoder is caught as
    /// [`NtfsError::Panic`].
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NtfsError> {
        super::guard::contain(self.record, WOF_STREAM, || self.read_at_unguarded(offset, buf))
    }

    fn read_at_unguarded(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NtfsError> {
        if offset.saturating_add(buf.len() as u64) > self.size {
            return Err(self.fail(format!("read of {} bytes at {offset} past its end", buf.len())));
        }
        let chunk = self.algorithm.chunk_size() as u64;
        let mut filled = 0usize;
        while filled < buf.len() {
            let at = offset + filled as u64;
            let n = at / chunk;
            if self.chunk.as_ref().is_none_or(|(c, _)| *c != n) {
                let bytes = self.decode(n)?;
                self.chunk = Some((n, bytes));
            }
            let Some((_, bytes)) = &self.chunk else { break };
            let from = (at - n * chunk) as usize;
            let k = (bytes.len() - from).min(buf.len() - filled);
            buf[filled..filled + k].copy_from_slice(&bytes[from..from + k]);
            filled += k;
        }
        Ok(())
    }

    /// Chunk `n`, decoded: its stored bytes as they are when they are as long as its data.
    fn decode(&mut self, n: u64) -> Result<Vec<u8>, NtfsError> {
        let chunk = self.algorithm.chunk_size() as u64;
        let want = (self.size - n * chunk).min(chunk) as usize;
        let (start, end) = (self.bounds[n as usize], self.bounds[n as usize + 1]);
        let mut stored = vec![0u8; (end - start) as usize];
        self.data.read_at(start, &mut stored)?;
        if stored.len() == want {
            return Ok(stored);
        }
        if stored.len() > want {
            return Err(self.fail(format!(
                "chunk {n} is stored in {} bytes, more than its {want} bytes of data: the file is damaged",
                stored.len()
            )));
        }
        match self.algorithm {
            WofAlgorithm::Xpress4k | WofAlgorithm::Xpress8k | WofAlgorithm::Xpress16k => {
                xpress_huffman::decompress(&stored, want)
                    .map_err(|e| {
                        self.fail(format!(
                            "chunk {n} does not decompress (XPRESS Huffman: {e}): the file is damaged"
                        ))
                    })
                    .and_then(|d| match d.len() == want {
                        true => Ok(d),
                        false => Err(self.fail(format!("chunk {n} decompressed to {} bytes, not {want}", d.len()))),
                    })
            }
            WofAlgorithm::Lzx => super::lzx::decompress(&stored, want)
                .map_err(|e| self.fail(format!("chunk {n} does not decompress (LZX: {e}): the file is damaged"))),
        }
    }

    fn fail(&self, problem: String) -> NtfsError {
        NtfsError::Path {
            path: self.what.clone(),
            problem,
        }
    }
}

/// A file's contents, plain or WOF-compressed, as `extract` and `cat` read them.
pub enum Contents<'v, 'd> {
    Plain(FileStream<'v, 'd>),
    Wof(WofStream<'v, 'd>),
}

impl Contents<'_, '_> {
    pub fn size(&self) -> u64 {
        match self {
            Contents::Plain(s) => s.size(),
            Contents::Wof(s) => s.size(),
        }
    }

    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NtfsError> {
        match self {
            Contents::Plain(s) => s.read_at(offset, buf),
            Contents::Wof(s) => s.read_at(offset, buf),
        }
    }
}

impl<'v, 'd> Contents<'v, 'd> {
    /// The contents of `info`'s file: its stream `stream`, or without one its data, through
    /// WOF when it is WOF-compressed.
    pub fn open(
        vol: &'v NtfsVolume<'d>,
        info: &super::catalog::FileInfo,
        stream: Option<&str>,
        what: &str,
    ) -> Result<Self, NtfsError> {
        if let (None, Some(super::reparse::Reparse::Wof { algorithm: Some(a), .. })) = (stream, &info.reparse) {
            return WofStream::open(vol, info.record, info.size, *a, what).map(Contents::Wof);
        }
        FileStream::open(vol, info.record, stream, what).map(Contents::Plain)
    }
}
