//! Damaged, tampered and incomplete bundles: verify and restore fail with an error that names
//! the object (and chunk), and restore leaves no file behind.

mod common;

use common::FileAt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use common::*;
use winbundle::Error;
use winbundle::format::FormatError;
use winbundle::store::StoreError;

fn bundled(name: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture(name, dir.path());
    let store = dir.path().join("store");
    bundle(&request(&src, "b"), &store).result.unwrap();
    (dir, src, store)
}

fn object(store: &Path) -> PathBuf {
    store.join("test-bucket/b.image.zst")
}

fn flip(path: &Path, offset: u64) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], offset).unwrap();
}

fn assert_restore_fails_cleanly(dir: &Path, store: &Path) -> Error {
    let out = dir.join("out.img");
    let e = restore(store, "b", &out).unwrap_err();
    assert!(!out.exists(), "a failed restore left {}", out.display());
    assert!(
        !dir.join("out.img.partial").exists(),
        "a failed restore left the partial file"
    );
    e
}

#[test]
fn a_flipped_byte_fails_verify_and_restore_naming_object_and_chunk() {
    let (dir, _src, store) = bundled("gpt-disk.img");
    let size = std::fs::metadata(object(&store)).unwrap().len();
    flip(&object(&store), size / 2);
    let e = verify(&store, "b").unwrap_err();
    assert!(matches!(e, Error::Format(FormatError::Integrity { .. })), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("b.image.zst") && msg.contains("chunk"), "{msg}");
    assert_eq!(e.exit_code(), 4);
    let e = assert_restore_fails_cleanly(dir.path(), &store);
    assert!(e.to_string().contains("b.image.zst"), "{e}");
}

#[test]
fn a_consistent_forgery_with_valid_frames_is_caught() {
    // Rebuild the stream with one chunk's content changed: every frame and the seek table are
    // valid, so only the manifest's sizes and part digests can tell.
    use winbundle::chunk::frame::{SeekEntry, encode_seek_table, frame_checksum, parse_seek_table};
    let (dir, _src, store) = bundled("bare-volume.img");
    let obj = object(&store);
    let data = std::fs::read(&obj).unwrap();
    let footer_count = u32::from_le_bytes(data[data.len() - 9..data.len() - 5].try_into().unwrap()) as usize;
    let table_len = 8 + footer_count * 12 + 9;
    let seek = parse_seek_table(&data[data.len() - table_len..]).unwrap();
    let mut out = Vec::new();
    let mut entries = Vec::new();
    let mut off = 0usize;
    for (i, e) in seek.iter().enumerate() {
        let frame = &data[off..off + e.compressed as usize];
        off += e.compressed as usize;
        let new = if i == 0 {
            let mut raw = zstd::bulk::decompress(frame, e.raw as usize).unwrap();
            raw[100] ^= 1;
            let mut c = zstd::bulk::Compressor::new(1).unwrap();
            c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
                .unwrap();
            c.compress(&raw).unwrap()
        } else {
            frame.to_vec()
        };
        entries.push(SeekEntry {
            compressed: new.len() as u32,
            raw: e.raw,
            checksum: frame_checksum(&new),
        });
        out.extend_from_slice(&new);
    }
    out.extend_from_slice(&encode_seek_table(&entries));
    std::fs::write(&obj, &out).unwrap();
    let e = verify(&store, "b").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("SHA-256 mismatch in object b.image.zst") || msg.contains("object b.image.zst is"),
        "{msg}"
    );
    assert_restore_fails_cleanly(dir.path(), &store);
}

#[test]
fn a_truncated_object_is_reported_with_its_size() {
    let (dir, _src, store) = bundled("gpt-disk.img");
    let f = std::fs::OpenOptions::new().write(true).open(object(&store)).unwrap();
    let size = f.metadata().unwrap().len();
    f.set_len(size - 100).unwrap();
    let e = verify(&store, "b").unwrap_err();
    assert!(
        e.to_string().contains(&format!(
            "object b.image.zst is {} bytes, the manifest says {size}",
            size - 100
        )),
        "{e}"
    );
    assert_restore_fails_cleanly(dir.path(), &store);
}

#[test]
fn a_missing_object_or_manifest() {
    let (dir, _src, store) = bundled("bare-volume.img");
    std::fs::remove_file(object(&store)).unwrap();
    let e = verify(&store, "b").unwrap_err();
    assert!(
        matches!(&e, Error::Store(StoreError::NotFound { key, .. }) if key == "b.image.zst"),
        "{e}"
    );
    assert_restore_fails_cleanly(dir.path(), &store);
    let e = verify(&store, "nothing-here").unwrap_err();
    assert!(
        matches!(&e, Error::Store(StoreError::NotFound { key, .. }) if key == "nothing-here.manifest.json"),
        "{e}"
    );
}

#[test]
fn a_damaged_manifest() {
    let (dir, _src, store) = bundled("bare-volume.img");
    let key = store.join("test-bucket/b.manifest.json");
    let text = std::fs::read_to_string(&key).unwrap();
    std::fs::write(&key, &text[..text.len() / 2]).unwrap();
    let e = verify(&store, "b").unwrap_err();
    assert!(matches!(e, Error::Format(FormatError::Manifest { .. })), "{e}");
    assert!(e.to_string().contains("not a valid manifest"), "{e}");
    // A part digest changed in an otherwise valid manifest: verify names the part. Restore
    // checks every frame against the chunk index (which the manifest's index digest covers), so
    // it still writes exactly the bundled volume; with the index digest changed too, it refuses.
    std::fs::write(&key, &text).unwrap();
    let reference = dir.path().join("reference.img");
    restore(&store, "b", &reference).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    m["data"]["objects"][0]["parts_sha256"][0] = serde_json::json!("00".repeat(32));
    std::fs::write(&key, serde_json::to_vec(&m).unwrap()).unwrap();
    let e = verify(&store, "b").unwrap_err();
    assert!(
        e.to_string().contains("SHA-256 mismatch in object b.image.zst, part 0"),
        "{e}"
    );
    let out = dir.path().join("again.img");
    restore(&store, "b", &out).unwrap();
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&reference).unwrap());
    m["index"]["sha256"] = serde_json::json!("11".repeat(32));
    std::fs::write(&key, serde_json::to_vec(&m).unwrap()).unwrap();
    let e = assert_restore_fails_cleanly(dir.path(), &store);
    assert!(e.to_string().contains("is not the one the manifest names"), "{e}");
    // A future format version.
    m["format_version"] = serde_json::json!(99);
    std::fs::write(&key, serde_json::to_vec(&m).unwrap()).unwrap();
    assert!(
        verify(&store, "b")
            .unwrap_err()
            .to_string()
            .contains("format version 99 is not supported")
    );
}

#[test]
fn a_damaged_seek_table() {
    let (_dir, _src, store) = bundled("bare-volume.img");
    let size = std::fs::metadata(object(&store)).unwrap().len();
    flip(&object(&store), size - 2); // inside the footer magic
    let e = verify(&store, "b").unwrap_err();
    assert!(e.to_string().contains("seek table"), "{e}");
}

#[test]
fn an_existing_bundle_is_not_overwritten_unless_asked() {
    let (dir, src, store) = bundled("bare-volume.img");
    let before = std::fs::read(object(&store)).unwrap();
    let outcome = bundle(&request(&src, "b"), &store);
    let e = outcome.result.err().unwrap();
    assert!(matches!(e, Error::Store(StoreError::BundleExists { .. })), "{e}");
    assert_eq!(outcome.task.state.as_str(), "failed");
    assert_eq!(outcome.task.error.as_ref().unwrap().code, "BundleExists");
    assert_eq!(
        std::fs::read(object(&store)).unwrap(),
        before,
        "the old bundle is untouched"
    );
    let mut req = request(&src, "b");
    req.overwrite = true;
    bundle(&req, &store).result.unwrap();
    verify(&store, "b").unwrap();
    let out = dir.path().join("out.img");
    restore(&store, "b", &out).unwrap();
}

#[test]
fn a_cancelled_bundle_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("gpt-disk.img", dir.path());
    let store_dir = dir.path().join("store");
    let store = winbundle::store::LocalStore::open(&store_dir, "test-bucket", true).unwrap();
    let cancel = AtomicBool::new(true);
    let outcome = winbundle::bundle::create::bundle_instance(
        &request(&src, "c"),
        &store,
        &winbundle::progress::NoProgress,
        &cancel,
        &mut |_| Ok(()),
    );
    assert!(matches!(outcome.result, Err(Error::Cancelled)));
    assert_eq!(outcome.task.state.as_str(), "failed");
    let left: Vec<_> = walk(&store_dir.join("test-bucket"));
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn restore_refuses_to_replace_a_file_without_force() {
    let (dir, _src, store) = bundled("bare-volume.img");
    let out = dir.path().join("exists.img");
    std::fs::write(&out, b"keep me").unwrap();
    let s = winbundle::store::LocalStore::open(&store, "test-bucket", false).unwrap();
    let b = winbundle::read::OpenedBundle::open(&s, "b", &Default::default()).unwrap();
    let target = winbundle::read::RestoreTarget::File {
        path: out.clone(),
        force: false,
        assume_zeroed: false,
        direct: false,
    };
    let e = b
        .restore(&target, 2, &winbundle::progress::NoProgress, &AtomicBool::new(false))
        .unwrap_err();
    assert!(e.to_string().contains("pass --force"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// A change to a manifest's JSON.
type Edit = dyn Fn(&mut serde_json::Value);

/// Rewrites the manifest of bundle `b` through `edit`.
fn edit_manifest(store: &Path, edit: &dyn Fn(&mut serde_json::Value)) {
    let key = store.join("test-bucket/b.manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&key).unwrap()).unwrap();
    edit(&mut m);
    std::fs::write(&key, serde_json::to_vec(&m).unwrap()).unwrap();
}

/// A manifest naming keys outside its bundle (`../..`, an absolute path, another bundle's
/// object, another index) is refused as InvalidBundle (exit 4) before any read: the error
/// names neither the size nor the digest of the file it points at.
#[test]
fn a_manifest_naming_keys_outside_its_bundle_is_refused_before_any_read() {
    let (dir, src, store) = bundled("bare-volume.img");
    // Another bundle in the same bucket, whose object a forged manifest could name.
    bundle(&request(&src, "other"), &store).result.unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"not part of any bundle").unwrap();
    let text = std::fs::read(store.join("test-bucket/b.manifest.json")).unwrap();
    let escape = format!("../../../../../../../..{}", secret.display());
    for (what, bad) in [
        ("object", escape.clone()),
        ("object", secret.display().to_string()),
        ("object", "other.image.zst".to_string()),
        ("index", escape.clone()),
        ("index", "other.index.zst".to_string()),
    ] {
        std::fs::write(store.join("test-bucket/b.manifest.json"), &text).unwrap();
        edit_manifest(&store, &|m| match what {
            "object" => m["data"]["objects"][0]["key"] = serde_json::json!(bad),
            _ => m["index"]["key"] = serde_json::json!(bad),
        });
        let e = verify(&store, "b").unwrap_err();
        assert!(matches!(e, Error::Format(FormatError::Manifest { .. })), "{bad}: {e}");
        assert_eq!(e.exit_code(), 4);
        let msg = e.to_string();
        assert!(msg.contains("its own bundle's objects"), "{msg}");
        assert!(!msg.contains("22 bytes") && !msg.contains("SHA-256 "), "{msg}");
        assert_restore_fails_cleanly(dir.path(), &store);
        // Through the CLI (ls reads the same way).
        let out = cli_local_prefix(&store, "b", &["ls"]);
        assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("InvalidBundle"));
    }
}

/// Sizes that wrap u64 when summed, a chunk size the writer never makes, a seek table larger
/// than its chunks need and an oversized manifest are refused by their numbers, unread.
#[test]
fn wrapping_sizes_and_oversized_tables_are_refused_by_their_numbers() {
    let (dir, _src, store) = bundled("bare-volume.img");
    let key = store.join("test-bucket/b.manifest.json");
    let text = std::fs::read(&key).unwrap();
    let cases: [(&str, &Edit); 4] = [
        ("objects add up to more than 2^64", &|m| {
            let o = m["data"]["objects"][0].clone();
            let mut big = o.clone();
            big["size"] = serde_json::json!(u64::MAX - 10);
            m["data"]["objects"] = serde_json::json!([o, big]);
        }),
        ("chunk size 4294963200 is not one winbundle makes", &|m| {
            m["chunk_size"] = serde_json::json!(4294963200u64);
            m["chunk_count"] = serde_json::json!(1);
        }),
        ("seek table is 3221225472 bytes", &|m| {
            m["data"]["seek_table_size"] = serde_json::json!(3u64 << 30);
        }),
        ("more than the 67108864 winbundle makes", &|m| {
            m["volume_size"] = serde_json::json!(1u64 << 50);
            m["chunk_count"] = serde_json::json!((1u64 << 50) / m["chunk_size"].as_u64().unwrap());
        }),
    ];
    for (says, edit) in cases {
        std::fs::write(&key, &text).unwrap();
        edit_manifest(&store, edit);
        let e = assert_restore_fails_cleanly(dir.path(), &store);
        assert!(matches!(e, Error::Format(FormatError::Manifest { .. })), "{says}: {e}");
        assert!(e.to_string().contains(says), "{says}: {e}");
    }
    // A manifest of 17 MiB is refused by its size.
    let mut big = text.clone();
    big.resize(17 << 20, b' ');
    std::fs::write(&key, &big).unwrap();
    let e = verify(&store, "b").unwrap_err();
    assert!(
        e.to_string().contains("larger than any manifest winbundle writes"),
        "{e}"
    );
    assert_eq!(e.exit_code(), 4);
}
