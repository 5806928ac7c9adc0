//! `restore --disk --format vmdk|vhdx` and `--output s3://…` / `--output-key`: disk images for
//! VM Import, written in one ordered stream to a file or an S3 multipart upload. qemu-img is
//! the independent reader: `check` passes on each image and `compare` finds it equal to the raw
//! `restore --disk` output, for every partitioned fixture, before and after a round trip
//! through S3.
//!
//! Not under Wine: qemu-img is a host tool the Windows test process cannot start. The image
//! writers are the same code on every target, and the e2e suite checks them again.
#![cfg(not(windows))]

mod common;
#[path = "common/s3server.rs"]
mod s3server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

const FIXTURES: [&str; 4] = ["gpt-disk.img", "gpt4k-disk.img", "mbr-disk.img", "odd-gpt-disk.img"];

/// Bundles a fixture into a local store under prefix `p`; returns the store.
fn bundled(fixture: &str, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let src = common::fixture(fixture, dir);
    let store = dir.join("store");
    common::bundle(&common::request(&src, "p"), &store)
        .result
        .expect("bundle");
    store
}

fn qemu(args: &[&str]) -> Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (apt-get install qemu-utils)")
}

/// `qemu-img check` passes and `qemu-img compare` finds `image` equal to the raw disk.
fn qemu_agrees(raw: &Path, image: &Path, fmt: &str) {
    let s = |p: &Path| p.to_str().unwrap().to_string();
    // qemu checks the metadata of sparse formats; a fixed VHD and a raw disk have none.
    if matches!(fmt, "vmdk" | "vhdx") {
        ok(&qemu(&["check", "-f", fmt, &s(image)]));
    }
    let c = qemu(&["compare", "-f", "raw", "-F", fmt, &s(raw), &s(image)]);
    assert!(
        c.status.success(),
        "{} differs from the raw disk: {}{}",
        image.display(),
        String::from_utf8_lossy(&c.stdout),
        String::from_utf8_lossy(&c.stderr)
    );
    let info = qemu(&["info", "-f", fmt, &s(image)]);
    ok(&info);
    let info = String::from_utf8_lossy(&info.stdout).to_string();
    let virtual_size = std::fs::metadata(raw).unwrap().len();
    assert!(info.contains(&format!("({virtual_size} bytes)")), "{info}");
    if fmt == "vmdk" {
        assert!(info.contains("create type: streamOptimized"), "{info}");
        assert!(info.contains("compressed: true"), "{info}");
    }
}

/// Non-zero `unit`-sized pieces of `disk` (the last one short).
fn present(disk: &[u8], unit: usize) -> usize {
    disk.chunks(unit).filter(|c| c.iter().any(|&b| b != 0)).count()
}

#[test]
fn vmdk_and_vhdx_of_every_partitioned_fixture_read_back_as_the_raw_disk() {
    let tmp = tempfile::tempdir().unwrap();
    for fixture in FIXTURES {
        let dir = tmp.path().join(fixture);
        let store = bundled(fixture, &dir);
        let raw = dir.join("disk.img");
        ok(&common::cli_local(
            &store,
            &["restore", "--disk", "-q", "-o", raw.to_str().unwrap()],
        ));
        let disk = std::fs::read(&raw).unwrap();
        for fmt in ["vmdk", "vhdx"] {
            let image = dir.join(format!("disk.{fmt}"));
            let out = common::cli_local(
                &store,
                &[
                    "restore",
                    "--disk",
                    "--format",
                    fmt,
                    "--json",
                    "-o",
                    image.to_str().unwrap(),
                ],
            );
            ok(&out);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["Format"], fmt);
            assert_eq!(v["DiskSize"].as_u64(), Some(disk.len() as u64));
            assert_eq!(v["FileSize"].as_u64(), Some(std::fs::metadata(&image).unwrap().len()));
            assert!(!dir.join(format!("disk.{fmt}.partial")).exists());
            let bytes = std::fs::read(&image).unwrap();
            // Only the bundle's data: zero grains and blocks are never written.
            if fmt == "vmdk" {
                let (back, grains) = winbundle::read::vmdk::read_back(&bytes).unwrap();
                assert_eq!(back, disk, "{fixture}");
                assert_eq!(grains, present(&disk, 65536), "{fixture}: only non-zero grains");
            } else {
                let (back, blocks) = winbundle::read::vhdx::read_back(&bytes).unwrap();
                assert_eq!(back, disk, "{fixture}");
                assert_eq!(blocks, present(&disk, 1 << 20), "{fixture}: only non-zero blocks");
                let head = winbundle::read::vhdx::Layout::new(
                    disk.len() as u64,
                    if fixture.contains("4k") { 4096 } else { 512 },
                    0,
                )
                .unwrap()
                .head_len as usize;
                assert_eq!(bytes.len(), head + present(&disk, 1 << 20) * (1 << 20), "{fixture}");
            }
            // qemu opens VHDX files with 512-byte logical sectors only (its vhdx driver answers
            // ENOTSUP otherwise); the 4 KiB fixture's VHDX is checked by read_back above.
            if !(fmt == "vhdx" && fixture.contains("4k")) {
                qemu_agrees(&raw, &image, fmt);
            }
        }
        // An existing file is kept without --force.
        let again = common::cli_local(
            &store,
            &[
                "restore",
                "--disk",
                "--format",
                "vmdk",
                "-o",
                dir.join("disk.vmdk").to_str().unwrap(),
            ],
        );
        assert!(!again.status.success());
        assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    }
}

/// The CLI against the in-process S3 server, with its credentials.
fn s3_cli(s3: &s3server::TestS3, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_winbundle"))
        .env("AWS_ACCESS_KEY_ID", s3server::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", s3server::SECRET_KEY)
        .args(args)
        .args(["--endpoint-url", &s3.endpoint, "--region", "us-east-1"])
        .output()
        .unwrap()
}

#[test]
fn disk_images_stream_into_s3_multipart_uploads() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = s3server::TestS3::start(&["bkt", "images"]);
    for fixture in ["gpt-disk.img", "odd-gpt-disk.img"] {
        let dir = tmp.path().join(fixture);
        let store = bundled(fixture, &dir);
        let raw = dir.join("disk.img");
        ok(&common::cli_local(
            &store,
            &["restore", "--disk", "-q", "-o", raw.to_str().unwrap()],
        ));
        let local = [
            "--local-store",
            store.to_str().unwrap(),
            "--bucket",
            "test-bucket",
            "--prefix",
            "p",
        ];
        for (fmt, qfmt) in [("vmdk", "vmdk"), ("vhdx", "vhdx"), ("vhd", "vpc"), ("raw", "raw")] {
            let key = format!("{fixture}/disk.{fmt}");
            s3.faults.reset_counts();
            let mut args = vec!["restore", "--disk", "-q", "--format", fmt];
            let url = format!("s3://images/{key}");
            args.extend(["-o", &url]);
            args.extend(local);
            ok(&s3_cli(&s3, &args));
            assert_eq!(s3.faults.count_succeeded("CompleteMultipartUpload"), 1, "{fmt}");
            assert!(s3.faults.count_succeeded("UploadPart") >= 1, "{fmt}");
            assert_eq!(s3.faults.count("PutObject"), 0, "{fmt}: no local copy, no single PUT");
            let file = s3.object_file("images", &key);
            qemu_agrees(&raw, &file, qfmt);
        }
    }
    // --output-key: into the bundle's own bucket on S3, and resumed parts are not sent again.
    let dir = tmp.path().join("in-bucket");
    std::fs::create_dir_all(&dir).unwrap();
    let src = common::fixture("gpt-disk.img", &dir);
    let mut req = common::request(&src, "win/p");
    req.bucket = "bkt".into();
    winbundle::bundle::create::bundle_instance(
        &req,
        &s3.store("bkt"),
        &winbundle::progress::NoProgress,
        &std::sync::atomic::AtomicBool::new(false),
        &mut |_| Ok(()),
    )
    .result
    .expect("bundle to S3");
    let raw = dir.join("disk.img");
    let args = ["--bucket", "bkt", "--prefix", "win/p"];
    let mut a = vec!["restore", "--disk", "-q", "-o", raw.to_str().unwrap()];
    a.extend(args);
    ok(&s3_cli(&s3, &a));
    let mut a = vec![
        "restore",
        "--disk",
        "-q",
        "--format",
        "vmdk",
        "--output-key",
        "win/p.vmdk",
    ];
    a.extend(args);
    ok(&s3_cli(&s3, &a));
    qemu_agrees(&raw, &s3.object_file("bkt", "win/p.vmdk"), "vmdk");
}

#[test]
fn a_failed_upload_leaves_no_object_and_bad_outputs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = s3server::TestS3::start(&["images"]);
    let store = bundled("gpt-disk.img", tmp.path());
    let local = [
        "--local-store",
        store.to_str().unwrap(),
        "--bucket",
        "test-bucket",
        "--prefix",
        "p",
    ];
    // Parts refused: the upload fails and is aborted; no object looks complete.
    s3.faults.deny.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut a = vec![
        "restore",
        "--disk",
        "-q",
        "--format",
        "vmdk",
        "-o",
        "s3://images/disk.vmdk",
    ];
    a.extend(local);
    let out = s3_cli(&s3, &a);
    s3.faults.deny.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AccessDenied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s3.faults.count_succeeded("AbortMultipartUpload"), 1);
    assert_eq!(s3.faults.count("CompleteMultipartUpload"), 0);
    assert!(!s3.object_file("images", "disk.vmdk").exists());
    assert!(s3.faults.uploads.lock().unwrap().is_empty(), "no upload left behind");
    // Not s3://BUCKET/KEY.
    for bad in ["s3://images", "s3://images/", "s3:///k"] {
        let mut a = vec!["restore", "--disk", "--format", "vmdk", "-o", bad];
        a.extend(local);
        let out = s3_cli(&s3, &a);
        assert_eq!(out.status.code(), Some(2), "{bad}: an invalid parameter");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("s3://BUCKET/KEY"),
            "{bad}"
        );
    }
    // A VHDX's tables come first: a local store, which writes in order, refuses it clearly.
    let out = common::cli_local(
        &store,
        &["restore", "--disk", "--format", "vhdx", "--output-key", "d.vhdx"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--format vmdk"));
    // ... and takes a VMDK, which qemu reads.
    ok(&common::cli_local(
        &store,
        &["restore", "--disk", "-q", "--format", "vmdk", "--output-key", "d.vmdk"],
    ));
    let raw = tmp.path().join("disk.img");
    ok(&common::cli_local(
        &store,
        &["restore", "--disk", "-q", "-o", raw.to_str().unwrap()],
    ));
    qemu_agrees(&raw, &store.join("test-bucket").join("d.vmdk"), "vmdk");
    // --output-key needs --disk.
    let out = common::cli_local(&store, &["restore", "--output-key", "v.img"]);
    assert!(!out.status.success());
}

/// Issue 29: an image upload cut short (parts refused after a few, and the abort refused, as
/// when a run is killed outright) is picked up by the next run of the same command, which sends
/// only the parts not yet stored; the object then reads back as the raw disk.
#[test]
fn an_interrupted_image_upload_resumes_sending_only_the_missing_parts() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = s3server::TestS3::start(&["images"]);
    let store = bundled("gpt-disk.img", tmp.path());
    let raw = tmp.path().join("disk.img");
    ok(&common::cli_local(
        &store,
        &["restore", "--disk", "-q", "-o", raw.to_str().unwrap()],
    ));
    let local = [
        "--local-store",
        store.to_str().unwrap(),
        "--bucket",
        "test-bucket",
        "--prefix",
        "p",
    ];
    // raw: 96 MiB in 16 MiB parts; vhdx: its 1 MiB blocks, then its head as the first part.
    for (fmt, qfmt, allowed) in [("raw", "raw", 2u32), ("vhdx", "vhdx", 1)] {
        let url = format!("s3://images/disk.{fmt}");
        let mut a = vec!["restore", "--disk", "-q", "--format", fmt, "-o", &url];
        a.extend(local);
        s3.faults.reset_counts();
        *s3.faults.parts_left.lock().unwrap() = Some(allowed);
        s3.faults.deny_abort.store(true, std::sync::atomic::Ordering::SeqCst);
        // One part at a time, so the parts allowed are the parts stored (in parallel, a part
        // allowed in may still be dropped when another is refused).
        let mut cut = a.clone();
        cut.extend(["--concurrency", "1"]);
        let out = s3_cli(&s3, &cut);
        *s3.faults.parts_left.lock().unwrap() = None;
        s3.faults.deny_abort.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(!out.status.success(), "{fmt}: the cut-short upload fails");
        assert!(!s3.object_file("images", &format!("disk.{fmt}")).exists(), "{fmt}");
        let stored = {
            let uploads = s3.faults.uploads.lock().unwrap();
            assert_eq!(uploads.len(), 1, "{fmt}: one unfinished upload is left");
            uploads.values().next().unwrap().parts.len()
        };
        assert_eq!(stored, allowed as usize, "{fmt}");
        // The same command again: the stored parts are kept, only the others are sent.
        s3.faults.reset_counts();
        ok(&s3_cli(&s3, &a));
        assert_eq!(
            s3.faults.count("CreateMultipartUpload"),
            0,
            "{fmt}: the upload is resumed"
        );
        let sent = s3.faults.count_succeeded("UploadPart");
        let total = {
            let file = s3.object_file("images", &format!("disk.{fmt}"));
            qemu_agrees(&raw, &file, qfmt);
            std::fs::metadata(&file).unwrap().len()
        };
        assert!(sent >= 1, "{fmt}");
        assert_eq!(
            sent + stored,
            match fmt {
                "raw" => total.div_ceil(16 << 20) as usize,
                _ => 2,
            },
            "{fmt}: every part is either kept or sent once"
        );
        assert!(
            s3.faults.uploads.lock().unwrap().is_empty(),
            "{fmt}: nothing left unfinished"
        );
    }
}
