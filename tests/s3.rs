//! Bundles to S3 (an in-process s3s-fs server): many parts, retries of transient failures, no
//! retries of AccessDenied, aborts, concurrent bundles, and restores equal to local ones.

mod common;
#[path = "common/proxy.rs"]
mod proxy;
#[path = "common/s3server.rs"]
mod s3server;
#[path = "common/tls.rs"]
mod tls;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use s3server::TestS3;
use winbundle::Error;
use winbundle::bundle::create::bundle_instance;
use winbundle::progress::NoProgress;
use winbundle::read::OpenedBundle;
use winbundle::store::{ObjectStore, StoreError};

/// These tests count the requests of one data stream (parts sent, retried, resumed): their
/// bundles keep C: only, without the disk stream around it (tests/disk.rs covers that one).
fn request(src: &Path, prefix: &str) -> winbundle::bundle::create::BundleRequest {
    let mut r = common::request(src, prefix);
    r.plan.volume_only = true;
    r
}

fn run(
    req: &winbundle::bundle::create::BundleRequest,
    store: &dyn ObjectStore,
) -> winbundle::bundle::create::BundleOutcome {
    bundle_instance(req, store, &NoProgress, &AtomicBool::new(false), &mut |_| Ok(()))
}

#[test]
fn many_parts_to_s3_restore_and_verify_like_the_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let src = big_disk(dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let store = s3.store("bkt");
    let mut req = request(&src, "win/many");
    req.part_size = Some(5 << 20);
    let (m, _) = run(&req, &store).result.unwrap();
    let o = &m.data.objects[0];
    assert_eq!(o.key, "win/many.image.zst");
    assert!(o.parts_sha256.len() >= 10, "{} parts", o.parts_sha256.len());
    assert_eq!(o.parts_etag.len(), o.parts_sha256.len());
    assert!(
        o.etag
            .as_deref()
            .is_some_and(|e| e.ends_with(&format!("-{}\"", o.parts_sha256.len()))),
        "{:?}",
        o.etag
    );
    assert_eq!(s3.faults.count("UploadPart"), o.parts_sha256.len());
    assert_eq!(s3.faults.count("CompleteMultipartUpload"), 1);
    // Verify and restore from S3.
    let b = OpenedBundle::open(&store, "win/many", &Default::default()).unwrap();
    b.verify(2, &NoProgress, &AtomicBool::new(false)).unwrap();
    let from_s3 = dir.path().join("from-s3.img");
    restore_from(&store, "win/many", &from_s3).unwrap();
    assert_restored_matches(&src, &req.plan, &from_s3);
    // The same bundle in a local store: same digest, same restored bytes.
    let local = dir.path().join("local");
    let (lm, _) = bundle(&req, &local).result.unwrap();
    assert_eq!(lm.bundle_sha256, m.bundle_sha256);
    let from_local = dir.path().join("from-local.img");
    restore(&local, "win/many", &from_local).unwrap();
    assert!(std::fs::read(&from_local).unwrap() == std::fs::read(&from_s3).unwrap());
}

#[test]
fn transient_failures_are_retried_to_success() {
    let dir = tempfile::tempdir().unwrap();
    let src = big_disk(dir.path());
    let s3 = TestS3::start(&["bkt"]);
    s3.faults.fail_5xx.store(3, Ordering::SeqCst);
    s3.faults.drop.store(2, Ordering::SeqCst);
    let store = s3.store("bkt");
    let mut req = request(&src, "retry");
    req.part_size = Some(5 << 20);
    let (m, _) = run(&req, &store).result.unwrap();
    let parts = m.data.objects[0].parts_sha256.len();
    assert_eq!(
        s3.faults.count("UploadPart"),
        parts + 5,
        "every failed attempt was retried once"
    );
    let out = dir.path().join("out.img");
    restore_from(&store, "retry", &out).unwrap();
    assert_restored_matches(&src, &req.plan, &out);
}

#[test]
fn access_denied_is_not_retried_and_the_upload_is_aborted() {
    let dir = tempfile::tempdir().unwrap();
    let src = big_disk(dir.path());
    let s3 = TestS3::start(&["bkt"]);
    s3.faults.deny.store(true, Ordering::SeqCst);
    let store = s3.store("bkt");
    let mut req = request(&src, "denied");
    req.part_size = Some(5 << 20);
    let outcome = run(&req, &store);
    let e = outcome.result.err().unwrap();
    assert!(
        matches!(&e, Error::Store(StoreError::S3 { code, op: "UploadPart", .. }) if code == "AccessDenied"),
        "{e}"
    );
    assert_eq!(outcome.task.state.as_str(), "failed");
    assert_eq!(outcome.task.error.as_ref().unwrap().code, "AccessDenied");
    assert!(e.hint().unwrap().contains("policy"));
    // Each part was tried once at most (no retries): far fewer attempts than parts × attempts.
    let attempts = s3.faults.count("UploadPart");
    assert!((1..=5).contains(&attempts), "{attempts} UploadPart requests");
    assert_eq!(s3.faults.count("AbortMultipartUpload"), 1);
    assert!(!store.exists("denied.manifest.json").unwrap());
    assert!(!store.exists("denied.image.zst").unwrap());
}

/// Issue 33.2: a panic inside the S3 store's own `finish` (just before CompleteMultipartUpload)
/// aborts the upload as any failure does: the bundle ends InternalError, nothing is left.
#[test]
fn a_panic_in_the_stores_finish_aborts_the_upload() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("bare-volume.img", dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"))
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .env("AWS_ACCESS_KEY_ID", s3server::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", s3server::SECRET_KEY)
        .env("WINBUNDLE_INJECT_PANIC", "store-finish")
        .args([
            "bundle-instance",
            src.to_str().unwrap(),
            "--bucket",
            "bkt",
            "--prefix",
            "sf",
        ])
        .args(["--endpoint-url", &s3.endpoint, "--region", "us-east-1", "-q"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("InternalError") && err.contains("injected fault in the store-finish stage"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["BundleTask"]["State"], "failed", "{v}");
    assert_eq!(v["BundleTask"]["BundleTaskError"]["Code"], "InternalError", "{v}");
    assert_eq!(s3.faults.count("CompleteMultipartUpload"), 0);
    assert!(s3.faults.count("AbortMultipartUpload") >= 1);
    assert!(s3.faults.uploads.lock().unwrap().is_empty(), "an upload was left");
    let store = s3.store("bkt");
    for key in ["sf.manifest.json", "sf.image.zst", "sf.index.zst"] {
        assert!(!store.exists(key).unwrap(), "{key} was left");
    }
}

/// Sets the cancel flag once `after` bytes have been read, as Ctrl-C would mid-run.
struct CancelAfter<'a> {
    flag: &'a AtomicBool,
    after: u64,
    read: std::sync::atomic::AtomicU64,
}

impl winbundle::progress::Progress for CancelAfter<'_> {
    fn read(&self, n: u64) {
        if self.read.fetch_add(n, Ordering::SeqCst) + n >= self.after {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
}

#[test]
fn a_bundle_cancelled_mid_upload_is_aborted() {
    let dir = tempfile::tempdir().unwrap();
    let src = big_disk(dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let store = s3.store("bkt");
    let cancel = AtomicBool::new(false);
    let progress = CancelAfter {
        flag: &cancel,
        after: 40 << 20,
        read: Default::default(),
    };
    let mut req = request(&src, "cancel");
    req.part_size = Some(5 << 20);
    let outcome = bundle_instance(&req, &store, &progress, &cancel, &mut |_| Ok(()));
    assert!(
        matches!(outcome.result, Err(Error::Cancelled)),
        "{:?}",
        outcome.result.err()
    );
    assert_eq!(outcome.task.error.as_ref().unwrap().code, "Cancelled");
    assert!(s3.faults.count("UploadPart") >= 2, "parts were on their way");
    assert_eq!(s3.faults.count("CreateMultipartUpload"), 1);
    assert_eq!(s3.faults.count("AbortMultipartUpload"), 1);
    assert_eq!(s3.faults.count("CompleteMultipartUpload"), 0);
    assert!(!store.exists("cancel.manifest.json").unwrap());
    assert!(!store.exists("cancel.image.zst").unwrap());
}

#[test]
fn a_cancel_ends_a_wait_on_a_stalled_server_at_once() {
    // The server takes the upload, then never answers a part: without the cancel the run would
    // wait out the read timeout and its retries (minutes).
    let dir = tempfile::tempdir().unwrap();
    let src = big_disk(dir.path());
    let s3 = TestS3::start(&["bkt"]);
    s3.faults.stall_parts.store(true, Ordering::SeqCst);
    let cancel = std::sync::Arc::new(AtomicBool::new(false));
    let mut opts = s3.options();
    opts.cancel = Some(cancel.clone());
    let store = winbundle::store::S3Store::connect("bkt", &opts).unwrap();
    let mut req = request(&src, "stalled");
    req.part_size = Some(5 << 20);
    let flag = cancel.clone();
    let faults = s3.faults.clone();
    std::thread::spawn(move || {
        while faults.count("UploadPart") == 0 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        flag.store(true, Ordering::SeqCst); // Ctrl-C
    });
    let started = std::time::Instant::now();
    let outcome = bundle_instance(&req, &store, &NoProgress, &cancel, &mut |_| Ok(()));
    let took = started.elapsed();
    assert!(
        matches!(outcome.result, Err(Error::Cancelled)),
        "{:?}",
        outcome.result.err()
    );
    assert_eq!(outcome.task.state.as_str(), "failed");
    assert!(took < std::time::Duration::from_secs(20), "stopping took {took:?}");
    assert_eq!(
        s3.faults.count("AbortMultipartUpload"),
        1,
        "the upload is aborted on the way out"
    );
    assert_eq!(s3.faults.count("CompleteMultipartUpload"), 0);
    cancel.store(false, Ordering::SeqCst);
    assert!(!store.exists("stalled.manifest.json").unwrap());
    assert!(!store.exists("stalled.image.zst").unwrap());
}

#[test]
fn an_upload_that_cannot_be_aborted_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let src = big_disk(dir.path());
    let s3 = TestS3::start(&["bkt"]);
    s3.faults.deny.store(true, Ordering::SeqCst);
    s3.faults.deny_abort.store(true, Ordering::SeqCst);
    let store = s3.store("bkt");
    let mut req = request(&src, "stuck");
    req.part_size = Some(5 << 20);
    let outcome = run(&req, &store);
    let e = outcome.result.err().unwrap();
    let msg = e.to_string();
    assert_eq!(
        e.code(),
        "AccessDenied",
        "the first failure stays the error's code: {msg}"
    );
    assert!(
        msg.contains("the multipart upload of stuck.image.zst (upload id "),
        "{msg}"
    );
    assert!(
        msg.contains("could not be aborted") && msg.contains("winbundle cleanup --bucket bkt"),
        "{msg}"
    );
    assert!(!msg.contains(s3server::SECRET_KEY));
    assert_eq!(outcome.task.error.as_ref().unwrap().message, msg);
}

#[test]
fn two_bundles_into_one_bucket_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = fixture("gpt-disk.img", dir.path());
    let b = fixture("mbr-disk.img", dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let (sa, sb) = (s3.store("bkt"), s3.store("bkt"));
    std::thread::scope(|scope| {
        let ta = scope.spawn(|| run(&request(&a, "pair/a"), &sa).result.map(|(m, _)| m.bundle_sha256));
        let tb = scope.spawn(|| run(&request(&b, "pair/b"), &sb).result.map(|(m, _)| m.bundle_sha256));
        ta.join().unwrap().unwrap();
        tb.join().unwrap().unwrap();
    });
    for (src, prefix) in [(&a, "pair/a"), (&b, "pair/b")] {
        let out = dir.path().join(format!("{}.img", prefix.replace('/', "-")));
        restore_from(&sa, prefix, &out).unwrap();
        assert_restored_matches(src, &request(src, prefix).plan, &out);
    }
}

#[test]
fn wrong_secret_and_missing_bucket_fail_fast_with_their_codes() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("bare-volume.img", dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let mut opts = s3.options();
    opts.credentials = Some((s3server::ACCESS_KEY.into(), "not-the-secret".into()));
    let store = winbundle::store::S3Store::connect("bkt", &opts).unwrap();
    let started = std::time::Instant::now();
    let e = run(&request(&src, "x"), &store).result.err().unwrap();
    assert!(
        matches!(&e, Error::Store(StoreError::S3 { code, .. }) if code == "Forbidden" || code == "SignatureDoesNotMatch"),
        "{e}"
    );
    assert!(started.elapsed().as_secs() < 10, "not retried: {:?}", started.elapsed());
    let e = OpenedBundle::open(&s3.store("nothing-here"), "x", &Default::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("x.manifest.json"), "{e}");
}

/// Leaves an unfinished upload of `prefix`.image.zst behind, as a run killed outright would:
/// a run cancelled after `after` bytes read, on a server that refuses the abort.
fn interrupted_run(s3: &TestS3, req: &winbundle::bundle::create::BundleRequest, after: u64) -> usize {
    let store = s3.store("bkt");
    let cancel = AtomicBool::new(false);
    let progress = CancelAfter {
        flag: &cancel,
        after,
        read: Default::default(),
    };
    s3.faults.deny_abort.store(true, Ordering::SeqCst);
    let outcome = bundle_instance(req, &store, &progress, &cancel, &mut |_| Ok(()));
    s3.faults.deny_abort.store(false, Ordering::SeqCst);
    // Requests the cancel cut short may still reach the server's log: let them land first.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let e = outcome.result.err().unwrap();
    assert!(e.to_string().contains("could not be aborted"), "{e}");
    let uploads = s3.faults.uploads.lock().unwrap();
    assert_eq!(uploads.len(), 1, "one unfinished upload is left");
    let parts = uploads.values().next().unwrap().parts.len();
    assert!(parts >= 2, "{parts} parts were stored before the interruption");
    parts
}

fn resumed_bundle(
    s3: &TestS3,
    req: &winbundle::bundle::create::BundleRequest,
    no_resume: bool,
) -> winbundle::chunk::pipeline::PipelineStats {
    let mut opts = s3.options();
    opts.no_resume = no_resume;
    let store = winbundle::store::S3Store::connect("bkt", &opts).unwrap();
    let before = s3.faults.count("UploadPart");
    let (m, stats) = run(req, &store).result.unwrap();
    let sent = s3.faults.count("UploadPart") - before;
    let parts = m.data.objects[0].parts_sha256.len();
    assert_eq!(
        sent + stats.resumed.reused_parts as usize,
        parts,
        "every part is either reused or sent: {:?}",
        stats.resumed
    );
    assert!(
        s3.faults.uploads.lock().unwrap().is_empty(),
        "no unfinished upload is left"
    );
    stats
}

#[test]
fn an_interrupted_bundle_resumes_sending_only_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let src = big_disk(dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let mut req = request(&src, "resume/a");
    req.part_size = Some(5 << 20);
    let stored = interrupted_run(&s3, &req, 40 << 20);
    let stats = resumed_bundle(&s3, &req, false);
    let r = &stats.resumed;
    assert!(r.resumed_from.is_some(), "{r:?}");
    assert_eq!(
        r.reused_parts as usize, stored,
        "every part already stored is reused: {r:?}"
    );
    assert_eq!(r.reused_bytes, stored as u64 * (5 << 20));
    assert_eq!(r.replaced_parts, 0);
    let out = dir.path().join("restored.img");
    restore_from(&s3.store("bkt"), "resume/a", &out).unwrap();
    assert_restored_matches(&src, &req.plan, &out);
    // And the result is the bundle a clean run makes.
    let local = dir.path().join("local");
    let (clean, _) = bundle(&req, &local).result.unwrap();
    let s3_store = s3.store("bkt");
    let resumed = OpenedBundle::open(&s3_store, "resume/a", &Default::default()).unwrap();
    assert_eq!(resumed.manifest.bundle_sha256, clean.bundle_sha256);
}

#[test]
fn parts_of_a_changed_source_are_sent_again_and_the_rest_reused() {
    let dir = tempfile::tempdir().unwrap();
    let src = big_disk(dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let mut req = request(&src, "resume/changed");
    req.part_size = Some(5 << 20);
    let stored = interrupted_run(&s3, &req, 40 << 20);
    // The source changes where the first parts came from (as a new VSS snapshot may).
    {
        use crate::common::FileAt;
        let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
        f.write_all_at(&[0x5a; 4096], (10 << 20) + (4 << 20)).unwrap();
    }
    let stats = resumed_bundle(&s3, &req, false);
    let r = &stats.resumed;
    assert!(r.replaced_parts >= 1, "{r:?}");
    assert!((r.reused_parts as usize) < stored, "{r:?}");
    let out = dir.path().join("restored.img");
    restore_from(&s3.store("bkt"), "resume/changed", &out).unwrap();
    assert_restored_matches(&src, &req.plan, &out);
}

#[test]
fn resume_compares_etags_where_the_server_lists_no_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let src = big_disk(dir.path());
    let s3 = TestS3::start(&["bkt"]);
    s3.faults.no_part_checksums.store(true, Ordering::SeqCst);
    let mut req = request(&src, "resume/etag");
    req.part_size = Some(5 << 20);
    let stored = interrupted_run(&s3, &req, 40 << 20);
    let stats = resumed_bundle(&s3, &req, false);
    assert_eq!(stats.resumed.reused_parts as usize, stored, "{:?}", stats.resumed);
    let out = dir.path().join("restored.img");
    restore_from(&s3.store("bkt"), "resume/etag", &out).unwrap();
    assert_restored_matches(&src, &req.plan, &out);
}

#[test]
fn no_resume_aborts_the_unfinished_upload_and_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let src = big_disk(dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let mut req = request(&src, "resume/fresh");
    req.part_size = Some(5 << 20);
    interrupted_run(&s3, &req, 40 << 20);
    let aborts = s3.faults.count("AbortMultipartUpload");
    let stats = resumed_bundle(&s3, &req, true);
    assert_eq!(stats.resumed, winbundle::store::ResumeStats::default());
    assert_eq!(
        s3.faults.count("AbortMultipartUpload"),
        aborts + 1,
        "the old upload is aborted"
    );
}

#[test]
fn cleanup_lists_and_aborts_unfinished_uploads_under_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let src = big_disk(dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let mut req = request(&src, "old/a");
    req.part_size = Some(5 << 20);
    interrupted_run(&s3, &req, 40 << 20);
    let cli = |extra: &[&str]| {
        let mut args = vec!["cleanup", "--bucket", "bkt", "--endpoint-url", &s3.endpoint];
        args.extend_from_slice(extra);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"))
            .args(&args)
            .env("AWS_ACCESS_KEY_ID", s3server::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", s3server::SECRET_KEY)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let v = cli(&["--prefix", "other/"]);
    assert_eq!(v["Uploads"].as_array().unwrap().len(), 0, "{v}");
    let v = cli(&["--prefix", "old/", "--dry-run"]);
    assert_eq!(v["Uploads"][0]["Key"], "old/a.image.zst", "{v}");
    assert_eq!(v["Uploads"][0]["Action"], "would abort (dry run)", "{v}");
    assert!(v["Uploads"][0]["AgeSeconds"].as_u64().unwrap() < 600, "{v}");
    let v = cli(&["--prefix", "old/", "--older-than", "2h"]);
    assert_eq!(v["Uploads"][0]["Action"], "kept (newer than --older-than)", "{v}");
    assert_eq!(s3.faults.uploads.lock().unwrap().len(), 1);
    let v = cli(&["--prefix", "", "--output", "json"]);
    assert_eq!(v["Aborted"], 1, "{v}");
    assert!(s3.faults.uploads.lock().unwrap().is_empty(), "aborted on the server");
}

/// Bundles `src` to `s3` through a fault proxy set up by `arm`, then checks the outcome: a
/// complete bundle that restores to the source. Returns the bundle's wall time.
fn through_proxy(
    name: &str,
    arm: impl FnOnce(&proxy::ProxyFaults),
    read_timeout: Option<std::time::Duration>,
) -> (std::time::Duration, std::sync::Arc<proxy::ProxyFaults>, TestS3) {
    let dir = tempfile::tempdir().unwrap();
    let src = big_disk(dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let px = proxy::FaultProxy::start(&s3.endpoint);
    arm(&px.faults);
    let mut opts = s3.options();
    opts.endpoint_url = Some(px.endpoint.clone());
    opts.read_timeout = read_timeout;
    // Room for the injected faults plus a slow moment of a busy test machine.
    opts.max_attempts = 10;
    let store = winbundle::store::S3Store::connect("bkt", &opts).unwrap();
    let mut req = request(&src, name);
    req.part_size = Some(5 << 20);
    let started = std::time::Instant::now();
    let outcome = run(&req, &store);
    let took = started.elapsed();
    outcome.result.as_ref().map_err(|e| e.to_string()).unwrap();
    let out = dir.path().join("restored.img");
    restore_from(&s3.store("bkt"), name, &out).unwrap();
    assert_restored_matches(&src, &req.plan, &out);
    assert!(s3.faults.uploads.lock().unwrap().is_empty());
    (took, px.faults.clone(), s3)
}

#[test]
fn connections_reset_in_the_middle_of_a_part_are_retried() {
    let (_, f, s3) = through_proxy(
        "faults/reset",
        |f| {
            f.reset_after_request_bytes.store(1 << 20, Ordering::SeqCst);
            f.resets.store(3, Ordering::SeqCst);
        },
        None,
    );
    assert_eq!(f.count("reset"), 3);
    assert!(
        s3.faults.count("UploadPart") >= 1,
        "parts went through after the resets"
    );
}

#[test]
fn a_response_stalled_past_the_read_timeout_is_retried() {
    let (took, f, _s3) = through_proxy(
        "faults/stall",
        |f| {
            f.stall_ms.store(6000, Ordering::SeqCst);
            f.stalls.store(2, Ordering::SeqCst);
        },
        Some(std::time::Duration::from_secs(2)),
    );
    assert_eq!(f.count("stall"), 2);
    assert!(took < std::time::Duration::from_secs(60), "{took:?}");
}

#[test]
fn responses_cut_short_are_retried() {
    let (_, f, _s3) = through_proxy("faults/cut", |f| f.cut_responses.store(3, Ordering::SeqCst), None);
    assert_eq!(f.count("cut"), 3);
}

#[test]
fn bursts_of_503_slow_down_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let src = big_disk(dir.path());
    let s3 = TestS3::start(&["bkt"]);
    s3.faults.slow_down.store(3, Ordering::SeqCst);
    let store = s3.store("bkt");
    let mut req = request(&src, "faults/slowdown");
    req.part_size = Some(5 << 20);
    let (m, _) = run(&req, &store).result.unwrap();
    let parts = m.data.objects[0].parts_sha256.len();
    assert_eq!(
        s3.faults.count("UploadPart"),
        parts + 3,
        "each throttled part tried again"
    );
    let out = dir.path().join("restored.img");
    restore_from(&store, "faults/slowdown", &out).unwrap();
    assert_restored_matches(&src, &req.plan, &out);
}

#[test]
fn a_slow_link_still_ends_in_a_complete_bundle() {
    let rate = 40u64 << 20; // 40 MiB/s each way
    let (took, _, s3) = through_proxy(
        "faults/slow",
        |f| f.bytes_per_second.store(rate, Ordering::SeqCst),
        None,
    );
    let store = s3.store("bkt");
    let size = store.size("faults/slow.image.zst").unwrap();
    let floor = std::time::Duration::from_secs_f64(size as f64 / rate as f64);
    assert!(took >= floor, "{took:?} for {size} bytes at {rate} B/s");
}

#[test]
fn faults_that_never_end_give_a_clean_failure() {
    let dir = tempfile::tempdir().unwrap();
    let src = big_disk(dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let px = proxy::FaultProxy::start(&s3.endpoint);
    px.faults.reset_after_request_bytes.store(1 << 20, Ordering::SeqCst);
    px.faults.resets.store(u32::MAX, Ordering::SeqCst);
    let mut opts = s3.options();
    opts.endpoint_url = Some(px.endpoint.clone());
    let store = winbundle::store::S3Store::connect("bkt", &opts).unwrap();
    let mut req = request(&src, "faults/never");
    req.part_size = Some(5 << 20);
    let outcome = run(&req, &store);
    let e = outcome.result.err().unwrap();
    assert_eq!(e.code(), "StorageError", "{e}");
    assert!(e.to_string().contains("UploadPart"), "{e}");
    assert_eq!(outcome.task.state.as_str(), "failed");
    assert!(px.faults.count("reset") >= 4, "retried before giving up");
    // The abort (a small request) got through: nothing unfinished, no manifest, no object.
    assert!(s3.faults.uploads.lock().unwrap().is_empty());
    let direct = s3.store("bkt");
    assert!(!direct.exists("faults/never.manifest.json").unwrap());
    assert!(!direct.exists("faults/never.image.zst").unwrap());
}

/// HTTPS to an endpoint whose certificate a CA from `SSL_CERT_FILE` issued: the bundle and its
/// restore work; without that CA the certificate is refused, with an error that says so.
#[test]
fn bundles_over_https_and_refuses_an_untrusted_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("gpt-disk.img", dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let front = tls::TlsFront::start(&s3.endpoint);
    let run = |args: &[&str], ca: Option<&Path>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"));
        c.args(args)
            .args(["--endpoint-url", &front.endpoint])
            .env("AWS_ACCESS_KEY_ID", s3server::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", s3server::SECRET_KEY)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("SSL_CERT_DIR");
        match ca {
            Some(ca) => c.env("SSL_CERT_FILE", ca),
            None => c.env_remove("SSL_CERT_FILE"),
        };
        c.output().unwrap()
    };
    let state = dir.path().join("state");
    let (src_arg, state) = (src.to_str().unwrap(), state.to_str().unwrap());
    let bundle = |prefix: &str, ca: Option<&Path>| {
        let args = ["bundle-instance", src_arg, "--bucket", "bkt", "--prefix", prefix];
        run(&[&args[..], &["-q", "--state-dir", state]].concat(), ca)
    };
    let o = bundle("untrusted", None);
    assert!(!o.status.success(), "an untrusted certificate must fail the run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("invalid peer certificate"),
        "the error names the certificate: {err}"
    );
    assert!(
        err.contains("hint: the server's TLS certificate is not trusted"),
        "{err}"
    );
    assert!(
        err.contains("SSL_CERT_FILE"),
        "the hint says how to trust a private CA: {err}"
    );

    let o = bundle("tls", Some(&front.ca_pem));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.path().join("restored.img");
    let o = run(
        &[
            "restore",
            "--bucket",
            "bkt",
            "--prefix",
            "tls",
            "-q",
            "--output",
            out.to_str().unwrap(),
        ],
        Some(&front.ca_pem),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_restored_matches(&src, &request(&src, "tls").plan, &out);
}

#[test]
fn verbose_logs_the_plan_each_request_and_its_retries_but_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let src = big_disk(dir.path());
    let s3 = TestS3::start(&["bkt"]);
    s3.faults.fail_5xx.store(1, Ordering::SeqCst);
    let run_cli = |extra_env: &[(&str, &str)], verbose: &[&str], prefix: &str| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"));
        c.env("XDG_STATE_HOME", dir.path().join("state"))
            .env("AWS_ACCESS_KEY_ID", s3server::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", s3server::SECRET_KEY)
            .env_remove("RUST_LOG")
            .args([
                "bundle-instance",
                src.to_str().unwrap(),
                "--bucket",
                "bkt",
                "--prefix",
                prefix,
            ])
            .args([
                "--endpoint-url",
                &s3.endpoint,
                "--region",
                "us-east-1",
                "--part-size",
                "5MiB",
                "-q",
            ])
            .args(verbose);
        for (k, v) in extra_env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let o = run_cli(&[], &["-vv"], "v/1");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // Timestamped lines: the plan, the stages, every request with its status and attempt.
    assert!(
        err.lines()
            .all(|l| l.len() > 20 && l.as_bytes()[4] == b'-' && l.as_bytes()[10] == b'T'),
        "{err}"
    );
    assert!(
        err.contains("plan: ") && err.contains("data stream: ") && err.contains("bundle complete: "),
        "{err}"
    );
    assert!(
        err.contains("CreateMultipartUpload POST /bkt/v/1.image.zst?uploads"),
        "{err}"
    );
    assert!(
        err.contains("UploadPart PUT /bkt/v/1.image.zst?") && err.contains(": 200 in "),
        "{err}"
    );
    // The failed attempt (the 500 comes back while the body is still being sent, so the client
    // may see it as a broken connection), then the retry that stored the part.
    let failed = err
        .lines()
        .find(|l| l.contains(" WARN ") && l.contains("UploadPart PUT") && l.contains("(attempt 1; retried"))
        .unwrap_or_else(|| panic!("no failed attempt logged: {err}"));
    let part = failed.split("partNumber=").nth(1).unwrap().split('&').next().unwrap();
    assert!(
        err.lines().any(|l| l.contains(&format!("partNumber={part}&"))
            && l.contains(": 200 in ")
            && l.contains("(attempt 2)")),
        "{err}"
    );
    // No secret, no signature, whatever the level.
    for level in [&["-vvv"][..], &[]] {
        let env: &[(&str, &str)] = if level.is_empty() {
            &[("RUST_LOG", "trace")]
        } else {
            &[]
        };
        let o = run_cli(env, level, &format!("v/{}", level.len() + 2));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(err.len() > 1000, "{level:?} logs: {}", err.len());
        for secret in [s3server::SECRET_KEY, "Signature=", "x-amz-signature", "signing key"] {
            assert!(!err.contains(secret), "{level:?}: {secret:?} in the log");
        }
    }
    // Without -v nothing is logged.
    let o = run_cli(&[], &[], "v/9");
    assert!(o.status.success());
    assert!(o.stderr.is_empty(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The S3 form of `tamper::a_manifest_naming_keys_outside_its_bundle_is_refused_before_any_read`
/// (issue 25.7): on S3 a forged key could name any object of the bucket. A manifest naming
/// another bundle's object or index, or a key beside the bundles, is InvalidBundle before the
/// server sees any request for that key.
#[test]
fn a_manifest_naming_other_keys_of_the_bucket_is_refused_before_any_get() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("bare-volume.img", dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let store = s3.store("bkt");
    run(&request(&src, "b"), &store).result.unwrap();
    run(&request(&src, "other"), &store).result.unwrap();
    store.put("secret.txt", b"not part of any bundle").unwrap();
    let len = store.size("b.manifest.json").unwrap();
    let mut text = vec![0u8; len as usize];
    store.read_at("b.manifest.json", 0, &mut text).unwrap();
    let original: serde_json::Value = serde_json::from_slice(&text).unwrap();
    for (what, bad) in [
        ("object", "other.image.zst"),
        ("object", "secret.txt"),
        ("object", "b/../secret.txt"),
        ("index", "other.index.zst"),
        ("index", "secret.txt"),
    ] {
        let mut m = original.clone();
        match what {
            "object" => m["data"]["objects"][0]["key"] = serde_json::json!(bad),
            _ => m["index"]["key"] = serde_json::json!(bad),
        }
        store.put("b.manifest.json", &serde_json::to_vec(&m).unwrap()).unwrap();
        s3.faults.reset_counts();
        let e = OpenedBundle::open(&store, "b", &Default::default()).err().unwrap();
        assert!(
            matches!(e, Error::Format(winbundle::format::FormatError::Manifest { .. })),
            "{bad}: {e}"
        );
        assert_eq!(e.exit_code(), 4, "{bad}: {e}");
        let seen = s3.faults.requests.lock().unwrap().clone();
        assert!(
            !seen
                .iter()
                .any(|r| r.ends_with(&format!("bkt/{bad}")) || r.contains("other.") || r.contains("secret")),
            "{bad}: the server was asked for it: {seen:?}"
        );
        assert!(seen.iter().any(|r| r == "GetObject bkt/b.manifest.json"), "{seen:?}");
        let out = dir.path().join("out.img");
        assert!(restore_from(&store, "b", &out).is_err());
        let seen = s3.faults.requests.lock().unwrap().clone();
        assert!(
            !seen.iter().any(|r| r.contains("other.") || r.contains("secret")),
            "{bad}: restore asked for it: {seen:?}"
        );
        assert!(!out.exists() && !dir.path().join("out.img.partial").exists());
    }
}
