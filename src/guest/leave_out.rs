//! What Windows itself leaves out of its own snapshots, found on the volume: the page files its
//! registry names (`Memory Management\PagingFiles` and `ExistingPageFiles`) and the storage of
//! its earlier shadow copies (`\System Volume Information\*{3808876b-…}`: the catalog and the
//! diff areas).

use serde::{Deserialize, Serialize};

use super::hive::Hive;
use crate::ntfs::NtfsVolume;

/// The Volume Shadow Copy storage GUID: the catalog is named by it, each diff area ends in it.
pub const SHADOW_STORAGE_GUID: &str = "{3808876b-c176-4e48-b7ae-04046e6cc752}";
pub const SYSTEM_VOLUME_INFORMATION: &str = "\\System Volume Information";
/// Page-file entries read, at most (Windows allows 16).
const MAX_PAGE_FILES: usize = 64;

/// A page file the registry names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PageFile {
    /// As the registry says it (`?:\pagefile.sys`, `D:\pagefile.sys`).
    pub registry: String,
    /// Its path on this volume (`\pagefile.sys`); absent when it is on another drive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Why it is not left out here (another drive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Splits a `PagingFiles` entry (`C:\pagefile.sys 1024 4096`, `?:\pagefile.sys`,
/// `\??\C:\pagefile.sys`) into its drive letter (`?` for the system drive) and its path.
pub fn parse_entry(entry: &str) -> Option<(char, String)> {
    let mut s = entry.trim();
    s = s.strip_prefix("\\??\\").unwrap_or(s);
    // Up to two trailing sizes (initial, maximum, in MB).
    for _ in 0..2 {
        if let Some((head, last)) = s.rsplit_once(char::is_whitespace)
            && !last.is_empty()
            && last.bytes().all(|b| b.is_ascii_digit())
        {
            s = head.trim_end();
        }
    }
    let mut chars = s.chars();
    let drive = chars.next()?.to_ascii_uppercase();
    if chars.next()? != ':' || !(drive == '?' || drive.is_ascii_alphabetic()) {
        return None;
    }
    let path = crate::ntfs::exclude::normalise(chars.as_str());
    (path != "\\").then_some((drive, path))
}

/// The page files `Memory Management` names, each placed on this volume or not.
/// `system_drive`: this volume's letter (`C:`), from `SystemRoot`; `C:` when unknown.
/// A page file on this volume is left out only when it is a file there (not a folder) outside
/// `\Windows` (a hostile or mistaken entry must not zero a system file).
pub fn page_files(h: &Hive, cs: &str, vol: &NtfsVolume<'_>, system_drive: Option<&str>) -> Vec<PageFile> {
    let key = format!("{cs}\\Control\\Session Manager\\Memory Management");
    let here = system_drive
        .and_then(|d| d.chars().next())
        .unwrap_or('C')
        .to_ascii_uppercase();
    let mut out: Vec<PageFile> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for name in ["PagingFiles", "ExistingPageFiles"] {
        for entry in h.value(&key, name).map(|v| v.strings()).unwrap_or_default() {
            if entry.trim().is_empty() || out.len() >= MAX_PAGE_FILES {
                continue;
            }
            let Some((drive, path)) = parse_entry(&entry) else {
                out.push(PageFile {
                    registry: entry.clone(),
                    path: None,
                    note: Some("not a path this reader understands".into()),
                });
                continue;
            };
            let this = drive == '?' || drive == here;
            let key = if this {
                path.to_lowercase()
            } else {
                entry.trim().to_lowercase()
            };
            if !seen.insert(key) {
                continue;
            }
            let note = if !this {
                Some(format!("on drive {drive}:, not on this volume ({here}:)"))
            } else if path.to_lowercase().starts_with("\\windows\\") {
                Some("inside \\Windows: not left out (a page file is never a system file)".into())
            } else {
                match vol.lookup(&path) {
                    Ok(Some(f)) if !f.is_dir => None,
                    Ok(Some(_)) => Some("a folder, not a page file: not left out".into()),
                    _ => Some("not on the volume".into()),
                }
            };
            out.push(PageFile {
                registry: entry.trim().to_string(),
                path: (this && note.is_none()).then(|| path.clone()),
                note,
            });
        }
    }
    out
}

/// The shadow-copy storage files on the volume: `\System Volume Information\` entries whose
/// name holds [`SHADOW_STORAGE_GUID`].
pub fn shadow_storage(vol: &NtfsVolume<'_>) -> Vec<String> {
    let Ok(Some(svi)) = vol.lookup(SYSTEM_VOLUME_INFORMATION) else {
        return Vec::new();
    };
    let Ok(entries) = vol.list_dir(svi.record) else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter(|(name, _, is_dir)| !is_dir && name.to_ascii_lowercase().contains(SHADOW_STORAGE_GUID))
        .map(|(name, _, _)| format!("{SYSTEM_VOLUME_INFORMATION}\\{name}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_file_entries_are_split_into_drive_and_path() {
        let cases = [
            ("?:\\pagefile.sys", Some(('?', "\\pagefile.sys"))),
            ("C:\\pagefile.sys 1024 4096", Some(('C', "\\pagefile.sys"))),
            ("d:\\swap\\page file.sys 0 0", Some(('D', "\\swap\\page file.sys"))),
            ("\\??\\C:\\pagefile.sys", Some(('C', "\\pagefile.sys"))),
            ("C:\\Program Files\\x 2", Some(('C', "\\Program Files\\x"))),
            ("pagefile.sys", None),
            ("1:\\x", None),
            ("C:\\", None),
            ("", None),
        ];
        for (entry, want) in cases {
            let got = parse_entry(entry);
            assert_eq!(got.as_ref().map(|(d, p)| (*d, p.as_str())), want, "{entry:?}");
        }
    }
}
