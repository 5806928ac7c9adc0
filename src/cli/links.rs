//! What `ls`, `extract` and `cat` make of reparse points ([`Reparse`]): how each is shown, which
//! ones have contents to give, and the symbolic links `extract` makes for links and junctions.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use winbundle::ntfs::catalog::FileInfo;
use winbundle::ntfs::reparse::Reparse;

/// `--links`: what `extract` makes of symbolic links, junctions and mount points.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinksArg {
    /// A symbolic link where Windows has one, never followed (the default: the tree stays as
    /// Windows has it, and a junction that leads back up, as `AppData\Local\Application Data`
    /// does, cannot make extraction loop).
    Link,
    /// The contents of a link's target, when it is a file on this volume.
    Copy,
    /// Nothing; listed as skipped.
    Skip,
}

/// The `Type` of an entry: `file`, `directory`, or what its reparse point makes it.
pub fn entry_type(i: &FileInfo) -> &'static str {
    match i.reparse.as_ref().and_then(Reparse::entry_type) {
        Some(t) => t,
        None if i.is_dir => "directory",
        None => "file",
    }
}

/// The `Reparse` object of `ls --json`, or null.
pub fn reparse_json(i: &FileInfo) -> Value {
    let Some(r) = &i.reparse else {
        return Value::Null;
    };
    let tag = Reparse::tag_name(r.tag());
    match r {
        Reparse::Symlink {
            target,
            print,
            relative,
        } => json!({"Tag": tag, "Target": target, "PrintName": print, "Relative": relative}),
        Reparse::Junction { target, print } | Reparse::MountPoint { target, print } => {
            json!({"Tag": tag, "Target": target, "PrintName": print})
        }
        Reparse::Wof { algorithm, provider } => json!({
            "Tag": tag,
            "Provider": match provider { 1 => "WIM".to_string(), 2 => "FILE".to_string(), p => p.to_string() },
            "Algorithm": algorithm.map(|a| a.name()),
            "UncompressedSize": i.size,
        }),
        Reparse::Cloud { on_volume, .. } => json!({"Tag": tag, "DataOnVolume": on_volume}),
        Reparse::Dedup => json!({"Tag": tag, "Deduplicated": true}),
        Reparse::Other { .. } => json!({"Tag": tag}),
        Reparse::Damaged { problem, .. } => json!({"Tag": tag, "Damaged": problem}),
    }
}

/// What `ls --long` adds after the name: ` -> target` for links, `[WOF LZX]`, `[cloud-only]`...
pub fn long_suffix(i: &FileInfo) -> String {
    let Some(r) = &i.reparse else {
        return String::new();
    };
    match r {
        Reparse::Symlink { print, target, .. }
        | Reparse::Junction { print, target }
        | Reparse::MountPoint { print, target } => {
            format!(" -> {}", if print.is_empty() { target } else { print })
        }
        Reparse::Wof { algorithm, .. } => format!("  [WOF {}]", algorithm.map_or("(unknown provider)", |a| a.name())),
        Reparse::Cloud { on_volume: true, tag } => format!("  [{} file, data on the volume]", Reparse::tag_name(*tag)),
        Reparse::Cloud { on_volume: false, tag } => format!("  [{} placeholder, cloud-only]", Reparse::tag_name(*tag)),
        Reparse::Dedup => "  [deduplicated]".into(),
        Reparse::Other { tag } => format!("  [reparse point {}]", Reparse::tag_name(*tag)),
        Reparse::Damaged { problem, .. } => format!("  [damaged reparse point: {problem}]"),
    }
}

/// Why an entry's contents cannot be given (by `cat`, or `extract` as a file), when they cannot:
/// WOF-backed by a WIM file (WIMBoot), cloud-only, deduplicated, another
/// tag, a damaged buffer.
/// Links are handled apart. Never written as an empty or zeroed file.
pub fn why_no_contents(r: &Reparse) -> Option<String> {
    Some(match r {
        Reparse::Symlink { .. } | Reparse::Junction { .. } | Reparse::MountPoint { .. } => return None,
        Reparse::Cloud { on_volume: true, .. } => return None,
        Reparse::Wof { algorithm: Some(_), .. } => return None,
        Reparse::Wof { provider, .. } => format!(
            "WOF-backed by {} (not compressed in place: its data is elsewhere, in a WIM file for WIMBoot); restore the volume and read it in Windows",
            match provider {
                1 => "WIMBoot".to_string(),
                p => format!("provider {p}"),
            }
        ),
        Reparse::Cloud { tag, .. } => format!(
            "a cloud-only placeholder ({}): its data is not on the volume but with the sync provider (OneDrive or another)",
            Reparse::tag_name(*tag)
        ),
        Reparse::Dedup => {
            "deduplicated (DEDUP): its data is in the volume's deduplication chunk store, which winbundle does not read"
                .into()
        }
        Reparse::Other { tag } => format!(
            "a reparse point winbundle cannot read ({}): its contents are what that tag's driver makes of it",
            Reparse::tag_name(*tag)
        ),
        Reparse::Damaged { problem, .. } => format!("its reparse point is damaged: {problem}"),
    })
}

/// The target a link gets on this system: an absolute target on this volume (`\??\C:\…`,
/// `C:\…`) rewritten under `output` (the extraction treats `output` as C:\), a relative one with
/// this system's separators; any other (another drive, a volume GUID, a share) verbatim, as
/// Windows would leave it dangling here.
pub fn local_target(r: &Reparse, output: &Path) -> Option<PathBuf> {
    let (target, relative) = match r {
        Reparse::Symlink { target, relative, .. } => (target.as_str(), *relative),
        Reparse::Junction { target, .. } | Reparse::MountPoint { target, .. } => (target.as_str(), false),
        _ => return None,
    };
    if relative {
        return Some(PathBuf::from(native(target)));
    }
    let plain = target.strip_prefix("\\??\\").unwrap_or(target);
    let on_c = plain.len() >= 2 && plain[..2].eq_ignore_ascii_case("c:");
    if on_c {
        return Some(
            parts(&plain[2..])
                .iter()
                .fold(output.to_path_buf(), |p, part| p.join(part)),
        );
    }
    Some(PathBuf::from(target))
}

/// A volume path (`\Target\file.txt`) for a link's target on this volume, when it has one: for
/// `--links copy`. `link_path` is the link's own volume path.
pub fn volume_target(r: &Reparse, link_path: &str) -> Option<String> {
    let (target, relative) = match r {
        Reparse::Symlink { target, relative, .. } => (target.as_str(), *relative),
        Reparse::Junction { target, .. } => (target.as_str(), false),
        _ => return None,
    };
    let joined = if relative {
        let dir = &link_path[..link_path.rfind('\\').unwrap_or(0)];
        format!("{dir}\\{target}")
    } else {
        let plain = target.strip_prefix("\\??\\").unwrap_or(target);
        if plain.len() < 2 || !plain[..2].eq_ignore_ascii_case("c:") {
            return None;
        }
        plain[2..].to_string()
    };
    Some(format!("\\{}", parts(&joined).join("\\")))
}

/// The names of a volume path from its root, `.` dropped and `..` applied; `..` stops at the
/// root, as it does on Windows (so a target never leads above `--output`).
fn parts(path: &str) -> Vec<&str> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('\\').filter(|s| !s.is_empty() && *s != ".") {
        if part == ".." {
            parts.pop();
        } else {
            parts.push(part);
        }
    }
    parts
}

#[cfg(windows)]
fn native(t: &str) -> String {
    t.to_string()
}

#[cfg(not(windows))]
fn native(t: &str) -> String {
    t.replace('\\', "/")
}

/// Makes `dest` a symbolic link to `target` (a folder link for a folder on Windows).
pub fn make_link(target: &Path, dest: &Path, is_dir: bool) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let _ = is_dir;
        std::os::unix::fs::symlink(target, dest)
    }
    #[cfg(windows)]
    {
        if is_dir {
            std::os::windows::fs::symlink_dir(target, dest)?;
        } else {
            std::os::windows::fs::symlink_file(target, dest)?;
        }
        // Checked: Wine's CreateSymbolicLinkW reports success and makes nothing.
        match std::fs::symlink_metadata(dest) {
            Ok(m) if m.file_type().is_symlink() => Ok(()),
            _ => Err(std::io::Error::other(
                "the system reported the link made, but none is there",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(target: &str, relative: bool) -> Reparse {
        Reparse::Symlink {
            target: target.into(),
            print: String::new(),
            relative,
        }
    }

    #[test]
    fn targets_on_this_volume_land_under_the_output_and_others_stay() {
        let out = Path::new("/x/out");
        assert_eq!(
            local_target(&link("\\??\\C:\\Target\\file.txt", false), out),
            Some(PathBuf::from("/x/out/Target/file.txt"))
        );
        assert_eq!(
            local_target(&link("\\??\\C:\\..\\..\\etc", false), out),
            Some(PathBuf::from("/x/out/etc"))
        );
        assert_eq!(
            local_target(&link("\\??\\D:\\data", false), out),
            Some(PathBuf::from("\\??\\D:\\data"))
        );
        assert_eq!(
            volume_target(&link("..\\Target\\f", true), "\\a\\l"),
            Some("\\Target\\f".into())
        );
        assert_eq!(
            volume_target(&link("\\??\\c:\\T\\f", false), "\\l"),
            Some("\\T\\f".into())
        );
        assert_eq!(volume_target(&link("\\??\\D:\\T", false), "\\l"), None);
    }
}
