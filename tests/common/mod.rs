//! Shared test helpers: decompressed fixtures, bundling into a temporary local store, and an
//! NTFS-aware comparison of a restored volume with its source.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use winbundle::bundle::create::{BundleOutcome, BundleRequest, bundle_instance};
use winbundle::bundle::plan::{Plan, PlanOptions};
use winbundle::format::Layout;
use winbundle::progress::NoProgress;
use winbundle::read::{OpenedBundle, RestoreTarget};
use winbundle::source::DiskFile;
use winbundle::store::LocalStore;

/// Decompresses `testdata/NAME.zst` once per test run and returns a private copy's path
/// (tests may damage their copy).
pub fn fixture(name: &str, dir: &Path) -> PathBuf {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    std::fs::create_dir_all(&cache).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(format!("{name}.zst"));
    let packed = std::fs::read(&src).unwrap();
    // Keyed by the compressed fixture's digest: a regenerated fixture is unpacked anew.
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&packed));
    let plain = cache.join(format!("{name}.{}", &digest[..16]));
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !plain.exists() {
        let data = zstd::decode_all(&packed[..]).unwrap();
        let tmp = cache.join(format!("{name}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, data).unwrap();
        std::fs::rename(&tmp, &plain).unwrap();
    }
    let copy = dir.join(name);
    std::fs::copy(&plain, &copy).unwrap();
    copy
}

pub fn request(source: &Path, prefix: &str) -> BundleRequest {
    BundleRequest {
        source: source.to_path_buf(),
        bucket: "test-bucket".into(),
        prefix: prefix.into(),
        instance_id: None,
        plan: PlanOptions {
            partition: None,
            excludes: Vec::new(),
            default_excludes: true,
            volume_only: false,
            keep_shadow_copies: false,
            require_ec2_ready: false,
            exclude_windows_lists: false,
        },
        chunk_size: 1 << 20,
        level: 1,
        threads: 2,
        layout: Layout::Single,
        part_size: None,
        overwrite: false,
        assigned: None,
        live: Default::default(),
        parent: None,
        force_parent: false,
        from_parent: Default::default(),
        rehash: Default::default(),
        encrypt: None,
    }
}

pub fn bundle(req: &BundleRequest, store_dir: &Path) -> BundleOutcome {
    let store = LocalStore::open(store_dir, &req.bucket, true).unwrap();
    bundle_instance(req, &store, &NoProgress, &AtomicBool::new(false), &mut |_| Ok(()))
}

/// Restores `prefix` from the local store folder into `out`.
pub fn restore(store_dir: &Path, prefix: &str, out: &Path) -> Result<(), winbundle::Error> {
    restore_from(&LocalStore::open(store_dir, "test-bucket", false)?, prefix, out)
}

/// Restores `prefix` from any store into `out`.
pub fn restore_from(
    store: &dyn winbundle::store::ObjectStore,
    prefix: &str,
    out: &Path,
) -> Result<(), winbundle::Error> {
    let mut b = OpenedBundle::open(store, prefix, &Default::default())?;
    b.set_fetchers(4);
    let target = RestoreTarget::File {
        path: out.to_path_buf(),
        force: true,
        assume_zeroed: false,
        direct: true,
    };
    b.restore(&target, 2, &NoProgress, &AtomicBool::new(false))?;
    Ok(())
}

pub fn verify(store_dir: &Path, prefix: &str) -> Result<(), winbundle::Error> {
    let store = LocalStore::open(store_dir, "test-bucket", false)?;
    let b = OpenedBundle::open(&store, prefix, &Default::default())?;
    b.verify(2, &NoProgress, &AtomicBool::new(false))?;
    Ok(())
}

/// Checks the restored volume against the source: equal on every allocated cluster that is not
/// excluded, zero on free clusters and on excluded files' clusters, and equal on the tail that
/// holds the backup boot sector. Returns (clusters compared equal, clusters checked zero).
pub fn assert_restored_matches(source: &Path, opts: &PlanOptions, restored: &Path) -> (u64, u64) {
    let disk = DiskFile::open(source).unwrap();
    let plan = Plan::analyse(&disk, opts).unwrap();
    let root = plan.layout.root().partition.clone();
    let src = std::fs::read(source).unwrap();
    let src = &src[root.offset as usize..(root.offset + root.length) as usize];
    let out = std::fs::read(restored).unwrap();
    assert_eq!(out.len() as u64, root.length, "restored image length");
    let cs = plan.facts.cluster_size as usize;
    let mut excluded = vec![false; plan.facts.cluster_count as usize];
    for &(s, e) in &plan.exclusions.ranges {
        for c in s..e {
            excluded[c as usize] = true;
        }
    }
    let bitmap = bitmap_bits(src, plan.facts.cluster_count);
    let (mut same, mut zero) = (0, 0);
    for c in 0..plan.facts.cluster_count as usize {
        let (a, b) = (&src[c * cs..(c + 1) * cs], &out[c * cs..(c + 1) * cs]);
        if bitmap[c] && !excluded[c] {
            assert!(a == b, "allocated cluster {c} differs");
            same += 1;
        } else {
            assert!(b.iter().all(|&x| x == 0), "free or excluded cluster {c} is not zero");
            zero += 1;
        }
    }
    let tail_start = plan.facts.cluster_count as usize * cs;
    let fs_end = (plan.facts.fs_size + plan.facts.sector_size as u64).min(root.length) as usize;
    assert_eq!(
        &src[tail_start..fs_end],
        &out[tail_start..fs_end],
        "boot-sector tail differs"
    );
    let ss = plan.facts.sector_size as usize;
    assert_eq!(&out[fs_end - ss..fs_end][3..11], b"NTFS    ", "backup boot sector kept");
    (same, zero)
}

/// The allocation bitmap of a volume, read with the `ntfs` crate alone (independent of
/// winbundle's own MFT and bitmap code).
pub fn bitmap_bits(volume: &[u8], clusters: u64) -> Vec<bool> {
    let bytes = read_file(volume, 6);
    (0..clusters)
        .map(|c| bytes[(c / 8) as usize] & (1 << (c % 8)) != 0)
        .collect()
}

/// The unnamed $DATA of file record `record`, read with the `ntfs` crate.
pub fn read_file(volume: &[u8], record: u64) -> Vec<u8> {
    use std::io::Read;
    let mut fs = std::io::Cursor::new(volume);
    let ntfs = ntfs::Ntfs::new(&mut fs).unwrap();
    let file = ntfs.file(&mut fs, record).unwrap();
    let item = file.data(&mut fs, "").unwrap().unwrap();
    let attr = item.to_attribute().unwrap();
    let mut out = Vec::new();
    attr.value(&mut fs)
        .unwrap()
        .attach(&mut fs)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Reads a root-level file by name with the `ntfs` crate.
pub fn read_root_file(volume: &[u8], name: &str) -> Vec<u8> {
    let mut fs = std::io::Cursor::new(volume);
    let mut ntfs = ntfs::Ntfs::new(&mut fs).unwrap();
    ntfs.read_upcase_table(&mut fs).unwrap();
    let root = ntfs.root_directory(&mut fs).unwrap();
    let index = root.directory_index(&mut fs).unwrap();
    let mut finder = index.finder();
    let entry = ntfs::indexes::NtfsFileNameIndex::find(&mut finder, &ntfs, &mut fs, name)
        .unwrap()
        .unwrap();
    read_file(volume, entry.file_reference().file_record_number())
}

/// Runs the winbundle binary. Task files go to a folder of the test run, not the user's.
pub fn winbundle(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"))
        .env(
            "XDG_STATE_HOME",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-state"),
        )
        .args(args)
        .output()
        .unwrap()
}

pub fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Text of every element of an XML document by its path (`A/B/c`), and the root's xmlns.
pub fn xml_fields(xml: &str) -> (std::collections::HashMap<String, String>, Option<String>) {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut path = Vec::<String>::new();
    let mut fields = std::collections::HashMap::new();
    let mut ns = None;
    loop {
        match reader.read_event().unwrap() {
            quick_xml::events::Event::Start(e) => {
                if path.is_empty() {
                    ns = e
                        .try_get_attribute("xmlns")
                        .unwrap()
                        .map(|a| String::from_utf8(a.value.to_vec()).unwrap());
                }
                path.push(String::from_utf8(e.name().as_ref().to_vec()).unwrap());
            }
            quick_xml::events::Event::End(_) => {
                path.pop();
            }
            quick_xml::events::Event::Text(t) => {
                fields.insert(path.join("/"), t.unescape().unwrap().into_owned());
            }
            quick_xml::events::Event::Eof => break,
            _ => {}
        }
    }
    (fields, ns)
}

/// Positioned file reads and writes on every platform (tests patch images in place).
pub trait FileAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()>;
}

impl FileAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = self;
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(buf)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = self;
        f.seek(SeekFrom::Start(offset))?;
        f.write_all(buf)
    }
}

/// gpt-disk.img with every free cluster of C: filled with random bytes and marked allocated:
/// 64 MiB of data, enough for many 5 MiB parts.
pub fn big_disk(dir: &Path) -> PathBuf {
    let img = fixture("gpt-disk.img", dir);
    fill_free_clusters(&img, 0x2545f4914f6cdd1d, &|_| true);
    img
}

/// Fills the free clusters of gpt-disk.img's C: (at 10 MiB) that `pick` chooses with random
/// bytes (from `seed`) and marks them allocated in `$Bitmap`: new data that shifts nothing
/// else. Returns the clusters filled.
pub fn fill_free_clusters(img: &Path, mut seed: u64, pick: &dyn Fn(u64) -> bool) -> Vec<u64> {
    let disk = winbundle::source::DiskFile::open(img).unwrap();
    let c = 10u64 << 20;
    let vol = winbundle::ntfs::NtfsVolume::open(&disk, c, 64 << 20).unwrap();
    let bitmap = vol.file_data(6).unwrap();
    let cs = vol.facts().cluster_size as u64;
    let clusters = vol.facts().cluster_count;
    drop(vol);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(img).unwrap();
    let run = bitmap.runs[0];
    assert_eq!(bitmap.runs.len(), 1);
    let pos = c + run.lcn.unwrap() * cs;
    let mut bits = vec![0u8; clusters.div_ceil(8) as usize];
    f.read_exact_at(&mut bits, pos).unwrap();
    let mut random = vec![0u8; cs as usize];
    let mut filled = Vec::new();
    for cl in 0..clusters {
        if bits[(cl / 8) as usize] & (1 << (cl % 8)) == 0 && pick(cl) {
            for b in random.chunks_mut(8) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                b.copy_from_slice(&seed.to_le_bytes());
            }
            f.write_all_at(&random, c + cl * cs).unwrap();
            bits[(cl / 8) as usize] |= 1 << (cl % 8);
            filled.push(cl);
        }
    }
    f.write_all_at(&bits, pos).unwrap();
    filled
}

/// Runs the winbundle binary with `args` on bundle `p` of bucket test-bucket in the local store
/// folder `store`.
pub fn cli_local(store: &Path, args: &[&str]) -> std::process::Output {
    cli_local_prefix(store, "p", args)
}

/// As [`cli_local`], for the bundle under `prefix`.
pub fn cli_local_prefix(store: &Path, prefix: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"))
        .args(args)
        .args([
            "--local-store",
            store.to_str().unwrap(),
            "--bucket",
            "test-bucket",
            "--prefix",
            prefix,
        ])
        .output()
        .unwrap()
}

/// The record number of the folder `path` of the NTFS volume image `img` and the runs of its
/// `$INDEX_ALLOCATION` (where its index blocks lie), for tests that damage them.
pub fn index_allocation_runs(img: &Path, path: &str) -> (u64, Vec<winbundle::ntfs::record::Run>) {
    use winbundle::ntfs::record;
    let disk = winbundle::source::DiskFile::open(img).unwrap();
    let vol = winbundle::ntfs::NtfsVolume::open(&disk, 0, disk.size()).unwrap();
    let folder = vol.lookup(path).unwrap().unwrap().record;
    let rec = vol.read_record(folder).unwrap();
    let alloc = record::attributes(&rec, 0)
        .unwrap()
        .into_iter()
        .find(|a| a.ty == 0xa0)
        .unwrap();
    let nr = alloc.non_resident(&rec, 0).unwrap();
    let runs = record::decode_runs(&rec[nr.mapping_pairs..alloc.offset + alloc.length], 0, 1 << 20, 0).unwrap();
    (folder, runs)
}

/// Every file below `dir` (none when it does not exist).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
