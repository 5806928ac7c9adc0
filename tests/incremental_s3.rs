//! Incremental bundles on S3 (an in-process s3s-fs server): runs of unchanged frames become
//! parts the server copies from the parent (UploadPartCopy), the rest is sent; the new object
//! equals a full bundle's byte for byte, verifies and restores without its parent; an unchanged
//! source sends nothing but copies; a server that refuses copies gets the bytes instead; an
//! upload policy cannot make incremental bundles.

mod common;
#[path = "common/s3server.rs"]
mod s3server;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use s3server::TestS3;
use winbundle::bundle::create::{BundleOutcome, BundleRequest, ParentChoice, bundle_instance};
use winbundle::progress::NoProgress;
use winbundle::read::OpenedBundle;
use winbundle::store::ObjectStore;

fn run(req: &BundleRequest, store: &dyn ObjectStore) -> BundleOutcome {
    bundle_instance(req, store, &NoProgress, &AtomicBool::new(false), &mut |_| Ok(()))
}

/// gpt-disk.img with nearly every free cluster of C: filled with random bytes (about 64 MiB
/// of data that does not compress), leaving a few free for later changes.
fn disk(dir: &Path) -> std::path::PathBuf {
    let img = fixture("gpt-disk.img", dir);
    fill_free_clusters(&img, 0x2545f4914f6cdd1d, &|cl| cl % 4096 != 77);
    img
}

fn with_parent(src: &Path, prefix: &str, parent: &str) -> BundleRequest {
    let mut req = full(src, prefix);
    req.parent = Some(ParentChoice::Prefix(parent.into()));
    req
}

/// A full bundle of C: only: the tests here count the requests of the volume's stream (the
/// disk stream's are counted in `the_disk_stream_is_copied_when_unchanged_and_written_when_not`).
fn full(src: &Path, prefix: &str) -> BundleRequest {
    let mut req = request(src, prefix);
    req.instance_id = Some("i-0123456789abcdef0".into());
    req.plan.volume_only = true;
    req
}

fn restores_from_s3(store: &dyn ObjectStore, prefix: &str, src: &Path, dir: &Path) {
    let b = OpenedBundle::open(store, prefix, &Default::default()).unwrap();
    b.verify(2, &NoProgress, &AtomicBool::new(false)).unwrap();
    let out = dir.join(format!("{}.restored", prefix.replace('/', "_")));
    restore_from(store, prefix, &out).unwrap();
    assert_restored_matches(src, &request(src, "x").plan, &out);
}

#[test]
fn changed_chunks_are_sent_and_the_rest_copied_on_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let src = disk(dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let store = s3.store("bkt");
    let (parent, _) = run(&full(&src, "win/mon"), &store).result.unwrap();
    // New data in clusters 16 MiB apart: a few chunks change, nothing moves.
    let changed = fill_free_clusters(&src, 7, &|cl| cl % 4096 == 77);
    assert!(changed.len() >= 3, "{changed:?}");
    s3.faults.reset_counts();
    let (m, stats) = run(&with_parent(&src, "win/tue", "win/mon"), &store).result.unwrap();

    let p = m.parent.as_ref().unwrap();
    assert_eq!(p.prefix, "win/mon");
    assert!(p.copied_parts >= 2, "{p:?}");
    assert_eq!(s3.faults.count("UploadPartCopy") as u32, p.copied_parts);
    // s3s-fs returns no checksum for a copied part: each was read back to hash it.
    assert_eq!(stats.parent_io.copies.read_back_bytes, p.copied_bytes);
    assert_eq!(m.format_version, 2, "parts of several sizes");
    let o = &m.data.objects[0];
    let sizes = o.part_sizes.as_ref().unwrap();
    assert_eq!(sizes.iter().sum::<u64>(), o.size);
    assert!(sizes[..sizes.len() - 1].iter().all(|&s| s >= 5 << 20), "{sizes:?}");
    // What was sent: the changed frames (the clusters' chunks and $Bitmap's), each in a part
    // padded to 5 MiB with the frames around it, and the seek table.
    let index = |prefix: &str| {
        OpenedBundle::open(&store, prefix, &Default::default())
            .unwrap()
            .index
            .unwrap()
            .entries
    };
    let (before, after) = (index("win/mon"), index("win/tue"));
    let differ = before.iter().zip(&after).filter(|(a, b)| a.hash != b.hash).count() as u64;
    assert!(differ > changed.len() as u64 / 2, "{differ} chunks changed");
    let sent = s3.faults.bytes_in("UploadPart");
    assert_eq!(sent, o.size - p.copied_bytes);
    assert!(
        sent <= differ * (5 << 20) + m.data.seek_table_size,
        "{sent} bytes sent for {differ} changed chunks: {sizes:?}"
    );
    assert!(p.copied_bytes > o.size / 2, "{p:?} of {}", o.size);

    // Byte for byte the object a full bundle of the same source makes.
    let (fresh, _) = run(&full(&src, "full/tue"), &store).result.unwrap();
    let image = |key: &str| store.get(key).unwrap();
    assert!(image("win/tue.image.zst") == image("full/tue.image.zst"));
    assert_eq!(fresh.data.stream_size, m.data.stream_size);
    assert!(image("win/tue.image.zst") != image("win/mon.image.zst"));

    // The parent goes; the incremental bundle verifies and restores on its own.
    for o in &parent.data.objects {
        store.delete(&o.key).unwrap();
    }
    store.delete("win/mon.index.zst").unwrap();
    store.delete("win/mon.manifest.json").unwrap();
    restores_from_s3(&store, "win/tue", &src, dir.path());
}

#[test]
fn an_unchanged_source_sends_no_data_only_copies() {
    let dir = tempfile::tempdir().unwrap();
    let src = disk(dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let store = s3.store("bkt");
    let (parent, _) = run(&full(&src, "n/1"), &store).result.unwrap();
    s3.faults.reset_counts();
    // --incremental finds the parent by listing the bucket.
    let mut req = full(&src, "n/2");
    req.parent = Some(ParentChoice::Newest);
    let (m, _) = run(&req, &store).result.unwrap();
    assert_eq!(m.parent.as_ref().unwrap().prefix, "n/1");
    assert_eq!(s3.faults.count("UploadPart"), 0, "{:?}", s3.faults.log.lock().unwrap());
    assert_eq!(s3.faults.bytes_in("UploadPart"), 0);
    assert!(s3.faults.count("UploadPartCopy") >= 1);
    // What was written besides the copies: the index and the manifest, nothing else.
    assert_eq!(s3.faults.count("PutObject"), 2);
    assert!(store.get("n/2.image.zst").unwrap() == store.get("n/1.image.zst").unwrap());
    assert_eq!(m.data.stream_size, parent.data.stream_size);
    restores_from_s3(&store, "n/2", &src, dir.path());
}

/// Bundles a parent, changes the source with `change`, then bundles it with `--parent` to a
/// server that refuses UploadPartCopy: one copy is tried, then none; every byte is sent in
/// full-size parts, and the object equals a full bundle's and restores.
fn refused_copies_are_sent(p: &str, change: &dyn Fn(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    let src = disk(dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let store = s3.store("bkt");
    run(&full(&src, &format!("{p}/1")), &store).result.unwrap();
    change(&src);
    s3.faults.refuse_copy.store(true, Ordering::SeqCst);
    s3.faults.reset_counts();
    let out = run(&with_parent(&src, &format!("{p}/2"), &format!("{p}/1")), &store);
    let (m, stats) = out.result.unwrap();
    assert!(
        out.warnings
            .iter()
            .any(|w| w.contains("refused UploadPartCopy (NotImplemented")),
        "{:?}",
        out.warnings
    );
    assert_eq!(s3.faults.count("UploadPartCopy"), 1);
    assert_eq!(stats.parent_io.copies.copied_parts, 0);
    assert!(stats.parent_io.fetched_bytes > 0);
    assert_eq!(m.parent.as_ref().unwrap().copied_parts, 0);
    assert_eq!(s3.faults.bytes_in("UploadPart"), m.data.stream_size);
    run(&full(&src, &format!("{p}/fresh")), &store).result.unwrap();
    assert!(store.get(&format!("{p}/2.image.zst")).unwrap() == store.get(&format!("{p}/fresh.image.zst")).unwrap());
    restores_from_s3(&store, &format!("{p}/2"), &src, dir.path());
}

#[test]
fn a_server_that_refuses_copies_gets_the_bytes_sent_instead() {
    refused_copies_are_sent("r", &|src| {
        fill_free_clusters(src, 9, &|cl| cl % 4096 == 77);
    });
}

#[test]
fn a_refused_copy_queued_behind_a_background_fetch_is_sent_too() {
    // C:'s first chunk changed too (a byte of its boot code): the stream starts with a new
    // frame, so the head of the run after it is fetched in the background to fill that
    // frame's part, and the first copy waits in the queue behind that fetch. The server
    // refuses it there: it and every later run are sent, and the parts stay full-size.
    refused_copies_are_sent("q", &|src| {
        fill_free_clusters(src, 13, &|cl| cl % 4096 == 77);
        let f = std::fs::OpenOptions::new().write(true).open(src).unwrap();
        f.write_all_at(&[0x90], (10 << 20) + 0x100).unwrap();
    });
}

#[test]
fn the_disk_stream_is_copied_when_unchanged_and_written_when_not() {
    // Incremental bundles keep the disk around C: too: the parent's disk stream is copied on
    // the server while the partition table and system partitions are unchanged, and written
    // again in full once they change; `restore --disk` of either gives the source's disk.
    let dir = tempfile::tempdir().unwrap();
    let src = disk(dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let store = s3.store("bkt");
    let mut first = full(&src, "d/1");
    first.plan.volume_only = false;
    let (pm, _) = run(&first, &store).result.unwrap();
    let pd = pm.disk.as_ref().expect("a full bundle of a GPT disk keeps its disk");
    assert!(pd.plain_blake3.is_some());

    // C: changed, the rest of the disk not: the disk object is copied, part for part.
    fill_free_clusters(&src, 21, &|cl| cl % 4096 == 77);
    let mut second = with_parent(&src, "d/2", "d/1");
    second.plan.volume_only = false;
    s3.faults.reset_counts();
    let (m, stats) = run(&second, &store).result.unwrap();
    assert_eq!(stats.parent_io.disk_stream.as_deref(), Some("copied"));
    let d = m.disk.as_ref().unwrap();
    assert_eq!(d.data.objects[0].key, "d/2.disk.image.zst");
    assert_eq!(d.data.objects[0].parts_sha256, pd.data.objects[0].parts_sha256);
    assert_eq!(
        (d.bundle_sha256.as_str(), &d.regions),
        (pd.bundle_sha256.as_str(), &pd.regions)
    );
    // Nothing of the disk stream was uploaded: only the volume's bytes that were not copied.
    assert_eq!(
        s3.faults.bytes_in("UploadPart"),
        m.data.stream_size - stats.parent_io.copies.copied_bytes
    );
    assert!(store.get("d/2.disk.image.zst").unwrap() == store.get("d/1.disk.image.zst").unwrap());
    same_disk_as_full(&store, "d/2", &src, dir.path());

    // The EFI system partition (the first partition, at 1 MiB) changed: written in full.
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    f.write_all_at(b"changed boot configuration", (1 << 20) + (512 << 10))
        .unwrap();
    drop(f);
    let mut third = with_parent(&src, "d/3", "d/2");
    third.plan.volume_only = false;
    let (m3, stats3) = run(&third, &store).result.unwrap();
    assert_eq!(stats3.parent_io.disk_stream.as_deref(), Some("written"));
    assert_ne!(m3.disk.as_ref().unwrap().plain_blake3, d.plain_blake3);

    same_disk_as_full(&store, "d/3", &src, dir.path());
}

/// Restores the disk of `prefix` from S3 (after `verify`) and checks it equals the disk a full
/// bundle of `src` (as it is now) gives.
fn same_disk_as_full(store: &dyn ObjectStore, prefix: &str, src: &Path, dir: &Path) {
    let disk_of = |prefix: &str| {
        let b = OpenedBundle::open(store, prefix, &Default::default()).unwrap();
        b.verify(2, &NoProgress, &AtomicBool::new(false)).unwrap();
        let out = dir.join(format!("{}.disk", prefix.replace('/', "_")));
        let raw = winbundle::read::disk::DiskFormat::Raw;
        winbundle::read::disk::restore(&b, &out, raw, false, true, 2, &NoProgress, &AtomicBool::new(false)).unwrap();
        std::fs::read(&out).unwrap()
    };
    let fresh = format!("{prefix}-full");
    let mut req = full(src, &fresh);
    req.plan.volume_only = false;
    run(&req, store).result.unwrap();
    assert!(
        disk_of(prefix) == disk_of(&fresh),
        "{prefix}: the restored disk differs from a full bundle's"
    );
}

#[test]
fn parts_layout_and_upload_policies_cannot_copy_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let src = disk(dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let store = s3.store("bkt");
    run(&full(&src, "l/1"), &store).result.unwrap();
    let mut req = with_parent(&src, "l/2", "l/1");
    req.layout = winbundle::format::manifest::Layout::Parts;
    let err = run(&req, &store).result.unwrap_err().to_string();
    assert!(err.contains("use --layout single"), "{err}");
    assert!(!store.exists("l/2.manifest.json").unwrap());
}

#[test]
fn a_parent_of_one_object_per_part_is_copied_from_its_part_objects() {
    // A parent in the `parts` layout (as upload policies write): runs are copied from ranges of
    // its part objects, and frames that straddle two of them are read and sent.
    let dir = tempfile::tempdir().unwrap();
    let src = disk(dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let store = s3.store("bkt");
    let mut parent = full(&src, "pp/1");
    parent.layout = winbundle::format::manifest::Layout::Parts;
    parent.part_size = Some(8 << 20);
    let (pm, _) = run(&parent, &store).result.unwrap();
    assert!(pm.data.objects.len() >= 4, "{} objects", pm.data.objects.len());
    fill_free_clusters(&src, 11, &|cl| cl % 4096 == 77);
    s3.faults.reset_counts();
    let (m, stats) = run(&with_parent(&src, "pp/2", "pp/1"), &store).result.unwrap();
    let p = m.parent.as_ref().unwrap();
    assert!(p.copied_parts >= 2, "{p:?}");
    assert!(stats.parent_io.fetched_bytes > 0);
    run(&full(&src, "pp/fresh"), &store).result.unwrap();
    assert!(store.get("pp/2.image.zst").unwrap() == store.get("pp/fresh.image.zst").unwrap());
    restores_from_s3(&store, "pp/2", &src, dir.path());
}

/// The stream of a bundle: its data objects, concatenated in manifest order.
fn stream_of(store: &dyn ObjectStore, m: &winbundle::format::manifest::Manifest) -> Vec<u8> {
    m.data.objects.iter().flat_map(|o| store.get(&o.key).unwrap()).collect()
}

/// Compressed bytes of the frames of `after` whose plaintext `before` did not have there.
fn changed_frames(store: &dyn ObjectStore, before: &str, after: &str) -> u64 {
    let index = |prefix: &str| {
        OpenedBundle::open(store, prefix, &Default::default())
            .unwrap()
            .index
            .unwrap()
            .entries
    };
    let (b, a) = (index(before), index(after));
    b.iter()
        .zip(&a)
        .filter(|(x, y)| x.hash != y.hash)
        .map(|(_, y)| u64::from(y.length))
        .sum()
}

#[test]
fn the_runs_layout_sends_only_the_changed_frames_and_pads_no_part() {
    use winbundle::format::manifest::Layout;
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("gpt-disk.img", dir.path());
    // Free clusters left for two rounds of changes: every 16 MiB, then every 4 MiB.
    let (first, second) = (|cl: u64| cl % 4096 == 77, |cl: u64| cl % 1024 == 589);
    fill_free_clusters(&src, 0x2545f4914f6cdd1d, &|cl| !first(cl) && !second(cl));
    let s3 = TestS3::start(&["bkt"]);
    let store = s3.store("bkt");
    let runs = |prefix: &str, parent: Option<&str>| {
        let mut req = match parent {
            Some(p) => with_parent(&src, prefix, p),
            None => full(&src, prefix),
        };
        req.layout = Layout::Runs;
        req
    };
    // A full bundle in this layout is one object.
    let (pm, _) = run(&runs("u/1", None), &store).result.unwrap();
    let keys: Vec<_> = pm.data.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["u/1.image.000000.zst"]);

    // Round 2: a few chunks change, 16 MiB apart; the runs between them are copied.
    fill_free_clusters(&src, 7, &|cl| first(cl));
    s3.faults.reset_counts();
    let (m, stats) = run(&runs("u/2", Some("u/1")), &store).result.unwrap();
    assert_eq!(m.data.layout, Layout::Runs);
    let check_objects = |m: &winbundle::format::manifest::Manifest| {
        for (n, o) in m.data.objects.iter().enumerate() {
            assert_eq!(
                o.key,
                format!(
                    "{}.image.{n:06}.zst",
                    m.data.objects[0].key.split(".image.").next().unwrap()
                )
            );
            let sizes = o.part_lengths(m.data.part_size);
            assert!(
                sizes[..sizes.len() - 1].iter().all(|&s| s >= 5 << 20),
                "{}: {sizes:?}",
                o.key
            );
        }
    };
    check_objects(&m);
    assert!(m.data.objects.len() >= 3, "{} objects", m.data.objects.len());
    let p = m.parent.as_ref().unwrap();
    assert!(p.copied_parts >= 3, "{p:?}");
    // Sent: exactly the changed frames and the seek table; no padding, nothing fetched.
    let sent = s3.faults.bytes_in("UploadPart");
    assert_eq!(sent, m.data.stream_size - p.copied_bytes);
    assert_eq!(stats.parent_io.fetched_bytes, 0);
    assert_eq!(sent, changed_frames(&store, "u/1", "u/2") + m.data.seek_table_size);
    // The stream is the one a full bundle writes, cut into objects.
    let (fresh, _) = run(&full(&src, "u/full2"), &store).result.unwrap();
    assert!(stream_of(&store, &m) == store.get(&fresh.data.objects[0].key).unwrap());
    // Its parent gone, it verifies and restores on its own.
    delete_bundle(&store, "u/1");
    restores_from_s3(&store, "u/2", &src, dir.path());

    // Round 3, from the objects of round 2: changes every 4 MiB leave runs shorter than a
    // part, each copied as the last (and only) part of an object of its own.
    fill_free_clusters(&src, 8, &|cl| second(cl));
    s3.faults.reset_counts();
    let (m3, stats3) = run(&runs("u/3", Some("u/2")), &store).result.unwrap();
    check_objects(&m3);
    let lone = m3
        .data
        .objects
        .iter()
        .filter(|o| o.size < 5 << 20 && o.parts_sha256.len() == 1)
        .count();
    assert!(lone >= 2, "{lone} objects of one short part");
    let p3 = m3.parent.as_ref().unwrap();
    assert_eq!(s3.faults.count("UploadPartCopy") as u32, p3.copied_parts);
    let sent3 = s3.faults.bytes_in("UploadPart");
    assert_eq!(sent3, m3.data.stream_size - p3.copied_bytes);
    // Runs under RUN_COPY_MIN are sent rather than copied: they are all that is sent besides
    // the changed frames and the seek table.
    assert_eq!(
        sent3,
        changed_frames(&store, "u/2", "u/3") + m3.data.seek_table_size + stats3.parent_io.fetched_bytes
    );
    let (fresh3, _) = run(&full(&src, "u/full3"), &store).result.unwrap();
    assert!(stream_of(&store, &m3) == store.get(&fresh3.data.objects[0].key).unwrap());

    // Its parent gone, round 2 (the parent of round 3) still verifies and restores.
    delete_bundle(&store, "u/2");
    restores_from_s3(&store, "u/3", &src, dir.path());
}

/// `--layout runs` creates the uploads of its later objects in the background: one the server
/// refuses to create fails the bundle with the server's answer, and nothing of it is left, no
/// object and no unfinished upload.
#[test]
fn a_runs_object_whose_upload_cannot_be_created_fails_and_leaves_nothing() {
    use winbundle::format::manifest::Layout;
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("gpt-disk.img", dir.path());
    let changed = |cl: u64| cl % 4096 == 77;
    fill_free_clusters(&src, 0x2545f4914f6cdd1d, &|cl| !changed(cl));
    let s3 = TestS3::start(&["bkt"]);
    let store = s3.store("bkt");
    run(&full(&src, "c/1"), &store).result.unwrap();
    fill_free_clusters(&src, 7, &changed);
    let mut req = with_parent(&src, "c/2", "c/1");
    req.layout = Layout::Runs;
    // The first object's upload is created; every later one is refused.
    *s3.faults.creates_left.lock().unwrap() = Some(1);
    let err = run(&req, &store).result.unwrap_err().to_string();
    assert!(
        err.contains("CreateMultipartUpload") && err.contains("AccessDenied"),
        "{err}"
    );
    assert!(err.contains("c/2.image.000001.zst"), "names the object: {err}");
    assert!(s3.faults.count("CreateMultipartUpload") >= 2);
    *s3.faults.creates_left.lock().unwrap() = None;
    assert_eq!(store.list("c/2").unwrap(), Vec::<String>::new());
    let open: Vec<_> = s3
        .faults
        .uploads
        .lock()
        .unwrap()
        .values()
        .map(|u| u.key.clone())
        .collect();
    assert!(open.is_empty(), "unfinished uploads left: {open:?}");
}

fn delete_bundle(store: &dyn ObjectStore, prefix: &str) {
    let gone = OpenedBundle::open(store, prefix, &Default::default()).unwrap().manifest;
    for o in &gone.data.objects {
        store.delete(&o.key).unwrap();
    }
    store.delete(&format!("{prefix}.index.zst")).unwrap();
    store.delete(&format!("{prefix}.manifest.json")).unwrap();
}
