//! LZX decompression of one WOF chunk (32 KiB window), the variant WIM files and WOF use: no
//! stream header, E8 call translation always on with the WIM file size 12,000,000, a block's size
//! in one bit (32,768) or 16 bits. No crate decodes this variant (`lzxd` decodes the CAB/LZXD
//! one), so it is written here from the LZX format (MS-PATCH's LZX DELTA description, and the
//! WIM differences as wimlib documents them), and checked against wimlib's compressor: the
//! fixture testdata/reparse-volume.img holds a WOF file that wimlib compressed with LZX.
//!
//! Every length and offset from the input is checked: a damaged chunk is an error, never a
//! panic or a read outside the output.

/// The bits of the compressed stream: 16-bit little-endian words, read most significant bit
/// first; past the end, zeros (as the reference decoder pads), counted.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    buf: u32,
    count: u32,
    overrun: usize,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            buf: 0,
            count: 0,
            overrun: 0,
        }
    }

    /// At least `n` (≤ 16) bits buffered, loading 16 at a time.
    fn ensure(&mut self, n: u32) {
        while self.count < n {
            let w = match self.data.get(self.pos..self.pos + 2) {
                Some(b) => u32::from(u16::from_le_bytes([b[0], b[1]])),
                None => {
                    self.overrun += 1;
                    0
                }
            };
            self.pos += 2;
            self.buf |= w << (16 - self.count);
            self.count += 16;
        }
    }

    fn peek16(&mut self) -> u32 {
        self.ensure(16);
        self.buf >> 16
    }

    fn skip(&mut self, n: u32) {
        self.buf <<= n;
        self.count -= n;
    }

    fn read(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        self.ensure(n);
        let v = self.buf >> (32 - n);
        self.skip(n);
        v
    }

    /// Aligns on a 16-bit word for an uncompressed block: the bits left of the current word are
    /// dropped, and when none are left, the next whole word is (the format's rule).
    fn align(&mut self) {
        self.ensure(1);
        self.buf = 0;
        self.count = 0;
    }

    /// Raw bytes after [`Self::align`].
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let b = self
            .data
            .get(self.pos..self.pos + n)
            .ok_or_else(|| format!("an uncompressed block of {n} bytes runs past the chunk's end"))?;
        self.pos += n;
        Ok(b)
    }
}

/// A canonical Huffman code's decoding table: for every 16-bit prefix, (symbol, length).
struct Code {
    table: Vec<(u16, u8)>,
}

impl Code {
    fn new(lens: &[u8], what: &str) -> Result<Self, String> {
        let mut table = vec![(0u16, 0u8); 1 << 16];
        let mut code: u32 = 0;
        for len in 1..=16u32 {
            for (sym, &l) in lens.iter().enumerate() {
                if u32::from(l) != len {
                    continue;
                }
                let span = 1u32 << (16 - len);
                let start = code.checked_mul(span).filter(|&s| s + span <= 1 << 16);
                let Some(start) = start else {
                    return Err(format!("the {what} code's lengths are over-subscribed"));
                };
                for e in &mut table[start as usize..(start + span) as usize] {
                    *e = (sym as u16, len as u8);
                }
                code += 1;
            }
            code <<= 1;
        }
        Ok(Self { table })
    }

    fn decode(&self, bits: &mut Bits<'_>, what: &str) -> Result<usize, String> {
        let (sym, len) = self.table[bits.peek16() as usize];
        if len == 0 {
            return Err(format!("a {what} codeword that is not in its code"));
        }
        bits.skip(u32::from(len));
        Ok(usize::from(sym))
    }
}

const MAIN_SYMS: usize = 256 + 30 * 8; // 30 offset slots for a 32 KiB window
const LEN_SYMS: usize = 249;
const MIN_MATCH: usize = 2;
const E8_FILE_SIZE: i32 = 12_000_000;

/// Offset slot bases and their extra bits.
const SLOT_BASE: [u32; 30] = [
    0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144,
    8192, 12288, 16384, 24576,
];
const SLOT_EXTRA: [u32; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13,
];

/// Reads code lengths coded by a pretree, as deltas from `lens` (the previous block's).
fn read_lens(bits: &mut Bits<'_>, lens: &mut [u8]) -> Result<(), String> {
    let mut pre = [0u8; 20];
    for p in &mut pre {
        *p = bits.read(4) as u8;
    }
    let pretree = Code::new(&pre, "pretree")?;
    let delta = |old: u8, presym: usize| ((usize::from(old) + 17 - presym) % 17) as u8;
    let mut i = 0;
    while i < lens.len() {
        let presym = pretree.decode(bits, "pretree")?;
        let (run, value) = match presym {
            0..=16 => (1, Some(delta(lens[i], presym))),
            17 => (4 + bits.read(4) as usize, Some(0)),
            18 => (20 + bits.read(5) as usize, Some(0)),
            _ => {
                let run = 4 + bits.read(1) as usize;
                let p = pretree.decode(bits, "pretree")?;
                if p > 16 {
                    return Err("a run of code lengths names another run".into());
                }
                (run, Some(delta(lens[i], p)))
            }
        };
        if i + run > lens.len() {
            return Err("a run of code lengths runs past the code".into());
        }
        let v = value.unwrap_or(0);
        lens[i..i + run].fill(v);
        i += run;
    }
    Ok(())
}

/// Decompresses one LZX chunk into exactly `size` bytes (at most 32 KiB).
pub fn decompress(data: &[u8], size: usize) -> Result<Vec<u8>, String> {
    if size > 1 << 15 {
        return Err(format!("{size} bytes is more than an LZX chunk of WOF holds"));
    }
    let mut out = vec![0u8; size];
    let mut bits = Bits::new(data);
    let mut main_lens = [0u8; MAIN_SYMS];
    let mut len_lens = [0u8; LEN_SYMS];
    let mut recent = [1usize; 3];
    let mut pos = 0usize;
    while pos < size {
        let kind = bits.read(3);
        let block = if bits.read(1) == 1 {
            32768
        } else {
            bits.read(16) as usize
        };
        if block == 0 {
            return Err("a block of 0 bytes".into());
        }
        let end = (pos + block).min(size);
        match kind {
            1 | 2 => {
                let aligned = if kind == 2 {
                    let mut a = [0u8; 8];
                    for l in &mut a {
                        *l = bits.read(3) as u8;
                    }
                    Some(Code::new(&a, "aligned offset")?)
                } else {
                    None
                };
                read_lens(&mut bits, &mut main_lens[..256])?;
                read_lens(&mut bits, &mut main_lens[256..])?;
                let main = Code::new(&main_lens, "main")?;
                read_lens(&mut bits, &mut len_lens)?;
                let lengths = Code::new(&len_lens, "length")?;
                while pos < end {
                    let sym = main.decode(&mut bits, "main")?;
                    if sym < 256 {
                        out[pos] = sym as u8;
                        pos += 1;
                        continue;
                    }
                    let sym = sym - 256;
                    let (slot, header) = (sym >> 3, sym & 7);
                    let mut len = header + MIN_MATCH;
                    if header == 7 {
                        len += lengths.decode(&mut bits, "length")?;
                    }
                    let offset = if slot < 3 {
                        let o = recent[slot];
                        recent.swap(0, slot);
                        o
                    } else {
                        let extra = SLOT_EXTRA[slot];
                        let value = match &aligned {
                            Some(a) if extra >= 3 => {
                                (bits.read(extra - 3) << 3) as usize + a.decode(&mut bits, "aligned offset")?
                            }
                            _ => bits.read(extra) as usize,
                        };
                        let o = SLOT_BASE[slot] as usize + value - 2;
                        recent = [o, recent[0], recent[1]];
                        o
                    };
                    if offset == 0 || offset > pos {
                        return Err(format!(
                            "a match at byte {pos} reaches {offset} bytes back, before the chunk"
                        ));
                    }
                    if len > size - pos {
                        return Err(format!(
                            "a match of {len} bytes at byte {pos} runs past the chunk's end"
                        ));
                    }
                    for k in 0..len {
                        out[pos + k] = out[pos + k - offset];
                    }
                    pos += len;
                }
            }
            3 => {
                bits.align();
                for r in &mut recent {
                    let b = bits.bytes(4)?;
                    *r = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
                    if *r == 0 {
                        return Err("an uncompressed block's recent offset is 0".into());
                    }
                }
                let n = end - pos;
                out[pos..end].copy_from_slice(bits.bytes(n)?);
                pos = end;
                if block % 2 == 1 {
                    let _ = bits.bytes(1);
                }
            }
            k => return Err(format!("block type {k} is not one LZX has")),
        }
        if bits.overrun > 4 {
            return Err("the chunk ends before its data does".into());
        }
    }
    undo_e8(&mut out);
    Ok(out)
}

/// Undoes the E8 (x86 CALL) translation the compressor applied before compressing.
fn undo_e8(data: &mut [u8]) {
    if data.len() <= 10 {
        return;
    }
    let mut i = 0usize;
    while i < data.len() - 10 {
        if data[i] != 0xE8 {
            i += 1;
            continue;
        }
        let at = i + 1;
        let abs = i32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        let pos = i as i32;
        let rel = if abs >= 0 {
            (abs < E8_FILE_SIZE).then(|| abs - pos)
        } else {
            (abs >= -pos).then(|| abs + E8_FILE_SIZE)
        };
        if let Some(r) = rel {
            data[at..at + 4].copy_from_slice(&r.to_le_bytes());
        }
        i += 5;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_chunks_are_errors_never_a_panic() {
        for bad in [
            &[][..],
            &[0xff; 7][..],
            &[0x00, 0x30, 0x00, 0x00][..],
            &[0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x11, 0x22][..],
        ] {
            assert!(decompress(bad, 32768).is_err(), "{bad:?}");
        }
        assert!(decompress(&[0; 8], 1 << 16).is_err());
    }

    #[test]
    fn calls_translated_back() {
        // An E8 at byte 0 whose absolute target 5 becomes relative 5 - 0; past the last 10
        // bytes nothing is touched.
        let mut d = vec![0u8; 32];
        d[0] = 0xE8;
        d[1..5].copy_from_slice(&20i32.to_le_bytes());
        d[8] = 0xE8;
        d[9..13].copy_from_slice(&(-3i32).to_le_bytes());
        undo_e8(&mut d);
        assert_eq!(i32::from_le_bytes([d[1], d[2], d[3], d[4]]), 20);
        assert_eq!(i32::from_le_bytes([d[9], d[10], d[11], d[12]]), -3 + E8_FILE_SIZE);
    }
}
