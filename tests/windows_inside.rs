//! The Windows inside a volume, read from its own registry: volumes made by
//! testdata/make-windows-volume.sh (hives written by hivexregedit, an independent writer, into
//! ntfs-3g volumes). Every fact `inspect` reads is checked against hivexget (an independent
//! reader) on the same hive; the page files the registry names and the shadow-copy storage are
//! left out by default, with their reasons, and kept on request; a missing, damaged or dirty
//! hive changes nothing but a note; `--require-ec2-ready` refuses what will not boot.
//!
//! Linux only: the volumes are made through ntfs-3g (FUSE; root), the hives by hivex.
#![cfg(target_os = "linux")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn make(dir: &Path, variant: &str) -> PathBuf {
    let img = dir.join(format!("{variant}.img"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/make-windows-volume.sh");
    let o = Command::new("bash")
        .arg(script)
        .arg(&img)
        .arg(variant)
        .output()
        .expect("bash runs");
    assert!(
        o.status.success(),
        "make-windows-volume.sh {variant} (needs root, FUSE, ntfs-3g and libwin-hivex-perl): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    img
}

fn winbundle(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_winbundle"))
        .args(args)
        .output()
        .unwrap()
}

/// Bundles `img` into the local store `dir/store`, under `prefix` (task files in `dir/tasks`).
fn bundle(dir: &Path, img: &Path, prefix: &str, extra: &[&str]) -> Output {
    let tasks = dir.join("tasks");
    let mut args = vec![
        "bundle-instance",
        img.to_str().unwrap(),
        "--state-dir",
        tasks.to_str().unwrap(),
    ];
    args.extend(extra);
    common::cli_local_prefix(&dir.join("store"), prefix, &args)
}

fn inspect(img: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["inspect", img.to_str().unwrap(), "--json"];
    args.extend(extra);
    let o = winbundle(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A value as hivexget prints it (strings as they are, DWORDs in decimal).
fn hivexget(hive: &Path, key: &str, name: &str) -> String {
    let o = Command::new("hivexget")
        .arg(hive)
        .arg(key)
        .arg(name)
        .output()
        .expect("hivexget (Debian package libhivex-bin) must be installed");
    assert!(
        o.status.success(),
        "hivexget {key} {name}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim_end().to_string()
}

fn side(img: &Path, hive: &str) -> PathBuf {
    PathBuf::from(format!("{}.{hive}", img.display()))
}

/// What winbundle read equals what hivexget reads from the same hives.
fn same_as_hivexget(img: &Path, w: &Value) {
    let (system, software) = (side(img, "SYSTEM"), side(img, "SOFTWARE"));
    let cv = "\\Microsoft\\Windows NT\\CurrentVersion";
    for (field, name) in [
        ("product_name", "ProductName"),
        ("edition", "EditionID"),
        ("display_version", "DisplayVersion"),
        ("build", "CurrentBuild"),
        ("installation_type", "InstallationType"),
    ] {
        assert_eq!(w[field], hivexget(&software, cv, name).as_str(), "{field}");
    }
    assert_eq!(w["ubr"].to_string(), hivexget(&software, cv, "UBR"), "ubr");
    let select = hivexget(&system, "\\Select", "Current");
    assert_eq!(w["control_set"].to_string(), select, "control set");
    let cs = format!("\\ControlSet{:03}", select.parse::<u32>().unwrap());
    assert_eq!(
        w["computer_name"],
        hivexget(
            &system,
            &format!("{cs}\\Control\\ComputerName\\ComputerName"),
            "ComputerName"
        )
        .as_str()
    );
    assert_eq!(
        w["architecture"],
        hivexget(
            &system,
            &format!("{cs}\\Control\\Session Manager\\Environment"),
            "PROCESSOR_ARCHITECTURE"
        )
        .as_str()
    );
    let paging = hivexget(
        &system,
        &format!("{cs}\\Control\\Session Manager\\Memory Management"),
        "PagingFiles",
    );
    let named: Vec<&str> = w["page_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["registry"].as_str().unwrap())
        .collect();
    for entry in paging.lines() {
        assert!(named.contains(&entry), "{entry} in {named:?}");
    }
}

fn exclusions(v: &Value) -> Vec<(String, String)> {
    v["excluded_files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["found"] == true)
        .map(|x| {
            (
                x["path"].as_str().unwrap().to_string(),
                x["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

const CATALOG: &str = "\\System Volume Information\\{3808876b-c176-4e48-b7ae-04046e6cc752}";
const DIFF_AREA: &str =
    "\\System Volume Information\\{5c1a5f2e-8d3b-11ee-9a7a-0800200c9a66}{3808876b-c176-4e48-b7ae-04046e6cc752}";

#[test]
fn a_server_is_named_found_ready_for_nitro_and_its_page_files_and_shadow_copies_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let img = make(dir.path(), "server");
    let v = inspect(&img, &[]);
    let w = &v["windows"];
    same_as_hivexget(&img, w);
    assert_eq!(w["product_name"], "Windows Server 2022 Datacenter");
    assert_eq!(w["last_shutdown"], "2024-01-17T21:20:00Z");
    assert_eq!(w["notes"], serde_json::json!([]));
    // EC2: ENA, AWS NVMe and EC2Launch v2 are there; no PV drivers.
    let ec2 = &w["ec2"];
    assert_eq!(ec2["ready"], true);
    assert_eq!(ec2["launch_agent"], "EC2Launch v2");
    assert_eq!(ec2["verdicts"][0]["family"], "nitro");
    assert_eq!(ec2["verdicts"][0]["boots"], true);
    assert_eq!(ec2["verdicts"][1]["boots"], false);
    assert!(ec2["verdicts"][1]["missing"][0].as_str().unwrap().contains("xenvbd"));
    // Page files: two on this volume, one on D: said to be elsewhere.
    let pages = w["page_files"].as_array().unwrap();
    assert_eq!(pages.len(), 3, "{pages:?}");
    assert_eq!(pages[2]["note"], "on drive D:, not on this volume (C:)");
    assert_eq!(
        exclusions(&v),
        [
            ("\\pagefile.sys".to_string(), "default".to_string()),
            ("\\Temp\\pagefile2.sys".into(), "registry".into()),
            (CATALOG.into(), "shadow-copies".into()),
            (DIFF_AREA.into(), "shadow-copies".into()),
        ]
    );
    // Kept on request.
    let kept = inspect(&img, &["--keep-shadow-copies"]);
    assert_eq!(exclusions(&kept).len(), 2);
    assert_eq!(exclusions(&inspect(&img, &["--no-default-excludes"])).len(), 0);

    // A bundle: the same facts in its manifest; the left-out files are there, their contents not.
    let store = dir.path().join("store");
    let o = bundle(dir.path(), &img, "w", &["--require-ec2-ready", "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(store.join("test-bucket/w.manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["windows"], *w);
    let o = common::cli_local_prefix(&store, "w", &["ls", "\\System Volume Information", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ls: Value = serde_json::from_slice(&o.stdout).unwrap();
    let excluded: Vec<(&str, bool)> = ls["Entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["Name"].as_str().unwrap(), e["Excluded"] == true))
        .collect();
    assert!(excluded.contains(&("tracking.log", false)), "{excluded:?}");
    assert!(
        excluded.contains(&("{3808876b-c176-4e48-b7ae-04046e6cc752}", true)),
        "{excluded:?}"
    );
}

#[test]
fn a_client_without_ec2_drivers_is_not_ready_and_require_ec2_ready_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let img = make(dir.path(), "client");
    let v = inspect(&img, &[]);
    let w = &v["windows"];
    same_as_hivexget(&img, w);
    assert_eq!(w["installation_type"], "Client");
    let ec2 = &w["ec2"];
    assert_eq!(ec2["ready"], false);
    let nitro = ec2["verdicts"][0]["missing"].to_string();
    assert!(nitro.contains("ENA") && nitro.contains("NVMe"), "{nitro}");
    assert!(ec2["launch_agent"].is_null());
    // The registry's page file is the default one: listed once, as the default.
    assert_eq!(exclusions(&v), [("\\pagefile.sys".to_string(), "default".to_string())]);

    let store = dir.path().join("store");
    let o = bundle(dir.path(), &img, "c", &["--require-ec2-ready"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("NotEc2Ready") && err.contains("ENA"), "{err}");
    assert!(
        !store.join("test-bucket/c.manifest.json").exists(),
        "nothing was written"
    );
    // inspect refuses the same way (a CI gate before any upload).
    let o = winbundle(&["inspect", img.to_str().unwrap(), "--require-ec2-ready"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn a_missing_damaged_or_dirty_hive_is_a_note_and_the_bundle_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    for (variant, note) in [
        ("missing", "SYSTEM is not on the volume"),
        ("damaged", "SYSTEM not read"),
        ("dirty", "not written back cleanly"),
    ] {
        let img = make(dir.path(), variant);
        let v = inspect(&img, &[]);
        let w = &v["windows"];
        let notes = w["notes"].to_string();
        assert!(notes.contains(note), "{variant}: {notes}");
        // SOFTWARE still names it.
        assert_eq!(w["product_name"], "Windows Server 2022 Datacenter", "{variant}");
        if variant != "dirty" {
            // Without SYSTEM: no control set, no EC2 assessment, no registry page files.
            assert!(w["ec2"].is_null(), "{variant}");
            assert!(w["computer_name"].is_null(), "{variant}");
        }
        let o = bundle(dir.path(), &img, variant, &["-q"]);
        assert!(o.status.success(), "{variant}: {}", String::from_utf8_lossy(&o.stderr));
        // The shadow-copy storage is found without the registry.
        assert!(
            exclusions(&v).iter().any(|(p, r)| p == CATALOG && r == "shadow-copies"),
            "{variant}"
        );
    }
}

#[test]
fn files_not_to_snapshot_and_backup_are_resolved_listed_and_left_out_only_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let img = make(dir.path(), "server");
    let v = inspect(&img, &[]);
    let lists = v["windows"]["lists"].as_array().unwrap().clone();
    // Every pattern the registry holds (as hivexget reads it) is listed.
    let system = side(&img, "SYSTEM");
    for (list, name) in [
        ("FilesNotToSnapshot", "WUA"),
        ("FilesNotToSnapshot", "OutlookOST"),
        ("FilesNotToSnapshot", "FVE"),
        ("FilesNotToBackup", "Temporary Files"),
        ("FilesNotToBackup", "Internet Explorer"),
        ("FilesNotToBackup", "Other drive"),
        ("FilesNotToBackup", "Unknown"),
    ] {
        let raw = hivexget(
            &system,
            &format!("\\ControlSet001\\Control\\BackupRestore\\{list}"),
            name,
        );
        let e = lists
            .iter()
            .find(|e| e["list"] == list && e["name"] == name)
            .unwrap_or_else(|| panic!("{list} {name} listed"));
        assert_eq!(e["pattern"], raw.as_str(), "{name}");
    }
    let entry = |name: &str| lists.iter().find(|e| e["name"] == name).unwrap().clone();
    // %windir%\SoftwareDistribution\*.* /s: the whole folder (two files in it and below).
    assert_eq!(
        entry("WUA")["paths"],
        serde_json::json!(["\\Windows\\SoftwareDistribution"])
    );
    assert_eq!(entry("WUA")["files"], 2);
    assert_eq!(entry("WUA")["size"], (1 << 20) + 8192);
    // $UserProfile$ over both profiles of ProfileList; *.ost matches .OST, not .pst.
    assert_eq!(
        entry("OutlookOST")["paths"],
        serde_json::json!([
            "\\Users\\alice\\AppData\\Local\\Microsoft\\Outlook\\alice.ost",
            "\\Users\\bob\\AppData\\Local\\Microsoft\\Outlook\\bob.OST"
        ])
    );
    assert_eq!(entry("OutlookOST")["size"], 524288 + 262144);
    // %UserProfile%\index.dat /s: found below the profile, index.dat.keep not.
    assert_eq!(
        entry("Internet Explorer")["paths"],
        serde_json::json!(["\\Users\\alice\\deep\\er\\index.dat"])
    );
    assert_eq!(
        entry("Temporary Files")["paths"],
        serde_json::json!(["\\Windows\\Temp"])
    );
    assert!(
        entry("Other drive")["notes"][0]
            .as_str()
            .unwrap()
            .contains("another drive")
    );
    assert!(entry("Unknown")["notes"][0].as_str().unwrap().contains("does not know"));
    // Careless or hostile patterns: never \Windows or a profile whole, never the hives, never
    // a file that has another name (a hard link from System32) elsewhere.
    let careless: Vec<&Value> = lists.iter().filter(|e| e["name"] == "Careless").collect();
    assert_eq!(careless.len(), 4);
    let paths: Vec<&Value> = careless
        .iter()
        .flat_map(|e| e["paths"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(paths, [&serde_json::json!("\\ProgramData\\Cache\\blob.bin")]);
    let notes = serde_json::to_string(&careless).unwrap();
    for n in [
        "\\\\Windows: not left out whole",
        "\\\\Users\\\\alice: not left out whole",
        "config\\\\SYSTEM: not left out",
        "shared.dll: not left out: it has other names",
    ] {
        assert!(notes.contains(n), "{n} in {notes}");
    }
    // Not left out by default.
    assert!(!exclusions(&v).iter().any(|(_, r)| r == "windows-lists"));

    // With --exclude-windows-lists: left out with their reason, and a bundle shows them so.
    let store = dir.path().join("store");
    let o = bundle(dir.path(), &img, "l", &["--exclude-windows-lists", "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(store.join("test-bucket/l.manifest.json")).unwrap()).unwrap();
    let listed: Vec<String> = exclusions(&serde_json::json!({"excluded_files": manifest["excluded_files"]}))
        .into_iter()
        .filter(|(_, r)| r == "windows-lists")
        .map(|(p, _)| p)
        .collect();
    assert_eq!(listed.len(), 7, "{listed:?}");
    let o = common::cli_local_prefix(
        &store,
        "l",
        &["ls", "\\Users\\alice\\AppData\\Local\\Microsoft\\Outlook", "--json"],
    );
    let ls: Value = serde_json::from_slice(&o.stdout).unwrap();
    let flags: Vec<(&str, bool)> = ls["Entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["Name"].as_str().unwrap(), e["Excluded"] == true))
        .collect();
    assert_eq!(flags, [("alice.ost", true), ("alice.pst", false)]);
}

#[test]
fn a_dirty_hive_is_read_with_its_transaction_log_applied_as_regipy_applies_it() {
    let dir = tempfile::tempdir().unwrap();
    let img = make(dir.path(), "logged");
    let w = inspect(&img, &[])["windows"].clone();
    assert_eq!(w["notes"], serde_json::json!([]), "the log applies");
    // regipy (an independent reader and log replayer) on the same hive and log.
    let (hive, log) = (side(&img, "SYSTEM"), side(&img, "SYSTEM.LOG1"));
    let script = r#"
import shutil, sys
from regipy.recovery import apply_transaction_logs
from regipy.registry import RegistryHive
key = "\\ControlSet001\\Control\\ComputerName\\ComputerName"
shutil.copy(sys.argv[1], sys.argv[3])
apply_transaction_logs(sys.argv[3], sys.argv[2], restored_hive_path=sys.argv[3] + ".restored", verbose=False)
print(RegistryHive(sys.argv[1]).get_key(key).get_value("ComputerName"))
print(RegistryHive(sys.argv[3] + ".restored").get_key(key).get_value("ComputerName"))
"#;
    let o = Command::new("python3")
        .args(["-c", script])
        .arg(&hive)
        .arg(&log)
        .arg(dir.path().join("copy.SYSTEM"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "regipy (pip install regipy) must be installed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8(o.stdout).unwrap();
    let (base, replayed) = out.trim().split_once('\n').unwrap();
    assert_eq!(base, "WIN-EARLY-LOG", "the hive alone");
    assert_eq!(replayed, "WIN-AFTER-LOG", "with its log");
    assert_eq!(w["computer_name"], replayed);
}
