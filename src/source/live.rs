//! Sources named the Windows way: a drive letter (`C:`, `C:\`, `\\.\C:`), a volume GUID path
//! (`\\?\Volume{GUID}\`) or a whole disk (`\\.\PhysicalDriveN`). A live volume is read from a
//! Volume Shadow Copy snapshot unless `--snapshot none`; the snapshot lives as long as the
//! [`DiskFile`] that reads it. Every other source is a file or a block device, as before.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::device::{Alignment, Device};
use super::snapshot::{SnapshotError, SnapshotGuard, Snapshotter};
use super::{DiskFile, SourceError};

/// A source named the Windows way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveSource {
    /// A volume: `device` opens it raw (`\\.\C:`, `\\?\Volume{GUID}`), `root` names it to VSS
    /// (`C:\`, `\\?\Volume{GUID}\`).
    Volume { device: String, root: String },
    /// A whole disk, read through its partition table.
    PhysicalDrive { device: String, number: u32 },
}

impl LiveSource {
    /// What to open raw.
    pub fn device(&self) -> &str {
        match self {
            LiveSource::Volume { device, .. } | LiveSource::PhysicalDrive { device, .. } => device,
        }
    }

    /// Recognises `C:`, `C:\`, `C:/`, `\\.\C:`, `\\?\C:`, `\\?\Volume{GUID}[\]`,
    /// `\\.\PhysicalDriveN` (any case; `/` for `\`). Anything else is a path.
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim().replace('/', "\\");
        let letter = |s: &str| -> Option<char> {
            let mut c = s.chars();
            let (l, colon) = (c.next()?, c.next()?);
            let rest: String = c.collect();
            (l.is_ascii_alphabetic() && colon == ':' && (rest.is_empty() || rest == "\\"))
                .then(|| l.to_ascii_uppercase())
        };
        let volume = |l: char| LiveSource::Volume {
            device: format!("\\\\.\\{l}:"),
            root: format!("{l}:\\"),
        };
        if let Some(l) = letter(&t) {
            return Some(volume(l));
        }
        let rest = t.strip_prefix("\\\\.\\").or_else(|| t.strip_prefix("\\\\?\\"))?;
        if let Some(l) = letter(rest) {
            return Some(volume(l));
        }
        let lower = rest.to_ascii_lowercase();
        if let Some(n) = lower.strip_prefix("physicaldrive") {
            let number: u32 = n.parse().ok()?;
            return Some(LiveSource::PhysicalDrive {
                device: format!("\\\\.\\PhysicalDrive{number}"),
                number,
            });
        }
        if lower.starts_with("volume{") {
            let guid = rest.trim_end_matches('\\');
            let inner = guid.get(7..guid.len().checked_sub(1)?)?;
            let ok = guid.ends_with('}')
                && inner.len() == 36
                && inner.chars().enumerate().all(|(i, c)| {
                    if [8, 13, 18, 23].contains(&i) {
                        c == '-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                });
            if ok {
                return Some(LiveSource::Volume {
                    device: format!("\\\\?\\{guid}"),
                    root: format!("\\\\?\\{guid}\\"),
                });
            }
        }
        None
    }
}

/// How to read a live volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    /// Read a Volume Shadow Copy snapshot: a consistent image while Windows runs.
    #[default]
    Vss,
    /// Read the live volume directly: consistent only if nothing writes to it.
    None,
}

/// Options for live sources (ignored for files and block devices).
#[derive(Clone)]
pub struct LiveOptions {
    pub snapshot: SnapshotMode,
    /// The whole snapshot creation must end within this.
    pub snapshot_timeout: Duration,
    pub snapshotter: Arc<dyn Snapshotter>,
    /// Fail when a VSS writer failed (else: a warning, and the writer recorded as failed).
    pub require_writers: bool,
}

/// The default `--snapshot-timeout`.
pub const DEFAULT_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

impl Default for LiveOptions {
    fn default() -> Self {
        Self {
            snapshot: SnapshotMode::Vss,
            snapshot_timeout: DEFAULT_SNAPSHOT_TIMEOUT,
            snapshotter: platform_snapshotter(),
            require_writers: false,
        }
    }
}

impl std::fmt::Debug for LiveOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveOptions")
            .field("snapshot", &self.snapshot)
            .field("snapshot_timeout", &self.snapshot_timeout)
            .finish_non_exhaustive()
    }
}

/// The source named `path` when it is a live Windows source. On Windows every such name is
/// one; elsewhere only when no file of that name exists (`C:` is a valid file name on Linux).
pub fn recognise(path: &Path) -> Option<LiveSource> {
    let text = path.to_str()?;
    let live = LiveSource::parse(text)?;
    if cfg!(windows) || !path.exists() {
        Some(live)
    } else {
        None
    }
}

/// A device that keeps its snapshot alive: the handle is closed before the snapshot is deleted
/// (fields drop in order).
struct SnapshotDevice {
    inner: Box<dyn Device>,
    _guard: SnapshotGuard,
}

impl Device for SnapshotDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }

    fn alignment(&self) -> Alignment {
        self.inner.alignment()
    }

    fn handles(&self) -> usize {
        self.inner.handles()
    }
}

/// An opened source and what the user should know about how.
pub struct Opened {
    pub disk: DiskFile,
    /// Warnings (reading a live volume without a snapshot).
    pub notes: Vec<String>,
    /// A live Windows volume or disk (this machine's own), not an image.
    pub live: bool,
    /// The VSS writers' states, when the source was read from a snapshot.
    pub writers: Option<Vec<super::snapshot::WriterStatus>>,
}

/// Opens `path`: a file or block device as always, or a live source (raw, or through a
/// snapshot per `opts`). `take_snapshot` false reads a live volume directly whatever `opts`
/// say (inspect does, to report without making a snapshot). `cancel` stops a snapshot being made.
pub fn open(
    path: &Path,
    opts: &LiveOptions,
    take_snapshot: bool,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<Opened, SourceError> {
    let Some(live) = recognise(path) else {
        return Ok(Opened {
            disk: DiskFile::open(path)?,
            notes: Vec::new(),
            live: false,
            writers: None,
        });
    };
    check_privileges(&live)?;
    let mut notes = Vec::new();
    let snapshot_root = match (&live, opts.snapshot) {
        (LiveSource::Volume { root, .. }, SnapshotMode::Vss) if take_snapshot => Some(root.clone()),
        (LiveSource::PhysicalDrive { device, .. }, SnapshotMode::Vss) if take_snapshot => {
            return Err(SourceError::Live {
                source_name: device.clone(),
                message: "Volume Shadow Copy snapshots volumes, not whole disks: bundle the volume (C:) to read it from a snapshot, or pass --snapshot none to read the disk live (consistent only if nothing writes to it)".into(),
            });
        }
        (_, SnapshotMode::None) => {
            notes.push(format!(
                "--snapshot none: reading {} live; the image is consistent only if nothing writes to the volume meanwhile (an offline or secondary volume)",
                live.device()
            ));
            None
        }
        _ => None,
    };
    let Some(root) = snapshot_root else {
        let disk = open_device(live.device(), None)?;
        return Ok(Opened {
            disk,
            notes,
            live: true,
            writers: None,
        });
    };
    let snap = opts
        .snapshotter
        .create(&root, opts.snapshot_timeout, cancel)
        .map_err(|e| snapshot_failed(&root, e))?;
    let guard = SnapshotGuard::new(snap);
    let writers = guard.writers();
    if opts.require_writers
        && let Some(bad) = writers.iter().find(|w| w.failed)
    {
        // The guard deletes the snapshot on the way out.
        return Err(snapshot_failed(
            &root,
            SnapshotError {
                step: "writer status (--require-writers)",
                hresult: bad
                    .failure
                    .as_deref()
                    .and_then(|h| u32::from_str_radix(h.trim_start_matches("0x"), 16).ok()),
                message: super::snapshot::writers_warning(&writers).unwrap_or_default(),
            },
        ));
    }
    let device_path = guard.device_path().to_string();
    let disk = open_device(&device_path, Some(guard))?;
    Ok(Opened {
        disk,
        notes,
        live: true,
        writers: Some(writers),
    })
}

fn snapshot_failed(root: &str, e: SnapshotError) -> SourceError {
    SourceError::Snapshot {
        volume: root.to_string(),
        hint: super::snapshot::hint(&e),
        source: e,
    }
}

/// Opens a device path raw. On Windows: an unbuffered handle ([`super::windows`]); elsewhere (a
/// test's fake snapshot names an image file) the file.
fn open_device(path: &str, guard: Option<SnapshotGuard>) -> Result<DiskFile, SourceError> {
    #[cfg(windows)]
    let disk = super::windows::open_raw(path)?;
    #[cfg(not(windows))]
    let disk = {
        let p = std::path::PathBuf::from(path);
        if !p.exists() {
            return Err(SourceError::Live {
                source_name: path.to_string(),
                message: "live Windows volumes and disks can be read only on Windows; here, give an image file or a block device".into(),
            });
        }
        DiskFile::open(&p)?
    };
    Ok(match guard {
        None => disk,
        Some(guard) => {
            let (path, size, device) = disk.into_parts();
            DiskFile::from_device(
                path,
                Box::new(SnapshotDevice {
                    inner: device,
                    _guard: guard,
                }),
                size,
            )
        }
    })
}

#[cfg(windows)]
fn check_privileges(live: &LiveSource) -> Result<(), SourceError> {
    super::windows::require_elevation(live.device())
}

#[cfg(not(windows))]
fn check_privileges(_live: &LiveSource) -> Result<(), SourceError> {
    Ok(())
}

/// This platform's snapshotter: VSS on Windows, none elsewhere (in debug builds, the fake that
/// `WINBUNDLE_FAKE_SNAPSHOT` asks for: see [`super::fake_snapshot`]).
fn platform_snapshotter() -> std::sync::Arc<dyn super::snapshot::Snapshotter> {
    #[cfg(debug_assertions)]
    if let Some(fake) = super::fake_snapshot::from_env() {
        return std::sync::Arc::new(fake);
    }
    #[cfg(windows)]
    {
        std::sync::Arc::new(super::windows::vss::Vss)
    }
    #[cfg(not(windows))]
    {
        std::sync::Arc::new(super::snapshot::NoSnapshots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_source_names_are_recognised() {
        let c = Some(LiveSource::Volume {
            device: r"\\.\C:".into(),
            root: r"C:\".into(),
        });
        for name in ["C:", "c:", r"C:\", "C:/", r"\\.\C:", r"\\?\C:", "//./c:", r"\\.\C:\"] {
            assert_eq!(LiveSource::parse(name), c, "{name}");
        }
        let guid = r"\\?\Volume{26a21bda-a627-11d7-9931-806e6f6e6963}\";
        assert_eq!(
            LiveSource::parse(guid),
            Some(LiveSource::Volume {
                device: r"\\?\Volume{26a21bda-a627-11d7-9931-806e6f6e6963}".into(),
                root: guid.into(),
            })
        );
        assert_eq!(
            LiveSource::parse(r"\\.\PhysicalDrive0"),
            Some(LiveSource::PhysicalDrive {
                device: r"\\.\PhysicalDrive0".into(),
                number: 0
            })
        );
        assert_eq!(
            LiveSource::parse(r"\\.\physicaldrive12").map(|s| s.device().to_string()),
            Some(r"\\.\PhysicalDrive12".into())
        );
        for not in [
            "disk.img",
            "C:disk.img",
            r"C:\disk.img",
            "CC:",
            r"\\.\PhysicalDrive",
            r"\\.\PhysicalDriveX",
            r"\\?\Volume{nope}\",
            r"\\server\share",
            "/dev/sda",
        ] {
            assert_eq!(LiveSource::parse(not), None, "{not}");
        }
    }
}
