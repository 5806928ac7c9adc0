//! The aligned-read layer: every fixture bundled from a source that refuses any read Windows
//! would refuse on an unbuffered volume handle (WINBUNDLE_STRICT_ALIGNMENT: unaligned, or past
//! the end of the device), as a 4Kn, a 512n and a 512e (512 logical, 4096 physical) disk, giving
//! the same data objects as an ordinary bundle and restoring to the same volume. Two fixtures
//! have lengths that are multiples of 512 but not of 4096 (a GPT C: ending at the last usable
//! sector, a bare volume), as on 512e disks.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const FIXTURES: [&str; 7] = [
    "gpt-disk.img.zst",
    "mbr-disk.img.zst",
    "gpt4k-disk.img.zst",
    "bare-volume.img.zst",
    "attrlist-volume.img.zst",
    "odd-gpt-disk.img.zst",
    "odd-volume.img.zst",
];

/// Fixtures whose length is not a multiple of 4096: no 4Kn disk has them.
const ODD: [&str; 2] = ["odd-gpt-disk.img.zst", "odd-volume.img.zst"];

fn run(strict: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_winbundle"));
    cmd.env(
        "XDG_STATE_HOME",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-state"),
    )
    .env_remove("WINBUNDLE_STRICT_ALIGNMENT");
    if let Some(n) = strict {
        cmd.env("WINBUNDLE_STRICT_ALIGNMENT", n);
    }
    cmd.args(args).output().unwrap()
}

#[test]
fn every_fixture_bundles_the_same_through_sector_aligned_reads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let dir = tempfile::tempdir().unwrap();
    for fx in FIXTURES {
        let src = root.join(fx);
        let src = src.to_str().unwrap();
        let mut objects = Vec::new();
        let mut variants = vec![
            (None, "plain", 1),
            (Some("512"), "strict512", 512),
            (Some("512/4096"), "strict512e", 512),
        ];
        if !ODD.contains(&fx) {
            variants.push((Some("4096"), "strict4k", 4096));
        }
        for &(strict, name, sector) in &variants {
            let store = dir.path().join(format!("{fx}-{name}"));
            let at = [
                "--bucket",
                "bkt",
                "--prefix",
                "p",
                "--local-store",
                store.to_str().unwrap(),
                "-q",
            ];
            let o = run(strict, &[&["bundle-instance", src][..], &at].concat());
            assert!(
                o.status.success(),
                "{fx} {name}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            let reads = &v["Bundle"]["SourceReads"];
            assert_eq!(reads["SectorAlignment"], sector, "{fx} {name}: {reads}");
            if strict.is_some() {
                // NTFS metadata reads are small and unaligned: they went through the bounce path.
                assert!(reads["BouncedRequests"].as_u64().unwrap() > 0, "{fx} {name}: {reads}");
                // With 4 KiB clusters, chunk reads land page-aligned in the page-aligned chunk
                // buffers: they go straight to the device.
                if fx == "gpt-disk.img.zst" {
                    assert!(reads["DirectRequests"].as_u64().unwrap() > 0, "{fx} {name}: {reads}");
                }
            } else {
                assert_eq!(reads["BouncedRequests"], 0, "{fx}: {reads}");
            }
            objects.push(std::fs::read(store.join("bkt/p.image.zst")).unwrap());
            // Restores to the same volume as the source's allocated clusters.
            let out = dir.path().join(format!("{fx}-{name}.img"));
            let o = run(
                None,
                &[&["restore", "--output", out.to_str().unwrap()][..], &at].concat(),
            );
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        assert!(
            objects.windows(2).all(|w| w[0] == w[1]),
            "{fx}: strict reads changed the data object"
        );
        let plain = std::fs::read(dir.path().join(format!("{fx}-plain.img"))).unwrap();
        for &(_, name, _) in &variants[1..] {
            assert!(
                plain == std::fs::read(dir.path().join(format!("{fx}-{name}.img"))).unwrap(),
                "{fx} {name}"
            );
        }
        // And the plain restore is the source's volume (allocated clusters equal, the rest zero).
        let decompressed = fixture(fx.trim_end_matches(".zst"), dir.path());
        let req = request(&decompressed, "x");
        assert_restored_matches(&decompressed, &req.plan, &dir.path().join(format!("{fx}-plain.img")));
        // inspect reads through the same layer.
        let o = run(Some("512/4096"), &["inspect", src, "--json"]);
        assert!(o.status.success(), "{fx}: {}", String::from_utf8_lossy(&o.stderr));
    }
}

/// `--output-file`: the result document goes to the file (UTF-8), nothing to standard output, so
/// the console stays attached (no PowerShell pipe, Ctrl-C reaches winbundle).
#[test]
fn output_file_receives_the_result_document() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("résultat bundle.json");
    let store = dir.path().join("store");
    let o = run(
        None,
        &[
            "bundle-instance",
            root.join("bare-volume.img.zst").to_str().unwrap(),
            "--bucket",
            "bkt",
            "--prefix",
            "p",
            "--local-store",
            store.to_str().unwrap(),
            "-q",
            "--output-file",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout.is_empty(), "{}", String::from_utf8_lossy(&o.stdout));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(v["BundleTask"]["State"], "complete", "{v}");
    assert_eq!(v["Bundle"]["ManifestKey"], "p.manifest.json", "{v}");
    // A file that cannot be written: exit status 1 before anything is bundled.
    let o = run(
        None,
        &[
            "bundle-instance",
            root.join("bare-volume.img.zst").to_str().unwrap(),
            "--bucket",
            "bkt",
            "--prefix",
            "q",
            "--local-store",
            store.to_str().unwrap(),
            "-q",
            "--output-file",
            dir.path().join("no/such/folder.json").to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot write the result document to"));
    assert!(o.stdout.is_empty());
    assert!(!store.join("bkt").join("q.manifest.json").exists());
}
