#![allow(dead_code)] // each test binary uses part of it
//! A fake Volume Shadow Copy for tests: "snapshots" are an image file, and every create and
//! delete is logged.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use winbundle::bundle::create::BundleRequest;
use winbundle::source::live::{LiveOptions, SnapshotMode};
use winbundle::source::snapshot::{Snapshot, SnapshotError, Snapshotter, WriterStatus};

#[derive(Default)]
pub struct Log(Mutex<Vec<String>>);

impl Log {
    pub fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

pub struct FakeVss {
    pub volume_image: PathBuf,
    pub fail: Option<SnapshotError>,
    pub log: Arc<Log>,
    /// How long making the snapshot takes (polling the cancel flag, as the VSS waits do).
    pub takes: Duration,
    /// The writers' states the snapshot reports.
    pub writers: Vec<WriterStatus>,
}

pub struct FakeSnapshot {
    device: String,
    log: Arc<Log>,
    writers: Vec<WriterStatus>,
}

impl Snapshot for FakeSnapshot {
    fn device_path(&self) -> &str {
        &self.device
    }
    fn writers(&self) -> Vec<WriterStatus> {
        self.writers.clone()
    }
    fn delete(&mut self) -> Result<(), SnapshotError> {
        self.log.push("delete".into());
        Ok(())
    }
}

impl Snapshotter for FakeVss {
    fn create(
        &self,
        volume_root: &str,
        timeout: Duration,
        cancel: &AtomicBool,
    ) -> Result<Box<dyn Snapshot>, SnapshotError> {
        self.log
            .push(format!("create {volume_root} within {}s", timeout.as_secs()));
        let end = Instant::now() + self.takes;
        while Instant::now() < end {
            if cancel.load(Ordering::SeqCst) {
                self.log.push("abort and release".into());
                return Err(SnapshotError {
                    step: "DoSnapshotSet",
                    hresult: None,
                    message: winbundle::source::snapshot::CANCELLED.into(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(e) = &self.fail {
            return Err(e.clone());
        }
        Ok(Box::new(FakeSnapshot {
            device: self.volume_image.to_str().unwrap().to_string(),
            log: self.log.clone(),
            writers: self.writers.clone(),
        }))
    }
}

/// A request for the live volume `Q:` read through `snapshotter`.
pub fn live_request(snapshotter: Arc<dyn Snapshotter>, prefix: &str) -> BundleRequest {
    let mut req = super::common::request(Path::new("Q:"), prefix);
    req.live = LiveOptions {
        snapshot: SnapshotMode::Vss,
        snapshot_timeout: Duration::from_secs(30),
        snapshotter,
        require_writers: false,
    };
    req
}
