//! Windows' own lists of what its snapshots and backups leave out: `FilesNotToSnapshot` and
//! `FilesNotToBackup` under `SYSTEM\<control set>\Control\BackupRestore`. Each value holds
//! patterns such as `%windir%\SoftwareDistribution\*.* /s` or `$UserProfile$\…\*.ost`; they are
//! resolved here against the volume: variables (`%windir%`, `%SystemRoot%`, `%ProgramData%`,
//! `%TEMP%`, `$UserProfile$` for every profile in `ProfileList`, `$AllVolumes$`, ...), a
//! trailing `/s` (also in every folder below), and `*`/`?` wildcards in the last component.
//!
//! `inspect` lists what each matches with sizes; `--exclude-windows-lists` leaves the matches
//! out of the bundle.

use serde::{Deserialize, Serialize};

use super::hive::Hive;
use crate::ntfs::NtfsVolume;

/// All the patterns' walks together visit at most this many entries.
const MAX_VISITS: usize = 1_000_000;
/// `SystemRoot` and `ProfileImagePath` longer than this are not used (Windows' own are short).
const MAX_PATH_VALUE: usize = 1024;
/// Profiles from `ProfileList` used, at most.
const MAX_PROFILES: usize = 1_000;

/// One pattern of one list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListEntry {
    /// `FilesNotToSnapshot` or `FilesNotToBackup`.
    pub list: String,
    /// The value's name (`WUA`, `Temporary Files`).
    pub name: String,
    /// The pattern as the registry holds it.
    pub pattern: String,
    /// Files it matches on this volume, and their size.
    pub files: u64,
    pub size: u64,
    /// What it matches: files, or a whole folder for `FOLDER\* /s` (root-relative).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Why part of it was not resolved (another drive, an unknown variable, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What the variables of the lists stand for on this volume (root-relative, no drive).
pub struct Context {
    /// `\Windows`, from `SystemRoot`.
    pub windows: String,
    /// The system drive's letter (`C`).
    pub drive: char,
    /// Every profile folder in `ProfileList` (`\Users\alice`).
    pub profiles: Vec<String>,
}

impl Context {
    /// From SOFTWARE's `SystemRoot` and `ProfileList`, when it could be opened.
    pub fn read(software: Option<&Hive>, system_drive: Option<&str>) -> Context {
        let drive = system_drive
            .and_then(|d| d.chars().next())
            .unwrap_or('C')
            .to_ascii_uppercase();
        let mut c = Context {
            windows: "\\Windows".into(),
            drive,
            profiles: Vec::new(),
        };
        let Some(h) = software else { return c };
        let cv = "Microsoft\\Windows NT\\CurrentVersion";
        if let Some(root) = h.value(cv, "SystemRoot").and_then(|v| v.as_str().map(str::to_string))
            && root.len() <= MAX_PATH_VALUE
            && !root.contains(['%', '$'])
            && let Some(p) = c.local(&root)
        {
            c.windows = p;
        }
        for sid in h.subkeys(&format!("{cv}\\ProfileList")).into_iter().take(MAX_PROFILES) {
            let path = h
                .value(&format!("{cv}\\ProfileList\\{sid}"), "ProfileImagePath")
                .and_then(|v| v.as_str().map(str::to_string));
            let path = path.filter(|p| p.len() <= MAX_PATH_VALUE);
            if let Some(p) = path.and_then(|p| c.local(&c.expand_fixed(&p)))
                && !p.contains(['%', '$'])
                && p != "\\"
                && !c.profiles.iter().any(|q| q.eq_ignore_ascii_case(&p))
            {
                c.profiles.push(p);
            }
        }
        c
    }

    /// `C:\x` or `\x` on this volume as `\x`; `None` on another drive.
    fn local(&self, path: &str) -> Option<String> {
        let b = path.as_bytes();
        let rest = if b.len() >= 2 && b[1] == b':' {
            if !(b[0] as char).eq_ignore_ascii_case(&self.drive) {
                return None;
            }
            &path[2..]
        } else {
            path
        };
        Some(crate::ntfs::exclude::normalise(rest))
    }

    /// Replaces the variables with one value each (all but the per-profile ones).
    fn expand_fixed(&self, pattern: &str) -> String {
        let windows = format!("{}:{}", self.drive, self.windows);
        let mut s = pattern.to_string();
        for (var, with) in [
            ("%windir%", windows.as_str()),
            ("%systemroot%", windows.as_str()),
            ("%systemdrive%", ""),
            ("$allvolumes$", ""),
            ("%programdata%", "\\ProgramData"),
            ("%allusersprofile%", "\\ProgramData"),
            ("%programfiles%", "\\Program Files"),
            // The backup service's own: the system's temporary folder.
            ("%temp%", &format!("{windows}\\Temp")),
            ("%tmp%", &format!("{windows}\\Temp")),
        ] {
            s = replace_ci(&s, var, with);
        }
        s
    }

    /// The patterns `pattern` stands for: one per profile when it names the user's profile.
    fn expand(&self, pattern: &str) -> Vec<String> {
        // Real patterns are a few hundred characters: a longer one is left as it is (and then
        // refused), so that no expansion multiplies a hostile one.
        if pattern.len() > 4096 {
            return vec![pattern.to_string()];
        }
        let s = self.expand_fixed(pattern);
        let lower = s.to_ascii_lowercase();
        let per_user = [
            ("$userprofile$", ""),
            ("%userprofile%", ""),
            ("%localappdata%", "\\AppData\\Local"),
            ("%appdata%", "\\AppData\\Roaming"),
        ];
        let Some((var, tail)) = per_user.iter().find(|(v, _)| lower.contains(v)) else {
            return vec![s];
        };
        self.profiles
            .iter()
            .map(|p| replace_ci(&s, var, &format!("{p}{tail}")))
            .filter(|e| e.len() <= MAX_PATTERN)
            .collect()
    }
}

/// `s` with every case-insensitive `var` (ASCII) replaced by `with`, in one pass.
fn replace_ci(s: &str, var: &str, with: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let mut out = String::new();
    let mut from = 0;
    for (i, _) in lower.match_indices(var) {
        out.push_str(&s[from..i]);
        out.push_str(with);
        from = i + var.len();
    }
    out.push_str(&s[from..]);
    out
}

/// Windows wildcard match, case-insensitive: `*` any run, `?` one character; `*.*` is `*`.
pub fn wildcard(pattern: &str, name: &str) -> bool {
    let pattern = if pattern == "*.*" { "*" } else { pattern };
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let n: Vec<char> = name.to_lowercase().chars().collect();
    // Iterative matcher with one backtrack point: linear in practice, never exponential.
    let (mut i, mut j) = (0usize, 0usize);
    let (mut star, mut mark) = (None, 0usize);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    while i < p.len() && p[i] == '*' {
        i += 1;
    }
    i == p.len()
}

/// Folders a list may never leave out whole, nor anything above them: without them the volume
/// does not boot or has no users (a hostile or careless pattern such as `%windir%\* /s`).
const PROTECTED: [&str; 9] = [
    "\\Windows",
    "\\Windows\\System32",
    "\\Windows\\System32\\config",
    "\\Windows\\System32\\drivers",
    "\\Windows\\WinSxS",
    "\\Users",
    "\\Program Files",
    "\\Program Files (x86)",
    "\\ProgramData",
];
/// Files one pattern may match, at most; the rest is left in the bundle, with a note.
const MAX_MATCHES: usize = 100_000;
/// Longer patterns and expansions are refused (Windows paths are at most 32,767 characters).
const MAX_PATTERN: usize = 32_767;

/// Why `path` (a folder left out whole, or a file) must stay in the bundle, if it must.
fn protected(path: &str, whole_folder: bool, c: &Context) -> Option<&'static str> {
    let lower = path.to_lowercase();
    let under = |p: &str| {
        let p = p.to_lowercase();
        lower == p || lower.starts_with(&format!("{p}\\"))
    };
    if whole_folder {
        let above = |p: &str| {
            let p = p.to_lowercase();
            p == lower || p.starts_with(&format!("{lower}\\"))
        };
        if PROTECTED.iter().any(|p| above(p)) || c.profiles.iter().any(|p| above(p)) {
            return Some("it is, or holds, a folder Windows needs to start or its users' profiles");
        }
    }
    if under("\\Windows\\System32\\config") || under("\\Windows\\System32\\drivers") {
        return Some("Windows needs it to start (registry hives, drivers)");
    }
    None
}

/// Whether a file under folder `record` has more than one name (then leaving out the folder
/// would zero it under its other names too). Counts against `visits`; out of visits, true.
fn has_hard_links(vol: &NtfsVolume<'_>, record: u64, visits: &mut usize) -> bool {
    let mut stack = vec![record];
    let mut seen = std::collections::HashSet::from([record]);
    while let Some(d) = stack.pop() {
        let Ok(entries) = vol.list_dir(d) else { continue };
        for (_, r, is_dir) in entries {
            if *visits == 0 {
                return true;
            }
            *visits -= 1;
            if is_dir {
                if seen.insert(r) {
                    stack.push(r);
                }
            } else if vol.stat(r).is_ok_and(|i| i.links > 1) {
                return true;
            }
        }
    }
    false
}

/// Resolves one pattern on the volume: what it matches, and why part of it matches nothing.
/// `visits`: the entries every pattern may still visit, shared by all of them.
fn resolve(vol: &NtfsVolume<'_>, c: &Context, raw: &str, visits: &mut usize) -> (Vec<String>, Vec<String>) {
    let mut paths = Vec::new();
    let mut seen_paths = std::collections::HashSet::new();
    let mut notes = Vec::new();
    let mut text = raw.trim();
    if text.len() > MAX_PATTERN {
        notes.push(format!(
            "a pattern of {} characters: longer than any Windows path; ignored",
            text.len()
        ));
        return (paths, notes);
    }
    let mut recursive = false;
    let b = text.as_bytes();
    if b.len() >= 3 && b[b.len() - 3..].eq_ignore_ascii_case(b" /s") {
        recursive = true;
        text = text[..text.len() - 3].trim_end();
    }
    for expanded in c.expand(text) {
        if expanded.len() > MAX_PATTERN {
            notes.push(format!("{raw}: expands to {} characters; ignored", expanded.len()));
            continue;
        }
        if expanded.contains('%') || expanded.contains('$') {
            notes.push(format!("{expanded}: a variable winbundle does not know"));
            continue;
        }
        let Some(local) = c.local(&expanded) else {
            notes.push(format!("{expanded}: on another drive, not on this volume"));
            continue;
        };
        let (dir, name) = match local.rsplit_once('\\') {
            Some((d, n)) if !n.is_empty() => (if d.is_empty() { "\\" } else { d }, n),
            _ => continue,
        };
        let Ok(Some(found)) = vol.lookup(dir) else { continue };
        if !found.is_dir {
            continue;
        }
        if recursive && (name == "*" || name == "*.*") {
            // FOLDER\* /s: the whole folder, unless a file in it has other names elsewhere
            // (then file by file, below, leaving those in).
            if found.record == crate::ntfs::volume::ROOT_RECORD || dir == "\\" {
                notes.push(format!("{expanded}: would leave out the whole volume; ignored"));
                continue;
            }
            if let Some(why) = protected(dir, true, c) {
                notes.push(format!("{dir}: not left out whole: {why}"));
                continue;
            }
            if !has_hard_links(vol, found.record, visits) {
                if seen_paths.insert(dir.to_lowercase()) {
                    paths.push(dir.to_string());
                }
                continue;
            }
        }
        let pattern = name.to_lowercase();
        let mut stack = vec![(dir.to_string(), found.record)];
        let mut seen_dirs = std::collections::HashSet::from([found.record]);
        'walk: while let Some((at, record)) = stack.pop() {
            let Ok(entries) = vol.list_dir(record) else { continue };
            for (n, r, is_dir) in entries {
                if *visits == 0 {
                    notes.push(format!(
                        "{raw}: the lists visited more than {MAX_VISITS} entries; the rest not matched"
                    ));
                    break 'walk;
                }
                *visits -= 1;
                if r < crate::ntfs::catalog::FIRST_USER_RECORD {
                    continue;
                }
                let path = if at == "\\" {
                    format!("\\{n}")
                } else {
                    format!("{at}\\{n}")
                };
                if is_dir {
                    // Each folder once: a folder whose index lists an ancestor is not entered again.
                    if recursive && seen_dirs.insert(r) {
                        stack.push((path, r));
                    }
                    continue;
                }
                if !wildcard(&pattern, &n) || !seen_paths.insert(path.to_lowercase()) {
                    continue;
                }
                if let Some(why) = protected(&path, false, c) {
                    notes.push(format!("{path}: not left out: {why}"));
                    continue;
                }
                // A file with other names (hard links: WinSxS and System32 share theirs) would
                // be zeroed under those too.
                if vol.stat(r).is_ok_and(|i| i.links > 1 && !i.is_dir) {
                    notes.push(format!(
                        "{path}: not left out: it has other names (hard links) that would lose their contents too"
                    ));
                    continue;
                }
                if paths.len() == MAX_MATCHES {
                    notes.push(format!(
                        "{raw}: more than {MAX_MATCHES} files; the rest stay in the bundle"
                    ));
                    break 'walk;
                }
                paths.push(path);
            }
        }
    }
    (paths, notes)
}

/// Reads both lists from SYSTEM and resolves every pattern on the volume, with sizes. A match
/// the exclusion code cannot leave out (damaged there) is dropped, with a note.
pub fn read(h: &Hive, cs: &str, c: &Context, vol: &NtfsVolume<'_>) -> Vec<ListEntry> {
    let mut out = Vec::new();
    let mut visits = MAX_VISITS;
    for list in ["FilesNotToSnapshot", "FilesNotToBackup"] {
        let key = format!("{cs}\\Control\\BackupRestore\\{list}");
        for (name, value) in h.values(&key) {
            for pattern in value.strings() {
                if pattern.trim().is_empty() {
                    continue;
                }
                let (found, mut notes) = resolve(vol, c, &pattern, &mut visits);
                let (mut files, mut size) = (0, 0);
                let mut paths = Vec::new();
                for p in found {
                    let reason = crate::ntfs::exclude::ExclusionReason::WindowsLists;
                    match crate::ntfs::exclude::resolve(vol, &[(p.clone(), reason)]) {
                        Ok(set) => {
                            for x in set.items {
                                files += x.files;
                                size += x.size;
                            }
                            paths.push(p);
                        }
                        Err(e) => notes.push(format!("{p}: not left out: {e}")),
                    }
                }
                out.push(ListEntry {
                    list: list.into(),
                    name: name.clone(),
                    pattern,
                    files,
                    size,
                    paths,
                    notes,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_windows_does() {
        for (p, n, want) in [
            ("*.*", "README", true),
            ("*.ost", "alice.OST", true),
            ("*.ost", "alice.pst", false),
            ("FVE.{e40ad34d}.*", "fve.{E40AD34D}.1", true),
            ("index.dat", "index.dat", true),
            ("index.dat", "index.dat.keep", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*a*b*c*", "xxaxxbxxcxx", true),
            ("*a*b*c*", "xxaxxcxxbxx", false),
        ] {
            assert_eq!(wildcard(p, n), want, "{p} {n}");
        }
    }

    #[test]
    fn variables_expand_per_profile_and_drive() {
        let c = Context {
            windows: "\\Windows".into(),
            drive: 'C',
            profiles: vec!["\\Users\\alice".into(), "\\Users\\bob".into()],
        };
        assert_eq!(c.expand("%windir%\\x\\*.* /s"), ["C:\\Windows\\x\\*.* /s"]);
        assert_eq!(
            c.expand("$UserProfile$\\a\\*.ost"),
            ["\\Users\\alice\\a\\*.ost", "\\Users\\bob\\a\\*.ost"]
        );
        assert_eq!(
            c.expand("%LOCALAPPDATA%\\t"),
            ["\\Users\\alice\\AppData\\Local\\t", "\\Users\\bob\\AppData\\Local\\t"]
        );
        assert_eq!(c.local("D:\\x"), None);
        assert_eq!(c.local("c:\\x\\y"), Some("\\x\\y".into()));
    }
}
