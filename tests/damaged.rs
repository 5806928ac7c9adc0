//! Damaged and hostile sources: each gives its own error, never a panic, a hang or a bundle of
//! the wrong volume.

mod common;

use common::FileAt;
use std::path::Path;

use common::*;
use winbundle::Error;
use winbundle::bundle::plan::{Plan, PlanOptions};
use winbundle::ntfs::NtfsError;
use winbundle::ntfs::record;
use winbundle::source::{DiskFile, SourceError};

fn analyse(path: &Path, excludes: &[&str]) -> Result<(), Error> {
    let disk = DiskFile::open(path)?;
    let opts = PlanOptions {
        partition: None,
        excludes: excludes.iter().map(|s| s.to_string()).collect(),
        default_excludes: true,
        volume_only: false,
        keep_shadow_copies: false,
        require_ec2_ready: false,
        exclude_windows_lists: false,
    };
    Plan::analyse(&disk, &opts).map(|_| ())
}

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(bytes, offset)
        .unwrap();
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut b, offset)
        .unwrap();
    b
}

const GPT_C: u64 = 10 << 20; // partition 3 of gpt-disk.img

/// Finds the MFT record of a root-level file by its name and returns (offset of the record in
/// the file, record size, decoded record).
fn find_record(path: &Path, vol: u64, name: &str) -> (u64, usize, Vec<u8>) {
    let boot = read_at(path, vol, 512);
    let cluster = u16::from_le_bytes([boot[11], boot[12]]) as u64 * boot[13] as u64;
    let mft = u64::from_le_bytes(boot[0x30..0x38].try_into().unwrap()) * cluster;
    let rs = 1024usize.max(if (boot[0x40] as i8) < 0 {
        1 << (-(boot[0x40] as i8)) as u32
    } else {
        boot[0x40] as usize * cluster as usize
    });
    let utf16: Vec<u8> = name.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
    for n in 0..4096u64 {
        let at = vol + mft + n * rs as u64;
        let mut rec = read_at(path, at, rs);
        if &rec[0..4] != b"FILE" || record::apply_fixups(&mut rec, n).is_err() {
            continue;
        }
        let Ok(attrs) = record::attributes(&rec, n) else {
            continue;
        };
        for a in attrs.iter().filter(|a| a.ty == record::ATTR_FILE_NAME) {
            let v = a.resident_value(&rec, n).unwrap();
            let len = v[0x40] as usize * 2;
            if v.get(0x42..0x42 + len) == Some(&utf16[..]) {
                return (at, rs, rec);
            }
        }
    }
    panic!("no record for {name}");
}

fn data_attr(rec: &[u8]) -> record::Attribute {
    record::attributes(rec, 0)
        .unwrap()
        .into_iter()
        .find(|a| a.ty == record::ATTR_DATA && a.name_len == 0)
        .unwrap()
}

#[test]
fn truncated_image_names_the_partition() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixture("gpt-disk.img", dir.path());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(60 << 20)
        .unwrap();
    let e = analyse(&img, &[]).unwrap_err();
    assert!(
        matches!(e, Error::Source(SourceError::PartitionPastEnd { index: 3, .. })),
        "{e}"
    );
    assert!(e.to_string().contains("truncated"), "{e}");
    assert_eq!(e.exit_code(), 3);
}

#[test]
fn damaged_primary_gpt_falls_back_to_the_backup() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixture("gpt-disk.img", dir.path());
    patch(&img, 512 + 40, &[0xff]);
    let disk = DiskFile::open(&img).unwrap();
    let plan = Plan::analyse(
        &disk,
        &PlanOptions {
            default_excludes: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(plan.layout.root.index, 3);
    assert!(
        plan.layout.table.warnings[0].contains("backup GPT"),
        "{:?}",
        plan.layout.table.warnings
    );
}

#[test]
fn both_gpt_headers_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixture("gpt-disk.img", dir.path());
    let size = std::fs::metadata(&img).unwrap().len();
    patch(&img, 512 + 40, &[0xff]);
    patch(&img, size - 512 + 40, &[0xff]);
    let e = analyse(&img, &[]).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("primary GPT: header CRC32 mismatch") && msg.contains("backup GPT"),
        "{msg}"
    );
}

#[test]
fn looping_logical_partition_chain() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixture("mbr-disk.img", dir.path());
    // The first EBR (sector 83968) links to the next EBR; make it link to itself.
    let ebr = 83968u64 * 512;
    let mut link = read_at(&img, ebr + 446 + 16, 16);
    link[4] = 0x05;
    link[8..12].copy_from_slice(&0u32.to_le_bytes());
    link[12..16].copy_from_slice(&2048u32.to_le_bytes());
    patch(&img, ebr + 446 + 16, &link);
    let e = analyse(&img, &[]).unwrap_err();
    assert!(e.to_string().contains("loops back to the EBR at sector 83968"), "{e}");
}

#[test]
fn garbage_and_tiny_files_are_not_images() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.img");
    std::fs::write(
        &junk,
        (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let e = analyse(&junk, &[]).unwrap_err();
    assert!(e.to_string().contains("not a disk or NTFS volume image"), "{e}");
    let tiny = dir.path().join("tiny.img");
    std::fs::write(&tiny, [0u8; 100]).unwrap();
    assert!(analyse(&tiny, &[]).unwrap_err().to_string().contains("too small"));
    let e = analyse(dir.path(), &[]).unwrap_err();
    assert!(e.to_string().contains("is a directory"), "{e}");
}

#[test]
fn bad_boot_sector_on_c_is_an_error_not_a_bundle_of_d() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixture("gpt-disk.img", dir.path());
    patch(&img, GPT_C + 11, &0x0300u16.to_le_bytes()); // 768 bytes per sector
    let e = analyse(&img, &[]).unwrap_err();
    assert!(
        matches!(e, Error::Source(SourceError::DamagedVolume { index: 3, .. })),
        "{e}"
    );
    assert_eq!(e.code(), "InvalidSource");
    assert!(e.hint().is_some_and(|h| h.contains("chkdsk /f")), "{:?}", e.hint());
    assert!(
        e.to_string().contains("partition 3") && e.to_string().contains("looks like NTFS but cannot be read"),
        "{e}"
    );
}

#[test]
fn zeroed_boot_sector_is_found_through_the_backup() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixture("gpt-disk.img", dir.path());
    patch(&img, GPT_C, &[0u8; 512]);
    let e = analyse(&img, &[]).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("partition 3") && msg.contains("backup boot sector"),
        "{msg}"
    );
}

#[test]
fn data_run_outside_the_volume() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixture("gpt-disk.img", dir.path());
    let (at, _, mut rec) = find_record(&img, GPT_C, "pagefile.sys");
    let a = data_attr(&rec);
    let nr = a.non_resident(&rec, 0).unwrap();
    let mp = nr.mapping_pairs;
    let h = rec[mp];
    let (nlen, olen) = ((h & 0xf) as usize, (h >> 4) as usize);
    // Largest positive LCN the field can hold.
    for i in 0..olen {
        rec[mp + 1 + nlen + i] = if i + 1 == olen { 0x7f } else { 0xff };
    }
    record::encode_fixups(&mut rec);
    patch(&img, at, &rec);
    let e = analyse(&img, &[]).unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Ntfs {
                source: NtfsError::Path { .. },
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("\\pagefile.sys") && e.to_string().contains("points outside the volume"),
        "{e}"
    );
}

#[test]
fn bitmap_shorter_than_the_volume() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixture("gpt-disk.img", dir.path());
    let (at, _, mut rec) = find_record(&img, GPT_C, "$Bitmap");
    let a = data_attr(&rec);
    rec[a.offset + 0x30..a.offset + 0x38].copy_from_slice(&16u64.to_le_bytes());
    record::encode_fixups(&mut rec);
    patch(&img, at, &rec);
    let e = analyse(&img, &[]).unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Ntfs {
                source: NtfsError::BitmapTooShort {
                    bits: 128,
                    clusters: 16383
                },
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn torn_mft_record_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixture("gpt-disk.img", dir.path());
    let (at, _, _) = find_record(&img, GPT_C, "pagefile.sys");
    // Break the update sequence number at the end of the record's first sector.
    let raw = read_at(&img, at + 510, 2);
    patch(&img, at + 510, &[raw[0] ^ 0xff, raw[1]]);
    let e = analyse(&img, &[]).unwrap_err();
    assert!(
        e.to_string().contains("update sequence") || e.to_string().contains("fixup"),
        "{e}"
    );
}

#[test]
fn looping_directory_index_stops_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixture("attrlist-volume.img", dir.path());
    // The live index blocks of \many: its $INDEX_ALLOCATION runs (4 KiB blocks = clusters).
    let (_, runs) = index_allocation_runs(&img, "\\many");
    // Point every node entry of every block at the block itself: a cycle.
    let mut patched = 0;
    for run in runs {
        for c in 0..run.count {
            let off = (run.lcn.unwrap() + c) * 4096;
            let mut rec = read_at(&img, off, 4096);
            if &rec[0..4] != b"INDX" {
                continue;
            }
            record::apply_fixups_of(&mut rec, b"INDX", 0).unwrap();
            let vcn = (run.vcn + c).to_le_bytes();
            let hdr = 0x18;
            let first = hdr + u32::from_le_bytes(rec[hdr..hdr + 4].try_into().unwrap()) as usize;
            let end = hdr + u32::from_le_bytes(rec[hdr + 4..hdr + 8].try_into().unwrap()) as usize;
            if rec[hdr + 12] & 1 == 0 {
                continue;
            }
            let mut e = first;
            while e + 16 <= end {
                let len = u16::from_le_bytes([rec[e + 8], rec[e + 9]]) as usize;
                let flags = rec[e + 12];
                if len < 16 {
                    break;
                }
                if flags & 1 == 1 {
                    rec[e + len - 8..e + len].copy_from_slice(&vcn);
                    patched += 1;
                }
                if flags & 2 == 2 {
                    break;
                }
                e += len;
            }
            record::encode_fixups(&mut rec);
            patch(&img, off, &rec);
        }
    }
    assert!(patched > 0, "the fixture has index node records");
    let started = std::time::Instant::now();
    let e = analyse(&img, &["\\many\\s13999"]).unwrap_err();
    assert!(
        e.to_string().contains("the directory index loops: index block VCN"),
        "{e}"
    );
    assert!(started.elapsed().as_secs() < 120, "took {:?}", started.elapsed());
}

#[test]
fn excluding_ntfs_metadata_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixture("bare-volume.img", dir.path());
    let e = analyse(&img, &["\\$MFT"]).unwrap_err();
    assert!(e.to_string().contains("is NTFS metadata"), "{e}");
}

/// Random damage to the boot sector and MFT of a volume: every outcome is a clean error or a
/// good bundle; never a panic or a hang.
#[test]
fn random_metadata_damage_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixture("bare-volume.img", dir.path());
    let boot = read_at(&img, 0, 512);
    let cluster = u16::from_le_bytes([boot[11], boot[12]]) as u64 * boot[13] as u64;
    let mft = u64::from_le_bytes(boot[0x30..0x38].try_into().unwrap()) * cluster;
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..150 {
        let mut undo = Vec::new();
        for _ in 0..1 + next() % 6 {
            let off = if next() % 8 == 0 {
                next() % 512
            } else {
                mft + next() % (64 * 1024)
            };
            let old = read_at(&img, off, 1);
            undo.push((off, old[0]));
            patch(&img, off, &[old[0] ^ (1 << (next() % 8))]);
        }
        let store = dir.path().join("store");
        let req = request(&img, "fuzz");
        match bundle(&req, &store).result {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                failed += 1;
            }
        }
        let _ = std::fs::remove_dir_all(&store);
        for (off, b) in undo.into_iter().rev() {
            patch(&img, off, &[b]);
        }
    }
    assert!(ok > 0 && failed > 0, "{ok} bundled, {failed} refused");
}
