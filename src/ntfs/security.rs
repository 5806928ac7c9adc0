//! Security descriptors: who owns each file and who may do what with it.
//!
//! NTFS 3.x keeps each distinct descriptor once, in the `$SDS` stream of `$Secure` (record 9),
//! and a file's `$STANDARD_INFORMATION` names it by its security id. `$SDS` is laid out in
//! 256 KiB blocks, each followed by a mirror copy of itself; every entry is a 20-byte header
//! (hash, security id, its own offset in `$SDS`, its length with the header) and a self-relative
//! `SECURITY_DESCRIPTOR`, at 16-byte boundaries. An older volume (NTFS 1.x), or a file that kept
//! one, has the descriptor in its own `$SECURITY_DESCRIPTOR` attribute instead.
//!
//! Every descriptor is checked before anyone is given it: its revision, that it is
//! self-relative, and that its owner, group and access lists lie inside it and are well formed.

use std::collections::HashMap;

use super::NtfsError;
use super::volume::NtfsVolume;

/// `$Secure`'s record number.
const SECURE_RECORD: u64 = 9;
const ATTR_DATA: u32 = 0x80;
/// The per-file `$SECURITY_DESCRIPTOR` attribute (NTFS 1.x).
const ATTR_SECURITY_DESCRIPTOR: u32 = 0x50;
/// `$SDS` larger than this is refused rather than read into memory (real volumes hold a few MB).
const MAX_SDS: u64 = 256 << 20;
/// A descriptor larger than this is not one Windows would write (an ACL is at most 64 KiB).
const MAX_DESCRIPTOR: usize = 256 << 10;
const SDS_BLOCK: u64 = 256 << 10;
const ENTRY_HEADER: usize = 20;

/// `SECURITY_DESCRIPTOR_CONTROL` bits.
pub const SE_DACL_PRESENT: u16 = 0x0004;
pub const SE_SACL_PRESENT: u16 = 0x0010;
const SE_SELF_RELATIVE: u16 = 0x8000;

/// A checked self-relative security descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor(Vec<u8>);

impl Descriptor {
    /// Checks `bytes` as a self-relative `SECURITY_DESCRIPTOR` (winnt.h): revision 1, the
    /// self-relative flag, and an owner, a group and access lists that lie inside it.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < 20 {
            return Err(format!(
                "{} bytes is shorter than a descriptor's header (20)",
                bytes.len()
            ));
        }
        if bytes.len() > MAX_DESCRIPTOR {
            return Err(format!(
                "{} bytes is larger than any descriptor Windows writes",
                bytes.len()
            ));
        }
        if bytes[0] != 1 {
            return Err(format!("revision {} (only 1 exists)", bytes[0]));
        }
        let control = u16_at(bytes, 2);
        if control & SE_SELF_RELATIVE == 0 {
            return Err("not self-relative".into());
        }
        let d = Descriptor(bytes.to_vec());
        for (what, at) in [("owner", d.offset(4)), ("group", d.offset(8))] {
            if at != 0 {
                sid_len(bytes, at).map_err(|e| format!("its {what}: {e}"))?;
            }
        }
        for (what, flag, at) in [
            ("SACL", SE_SACL_PRESENT, d.offset(12)),
            ("DACL", SE_DACL_PRESENT, d.offset(16)),
        ] {
            if control & flag != 0 && at != 0 {
                check_acl(bytes, at).map_err(|e| format!("its {what}: {e}"))?;
            }
        }
        Ok(d)
    }

    fn offset(&self, at: usize) -> usize {
        u32_at(&self.0, at) as usize
    }

    /// The descriptor as stored: what `SetFileSecurityW` and ntfs-3g's `system.ntfs_acl` take.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Its `SECURITY_DESCRIPTOR_CONTROL` flags.
    pub fn control(&self) -> u16 {
        u16_at(&self.0, 2)
    }

    /// Whether it has an owner, a group, a system (audit) list.
    pub fn has_owner(&self) -> bool {
        self.offset(4) != 0
    }
    pub fn has_group(&self) -> bool {
        self.offset(8) != 0
    }
    pub fn has_sacl(&self) -> bool {
        self.control() & SE_SACL_PRESENT != 0
    }

    /// Whether its SACL holds audit entries (any but mandatory labels, ACE type 0x11, which
    /// need no privilege to set).
    pub fn has_audit_entries(&self) -> bool {
        let at = self.offset(12);
        if !self.has_sacl() || at == 0 {
            return false;
        }
        let b = &self.0;
        let (size, count) = (usize::from(u16_at(b, at + 2)), usize::from(u16_at(b, at + 4)));
        let mut pos = at + 8;
        for _ in 0..count {
            if pos + 4 > at + size {
                break;
            }
            if b[pos] != 0x11 {
                return true;
            }
            pos += usize::from(u16_at(b, pos + 2));
        }
        false
    }

    /// The owner as a SID string (`S-1-5-32-544`), when it has one.
    pub fn owner(&self) -> Option<String> {
        let at = self.offset(4);
        (at != 0).then(|| sid_string(&self.0, at))
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The length of the SID at `at`, checked to lie inside `b`.
fn sid_len(b: &[u8], at: usize) -> Result<usize, String> {
    if at < 20 || at + 8 > b.len() {
        return Err(format!(
            "a SID at byte {at} lies outside the descriptor ({} bytes)",
            b.len()
        ));
    }
    if b[at] != 1 {
        return Err(format!("a SID of revision {} (only 1 exists)", b[at]));
    }
    let n = usize::from(b[at + 1]);
    if n > 15 {
        return Err(format!("a SID with {n} sub-authorities (at most 15)"));
    }
    let len = 8 + 4 * n;
    if at + len > b.len() {
        return Err(format!("a SID at byte {at} runs past the descriptor's end"));
    }
    Ok(len)
}

/// `S-R-I-S1-S2...`, as `ConvertSidToStringSidW` writes it.
fn sid_string(b: &[u8], at: usize) -> String {
    let n = usize::from(b[at + 1]);
    let authority = b[at + 2..at + 8].iter().fold(0u64, |a, &x| (a << 8) | u64::from(x));
    let mut s = if authority >> 32 == 0 {
        format!("S-{}-{authority}", b[at])
    } else {
        format!("S-{}-0x{authority:012X}", b[at])
    };
    for i in 0..n {
        s.push_str(&format!("-{}", u32_at(b, at + 8 + 4 * i)));
    }
    s
}

/// Checks the ACL at `at`: revision 2 or 4, inside the descriptor, its ACEs inside it.
fn check_acl(b: &[u8], at: usize) -> Result<(), String> {
    if at < 20 || at + 8 > b.len() {
        return Err(format!(
            "the list at byte {at} lies outside the descriptor ({} bytes)",
            b.len()
        ));
    }
    if !matches!(b[at], 2 | 4) {
        return Err(format!("revision {} (2 and 4 exist)", b[at]));
    }
    let size = usize::from(u16_at(b, at + 2));
    let count = usize::from(u16_at(b, at + 4));
    if size < 8 || at + size > b.len() {
        return Err(format!("{size} bytes at byte {at} run past the descriptor's end"));
    }
    let mut pos = at + 8;
    for i in 0..count {
        if pos + 4 > at + size {
            return Err(format!("entry {i} of {count} lies past the list's {size} bytes"));
        }
        let len = usize::from(u16_at(b, pos + 2));
        if len < 8 || len % 4 != 0 || pos + len > at + size {
            return Err(format!("entry {i} has a length of {len} bytes"));
        }
        pos += len;
    }
    Ok(())
}

/// The descriptors of a volume's `$Secure`, by security id.
pub struct Descriptors {
    sds: Vec<u8>,
    /// Security id → (offset, length) of its descriptor in `sds`.
    at: HashMap<u32, (usize, usize)>,
}

impl Descriptors {
    /// Indexes `$SDS`: every entry whose header names its own offset (mirror copies name the
    /// primary's, so they are passed over), block by block.
    pub fn index(sds: Vec<u8>) -> Self {
        let mut at = HashMap::new();
        let mut pos = 0usize;
        while pos + ENTRY_HEADER <= sds.len() {
            let id = u32_at(&sds, pos + 4);
            let offset = u64::from_le_bytes(sds[pos + 8..pos + 16].try_into().unwrap_or_default());
            let len = u32_at(&sds, pos + 16) as usize;
            let block_end = ((pos as u64 / SDS_BLOCK + 1) * SDS_BLOCK) as usize;
            if offset != pos as u64 || len <= ENTRY_HEADER || pos + len > sds.len().min(block_end) {
                // The rest of this block is free (or its mirror): on to the next block.
                pos = block_end;
                continue;
            }
            at.entry(id).or_insert((pos + ENTRY_HEADER, len - ENTRY_HEADER));
            pos += len.div_ceil(16) * 16;
        }
        Descriptors { sds, at }
    }

    /// The descriptor with security id `id`, checked.
    pub fn get(&self, id: u32) -> Result<Descriptor, String> {
        let &(at, len) = self
            .at
            .get(&id)
            .ok_or_else(|| format!("security id {id} is not in $Secure"))?;
        Descriptor::parse(&self.sds[at..at + len]).map_err(|e| format!("the descriptor of security id {id}: {e}"))
    }

    /// How many descriptors it holds.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

impl NtfsVolume<'_> {
    /// Reads `$Secure:$SDS` and indexes its descriptors. A volume without one (NTFS 1.x) has
    /// none: each file carries its own.
    pub fn security_descriptors(&self) -> Result<Descriptors, NtfsError> {
        let name = super::utf16::name_to_utf16("$SDS");
        let Some(x) = self.extents(SECURE_RECORD, ATTR_DATA, &name)? else {
            return Ok(Descriptors::index(Vec::new()));
        };
        Ok(Descriptors::index(self.attribute_bytes(
            SECURE_RECORD,
            "$Secure:$SDS",
            x,
            MAX_SDS,
        )?))
    }

    /// The descriptor of record `n`: its own `$SECURITY_DESCRIPTOR` when it has one, else the
    /// one its security id names in `all`. `None` when it has neither.
    pub fn descriptor_of(&self, n: u64, security_id: u32, all: &Descriptors) -> Result<Option<Descriptor>, String> {
        let own = self
            .extents(n, ATTR_SECURITY_DESCRIPTOR, &[])
            .map_err(|e| e.to_string())?;
        if let Some(x) = own {
            let bytes = self
                .attribute_bytes(n, "$SECURITY_DESCRIPTOR", x, MAX_DESCRIPTOR as u64)
                .map_err(|e| e.to_string())?;
            return Descriptor::parse(&bytes)
                .map(Some)
                .map_err(|e| format!("its $SECURITY_DESCRIPTOR: {e}"));
        }
        if security_id == 0 {
            return Ok(None);
        }
        all.get(security_id).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// O:BA G:SY D:(A;;FA;;;WD): a descriptor as Windows stores it.
    fn sample() -> Vec<u8> {
        let ba = [1u8, 2, 0, 0, 0, 0, 0, 5, 32, 0, 0, 0, 0x20, 2, 0, 0];
        let sy = [1u8, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0];
        let wd = [1u8, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        let ace_len = 8 + wd.len();
        let mut acl = vec![2u8, 0];
        acl.extend_from_slice(&((8 + ace_len) as u16).to_le_bytes());
        acl.extend_from_slice(&1u16.to_le_bytes());
        acl.extend_from_slice(&[0, 0]);
        acl.extend_from_slice(&[0, 0]);
        acl.extend_from_slice(&(ace_len as u16).to_le_bytes());
        acl.extend_from_slice(&0x001F_01FFu32.to_le_bytes());
        acl.extend_from_slice(&wd);
        let mut d = vec![1u8, 0];
        d.extend_from_slice(&(SE_SELF_RELATIVE | SE_DACL_PRESENT).to_le_bytes());
        let owner = 20;
        let group = owner + ba.len();
        let dacl = group + sy.len();
        for o in [owner, group, 0, dacl] {
            d.extend_from_slice(&(o as u32).to_le_bytes());
        }
        d.extend_from_slice(&ba);
        d.extend_from_slice(&sy);
        d.extend_from_slice(&acl);
        d
    }

    fn entry(id: u32, offset: usize, sd: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&0xABCDu32.to_le_bytes());
        e.extend_from_slice(&id.to_le_bytes());
        e.extend_from_slice(&(offset as u64).to_le_bytes());
        e.extend_from_slice(&((ENTRY_HEADER + sd.len()) as u32).to_le_bytes());
        e.extend_from_slice(sd);
        e.resize(e.len().div_ceil(16) * 16, 0);
        e
    }

    /// `sample()` with a SACL of one ACE of type `kind` appended.
    fn with_sacl(kind: u8) -> Vec<u8> {
        let mut d = sample();
        let at = d.len();
        let wd = [1u8, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        let ace_len = 8 + wd.len();
        d.extend_from_slice(&[2, 0]);
        d.extend_from_slice(&((8 + ace_len) as u16).to_le_bytes());
        d.extend_from_slice(&[1, 0, 0, 0]);
        d.extend_from_slice(&[kind, 0]);
        d.extend_from_slice(&(ace_len as u16).to_le_bytes());
        d.extend_from_slice(&1u32.to_le_bytes());
        d.extend_from_slice(&wd);
        d[12..16].copy_from_slice(&(at as u32).to_le_bytes());
        d[2] |= SE_SACL_PRESENT as u8;
        d
    }

    #[test]
    fn a_sacl_of_labels_only_has_no_audit_entries() {
        let label = Descriptor::parse(&with_sacl(0x11)).unwrap();
        assert!(label.has_sacl() && !label.has_audit_entries());
        let audit = Descriptor::parse(&with_sacl(0x02)).unwrap();
        assert!(audit.has_audit_entries());
        assert!(!Descriptor::parse(&sample()).unwrap().has_audit_entries());
    }

    #[test]
    fn a_descriptor_names_its_owner() {
        let d = Descriptor::parse(&sample()).unwrap();
        assert_eq!(d.owner().as_deref(), Some("S-1-5-32-544"));
        assert!(d.has_group() && !d.has_sacl());
    }

    #[test]
    fn sds_entries_are_found_by_id_and_mirrors_passed_over() {
        let sd = sample();
        let mut sds = entry(0x100, 0, &sd);
        let second = sds.len();
        sds.extend(entry(0x101, second, &sd));
        let used = sds.len();
        sds.resize(SDS_BLOCK as usize, 0);
        // The mirror block: the same entries, naming the primary's offsets.
        sds.extend(entry(0x100, 0, &sd));
        sds.resize(2 * SDS_BLOCK as usize, 0);
        sds.extend(entry(0x102, 2 * SDS_BLOCK as usize, &sd));
        let all = Descriptors::index(sds);
        assert_eq!(all.len(), 3, "{used}");
        assert_eq!(all.get(0x101).unwrap().bytes(), &sd[..]);
        assert_eq!(all.get(0x102).unwrap().bytes(), &sd[..]);
        assert!(all.get(0x103).unwrap_err().contains("not in $Secure"));
    }

    #[test]
    fn hostile_descriptors_are_refused_with_the_reason() {
        let good = sample();
        let mut cases: Vec<(Vec<u8>, &str)> = Vec::new();
        let mut b = good.clone();
        b[0] = 2;
        cases.push((b, "revision 2"));
        let mut b = good.clone();
        b[3] = 0;
        cases.push((b, "not self-relative"));
        let mut b = good.clone();
        b[4..8].copy_from_slice(&5000u32.to_le_bytes());
        cases.push((b, "its owner"));
        let mut b = good.clone();
        b[21] = 40; // sub-authority count
        cases.push((b, "sub-authorities"));
        let mut b = good.clone();
        let dacl = u32_at(&b, 16) as usize;
        b[dacl + 2..dacl + 4].copy_from_slice(&4000u16.to_le_bytes());
        cases.push((b, "its DACL"));
        let mut b = good.clone();
        b[dacl + 4..dacl + 6].copy_from_slice(&9u16.to_le_bytes());
        cases.push((b, "entry 1 of 9"));
        let mut b = good.clone();
        b[dacl + 10..dacl + 12].copy_from_slice(&0u16.to_le_bytes());
        cases.push((b, "length of 0"));
        cases.push((good[..12].to_vec(), "shorter"));
        for (bytes, want) in cases {
            let e = Descriptor::parse(&bytes).unwrap_err();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }

    #[test]
    fn a_damaged_sds_indexes_what_it_can_and_never_reads_past_its_end() {
        let sd = sample();
        let mut sds = entry(0x100, 0, &sd);
        // A header whose length runs past the end.
        let mut bad = entry(0x101, sds.len(), &sd);
        bad[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        sds.extend(bad);
        let all = Descriptors::index(sds.clone());
        assert_eq!(all.len(), 1);
        for cut in 0..sds.len() {
            let _ = Descriptors::index(sds[..cut].to_vec());
        }
    }
}
