//! Reparse points (`$REPARSE_POINT`, attribute 0xC0): what a file or folder Windows wrote is
//! besides its data. Symbolic links and junctions (their targets), volume mount points, WOF
//! compression (`compact /EXE`, CompactOS: the data is in the `WofCompressedData` stream), cloud
//! placeholders (OneDrive and other sync roots), deduplicated files, and any other tag, named.
//!
//! Layouts from the Windows SDK (`REPARSE_DATA_BUFFER`, `WOF_EXTERNAL_INFO`,
//! `FILE_PROVIDER_EXTERNAL_INFO_V1` in winnt.h and wofapi.h); tag values from winnt.h's
//! `IO_REPARSE_TAG_*`. Everything is bounds-checked: a malformed buffer is [`Reparse::Damaged`],
//! never a panic.

use super::record::{u16_at, u32_at};

/// The reparse point attribute's type code.
pub const ATTR_REPARSE_POINT: u32 = 0xC0;

pub const TAG_MOUNT_POINT: u32 = 0xA000_0003;
pub const TAG_SYMLINK: u32 = 0xA000_000C;
pub const TAG_DEDUP: u32 = 0x8000_0013;
pub const TAG_WOF: u32 = 0x8000_0017;
/// `IO_REPARSE_TAG_CLOUD` .. `IO_REPARSE_TAG_CLOUD_F`: bits 12-15 vary.
const TAG_CLOUD: u32 = 0x9000_001A;
const TAG_CLOUD_MASK: u32 = 0xFFFF_0FFF;

/// `FILE_ATTRIBUTE_OFFLINE`, `FILE_ATTRIBUTE_RECALL_ON_OPEN`, `FILE_ATTRIBUTE_RECALL_ON_DATA_ACCESS`:
/// a placeholder whose data is not on the volume.
const ATTR_OFFLINE: u32 = 0x1000;
const ATTR_RECALL_ON_OPEN: u32 = 0x0004_0000;
const ATTR_RECALL_ON_DATA_ACCESS: u32 = 0x0040_0000;

/// WOF's compression algorithms (`FILE_PROVIDER_COMPRESSION_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WofAlgorithm {
    Xpress4k,
    Lzx,
    Xpress8k,
    Xpress16k,
}

impl WofAlgorithm {
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Xpress4k,
            1 => Self::Lzx,
            2 => Self::Xpress8k,
            3 => Self::Xpress16k,
            _ => return None,
        })
    }

    /// The name `compact /EXE:` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Xpress4k => "XPRESS4K",
            Self::Lzx => "LZX",
            Self::Xpress8k => "XPRESS8K",
            Self::Xpress16k => "XPRESS16K",
        }
    }

    /// Bytes of file data per compressed chunk.
    pub fn chunk_size(self) -> usize {
        match self {
            Self::Xpress4k => 4096,
            Self::Xpress8k => 8192,
            Self::Xpress16k => 16384,
            Self::Lzx => 32768,
        }
    }
}

/// What a reparse point makes of its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reparse {
    /// A symbolic link: its target as Windows resolves it (the substitute name), as shown (the
    /// print name), and whether it is relative to the link's folder.
    Symlink {
        target: String,
        print: String,
        relative: bool,
    },
    /// A junction (a mount-point tag whose target is a path, `\??\C:\…`).
    Junction { target: String, print: String },
    /// A volume mount point (`\??\Volume{GUID}\`).
    MountPoint { target: String, print: String },
    /// WOF-compressed: the data is in the `WofCompressedData` stream, compressed with
    /// `algorithm`; `None` for a provider or algorithm this reader does not know (WIMBoot).
    Wof {
        algorithm: Option<WofAlgorithm>,
        provider: u32,
    },
    /// A cloud file (`IO_REPARSE_TAG_CLOUD*`); `on_volume`: its data is on the volume.
    Cloud { tag: u32, on_volume: bool },
    /// A deduplicated file: its data is in the volume's chunk store.
    Dedup,
    /// Any other tag.
    Other { tag: u32 },
    /// A reparse point whose buffer is malformed.
    Damaged { tag: u32, problem: String },
}

impl Reparse {
    /// Parses a `$REPARSE_POINT` value. `attributes`: the file's `FILE_ATTRIBUTE_*` flags (cloud
    /// placeholders say with them whether their data is on the volume).
    pub fn parse(value: &[u8], attributes: u32) -> Self {
        if value.len() < 8 {
            return Self::Damaged {
                tag: 0,
                problem: format!("{} bytes is shorter than a reparse point's header", value.len()),
            };
        }
        let tag = u32_at(value, 0);
        let len = usize::from(u16_at(value, 4));
        let Some(data) = value.get(8..8 + len) else {
            return Self::Damaged {
                tag,
                problem: format!("it says {len} bytes of data but holds {}", value.len() - 8),
            };
        };
        match tag {
            TAG_SYMLINK => names(data, 12).map_or_else(
                |problem| Self::Damaged { tag, problem },
                |(target, print)| Self::Symlink {
                    target,
                    print,
                    relative: data.len() >= 12 && u32_at(data, 8) & 1 != 0,
                },
            ),
            TAG_MOUNT_POINT => names(data, 8).map_or_else(
                |problem| Self::Damaged { tag, problem },
                |(target, print)| {
                    if target.to_ascii_lowercase().starts_with("\\??\\volume{") {
                        Self::MountPoint { target, print }
                    } else {
                        Self::Junction { target, print }
                    }
                },
            ),
            TAG_WOF => {
                if data.len() < 16 {
                    return Self::Damaged {
                        tag,
                        problem: format!("a WOF reparse point of {} bytes is too short", data.len()),
                    };
                }
                let provider = u32_at(data, 4);
                // Provider 2 is WOF_PROVIDER_FILE (one file compressed in place); its info is
                // version 1 and the algorithm.
                let algorithm = (provider == 2 && u32_at(data, 8) == 1)
                    .then(|| WofAlgorithm::from_u32(u32_at(data, 12)))
                    .flatten();
                Self::Wof { algorithm, provider }
            }
            TAG_DEDUP => Self::Dedup,
            t if t & TAG_CLOUD_MASK == TAG_CLOUD => Self::Cloud {
                tag,
                on_volume: attributes & (ATTR_OFFLINE | ATTR_RECALL_ON_OPEN | ATTR_RECALL_ON_DATA_ACCESS) == 0,
            },
            _ => Self::Other { tag },
        }
    }

    /// The tag's name (`IO_REPARSE_TAG_` left out), or its value in hex.
    pub fn tag_name(tag: u32) -> String {
        let known = match tag {
            TAG_MOUNT_POINT => "MOUNT_POINT",
            TAG_SYMLINK => "SYMLINK",
            TAG_DEDUP => "DEDUP",
            TAG_WOF => "WOF",
            0xC000_0004 => "HSM",
            0x8000_0006 => "HSM2",
            0x8000_0007 => "SIS",
            0x8000_0008 => "WIM",
            0x8000_0009 => "CSV",
            0x8000_000A => "DFS",
            0x8000_0012 => "DFSR",
            0x8000_0014 => "NFS",
            0x8000_0015 => "FILE_PLACEHOLDER",
            0x8000_0018 => "WCI",
            0x9000_1018 => "WCI_1",
            0x8000_0019 => "GLOBAL_REPARSE",
            0x8000_001B => "APPEXECLINK",
            0x9000_001C => "PROJFS",
            0xA000_001D => "LX_SYMLINK",
            0x8000_001E => "STORAGE_SYNC",
            0x8000_0020 => "WCI_TOMBSTONE",
            0x8000_0021 => "UNHANDLED",
            0x8000_0022 => "ONEDRIVE",
            0xA000_0027 => "WCI_LINK",
            0x8000_0023 => "AF_UNIX",
            0x8000_0024 => "LX_FIFO",
            0x8000_0025 => "LX_CHR",
            0x8000_0026 => "LX_BLK",
            0xA000_0019 => "NFS_SYMLINK",
            t if t & TAG_CLOUD_MASK == TAG_CLOUD => {
                return match (t >> 12) & 0xF {
                    0 => "CLOUD".into(),
                    n => format!("CLOUD_{n:X}"),
                };
            }
            _ => return format!("0x{tag:08X}"),
        };
        known.into()
    }

    /// The tag of this reparse point.
    pub fn tag(&self) -> u32 {
        match self {
            Self::Symlink { .. } => TAG_SYMLINK,
            Self::Junction { .. } | Self::MountPoint { .. } => TAG_MOUNT_POINT,
            Self::Wof { .. } => TAG_WOF,
            Self::Dedup => TAG_DEDUP,
            Self::Cloud { tag, .. } | Self::Other { tag } | Self::Damaged { tag, .. } => *tag,
        }
    }

    /// The `Type` `ls` shows for an entry with this reparse point, when it is not a plain file or
    /// folder: `symlink`, `junction`, `mount-point`, or `reparse` for tags that make the entry
    /// something else. WOF, cloud and deduplicated files are files (or folders) still.
    pub fn entry_type(&self) -> Option<&'static str> {
        match self {
            Self::Symlink { .. } => Some("symlink"),
            Self::Junction { .. } => Some("junction"),
            Self::MountPoint { .. } => Some("mount-point"),
            Self::Wof { .. } | Self::Cloud { .. } | Self::Dedup => None,
            Self::Other { .. } | Self::Damaged { .. } => Some("reparse"),
        }
    }
}

/// The substitute and print names of a symlink or mount-point buffer, whose path buffer starts
/// at `path_at` (8 for mount points, 12 for symlinks, past their flags).
fn names(data: &[u8], path_at: usize) -> Result<(String, String), String> {
    if data.len() < path_at {
        return Err(format!("{} bytes is too short for a link", data.len()));
    }
    let path = &data[path_at..];
    let name = |off: usize, len: usize, what: &str| -> Result<String, String> {
        let off = usize::from(u16_at(data, off));
        let len = usize::from(u16_at(data, len));
        let bytes = path
            .get(off..off + len)
            .filter(|b| b.len() % 2 == 0)
            .ok_or_else(|| format!("its {what} name (bytes {off}..{}) lies outside its buffer", off + len))?;
        Ok(super::utf16::name_from_utf16(bytes))
    };
    Ok((name(0, 2, "substitute")?, name(4, 6, "print")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reparse buffer with `tag` and `data`.
    fn buffer(tag: u32, data: &[u8]) -> Vec<u8> {
        let mut b = tag.to_le_bytes().to_vec();
        b.extend((data.len() as u16).to_le_bytes());
        b.extend([0, 0]);
        b.extend(data);
        b
    }

    fn link_data(sub: &str, print: &str, flags: Option<u32>) -> Vec<u8> {
        let (s, p) = (
            super::super::utf16::name_to_utf16(sub),
            super::super::utf16::name_to_utf16(print),
        );
        let mut d = Vec::new();
        for v in [0u16, s.len() as u16, s.len() as u16, p.len() as u16] {
            d.extend(v.to_le_bytes());
        }
        if let Some(f) = flags {
            d.extend(f.to_le_bytes());
        }
        d.extend(&s);
        d.extend(&p);
        d
    }

    #[test]
    fn links_junctions_and_mount_points_give_their_targets() {
        let b = buffer(TAG_SYMLINK, &link_data("..\\x\\y.txt", "..\\x\\y.txt", Some(1)));
        assert_eq!(
            Reparse::parse(&b, 0x400),
            Reparse::Symlink {
                target: "..\\x\\y.txt".into(),
                print: "..\\x\\y.txt".into(),
                relative: true
            }
        );
        let b = buffer(
            TAG_MOUNT_POINT,
            &link_data("\\??\\C:\\Users\\Public", "C:\\Users\\Public", None),
        );
        assert!(matches!(Reparse::parse(&b, 0), Reparse::Junction { ref print, .. } if print == "C:\\Users\\Public"));
        let b = buffer(
            TAG_MOUNT_POINT,
            &link_data("\\??\\Volume{0b1c2d3e-0000-0000-0000-100000000000}\\", "", None),
        );
        assert_eq!(Reparse::parse(&b, 0).entry_type(), Some("mount-point"));
    }

    #[test]
    fn wof_cloud_dedup_and_other_tags_are_named() {
        let mut d = Vec::new();
        for v in [1u32, 2, 1, 1] {
            d.extend(v.to_le_bytes());
        }
        assert_eq!(
            Reparse::parse(&buffer(TAG_WOF, &d), 0x400),
            Reparse::Wof {
                algorithm: Some(WofAlgorithm::Lzx),
                provider: 2
            }
        );
        assert_eq!(
            Reparse::parse(&buffer(0x9000_601A, &[1, 2]), 0x1400),
            Reparse::Cloud {
                tag: 0x9000_601A,
                on_volume: false
            }
        );
        assert_eq!(
            Reparse::parse(&buffer(0x9000_601A, &[1, 2]), 0x400),
            Reparse::Cloud {
                tag: 0x9000_601A,
                on_volume: true
            }
        );
        assert_eq!(Reparse::tag_name(0x9000_601A), "CLOUD_6");
        assert_eq!(Reparse::parse(&buffer(TAG_DEDUP, &[]), 0), Reparse::Dedup);
        assert_eq!(Reparse::tag_name(0x8000_001B), "APPEXECLINK");
        assert_eq!(Reparse::tag_name(0x1234_5678), "0x12345678");
    }

    #[test]
    fn malformed_buffers_are_damaged_never_a_panic() {
        for bad in [
            vec![],
            buffer(TAG_SYMLINK, &[1, 2, 3])[..9].to_vec(),
            buffer(TAG_SYMLINK, &[0xff; 12]),
            buffer(TAG_MOUNT_POINT, &[0, 0, 0xff, 0xff, 0, 0, 0, 0]),
            buffer(TAG_WOF, &[1, 0, 0, 0]),
        ] {
            assert!(matches!(Reparse::parse(&bad, 0), Reparse::Damaged { .. }), "{bad:?}");
        }
    }
}
