//! Point-in-time copies of a live volume, behind a small trait: Windows' Volume Shadow Copy
//! Service in production ([`super::windows::vss`]), fakes in tests. A [`SnapshotGuard`] deletes
//! its snapshot when dropped, so every way out of a run (success, failure, cancel, Ctrl-C, a
//! panic) removes it.

use std::time::Duration;

/// A snapshot step that failed, with the HRESULT when there is one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("Volume Shadow Copy (VSS) {step} failed{}: {message}", hresult.map(|h| format!(" with HRESULT 0x{h:08X}{}", hresult_name(h).map(|n| format!(" ({n})")).unwrap_or_default())).unwrap_or_default())]
pub struct SnapshotError {
    pub step: &'static str,
    pub hresult: Option<u32>,
    pub message: String,
}

/// Names of the HRESULTs VSS requesters meet.
pub fn hresult_name(h: u32) -> Option<&'static str> {
    Some(match h {
        0x8000_4001 => "E_NOTIMPL",
        0x8007_0005 => "E_ACCESSDENIED",
        0x8007_0057 => "E_INVALIDARG",
        0x8004_2301 => "VSS_E_BAD_STATE",
        0x8004_2302 => "VSS_E_UNEXPECTED",
        0x8004_2306 => "VSS_E_PROVIDER_VETO",
        0x8004_2308 => "VSS_E_OBJECT_NOT_FOUND",
        0x8004_230C => "VSS_E_VOLUME_NOT_SUPPORTED",
        0x8004_230F => "VSS_E_UNEXPECTED_PROVIDER_ERROR",
        0x8004_2312 => "VSS_E_MAXIMUM_NUMBER_OF_VOLUMES_REACHED",
        0x8004_2313 => "VSS_E_FLUSH_WRITES_TIMEOUT",
        0x8004_2314 => "VSS_E_HOLD_WRITES_TIMEOUT",
        0x8004_2316 => "VSS_E_SNAPSHOT_SET_IN_PROGRESS",
        0x8004_2317 => "VSS_E_MAXIMUM_NUMBER_OF_SNAPSHOTS_REACHED",
        0x8004_2318 => "VSS_E_WRITER_INFRASTRUCTURE",
        0x8004_231F => "VSS_E_INSUFFICIENT_STORAGE",
        0x8001_0119 => "RPC_E_TOO_LATE",
        _ => return None,
    })
}

/// What to do about a snapshot failure.
pub fn hint(e: &SnapshotError) -> &'static str {
    match e.hresult {
        Some(0x8000_4001) => {
            "this system has no Volume Shadow Copy Service (Wine has none): run on Windows, or pass --snapshot none for a volume nothing writes to"
        }
        Some(0x8007_0005) => "run from an elevated prompt (Administrator), or as a Backup Operator",
        Some(0x8004_2316) => "another shadow copy is being made (a backup tool?): wait a few minutes and run again",
        Some(0x8004_2313 | 0x8004_2314 | 0x8004_2306 | 0x8004_230F) => {
            "the system could not freeze writes in time (busy disk or a slow writer): wait ten minutes and run again, or raise --snapshot-timeout"
        }
        Some(0x8004_231F) => {
            "no room for the shadow copy's diff area: free space on the volume (or size it with `vssadmin resize shadowstorage`)"
        }
        Some(0x8004_2317) => {
            "the volume has the maximum number of shadow copies: delete old ones (`vssadmin delete shadows /for=C: /oldest`)"
        }
        Some(0x8004_230C) => "no VSS provider supports this volume: pass --snapshot none if nothing writes to it",
        _ if e.step.contains("writer") => {
            "a VSS writer failed (named above): check `vssadmin list writers` and the Application event log, then run again"
        }
        _ if e.message.contains("--snapshot-timeout") => {
            "raise --snapshot-timeout, or run when the machine is less busy"
        }
        _ => "check `vssadmin list writers` and the Application event log (source VSS), then run again",
    }
}

/// A snapshot that exists until deleted.
pub trait Snapshot: Send + Sync {
    /// The device to read the snapshot from, e.g. `\\?\GLOBALROOT\Device\HarddiskVolumeShadowCopy7`.
    fn device_path(&self) -> &str;
    /// Deletes the snapshot (and ends the backup it belongs to).
    fn delete(&mut self) -> Result<(), SnapshotError>;
}

/// Makes snapshots of volumes.
pub trait Snapshotter: Send + Sync {
    /// A snapshot of the volume whose root is `volume_root` (`C:\`, `\\?\Volume{GUID}\`), made
    /// within `timeout`.
    fn create(&self, volume_root: &str, timeout: Duration) -> Result<Box<dyn Snapshot>, SnapshotError>;
}

/// Holds a snapshot and deletes it when dropped.
pub struct SnapshotGuard(Option<Box<dyn Snapshot>>);

impl SnapshotGuard {
    pub fn new(s: Box<dyn Snapshot>) -> Self {
        Self(Some(s))
    }

    pub fn device_path(&self) -> &str {
        self.0.as_ref().map_or("", |s| s.device_path())
    }
}

impl Drop for SnapshotGuard {
    fn drop(&mut self) {
        if let Some(mut s) = self.0.take()
            && let Err(e) = s.delete()
        {
            eprintln!(
                "winbundle: warning: the shadow copy {} could not be deleted: {e} (delete it with `vssadmin delete shadows`)",
                s.device_path()
            );
        }
    }
}

/// The snapshotter of platforms without VSS.
#[derive(Debug, Default)]
pub struct NoSnapshots;

impl Snapshotter for NoSnapshots {
    fn create(&self, _volume_root: &str, _timeout: Duration) -> Result<Box<dyn Snapshot>, SnapshotError> {
        Err(SnapshotError {
            step: "CreateVssBackupComponents",
            hresult: None,
            message: "Volume Shadow Copy exists only on Windows".into(),
        })
    }
}

/// This platform's snapshotter: VSS on Windows, none elsewhere.
pub fn platform() -> std::sync::Arc<dyn Snapshotter> {
    #[cfg(windows)]
    {
        std::sync::Arc::new(super::windows::vss::Vss)
    }
    #[cfg(not(windows))]
    {
        std::sync::Arc::new(NoSnapshots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_the_step_the_hresult_and_what_to_do() {
        let e = SnapshotError {
            step: "CreateVssBackupComponents",
            hresult: Some(0x8000_4001),
            message: "the Volume Shadow Copy Service cannot be used here".into(),
        };
        assert_eq!(
            e.to_string(),
            "Volume Shadow Copy (VSS) CreateVssBackupComponents failed with HRESULT 0x80004001 (E_NOTIMPL): the Volume Shadow Copy Service cannot be used here"
        );
        assert!(hint(&e).contains("--snapshot none"));
        let timeout = SnapshotError {
            step: "DoSnapshotSet",
            hresult: None,
            message: "it did not finish within --snapshot-timeout".into(),
        };
        assert_eq!(
            timeout.to_string(),
            "Volume Shadow Copy (VSS) DoSnapshotSet failed: it did not finish within --snapshot-timeout"
        );
        assert!(hint(&timeout).contains("raise --snapshot-timeout"));
        let writer = SnapshotError {
            step: "DoSnapshotSet (writer failure)",
            hresult: Some(0x8004_2318),
            message: "the operation failed; writer \"SqlServerWriter\": failed at freeze, HRESULT 0x800423F4".into(),
        };
        assert!(writer.to_string().contains("VSS_E_WRITER_INFRASTRUCTURE"));
        assert!(writer.to_string().contains("SqlServerWriter"));
    }
}
