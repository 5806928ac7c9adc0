//! `restore --disk`: the bootable disk back from a bundle: the partition table without the
//! left-out partitions (GPT CRCs recomputed on both copies, MBR entries), the system partitions
//! byte for byte, C: at its offset, and a fixed VHD that qemu reads as the same disk.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn run(store: &Path, args: &[&str]) -> Output {
    common::cli_local(store, args)
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Bundles a fixture into a local store; returns (the plain source, the store).
fn bundled(fixture: &str, dir: &Path, volume_only: bool) -> (std::path::PathBuf, std::path::PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let src = common::fixture(fixture, dir);
    let store = dir.join("store");
    let mut req = common::request(&src, "p");
    req.plan.volume_only = volume_only;
    common::bundle(&req, &store).result.expect("bundle");
    (src, store)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Checks both GPT headers and their entry arrays (CRCs, the backup in the last sector) and
/// returns the (first LBA, last LBA) of every used entry.
fn gpt_entries(disk: &[u8], ss: usize) -> Vec<(u64, u64)> {
    let last = disk.len() / ss - 1;
    let mut seen = None;
    for (lba, other) in [(1, last), (last, 1)] {
        let h = &disk[lba * ss..(lba + 1) * ss];
        assert_eq!(&h[..8], b"EFI PART", "GPT header at LBA {lba}");
        let size = u32_at(h, 12) as usize;
        let mut copy = h[..size].to_vec();
        copy[16..20].fill(0);
        assert_eq!(crc32fast::hash(&copy), u32_at(h, 16), "header CRC at LBA {lba}");
        assert_eq!(u64_at(h, 24), lba as u64, "my LBA");
        assert_eq!(u64_at(h, 32), other as u64, "alternate LBA");
        let (at, count, esize) = (
            u64_at(h, 72) as usize * ss,
            u32_at(h, 80) as usize,
            u32_at(h, 84) as usize,
        );
        let entries = &disk[at..at + count * esize];
        assert_eq!(crc32fast::hash(entries), u32_at(h, 88), "entries CRC at LBA {lba}");
        let used: Vec<(u64, u64)> = entries
            .chunks(esize)
            .filter(|e| e[..16].iter().any(|&b| b != 0))
            .map(|e| (u64_at(e, 32), u64_at(e, 40)))
            .collect();
        if let Some(s) = &seen {
            assert_eq!(s, &used, "both copies list the same partitions");
        }
        seen = Some(used);
    }
    seen.unwrap()
}

fn tool(name: &str) -> bool {
    let found = Command::new(name).arg("--version").output().is_ok();
    if !found {
        println!("skipped: {name} is not installed (apt-get install gdisk qemu-utils)");
    }
    found
}

#[test]
fn a_gpt_disk_comes_back_bootable_raw_and_as_vhd() {
    let dir = tempfile::tempdir().unwrap();
    let (src, store) = bundled("gpt-disk.img", dir.path(), false);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("test-bucket/p.manifest.json")).unwrap()).unwrap();
    assert_eq!(m["format_version"], 3);
    let roles: Vec<&str> = m["disk"]["kept_partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["EFI system", "Microsoft reserved", "root volume (C:)"]);
    assert_eq!(m["disk"]["dropped_partitions"], serde_json::json!([4]));

    let raw = dir.path().join("disk.img");
    ok(&run(
        &store,
        &["restore", "--disk", "--output", raw.to_str().unwrap(), "-q"],
    ));
    let vol = dir.path().join("c.img");
    ok(&run(&store, &["restore", "--output", vol.to_str().unwrap(), "-q"]));
    let (source, disk, c) = (
        std::fs::read(&src).unwrap(),
        std::fs::read(&raw).unwrap(),
        std::fs::read(&vol).unwrap(),
    );
    assert_eq!(disk.len(), source.len(), "the disk's size");
    assert_eq!(disk[..446], source[..446], "protective MBR");
    // Partitions 1-3 kept with their bytes (the EFI partition's files with them), 4 gone.
    assert_eq!(
        gpt_entries(&disk, 512),
        [(2048, 18431), (18432, 20479), (20480, 151551)]
    );
    let (efi, msr, root) = (1usize << 20, 9usize << 20, 10usize << 20);
    assert!(disk[efi..msr] == source[efi..msr], "EFI system partition");
    assert!(disk[msr..root] == source[msr..root], "MSR");
    assert!(disk[root..root + c.len()] == c[..], "C: as restore gives it");
    let (d_first, d_last) = gpt_entries(&source, 512)[3];
    assert!(
        disk[d_first as usize * 512..(d_last as usize + 1) * 512]
            .iter()
            .all(|&b| b == 0),
        "the instance store is not there"
    );
    if tool("sgdisk") {
        let v = Command::new("sgdisk").arg("-v").arg(&raw).output().unwrap();
        let text = String::from_utf8_lossy(&v.stdout);
        assert!(text.contains("No problems found"), "{text}");
    }

    let vhd = dir.path().join("disk.vhd");
    ok(&run(
        &store,
        &[
            "restore",
            "--disk",
            "--format",
            "vhd",
            "--output",
            vhd.to_str().unwrap(),
            "-q",
        ],
    ));
    let v = std::fs::read(&vhd).unwrap();
    assert_eq!(v.len(), disk.len() + 512);
    assert!(v[..disk.len()] == disk[..], "the VHD's data is the raw disk");
    let footer = &v[disk.len()..];
    assert_eq!(&footer[..8], b"conectix");
    assert_eq!(
        u64::from_be_bytes(footer[48..56].try_into().unwrap()),
        disk.len() as u64
    );
    assert_eq!(u32::from_be_bytes(footer[60..64].try_into().unwrap()), 2, "fixed disk");
    if tool("qemu-img") {
        let info = Command::new("qemu-img")
            .args(["info", "-f", "vpc", "--output", "json"])
            .arg(&vhd)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["format"], "vpc");
        assert_eq!(info["virtual-size"], disk.len() as u64);
        let cmp = Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "vpc"])
            .arg(&raw)
            .arg(&vhd)
            .output()
            .unwrap();
        assert!(cmp.status.success(), "{}", String::from_utf8_lossy(&cmp.stdout));
    }
    // An existing file is not replaced without --force.
    let again = run(&store, &["restore", "--disk", "--output", raw.to_str().unwrap(), "-q"]);
    assert_eq!(again.status.code(), Some(2));
}

#[test]
fn inspect_lists_what_a_bundle_keeps_of_the_disk() {
    let inspect = |fx: &str, extra: &[&str]| -> serde_json::Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(fx);
        let out = Command::new(env!("CARGO_BIN_EXE_winbundle"))
            .arg("inspect")
            .arg(path)
            .arg("--json")
            .args(extra)
            .output()
            .unwrap();
        ok(&out);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["disk"].clone()
    };
    let d = inspect("gpt-disk.img.zst", &[]);
    assert_eq!(d["kept"], true);
    let what: Vec<&str> = d["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["what"].as_str().unwrap())
        .collect();
    assert_eq!(
        what,
        [
            "partition table and boot area",
            "partition 1 (EFI system)",
            "partition 2 (Microsoft reserved)",
            "backup GPT"
        ]
    );
    assert_eq!(d["dropped_partitions"], serde_json::json!([4]));
    assert_eq!(inspect("gpt-disk.img.zst", &["--volume-only"])["kept"], false);
    let bare = inspect("bare-volume.img.zst", &[]);
    assert_eq!(bare["kept"], false);
    assert!(bare["reason"].as_str().unwrap().contains("bare volume"));
}

#[test]
fn an_mbr_disk_keeps_system_reserved_active_with_its_boot_code() {
    let dir = tempfile::tempdir().unwrap();
    let (src, store) = bundled("mbr-disk.img", dir.path(), false);
    let raw = dir.path().join("disk.img");
    ok(&run(
        &store,
        &["restore", "--disk", "--output", raw.to_str().unwrap(), "-q"],
    ));
    let (source, disk) = (std::fs::read(&src).unwrap(), std::fs::read(&raw).unwrap());
    assert_eq!(disk.len(), source.len());
    assert_eq!(disk[..446], source[..446], "boot code and disk signature");
    assert_eq!(disk[510..512], [0x55, 0xaa]);
    // Entry 1 (System Reserved, active) and 2 (C:) as they were; the extended partition, which
    // held only instance stores, gone.
    assert_eq!(disk[446..478], source[446..478]);
    assert_eq!(disk[446], 0x80, "still active");
    assert!(disk[478..510].iter().all(|&b| b == 0), "{:?}", &disk[478..510]);
    let (sr, c) = (2048 * 512, 18432 * 512);
    assert!(disk[sr..c] == source[sr..c], "System Reserved");
    if tool("sfdisk") {
        let d = Command::new("sfdisk").arg("-d").arg(&raw).output().unwrap();
        let text = String::from_utf8_lossy(&d.stdout);
        assert_eq!(text.lines().filter(|l| l.contains("start=")).count(), 2, "{text}");
    }
}

#[test]
fn four_kib_sectors_keep_their_gpt_valid() {
    let dir = tempfile::tempdir().unwrap();
    let (src, store) = bundled("gpt4k-disk.img", dir.path(), false);
    let raw = dir.path().join("disk.img");
    ok(&run(
        &store,
        &["restore", "--disk", "--output", raw.to_str().unwrap(), "-q"],
    ));
    let (source, disk) = (std::fs::read(&src).unwrap(), std::fs::read(&raw).unwrap());
    assert_eq!(disk.len(), source.len());
    assert_eq!(gpt_entries(&source, 4096).len(), 2);
    assert_eq!(gpt_entries(&disk, 4096), [(256, 256 + 8192 - 1)], "C: kept, D: gone");
}

#[test]
fn volume_only_bare_and_tampered_bundles_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // --volume-only: format 1, no disk stream; restore --disk says why.
    let (_, store) = bundled("gpt-disk.img", &dir.path().join("v"), true);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("test-bucket/p.manifest.json")).unwrap()).unwrap();
    assert_eq!(m["format_version"], 1);
    assert!(!store.join("test-bucket/p.disk.image.zst").exists());
    let out = dir.path().join("x.img");
    let r = run(&store, &["restore", "--disk", "--output", out.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("keeps only C:"));
    // A bare volume has no table to keep.
    let (_, store) = bundled("bare-volume.img", &dir.path().join("b"), false);
    let r = run(&store, &["restore", "--disk", "--output", out.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(2));
    // A damaged disk stream fails verify and restore --disk, and leaves no file.
    let (_, store) = bundled("gpt-disk.img", &dir.path().join("t"), false);
    ok(&run(&store, &["verify", "-q"]));
    let obj = store.join("test-bucket/p.disk.image.zst");
    let mut bytes = std::fs::read(&obj).unwrap();
    bytes[100] ^= 0x10;
    std::fs::write(&obj, bytes).unwrap();
    let v = run(&store, &["verify", "-q"]);
    assert_eq!(v.status.code(), Some(4), "{}", String::from_utf8_lossy(&v.stderr));
    assert!(String::from_utf8_lossy(&v.stderr).contains("p.disk.image.zst"));
    let r = run(&store, &["restore", "--disk", "--output", out.to_str().unwrap(), "-q"]);
    assert_eq!(r.status.code(), Some(4), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(!out.exists() && !dir.path().join("x.img.partial").exists());
}
