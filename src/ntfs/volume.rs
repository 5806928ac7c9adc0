//! One NTFS volume on the source: boot-sector facts, label, path lookup (through our checked
//! directory-index parser, [`super::index`]) and file data runs (through [`super::mft::MftMap`]).
//! Every public method runs inside [`super::guard::contain`].

use super::guard::contain;
use super::index::{self, NAMESPACE_DOS};
use super::mft::{FileData, MftMap, read_runs};
use super::record::ATTR_DATA;
use super::{NtfsError, guard};
use crate::source::DiskFile;

/// MFT record number of the root directory.
pub const ROOT_RECORD: u64 = 5;
/// MFT record number of `$Bitmap`.
pub const BITMAP_RECORD: u64 = 6;
/// MFT record number of `$Volume` and its `$VOLUME_NAME` attribute.
const VOLUME_RECORD: u64 = 3;
const ATTR_VOLUME_NAME: u32 = 0x60;
/// MFT record number of `$UpCase`, the table that folds names for case-insensitive lookups.
const UPCASE_RECORD: u64 = 10;
const UPCASE_BYTES: usize = 65536 * 2;

/// What a bundle records about the volume.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct NtfsFacts {
    /// Volume serial number, as Windows prints it (`XXXX-XXXX`, the low 32 bits).
    pub serial: String,
    /// The full 64-bit serial in hex.
    pub serial64: String,
    pub label: Option<String>,
    pub cluster_size: u32,
    pub sector_size: u32,
    /// Size of the NTFS file system per its boot sector (total sectors × sector size).
    pub fs_size: u64,
    pub cluster_count: u64,
    pub mft_record_size: u32,
    pub mft_records: u64,
    /// True when the `$MFT` is fragmented enough to need an `$ATTRIBUTE_LIST`.
    pub mft_attribute_list: bool,
}

/// An entry found by path.
#[derive(Debug, Clone, Copy)]
pub struct Found {
    pub record: u64,
    pub is_dir: bool,
}

/// An opened NTFS volume.
pub struct NtfsVolume<'d> {
    disk: &'d DiskFile,
    /// Where the volume starts on the disk.
    offset: u64,
    map: MftMap,
    facts: NtfsFacts,
    /// `$UpCase`: the upper case of every UTF-16 unit.
    upcase: Vec<u16>,
}

impl<'d> NtfsVolume<'d> {
    /// Opens the volume at `offset`, `length` bytes long (the partition).
    pub fn open(disk: &'d DiskFile, offset: u64, length: u64) -> Result<Self, NtfsError> {
        contain(0, "boot sector", || Self::open_unguarded(disk, offset, length))
    }

    fn open_unguarded(disk: &'d DiskFile, offset: u64, length: u64) -> Result<Self, NtfsError> {
        let mut boot = [0u8; 512];
        disk.read_exact_at(&mut boot, offset)?;
        if &boot[3..11] != b"NTFS    " {
            return Err(NtfsError::NotNtfs(format!(
                "no NTFS boot sector at byte {offset} (OEM id {:?})",
                String::from_utf8_lossy(&boot[3..11])
            )));
        }
        // The `ntfs` crate checks the boot sector's fields (sector and cluster sizes, record
        // size, totals); it is the only part of the crate in use (see docs/reliability.md).
        let ntfs =
            ntfs::Ntfs::new(&mut std::io::Cursor::new(&boot[..])).map_err(|e| NtfsError::BootSector(e.to_string()))?;
        let cluster_size = ntfs.cluster_size() as u64;
        if ntfs.size() > length {
            return Err(NtfsError::BootSector(format!(
                "the file system claims {} bytes but its partition is {length} bytes",
                ntfs.size()
            )));
        }
        let clusters = ntfs.size() / cluster_size;
        let mft_position = ntfs
            .mft_position()
            .value()
            .map(|v| v.get())
            .ok_or_else(|| NtfsError::BootSector("no MFT position".into()))?;
        if mft_position >= ntfs.size() {
            return Err(NtfsError::BootSector(format!(
                "the MFT starts at byte {mft_position}, past the end of the file system ({} bytes)",
                ntfs.size()
            )));
        }
        let record_size = ntfs.file_record_size() as u64;
        guard::mark(0, "$MFT", 0);
        let map = MftMap::load(disk, offset, mft_position, cluster_size, record_size, clusters)?;
        let serial64 = ntfs.serial_number();
        let facts = NtfsFacts {
            serial: format!("{:04X}-{:04X}", (serial64 >> 16) & 0xffff, serial64 & 0xffff),
            serial64: format!("{serial64:016X}"),
            label: None,
            cluster_size: ntfs.cluster_size(),
            sector_size: ntfs.sector_size() as u32,
            fs_size: ntfs.size(),
            cluster_count: clusters,
            mft_record_size: ntfs.file_record_size(),
            mft_records: map.record_count(),
            mft_attribute_list: map.has_attribute_list,
        };
        let mut vol = Self {
            disk,
            offset,
            map,
            facts,
            upcase: Vec::new(),
        };
        vol.upcase = vol.read_upcase()?;
        vol.facts.label = vol.read_label()?.filter(|l| !l.is_empty());
        Ok(vol)
    }

    /// `$UpCase`'s table (record 10's unnamed `$DATA`, 65,536 UTF-16 units).
    fn read_upcase(&self) -> Result<Vec<u16>, NtfsError> {
        guard::mark(UPCASE_RECORD, "$UpCase", 0);
        let bad = |problem: String| NtfsError::Record {
            record: UPCASE_RECORD,
            problem,
        };
        let x = self
            .extents(UPCASE_RECORD, ATTR_DATA, &[])?
            .ok_or_else(|| bad("$UpCase has no $DATA".into()))?;
        if x.size != UPCASE_BYTES as u64 {
            return Err(bad(format!("$UpCase holds {} bytes, not {UPCASE_BYTES}", x.size)));
        }
        let bytes = match x.value {
            Some(v) => v,
            None => {
                let mut b = vec![0u8; UPCASE_BYTES];
                read_runs(
                    self.disk,
                    self.offset,
                    self.facts.cluster_size as u64,
                    &x.runs,
                    0,
                    &mut b,
                )
                .map_err(|e| bad(format!("$UpCase: {e}")))?;
                b
            }
        };
        Ok(bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect())
    }

    /// The volume label: `$Volume`'s `$VOLUME_NAME`.
    fn read_label(&self) -> Result<Option<String>, NtfsError> {
        guard::mark(VOLUME_RECORD, "$VOLUME_NAME", 0);
        Ok(self
            .extents(VOLUME_RECORD, ATTR_VOLUME_NAME, &[])?
            .and_then(|x| x.value)
            .map(|v| super::utf16::name_from_utf16(&v)))
    }

    fn upper(&self, u: u16) -> u16 {
        self.upcase.get(u as usize).copied().unwrap_or(u)
    }

    pub fn facts(&self) -> &NtfsFacts {
        &self.facts
    }

    /// Looks up a root-relative path (`\Windows\System32`, `/pagefile.sys`), case-insensitively
    /// (through `$UpCase`, as Windows compares names).
    pub fn lookup(&self, path: &str) -> Result<Option<Found>, NtfsError> {
        contain(ROOT_RECORD, "directory index", || {
            let mut current = Found {
                record: ROOT_RECORD,
                is_dir: true,
            };
            for name in path.split(['\\', '/']).filter(|c| !c.is_empty()) {
                if !current.is_dir {
                    return Ok(None);
                }
                let want: Vec<u16> = name.encode_utf16().map(|u| self.upper(u)).collect();
                let entries = index::entries(self, current.record)?;
                let hit = entries.iter().find(|e| {
                    e.name.len() == want.len() && e.name.iter().zip(&want).all(|(&a, &b)| self.upper(a) == b)
                });
                let Some(hit) = hit else { return Ok(None) };
                current = Found {
                    record: hit.record,
                    is_dir: hit.is_dir,
                };
            }
            Ok(Some(current))
        })
    }

    /// The entries of a directory: (name, record, is_dir), without DOS-only short names, in
    /// index order.
    pub fn list_dir(&self, record: u64) -> Result<Vec<(String, u64, bool)>, NtfsError> {
        contain(record, "directory index", || {
            Ok(index::entries(self, record)?
                .into_iter()
                .filter(|e| e.namespace != NAMESPACE_DOS)
                .map(|e| (String::from_utf16_lossy(&e.name), e.record, e.is_dir))
                .collect())
        })
    }

    /// File record `n` with its fixups undone.
    pub fn read_record(&self, n: u64) -> Result<Vec<u8>, NtfsError> {
        contain(n, "file record", || self.map.read_record(self.disk, n))
    }

    /// Every extent of attribute (`ty`, `name` as UTF-16LE) of record `n`, joined.
    pub fn extents(&self, n: u64, ty: u32, name: &[u8]) -> Result<Option<super::mft::Extents>, NtfsError> {
        contain(n, "attribute", || self.map.extents(self.disk, n, ty, name))
    }

    /// An attribute's bytes (resident, or read from its clusters; past the valid data length,
    /// zeros), refused above `max` bytes.
    pub(super) fn attribute_bytes(
        &self,
        n: u64,
        what: &'static str,
        x: super::mft::Extents,
        max: u64,
    ) -> Result<Vec<u8>, NtfsError> {
        if let Some(v) = x.value {
            return Ok(v);
        }
        if x.size > max {
            return Err(NtfsError::Structure {
                record: n,
                structure: what,
                offset: 0,
                problem: format!("{} bytes is more than the {max} it may hold; run `chkdsk /f`", x.size),
            });
        }
        let mut buf = vec![0u8; x.size as usize];
        let valid = x.initialized_size.min(x.size) as usize;
        let (disk, offset) = self.disk();
        read_runs(
            disk,
            offset,
            u64::from(self.facts().cluster_size),
            &x.runs,
            0,
            &mut buf[..valid],
        )?;
        Ok(buf)
    }

    /// The bytes of a record's `$ATTRIBUTE_LIST`.
    pub(super) fn attribute_list(
        &self,
        rec: &[u8],
        attr: &super::record::Attribute,
        n: u64,
    ) -> Result<Vec<u8>, NtfsError> {
        contain(n, "$ATTRIBUTE_LIST", || {
            self.map.attribute_list_bytes(self.disk, rec, attr, n)
        })
    }

    /// The disk the volume is on, and where on it the volume starts.
    pub fn disk(&self) -> (&'d DiskFile, u64) {
        (self.disk, self.offset)
    }

    /// Where `$MFT`'s records are.
    pub fn mft(&self) -> &MftMap {
        &self.map
    }

    /// `$Bitmap` as an allocation map, nothing excluded.
    pub fn plain_allocation_map(&self) -> Result<super::AllocationMap<'d>, NtfsError> {
        let bitmap = self.file_data(BITMAP_RECORD)?;
        super::AllocationMap::new(
            self.disk,
            self.offset,
            u64::from(self.facts.cluster_size),
            self.facts.cluster_count,
            &bitmap,
            Vec::new(),
        )
    }

    /// The unnamed `$DATA` stream of a record.
    pub fn file_data(&self, record: u64) -> Result<FileData, NtfsError> {
        contain(record, "$DATA", || self.map.file_data(self.disk, record))
    }
}

impl super::index::Records for NtfsVolume<'_> {
    fn extents(&self, record: u64, ty: u32, name: &[u8]) -> Result<Option<super::mft::Extents>, NtfsError> {
        NtfsVolume::extents(self, record, ty, name)
    }
    fn disk(&self) -> (&DiskFile, u64) {
        NtfsVolume::disk(self)
    }
    fn cluster_size(&self) -> u64 {
        u64::from(self.facts().cluster_size)
    }
}
