//! `ls`, `extract` and `cat` of hostile or damaged volumes (issue 25 points 9, 10, 12, 13;
//! issue 33 point 3): folders pointing back up or twice at one folder, a damaged subfolder
//! index, names with control characters, stream names that leave `--output`, paths too long to
//! write. Each skips what it cannot read or write, says why, goes on, and exits with the status
//! docs/file-access.md gives (3: damage skipped, 1: only local failures).

mod common;

use common::FileAt;
use std::path::{Path, PathBuf};
use std::process::Output;

use winbundle::ntfs::record;
use winbundle::source::DiskFile;

fn run(store: &Path, args: &[&str]) -> Output {
    common::cli_local(store, args)
}

fn text(out: &Output) -> (Option<i32>, String, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn bundle_of(img: &Path, dir: &Path) -> PathBuf {
    let store = dir.join("store");
    common::bundle(&common::request(img, "p"), &store)
        .result
        .expect("bundle");
    store
}

/// The record number of `\many` in attrlist-volume.img, and each entry of its index blocks:
/// `edit(block, entry offset)` may change the block, which is written back with its fixups.
fn edit_many_entries(img: &Path, edit: &mut dyn FnMut(&mut [u8], usize)) -> u64 {
    let (many, runs) = common::index_allocation_runs(img, "\\many");
    let f = std::fs::OpenOptions::new().read(true).write(true).open(img).unwrap();
    for run in runs {
        for c in 0..run.count {
            let off = (run.lcn.unwrap() + c) * 4096;
            let mut block = vec![0u8; 4096];
            f.read_exact_at(&mut block, off).unwrap();
            if &block[0..4] != b"INDX" {
                continue;
            }
            record::apply_fixups_of(&mut block, b"INDX", 0).unwrap();
            let hdr = 0x18;
            let first = hdr + u32::from_le_bytes(block[hdr..hdr + 4].try_into().unwrap()) as usize;
            let end = hdr + u32::from_le_bytes(block[hdr + 4..hdr + 8].try_into().unwrap()) as usize;
            let mut e = first;
            while e + 16 <= end {
                let len = u16::from_le_bytes([block[e + 8], block[e + 9]]) as usize;
                let flags = block[e + 12];
                if len < 16 || flags & 2 == 2 {
                    break;
                }
                edit(&mut block, e);
                e += len;
            }
            record::encode_fixups(&mut block);
            f.write_all_at(&block, off).unwrap();
        }
    }
    many
}

/// Entries of `\many` that point back at `\many` itself: a cycle. `ls -R` and `extract` name
/// it, do not follow it, list and extract everything else, and exit 3, in seconds.
#[test]
fn a_folder_containing_itself_is_a_named_cycle_and_the_rest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let img = common::fixture("attrlist-volume.img", dir.path());
    // First the record number (a pass that changes nothing), then the entries.
    let many = edit_many_entries(&img, &mut |_, _| {});
    let mut patched = 0;
    edit_many_entries(&img, &mut |b, e| {
        if patched < 50 {
            b[e..e + 6].copy_from_slice(&many.to_le_bytes()[..6]);
            patched += 1;
        }
    });
    assert!(patched > 0);
    let store = bundle_of(&img, dir.path());
    let (code, out, err) = text(&run(&store, &["ls", "--recursive"]));
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("directory cycle") && err.contains("\\many"), "{err}");
    assert!(
        out.contains("\\Windows\\Help\\README.Debian"),
        "the rest is listed: {out}"
    );
    let out_dir = dir.path().join("out");
    let (code, _, err) = text(&run(&store, &["extract", "\\", "--output", out_dir.to_str().unwrap()]));
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("directory cycle") && err.contains("not extracted"),
        "{err}"
    );
    assert!(out_dir.join("Windows/Help/README.Debian").is_file(), "{err}");
    // No folder was entered twice: \many holds no folder at all.
    let nested = std::fs::read_dir(out_dir.join("many"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
        .count();
    assert_eq!(nested, 0);
}

/// Entries of `\many` that all point at one other folder (`\Windows`): a graph, not a tree.
/// The folder is read once; every further way to it is skipped and named (exit 3), so nothing
/// grows with the number of ways.
#[test]
fn a_folder_reached_many_times_is_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let img = common::fixture("attrlist-volume.img", dir.path());
    let windows = {
        let disk = DiskFile::open(&img).unwrap();
        let vol = winbundle::ntfs::NtfsVolume::open(&disk, 0, disk.size()).unwrap();
        vol.lookup("\\Windows").unwrap().unwrap().record
    };
    let mut patched = 0;
    edit_many_entries(&img, &mut |b, e| {
        if patched < 40 {
            b[e..e + 6].copy_from_slice(&windows.to_le_bytes()[..6]);
            patched += 1;
        }
    });
    let store = bundle_of(&img, dir.path());
    let out_dir = dir.path().join("out");
    let (code, _, err) = text(&run(&store, &["extract", "\\", "--output", out_dir.to_str().unwrap()]));
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("the same folder"), "{err}");
    let copies = walkdir(&out_dir)
        .iter()
        .filter(|p| p.ends_with("Help/README.Debian"))
        .count();
    assert_eq!(copies, 1, "\\Windows was extracted once");
}

fn walkdir(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        }
        out.push(p);
    }
    out
}

/// `\many`'s index blocks damaged (their magic overwritten): `ls -R` and `extract` name the
/// folder as not read, list and extract the rest, and exit 3, with no panic.
#[test]
fn a_damaged_subfolder_index_is_skipped_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let img = common::fixture("attrlist-volume.img", dir.path());
    edit_many_entries(&img, &mut |b, e| {
        // Entry lengths below the 16-byte header (issue 33's damage).
        b[e + 8] = 8;
        b[e + 9] = 0;
    });
    let store = bundle_of(&img, dir.path());
    let (code, out, err) = text(&run(&store, &["ls", "--recursive"]));
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("not read: \\many"), "{err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{err}");
    assert!(out.contains("\\Windows\\System32\\cmd.exe"), "{out}");
    let out_dir = dir.path().join("out");
    let (code, _, err) = text(&run(&store, &["extract", "\\", "--output", out_dir.to_str().unwrap()]));
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("not extracted: \\many"), "{err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{err}");
    assert!(out_dir.join("Windows/System32/cmd.exe").is_file());
}

/// A name holding ESC and a newline: `ls` prints it escaped (`\033`, `\n`), never raw; JSON
/// keeps it exact.
#[test]
fn control_characters_in_names_are_escaped_in_text_and_exact_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let img = common::fixture("attrlist-volume.img", dir.path());
    let mut done = false;
    edit_many_entries(&img, &mut |b, e| {
        let key = e + 16;
        if !done && b[key + 0x40] == 6 {
            let name: Vec<u8> = "\u{1b}]0;X\n".encode_utf16().flat_map(u16::to_le_bytes).collect();
            b[key + 0x42..key + 0x42 + 12].copy_from_slice(&name);
            done = true;
        }
    });
    assert!(done);
    let store = bundle_of(&img, dir.path());
    let out = run(&store, &["ls", "\\many"]);
    let (code, stdout, err) = text(&out);
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.stdout.contains(&0x1b), "a raw ESC reached the terminal");
    assert!(stdout.contains("\\033]0;X\\n\n"), "{stdout}");
    let out = run(&store, &["ls", "\\many", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["Entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["Name"] == "\u{1b}]0;X\n"),
        "JSON keeps the exact name"
    );
}

/// `--stream ../../x` would name a file outside `--output`: listed as not extracted (exit 1),
/// nothing written outside.
#[test]
fn a_stream_name_that_leaves_the_output_folder_is_not_extracted() {
    let dir = tempfile::tempdir().unwrap();
    let img = common::fixture("gpt-disk.img", dir.path());
    let store = bundle_of(&img, dir.path());
    let out_dir = dir.path().join("a/b/out");
    let (code, _, err) = text(&run(
        &store,
        &[
            "extract",
            "\\Windows\\System32\\cmd.exe",
            "--stream",
            "../../../escaped",
            "--output",
            out_dir.to_str().unwrap(),
        ],
    ));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("not extracted") && err.contains("../../../escaped"),
        "{err}"
    );
    assert!(!dir.path().join("escaped").exists() && !dir.path().join("a/escaped").exists());
    assert_eq!(walkdir(&out_dir).len(), 0);
}

/// Paths longer than the system allows (4095 bytes) are skipped and listed with the reason;
/// the rest is extracted, exit 1.
// Linux's limit (PATH_MAX, 4096 bytes) is what this test reaches for; on Windows the output
// folder itself cannot be made at that length (MAX_PATH), which ends the command before any file.
#[cfg(unix)]
#[test]
fn a_path_too_long_to_write_is_skipped_and_the_rest_extracted() {
    let dir = tempfile::tempdir().unwrap();
    let img = common::fixture("gpt-disk.img", dir.path());
    let store = bundle_of(&img, dir.path());
    // OUTPUT/Windows/System32/cmd.exe fits in 4095 bytes; OUTPUT/Windows/System32/drivers/etc
    // and OUTPUT/Windows/System32/kernel32.dll do not.
    let mut out_dir = dir.path().to_path_buf();
    let want = 4095 - "/Windows/System32/cmd.exe".len();
    while out_dir.as_os_str().len() + 201 <= want {
        out_dir.push("d".repeat(200));
    }
    let rest = want - out_dir.as_os_str().len() - 1;
    out_dir.push("e".repeat(rest));
    assert_eq!(out_dir.as_os_str().len(), want);
    let (code, _, err) = text(&run(
        &store,
        &["extract", "\\Windows", "--output", out_dir.to_str().unwrap()],
    ));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("not extracted: \\Windows\\System32\\kernel32.dll"),
        "{err}"
    );
    assert!(err.contains("not extracted: \\Windows\\System32\\drivers"), "{err}");
    assert!(err.contains("could not be extracted"), "{err}");
    let cmd = std::fs::read(out_dir.join("Windows/System32/cmd.exe")).unwrap();
    let want = run(&store, &["cat", "\\Windows\\System32\\cmd.exe"]).stdout;
    assert!(cmd == want, "cmd.exe was extracted whole");
}

/// A read of a file's data that panics outside the NTFS layer's own wall (the debug-build
/// switch `WINBUNDLE_INJECT_PANIC=file-read`): `cat` ends with a damaged-volume error naming the
/// path (exit 3), as `extract` lists it, never `InternalError` and never the panic's output.
#[cfg(debug_assertions)]
#[test]
fn a_panic_while_cat_reads_a_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let img = common::fixture("gpt-disk.img", dir.path());
    let store = bundle_of(&img, dir.path());
    let with_panic = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"))
            .env("WINBUNDLE_INJECT_PANIC", "file-read")
            .args(args)
            .args([
                "--local-store",
                store.to_str().unwrap(),
                "--bucket",
                "test-bucket",
                "--prefix",
                "p",
            ])
            .output()
            .unwrap();
        text(&out)
    };
    let (code, out, err) = with_panic(&["cat", "\\Windows\\System32\\cmd.exe"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(out.is_empty());
    assert!(
        err.contains("\\Windows\\System32\\cmd.exe") && err.contains("damaged structure"),
        "{err}"
    );
    assert!(!err.contains("InternalError") && !err.contains("panicked at"), "{err}");
    let out_dir = dir.path().join("out");
    let (code, _, err) = with_panic(&[
        "extract",
        "\\Windows\\System32\\cmd.exe",
        "--output",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("not extracted: \\Windows\\System32\\cmd.exe"), "{err}");
}

/// Peak resident memory of `winbundle ARGS` on bundle `p` of `store`, from the kernel's account
/// of the child (wait4): (exit status, stderr, peak RSS in bytes).
#[cfg(target_os = "linux")]
fn peak_rss(store: &Path, args: &[&str]) -> (Option<i32>, String, u64) {
    use std::io::Read;
    #[allow(clippy::zombie_processes)] // reaped below by wait4, which gives its rusage
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"))
        .args(args)
        .args([
            "--local-store",
            store.to_str().unwrap(),
            "--bucket",
            "test-bucket",
            "--prefix",
            "p",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let (mut status, mut usage) = (0i32, unsafe { std::mem::zeroed::<libc::rusage>() });
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (code, reader.join().unwrap(), usage.ru_maxrss as u64 * 1024)
}

/// Issue 25.14: `ls -R` of a bundle whose directory index loops (every node entry of `\many`'s
/// index blocks points at its first block), and of one whose folder contains itself, stays
/// within the reader's documented memory (README "Reading bundles: limits": the formula of a
/// small bundle, well under 100 MiB, plus the chunk cache of at most 128 MiB); the looping
/// index once grew `ls` to 744 MB before a read budget stopped it.
#[cfg(target_os = "linux")]
#[test]
fn ls_of_looping_indexes_and_folder_cycles_stays_within_its_memory_bound() {
    const BOUND: u64 = 256 << 20;
    let dir = tempfile::tempdir().unwrap();
    let img = common::fixture("attrlist-volume.img", dir.path());
    let mut patched = 0;
    edit_many_entries(&img, &mut |b, e| {
        let len = u16::from_le_bytes([b[e + 8], b[e + 9]]) as usize;
        if b[e + 12] & 1 == 1 {
            b[e + len - 8..e + len].copy_from_slice(&0u64.to_le_bytes());
            patched += 1;
        }
    });
    assert!(patched > 0, "\\many's index has node entries");
    let store = bundle_of(&img, dir.path());
    let (code, err, rss) = peak_rss(&store, &["ls", "--recursive"]);
    eprintln!("ls -R of a looping index: peak RSS {} MiB", rss >> 20);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("\\many"), "{err}");
    assert!(rss < BOUND, "ls -R peaked at {rss} bytes");

    let dir = tempfile::tempdir().unwrap();
    let img = common::fixture("attrlist-volume.img", dir.path());
    let many = edit_many_entries(&img, &mut |_, _| {});
    edit_many_entries(&img, &mut |b, e| b[e..e + 6].copy_from_slice(&many.to_le_bytes()[..6]));
    let store = bundle_of(&img, dir.path());
    let (code, err, rss) = peak_rss(&store, &["ls", "--recursive"]);
    eprintln!("ls -R of a folder cycle: peak RSS {} MiB", rss >> 20);
    assert_eq!(code, Some(3), "{err}");
    assert!(rss < BOUND, "ls -R peaked at {rss} bytes");
}
