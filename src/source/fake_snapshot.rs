//! A stand-in for Volume Shadow Copy in debug builds, so that the binary's snapshot handling
//! (Ctrl-C while a snapshot is being made, a second Ctrl-C) can be tested on any system. Release
//! builds have none of it, and never read these variables.
//!
//! `WINBUNDLE_FAKE_SNAPSHOT=IMAGE`: `--snapshot vss` of a live volume (`Q:`) "snapshots" the
//! volume image IMAGE. `WINBUNDLE_FAKE_SNAPSHOT_TAKES=SECONDS`: making it takes that long (the
//! cancel flag and a second Ctrl-C are seen meanwhile, as the VSS waits see them);
//! `WINBUNDLE_FAKE_SNAPSHOT_ABORT_TAKES=SECONDS`: aborting and releasing the backup takes that
//! long (AbortBackup and Release block). `WINBUNDLE_FAKE_SNAPSHOT_LOG=FILE`: each step is
//! appended to FILE as a line (`create ROOT`, `abort`, `release`, `delete`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::snapshot::{CANCELLED, OpenBackup, Snapshot, SnapshotError, Snapshotter, hurrying};

/// The fake snapshotter the environment asks for, if any.
pub fn from_env() -> Option<FakeSnapshots> {
    let image = std::env::var_os("WINBUNDLE_FAKE_SNAPSHOT")?;
    let secs = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map_or(Duration::ZERO, Duration::from_secs_f64)
    };
    Some(FakeSnapshots {
        image: image.into(),
        log: std::env::var_os("WINBUNDLE_FAKE_SNAPSHOT_LOG").map(PathBuf::from),
        takes: secs("WINBUNDLE_FAKE_SNAPSHOT_TAKES"),
        abort_takes: secs("WINBUNDLE_FAKE_SNAPSHOT_ABORT_TAKES"),
    })
}

#[derive(Debug)]
pub struct FakeSnapshots {
    image: PathBuf,
    log: Option<PathBuf>,
    takes: Duration,
    abort_takes: Duration,
}

fn note(log: &Option<PathBuf>, line: &str) {
    if let Some(p) = log
        && let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(p)
    {
        let _ = writeln!(f, "{line}");
    }
}

impl Snapshotter for FakeSnapshots {
    fn create(
        &self,
        volume_root: &str,
        timeout: Duration,
        cancel: &AtomicBool,
    ) -> Result<Box<dyn Snapshot>, SnapshotError> {
        // Counted as an open backup until released, as the VSS requester's is.
        let open = OpenBackup::new();
        note(&self.log, &format!("create {volume_root}"));
        let start = Instant::now();
        while start.elapsed() < self.takes {
            let cancelled = cancel.load(Ordering::SeqCst) || hurrying();
            if cancelled || start.elapsed() >= timeout {
                note(&self.log, "abort");
                std::thread::sleep(self.abort_takes);
                note(&self.log, "release");
                drop(open);
                return Err(SnapshotError {
                    step: "DoSnapshotSet",
                    hresult: None,
                    message: match cancelled {
                        true => CANCELLED.into(),
                        false => "it did not finish within --snapshot-timeout".into(),
                    },
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Box::new(FakeSnapshot {
            device: self.image.to_string_lossy().into_owned(),
            log: self.log.clone(),
            _open: open,
        }))
    }
}

struct FakeSnapshot {
    device: String,
    log: Option<PathBuf>,
    _open: OpenBackup,
}

impl Snapshot for FakeSnapshot {
    fn device_path(&self) -> &str {
        &self.device
    }

    fn delete(&mut self) -> Result<(), SnapshotError> {
        note(&self.log, "delete");
        Ok(())
    }
}
