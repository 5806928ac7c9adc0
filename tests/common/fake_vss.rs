#![allow(dead_code)] // each test binary uses part of it
//! A fake Volume Shadow Copy for tests: "snapshots" are an image file, and every create and
//! delete is logged.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use winbundle::bundle::create::BundleRequest;
use winbundle::source::live::{LiveOptions, SnapshotMode};
use winbundle::source::snapshot::{Snapshot, SnapshotError, Snapshotter};

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
}

pub struct FakeSnapshot {
    device: String,
    log: Arc<Log>,
}

impl Snapshot for FakeSnapshot {
    fn device_path(&self) -> &str {
        &self.device
    }
    fn delete(&mut self) -> Result<(), SnapshotError> {
        self.log.push("delete".into());
        Ok(())
    }
}

impl Snapshotter for FakeVss {
    fn create(&self, volume_root: &str, timeout: Duration) -> Result<Box<dyn Snapshot>, SnapshotError> {
        self.log
            .push(format!("create {volume_root} within {}s", timeout.as_secs()));
        if let Some(e) = &self.fail {
            return Err(e.clone());
        }
        Ok(Box::new(FakeSnapshot {
            device: self.volume_image.to_str().unwrap().to_string(),
            log: self.log.clone(),
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
    };
    req
}
