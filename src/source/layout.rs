//! Which partition is C:. Each partition's file system is recognised from its first sector;
//! every NTFS volume is opened and searched for `\Windows\System32`. The root volume is the one
//! NTFS volume that has it; failing that, the only NTFS volume; otherwise the user chooses.
//! Every other partition is excluded: on EC2 those are instance stores whose data is not kept.

use std::path::Path;

use super::partition::{Partition, PartitionTable, PartitionType, read_table};
use super::{DiskFile, SourceError};
use crate::ntfs::NtfsVolume;

pub use super::filesystem::{FileSystem, detect_fs};

/// A partition and what was found on it.
#[derive(Debug, Clone)]
pub struct PartitionInfo {
    pub partition: Partition,
    pub fs: FileSystem,
    pub label: Option<String>,
    /// True when the NTFS volume holds `\Windows\System32`.
    pub has_windows: bool,
    /// Why an NTFS-looking volume could not be opened.
    pub error: Option<String>,
    /// Why this partition is not bundled (None for the root volume).
    pub excluded_because: Option<String>,
}

/// The root volume and why.
#[derive(Debug, Clone)]
pub struct RootChoice {
    pub index: u32,
    pub reason: String,
}

/// The disk as a bundle sees it.
#[derive(Debug, Clone)]
pub struct DiskLayout {
    pub disk_size: u64,
    pub table: PartitionTable,
    pub partitions: Vec<PartitionInfo>,
    pub root: RootChoice,
}

impl DiskLayout {
    pub fn root(&self) -> &PartitionInfo {
        self.partitions
            .iter()
            .find(|p| p.partition.index == self.root.index)
            .unwrap_or(&self.partitions[0])
    }
}

/// True when the last sector of the partition (at 512 or 4096 bytes) is an NTFS boot sector.
fn backup_boot_sector_is_ntfs(disk: &DiskFile, p: &Partition) -> Result<bool, SourceError> {
    for ss in [512u64, 4096] {
        if p.length >= 2 * ss {
            let mut s = vec![0u8; 512];
            disk.read_exact_at(&mut s, p.offset + p.length - ss)?;
            if detect_fs(&s) == FileSystem::Ntfs {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn describe(p: &PartitionInfo) -> String {
    let mut s = match p.partition.index {
        0 => format!("the whole image ({}", p.fs),
        n => format!("partition {n} ({}", p.fs),
    };
    if let Some(l) = &p.label {
        s.push_str(&format!(", label {l:?}"));
    }
    s.push_str(&format!(", {} MiB)", p.partition.length >> 20));
    s
}

/// Reads the table, looks at every partition and picks the root volume.
pub fn analyse(disk: &DiskFile, forced: Option<u32>) -> Result<DiskLayout, SourceError> {
    let (table, mut partitions) = survey(disk)?;
    let root = choose_root(disk.path(), &partitions, forced)?;
    for p in &mut partitions {
        if p.partition.index != root.index {
            let what = match (&p.partition.ptype, p.fs) {
                (PartitionType::Gpt(_), _) | (PartitionType::Mbr(_), _) if p.partition.ptype.name() != "unknown" => {
                    p.partition.ptype.name().to_string()
                }
                _ => format!("{} partition", p.fs),
            };
            p.excluded_because = Some(format!(
                "not the root volume ({what}): only C:\\ is bundled, the data on other volumes is not preserved"
            ));
        }
    }
    Ok(DiskLayout {
        disk_size: disk.size(),
        table,
        partitions,
        root,
    })
}

/// Reads the table and looks at every partition (file system, label, `\Windows\System32`),
/// without choosing a root volume: what `inspect` shows of a disk that has none.
pub fn survey(disk: &DiskFile) -> Result<(PartitionTable, Vec<PartitionInfo>), SourceError> {
    let table = read_table(disk)?;
    let mut partitions = Vec::new();
    for p in &table.partitions {
        let mut sector = [0u8; 512];
        let mut fs = if p.length >= 512 {
            disk.read_exact_at(&mut sector, p.offset)?;
            detect_fs(&sector)
        } else {
            FileSystem::Unknown
        };
        let mut error = None;
        if fs == FileSystem::Unknown && backup_boot_sector_is_ntfs(disk, p)? {
            // The primary boot sector is gone but NTFS's backup copy survives: this is a
            // damaged NTFS volume, possibly C:, and must not be passed over silently.
            fs = FileSystem::Ntfs;
            error = Some(
                "its boot sector is damaged (the backup boot sector at the end of the partition is intact: `ntfsfix` or `chkdsk` can restore it)"
                    .to_string(),
            );
        }
        let mut info = PartitionInfo {
            partition: p.clone(),
            fs,
            label: None,
            has_windows: false,
            error,
            excluded_because: None,
        };
        if fs == FileSystem::Ntfs && info.error.is_none() {
            match NtfsVolume::open(disk, p.offset, p.length) {
                Ok(vol) => {
                    info.label = vol.facts().label.clone();
                    match vol.lookup("\\Windows\\System32") {
                        Ok(found) => info.has_windows = found.is_some_and(|f| f.is_dir),
                        Err(e) => info.error = Some(e.to_string()),
                    }
                }
                Err(e) => info.error = Some(e.to_string()),
            }
        }
        partitions.push(info);
    }
    Ok((table, partitions))
}

/// The partition `--partition` names, if it can be the root volume.
fn forced_root(parts: &[PartitionInfo], index: u32) -> Result<RootChoice, SourceError> {
    let Some(p) = parts.iter().find(|p| p.partition.index == index) else {
        let have: Vec<String> = parts.iter().map(|p| p.partition.index.to_string()).collect();
        return Err(SourceError::BadPartitionChoice {
            index,
            reason: format!("no such partition (this disk has {})", have.join(", ")),
        });
    };
    if p.fs != FileSystem::Ntfs {
        return Err(SourceError::BadPartitionChoice {
            index,
            reason: format!("it holds {}, not NTFS", p.fs),
        });
    }
    if let Some(e) = &p.error {
        return Err(SourceError::BadPartitionChoice {
            index,
            reason: e.clone(),
        });
    }
    Ok(RootChoice {
        index,
        reason: "chosen with --partition".into(),
    })
}

/// The root volume: the one `--partition` names, else the NTFS volume that holds
/// `\Windows\System32`, else the only NTFS volume; an error says why none can be chosen.
fn choose_root(path: &Path, parts: &[PartitionInfo], forced: Option<u32>) -> Result<RootChoice, SourceError> {
    if let Some(index) = forced {
        return forced_root(parts, index);
    }
    let windows: Vec<&PartitionInfo> = parts.iter().filter(|p| p.has_windows).collect();
    match windows.len() {
        1 => {
            return Ok(RootChoice {
                index: windows[0].partition.index,
                reason: "the NTFS volume that holds \\Windows\\System32".into(),
            });
        }
        n if n > 1 => {
            let c: Vec<String> = windows.iter().map(|p| describe(p)).collect();
            return Err(SourceError::AmbiguousRoot {
                path: path.to_path_buf(),
                candidates: format!("{n} volumes hold \\Windows\\System32: {}", c.join("; ")),
            });
        }
        _ => {}
    }
    if let Some(locked) = parts.iter().find(|p| p.fs == FileSystem::Bitlocker) {
        // C: may well be the encrypted one: taking another NTFS volume would bundle the wrong
        // volume.
        return Err(SourceError::NoRootVolume {
            path: path.to_path_buf(),
            reason: format!(
                "{} is encrypted with BitLocker and no readable NTFS volume holds \\Windows\\System32: C: is most likely the encrypted one (pass --partition N to bundle another NTFS volume anyway)",
                describe(locked)
            ),
            bitlocker: true,
        });
    }
    let ntfs: Vec<&PartitionInfo> = parts.iter().filter(|p| p.fs == FileSystem::Ntfs).collect();
    if let Some(broken) = ntfs.iter().find(|p| p.error.is_some()) {
        // A damaged NTFS volume might be C:; picking another one would bundle the wrong volume.
        // It was found: what is wrong is its structure (NoRootVolume is for no NTFS at all).
        return Err(SourceError::DamagedVolume {
            path: path.to_path_buf(),
            index: broken.partition.index,
            problem: broken.error.clone().unwrap_or_default(),
        });
    }
    match ntfs.len() {
        1 => Ok(RootChoice {
            index: ntfs[0].partition.index,
            reason: if parts.len() == 1 && parts[0].partition.index == 0 {
                "a bare NTFS volume image (no \\Windows\\System32 on it)".into()
            } else {
                "the only NTFS volume (none holds \\Windows\\System32)".into()
            },
        }),
        0 => {
            let found: Vec<String> = parts.iter().map(describe).collect();
            let bitlocker = parts.iter().any(|p| p.fs == FileSystem::Bitlocker);
            Err(SourceError::NoRootVolume {
                path: path.to_path_buf(),
                reason: format!(
                    "no NTFS volume (found: {}){}",
                    if found.is_empty() {
                        "no partitions".to_string()
                    } else {
                        found.join("; ")
                    },
                    if bitlocker {
                        "; BitLocker encrypts its volume: winbundle cannot read an NTFS volume inside it"
                    } else {
                        ""
                    }
                ),
                bitlocker,
            })
        }
        n => {
            let c: Vec<String> = ntfs.iter().map(|p| describe(p)).collect();
            Err(SourceError::AmbiguousRoot {
                path: path.to_path_buf(),
                candidates: format!("{n} NTFS volumes and none holds \\Windows\\System32: {}", c.join("; ")),
            })
        }
    }
}
