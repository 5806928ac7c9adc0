//! Incremental bundles (`--parent`, `--incremental`) in a local store: the chunks that did not
//! change take the parent's frames, the data object is byte-identical to a full bundle's, the
//! bundle restores without its parent, and every parent that cannot be used is refused with why.

mod common;

use std::path::Path;

use common::*;

/// `winbundle bundle-instance SRC --local-store STORE --bucket bkt --prefix PREFIX EXTRA...`,
/// with `--chunk-size 1MiB` and one instance id unless EXTRA names them: (exit status, JSON
/// output or Null, stderr).
fn bundle_cli(src: &Path, store: &Path, prefix: &str, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let mut all = extra.to_vec();
    for (flag, default) in [("--chunk-size", "1MiB"), ("--instance-id", "i-0123456789abcdef0")] {
        if !extra.contains(&flag) {
            all.extend([flag, default]);
        }
    }
    bundle_cli_as_is(src, store, prefix, &all)
}

/// The same with EXTRA as it is.
fn bundle_cli_as_is(src: &Path, store: &Path, prefix: &str, extra: &[&str]) -> (i32, serde_json::Value, String) {
    // Each test its own task folder: the tests bundle the same instance id at once.
    let state = store.parent().unwrap().join("state");
    let mut args = vec![
        "bundle-instance",
        src.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--local-store",
        store.to_str().unwrap(),
        "--bucket",
        "bkt",
        "--prefix",
        prefix,
    ];
    args.extend_from_slice(extra);
    let o = winbundle(&args);
    let json = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (
        o.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A copy of gpt-disk.img bundled in full under `prefix`: (its folder, the image, the store).
fn full_bundle(prefix: &str) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let (dir, src, store) = fresh("gpt-disk.img");
    let (code, _, err) = bundle_cli(&src, &store, prefix, &[]);
    assert_eq!(code, 0, "{err}");
    (dir, src, store)
}

fn object(store: &Path, key: &str) -> Vec<u8> {
    std::fs::read(store.join("bkt").join(key)).unwrap()
}

/// Restores `prefix` from `store` and compares it with `src`.
fn restores_like(store: &Path, prefix: &str, src: &Path) {
    let s = winbundle::store::LocalStore::open(store, "bkt", false).unwrap();
    let out = store
        .parent()
        .unwrap()
        .join(format!("{}.restored", prefix.replace('/', "_")));
    restore_from(&s, prefix, &out).unwrap();
    assert_restored_matches(src, &request(src, "x").plan, &out);
}

/// Every committed fixture: GPT, MBR, 4K sectors, a bare volume, a fragmented MFT.
const FIXTURES: [&str; 5] = [
    "gpt-disk.img",
    "mbr-disk.img",
    "gpt4k-disk.img",
    "bare-volume.img",
    "attrlist-volume.img",
];

/// A copy of fixture `name` in a new folder: (the folder, the image, where its store goes).
fn fresh(name: &str) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture(name, dir.path());
    let store = dir.path().join("store");
    (dir, src, store)
}

#[test]
fn an_unchanged_source_reuses_every_data_chunk_and_restores_without_its_parent() {
    for name in FIXTURES {
        let (_dir, src, store) = fresh(name);
        let (code, full, err) = bundle_cli(&src, &store, "win/full", &[]);
        assert_eq!(code, 0, "{name}: {err}");
        let (code, inc, err) = bundle_cli(&src, &store, "win/inc", &["--parent", "win/full"]);
        assert_eq!(code, 0, "{name}: {err}");
        let b = &inc["Bundle"];
        let data_chunks = b["Chunks"].as_u64().unwrap() - b["ZeroChunks"].as_u64().unwrap();
        assert_eq!(b["Parent"]["Prefix"], "win/full", "{name}: {inc}");
        assert_eq!(b["Parent"]["BundleId"], full["BundleTask"]["BundleId"], "{name}");
        // Every chunk with data but the short last one (its frame is made at its own length).
        let reused = b["Parent"]["ReusedChunks"].as_u64().unwrap();
        assert!(
            reused + 1 >= data_chunks && reused > 0,
            "{name}: {reused} of {data_chunks}"
        );
        assert!(err.contains("incremental on win/full"), "{name}: {err}");
        // Every reused frame was read and checked, and copied file to file by the kernel.
        let p = &b["Parent"];
        assert!(p["FetchedBytes"].as_u64().unwrap() > 0, "{name}: {inc}");
        if cfg!(target_os = "linux") {
            assert_eq!(p["FileCopiedBytes"], p["FetchedBytes"], "{name}: {inc}");
        }
        assert_eq!(
            object(&store, "win/inc.image.zst"),
            object(&store, "win/full.image.zst"),
            "{name}: the incremental object is the full bundle's, byte for byte"
        );
        assert_eq!(b["BundleSha256"], full["Bundle"]["BundleSha256"], "{name}");
        // The parent goes; the incremental bundle still verifies and restores.
        for suffix in ["manifest.json", "image.zst", "index.zst"] {
            std::fs::remove_file(store.join("bkt").join(format!("win/full.{suffix}"))).unwrap();
        }
        verify_in(&store, "win/inc");
        restores_like(&store, "win/inc", &src);
    }
}

/// Overwrites one cluster in the middle of `$LogFile` (its contents are not parsed, so only
/// that cluster's chunk changes: nothing shifts) with random bytes. Returns the volume offset of
/// the cluster.
fn change_one_cluster(img: &Path, seed: u64) -> u64 {
    use common::FileAt;
    let disk = winbundle::source::DiskFile::open(img).unwrap();
    let plan = winbundle::bundle::plan::Plan::analyse(&disk, &request(img, "x").plan).unwrap();
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
    let mut x = seed;
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
    lcn * cs
}

#[test]
fn one_changed_cluster_in_every_fixture_costs_one_chunk() {
    for name in FIXTURES {
        let (_dir, src, store) = fresh(name);
        let (code, full, err) = bundle_cli(&src, &store, "c/mon", &[]);
        assert_eq!(code, 0, "{name}: {err}");
        let at = change_one_cluster(&src, 0x9e3779b97f4a7c15);
        let (code, inc, err) = bundle_cli(&src, &store, "c/tue", &["--incremental"]);
        assert_eq!(code, 0, "{name}: {err}");
        let (code, fresh, err) = bundle_cli(&src, &store, "c/fresh", &[]);
        assert_eq!(code, 0, "{name}: {err}");
        let data = |v: &serde_json::Value| {
            v["Bundle"]["Chunks"].as_u64().unwrap() - v["Bundle"]["ZeroChunks"].as_u64().unwrap()
        };
        let reused = inc["Bundle"]["Parent"]["ReusedChunks"].as_u64().unwrap();
        // Every chunk with data but the changed one and the short last one took the parent's
        // frame (the changed cluster may have been in an all-zero chunk before: one more).
        assert!(
            reused + 2 >= data(&full) && reused < data(&fresh),
            "{name}: {reused} reused of {} chunks with data (cluster at {at})",
            data(&fresh)
        );
        assert_eq!(
            object(&store, "c/tue.image.zst"),
            object(&store, "c/fresh.image.zst"),
            "{name}: the incremental object is a full bundle's"
        );
        assert_ne!(
            object(&store, "c/tue.image.zst"),
            object(&store, "c/mon.image.zst"),
            "{name}"
        );
        // A partitioned disk: the disk stream (table, system partitions) did not change, so the
        // parent's was copied, and the incremental bundle's disk is a full bundle's.
        let has_disk = store.join("bkt/c/mon.disk.image.zst").exists();
        if has_disk {
            assert_eq!(inc["Bundle"]["Parent"]["DiskStream"], "copied", "{name}");
            assert_eq!(
                object(&store, "c/tue.disk.image.zst"),
                object(&store, "c/mon.disk.image.zst"),
                "{name}"
            );
            std::fs::remove_file(store.join("bkt/c/mon.disk.image.zst")).unwrap();
        }
        for suffix in ["manifest.json", "image.zst", "index.zst"] {
            std::fs::remove_file(store.join("bkt").join(format!("c/mon.{suffix}"))).unwrap();
        }
        verify_in(&store, "c/tue");
        restores_like(&store, "c/tue", &src);
        if has_disk {
            assert_eq!(
                restored_disk(&store, "c/tue"),
                restored_disk(&store, "c/fresh"),
                "{name}"
            );
        }
    }
}

/// `winbundle restore --disk` of `prefix` from `store`: the disk's bytes.
fn restored_disk(store: &Path, prefix: &str) -> Vec<u8> {
    let out = store
        .parent()
        .unwrap()
        .join(format!("{}.disk", prefix.replace('/', "_")));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"))
        .args(["restore", "--disk", "--output", out.to_str().unwrap(), "--local-store"])
        .args([store.to_str().unwrap(), "--bucket", "bkt", "--prefix", prefix, "-q"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(&out).unwrap()
}

fn verify_in(store: &Path, prefix: &str) {
    let o = verify_cli(store, prefix);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `winbundle verify` of `prefix` in the local store `store`.
fn verify_cli(store: &Path, prefix: &str) -> std::process::Output {
    winbundle(&[
        "verify",
        "--local-store",
        store.to_str().unwrap(),
        "--bucket",
        "bkt",
        "--prefix",
        prefix,
    ])
}

#[test]
fn changed_clusters_are_compressed_again_and_the_object_equals_a_full_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("gpt-disk.img", dir.path());
    let store = dir.path().join("store");
    let (code, full, err) = bundle_cli(&src, &store, "nightly/mon", &[]);
    assert_eq!(code, 0, "{err}");
    // New data in three free clusters far apart (so in three chunks), nothing else moved.
    let changed = fill_free_clusters(&src, 7, &|cl| cl % 4096 == 1000);
    assert!(changed.len() >= 3, "{changed:?}");
    let (code, inc, err) = bundle_cli(&src, &store, "nightly/tue", &["--incremental"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("incremental on nightly/mon"),
        "--incremental names its choice: {err}"
    );
    let (code, fresh, err) = bundle_cli(&src, &store, "full/tue", &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        object(&store, "nightly/tue.image.zst"),
        object(&store, "full/tue.image.zst"),
        "an incremental bundle's object equals a full bundle's of the same source"
    );
    assert_eq!(inc["Bundle"]["BundleSha256"], fresh["Bundle"]["BundleSha256"]);
    let cs = {
        let m: serde_json::Value = serde_json::from_slice(&object(&store, "nightly/mon.manifest.json")).unwrap();
        m["source"]["ntfs"]["cluster_size"].as_u64().unwrap()
    };
    let mut chunks: Vec<u64> = changed.iter().map(|cl| cl * cs / (1 << 20)).collect();
    chunks.dedup();
    let before = full["Bundle"]["Chunks"].as_u64().unwrap() - full["Bundle"]["ZeroChunks"].as_u64().unwrap();
    let reused = inc["Bundle"]["Parent"]["ReusedChunks"].as_u64().unwrap();
    // The changed chunks are compressed (one may have been all zeros before: a new data
    // chunk), and so is the short last chunk; every other chunk with data is reused.
    assert!(
        reused + chunks.len() as u64 + 1 >= before && reused <= before,
        "{reused} reused of {before}, {} changed",
        chunks.len()
    );
    verify_in(&store, "nightly/tue");
    restores_like(&store, "nightly/tue", &src);
}

/// Without --chunk-size and --zstd-level, an incremental bundle takes its parent's, so a chain
/// made with other settings goes on without repeating them; one given still wins.
#[test]
fn an_incremental_bundle_takes_the_parents_chunk_size_and_level_unless_told() {
    let (_dir, src, store) = fresh("gpt-disk.img");
    let settings = ["--chunk-size", "256KiB", "--zstd-level", "2"];
    let (code, _, err) = bundle_cli(&src, &store, "s/mon", &settings);
    assert_eq!(code, 0, "{err}");
    fill_free_clusters(&src, 9, &|cl| cl % 4096 == 1000);
    let (code, inc, err) = bundle_cli_as_is(
        &src,
        &store,
        "s/tue",
        &["--instance-id", "i-0123456789abcdef0", "--parent", "s/mon"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("chunks of 262144 bytes and zstd level 2, as the parent's"),
        "says what it took: {err}"
    );
    assert!(inc["Bundle"]["Parent"]["ReusedChunks"].as_u64().unwrap() > 0, "{inc}");
    let m: serde_json::Value = serde_json::from_slice(&object(&store, "s/tue.manifest.json")).unwrap();
    assert_eq!(m["chunk_size"], 256 << 10, "{m}");
    assert_eq!(m["compression"]["level"], 2, "{m}");
    // The object a full bundle with those settings writes.
    let (code, _, err) = bundle_cli(&src, &store, "s/full", &settings);
    assert_eq!(code, 0, "{err}");
    assert_eq!(object(&store, "s/tue.image.zst"), object(&store, "s/full.image.zst"));
    // A chunk size given is kept, and refused where it differs; the level still follows.
    let (code, v, err) = bundle_cli(&src, &store, "s/wed", &["--parent", "s/tue", "--chunk-size", "256KiB"]);
    assert_eq!(code, 0, "{err}");
    assert!(v["Bundle"]["Parent"]["ReusedChunks"].as_u64().unwrap() > 0, "{v}");
    let (code, _, err) = bundle_cli(&src, &store, "s/thu", &["--parent", "s/tue", "--chunk-size", "512KiB"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("pass --chunk-size 262144"), "{err}");
    restores_like(&store, "s/tue", &src);
}

#[test]
fn parents_that_cannot_be_used_are_refused_with_why() {
    let (_dir, src, store) = full_bundle("p/full");
    let refused = |prefix: &str, extra: &[&str], says: &str| {
        let (code, _, err) = bundle_cli(&src, &store, prefix, extra);
        assert_eq!(code, 2, "{says}: {err}");
        assert!(err.contains(says), "expected {says:?} in: {err}");
        assert!(
            !store.join("bkt").join(format!("{prefix}.manifest.json")).exists(),
            "{says}: no bundle"
        );
    };
    refused(
        "p/a",
        &["--parent", "p/none"],
        "the parent bundle p/none cannot be used",
    );
    refused(
        "p/a",
        &["--parent", "p/full", "--chunk-size", "2MiB"],
        "pass --chunk-size 1048576",
    );
    refused(
        "p/a",
        &["--parent", "p/full", "--instance-id", "i-0fedcba9876543210"],
        "pass --force-parent",
    );
    refused("p/a", &["--parent", "p/a"], "the prefix of the new bundle itself");
    refused(
        "q/a",
        &["--incremental", "--instance-id", "i-0fedcba9876543210"],
        "found no complete bundle",
    );
    // Another instance's bundle, when the user says so.
    let (code, v, err) = bundle_cli(
        &src,
        &store,
        "p/forced",
        &[
            "--parent",
            "p/full",
            "--instance-id",
            "i-0fedcba9876543210",
            "--force-parent",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(v["Bundle"]["Parent"]["ReusedChunks"].as_u64().unwrap() > 0, "{v}");

    // Another zstd level: the frames would differ from a full bundle's, so none is reused.
    let (code, v, err) = bundle_cli(&src, &store, "p/level", &["--parent", "p/full", "--zstd-level", "3"]);
    assert_eq!(code, 0, "{err}");
    assert!(v["Bundle"]["Parent"].is_null(), "{v}");
    assert!(err.contains("every chunk is compressed again"), "{err}");

    // A damaged parent index is found by its digest.
    let index = store.join("bkt").join("p/full.index.zst");
    let mut bytes = std::fs::read(&index).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&index, &bytes).unwrap();
    refused("p/b", &["--parent", "p/full"], "is not the one the manifest names");
    // A parent from before chunk indexes: its manifest names none.
    let manifest = store.join("bkt").join("p/full.manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m.as_object_mut().unwrap().remove("index");
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    refused("p/b", &["--parent", "p/full"], "has no chunk index");
}

#[test]
fn a_chunk_that_differs_from_its_index_fails_verify() {
    // The index is covered by the manifest's digest; a bundle whose index and data disagree
    // (made by hand here: index and manifest digest rewritten together) fails on that chunk.
    let (_dir, _, store) = full_bundle("t/x");
    let key = |s: &str| store.join("bkt").join(format!("t/x.{s}"));
    let mut raw = zstd::decode_all(&std::fs::read(key("index.zst")).unwrap()[..]).unwrap();
    // The first entry's hash (after the 40-byte header).
    raw[40] ^= 0xff;
    let bytes = zstd::encode_all(&raw[..], 3).unwrap();
    std::fs::write(key("index.zst"), &bytes).unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(key("manifest.json")).unwrap()).unwrap();
    m["index"]["size"] = bytes.len().into();
    m["index"]["sha256"] = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)).into();
    std::fs::write(key("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    let o = verify_cli(&store, "t/x");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("chunk 0") && err.contains("BLAKE3"), "{err}");
}

#[test]
fn a_damaged_parent_frame_is_compressed_again_with_a_warning() {
    // A parent whose data object was damaged after it was made (its manifest and index still
    // name the old bytes): the frames that no longer give back their chunk are not reused.
    let (_dir, src, store) = full_bundle("d/full");
    let image = store.join("bkt").join("d/full.image.zst");
    let mut bytes = std::fs::read(&image).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&image, &bytes).unwrap();
    let (code, v, err) = bundle_cli(&src, &store, "d/inc", &["--parent", "d/full"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("the parent bundle d/full is damaged"), "{err}");
    assert!(v["Bundle"]["Parent"]["ReusedChunks"].as_u64().unwrap() > 0, "{v}");
    let (code, fresh, err) = bundle_cli(&src, &store, "d/fresh", &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        v["Bundle"]["BundleSha256"], fresh["Bundle"]["BundleSha256"],
        "the damage did not pass on"
    );
    verify_in(&store, "d/inc");
    restores_like(&store, "d/inc", &src);
}

#[test]
fn a_parent_whose_disk_stream_was_damaged_fails_the_bundle_and_names_it() {
    // The parent's disk stream is copied part for part, each part's SHA-256 checked against
    // the parent's manifest: a damaged one fails the run (exit 4) instead of passing on.
    let (_dir, src, store) = full_bundle("dd/mon");
    let disk_object = store.join("bkt/dd/mon.disk.image.zst");
    let mut bytes = std::fs::read(&disk_object).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&disk_object, bytes).unwrap();
    let (code, _, err) = bundle_cli(&src, &store, "dd/tue", &["--parent", "dd/mon"]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("dd/mon.disk.image.zst") && err.contains("winbundle verify"),
        "{err}"
    );
    assert!(!store.join("bkt/dd/tue.manifest.json").exists());
    for left in ["disk.image.zst", "image.zst", "index.zst"] {
        assert!(!store.join(format!("bkt/dd/tue.{left}")).exists(), "{left} left behind");
    }
}

/// A parent whose manifest holds ESC and a newline in a string that the `-v` log and the note on
/// an incremental bundle print (its bundle id): both show it escaped, never raw (the note printed
/// it raw), so a hostile bundle cannot set the terminal's title or fake a line (issue 25.13).
#[test]
fn manifest_strings_in_notes_and_verbose_logs_are_escaped() {
    let (_dir, src, store) = full_bundle("win/full");
    let path = store.join("bkt").join("win/full.manifest.json");
    let text = String::from_utf8(object(&store, "win/full.manifest.json")).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    m["bundle_id"] = "bun-\u{1b}]0;pwned\u{7}\nINFO fake line".into();
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let (code, _, err) = bundle_cli(&src, &store, "win/inc", &["--parent", "win/full", "-v"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("parent win/full"), "the parent's log line: {err}");
    assert!(
        !err.contains('\u{1b}') && !err.contains('\u{7}'),
        "a raw control character reached stderr: {err}"
    );
    assert!(err.contains("bun-\\033]0;pwned\\007\\nINFO fake line"), "{err}");
    assert!(!err.lines().any(|l| l.starts_with("INFO fake line")), "{err}");
}
