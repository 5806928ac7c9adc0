//! Point-in-time copies of a live volume, behind a small trait: Windows' Volume Shadow Copy
//! Service in production ([`super::windows::vss`]), fakes in tests. A [`SnapshotGuard`] deletes
//! its snapshot when dropped, so every way out of a run (success, failure, cancel, Ctrl-C, a
//! panic) removes it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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
        Some(0x8007_0005) => "run from an elevated prompt (\"Run as administrator\", an account in Administrators)",
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

/// A VSS writer's state as the requester last saw it (after PrepareForBackup and after
/// DoSnapshotSet, the worse of the two).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WriterStatus {
    pub name: String,
    /// `stable`, `failed at freeze`, … (VSS_WRITER_STATE in words).
    pub state: String,
    /// The writer's failure HRESULT (`0x800423F4`), when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The writer failed: its data in the snapshot is only crash-consistent.
    pub failed: bool,
}

/// The warning for writers that failed, if any did.
pub fn writers_warning(writers: &[WriterStatus]) -> Option<String> {
    let bad: Vec<String> = writers
        .iter()
        .filter(|w| w.failed)
        .map(|w| {
            format!(
                "\"{}\" ({}{})",
                w.name,
                w.state,
                w.failure.as_ref().map(|h| format!(", HRESULT {h}")).unwrap_or_default()
            )
        })
        .collect();
    (!bad.is_empty()).then(|| {
        format!(
            "VSS writer failed: {}; the snapshot was made, but that application's data in this bundle is only crash-consistent (as after a power cut); check `vssadmin list writers`, or pass --require-writers to fail the bundle instead",
            bad.join(", ")
        )
    })
}

/// A snapshot that exists until deleted.
pub trait Snapshot: Send + Sync {
    /// The device to read the snapshot from, e.g. `\\?\GLOBALROOT\Device\HarddiskVolumeShadowCopy7`.
    fn device_path(&self) -> &str;
    /// The writers' states while the snapshot was made.
    fn writers(&self) -> Vec<WriterStatus> {
        Vec::new()
    }
    /// Deletes the snapshot (and ends the backup it belongs to).
    fn delete(&mut self) -> Result<(), SnapshotError>;
}

/// Makes snapshots of volumes.
pub trait Snapshotter: Send + Sync {
    /// A snapshot of the volume whose root is `volume_root` (`C:\`, `\\?\Volume{GUID}\`), made
    /// within `timeout`. Setting `cancel` (Ctrl-C, cancel-bundle-task) stops the creation
    /// within about a second, the backup aborted and released.
    fn create(
        &self,
        volume_root: &str,
        timeout: Duration,
        cancel: &AtomicBool,
    ) -> Result<Box<dyn Snapshot>, SnapshotError>;
}

/// The message of a snapshot step stopped by a cancel request.
pub const CANCELLED: &str = "cancelled (Ctrl-C or cancel-bundle-task); the backup was aborted";

/// Set by a second Ctrl-C: every wait on VSS stops at once, aborting its backup.
static HURRY: AtomicBool = AtomicBool::new(false);
/// VSS backups (IVssBackupComponents objects) not yet released in this process.
static OPEN_BACKUPS: AtomicUsize = AtomicUsize::new(0);

/// True once [`quit_after_release`] was called.
pub fn hurrying() -> bool {
    HURRY.load(Ordering::SeqCst)
}

/// Counts one open VSS backup while it lives (see [`quit_after_release`]).
pub struct OpenBackup(());

impl OpenBackup {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        OPEN_BACKUPS.fetch_add(1, Ordering::SeqCst);
        Self(())
    }
}

impl Drop for OpenBackup {
    fn drop(&mut self) {
        OPEN_BACKUPS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// For a second Ctrl-C: makes every VSS wait stop (its backup aborted) and waits at most `max`
/// for every open backup to be released, so that no shadow-copy set stays "in progress" for
/// the next requester. True when none is left open.
pub fn quit_after_release(max: Duration) -> bool {
    HURRY.store(true, Ordering::SeqCst);
    let end = Instant::now() + max;
    while OPEN_BACKUPS.load(Ordering::SeqCst) > 0 {
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// `IVssAsync`, as the waiting logic below sees it (the COM object on Windows, fakes in tests).
pub trait AsyncOp {
    /// `Wait(ms)`: its HRESULT.
    fn wait(&self, ms: u32) -> i32;
    /// `QueryStatus`: its HRESULT and the operation's status.
    fn query_status(&self) -> (i32, i32);
    /// `Cancel`.
    fn cancel(&self) -> i32;
}

pub const VSS_S_ASYNC_PENDING: i32 = 0x0004_2309;
pub const VSS_S_ASYNC_FINISHED: i32 = 0x0004_230A;
pub const VSS_S_ASYNC_CANCELLED: i32 = 0x0004_230B;
/// HRESULT_FROM_WIN32(WAIT_TIMEOUT): a Wait whose time ran out, the operation still pending.
const HRESULT_WAIT_TIMEOUT: i32 = 0x8007_0102_u32 as i32;
/// How long one Wait lasts: a cancel request is seen within this.
const WAIT_SLICE: Duration = Duration::from_millis(250);

/// Waits for `op` (the asynchronous part of `step`) until `deadline`, in slices so that `cancel`
/// (or a second Ctrl-C) is seen within a quarter of a second. Only VSS_S_ASYNC_FINISHED (or
/// S_OK) is success; VSS_S_ASYNC_CANCELLED, a failed Wait or QueryStatus, a timeout and a cancel
/// request are failures, and every one but a finished or cancelled operation cancels it first.
pub fn wait_async(
    step: &'static str,
    op: &dyn AsyncOp,
    deadline: Instant,
    cancel: &AtomicBool,
) -> Result<(), SnapshotError> {
    let fail = |hr: Option<i32>, message: &str| SnapshotError {
        step,
        hresult: hr.map(|h| h as u32),
        message: message.into(),
    };
    loop {
        let slice = deadline
            .saturating_duration_since(Instant::now())
            .min(WAIT_SLICE)
            .as_millis() as u32;
        let w = op.wait(slice);
        if w < 0 && w != HRESULT_WAIT_TIMEOUT {
            op.cancel();
            return Err(fail(Some(w), "waiting for it failed; the operation was cancelled"));
        }
        let (q, status) = op.query_status();
        if q < 0 {
            op.cancel();
            return Err(fail(
                Some(q),
                "its status could not be read; the operation was cancelled",
            ));
        }
        match status {
            VSS_S_ASYNC_FINISHED | 0 => return Ok(()),
            VSS_S_ASYNC_CANCELLED => return Err(fail(None, "the operation was cancelled")),
            VSS_S_ASYNC_PENDING => {
                if cancel.load(Ordering::SeqCst) || hurrying() {
                    op.cancel();
                    return Err(fail(None, CANCELLED));
                }
                if Instant::now() >= deadline {
                    op.cancel();
                    return Err(fail(None, "it did not finish within --snapshot-timeout"));
                }
            }
            s if s < 0 => return Err(fail(Some(s), "the operation failed")),
            s => {
                op.cancel();
                return Err(fail(
                    Some(s),
                    "it answered an unknown status; the operation was cancelled",
                ));
            }
        }
    }
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

    pub fn writers(&self) -> Vec<WriterStatus> {
        self.0.as_ref().map_or_else(Vec::new, |s| s.writers())
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
    fn create(
        &self,
        _volume_root: &str,
        _timeout: Duration,
        _cancel: &AtomicBool,
    ) -> Result<Box<dyn Snapshot>, SnapshotError> {
        Err(SnapshotError {
            step: "CreateVssBackupComponents",
            hresult: None,
            message: "Volume Shadow Copy exists only on Windows".into(),
        })
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

    /// An IVssAsync that stays pending for `pending` QueryStatus calls, then reports `last`;
    /// Wait answers `wait_hr`. Logs the calls.
    struct FakeOp {
        pending: std::cell::Cell<u32>,
        last: i32,
        wait_hr: i32,
        log: std::cell::RefCell<Vec<&'static str>>,
    }

    impl FakeOp {
        fn new(pending: u32, last: i32, wait_hr: i32) -> Self {
            Self {
                pending: pending.into(),
                last,
                wait_hr,
                log: Default::default(),
            }
        }
    }

    impl AsyncOp for FakeOp {
        fn wait(&self, ms: u32) -> i32 {
            self.log.borrow_mut().push("wait");
            std::thread::sleep(Duration::from_millis(ms.min(5) as u64));
            self.wait_hr
        }
        fn query_status(&self) -> (i32, i32) {
            self.log.borrow_mut().push("query");
            match self.pending.get() {
                0 => (0, self.last),
                n => {
                    self.pending.set(n - 1);
                    (0, VSS_S_ASYNC_PENDING)
                }
            }
        }
        fn cancel(&self) -> i32 {
            self.log.borrow_mut().push("cancel");
            0
        }
    }

    #[test]
    fn async_results_only_finished_is_success_and_failures_cancel() {
        let later = Instant::now() + Duration::from_secs(60);
        let no = AtomicBool::new(false);
        // Finished after a few pending answers.
        let op = FakeOp::new(3, VSS_S_ASYNC_FINISHED, 0);
        wait_async("DoSnapshotSet", &op, later, &no).unwrap();
        assert!(!op.log.borrow().contains(&"cancel"));
        // VSS_S_ASYNC_CANCELLED is a success HRESULT, not a success.
        let op = FakeOp::new(0, VSS_S_ASYNC_CANCELLED, 0);
        let e = wait_async("DoSnapshotSet", &op, later, &no).unwrap_err();
        assert!(e.message.contains("cancelled"), "{e}");
        // A failed Wait cancels the operation.
        let op = FakeOp::new(5, VSS_S_ASYNC_FINISHED, 0x8004_2302_u32 as i32);
        let e = wait_async("PrepareForBackup", &op, later, &no).unwrap_err();
        assert_eq!(e.hresult, Some(0x8004_2302));
        assert_eq!(*op.log.borrow(), ["wait", "cancel"]);
        // The operation's own failure.
        let op = FakeOp::new(0, 0x8004_231F_u32 as i32, 0);
        let e = wait_async("DoSnapshotSet", &op, later, &no).unwrap_err();
        assert!(e.to_string().contains("VSS_E_INSUFFICIENT_STORAGE"), "{e}");
        // Pending past the deadline: cancelled, reported as a timeout.
        let op = FakeOp::new(u32::MAX, VSS_S_ASYNC_FINISHED, 0);
        let e = wait_async("DoSnapshotSet", &op, Instant::now() + Duration::from_millis(30), &no).unwrap_err();
        assert!(e.message.contains("--snapshot-timeout"), "{e}");
        assert_eq!(op.log.borrow().last(), Some(&"cancel"));
        // A cancel request is seen at the next slice: the operation is cancelled.
        let op = FakeOp::new(u32::MAX, VSS_S_ASYNC_FINISHED, 0);
        let e = wait_async("DoSnapshotSet", &op, later, &AtomicBool::new(true)).unwrap_err();
        assert_eq!(e.message, CANCELLED);
        assert_eq!(*op.log.borrow(), ["wait", "query", "cancel"]);
    }
}
