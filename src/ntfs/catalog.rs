//! The file catalog of a volume: what `winbundle ls` shows. Each entry's facts come from its
//! file record (not from the directory index's copy, which Windows updates lazily): times and
//! attribute flags from `$STANDARD_INFORMATION`, sizes from its `$DATA` streams, followed
//! through an `$ATTRIBUTE_LIST` when the record has one.

use super::NtfsError;
use super::record::{self, ATTR_ATTRIBUTE_LIST, ATTR_DATA};
use super::volume::NtfsVolume;

const ATTR_STANDARD_INFORMATION: u32 = 0x10;
/// Records below this are the file system's own metadata files (`$MFT`, `$Bitmap`, ...).
pub const FIRST_USER_RECORD: u64 = 16;

/// Windows file attribute flags (`FILE_ATTRIBUTE_*`) and the letters `ls --long` shows.
pub const ATTRIBUTE_NAMES: [(u32, char, &str); 10] = [
    (0x0001, 'R', "readonly"),
    (0x0002, 'H', "hidden"),
    (0x0004, 'S', "system"),
    (0x0020, 'A', "archive"),
    (0x0100, 'T', "temporary"),
    (0x0200, 'P', "sparse"),
    (0x0400, 'L', "reparse-point"),
    (0x0800, 'C', "compressed"),
    (0x1000, 'O', "offline"),
    (0x4000, 'E', "encrypted"),
];

/// One named data stream of a file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StreamInfo {
    pub name: String,
    pub size: u64,
}

/// What a file record says about its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    pub record: u64,
    pub is_dir: bool,
    /// The unnamed stream's size (0 for directories).
    pub size: u64,
    /// Times as FILETIME (100 ns since 1601-01-01 UTC).
    pub created: u64,
    pub modified: u64,
    pub accessed: u64,
    /// When the file record last changed.
    pub changed: u64,
    /// `FILE_ATTRIBUTE_*` flags from `$STANDARD_INFORMATION`.
    pub attributes: u32,
    /// Names pointing at the record (hard links, a DOS short name included).
    pub links: u16,
    /// Alternate data streams.
    pub streams: Vec<StreamInfo>,
    /// Its reparse point, when it has one (links, junctions, WOF, cloud files, ...).
    pub reparse: Option<super::reparse::Reparse>,
    /// Its descriptor's id in `$Secure` (0: none, as in NTFS 1.x's short `$STANDARD_INFORMATION`).
    pub security_id: u32,
}

/// A directory entry: one name of a record.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: String,
    pub info: FileInfo,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

pub use super::utf16::{name_from_utf16, name_to_utf16};

impl NtfsVolume<'_> {
    /// The facts of file record `n`.
    pub fn stat(&self, n: u64) -> Result<FileInfo, NtfsError> {
        let rec = self.read_record(n)?;
        if !record::in_use(&rec) {
            return Err(NtfsError::Record {
                record: n,
                problem: "the record is not in use (a directory entry points at a deleted file)".into(),
            });
        }
        let is_dir = u16_at(&rec, 0x16) & 2 != 0;
        let links = u16_at(&rec, 0x12);
        let attrs = record::attributes(&rec, n)?;
        let si = attrs
            .iter()
            .find(|a| a.ty == ATTR_STANDARD_INFORMATION)
            .ok_or_else(|| NtfsError::Record {
                record: n,
                problem: "no $STANDARD_INFORMATION".into(),
            })?;
        let v = si.resident_value(&rec, n)?;
        if v.len() < 0x24 {
            return Err(NtfsError::Record {
                record: n,
                problem: format!("$STANDARD_INFORMATION of {} bytes is too short", v.len()),
            });
        }
        let attributes = u32::from_le_bytes([v[0x20], v[0x21], v[0x22], v[0x23]]);
        // The names of every $DATA stream: in this record, or in extension records that the
        // attribute list names.
        let mut names: Vec<Vec<u8>> = Vec::new();
        for a in attrs.iter().filter(|a| a.ty == ATTR_DATA) {
            let name = a.name(&rec).unwrap_or_default().to_vec();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        if let Some(list_attr) = attrs.iter().find(|a| a.ty == ATTR_ATTRIBUTE_LIST) {
            let list = self.attribute_list(&rec, list_attr, n)?;
            for (ty, name) in record::attribute_list_names(&list) {
                if ty == ATTR_DATA && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        let reparse = if attributes & 0x400 != 0 {
            Some(self.reparse_point(n, attributes)?)
        } else {
            None
        };
        let mut size = 0;
        let mut streams = Vec::new();
        for name in names {
            let Some(x) = self.extents(n, ATTR_DATA, &name)? else {
                continue;
            };
            if name.is_empty() {
                size = x.size;
            } else {
                streams.push(StreamInfo {
                    name: name_from_utf16(&name),
                    size: x.size,
                });
            }
        }
        Ok(FileInfo {
            record: n,
            is_dir,
            size: if is_dir { 0 } else { size },
            created: u64_at(v, 0),
            modified: u64_at(v, 8),
            changed: u64_at(v, 16),
            accessed: u64_at(v, 24),
            attributes,
            links,
            streams,
            reparse,
            security_id: if v.len() >= 0x38 {
                u32::from_le_bytes([v[0x34], v[0x35], v[0x36], v[0x37]])
            } else {
                0
            },
        })
    }

    /// The reparse point of record `n` (whose attribute flags say it has one): resident, or in
    /// clusters (at most 16 KiB, as NTFS allows).
    fn reparse_point(&self, n: u64, attributes: u32) -> Result<super::reparse::Reparse, NtfsError> {
        use super::reparse::{ATTR_REPARSE_POINT, Reparse};
        let Some(x) = self.extents(n, ATTR_REPARSE_POINT, &[])? else {
            return Ok(Reparse::Damaged {
                tag: 0,
                problem: "the reparse-point attribute flag is set but the record has no $REPARSE_POINT".into(),
            });
        };
        if x.size > 16 << 10 && x.value.is_none() {
            return Ok(Reparse::Damaged {
                tag: 0,
                problem: format!(
                    "a $REPARSE_POINT of {} bytes is larger than NTFS allows (16 KiB)",
                    x.size
                ),
            });
        }
        let buf = self.attribute_bytes(n, "$REPARSE_POINT", x, 16 << 10)?;
        Ok(Reparse::parse(&buf, attributes))
    }

    /// The entries of directory record `dir` with their facts, in index order. `system`: also
    /// the metadata files (`$MFT`, `$Extend`, ...), which are hidden otherwise, as Windows
    /// Explorer and ntfs-3g hide them.
    pub fn entries(&self, dir: u64, system: bool) -> Result<Vec<DirEntry>, NtfsError> {
        let mut out = Vec::new();
        for (name, record, _) in self.list_dir(dir)? {
            if record < FIRST_USER_RECORD && !system {
                continue;
            }
            if record == dir {
                continue; // the root's entry "." for itself
            }
            let info = self.stat(record).map_err(|e| NtfsError::Path {
                path: name.clone(),
                problem: e.to_string(),
            })?;
            out.push(DirEntry { name, info });
        }
        Ok(out)
    }
}

/// FILETIME to Unix seconds and nanoseconds.
pub fn filetime_to_unix(ft: u64) -> (i64, u32) {
    const EPOCH_DIFF: i64 = 11_644_473_600;
    let secs = (ft / 10_000_000) as i64 - EPOCH_DIFF;
    let nanos = ((ft % 10_000_000) * 100) as u32;
    (secs, nanos)
}

/// FILETIME as RFC 3339 (UTC), e.g. `2026-11-28T10:00:00.1234567Z`.
pub fn filetime_rfc3339(ft: u64) -> String {
    let (secs, nanos) = filetime_to_unix(ft);
    match chrono::DateTime::from_timestamp(secs, nanos) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        None => format!("FILETIME {ft}"),
    }
}

/// The attribute letters set in `attributes` (`RHSA...`), `-` where none.
pub fn attribute_letters(attributes: u32) -> String {
    ATTRIBUTE_NAMES
        .iter()
        .map(|&(bit, c, _)| if attributes & bit != 0 { c } else { '-' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filetimes_convert_to_unix_and_text() {
        // 2000-01-01T00:00:00Z
        let ft = (946_684_800 + 11_644_473_600u64) * 10_000_000 + 5;
        assert_eq!(filetime_to_unix(ft), (946_684_800, 500));
        assert_eq!(filetime_rfc3339(ft), "2000-01-01T00:00:00.000000500Z");
        assert_eq!(attribute_letters(0x0821), "R--A---C--");
    }

    #[test]
    fn names_round_trip_through_utf16() {
        let n = "日本語 ä";
        assert_eq!(name_from_utf16(&name_to_utf16(n)), n);
    }
}
