//! Reparse points as Windows writes them (testdata/reparse-volume.img, made by
//! testdata/make-reparse-fixture.sh through ntfs-3g's `system.ntfs_reparse_data`): `ls` names
//! each kind with its target, tag or algorithm; `extract` makes links (never followed), copies
//! or skips them as `--links` says, extracts cloud files whose data is on the volume, and lists
//! every other reparse point as not extracted, never writing an empty or zeroed file for it;
//! `cat` refuses them with the reason.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use serde_json::Value;

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: String,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let src = fixture("reparse-volume.img", &root);
    let store = root.join("store");
    let req = request(&src, "r");
    bundle(&req, &store).result.unwrap();
    Setup {
        _dir: dir,
        store: store.to_str().unwrap().to_string(),
        root,
    }
}

impl Setup {
    fn run(&self, cmd: &str, extra: &[&str]) -> Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"))
            .args([
                cmd,
                "--bucket",
                "test-bucket",
                "--prefix",
                "r",
                "--local-store",
                &self.store,
            ])
            .args(extra)
            .output()
            .unwrap()
    }
}

/// What the fixture script wrote into the WOF files: size and SHA-256 of the data.
fn expected() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/reparse-volume.expected.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn ls_names_every_kind_with_its_target_tag_or_algorithm() {
    let s = setup();
    let o = s.run("ls", &["--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let by_name = |n: &str| -> Value {
        v["Entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["Name"] == n)
            .unwrap_or_else(|| panic!("{n} not listed"))
            .clone()
    };
    let expect = [
        ("rel-link.txt", "symlink", "SYMLINK", Some("Target\\file.txt")),
        ("abs-link.txt", "symlink", "SYMLINK", Some("\\??\\C:\\Target\\file.txt")),
        ("other-drive.txt", "symlink", "SYMLINK", Some("\\??\\D:\\data\\x.txt")),
        ("junction", "junction", "MOUNT_POINT", Some("\\??\\C:\\Target\\dir")),
        (
            "mountpoint",
            "mount-point",
            "MOUNT_POINT",
            Some("\\??\\Volume{0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0}\\"),
        ),
        ("wof-xpress4k.txt", "file", "WOF", None),
        ("wof-xpress16k.txt", "file", "WOF", None),
        ("wof-lzx.txt", "file", "WOF", None),
        ("cloud-only.txt", "file", "CLOUD_6", None),
        ("cloud-local.txt", "file", "CLOUD_6", None),
        ("dedup.bin", "file", "DEDUP", None),
        ("appexec.exe", "reparse", "APPEXECLINK", None),
        ("Target", "directory", "", None),
    ];
    for (name, ty, tag, target) in expect {
        let e = by_name(name);
        assert_eq!(e["Type"], ty, "{name}: {e}");
        if tag.is_empty() {
            assert_eq!(e["Reparse"], Value::Null, "{name}");
        } else {
            assert_eq!(e["Reparse"]["Tag"], tag, "{name}: {e}");
        }
        if let Some(t) = target {
            assert_eq!(e["Reparse"]["Target"], t, "{name}");
        }
    }
    assert_eq!(by_name("rel-link.txt")["Reparse"]["Relative"], true);
    assert_eq!(by_name("abs-link.txt")["Reparse"]["PrintName"], "C:\\Target\\file.txt");
    let expected = expected();
    for (name, algo) in [
        ("wof-xpress4k.txt", "XPRESS4K"),
        ("wof-xpress16k.txt", "XPRESS16K"),
        ("wof-lzx.txt", "LZX"),
        ("wof-lzx-code.exe", "LZX"),
        ("wof-xpress8k-code.exe", "XPRESS8K"),
    ] {
        let e = by_name(name);
        assert_eq!(e["Reparse"]["Algorithm"], algo);
        assert_eq!(e["Reparse"]["UncompressedSize"], expected[name]["size"], "{name}");
        assert_eq!(e["Streams"][0]["Name"], "WofCompressedData");
    }
    assert_eq!(by_name("cloud-only.txt")["Reparse"]["DataOnVolume"], false);
    assert_eq!(by_name("cloud-local.txt")["Reparse"]["DataOnVolume"], true);
    // The text listing says the same.
    let o = s.run("ls", &["--long"]);
    let text = String::from_utf8_lossy(&o.stdout);
    for line in [
        "junction -> C:\\Target\\dir",
        "rel-link.txt -> Target\\file.txt",
        "wof-lzx.txt  [WOF LZX]",
        "cloud-only.txt  [CLOUD_6 placeholder, cloud-only]",
        "dedup.bin  [deduplicated]",
        "appexec.exe  [reparse point APPEXECLINK]",
    ] {
        assert!(text.contains(line), "{line:?} not in:\n{text}");
    }
}

/// `extract \ --links MODE` into a new folder: (its JSON, the folder).
fn extract(s: &Setup, mode: &str) -> (Value, PathBuf) {
    let out = s.root.join(format!("out-{mode}"));
    let o = s.run(
        "extract",
        &["\\", "-o", out.to_str().unwrap(), "--links", mode, "--json"],
    );
    // Reparse points it cannot read are not extracted: exit 1, each listed.
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    (serde_json::from_slice(&o.stdout).unwrap(), out)
}

fn not_extracted(v: &Value) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = v["Failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["Path"].as_str().unwrap().into(), x["Reason"].as_str().unwrap().into()))
        .collect();
    f.sort();
    f
}

/// Whether this system makes symbolic links: Windows does (elevated or in Developer Mode);
/// Wine 8's CreateSymbolicLinkW reports success and makes none.
#[cfg(windows)]
fn makes_links(dir: &Path) -> bool {
    let (target, link) = (dir.join("probe-target"), dir.join("probe-link"));
    std::fs::write(&target, b"x").unwrap();
    let _ = std::os::windows::fs::symlink_file(&target, &link);
    std::fs::read_link(&link).is_ok()
}

#[test]
fn extract_makes_links_never_writes_unreadable_reparse_points_and_lists_them() {
    let s = setup();
    let (v, out) = extract(&s, "link");
    let failed = not_extracted(&v);
    #[cfg(windows)]
    let failed = if makes_links(&s.root) {
        failed
    } else {
        // Wine: each link is listed as not made, with the reason, and not counted.
        let (links, rest): (Vec<_>, Vec<_>) = failed.into_iter().partition(|(_, why)| why.contains("none is there"));
        assert_eq!(links.len(), 5, "{links:?}");
        assert_eq!(v["Links"], 0, "{v}");
        rest
    };
    let names: Vec<&str> = failed.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["\\appexec.exe", "\\cloud-only.txt", "\\dedup.bin"]);
    for (p, why) in &failed {
        let word = match p.as_str() {
            "\\appexec.exe" => "APPEXECLINK",
            "\\cloud-only.txt" => "cloud-only",
            "\\dedup.bin" => "DEDUP",
            _ => unreachable!(),
        };
        assert!(why.contains(word), "{p}: {why}");
        // Never an empty or zeroed file in its place.
        assert!(std::fs::symlink_metadata(out.join(&p[1..])).is_err(), "{p} was written");
    }
    #[cfg(windows)]
    let links_made = makes_links(&s.root);
    #[cfg(not(windows))]
    let links_made = true;
    if links_made {
        assert_eq!(v["Links"], 5, "{v}");
    }
    // The WOF files are decompressed (XPRESS and LZX): their data is what wimlib compressed.
    let expected = expected();
    let names: Vec<String> = expected.as_object().unwrap().keys().cloned().collect();
    assert_eq!(names.len(), 5);
    for name in &names {
        let name = name.as_str();
        let got = std::fs::read(out.join(name)).unwrap();
        assert_eq!(got.len() as u64, expected[name]["size"].as_u64().unwrap());
        assert_eq!(
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&got)),
            expected[name]["sha256"],
            "{name}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(out.join("cloud-local.txt")).unwrap(),
        "a cloud file whose data is here\n"
    );
    #[cfg(unix)]
    {
        let out_abs = std::path::absolute(&out).unwrap();
        let link = |n: &str| std::fs::read_link(out.join(n)).unwrap();
        assert_eq!(link("rel-link.txt"), PathBuf::from("Target/file.txt"));
        assert_eq!(link("abs-link.txt"), out_abs.join("Target/file.txt"));
        assert_eq!(link("junction"), out_abs.join("Target/dir"));
        assert_eq!(link("other-drive.txt"), PathBuf::from("\\??\\D:\\data\\x.txt"));
        // The absolute link leads to the extracted target, the junction into its folder.
        assert_eq!(
            std::fs::read_to_string(out.join("abs-link.txt")).unwrap(),
            "the file the links point at\n"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("junction/inner.txt")).unwrap(),
            "inside the junction's target\n"
        );
    }
    #[cfg(windows)]
    if makes_links(&s.root) {
        let out_abs = std::path::absolute(&out).unwrap();
        let link = |n: &str| std::fs::read_link(out.join(n)).unwrap();
        assert_eq!(link("rel-link.txt"), PathBuf::from("Target\\file.txt"));
        assert_eq!(link("abs-link.txt"), out_abs.join("Target\\file.txt"));
        assert_eq!(link("junction"), out_abs.join("Target\\dir"));
        assert_eq!(
            std::fs::read_to_string(out.join("abs-link.txt")).unwrap(),
            "the file the links point at\n"
        );
    }
    // Again with --force: the links are replaced, nothing is written through them.
    let o = s.run("extract", &["\\", "-o", out.to_str().unwrap(), "--force", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        std::fs::read_to_string(out.join("Target/file.txt")).unwrap(),
        "the file the links point at\n"
    );
}

#[test]
fn links_can_be_skipped_or_copied() {
    let s = setup();
    let (v, out) = extract(&s, "skip");
    assert_eq!(v["Links"], 0);
    let skipped: Vec<&str> = v["Skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["Path"].as_str().unwrap())
        .collect();
    assert_eq!(skipped.len(), 5, "{v}");
    assert!(std::fs::symlink_metadata(out.join("junction")).is_err());

    let (v, out) = extract(&s, "copy");
    for n in ["abs-link.txt", "rel-link.txt"] {
        let m = std::fs::symlink_metadata(out.join(n)).unwrap();
        assert!(m.is_file(), "{n} is a copy, not a link");
        assert_eq!(
            std::fs::read_to_string(out.join(n)).unwrap(),
            "the file the links point at\n"
        );
    }
    // A folder's link, or a target on another volume, is not copied: listed with why.
    let failed = not_extracted(&v);
    for p in ["\\junction", "\\mountpoint", "\\other-drive.txt"] {
        let why = &failed
            .iter()
            .find(|(f, _)| f == p)
            .unwrap_or_else(|| panic!("{p}: {failed:?}"))
            .1;
        assert!(why.contains("--links copy copies only"), "{why}");
    }
}

#[test]
fn cat_refuses_links_and_unreadable_reparse_points_with_the_reason() {
    let s = setup();
    for (p, words) in [
        ("\\abs-link.txt", "a symlink -> C:\\Target\\file.txt"),
        ("\\junction", "a junction"),
        ("\\cloud-only.txt", "cloud-only"),
        ("\\dedup.bin", "DEDUP"),
        ("\\appexec.exe", "APPEXECLINK"),
    ] {
        let o = s.run("cat", &[p]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_ne!(o.status.code(), Some(0), "{p}");
        assert!(err.contains(words), "{p}: {err}");
        assert!(o.stdout.is_empty(), "{p}");
    }
    let o = s.run("cat", &["\\cloud-local.txt"]);
    assert_eq!(o.stdout, b"a cloud file whose data is here\n");
    // WOF files read as their data (wimlib compressed it: XPRESS 4K, 8K, 16K, LZX).
    for (name, want) in expected().as_object().unwrap() {
        let o = s.run("cat", &[&format!("\\{name}")]);
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&o.stdout)),
            want["sha256"],
            "{name}"
        );
    }
}

/// Each entry's security descriptor as ntfs-3g read it from the fixture's `$Secure`.
fn acls() -> std::collections::BTreeMap<String, Vec<u8>> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/reparse-volume.acls.json");
    let v: std::collections::BTreeMap<String, String> = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    v.into_iter().map(|(k, h)| (k, hex::decode(h).unwrap())).collect()
}

/// What `--acls` gives a descriptor: every file and folder extracted (links are made, not
/// given one; reparse points it cannot read are not extracted; OUTPUT itself, which `\`
/// stands for, keeps its own).
fn secured(v: &Value) -> Vec<(String, Vec<u8>)> {
    let links = [
        "\\rel-link.txt",
        "\\abs-link.txt",
        "\\other-drive.txt",
        "\\junction",
        "\\mountpoint",
    ];
    let failed: Vec<String> = not_extracted(v).into_iter().map(|(p, _)| p).collect();
    let s: Vec<(String, Vec<u8>)> = acls()
        .into_iter()
        .filter(|(p, _)| p != "\\" && !links.contains(&p.as_str()) && !failed.contains(p))
        .collect();
    // The distinct ones the fixture gave: a protected DACL with a user owner, inheritable
    // entries, an audit list, a null DACL.
    for p in [
        "\\Target\\file.txt",
        "\\Target\\dir",
        "\\Target\\dir\\inner.txt",
        "\\cloud-local.txt",
    ] {
        assert!(s.iter().any(|(q, _)| q == p), "{p} is checked");
    }
    s
}

fn extract_acls(s: &Setup, out: &Path) -> Value {
    let o = s.run("extract", &["\\", "-o", out.to_str().unwrap(), "--acls", "--json"]);
    // The three reparse points it cannot read: exit 1, and nothing else.
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["AclsNotApplied"], serde_json::json!([]), "{v}");
    assert_eq!(v["AclNotes"], serde_json::json!([]), "{v}");
    // (Under Wine the links too: it makes none; see makes_links.)
    let unreadable = not_extracted(&v)
        .into_iter()
        .filter(|(_, why)| !why.contains("none is there"));
    assert_eq!(unreadable.count(), 3, "{v}");
    v
}

/// An NTFS volume made by mkntfs and mounted by ntfs-3g, unmounted when dropped.
#[cfg(target_os = "linux")]
struct Mounted(PathBuf);

#[cfg(target_os = "linux")]
impl Mounted {
    fn new(dir: &Path) -> Self {
        let img = dir.join("target.img");
        std::fs::File::create(&img).unwrap().set_len(32 << 20).unwrap();
        let o = std::process::Command::new("mkntfs")
            .args(["-F", "-Q", "-q"])
            .arg(&img)
            .output()
            .expect("mkntfs (Debian package ntfs-3g) must be installed");
        assert!(o.status.success(), "mkntfs: {}", String::from_utf8_lossy(&o.stderr));
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let o = std::process::Command::new("ntfs-3g")
            .arg(&img)
            .arg(&mnt)
            .output()
            .expect("ntfs-3g (Debian package ntfs-3g) must be installed");
        assert!(
            o.status.success(),
            "ntfs-3g mount (needs root and /dev/fuse): {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Mounted(mnt)
    }
}

#[cfg(target_os = "linux")]
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[cfg(target_os = "linux")]
#[test]
fn acls_land_on_an_ntfs_3g_volume_as_the_source_has_them_and_are_refused_elsewhere() {
    let s = setup();
    // A file system that cannot hold them: refused before anything is written.
    let plain = s.root.join("plain");
    let o = s.run("extract", &["\\", "-o", plain.to_str().unwrap(), "--acls"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("system.ntfs_acl") && err.contains("ntfs-3g"), "{err}");
    assert_eq!(std::fs::read_dir(&plain).unwrap().count(), 0, "nothing was extracted");

    let m = Mounted::new(&s.root);
    let out = m.0.join("x");
    let v = extract_acls(&s, &out);
    for (p, want) in secured(&v) {
        let local = out.join(p.trim_start_matches('\\').replace('\\', "/"));
        let o = std::process::Command::new("getfattr")
            .args(["-h", "--only-values", "-n", "system.ntfs_acl"])
            .arg(&local)
            .output()
            .expect("getfattr (Debian package attr) must be installed");
        assert!(o.status.success(), "{p}: {}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            hex::encode(&o.stdout),
            hex::encode(&want),
            "{p}: the descriptor ntfs-3g reads back"
        );
    }
}

/// Owner, group, SACL and DACL of a self-relative descriptor, each as its bytes (the layout
/// around them is the writer's choice).
#[cfg(windows)]
fn parts(d: &[u8]) -> [Option<Vec<u8>>; 4] {
    let at = |o: usize| u32::from_le_bytes(d[o..o + 4].try_into().unwrap()) as usize;
    let sid = |o: usize| (o != 0).then(|| d[o..o + 8 + 4 * usize::from(d[o + 1])].to_vec());
    let acl = |o: usize| (o != 0).then(|| d[o..o + usize::from(u16::from_le_bytes([d[o + 2], d[o + 3]]))].to_vec());
    [sid(at(4)), sid(at(8)), acl(at(12)), acl(at(16))]
}

#[cfg(windows)]
fn wide(p: &Path) -> Vec<u16> {
    use std::os::windows::ffi::OsStrExt;
    p.as_os_str().encode_wide().chain([0]).collect()
}

/// Whether this system keeps the descriptor a file is given: Windows does; upstream Wine maps
/// a DACL to Unix mode bits and keeps nothing else (wine-staging keeps them in an xattr).
#[cfg(windows)]
fn keeps_descriptors(dir: &Path) -> bool {
    use windows_sys::Win32::Security::{GetFileSecurityW, SetFileSecurityW};
    let probe = dir.join("probe");
    std::fs::write(&probe, b"").unwrap();
    // O:SY (S-1-5-18), self-relative, nothing else.
    let mut sd = vec![1u8, 0, 0x00, 0x80, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    sd.extend_from_slice(&[1, 1, 0, 0, 0, 0, 0, 5, 18, 0, 0, 0]);
    let w = wide(&probe);
    let mut got = vec![0u8; 4096];
    let mut need = 0u32;
    // SAFETY: NUL-terminated path; descriptor and buffer are live allocations of the sizes given.
    unsafe {
        SetFileSecurityW(w.as_ptr(), 1, sd.as_mut_ptr().cast());
        if GetFileSecurityW(w.as_ptr(), 1, got.as_mut_ptr().cast(), got.len() as u32, &mut need) == 0 {
            return false;
        }
    }
    parts(&got)[0].as_deref() == Some(&sd[20..])
}

#[cfg(windows)]
#[test]
fn acls_are_applied_with_set_file_security() {
    use windows_sys::Win32::Security::GetFileSecurityW;
    let s = setup();
    let out = s.root.join("out-acls");
    // Every call succeeded: nothing is listed as not applied.
    let v = extract_acls(&s, &out);
    if !keeps_descriptors(&s.root) {
        println!(
            "this system does not keep security descriptors (Wine): compared on Windows, and on Linux through ntfs-3g"
        );
        return;
    }
    for (p, want) in secured(&v) {
        let local = out.join(p.trim_start_matches('\\'));
        let wide = wide(&local);
        // OWNER, GROUP, DACL, and SACL when the source has one.
        let sacl = u16::from_le_bytes([want[2], want[3]]) & 0x10 != 0;
        let what = 1 | 2 | 4 | if sacl { 8 } else { 0 };
        let mut got = vec![0u8; 64 << 10];
        let mut need = 0u32;
        // SAFETY: a NUL-terminated path; the buffer and its length are one allocation.
        let ok = unsafe {
            GetFileSecurityW(
                wide.as_ptr(),
                what,
                got.as_mut_ptr().cast(),
                got.len() as u32,
                &mut need,
            )
        };
        assert_ne!(ok, 0, "{p}: GetFileSecurityW: {}", std::io::Error::last_os_error());
        let control = |d: &[u8]| u16::from_le_bytes([d[2], d[3]]) & 0x1414;
        assert_eq!(
            control(&got),
            control(&want),
            "{p}: DACL/SACL present, protected, auto-inherited"
        );
        let (g, w) = (parts(&got), parts(&want));
        assert_eq!(g[0], w[0], "{p}: owner");
        assert_eq!(g[1], w[1], "{p}: group");
        assert_eq!(g[3], w[3], "{p}: DACL");
        if sacl {
            assert_eq!(g[2], w[2], "{p}: SACL");
        }
    }
}
