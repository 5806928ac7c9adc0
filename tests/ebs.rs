//! `winbundle snapshot` against the in-process fake of the EBS direct APIs
//! (tests/common/ebs_fake.rs): the snapshot reads back as `restore --disk` writes the disk; only
//! non-zero blocks are sent, each with its checksum, and the LINEAR aggregate checks out; an
//! incremental snapshot sends only the blocks of changed chunks and reads back as a full one;
//! throttling is ridden out; a failure or Ctrl-C never completes the snapshot and names it; a
//! re-run resumes it with the recorded client token, or says it cannot.

mod common;
#[path = "common/ebs_fake.rs"]
mod ebs_fake;

use std::path::{Path, PathBuf};
use std::process::Output;

use ebs_fake::{BLOCK, FakeEbs};

struct Setup {
    _dir: tempfile::TempDir,
    src: PathBuf,
    store: PathBuf,
}

/// A fresh copy of fixture `name`, bundled in full under `prefix`.
fn bundled(name: &str, prefix: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let src = common::fixture(name, dir.path());
    let store = dir.path().join("store");
    let s = Setup { _dir: dir, src, store };
    bundle(&s, prefix, &[]);
    s
}

fn bundle(s: &Setup, prefix: &str, extra: &[&str]) {
    let state = s.store.parent().unwrap().join("state");
    let mut args = vec![
        "bundle-instance",
        s.src.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--chunk-size",
        "1MiB",
        "--instance-id",
        "i-0123456789abcdef0",
        "-q",
    ];
    args.extend_from_slice(extra);
    let o = common::cli_local_prefix(&s.store, prefix, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `winbundle snapshot` of `prefix` against `fake`.
fn snapshot(s: &Setup, fake: &FakeEbs, prefix: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "snapshot",
        "--ebs-endpoint-url",
        &fake.endpoint,
        "--region",
        "us-east-1",
        "-q",
    ];
    args.extend_from_slice(extra);
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"));
    c.args(&args).args([
        "--local-store",
        s.store.to_str().unwrap(),
        "--bucket",
        "test-bucket",
        "--prefix",
        prefix,
    ]);
    creds(&mut c).output().unwrap()
}

fn creds(c: &mut std::process::Command) -> &mut std::process::Command {
    c.env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE")
}

fn ok_json(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "{:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["Snapshot"].clone()
}

/// `restore --disk` of `prefix`: the disk's bytes.
fn restored_disk(s: &Setup, prefix: &str) -> Vec<u8> {
    let out = s
        .store
        .parent()
        .unwrap()
        .join(format!("{}.disk", prefix.replace('/', "_")));
    let o = common::cli_local_prefix(
        &s.store,
        prefix,
        &["restore", "--disk", "--output", out.to_str().unwrap(), "--force", "-q"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(out).unwrap()
}

fn non_zero_blocks(disk: &[u8]) -> u64 {
    disk.chunks(BLOCK).filter(|b| b.iter().any(|&x| x != 0)).count() as u64
}

fn sidecar(s: &Setup, prefix: &str) -> serde_json::Value {
    let p = s.store.join("test-bucket").join(format!("{prefix}.snapshot.json"));
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn a_snapshot_reads_back_as_restore_disk_writes_it_from_its_non_zero_blocks_only() {
    let fake = FakeEbs::start();
    for name in ["gpt-disk.img", "mbr-disk.img", "gpt4k-disk.img", "odd-gpt-disk.img"] {
        let s = bundled(name, "w/mon");
        let disk = restored_disk(&s, "w/mon");
        let puts = fake.with(|g| g.puts);
        let v = ok_json(&snapshot(
            &s,
            &fake,
            "w/mon",
            &["--tag", "Name=test", "--description", "mon"],
        ));
        let id = v["SnapshotId"].as_str().unwrap();
        let snap = fake.snap(id);
        assert_eq!(snap.status, "completed", "{name}");
        assert_eq!(
            fake.read_back(id, disk.len() as u64),
            disk,
            "{name}: the snapshot is the disk"
        );
        // Only the non-zero blocks went out (the fake checked each checksum and the aggregate).
        let nz = non_zero_blocks(&disk);
        assert_eq!(v["BlocksSent"], nz, "{name}");
        assert_eq!(v["NonZeroBlocks"], nz, "{name}");
        assert_eq!(fake.with(|g| g.puts) - puts, nz, "{name}");
        assert_eq!(snap.blocks.len() as u64, nz, "{name}");
        assert_eq!(snap.volume_size, disk.len().div_ceil(1 << 30) as i64, "{name}");
        assert_eq!(snap.tags, vec![("Name".to_string(), "test".to_string())]);
        assert_eq!(snap.description.as_deref(), Some("mon"));
        // The Timeout sent is the one reported, sized to the data (at least 10 minutes).
        assert_eq!(v["TimeoutMinutes"], snap.timeout, "{name}");
        assert!((10..=4320).contains(&snap.timeout));
        // Recorded beside the bundle.
        let rec = sidecar(&s, "w/mon");
        assert_eq!(rec["SnapshotId"], id);
        assert_eq!(rec["State"], "completed");
        assert_eq!(rec["Checksum"], v["Checksum"]);
        // Asked again: the recorded snapshot, nothing started.
        let starts = fake.with(|g| g.starts);
        let again = ok_json(&snapshot(&s, &fake, "w/mon", &[]));
        assert_eq!(again["SnapshotId"], id);
        assert_eq!(again["AlreadyMade"], true);
        assert_eq!(fake.with(|g| g.starts), starts);
    }
    // Text and XML name the snapshot too.
    let s = bundled("gpt-disk.img", "x/a");
    let o = snapshot(&s, &fake, "x/a", &["--output", "text"]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success() && text.starts_with("SNAPSHOT\tsnap-"), "{text}");
    let o = snapshot(&s, &fake, "x/a", &["--output", "xml", "--again"]);
    let (fields, _) = common::xml_fields(&String::from_utf8_lossy(&o.stdout));
    assert!(fields["SnapshotResponse/snapshotId"].starts_with("snap-"), "{fields:?}");
    assert_ne!(
        fields["SnapshotResponse/snapshotId"],
        text.split('\t').nth(1).unwrap(),
        "--again makes a new one"
    );
    assert_eq!(fake.snap(&fields["SnapshotResponse/snapshotId"]).status, "completed");
}

#[test]
fn an_incremental_snapshot_sends_only_changed_chunks_and_reads_back_as_a_full_one() {
    let fake = FakeEbs::start();
    let s = bundled("gpt-disk.img", "c/mon");
    let mon = ok_json(&snapshot(&s, &fake, "c/mon", &[]));
    change_one_cluster(&s.src);
    bundle(&s, "c/tue", &["--parent", "c/mon"]);
    let disk = restored_disk(&s, "c/tue");
    // The parent's snapshot is found in its sidecar.
    let tue = ok_json(&snapshot(&s, &fake, "c/tue", &[]));
    assert_eq!(tue["ParentSnapshotId"], mon["SnapshotId"]);
    let id = tue["SnapshotId"].as_str().unwrap();
    assert_eq!(fake.snap(id).parent.as_deref(), mon["SnapshotId"].as_str());
    let sent = tue["BlocksSent"].as_u64().unwrap();
    // One changed 1 MiB chunk (2 or 3 blocks) and the partition tables (the first block, the last MiB).
    assert!(sent <= 6 && sent < mon["BlocksSent"].as_u64().unwrap(), "{tue}");
    assert_eq!(
        fake.read_back(id, disk.len() as u64),
        disk,
        "child + inherited = the child's disk"
    );
    // A full snapshot of the same bundle reads back the same.
    let full = ok_json(&snapshot(&s, &fake, "c/tue", &["--full", "--again"]));
    assert!(full.get("ParentSnapshotId").is_none());
    assert_eq!(
        fake.read_back(full["SnapshotId"].as_str().unwrap(), disk.len() as u64),
        fake.read_back(id, disk.len() as u64)
    );
    // A parent snapshot that is not the parent bundle's is refused, naming the recorded one.
    let o = snapshot(
        &s,
        &fake,
        "c/tue",
        &["--again", "--parent-snapshot", "snap-0123456789abcdef0"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(mon["SnapshotId"].as_str().unwrap()) && err.contains("--full"),
        "{err}"
    );
}

#[test]
fn throttling_is_ridden_out_with_backoff() {
    let fake = FakeEbs::start();
    fake.with(|g| g.rate = Some(10));
    let s = bundled("gpt-disk.img", "t/a");
    let disk = restored_disk(&s, "t/a");
    let v = ok_json(&snapshot(
        &s,
        &fake,
        "t/a",
        &["--ebs-concurrency", "16", "--ebs-max-attempts", "30"],
    ));
    let throttled = fake.with(|g| g.throttled);
    assert!(throttled > 0 && v["Throttled"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(
        fake.read_back(v["SnapshotId"].as_str().unwrap(), disk.len() as u64),
        disk
    );
}

#[test]
fn a_failed_block_leaves_the_snapshot_pending_and_named_and_a_rerun_resumes_it() {
    let fake = FakeEbs::start();
    let s = bundled("gpt-disk.img", "f/a");
    let disk = restored_disk(&s, "f/a");
    fake.with(|g| g.failing.insert(0));
    let o = snapshot(&s, &fake, "f/a", &["--ebs-max-attempts", "2"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    let rec = sidecar(&s, "f/a");
    let id = rec["SnapshotId"].as_str().unwrap().to_string();
    assert_eq!(rec["State"], "pending");
    assert!(
        err.contains(&id) && err.contains("pending") && err.contains("block 0"),
        "{err}"
    );
    assert_eq!(fake.snap(&id).status, "pending", "never completed");
    assert_eq!(fake.with(|g| g.completes), 0);
    // Healed: the same command takes the pending snapshot up with the recorded token.
    fake.with(|g| g.failing.clear());
    let v = ok_json(&snapshot(&s, &fake, "f/a", &[]));
    assert_eq!(v["SnapshotId"], id.as_str());
    assert_eq!(v["Resumed"], true);
    assert_eq!(v["ClientToken"], rec["ClientToken"]);
    assert_eq!(fake.read_back(&id, disk.len() as u64), disk);
    assert_eq!(sidecar(&s, "f/a")["State"], "completed");
}

#[test]
fn a_snapshot_past_its_timeout_is_not_completed_and_cannot_be_resumed() {
    let fake = FakeEbs::start();
    // A "minute" of 10 ms: the shortest Timeout (10 minutes) passes in 100 ms, while the 10
    // blocks a second the fake lets through take longer.
    fake.with(|g| {
        g.minute = std::time::Duration::from_millis(10);
        g.rate = Some(10);
    });
    let s = bundled("gpt-disk.img", "o/a");
    let o = snapshot(
        &s,
        &fake,
        "o/a",
        &["--timeout-minutes", "10", "--ebs-max-attempts", "30"],
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    let id = sidecar(&s, "o/a")["SnapshotId"].as_str().unwrap().to_string();
    assert!(err.contains(&id) && err.contains("not pending"), "{err}");
    assert_eq!(fake.snap(&id).status, "error");
    // The token names a failed snapshot: the re-run says it cannot resume, and what to do.
    let o = snapshot(&s, &fake, "o/a", &[]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot resume") && err.contains(&id) && err.contains("--no-resume"),
        "{err}"
    );
    // Out of range: refused before anything starts.
    let o = snapshot(&s, &fake, "o/a", &["--timeout-minutes", "5", "--no-resume"]);
    assert_eq!(o.status.code(), Some(2));
    fake.with(|g| {
        g.minute = std::time::Duration::from_secs(60);
        g.rate = None;
    });
    let v = ok_json(&snapshot(&s, &fake, "o/a", &["--no-resume"]));
    assert_ne!(v["SnapshotId"], id.as_str());
    assert_eq!(fake.snap(v["SnapshotId"].as_str().unwrap()).status, "completed");
}

#[cfg(unix)]
#[test]
fn ctrl_c_leaves_the_snapshot_pending_never_completed() {
    let fake = FakeEbs::start();
    fake.with(|g| g.rate = Some(4));
    let s = bundled("gpt-disk.img", "k/a");
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"));
    c.args([
        "snapshot",
        "--ebs-endpoint-url",
        &fake.endpoint,
        "--region",
        "us-east-1",
        "-q",
    ])
    .args([
        "--local-store",
        s.store.to_str().unwrap(),
        "--bucket",
        "test-bucket",
        "--prefix",
        "k/a",
    ])
    .args(["--ebs-max-attempts", "100"])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let child = creds(&mut c).spawn().unwrap();
    // Wait until blocks are going out, then interrupt.
    while fake.with(|g| g.puts) < 2 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(130), "{err}");
    let id = sidecar(&s, "k/a")["SnapshotId"].as_str().unwrap().to_string();
    assert!(err.contains(&id) && err.contains("pending"), "{err}");
    assert_eq!(fake.snap(&id).status, "pending");
    assert_eq!(fake.with(|g| g.completes), 0, "CompleteSnapshot is never called");
}

/// Overwrites one allocated cluster of C: in the disk image `img` (in the middle of $LogFile,
/// so the bundle's chunk of it changes) with random bytes.
fn change_one_cluster(img: &Path) {
    use common::FileAt;
    let disk = winbundle::source::DiskFile::open(img).unwrap();
    let plan = winbundle::bundle::plan::Plan::analyse(&disk, &common::request(img, "x").plan).unwrap();
    let root = plan.layout.root().partition.clone();
    let vol = winbundle::ntfs::NtfsVolume::open(&disk, root.offset, root.length).unwrap();
    let cs = vol.facts().cluster_size as u64;
    let log = vol.file_data(2).unwrap();
    let clusters: Vec<u64> = log
        .runs
        .iter()
        .filter_map(|r| r.lcn.map(|l| (l, r.count)))
        .flat_map(|(l, n)| l..l + n)
        .collect();
    let lcn = clusters[clusters.len() / 2];
    drop(vol);
    drop(plan);
    drop(disk);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Vec<u8> = (0..cs)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(&bytes, root.offset + lcn * cs).unwrap();
}
