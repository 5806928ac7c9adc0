//! Bundle → restore → compare, on every committed fixture.

mod common;

use common::*;
use winbundle::bundle::plan::PlanOptions;
use winbundle::format::Layout;

fn roundtrip(name: &str, expect_root: u32) -> (tempfile::TempDir, winbundle::format::Manifest) {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture(name, dir.path());
    let store = dir.path().join("store");
    let req = request(&src, "win/bundle");
    let outcome = bundle(&req, &store);
    let (manifest, _) = outcome.result.unwrap();
    assert_eq!(outcome.task.state.as_str(), "complete");
    assert_eq!(outcome.task.progress, "100%");
    assert_eq!(manifest.source.root.index, expect_root);
    verify(&store, "win/bundle").unwrap();
    let out = dir.path().join("restored.img");
    restore(&store, "win/bundle", &out).unwrap();
    let (same, zero) = assert_restored_matches(&src, &req.plan, &out);
    assert!(same > 0 && zero > 0, "{same} allocated, {zero} free clusters");
    (dir, manifest)
}

#[test]
fn gpt_disk_restores_byte_exact_and_leaves_out_other_volumes() {
    let (dir, m) = roundtrip("gpt-disk.img", 3);
    assert_eq!(m.source.partition_table, winbundle::source::TableKind::Gpt);
    let excluded: Vec<u32> = m.excluded_partitions.iter().map(|p| p.index).collect();
    assert_eq!(excluded, vec![1, 2, 4]);
    assert!(
        m.excluded_partitions
            .iter()
            .all(|p| p.reason.contains("not the root volume"))
    );
    assert_eq!(m.source.ntfs.label.as_deref(), Some("Windows"));
    // The default exclusions were found and saved their clusters.
    let found: Vec<&str> = m
        .excluded_files
        .iter()
        .filter(|x| x.found)
        .map(|x| x.path.as_str())
        .collect();
    assert_eq!(found, vec!["\\pagefile.sys", "\\swapfile.sys", "\\hiberfil.sys"]);
    assert_eq!(m.stats.excluded_bytes, (1024 + 128 + 512) * 1024);
    // The restored page file reads back as zeros through an independent NTFS reader, and a
    // normal file reads back as in the source.
    let restored = std::fs::read(dir.path().join("restored.img")).unwrap();
    let page = read_root_file(&restored, "pagefile.sys");
    assert_eq!(page.len(), 1 << 20);
    assert!(page.iter().all(|&b| b == 0));
    let src = std::fs::read(dir.path().join("gpt-disk.img")).unwrap();
    let vol = &src[m.source.root.offset as usize..(m.source.root.offset + m.source.root.length) as usize];
    assert_ne!(read_root_file(vol, "pagefile.sys"), page);
    assert_eq!(
        read_root_file(vol, "sparse.bin"),
        read_root_file(&restored, "sparse.bin")
    );
}

#[test]
fn mbr_disk_with_logical_partitions() {
    let (_dir, m) = roundtrip("mbr-disk.img", 2);
    let excluded: Vec<u32> = m.excluded_partitions.iter().map(|p| p.index).collect();
    assert_eq!(excluded, vec![1, 5, 6]);
    assert_eq!(m.excluded_partitions[0].label.as_deref(), Some("System Reserved"));
}

#[test]
fn gpt_disk_with_4096_byte_sectors() {
    let (_dir, m) = roundtrip("gpt4k-disk.img", 1);
    assert_eq!(m.source.sector_size, 4096);
    assert_eq!(m.source.ntfs.sector_size, 4096);
}

#[test]
fn bare_volume_image() {
    let (_dir, m) = roundtrip("bare-volume.img", 0);
    assert_eq!(m.source.partition_table, winbundle::source::TableKind::None);
    assert_eq!(m.source.ntfs.cluster_size, 1024);
}

#[test]
fn volume_whose_mft_has_an_attribute_list() {
    let (_dir, m) = roundtrip("attrlist-volume.img", 0);
    assert!(
        m.source.ntfs.mft_attribute_list,
        "the fixture must have a fragmented MFT"
    );
    // \Windows\System32 and \pagefile.sys were created last, in records past the MFT's first extent.
    assert!(m.source.root.reason.contains("Windows"), "{}", m.source.root.reason);
    let page = m.excluded_files.iter().find(|x| x.path == "\\pagefile.sys").unwrap();
    assert!(page.found && page.allocated_bytes == 1 << 20, "{page:?}");
}

#[test]
fn parts_layout_and_zstd_cli_give_the_same_volume() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("gpt-disk.img", dir.path());
    let store = dir.path().join("store");
    let mut req = request(&src, "parts");
    req.layout = Layout::Parts;
    req.part_size = Some(1 << 20);
    let (m, _) = bundle(&req, &store).result.unwrap();
    assert!(m.data.objects.len() > 2, "{} objects", m.data.objects.len());
    for (i, o) in m.data.objects.iter().enumerate() {
        assert_eq!(o.key, format!("parts.part.{i}"));
        assert!(store.join("test-bucket").join(&o.key).is_file());
    }
    let out = dir.path().join("restored.img");
    restore(&store, "parts", &out).unwrap();
    assert_restored_matches(&src, &req.plan, &out);
    if have("zstd") {
        let mut stream = Vec::new();
        for o in &m.data.objects {
            stream.extend(std::fs::read(store.join("test-bucket").join(&o.key)).unwrap());
        }
        let decoded = pipe_through("zstd", &["-d", "-c"], &stream);
        assert_eq!(
            decoded,
            std::fs::read(&out).unwrap(),
            "zstd -d of the parts equals the restore"
        );
    }
}

#[test]
fn single_layout_decodes_with_the_zstd_cli() {
    if !have("zstd") {
        eprintln!("zstd CLI not installed: skipping the cross-check with the reference decoder");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("mbr-disk.img", dir.path());
    let store = dir.path().join("store");
    let req = request(&src, "one");
    bundle(&req, &store).result.unwrap();
    let out = dir.path().join("restored.img");
    restore(&store, "one", &out).unwrap();
    let stream = std::fs::read(store.join("test-bucket/one.image.zst")).unwrap();
    assert_eq!(
        pipe_through("zstd", &["-d", "-c"], &stream),
        std::fs::read(&out).unwrap()
    );
}

#[test]
fn ntfs3g_lists_the_same_tree_on_the_restored_volume() {
    if !have("ntfsls") {
        eprintln!("ntfs-3g tools not installed: skipping the ntfsls comparison");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("gpt-disk.img", dir.path());
    let store = dir.path().join("store");
    let (m, _) = bundle(&request(&src, "t"), &store).result.unwrap();
    let out = dir.path().join("restored.img");
    restore(&store, "t", &out).unwrap();
    let data = std::fs::read(&src).unwrap();
    let vol = dir.path().join("c.img");
    std::fs::write(
        &vol,
        &data[m.source.root.offset as usize..(m.source.root.offset + m.source.root.length) as usize],
    )
    .unwrap();
    let ls = |p: &std::path::Path| {
        let o = std::process::Command::new("ntfsls")
            .args(["-R", "-a", "-l"])
            .arg(p)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let (a, b) = (ls(&vol), ls(&out));
    assert!(a.contains("kernel32.dll") && a.contains("pagefile.sys"));
    assert_eq!(a, b);
}

#[test]
fn exclusions_can_be_turned_off_and_added() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("gpt-disk.img", dir.path());
    let store = dir.path().join("store");
    let mut req = request(&src, "noexcl");
    req.plan = PlanOptions {
        partition: None,
        excludes: vec!["/Windows/System32/kernel32.dll".into(), "\\frag".into()],
        default_excludes: false,
        volume_only: false,
        keep_shadow_copies: false,
        require_ec2_ready: false,
        exclude_windows_lists: false,
    };
    let (m, _) = bundle(&req, &store).result.unwrap();
    assert_eq!(m.excluded_files.len(), 2);
    assert_eq!(m.excluded_files[1].path, "\\frag");
    assert_eq!(
        m.excluded_files[1].files, 25,
        "a directory exclusion covers every file under it"
    );
    let out = dir.path().join("restored.img");
    restore(&store, "noexcl", &out).unwrap();
    assert_restored_matches(&src, &req.plan, &out);
    let restored = std::fs::read(&out).unwrap();
    let data = std::fs::read(&src).unwrap();
    let vol = &data[m.source.root.offset as usize..(m.source.root.offset + m.source.root.length) as usize];
    assert_eq!(
        read_root_file(vol, "pagefile.sys"),
        read_root_file(&restored, "pagefile.sys")
    );
}

#[test]
fn explicit_partition_choice() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("gpt-disk.img", dir.path());
    let store = dir.path().join("store");
    let mut req = request(&src, "d");
    req.plan.partition = Some(4);
    let (m, _) = bundle(&req, &store).result.unwrap();
    assert_eq!(m.source.root.index, 4);
    assert_eq!(m.source.root.reason, "chosen with --partition");
    let out = dir.path().join("restored.img");
    restore(&store, "d", &out).unwrap();
    assert_restored_matches(&src, &req.plan, &out);
}

fn pipe_through(cmd: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let t = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    t.join().unwrap().unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn lookups_inside_a_directory_whose_index_spans_two_records() {
    // \many holds 14,000 files: its $INDEX_ALLOCATION is split across an attribute list, which
    // the ntfs crate alone cannot follow.
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("attrlist-volume.img", dir.path());
    let disk = winbundle::source::DiskFile::open(&src).unwrap();
    let opts = PlanOptions {
        partition: None,
        excludes: vec!["\\many\\s13999".into(), "\\many\\s1".into()],
        default_excludes: false,
        volume_only: false,
        keep_shadow_copies: false,
        require_ec2_ready: false,
        exclude_windows_lists: false,
    };
    let plan = winbundle::bundle::plan::Plan::analyse(&disk, &opts).unwrap();
    assert!(
        plan.exclusions.items.iter().all(|x| x.found && x.files == 1),
        "{:?}",
        plan.exclusions.items
    );
}

#[test]
fn a_stale_partial_file_is_written_over_where_it_differs() {
    // A partial data file whose bytes are not this bundle's (another source, or damage): every
    // part is compared, found different, and written; the result is the clean run's bundle.
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("mbr-disk.img", dir.path());
    let mut req = request(&src, "stale");
    req.part_size = Some(1 << 20);
    let store_dir = dir.path().join("store");
    let bucket = store_dir.join(&req.bucket);
    std::fs::create_dir_all(&bucket).unwrap();
    std::fs::write(bucket.join("stale.image.zst.partial"), vec![0x33u8; 8 << 20]).unwrap();
    let (m, stats) = bundle(&req, &store_dir).result.unwrap();
    assert_eq!(stats.resumed.resumed_from.as_deref(), Some("stale.image.zst.partial"));
    assert_eq!(stats.resumed.reused_parts, 0);
    assert_eq!(
        stats.resumed.replaced_parts as usize,
        m.data.objects[0].parts_sha256.len()
    );
    assert_eq!(
        std::fs::metadata(bucket.join("stale.image.zst")).unwrap().len(),
        m.data.stream_size,
        "the longer stale tail is cut"
    );
    let clean = dir.path().join("clean");
    let (c, _) = bundle(&req, &clean).result.unwrap();
    assert_eq!(c.bundle_sha256, m.bundle_sha256);
    let out = dir.path().join("restored.img");
    restore(&store_dir, "stale", &out).unwrap();
    assert_restored_matches(&src, &req.plan, &out);
}
