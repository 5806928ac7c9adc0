//! Partition tables: GPT (512- and 4096-byte sectors, primary header with a fall-back to the
//! backup), MBR with extended/logical partitions, or none (a bare volume image).
//!
//! Every field comes from untrusted input: counts are bounded before anything is allocated,
//! offsets are checked against the disk size, and the logical-partition chain is walked with a
//! visited set so a looping chain is an error, not a hang.

use std::collections::HashSet;

use super::{DiskFile, SourceError};

/// At most this many GPT entries are read (the usual table has 128).
const MAX_GPT_ENTRIES: u32 = 4096;
/// At most this many logical partitions are followed in an extended partition.
const MAX_LOGICAL: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    Gpt,
    Mbr,
    /// No partition table: the source is a bare volume image.
    None,
}

impl std::fmt::Display for TableKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TableKind::Gpt => "GPT",
            TableKind::Mbr => "MBR",
            TableKind::None => "none (bare volume image)",
        })
    }
}

/// The type of a partition as its table records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionType {
    /// A GPT type GUID, in its canonical upper-case text form.
    Gpt(String),
    /// An MBR type byte.
    Mbr(u8),
    /// The whole source (no partition table).
    Whole,
}

impl PartitionType {
    /// The identifier as text: the GUID, `0x07`, or `none`.
    pub fn id(&self) -> String {
        match self {
            PartitionType::Gpt(g) => g.clone(),
            PartitionType::Mbr(t) => format!("0x{t:02x}"),
            PartitionType::Whole => "none".to_string(),
        }
    }

    /// A human name for well-known types.
    pub fn name(&self) -> &'static str {
        match self {
            PartitionType::Gpt(g) => match g.as_str() {
                "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
                "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI system",
                "E3C9E316-0B5C-4DB8-817D-F92DF00215AE" => "Microsoft reserved",
                "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC" => "Windows recovery",
                "5808C8AA-7E8F-42E0-85D2-E1E90434CFB3" => "LDM metadata",
                "AF9B60A0-1431-4F62-BC68-3311714A69AD" => "LDM data",
                "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
                "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
                _ => "unknown",
            },
            PartitionType::Mbr(t) => match t {
                0x07 => "NTFS/exFAT/IFS",
                0x0b | 0x0c => "FAT32",
                0x01 | 0x04 | 0x06 | 0x0e => "FAT",
                0x27 => "Windows recovery",
                0x42 => "LDM (dynamic disk)",
                0x83 => "Linux",
                0xef => "EFI system",
                _ => "unknown",
            },
            PartitionType::Whole => "bare volume",
        }
    }
}

/// One partition, with byte offsets.
#[derive(Debug, Clone)]
pub struct Partition {
    /// 1-based number as Linux numbers them (MBR logical partitions start at 5); 0 for a bare volume.
    pub index: u32,
    pub offset: u64,
    pub length: u64,
    pub ptype: PartitionType,
    /// GPT partition name, when there is one.
    pub name: Option<String>,
    /// MBR active flag.
    pub bootable: bool,
}

/// The partition table of a disk.
#[derive(Debug, Clone)]
pub struct PartitionTable {
    pub kind: TableKind,
    pub sector_size: u32,
    /// GPT disk GUID or MBR disk signature, when there is one.
    pub disk_id: Option<String>,
    pub partitions: Vec<Partition>,
    /// Things worth telling the user that did not stop the read (a damaged primary GPT, say).
    pub warnings: Vec<String>,
}

/// Reads the partition table of `disk`, or recognises a bare NTFS volume.
pub fn read_table(disk: &DiskFile) -> Result<PartitionTable, SourceError> {
    if disk.size() < 512 {
        return Err(SourceError::Table(format!(
            "the source is only {} bytes: too small to hold a partition table or a boot sector",
            disk.size()
        )));
    }
    let mut first = vec![0u8; 512];
    disk.read_exact_at(&mut first, 0)?;
    // A bare volume: NTFS, or another file system users meet on Windows disks (BitLocker,
    // exFAT, ReFS, FAT), which is then named rather than read as a garbled MBR.
    let bare = &first[3..11] == b"NTFS    " || bare_other_fs(&first);
    if bare {
        let ss = u16::from_le_bytes([first[11], first[12]]) as u32;
        return Ok(PartitionTable {
            kind: TableKind::None,
            sector_size: if [512, 1024, 2048, 4096].contains(&ss) { ss } else { 512 },
            disk_id: None,
            partitions: vec![Partition {
                index: 0,
                offset: 0,
                length: disk.size(),
                ptype: PartitionType::Whole,
                name: None,
                bootable: false,
            }],
            warnings: Vec::new(),
        });
    }
    for ss in [512u32, 4096] {
        if disk.size() >= 2 * ss as u64 {
            let mut sig = [0u8; 8];
            disk.read_exact_at(&mut sig, ss as u64)?;
            if &sig == b"EFI PART" {
                return read_gpt(disk, ss);
            }
        }
    }
    if first[510..512] != [0x55, 0xaa] {
        return Err(SourceError::Table(
            "no GPT header, no MBR signature (55 AA) and no NTFS boot sector at byte 0: this is not a disk or NTFS volume image"
                .into(),
        ));
    }
    let entries = mbr_entries(&first);
    if entries.iter().any(|e| e.ptype == 0xee) {
        // A protective MBR whose GPT header is missing at both sector sizes: try the backup.
        for ss in [512u32, 4096] {
            if let Ok(t) = read_gpt_backup_only(disk, ss) {
                return Ok(t);
            }
        }
        return Err(SourceError::Table(
            "protective MBR (type 0xEE) but no valid GPT header at LBA 1 or at the end of the disk".into(),
        ));
    }
    read_mbr(disk, &first)
}

/// True when sector 0 is the boot sector of a BitLocker, exFAT, ReFS or FAT volume (not an
/// MBR): their OEM names, and for FAT also a sound BIOS parameter block, since "FAT32" could
/// in principle sit in an MBR's boot code.
fn bare_other_fs(first: &[u8]) -> bool {
    use super::filesystem::{FileSystem, detect_fs};
    match detect_fs(first) {
        FileSystem::Bitlocker | FileSystem::Exfat | FileSystem::Refs => true,
        FileSystem::Fat => {
            let bps = u16::from_le_bytes([first[11], first[12]]);
            let spc = first[13];
            let reserved = u16::from_le_bytes([first[14], first[15]]);
            [512, 1024, 2048, 4096].contains(&bps)
                && spc.is_power_of_two()
                && reserved > 0
                && (1..=2).contains(&first[16])
        }
        _ => false,
    }
}

// ------------------------------------------------------------------------------------------ GPT

struct GptHeader {
    my_lba: u64,
    alternate_lba: u64,
    disk_guid: String,
    entries_lba: u64,
    num_entries: u32,
    entry_size: u32,
    entries_crc: u32,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Formats a mixed-endian GUID as text.
pub fn guid_text(b: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        le_u32(b, 0),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

fn parse_gpt_header(disk: &DiskFile, ss: u32, lba: u64) -> Result<GptHeader, String> {
    let mut h = vec![0u8; ss as usize];
    let off = lba.checked_mul(ss as u64).ok_or("header LBA overflows")?;
    disk.read_exact_at(&mut h, off).map_err(|e| e.to_string())?;
    if &h[0..8] != b"EFI PART" {
        return Err(format!("no GPT signature at LBA {lba}"));
    }
    let header_size = le_u32(&h, 12);
    if !(92..=ss).contains(&header_size) {
        return Err(format!("header size {header_size} is out of range"));
    }
    let stored_crc = le_u32(&h, 16);
    let mut copy = h[..header_size as usize].to_vec();
    copy[16..20].fill(0);
    let crc = crc32fast::hash(&copy);
    if crc != stored_crc {
        return Err(format!(
            "header CRC32 mismatch at LBA {lba} (stored {stored_crc:08x}, computed {crc:08x})"
        ));
    }
    let num_entries = le_u32(&h, 80);
    let entry_size = le_u32(&h, 84);
    if num_entries > MAX_GPT_ENTRIES {
        return Err(format!(
            "{num_entries} partition entries (at most {MAX_GPT_ENTRIES} are accepted)"
        ));
    }
    if !(128..=4096).contains(&entry_size) || !entry_size.is_multiple_of(8) {
        return Err(format!("partition entry size {entry_size} is invalid"));
    }
    Ok(GptHeader {
        my_lba: le_u64(&h, 24),
        alternate_lba: le_u64(&h, 32),
        disk_guid: guid_text(&h[56..72]),
        entries_lba: le_u64(&h, 72),
        num_entries,
        entry_size,
        entries_crc: le_u32(&h, 88),
    })
}

fn gpt_partitions(disk: &DiskFile, ss: u32, h: &GptHeader) -> Result<Vec<Partition>, SourceError> {
    let bytes = h.num_entries as usize * h.entry_size as usize;
    let off = h
        .entries_lba
        .checked_mul(ss as u64)
        .ok_or_else(|| SourceError::Table("GPT entry array LBA overflows".into()))?;
    let mut table = vec![0u8; bytes];
    disk.read_exact_at(&mut table, off)?;
    let crc = crc32fast::hash(&table);
    if crc != h.entries_crc {
        return Err(SourceError::Table(format!(
            "GPT partition entry array CRC32 mismatch at LBA {} (stored {:08x}, computed {crc:08x})",
            h.entries_lba, h.entries_crc
        )));
    }
    let mut parts = Vec::new();
    for (i, e) in table.chunks_exact(h.entry_size as usize).enumerate() {
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let index = i as u32 + 1;
        let first = le_u64(e, 32);
        let last = le_u64(e, 40);
        if last < first {
            return Err(SourceError::Table(format!(
                "GPT partition {index} ends (LBA {last}) before it starts (LBA {first})"
            )));
        }
        let (offset, length) = first
            .checked_mul(ss as u64)
            .zip((last - first).checked_add(1).and_then(|n| n.checked_mul(ss as u64)))
            .ok_or_else(|| SourceError::Table(format!("GPT partition {index} LBAs overflow")))?;
        let name_units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let name = String::from_utf16_lossy(&name_units);
        parts.push(Partition {
            index,
            offset,
            length,
            ptype: PartitionType::Gpt(guid_text(&e[0..16])),
            name: (!name.is_empty()).then_some(name),
            bootable: false,
        });
    }
    Ok(parts)
}

fn read_gpt(disk: &DiskFile, ss: u32) -> Result<PartitionTable, SourceError> {
    let mut warnings = Vec::new();
    let (header, parts) = match parse_gpt_header(disk, ss, 1)
        .map_err(SourceError::Table)
        .and_then(|h| gpt_partitions(disk, ss, &h).map(|p| (h, p)))
    {
        Ok(ok) => ok,
        Err(primary) => {
            let backup_lba = disk.size() / ss as u64 - 1;
            match parse_gpt_header(disk, ss, backup_lba)
                .map_err(SourceError::Table)
                .and_then(|h| gpt_partitions(disk, ss, &h).map(|p| (h, p)))
            {
                Ok(ok) => {
                    warnings.push(format!(
                        "the primary GPT is damaged ({}); the backup GPT at the end of the disk was used",
                        table_msg(primary)
                    ));
                    ok
                }
                Err(backup) => {
                    return Err(SourceError::Table(format!(
                        "primary GPT: {}; backup GPT: {}",
                        table_msg(primary),
                        table_msg(backup)
                    )));
                }
            }
        }
    };
    let _ = (header.my_lba, header.alternate_lba);
    finish(disk, TableKind::Gpt, ss, Some(header.disk_guid), parts, warnings)
}

/// The message of a table error without the "bad partition table" prefix.
fn table_msg(e: SourceError) -> String {
    match e {
        SourceError::Table(m) => m,
        other => other.to_string(),
    }
}

fn read_gpt_backup_only(disk: &DiskFile, ss: u32) -> Result<PartitionTable, SourceError> {
    let backup_lba = disk.size() / ss as u64 - 1;
    let h = parse_gpt_header(disk, ss, backup_lba).map_err(SourceError::Table)?;
    let parts = gpt_partitions(disk, ss, &h)?;
    let warnings = vec!["the primary GPT header is missing; the backup GPT at the end of the disk was used".into()];
    finish(disk, TableKind::Gpt, ss, Some(h.disk_guid), parts, warnings)
}

// ------------------------------------------------------------------------------------------ MBR

struct MbrEntry {
    status: u8,
    ptype: u8,
    lba: u32,
    sectors: u32,
}

fn mbr_entries(sector: &[u8]) -> Vec<MbrEntry> {
    (0..4)
        .map(|i| {
            let e = &sector[446 + 16 * i..446 + 16 * (i + 1)];
            MbrEntry {
                status: e[0],
                ptype: e[4],
                lba: le_u32(e, 8),
                sectors: le_u32(e, 12),
            }
        })
        .collect()
}

fn is_extended(t: u8) -> bool {
    matches!(t, 0x05 | 0x0f | 0x85)
}

fn mbr_with_sector_size(disk: &DiskFile, first: &[u8], ss: u64) -> Result<Vec<Partition>, SourceError> {
    let mut parts = Vec::new();
    let mut extended = None;
    for (i, e) in mbr_entries(first).into_iter().enumerate() {
        if e.ptype == 0 || e.sectors == 0 {
            continue;
        }
        if e.status != 0 && e.status != 0x80 {
            return Err(SourceError::Table(format!(
                "MBR entry {} has an invalid status byte 0x{:02x}",
                i + 1,
                e.status
            )));
        }
        if is_extended(e.ptype) {
            if extended.is_some() {
                return Err(SourceError::Table(
                    "the MBR has more than one extended partition".into(),
                ));
            }
            extended = Some((e.lba as u64, e.sectors as u64));
            continue;
        }
        parts.push(Partition {
            index: i as u32 + 1,
            offset: e.lba as u64 * ss,
            length: e.sectors as u64 * ss,
            ptype: PartitionType::Mbr(e.ptype),
            name: None,
            bootable: e.status == 0x80,
        });
    }
    if let Some((ext_start, ext_len)) = extended {
        let mut seen = HashSet::new();
        let mut ebr_lba = ext_start;
        let mut index = 5;
        loop {
            if !seen.insert(ebr_lba) {
                return Err(SourceError::Table(format!(
                    "the chain of logical partitions loops back to the EBR at sector {ebr_lba}"
                )));
            }
            if seen.len() > MAX_LOGICAL {
                return Err(SourceError::Table(format!(
                    "more than {MAX_LOGICAL} logical partitions"
                )));
            }
            if ebr_lba < ext_start || ebr_lba >= ext_start + ext_len {
                return Err(SourceError::Table(format!(
                    "an EBR at sector {ebr_lba} lies outside the extended partition (sectors {ext_start}..{})",
                    ext_start + ext_len
                )));
            }
            let mut ebr = vec![0u8; 512];
            disk.read_exact_at(&mut ebr, ebr_lba * ss)?;
            if ebr[510..512] != [0x55, 0xaa] {
                return Err(SourceError::Table(format!(
                    "the EBR at sector {ebr_lba} has no 55 AA signature"
                )));
            }
            let es = mbr_entries(&ebr);
            if es[0].ptype != 0 && es[0].sectors != 0 {
                parts.push(Partition {
                    index,
                    offset: (ebr_lba + es[0].lba as u64) * ss,
                    length: es[0].sectors as u64 * ss,
                    ptype: PartitionType::Mbr(es[0].ptype),
                    name: None,
                    bootable: es[0].status == 0x80,
                });
                index += 1;
            }
            if es[1].ptype == 0 || es[1].sectors == 0 {
                break;
            }
            ebr_lba = ext_start + es[1].lba as u64;
        }
    }
    Ok(parts)
}

fn starts_with_known_fs(disk: &DiskFile, p: &Partition) -> bool {
    let mut s = [0u8; 512];
    if p.offset.checked_add(512).is_none_or(|e| e > disk.size()) || disk.read_exact_at(&mut s, p.offset).is_err() {
        return false;
    }
    super::filesystem::detect_fs(&s) != super::filesystem::FileSystem::Unknown
}

fn read_mbr(disk: &DiskFile, first: &[u8]) -> Result<PartitionTable, SourceError> {
    let sig = le_u32(first, 440);
    let disk_id = (sig != 0).then(|| format!("{sig:08x}"));
    // MBR LBAs count sectors of the disk's logical sector size: 512 nearly always, 4096 on
    // 4Kn disks. Use 4096 only when 512 finds no file system where 4096 does.
    let parts512 = mbr_with_sector_size(disk, first, 512);
    if let Ok(p) = &parts512
        && !p.iter().any(|p| starts_with_known_fs(disk, p))
        && let Ok(p4) = mbr_with_sector_size(disk, first, 4096)
        && p4.iter().any(|p| starts_with_known_fs(disk, p))
    {
        return finish(disk, TableKind::Mbr, 4096, disk_id, p4, Vec::new());
    }
    finish(disk, TableKind::Mbr, 512, disk_id, parts512?, Vec::new())
}

/// Common checks: every partition lies inside the disk, none overlap.
fn finish(
    disk: &DiskFile,
    kind: TableKind,
    sector_size: u32,
    disk_id: Option<String>,
    mut partitions: Vec<Partition>,
    warnings: Vec<String>,
) -> Result<PartitionTable, SourceError> {
    for p in &partitions {
        let end = p
            .offset
            .checked_add(p.length)
            .ok_or_else(|| SourceError::Table(format!("partition {} overflows", p.index)))?;
        if end > disk.size() {
            return Err(SourceError::PartitionPastEnd {
                index: p.index,
                end,
                size: disk.size(),
            });
        }
    }
    partitions.sort_by_key(|p| p.offset);
    for w in partitions.windows(2) {
        if w[0].offset + w[0].length > w[1].offset {
            return Err(SourceError::Table(format!(
                "partitions {} and {} overlap",
                w[0].index, w[1].index
            )));
        }
    }
    partitions.sort_by_key(|p| p.index);
    Ok(PartitionTable {
        kind,
        sector_size,
        disk_id,
        partitions,
        warnings,
    })
}
