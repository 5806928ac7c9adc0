//! MFT file records: update-sequence fixups, the attribute walk, and data-run decoding.
//! Everything is bounds-checked; a damaged record is an [`NtfsError::Record`] naming it.

use super::NtfsError;

pub const ATTR_ATTRIBUTE_LIST: u32 = 0x20;
pub const ATTR_FILE_NAME: u32 = 0x30;
pub const ATTR_DATA: u32 = 0x80;
const ATTR_END: u32 = 0xffff_ffff;

/// One run of clusters: `count` clusters from `vcn` on, at `lcn` (`None` for a sparse run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub vcn: u64,
    pub lcn: Option<u64>,
    pub count: u64,
}

fn bad(record: u64, problem: impl Into<String>) -> NtfsError {
    NtfsError::Record {
        record,
        problem: problem.into(),
    }
}

/// Little-endian fields of on-disk structures (the caller has checked the bounds).
pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Checks the `FILE` signature and undoes the update-sequence fixups in place.
pub fn apply_fixups(buf: &mut [u8], record: u64) -> Result<(), NtfsError> {
    apply_fixups_of(buf, b"FILE", record)
}

/// Checks signature `magic` (`FILE`, `INDX`) and undoes the update-sequence fixups in place.
pub fn apply_fixups_of(buf: &mut [u8], magic: &[u8; 4], record: u64) -> Result<(), NtfsError> {
    if buf.len() < 48 {
        return Err(bad(record, "record is shorter than its header"));
    }
    if &buf[0..4] != magic {
        return Err(bad(
            record,
            format!(
                "no {} signature (found {:02x?})",
                String::from_utf8_lossy(magic),
                &buf[0..4]
            ),
        ));
    }
    let (usa_ofs, usa_count) = (u16_at(buf, 4) as usize, u16_at(buf, 6) as usize);
    if usa_count < 2 || usa_ofs + usa_count * 2 > buf.len() || !buf.len().is_multiple_of(usa_count - 1) {
        return Err(bad(
            record,
            format!("bad update sequence array (offset {usa_ofs}, count {usa_count})"),
        ));
    }
    let stride = buf.len() / (usa_count - 1);
    if stride < 256 {
        return Err(bad(record, format!("update sequence stride {stride} is too small")));
    }
    let usn = [buf[usa_ofs], buf[usa_ofs + 1]];
    for i in 1..usa_count {
        let end = i * stride - 2;
        if buf[end..end + 2] != usn {
            return Err(bad(
                record,
                format!("torn write: update sequence mismatch in sector {}", i - 1),
            ));
        }
        buf[end] = buf[usa_ofs + 2 * i];
        buf[end + 1] = buf[usa_ofs + 2 * i + 1];
    }
    Ok(())
}

/// Redoes the fixups of a record decoded by [`apply_fixups`] (for a record we patched).
pub fn encode_fixups(buf: &mut [u8]) {
    let (usa_ofs, usa_count) = (u16_at(buf, 4) as usize, u16_at(buf, 6) as usize);
    let stride = buf.len() / (usa_count - 1);
    let usn = [buf[usa_ofs], buf[usa_ofs + 1]];
    for i in 1..usa_count {
        let end = i * stride - 2;
        buf[usa_ofs + 2 * i] = buf[end];
        buf[usa_ofs + 2 * i + 1] = buf[end + 1];
        buf[end] = usn[0];
        buf[end + 1] = usn[1];
    }
}

/// One attribute header inside a decoded record.
#[derive(Debug, Clone)]
pub struct Attribute {
    /// Offset of the attribute inside the record.
    pub offset: usize,
    pub length: usize,
    pub ty: u32,
    pub name_len: u8,
    pub non_resident: bool,
    /// Attribute flags: [`FLAG_COMPRESSED`], [`FLAG_ENCRYPTED`], [`FLAG_SPARSE`].
    pub flags: u16,
}

/// Attribute header flags.
pub const FLAG_COMPRESSED: u16 = 0x0001;
pub const FLAG_ENCRYPTED: u16 = 0x4000;
pub const FLAG_SPARSE: u16 = 0x8000;

impl Attribute {
    /// The attribute's name as raw UTF-16LE bytes.
    pub fn name<'a>(&self, rec: &'a [u8]) -> Option<&'a [u8]> {
        let ofs = u16::from_le_bytes([rec[self.offset + 10], rec[self.offset + 11]]) as usize;
        let len = self.name_len as usize * 2;
        if len == 0 {
            return Some(&[]);
        }
        rec.get(self.offset + ofs..self.offset + ofs + len)
            .filter(|_| ofs + len <= self.length)
    }

    /// The resident value bytes.
    pub fn resident_value<'a>(&self, rec: &'a [u8], record: u64) -> Result<&'a [u8], NtfsError> {
        let a = &rec[self.offset..self.offset + self.length];
        if a.len() < 0x18 {
            return Err(bad(record, "resident attribute header is truncated"));
        }
        let (len, ofs) = (u32_at(a, 0x10) as usize, u16_at(a, 0x14) as usize);
        a.get(ofs..ofs.saturating_add(len)).ok_or_else(|| {
            bad(
                record,
                format!("resident value of attribute 0x{:x} overruns it", self.ty),
            )
        })
    }

    /// Header fields of a non-resident attribute.
    pub fn non_resident(&self, rec: &[u8], record: u64) -> Result<NonResident, NtfsError> {
        let a = &rec[self.offset..self.offset + self.length];
        if a.len() < 0x40 {
            return Err(bad(record, "non-resident attribute header is truncated"));
        }
        let mp = u16_at(a, 0x20) as usize;
        if mp < 0x40 || mp > a.len() {
            return Err(bad(
                record,
                format!("mapping pairs offset {mp} is outside the attribute"),
            ));
        }
        Ok(NonResident {
            lowest_vcn: u64_at(a, 0x10),
            highest_vcn: u64_at(a, 0x18),
            mapping_pairs: self.offset + mp,
            allocated_size: u64_at(a, 0x28),
            data_size: u64_at(a, 0x30),
            initialized_size: u64_at(a, 0x38),
            compression_unit: a[0x22],
        })
    }
}

/// Non-resident attribute header fields.
#[derive(Debug, Clone, Copy)]
pub struct NonResident {
    pub lowest_vcn: u64,
    pub highest_vcn: u64,
    /// Offset of the mapping pairs (data runs) inside the record.
    pub mapping_pairs: usize,
    pub allocated_size: u64,
    pub data_size: u64,
    /// Bytes written so far (the valid data length): what lies past it reads as zeros.
    pub initialized_size: u64,
    /// Clusters per compression unit, as a power of two (0: not compressed).
    pub compression_unit: u8,
}

/// Record header flags: in use.
pub fn in_use(rec: &[u8]) -> bool {
    u16_at(rec, 0x16) & 1 != 0
}

/// The attributes of a decoded record, in order.
pub fn attributes(rec: &[u8], record: u64) -> Result<Vec<Attribute>, NtfsError> {
    let first = u16_at(rec, 0x14) as usize;
    let used = (u32_at(rec, 0x18) as usize).min(rec.len());
    let mut out = Vec::new();
    let mut ofs = first;
    loop {
        if ofs + 4 > used {
            return Err(bad(
                record,
                "attribute list runs past the end of the record without an end marker",
            ));
        }
        let ty = u32_at(rec, ofs);
        if ty == ATTR_END {
            return Ok(out);
        }
        if ofs + 16 > used {
            return Err(bad(record, format!("attribute at offset {ofs} is truncated")));
        }
        let length = u32_at(rec, ofs + 4) as usize;
        if length < 16 || !length.is_multiple_of(8) || ofs + length > used {
            return Err(bad(
                record,
                format!("attribute 0x{ty:x} at offset {ofs} has a bad length {length}"),
            ));
        }
        out.push(Attribute {
            offset: ofs,
            length,
            ty,
            non_resident: rec[ofs + 8] != 0,
            name_len: rec[ofs + 9],
            flags: u16_at(rec, ofs + 12),
        });
        ofs += length;
    }
}

/// Decodes the mapping pairs at `rec[start..end]` into runs starting at `first_vcn`.
/// LCNs are checked against `clusters` (the volume's cluster count).
pub fn decode_runs(bytes: &[u8], first_vcn: u64, clusters: u64, record: u64) -> Result<Vec<Run>, NtfsError> {
    let mut runs = Vec::new();
    let mut pos = 0usize;
    let mut vcn = first_vcn;
    let mut lcn: i64 = 0;
    while pos < bytes.len() && bytes[pos] != 0 {
        let h = bytes[pos];
        let (nlen, olen) = ((h & 0x0f) as usize, (h >> 4) as usize);
        if nlen == 0 || nlen > 8 || olen > 8 || pos + 1 + nlen + olen > bytes.len() {
            return Err(bad(
                record,
                format!("bad data run header 0x{h:02x} at byte {pos} of the mapping pairs"),
            ));
        }
        let count = read_uint(&bytes[pos + 1..pos + 1 + nlen]);
        if count == 0 || count > i64::MAX as u64 {
            return Err(bad(record, format!("data run at byte {pos} has a bad length {count}")));
        }
        let run_lcn = if olen == 0 {
            None
        } else {
            let delta = read_int(&bytes[pos + 1 + nlen..pos + 1 + nlen + olen]);
            lcn = lcn
                .checked_add(delta)
                .ok_or_else(|| bad(record, "data run LCN overflows"))?;
            let end = (lcn as i128) + count as i128;
            if lcn < 0 || end > clusters as i128 {
                return Err(NtfsError::RunOutsideVolume {
                    record,
                    lcn: lcn.max(0) as u64,
                    end: end.clamp(0, u64::MAX as i128) as u64,
                    clusters,
                });
            }
            Some(lcn as u64)
        };
        runs.push(Run {
            vcn,
            lcn: run_lcn,
            count,
        });
        vcn = vcn
            .checked_add(count)
            .ok_or_else(|| bad(record, "data run VCN overflows"))?;
        pos += 1 + nlen + olen;
    }
    Ok(runs)
}

fn read_uint(b: &[u8]) -> u64 {
    b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64)
}

fn read_int(b: &[u8]) -> i64 {
    let mut v = read_uint(b) as i64;
    let bits = b.len() * 8;
    if bits < 64 && b.last().is_some_and(|&x| x & 0x80 != 0) {
        v -= 1i64 << bits;
    }
    v
}

/// Every (type, name) in an attribute list, once each.
pub fn attribute_list_names(list: &[u8]) -> Vec<(u32, Vec<u8>)> {
    let mut out: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut pos = 0usize;
    while pos + 26 <= list.len() {
        let len = u16::from_le_bytes([list[pos + 4], list[pos + 5]]) as usize;
        if len < 26 || pos + len > list.len() {
            break;
        }
        let (name_len, name_ofs) = (list[pos + 6] as usize * 2, list[pos + 7] as usize);
        if let Some(name) = list.get(pos + name_ofs..pos + name_ofs + name_len) {
            let key = (u32_at(list, pos), name.to_vec());
            if !out.contains(&key) {
                out.push(key);
            }
        }
        pos += len;
    }
    out
}

/// Attribute-list entries of attribute (`ty`, `name` as UTF-16LE bytes): (lowest VCN, record number).
pub fn attribute_list_entries(list: &[u8], ty: u32, name: &[u8], record: u64) -> Result<Vec<(u64, u64)>, NtfsError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 26 <= list.len() {
        let ety = u32_at(list, pos);
        let len = u16_at(list, pos + 4) as usize;
        if len < 26 || pos + len > list.len() {
            return Err(bad(
                record,
                format!("$ATTRIBUTE_LIST entry at byte {pos} has a bad length {len}"),
            ));
        }
        let (name_len, name_ofs) = (list[pos + 6] as usize * 2, list[pos + 7] as usize);
        let ename = list
            .get(pos + name_ofs..pos + name_ofs + name_len)
            .filter(|_| name_ofs + name_len <= len);
        if ety == ty && ename == Some(name) {
            let lowest_vcn = u64_at(list, pos + 8);
            let reference = u64_at(list, pos + 16) & 0x0000_ffff_ffff_ffff;
            out.push((lowest_vcn, reference));
        }
        pos += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_decode_with_negative_deltas_and_sparse() {
        // 0x21: 1-byte count 0x10, 2-byte LCN 0x0100; 0x11: count 8, LCN delta -16 (0xf0);
        // 0x01: sparse run of 4.
        let mp = [0x21, 0x10, 0x00, 0x01, 0x11, 0x08, 0xf0, 0x01, 0x04, 0x00];
        let runs = decode_runs(&mp, 0, 1000, 7).unwrap();
        assert_eq!(
            runs,
            vec![
                Run {
                    vcn: 0,
                    lcn: Some(256),
                    count: 16
                },
                Run {
                    vcn: 16,
                    lcn: Some(240),
                    count: 8
                },
                Run {
                    vcn: 24,
                    lcn: None,
                    count: 4
                },
            ]
        );
    }

    #[test]
    fn run_outside_volume_is_an_error() {
        let mp = [0x21, 0x10, 0x00, 0x01, 0x00];
        let err = decode_runs(&mp, 0, 100, 9).unwrap_err();
        assert!(
            matches!(
                err,
                NtfsError::RunOutsideVolume {
                    record: 9,
                    lcn: 256,
                    ..
                }
            ),
            "{err}"
        );
    }
}
