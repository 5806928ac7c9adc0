//! Which file system a partition holds, as its first sector announces it.

/// The file system a partition's first sector announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileSystem {
    Ntfs,
    Fat,
    Exfat,
    Refs,
    Bitlocker,
    Unknown,
}

impl std::fmt::Display for FileSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileSystem::Ntfs => "NTFS",
            FileSystem::Fat => "FAT",
            FileSystem::Exfat => "exFAT",
            FileSystem::Refs => "ReFS",
            FileSystem::Bitlocker => "BitLocker",
            FileSystem::Unknown => "unknown",
        })
    }
}

/// Recognises a file system from its boot sector.
pub fn detect_fs(sector: &[u8]) -> FileSystem {
    if sector.len() < 512 {
        return FileSystem::Unknown;
    }
    match &sector[3..11] {
        b"NTFS    " => FileSystem::Ntfs,
        b"EXFAT   " => FileSystem::Exfat,
        b"-FVE-FS-" => FileSystem::Bitlocker,
        b"ReFS\0\0\0\0" => FileSystem::Refs,
        _ if &sector[82..87] == b"FAT32" || &sector[54..59] == b"FAT12" || &sector[54..59] == b"FAT16" => {
            FileSystem::Fat
        }
        _ => FileSystem::Unknown,
    }
}
