//! Live volumes (here `Q:`, a drive that does not exist) read through a snapshot, with a fake snapshotter standing in for Volume Shadow
//! Copy (which runs only on Windows): the snapshot is deleted on every way out of a bundle —
//! success, failure, cancel (cancel-bundle-task, and Ctrl-C or SIGTERM, which set the same
//! flag), a panic — and a snapshot that cannot be made leaves no objects and no running task.

mod common;
#[path = "common/fake_vss.rs"]
mod fake_vss;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use fake_vss::*;
use winbundle::bundle::create::bundle_instance;
use winbundle::progress::{NoProgress, Progress};
use winbundle::source::live::SnapshotMode;
use winbundle::source::snapshot::{SnapshotError, WriterStatus};
use winbundle::store::LocalStore;
use winbundle::task::State;

fn setup(fail: Option<SnapshotError>) -> (tempfile::TempDir, PathBuf, Arc<Log>, Arc<FakeVss>) {
    let dir = tempfile::tempdir().unwrap();
    let image = fixture("bare-volume.img", dir.path());
    let log = Arc::new(Log::default());
    let vss = Arc::new(FakeVss {
        volume_image: image.clone(),
        fail,
        log: log.clone(),
        takes: Duration::ZERO,
        writers: Vec::new(),
    });
    (dir, image, log, vss)
}

#[test]
fn a_live_bundle_reads_the_snapshot_and_deletes_it() {
    assert!(
        !Path::new("Q:").exists(),
        "a file (or, on Windows, a drive) named Q: would be read instead"
    );
    let (dir, image, log, vss) = setup(None);
    let req = live_request(vss, "live/ok");
    let out = bundle(&req, &dir.path().join("store"));
    out.result.as_ref().unwrap();
    assert_eq!(log.lines(), ["create Q:\\ within 30s", "delete"]);
    let restored = dir.path().join("restored.img");
    restore(&dir.path().join("store"), "live/ok", &restored).unwrap();
    assert_restored_matches(&image, &req.plan, &restored);
}

#[test]
fn the_snapshot_is_deleted_when_the_bundle_fails_is_cancelled_or_panics() {
    // Failure after the snapshot: a bundle already exists under the prefix.
    let (dir, _, log, vss) = setup(None);
    let store = dir.path().join("store");
    let req = live_request(vss.clone(), "live/dup");
    bundle(&req, &store).result.unwrap();
    let again = bundle(&req, &store);
    assert_eq!(again.result.err().unwrap().code(), "BundleExists");
    assert_eq!(log.lines().iter().filter(|l| *l == "delete").count(), 2);

    // Cancelled mid-read (cancel-bundle-task; Ctrl-C and SIGTERM set the same flag).
    let (dir, _, log, vss) = setup(None);
    struct CancelAfter<'a>(&'a AtomicBool, AtomicU64);
    impl Progress for CancelAfter<'_> {
        fn read(&self, n: u64) {
            if self.1.fetch_add(n, Ordering::SeqCst) > 0 {
                self.0.store(true, Ordering::SeqCst);
            }
        }
    }
    let cancel = AtomicBool::new(false);
    let s = LocalStore::open(&dir.path().join("store"), "bkt", true).unwrap();
    let req = live_request(vss, "live/cancel");
    let out = bundle_instance(&req, &s, &CancelAfter(&cancel, AtomicU64::new(0)), &cancel, &mut |_| {
        Ok(())
    });
    assert_eq!(out.result.err().unwrap().code(), "Cancelled");
    assert_eq!(log.lines(), ["create Q:\\ within 30s", "delete"]);

    // A panic inside the run unwinds through the guard.
    let (dir, _, log, vss) = setup(None);
    struct Panics;
    impl Progress for Panics {
        fn read(&self, _: u64) {
            panic!("a bug");
        }
    }
    let s = LocalStore::open(&dir.path().join("store"), "bkt", true).unwrap();
    let req = live_request(vss, "live/panic");
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        bundle_instance(&req, &s, &Panics, &AtomicBool::new(false), &mut |_| Ok(()))
    }));
    // The panic happens on a pipeline thread, which turns it into the run's error; either way
    // the snapshot is gone.
    assert!(!matches!(r, Ok(out) if out.result.is_ok()));
    assert_eq!(log.lines(), ["create Q:\\ within 30s", "delete"]);
}

#[test]
fn a_cancel_reaches_a_snapshot_being_made() {
    // A snapshot that would take 60 s (a slow writer), cancelled after 1 s (cancel-bundle-task;
    // Ctrl-C sets the same flag): the creation stops within a second, aborted and released,
    // and the task fails Cancelled with nothing stored.
    let (dir, _, log, _) = setup(None);
    let vss = Arc::new(FakeVss {
        volume_image: dir.path().join("unused.img"),
        fail: None,
        log: log.clone(),
        takes: Duration::from_secs(60),
        writers: Vec::new(),
    });
    let store = dir.path().join("store");
    let s = LocalStore::open(&store, "bkt", true).unwrap();
    let req = live_request(vss, "live/slow");
    let cancel = Arc::new(AtomicBool::new(false));
    let c = cancel.clone();
    let t = Instant::now();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        c.store(true, Ordering::SeqCst);
    });
    let out = bundle_instance(&req, &s, &NoProgress, &cancel, &mut |_| Ok(()));
    canceller.join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "took {:?}", t.elapsed());
    assert_eq!(out.result.err().unwrap().code(), "Cancelled");
    assert_eq!(out.task.state, State::Failed);
    assert_eq!(log.lines(), ["create Q:\\ within 30s", "abort and release"]);
    assert!(walk(&store).is_empty());
}

fn writer(name: &str, state: &str, failure: Option<&str>) -> WriterStatus {
    WriterStatus {
        name: name.into(),
        state: state.into(),
        failure: failure.map(Into::into),
        failed: failure.is_some(),
    }
}

#[test]
fn writer_outcomes_are_recorded_warned_and_can_fail_the_bundle() {
    let fake = |writers: Vec<WriterStatus>| {
        let (dir, image, log, _) = setup(None);
        let vss = Arc::new(FakeVss {
            volume_image: image,
            fail: None,
            log: log.clone(),
            takes: Duration::ZERO,
            writers,
        });
        (dir, log, vss)
    };
    // Every writer stable: recorded, no warning.
    let (dir, _, vss) = fake(vec![
        writer("System Writer", "stable", None),
        writer("Registry Writer", "stable", None),
    ]);
    let out = bundle(&live_request(vss, "w/ok"), &dir.path().join("store"));
    let (m, _) = out.result.as_ref().unwrap();
    let w = &m.snapshot.as_ref().unwrap().writers;
    assert_eq!(w.len(), 2);
    assert!(w.iter().all(|w| !w.failed && w.state == "stable"));
    assert!(
        out.warnings.iter().all(|w| !w.contains("VSS writer")),
        "{:?}",
        out.warnings
    );
    // A writer failed at freeze, DoSnapshotSet still succeeded: the bundle completes, says so,
    // and records the writer as failed with its HRESULT.
    let (dir, log, vss) = fake(vec![
        writer("System Writer", "stable", None),
        writer("SqlServerWriter", "failed at freeze", Some("0x800423F4")),
    ]);
    let out = bundle(&live_request(vss, "w/failed"), &dir.path().join("store"));
    let (m, _) = out.result.as_ref().unwrap();
    let sql = &m.snapshot.as_ref().unwrap().writers[1];
    assert!(sql.failed && sql.state == "failed at freeze" && sql.failure.as_deref() == Some("0x800423F4"));
    let warning = out
        .warnings
        .iter()
        .find(|w| w.contains("VSS writer failed"))
        .expect("a warning");
    assert!(
        warning.contains("SqlServerWriter")
            && warning.contains("crash-consistent")
            && warning.contains("--require-writers"),
        "{warning}"
    );
    assert_eq!(log.lines(), ["create Q:\\ within 30s", "delete"]);
    // The same with --require-writers: the bundle fails, nothing is stored, the snapshot is deleted.
    let (dir, log, vss) = fake(vec![writer("SqlServerWriter", "failed at freeze", Some("0x800423F4"))]);
    let mut req = live_request(vss, "w/strict");
    req.live.require_writers = true;
    let store = dir.path().join("store");
    let out = bundle(&req, &store);
    let e = out.result.err().unwrap();
    assert_eq!(e.code(), "SnapshotFailed");
    assert!(e.to_string().contains("SqlServerWriter"), "{e}");
    assert!(e.hint().unwrap().contains("vssadmin list writers"), "{:?}", e.hint());
    assert_eq!(log.lines(), ["create Q:\\ within 30s", "delete"]);
    assert!(walk(&store).is_empty());
    // An image file has no snapshot section.
    let (dir, image, _, _) = setup(None);
    let out = bundle(&common::request(&image, "w/file"), &dir.path().join("store"));
    assert!(out.result.unwrap().0.snapshot.is_none());
}

#[test]
fn a_snapshot_that_cannot_be_made_leaves_nothing_and_says_why() {
    let (dir, _, log, vss) = setup(Some(SnapshotError {
        step: "StartSnapshotSet",
        hresult: Some(0x8004_2316),
        message: "the call was refused".into(),
    }));
    let store = dir.path().join("store");
    let req = live_request(vss, "live/fail");
    let out = bundle(&req, &store);
    let e = out.result.err().unwrap();
    let msg = e.to_string();
    assert_eq!(e.code(), "SnapshotFailed");
    assert!(
        msg.contains(
            "Volume Shadow Copy (VSS) StartSnapshotSet failed with HRESULT 0x80042316 (VSS_E_SNAPSHOT_SET_IN_PROGRESS)"
        ),
        "{msg}"
    );
    assert!(e.hint().unwrap().contains("another shadow copy"), "{:?}", e.hint());
    assert_eq!(out.task.state, State::Failed);
    assert_eq!(log.lines(), ["create Q:\\ within 30s"]);
    let objects: Vec<_> = walk(&store);
    assert!(objects.is_empty(), "objects left: {objects:?}");
}

#[test]
fn live_sources_without_a_snapshot_and_whole_disks() {
    // --snapshot none reads the live volume directly: on Linux there is none to read.
    let (dir, _, log, vss) = setup(None);
    let mut req = live_request(vss.clone(), "live/none");
    req.live.snapshot = SnapshotMode::None;
    let e = bundle(&req, &dir.path().join("store")).result.err().unwrap();
    // On Linux there is no live volume to read; on Windows (Wine) the drive Q: does not exist.
    let expected = if cfg!(windows) { r"\\.\Q:" } else { "only on Windows" };
    assert!(e.to_string().contains(expected), "{e}");
    // A whole disk cannot be snapshotted: say what to do instead.
    let mut req = live_request(vss, "live/disk");
    req.source = PathBuf::from(r"\\.\PhysicalDrive0");
    let e = bundle(&req, &dir.path().join("store")).result.err().unwrap();
    assert!(e.to_string().contains("--snapshot none"), "{e}");
    assert!(log.lines().is_empty(), "no snapshot was asked for: {:?}", log.lines());
    let _ = NoProgress;
}
