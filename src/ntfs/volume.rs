//! One NTFS volume on the source: boot-sector facts, label, path lookup (through the `ntfs`
//! crate's directory indexes) and file data runs (through [`super::mft::MftMap`]).

use ntfs::Ntfs;
use ntfs::indexes::NtfsFileNameIndex;

use super::NtfsError;
use super::mft::{FileData, MftMap};
use super::reader::{Remap, VolumeReader};
use crate::source::DiskFile;

/// MFT record number of the root directory.
const ROOT_RECORD: u64 = 5;
/// MFT record number of `$Bitmap`.
pub const BITMAP_RECORD: u64 = 6;

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
    ntfs: Ntfs,
    remap: Remap<'d>,
    facts: NtfsFacts,
}

impl<'d> NtfsVolume<'d> {
    /// Opens the volume at `offset`, `length` bytes long (the partition).
    pub fn open(disk: &'d DiskFile, offset: u64, length: u64) -> Result<Self, NtfsError> {
        let mut boot = [0u8; 512];
        disk.read_exact_at(&mut boot, offset)?;
        if &boot[3..11] != b"NTFS    " {
            return Err(NtfsError::NotNtfs(format!(
                "no NTFS boot sector at byte {offset} (OEM id {:?})",
                String::from_utf8_lossy(&boot[3..11])
            )));
        }
        let mut ntfs =
            Ntfs::new(&mut std::io::Cursor::new(&boot[..])).map_err(|e| NtfsError::BootSector(e.to_string()))?;
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
        let mft = MftMap::load(disk, offset, mft_position, cluster_size, record_size, clusters)?;
        let has_attribute_list = mft.has_attribute_list;
        let records = mft.record_count();
        let remap = Remap::new(disk, mft, offset, length);
        let mut fs = VolumeReader::new(&remap);
        ntfs.read_upcase_table(&mut fs)?;
        let label = match ntfs.volume_name(&mut fs) {
            Some(Ok(name)) => Some(name.name().to_string_lossy()),
            Some(Err(e)) => return Err(e.into()),
            None => None,
        };
        let serial64 = ntfs.serial_number();
        let facts = NtfsFacts {
            serial: format!("{:04X}-{:04X}", (serial64 >> 16) & 0xffff, serial64 & 0xffff),
            serial64: format!("{serial64:016X}"),
            label: label.filter(|l| !l.is_empty()),
            cluster_size: ntfs.cluster_size(),
            sector_size: ntfs.sector_size() as u32,
            fs_size: ntfs.size(),
            cluster_count: clusters,
            mft_record_size: ntfs.file_record_size(),
            mft_records: records,
            mft_attribute_list: has_attribute_list,
        };
        Ok(Self {
            disk,
            offset,
            ntfs,
            remap,
            facts,
        })
    }

    pub fn facts(&self) -> &NtfsFacts {
        &self.facts
    }

    fn reader(&self) -> VolumeReader<'_, 'd> {
        VolumeReader::new(&self.remap)
    }

    /// Looks up a root-relative path (`\Windows\System32`, `/pagefile.sys`), case-insensitively.
    pub fn lookup(&self, path: &str) -> Result<Option<Found>, NtfsError> {
        let mut fs = self.reader();
        let mut current = Found {
            record: ROOT_RECORD,
            is_dir: true,
        };
        for name in path.split(['\\', '/']).filter(|c| !c.is_empty()) {
            if !current.is_dir {
                return Ok(None);
            }
            let dir = self.ntfs.file(&mut fs, current.record)?;
            let index = dir.directory_index(&mut fs)?;
            let mut finder = index.finder();
            let Some(entry) = NtfsFileNameIndex::find(&mut finder, &self.ntfs, &mut fs, name) else {
                return Ok(None);
            };
            let entry = entry?;
            let is_dir = match entry.key() {
                Some(key) => key?.is_directory(),
                None => false,
            };
            current = Found {
                record: entry.file_reference().file_record_number(),
                is_dir,
            };
        }
        Ok(Some(current))
    }

    /// The entries of a directory: (name, record, is_dir), without DOS-only short names.
    pub fn list_dir(&self, record: u64) -> Result<Vec<(String, u64, bool)>, NtfsError> {
        let mut fs = self.reader();
        let dir = self.ntfs.file(&mut fs, record)?;
        let index = dir.directory_index(&mut fs)?;
        let mut entries = index.entries();
        let mut out = Vec::new();
        while let Some(entry) = entries.next(&mut fs) {
            let entry = entry?;
            let Some(key) = entry.key() else { continue };
            let key = key?;
            if key.namespace() == ntfs::structured_values::NtfsFileNamespace::Dos {
                continue;
            }
            out.push((
                key.name().to_string_lossy(),
                entry.file_reference().file_record_number(),
                key.is_directory(),
            ));
        }
        Ok(out)
    }

    /// File record `n` with its fixups undone.
    pub fn read_record(&self, n: u64) -> Result<Vec<u8>, NtfsError> {
        self.remap.map().read_record(self.disk, n)
    }

    /// Every extent of attribute (`ty`, `name` as UTF-16LE) of record `n`, joined.
    pub fn extents(&self, n: u64, ty: u32, name: &[u8]) -> Result<Option<super::mft::Extents>, NtfsError> {
        self.remap.map().extents(self.disk, n, ty, name)
    }

    /// The bytes of a record's `$ATTRIBUTE_LIST`.
    pub(super) fn attribute_list(
        &self,
        rec: &[u8],
        attr: &super::record::Attribute,
        n: u64,
    ) -> Result<Vec<u8>, NtfsError> {
        self.remap.map().attribute_list_bytes(self.disk, rec, attr, n)
    }

    /// The disk the volume is on, and where on it the volume starts.
    pub fn disk(&self) -> (&'d DiskFile, u64) {
        (self.disk, self.offset)
    }

    /// The unnamed `$DATA` stream of a record.
    pub fn file_data(&self, record: u64) -> Result<FileData, NtfsError> {
        self.remap.map().file_data(self.disk, record)
    }
}
