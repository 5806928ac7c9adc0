//! The registry hive format (regf), read with every structure bounds-checked, for hives that may
//! be hostile: a 4 KiB base block, then hive bins whose cells are addressed by their offset from
//! the first bin. Keys (`nk`) list their subkeys in `lf`/`lh`/`li` lists, or an `ri` list of
//! those (one level, as Windows writes them), and their values (`vk`) in a value list; data
//! larger than 16,344 bytes is split into `db` segments.
//!
//! A lookup walks one named key per level and takes the first match, so a list that repeats
//! itself or points back at itself costs at most its own length, never a loop or recursion.
//!
//! Transaction logs (`.LOG1`, `.LOG2`) in the format of Windows 8.1 and later are replayed: each
//! `HvLE` entry's Marvin32 hashes are checked, entries are applied in sequence from the hive's
//! secondary sequence number, and the first one that does not fit stops the replay, as Windows
//! does. Layout from the regf notes of Joachim Metz (libregf) and Maxim Suhanov (yarp).

/// The hive bins start here.
const BINS: usize = 4096;
/// A big-data (`db`) segment holds at most this many bytes.
const SEGMENT: usize = 16344;
/// A value's data larger than this is not read (no value the facts use comes near).
const MAX_VALUE: usize = 16 << 20;
const MARVIN_SEED: u64 = 0x82EF_4D88_7A4E_55C5;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The Marvin32 hash the log entries carry (as .NET's `Marvin.ComputeHash32`, 64-bit form).
pub fn marvin32(data: &[u8]) -> u64 {
    let (mut s0, mut s1) = (MARVIN_SEED as u32, (MARVIN_SEED >> 32) as u32);
    let block = |s0: &mut u32, s1: &mut u32| {
        *s1 ^= *s0;
        *s0 = s0.rotate_left(20).wrapping_add(*s1);
        *s1 = s1.rotate_left(9) ^ *s0;
        *s0 = s0.rotate_left(27).wrapping_add(*s1);
        *s1 = s1.rotate_left(19);
    };
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        s0 = s0.wrapping_add(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        block(&mut s0, &mut s1);
    }
    let r = chunks.remainder();
    let tail = match r.len() {
        0 => 0x80,
        1 => 0x8000 | u32::from(r[0]),
        2 => 0x80_0000 | u32::from(u16::from_le_bytes([r[0], r[1]])),
        _ => 0x8000_0000 | (u32::from(r[2]) << 16) | u32::from(u16::from_le_bytes([r[0], r[1]])),
    };
    s0 = s0.wrapping_add(tail);
    block(&mut s0, &mut s1);
    block(&mut s0, &mut s1);
    u64::from(s0) | (u64::from(s1) << 32)
}

/// A key: its cell offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(usize);

/// A value's type and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawValue {
    pub kind: u32,
    pub data: Vec<u8>,
}

/// A hive's bytes, checked as they are read.
pub struct Regf {
    /// The hive bins (the file from byte 4096), grown or patched by the logs.
    bins: Vec<u8>,
    root: usize,
    /// Whether data over 16,344 bytes is in `db` segments (format 1.4 and later).
    big_data: bool,
}

impl Regf {
    /// Checks the base block and takes the hive bins. `Err`: why it is not a hive.
    pub fn new(mut bytes: Vec<u8>) -> Result<Regf, String> {
        if bytes.len() < BINS || &bytes[..4] != b"regf" {
            return Err("not a registry hive (no \"regf\" base block)".into());
        }
        let major = u32_at(&bytes, 20).unwrap_or(0);
        let minor = u32_at(&bytes, 24).unwrap_or(0);
        if major != 1 {
            return Err(format!("hive format {major}.{minor}: only 1.x exists"));
        }
        let root = u32_at(&bytes, 36).unwrap_or(u32::MAX) as usize;
        let bins = bytes.split_off(BINS);
        let r = Regf {
            bins,
            root,
            big_data: minor >= 4,
        };
        if r.cell(root, b"nk").is_none() {
            return Err(format!("its root key (cell {root:#x}) is not a key"));
        }
        Ok(r)
    }

    /// The content of the allocated cell at `offset` when it starts with `sig`.
    fn cell(&self, offset: usize, sig: &[u8; 2]) -> Option<&[u8]> {
        let c = self.any_cell(offset)?;
        (c.get(..2)? == sig).then_some(c)
    }

    /// The content of the allocated cell at `offset` (without its size field).
    fn any_cell(&self, offset: usize) -> Option<&[u8]> {
        let size = i32::from_le_bytes(self.bins.get(offset..offset.checked_add(4)?)?.try_into().ok()?);
        // Allocated cells have a negative size.
        let len = usize::try_from(size.checked_neg()?).ok()?;
        if len < 8 {
            return None;
        }
        self.bins.get(offset + 4..offset.checked_add(len)?)
    }

    pub fn root(&self) -> Key {
        Key(self.root)
    }

    /// A key's name (ASCII or UTF-16LE, as its flags say).
    pub fn name(&self, k: Key) -> Option<String> {
        let nk = self.cell(k.0, b"nk")?;
        let len = usize::from(u16_at(nk, 72)?);
        let raw = nk.get(76..76 + len)?;
        let ascii = u16_at(nk, 2)? & 0x20 != 0;
        Some(decode_name(raw, ascii))
    }

    /// The subkeys of `k`, in list order (at most what its lists hold: an `ri` list naming
    /// the same list twice is read once, a key listed twice is one subkey).
    pub fn subkeys(&self, k: Key) -> Vec<Key> {
        let mut out = Vec::new();
        let Some(nk) = self.cell(k.0, b"nk") else { return out };
        let Some(list) = u32_at(nk, 28) else { return out };
        let mut seen = std::collections::HashSet::new();
        self.list_items(list as usize, true, &mut out, &mut seen);
        out
    }

    /// The keys of a subkey list; an `ri` list's lists when `ri` is allowed (one level).
    fn list_items(&self, offset: usize, ri: bool, out: &mut Vec<Key>, seen: &mut std::collections::HashSet<usize>) {
        if !seen.insert(offset) {
            return;
        }
        let Some(c) = self.any_cell(offset) else { return };
        let count = usize::from(u16_at(c, 2).unwrap_or(0));
        let sig = c.get(..2).unwrap_or_default();
        let stride = match sig {
            b"lf" | b"lh" => 8,
            b"li" | b"ri" => 4,
            _ => return,
        };
        for i in 0..count {
            let Some(at) = u32_at(c, 4 + i * stride) else { break };
            if sig == b"ri" {
                if ri {
                    self.list_items(at as usize, false, out, seen);
                }
            } else if self.cell(at as usize, b"nk").is_some() && seen.insert(at as usize) {
                // (`seen` holds list and key offsets: a key listed twice is one subkey.)
                out.push(Key(at as usize));
            }
        }
    }

    /// The subkey of `k` named `name` (case-insensitively), the first when several are.
    pub fn child(&self, k: Key, name: &str) -> Option<Key> {
        let want = name.to_lowercase();
        self.subkeys(k)
            .into_iter()
            .find(|s| self.name(*s).is_some_and(|n| n.to_lowercase() == want))
    }

    /// The key at `path` (`ControlSet001\Control`, from the root).
    pub fn key(&self, path: &str) -> Option<Key> {
        let mut k = self.root();
        for part in path.split('\\').filter(|p| !p.is_empty()) {
            k = self.child(k, part)?;
        }
        Some(k)
    }

    /// The values of `k`: (name, value cell).
    fn value_cells(&self, k: Key) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        let Some(nk) = self.cell(k.0, b"nk") else { return out };
        let (Some(count), Some(list)) = (u32_at(nk, 36), u32_at(nk, 40)) else {
            return out;
        };
        let Some(list) = self.any_cell(list as usize) else {
            return out;
        };
        for i in 0..count as usize {
            let Some(at) = u32_at(list, i * 4) else { break };
            let Some(vk) = self.cell(at as usize, b"vk") else {
                continue;
            };
            let len = usize::from(u16_at(vk, 2).unwrap_or(0));
            let ascii = u16_at(vk, 16).unwrap_or(0) & 1 != 0;
            let Some(raw) = vk.get(20..20 + len) else { continue };
            out.push((decode_name(raw, ascii), at as usize));
        }
        out
    }

    /// The names of `k`'s values, in list order.
    pub fn value_names(&self, k: Key) -> Vec<String> {
        self.value_cells(k).into_iter().map(|(n, _)| n).collect()
    }

    /// `k`'s values with their data, in list order, until their data adds up to `budget` bytes
    /// (values may share one data cell: a hostile hive could name it a million times).
    pub fn values(&self, k: Key, budget: usize) -> Vec<(String, RawValue)> {
        let mut left = budget;
        let mut out = Vec::new();
        for (name, at) in self.value_cells(k) {
            let Some(v) = self.value_data(at) else { continue };
            let Some(rest) = left.checked_sub(v.data.len()) else {
                break;
            };
            left = rest;
            out.push((name, v));
        }
        out
    }

    /// The value of `k` named `name` (case-insensitively; `""` is the default value).
    pub fn value(&self, k: Key, name: &str) -> Option<RawValue> {
        let want = name.to_lowercase();
        let (_, at) = self
            .value_cells(k)
            .into_iter()
            .find(|(n, _)| n.to_lowercase() == want)?;
        self.value_data(at)
    }

    fn value_data(&self, at: usize) -> Option<RawValue> {
        let vk = self.cell(at, b"vk")?;
        let size = u32_at(vk, 4)?;
        let data_at = u32_at(vk, 8)?;
        let kind = u32_at(vk, 12)?;
        // Four bytes or fewer, kept in the offset field itself.
        if size & 0x8000_0000 != 0 {
            let n = (size & 0x7FFF_FFFF).min(4) as usize;
            return Some(RawValue {
                kind,
                data: data_at.to_le_bytes()[..n].to_vec(),
            });
        }
        let size = size as usize;
        if size > MAX_VALUE {
            return None;
        }
        if size > SEGMENT
            && self.big_data
            && let Some(db) = self.cell(data_at as usize, b"db")
        {
            let segments = usize::from(u16_at(db, 2)?);
            let list = self.any_cell(u32_at(db, 4)? as usize)?;
            let mut data = Vec::with_capacity(size);
            for i in 0..segments {
                let seg = self.any_cell(u32_at(list, i * 4)? as usize)?;
                let take = (size - data.len()).min(SEGMENT).min(seg.len());
                data.extend_from_slice(&seg[..take]);
                if data.len() == size {
                    break;
                }
            }
            return (data.len() == size).then_some(RawValue { kind, data });
        }
        let cell = self.any_cell(data_at as usize)?;
        Some(RawValue {
            kind,
            data: cell.get(..size)?.to_vec(),
        })
    }
}

fn decode_name(raw: &[u8], ascii: bool) -> String {
    if ascii {
        // Latin-1, as Windows stores compressed names.
        raw.iter().map(|&b| char::from(b)).collect()
    } else {
        let u: Vec<u16> = raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        String::from_utf16_lossy(&u)
    }
}

/// Whether a hive was not written back cleanly (its two sequence numbers differ).
pub fn dirty(hive: &[u8]) -> bool {
    hive.len() >= 12 && hive[4..8] != hive[8..12]
}

/// One `HvLE` entry of a log, checked.
struct Entry {
    sequence: u32,
    bins_size: usize,
    /// (offset in the hive bins, bytes).
    pages: Vec<(usize, std::ops::Range<usize>)>,
    log: usize,
}

/// The valid entries of a new-format log, in file order; stops at the first that is not one.
fn entries(log: &[u8], which: usize, max_bins: usize) -> Result<Vec<Entry>, String> {
    if log.len() < 512 || &log[..4] != b"regf" {
        return Err("not a transaction log (no \"regf\" base block)".into());
    }
    if log.get(512..516) == Some(b"DIRT") {
        return Err("a log in the format of Windows 8 and earlier (DIRT), which winbundle does not replay".into());
    }
    let mut out = Vec::new();
    let mut at = 512;
    while at + 40 <= log.len() && &log[at..at + 4] == b"HvLE" {
        let field = |o: usize| u32_at(log, at + o).unwrap_or(0) as usize;
        let (size, count, bins_size) = (field(4), field(20), field(16));
        let end = match at.checked_add(size) {
            Some(e) if size >= 40 && size % 512 == 0 && e <= log.len() => e,
            _ => break,
        };
        let entry = &log[at..end];
        let h1 = u64::from_le_bytes(entry[24..32].try_into().unwrap_or_default());
        let h2 = u64::from_le_bytes(entry[32..40].try_into().unwrap_or_default());
        if marvin32(&entry[40..]) != h1 || marvin32(&entry[..32]) != h2 {
            break;
        }
        if bins_size % 4096 != 0 || bins_size > max_bins {
            return Err(format!(
                "an entry at byte {at} makes the hive bins {bins_size} bytes (a multiple of 4096, at most {max_bins})"
            ));
        }
        let refs_end = count
            .checked_mul(8)
            .and_then(|n| n.checked_add(40))
            .filter(|&n| n <= size);
        let Some(mut data) = refs_end else { break };
        let mut pages = Vec::new();
        for i in 0..count {
            let (offset, len) = (
                u32_at(entry, 40 + i * 8).unwrap_or(0) as usize,
                u32_at(entry, 44 + i * 8).unwrap_or(0) as usize,
            );
            if data + len > size || offset.checked_add(len).is_none_or(|e| e > bins_size) {
                return Err(format!(
                    "an entry at byte {at} has a page outside the entry or the hive"
                ));
            }
            pages.push((offset, at + data..at + data + len));
            data += len;
        }
        out.push(Entry {
            sequence: field(12) as u32,
            bins_size,
            pages,
            log: which,
        });
        at = end;
    }
    Ok(out)
}

/// Replays `logs` onto `hive` (the whole file): the entries from the hive's secondary sequence
/// number on, in order, while they follow each other. Returns how many were applied, or why
/// a log was refused. The hive bins never grow past `max` bytes.
pub fn replay(hive: &mut Vec<u8>, logs: &[Vec<u8>], max: usize) -> Result<usize, String> {
    let secondary = u32_at(hive, 8).ok_or("the hive is shorter than its base block")?;
    let mut all = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        all.extend(entries(log, i, max)?);
    }
    all.sort_by_key(|e| e.sequence);
    let mut next = secondary;
    let mut applied = 0;
    for e in all {
        if e.sequence < next {
            continue; // already in the hive, or a repeat from the other log
        }
        if e.sequence != next {
            break;
        }
        let want = BINS + e.bins_size;
        if hive.len() < want {
            hive.resize(want, 0);
        }
        for (offset, range) in &e.pages {
            hive[BINS + offset..BINS + offset + range.len()].copy_from_slice(&logs[e.log][range.clone()]);
        }
        next = next.wrapping_add(1);
        applied += 1;
    }
    if applied > 0 {
        // Written back: both sequence numbers, as Windows leaves a clean hive.
        let seq = next.wrapping_sub(1).to_le_bytes();
        hive[4..8].copy_from_slice(&seq);
        hive[8..12].copy_from_slice(&seq);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_cells_never_panic() {
        let mut hive = vec![0u8; 8192];
        hive[..4].copy_from_slice(b"regf");
        hive[20..24].copy_from_slice(&1u32.to_le_bytes());
        hive[24..28].copy_from_slice(&5u32.to_le_bytes());
        hive[36..40].copy_from_slice(&0x20u32.to_le_bytes());
        // A root nk whose subkey list is an ri pointing at itself, and values pointing anywhere.
        let nk = BINS + 0x20;
        hive[nk..nk + 4].copy_from_slice(&(-120i32).to_le_bytes());
        hive[nk + 4..nk + 6].copy_from_slice(b"nk");
        hive[nk + 4 + 20..nk + 4 + 24].copy_from_slice(&1u32.to_le_bytes());
        hive[nk + 4 + 28..nk + 4 + 32].copy_from_slice(&0x100u32.to_le_bytes());
        hive[nk + 4 + 36..nk + 4 + 40].copy_from_slice(&u32::MAX.to_le_bytes());
        hive[nk + 4 + 40..nk + 4 + 44].copy_from_slice(&0x100u32.to_le_bytes());
        let ri = BINS + 0x100;
        hive[ri..ri + 4].copy_from_slice(&(-16i32).to_le_bytes());
        hive[ri + 4..ri + 6].copy_from_slice(b"ri");
        hive[ri + 6..ri + 8].copy_from_slice(&0xFFFFu16.to_le_bytes());
        hive[ri + 8..ri + 12].copy_from_slice(&0x100u32.to_le_bytes());
        let r = Regf::new(hive).unwrap();
        assert_eq!(r.subkeys(r.root()), []);
        assert_eq!(r.key("a\\b"), None);
        assert_eq!(r.value_names(r.root()), Vec::<String>::new());
        assert_eq!(r.value(r.root(), "x"), None);
    }

    /// A dirty hive (sequence 6/5) whose bins hold a root key, and a log entry for it.
    fn dirty_hive() -> Vec<u8> {
        let mut h = vec![0u8; BINS + 4096];
        h[..4].copy_from_slice(b"regf");
        h[4..8].copy_from_slice(&6u32.to_le_bytes());
        h[8..12].copy_from_slice(&5u32.to_le_bytes());
        h[20..24].copy_from_slice(&1u32.to_le_bytes());
        h[24..28].copy_from_slice(&5u32.to_le_bytes());
        h[36..40].copy_from_slice(&0x20u32.to_le_bytes());
        h[BINS + 0x20..BINS + 0x24].copy_from_slice(&(-96i32).to_le_bytes());
        h[BINS + 0x24..BINS + 0x26].copy_from_slice(b"nk");
        h
    }

    fn log(sequence: u32, bins: u32, pages: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let mut e = b"HvLE".to_vec();
        let body: usize = pages.iter().map(|(_, p)| 8 + p.len()).sum();
        let size = (40 + body).div_ceil(512) * 512;
        for v in [size as u32, 0, sequence, bins, pages.len() as u32] {
            e.extend_from_slice(&v.to_le_bytes());
        }
        e.extend_from_slice(&[0; 16]);
        for (at, p) in pages {
            e.extend_from_slice(&at.to_le_bytes());
            e.extend_from_slice(&(p.len() as u32).to_le_bytes());
        }
        for (_, p) in pages {
            e.extend_from_slice(p);
        }
        e.resize(size, 0);
        let h1 = marvin32(&e[40..]);
        e[24..32].copy_from_slice(&h1.to_le_bytes());
        let h2 = marvin32(&e[..32]);
        e[32..40].copy_from_slice(&h2.to_le_bytes());
        let mut l = vec![0u8; 512];
        l[..4].copy_from_slice(b"regf");
        l.extend(e);
        l
    }

    #[test]
    fn logs_replay_in_sequence_and_hostile_ones_change_nothing() {
        let page = |b: u8| {
            let mut p = dirty_hive()[BINS..].to_vec();
            p[0x100] = b;
            p
        };
        // One entry: applied, the hive clean after.
        let mut h = dirty_hive();
        assert_eq!(replay(&mut h, &[log(5, 4096, &[(0, page(7))])], 1 << 20), Ok(1));
        assert_eq!((h[BINS + 0x100], &h[4..8]), (7, &h[8..12]));
        // Two logs, entries 5 and 6, the second growing the bins: both, in order.
        let mut h = dirty_hive();
        let grown = log(6, 8192, &[(4096, vec![9u8; 4096])]);
        assert_eq!(replay(&mut h, &[grown, log(5, 4096, &[(0, page(7))])], 1 << 20), Ok(2));
        assert_eq!(h.len(), BINS + 8192);
        assert_eq!((h[BINS + 0x100], h[BINS + 4096]), (7, 9));
        // A gap in the sequence, a stale entry, a broken hash: nothing applied.
        for l in [log(7, 4096, &[(0, page(7))]), log(4, 4096, &[(0, page(7))])] {
            let mut h = dirty_hive();
            assert_eq!(replay(&mut h, &[l], 1 << 20), Ok(0));
            assert_eq!(h, dirty_hive());
        }
        let mut bad = log(5, 4096, &[(0, page(7))]);
        bad[512 + 600] ^= 1;
        let mut h = dirty_hive();
        assert_eq!(replay(&mut h, &[bad], 1 << 20), Ok(0));
        // Refused before any byte changes: growth past the limit, a page outside the bins, the
        // old format.
        let cases: [(Vec<u8>, &str); 3] = [
            (log(5, 1 << 30, &[]), "at most"),
            (log(5, 4096, &[(4000, vec![1u8; 512])]), "outside"),
            (
                {
                    let mut l = vec![0u8; 1024];
                    l[..4].copy_from_slice(b"regf");
                    l[512..516].copy_from_slice(b"DIRT");
                    l
                },
                "Windows 8 and earlier",
            ),
        ];
        for (l, want) in cases {
            let mut h = dirty_hive();
            let e = replay(&mut h, &[l], 1 << 20).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
            assert_eq!(h, dirty_hive());
        }
    }
}
