//! Damaged volumes through the CLI (issue 33): a few bytes wrong in one structure end every
//! command with a clear error in seconds: no panic output, no exit 101, no hang. Also the
//! fault-injection switch: a panic in each stage of a bundle fails it like any other error.

mod common;

use common::FileAt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use winbundle::ntfs::record;
use winbundle::source::DiskFile;

const GPT_C: u64 = 10 << 20; // partition 3 of gpt-disk.img

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut b, offset)
        .unwrap();
    b
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(bytes, offset)
        .unwrap();
}

/// (cluster size, MFT offset in the image, record size) of the volume at `vol`.
fn geometry(img: &Path, vol: u64) -> (u64, u64, usize) {
    let boot = read_at(img, vol, 512);
    let cluster = u16::from_le_bytes([boot[11], boot[12]]) as u64 * boot[13] as u64;
    let mft = vol + u64::from_le_bytes(boot[0x30..0x38].try_into().unwrap()) * cluster;
    let rs = if (boot[0x40] as i8) < 0 {
        1usize << (-(boot[0x40] as i8)) as u32
    } else {
        boot[0x40] as usize * cluster as usize
    };
    (cluster, mft, rs)
}

/// The record number of directory `path` on the volume at `vol`.
fn dir_record(img: &Path, vol: u64, len: u64, path: &str) -> u64 {
    let disk = DiskFile::open(img).unwrap();
    let v = winbundle::ntfs::NtfsVolume::open(&disk, vol, len).unwrap();
    let f = v.lookup(path).unwrap().unwrap();
    assert!(f.is_dir, "{path}");
    f.record
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    /// The first entry of `$INDEX_ROOT` gets this length.
    RootEntryLen(u16),
    /// `$INDEX_ROOT`'s index header says its entries total 0 bytes.
    RootHeaderTotalZero,
    /// `$INDEX_ROOT` says index blocks are 0 bytes.
    RootBlockSizeZero,
    /// The first entry of the first index block gets this length.
    BlockEntryLen(u16),
}

/// Applies `damage` to the index of directory record `n` of the volume at `vol`.
fn damage_index(img: &Path, vol: u64, n: u64, damage: Damage) {
    let (cluster, mft, rs) = geometry(img, vol);
    let at = mft + n * rs as u64;
    let mut rec = read_at(img, at, rs);
    record::apply_fixups(&mut rec, n).unwrap();
    let attrs = record::attributes(&rec, n).unwrap();
    let root = attrs.iter().find(|a| a.ty == 0x90).expect("an $INDEX_ROOT");
    let vo = root.offset + u16::from_le_bytes([rec[root.offset + 0x14], rec[root.offset + 0x15]]) as usize;
    let hdr = vo + 16;
    let first = hdr + u32::from_le_bytes(rec[hdr..hdr + 4].try_into().unwrap()) as usize;
    match damage {
        Damage::RootEntryLen(l) => rec[first + 8..first + 10].copy_from_slice(&l.to_le_bytes()),
        Damage::RootHeaderTotalZero => rec[hdr + 4..hdr + 8].copy_from_slice(&0u32.to_le_bytes()),
        Damage::RootBlockSizeZero => rec[vo + 8..vo + 12].copy_from_slice(&0u32.to_le_bytes()),
        Damage::BlockEntryLen(l) => {
            let alloc = attrs.iter().find(|a| a.ty == 0xa0).expect("an $INDEX_ALLOCATION");
            let nr = alloc.non_resident(&rec, n).unwrap();
            let runs = record::decode_runs(&rec[nr.mapping_pairs..alloc.offset + alloc.length], 0, 1 << 40, n).unwrap();
            let off = vol + runs[0].lcn.unwrap() * cluster;
            let mut block = read_at(img, off, 4096);
            record::apply_fixups_of(&mut block, b"INDX", n).unwrap();
            let e = 0x18 + u32::from_le_bytes(block[0x18..0x1c].try_into().unwrap()) as usize;
            block[e + 8..e + 10].copy_from_slice(&l.to_le_bytes());
            record::encode_fixups(&mut block);
            write_at(img, off, &block);
            return;
        }
    }
    record::encode_fixups(&mut rec);
    write_at(img, at, &rec);
}

/// Runs winbundle with `args` (and `env`), asserting it ends within `limit`.
fn run(args: &[&str], env: &[(&str, &str)], limit: Duration) -> (i32, String) {
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let took = started.elapsed();
    let code = out.status.code().unwrap_or(-1);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < limit, "{args:?} took {took:?}: {text}");
    assert_ne!(code, 101, "{args:?} panicked: {text}");
    assert!(
        !text.contains("panicked at") && !text.contains("RUST_BACKTRACE"),
        "{args:?}: a panic message reached the user: {text}"
    );
    (code, text)
}

const LIMIT: Duration = Duration::from_secs(20);

fn bundle_args<'a>(src: &'a Path, store: &'a Path, prefix: &'a str) -> Vec<&'a str> {
    vec![
        "bundle-instance",
        s(src),
        "--bucket",
        "bkt",
        "--prefix",
        prefix,
        "--local-store",
        s(store),
    ]
}

fn browse<'a>(store: &'a Path, prefix: &'a str, cmd: &[&'a str]) -> Vec<&'a str> {
    let mut v = cmd.to_vec();
    v.extend(["--bucket", "bkt", "--prefix", prefix, "--local-store", s(store)]);
    v
}

/// One case: damage of directory `dir` of `image` (volume at `vol`, `len` bytes long).
struct Case {
    name: &'static str,
    image: &'static str,
    vol: u64,
    len: u64,
    dir: &'static str,
    damage: Damage,
    /// What the error names.
    names: &'static str,
}

fn cases() -> Vec<Case> {
    let gpt = |name, dir, damage, names| Case {
        name,
        image: "gpt-disk.img",
        vol: GPT_C,
        len: 64 << 20,
        dir,
        damage,
        names,
    };
    vec![
        gpt(
            "root entry length 0",
            "\\",
            Damage::RootEntryLen(0),
            "index entry length 0",
        ),
        gpt(
            "root entry length 8",
            "\\",
            Damage::RootEntryLen(8),
            "index entry length 8",
        ),
        gpt(
            "root header total 0",
            "\\",
            Damage::RootHeaderTotalZero,
            "index header's sizes",
        ),
        gpt(
            "root block size 0",
            "\\",
            Damage::RootBlockSizeZero,
            "index block size 0",
        ),
        gpt(
            "root block entry length 0",
            "\\",
            Damage::BlockEntryLen(0),
            "index entry length 0",
        ),
        gpt(
            "root block entry length 8",
            "\\",
            Damage::BlockEntryLen(8),
            "index entry length 8",
        ),
        gpt(
            "sub entry length 0",
            "\\Windows\\System32",
            Damage::RootEntryLen(0),
            "index entry length 0",
        ),
        gpt(
            "sub entry length 8",
            "\\Windows\\System32",
            Damage::RootEntryLen(8),
            "index entry length 8",
        ),
        gpt(
            "sub header total 0",
            "\\Windows\\System32",
            Damage::RootHeaderTotalZero,
            "index header's sizes",
        ),
        gpt(
            "sub block size 0",
            "\\Windows\\System32",
            Damage::RootBlockSizeZero,
            "index block size 0",
        ),
        Case {
            name: "sub block entry length 0",
            image: "attrlist-volume.img",
            vol: 0,
            len: 0,
            dir: "\\many",
            damage: Damage::BlockEntryLen(0),
            names: "index entry length 0",
        },
        Case {
            name: "sub block entry length 8",
            image: "attrlist-volume.img",
            vol: 0,
            len: 0,
            dir: "\\many",
            damage: Damage::BlockEntryLen(8),
            names: "index entry length 8",
        },
    ]
}

fn check(case: &Case, dir: &Path) -> Result<(), String> {
    let img = fixture(case.image, dir);
    let len = if case.len == 0 {
        std::fs::metadata(&img).unwrap().len()
    } else {
        case.len
    };
    let n = dir_record(&img, case.vol, len, case.dir);
    damage_index(&img, case.vol, n, case.damage);
    let record = format!("MFT record {n}");
    let store = dir.join("store");
    let (code, text) = run(&["inspect", s(&img)], &[], LIMIT);
    let root_damaged = case.dir == "\\";
    let mentions = |text: &str| text.contains(case.names) && text.contains(&record);
    if root_damaged {
        if code != 3 || !mentions(&text) || !text.contains("chkdsk /f") {
            return Err(format!("inspect: exit {code}: {text}"));
        }
        let (code, text) = run(&bundle_args(&img, &store, "p"), &[], LIMIT);
        if code != 3 || !mentions(&text) || !text.contains("InvalidSource") || !text.contains("chkdsk /f") {
            return Err(format!("bundle-instance: exit {code}: {text}"));
        }
        return Ok(());
    }
    if code != 0 {
        return Err(format!("inspect: exit {code}: {text}"));
    }
    let (code, text) = run(&bundle_args(&img, &store, "p"), &[], LIMIT);
    if code != 0 {
        return Err(format!("bundle-instance: exit {code}: {text}"));
    }
    let (code, text) = run(&browse(&store, "p", &["ls", "-R"]), &[], LIMIT);
    if code == 0 || !mentions(&text) {
        return Err(format!("ls -R: exit {code}: {text}"));
    }
    let out = dir.join("out");
    let (code, text) = run(&browse(&store, "p", &["extract", "\\", "-o", s(&out)]), &[], LIMIT);
    if code == 0 || !mentions(&text) {
        return Err(format!("extract: exit {code}: {text}"));
    }
    Ok(())
}

/// Issue 33's table, at the root and in a subfolder, through inspect, bundle-instance, ls -R
/// and extract. Cases run in parallel threads.
#[test]
fn damaged_indexes_end_every_command_with_a_clear_error() {
    let cases = cases();
    let dirs: Vec<tempfile::TempDir> = cases.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .zip(&dirs)
            .map(|(c, d)| scope.spawn(move || check(c, d.path()).map_err(|e| format!("{}: {e}", c.name))))
            .collect();
        handles.into_iter().filter_map(|h| h.join().unwrap().err()).collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Issue 33.2: a panic in each stage of a bundle ends it failed with InternalError and the
/// panic's message, within seconds, with nothing left in the store and no panic output.
#[test]
fn a_panic_in_any_stage_fails_the_bundle_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let img = fixture("gpt-disk.img", dir.path());
    let stages = [
        "reader",
        "compressor",
        "hasher",
        "writer",
        "uploader",
        "progress",
        "task-writer",
    ];
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = stages
            .iter()
            .map(|&stage| {
                let img = img.clone();
                let base = dir.path().to_path_buf();
                scope.spawn(move || check_stage(stage, &img, &base))
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().unwrap().err()).collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn check_stage(stage: &str, img: &Path, base: &Path) -> Result<(), String> {
    let store: PathBuf = base.join(format!("store-{stage}"));
    let tasks = base.join(format!("tasks-{stage}"));
    let mut args = bundle_args(img, &store, "p");
    args.extend(["--part-size", "1MiB"]);
    let (code, text) = run(
        &args,
        &[("WINBUNDLE_INJECT_PANIC", stage), ("XDG_STATE_HOME", s(&tasks))],
        LIMIT,
    );
    let expected = format!("injected fault in the {stage} stage");
    if code != 1 || !text.contains("InternalError") || !text.contains(&expected) {
        return Err(format!("{stage}: exit {code}: {text}"));
    }
    let left: Vec<String> = walk(&store);
    if !left.is_empty() {
        return Err(format!("{stage}: left in the store: {left:?}"));
    }
    Ok(())
}

fn walk(p: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path.display().to_string());
            }
        }
    }
    out
}
