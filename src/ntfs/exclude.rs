//! Files whose contents a bundle leaves out: by default the page, swap and hibernation files.
//! Their clusters are imaged as zeros; the files themselves stay in the file system.

use std::collections::HashSet;

use super::{NtfsError, NtfsVolume};

/// The default exclusions (root-relative).
pub const DEFAULT_EXCLUDES: [&str; 3] = ["\\pagefile.sys", "\\swapfile.sys", "\\hiberfil.sys"];
/// A directory exclusion visits at most this many entries.
const MAX_DIR_ENTRIES: usize = 1_000_000;

/// Why a path is excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExclusionOrigin {
    /// One of [`DEFAULT_EXCLUDES`].
    Default,
    /// Given with `--exclude`.
    User,
}

/// Why a path is left out, in more detail than [`ExclusionOrigin`] (which readers of older
/// manifests know): `default` (the page, swap and hibernation files by name), `registry` (a
/// page file the volume's registry names), `shadow-copies` (the storage of earlier shadow
/// copies), `windows-lists` (`FilesNotToSnapshot`/`FilesNotToBackup`, `--exclude-windows-lists`),
/// `user` (`--exclude`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExclusionReason {
    Default,
    Registry,
    ShadowCopies,
    WindowsLists,
    User,
}

impl ExclusionReason {
    /// Its name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ExclusionReason::Default => "default",
            ExclusionReason::Registry => "registry",
            ExclusionReason::ShadowCopies => "shadow-copies",
            ExclusionReason::WindowsLists => "windows-lists",
            ExclusionReason::User => "user",
        }
    }

    /// The origin older readers know: the user's, or winbundle's own default.
    pub fn origin(self) -> ExclusionOrigin {
        match self {
            ExclusionReason::User | ExclusionReason::WindowsLists => ExclusionOrigin::User,
            _ => ExclusionOrigin::Default,
        }
    }
}

/// One excluded path and what it saves.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Exclusion {
    pub path: String,
    pub origin: ExclusionOrigin,
    /// Why (absent in manifests written before it was recorded: then `origin` says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ExclusionReason>,
    /// False when the path does not exist on the volume (nothing to leave out).
    pub found: bool,
    /// Files under the path (1 for a file).
    pub files: u64,
    /// Logical size of the left-out contents.
    pub size: u64,
    /// Bytes of clusters whose contents are imaged as zeros.
    pub allocated_bytes: u64,
}

/// All exclusions, with the cluster ranges they cover.
#[derive(Debug, Clone, Default)]
pub struct ExclusionSet {
    pub items: Vec<Exclusion>,
    /// Cluster ranges [start, end), unsorted.
    pub ranges: Vec<(u64, u64)>,
}

/// Normalises a user path to `\a\b` form.
pub fn normalise(path: &str) -> String {
    let parts: Vec<&str> = path.split(['\\', '/']).filter(|c| !c.is_empty()).collect();
    format!("\\{}", parts.join("\\"))
}

/// Resolves `paths` on `vol`.
pub fn resolve(vol: &NtfsVolume<'_>, paths: &[(String, ExclusionReason)]) -> Result<ExclusionSet, NtfsError> {
    let mut set = ExclusionSet::default();
    let mut seen_records = HashSet::new();
    let cluster = vol.facts().cluster_size as u64;
    for (path, reason) in paths {
        let path = normalise(path);
        if path == "\\" {
            return Err(NtfsError::Path {
                path,
                problem: "cannot exclude the root directory".into(),
            });
        }
        let mut item = Exclusion {
            path: path.clone(),
            origin: reason.origin(),
            reason: Some(*reason),
            found: false,
            files: 0,
            size: 0,
            allocated_bytes: 0,
        };
        if let Some(found) = vol.lookup(&path)? {
            item.found = true;
            let mut stack = vec![found];
            let mut visited = 0usize;
            while let Some(f) = stack.pop() {
                visited += 1;
                if visited > MAX_DIR_ENTRIES {
                    return Err(NtfsError::Path {
                        path,
                        problem: format!("more than {MAX_DIR_ENTRIES} entries"),
                    });
                }
                if f.record < 16 {
                    return Err(NtfsError::Path {
                        path,
                        problem: "is NTFS metadata (an MFT record below 16) and cannot be left out".into(),
                    });
                }
                if !seen_records.insert(f.record) {
                    continue; // a hard link or a loop: each record once
                }
                if f.is_dir {
                    for (_, record, is_dir) in vol.list_dir(f.record)? {
                        stack.push(super::volume::Found { record, is_dir });
                    }
                    continue;
                }
                let data = vol.file_data(f.record).map_err(|e| NtfsError::Path {
                    path: path.clone(),
                    problem: e.to_string(),
                })?;
                item.files += 1;
                item.size += data.size;
                item.allocated_bytes += data.allocated_clusters() * cluster;
                for r in &data.runs {
                    if let Some(lcn) = r.lcn {
                        set.ranges.push((lcn, lcn + r.count));
                    }
                }
            }
        }
        set.items.push(item);
    }
    Ok(set)
}
