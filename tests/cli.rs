//! The winbundle binary: output shapes, exit statuses, messages.

mod common;

use common::*;

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// `winbundle bundle-instance SRC --bucket bkt --prefix p --local-store STORE EXTRA...`
fn bundle_cmd(src: &std::path::Path, store: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "bundle-instance",
        s(src),
        "--bucket",
        "bkt",
        "--prefix",
        "p",
        "--local-store",
        s(store),
    ];
    args.extend_from_slice(extra);
    winbundle(&args)
}

#[test]
fn inspect_json_describes_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("gpt-disk.img", dir.path());
    let o = winbundle(&["inspect", s(&src), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["partition_table"], "gpt");
    assert_eq!(v["partitions"].as_array().unwrap().len(), 4);
    assert_eq!(v["root"]["index"], 3);
    assert!(v["root"]["reason"].as_str().unwrap().contains("Windows\\System32"));
    assert_eq!(v["ntfs"]["cluster_size"], 4096);
    assert_eq!(v["excluded_files"][0]["path"], "\\pagefile.sys");
    assert_eq!(v["excluded_files"][0]["size"], 1 << 20);
    let read = v["bytes_to_read"].as_u64().unwrap();
    let allocated = v["allocated_bytes"].as_u64().unwrap();
    assert!(read < allocated, "{read} {allocated}");
    let excluded: Vec<u64> = v["excluded_partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["index"].as_u64().unwrap())
        .collect();
    assert_eq!(excluded, vec![1, 2, 4]);
    // The text form names the root and the left-out files.
    let o = winbundle(&["inspect", s(&src)]);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("ROOT (C:)") && text.contains("\\pagefile.sys"), "{text}");
}

#[test]
fn bundle_instance_prints_the_ec2_xml_document() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("bare-volume.img", dir.path());
    let store = dir.path().join("store");
    let o = winbundle(&[
        "bundle-instance",
        s(&src),
        "--bucket",
        "my-bucket",
        "--prefix",
        "winami",
        "--local-store",
        s(&store),
        "--instance-id",
        "i-1234567890abcdef0",
        "--output",
        "xml",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let xml = String::from_utf8(o.stdout).unwrap();
    let (fields, ns) = xml_fields(&xml);
    assert_eq!(ns.as_deref(), Some("http://ec2.amazonaws.com/doc/2016-11-15/"));
    let f = |k: &str| {
        fields
            .get(&format!("BundleInstanceResponse/{k}"))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(f("requestId").len(), 36);
    assert_eq!(f("bundleInstanceTask/instanceId"), "i-1234567890abcdef0");
    let id = f("bundleInstanceTask/bundleId");
    assert!(id.starts_with("bun-") && id.len() == 12, "{id}");
    assert_eq!(f("bundleInstanceTask/state"), "complete");
    assert_eq!(f("bundleInstanceTask/progress"), "100%");
    assert_eq!(f("bundleInstanceTask/storage/S3/bucket"), "my-bucket");
    assert_eq!(f("bundleInstanceTask/storage/S3/prefix"), "winami");
    for t in ["startTime", "updateTime"] {
        let v = f(&format!("bundleInstanceTask/{t}"));
        assert!(
            v.len() == 24 && v.ends_with('Z') && v.as_bytes()[19] == b'.',
            "{t} = {v}"
        );
    }
    assert!(store.join("my-bucket/winami.manifest.json").is_file());
}

#[test]
fn bundle_json_then_restore_to_stdout_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("mbr-disk.img", dir.path());
    let store = dir.path().join("store");
    let o = winbundle(&[
        "bundle-instance",
        s(&src),
        "--bucket",
        "bkt",
        "--prefix",
        "p/x",
        "--local-store",
        s(&store),
        "--chunk-size",
        "256K",
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let t = &v["BundleTask"];
    assert_eq!(t["State"], "complete");
    assert!(t["InstanceId"].as_str().unwrap().starts_with("i-"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("derived from the disk id"));
    assert_eq!(t["Storage"]["S3"]["Prefix"], "p/x");
    assert_eq!(v["Bundle"]["Chunks"], 128);
    let file = dir.path().join("r.img");
    let o = winbundle(&[
        "restore",
        "--bucket",
        "bkt",
        "--prefix",
        "p/x",
        "--local-store",
        s(&store),
        "--output",
        s(&file),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["VolumeSize"], 32 << 20);
    let o = winbundle(&[
        "restore",
        "--bucket",
        "bkt",
        "--prefix",
        "p/x",
        "--local-store",
        s(&store),
        "--output",
        "-",
        "--quiet",
    ]);
    assert!(o.status.success());
    assert_eq!(o.stdout, std::fs::read(&file).unwrap());
    let o = winbundle(&[
        "verify",
        "--bucket",
        "bkt",
        "--prefix",
        "p/x",
        "--local-store",
        s(&store),
        "--json",
    ]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["Valid"], true);
    // Tamper: verify exits 4 and names the object.
    let obj = store.join("bkt/p/x.image.zst");
    let mut data = std::fs::read(&obj).unwrap();
    let n = data.len() / 3;
    data[n] ^= 0xff;
    std::fs::write(&obj, data).unwrap();
    let o = winbundle(&[
        "verify",
        "--bucket",
        "bkt",
        "--prefix",
        "p/x",
        "--local-store",
        s(&store),
    ]);
    assert_eq!(o.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&o.stderr).contains("p/x.image.zst"));
}

#[test]
fn failures_exit_non_zero_with_a_failed_task_and_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let missing = dir.path().join("no-such.img");
    let o = winbundle(&[
        "bundle-instance",
        s(&missing),
        "--bucket",
        "bkt",
        "--prefix",
        "p",
        "--local-store",
        s(&store),
    ]);
    assert_eq!(o.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["BundleTask"]["State"], "failed");
    assert!(
        v["BundleTask"]["BundleTaskError"]["Message"]
            .as_str()
            .unwrap()
            .contains("no-such.img")
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("hint:"), "{err}");
    // Bad parameters are refused before any task exists (exit 2).
    let src = fixture("bare-volume.img", dir.path());
    let o = winbundle(&[
        "bundle-instance",
        s(&src),
        "--bucket",
        "Bad_Bucket",
        "--prefix",
        "p",
        "--local-store",
        s(&store),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid bucket name \"Bad_Bucket\""));
    assert!(o.stdout.is_empty());
    let o = bundle_cmd(&src, &store, &["--chunk-size", "1000"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--chunk-size"));
    // An ambiguous disk (two NTFS volumes, no Windows) asks for --partition.
    let o = bundle_cmd(&src, &store, &["--partition", "7"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--partition 7: no such partition"));
}

#[test]
fn describe_and_cancel_a_running_bundle_from_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("attrlist-volume.img", dir.path());
    let (store, state) = (dir.path().join("store"), dir.path().join("state"));
    // Slow settings so the bundle is still running when we look.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"))
        .args([
            "bundle-instance",
            s(&src),
            "--bucket",
            "bkt",
            "--prefix",
            "slow",
            "--local-store",
            s(&store),
        ])
        .args([
            "--zstd-level",
            "19",
            "--threads",
            "1",
            "--chunk-size",
            "64K",
            "--instance-id",
            "i-0123456789abcdef0",
        ])
        .args(["--state-dir", s(&state), "-q"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let describe = |extra: &[&str]| {
        let mut args = vec!["describe-bundle-tasks", "--state-dir", s(&state)];
        args.extend_from_slice(extra);
        let o = winbundle(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    let mut id = String::new();
    for _ in 0..200 {
        let v: serde_json::Value =
            serde_json::from_slice(&describe(&["--filters", "Name=state,Values=bundling"])).unwrap();
        if let Some(t) = v["BundleTasks"].as_array().and_then(|a| a.first()) {
            id = t["BundleId"].as_str().unwrap().to_string();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(id.starts_with("bun-"), "the bundle never showed up as bundling");
    // A second bundle of the same instance is refused.
    let o = winbundle(&[
        "bundle-instance",
        s(&src),
        "--bucket",
        "bkt",
        "--prefix",
        "other",
        "--local-store",
        s(&store),
        "--instance-id",
        "i-0123456789abcdef0",
        "--state-dir",
        s(&state),
        "-q",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("already being bundled by {id}")));
    // Filters: values ORed, filters ANDed, wildcards.
    let v: serde_json::Value = serde_json::from_slice(&describe(&[
        "--filters",
        "Name=instance-id,Values=i-nope,i-0123*",
        "--filters",
        "Name=s3-prefix,Values=slow",
    ]))
    .unwrap();
    assert_eq!(v["BundleTasks"].as_array().unwrap().len(), 1);
    let v: serde_json::Value =
        serde_json::from_slice(&describe(&["--filters", "Name=s3-bucket,Values=elsewhere"])).unwrap();
    assert!(v["BundleTasks"].as_array().unwrap().is_empty());
    // Cancel from this process.
    let o = winbundle(&["cancel-bundle-task", "--bundle-id", &id, "--state-dir", s(&state)]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["BundleTask"]["State"], "cancelling");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(!store.join("bkt/slow.manifest.json").exists());
    // The final state, in the EC2 XML document.
    let xml = String::from_utf8(describe(&["--bundle-ids", &id, "--output", "xml"])).unwrap();
    let (fields, _) = xml_fields(&xml);
    let f = |k: &str| {
        fields
            .get(&format!("DescribeBundleTasksResponse/bundleInstanceTasksSet/item/{k}"))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(f("bundleId"), id);
    assert_eq!(f("state"), "failed");
    assert_eq!(f("error/code"), "Cancelled");
    assert_eq!(f("storage/S3/prefix"), "slow");
    assert_eq!(
        fields.get("DescribeBundleTasksResponse/requestId").map(String::len),
        Some(36)
    );
    // Unknown ids.
    let o = winbundle(&[
        "cancel-bundle-task",
        "--bundle-id",
        "bun-00000000",
        "--state-dir",
        s(&state),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));
}

#[test]
fn ctrl_c_stops_a_bundle_waiting_on_a_server_that_stopped_answering() {
    if cfg!(windows) {
        eprintln!("skipped on Windows: it sends SIGINT (`kill -INT`); tests/wine.sh checks Ctrl-C there");
        return;
    }
    // An "S3 server" that takes connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("bare-volume.img", dir.path());
    let state = dir.path().join("state");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"))
        .args(["bundle-instance", s(&src), "--bucket", "bkt", "--prefix", "p"])
        .args(["--endpoint-url", &endpoint, "--state-dir", s(&state), "-q"])
        .env("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let sent = std::time::Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(sent.elapsed().as_secs() < 20, "still running 20 s after Ctrl-C");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("stopping") && err.contains("cancelled"), "{err}");
    assert!(!err.contains("secret"), "{err}");
    let o = winbundle(&["describe-bundle-tasks", "--state-dir", s(&state)]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["BundleTasks"][0]["State"], "failed", "{v}");
    assert_eq!(v["BundleTasks"][0]["BundleTaskError"]["Code"], "Cancelled", "{v}");
}

#[test]
fn a_bundle_killed_outright_resumes_from_its_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("attrlist-volume.img", dir.path());
    let store = dir.path().join("store");
    let partial = store.join("bkt/p.image.zst.partial");
    // Slow settings and small parts, so the run is killed with parts on disk.
    let slow = [
        "--zstd-level",
        "19",
        "--threads",
        "1",
        "--chunk-size",
        "64K",
        "--part-size",
        "1M",
        "-q",
    ];
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"))
        .args([
            "bundle-instance",
            s(&src),
            "--bucket",
            "bkt",
            "--prefix",
            "p",
            "--local-store",
            s(&store),
        ])
        .args(slow)
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while std::fs::metadata(&partial).map_or(0, |m| m.len()) < 1 << 20 {
        assert!(started.elapsed().as_secs() < 120, "no partial file grew");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL: no cleanup runs
    child.wait().unwrap();
    assert!(partial.is_file(), "a killed run leaves its partial file");
    assert!(!store.join("bkt/p.manifest.json").exists());

    // cleanup --dry-run lists it; --older-than keeps it (it is new).
    let listed = winbundle(&[
        "cleanup",
        "--bucket",
        "bkt",
        "--prefix",
        "p",
        "--local-store",
        s(&store),
        "--dry-run",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(v["Uploads"][0]["Key"], "p.image.zst", "{v}");
    assert_eq!(v["Uploads"][0]["Action"], "would abort (dry run)", "{v}");
    let kept = winbundle(&[
        "cleanup",
        "--bucket",
        "bkt",
        "--prefix",
        "p",
        "--local-store",
        s(&store),
        "--older-than",
        "1h",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&kept.stdout).unwrap();
    assert_eq!(v["Uploads"][0]["Action"], "kept (newer than --older-than)", "{v}");
    assert!(partial.is_file());

    // The next run picks it up.
    let o = bundle_cmd(&src, &store, &slow[..8]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = &v["Bundle"]["Resumed"];
    assert_eq!(r["ResumedFrom"], "p.image.zst.partial", "{v}");
    assert!(r["ReusedParts"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["ReplacedParts"], 0, "{r}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("resumed the interrupted upload"));
    assert!(!partial.exists());
    // The same bundle a clean run makes.
    let clean = dir.path().join("clean");
    let c = bundle_cmd(&src, &clean, &slow[..8]);
    let cv: serde_json::Value = serde_json::from_slice(&c.stdout).unwrap();
    assert_eq!(v["Bundle"]["BundleSha256"], cv["Bundle"]["BundleSha256"]);
    assert_eq!(
        std::fs::read(store.join("bkt/p.image.zst")).unwrap(),
        std::fs::read(clean.join("bkt/p.image.zst")).unwrap()
    );
    assert!(cv["Bundle"]["Resumed"]["ResumedFrom"].is_null());
}

#[test]
fn cleanup_removes_a_partial_file_and_refuses_bad_ages() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(store.join("bkt/x")).unwrap();
    std::fs::write(store.join("bkt/x/a.image.zst.partial"), b"half").unwrap();
    std::fs::write(store.join("bkt/other.image.zst.partial"), b"half").unwrap();
    let o = winbundle(&[
        "cleanup",
        "--bucket",
        "bkt",
        "--prefix",
        "x/",
        "--local-store",
        s(&store),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["Aborted"], 1, "{v}");
    assert!(!store.join("bkt/x/a.image.zst.partial").exists());
    assert!(
        store.join("bkt/other.image.zst.partial").exists(),
        "outside the prefix: untouched"
    );
    let bad = winbundle(&[
        "cleanup",
        "--bucket",
        "bkt",
        "--prefix",
        "x/",
        "--local-store",
        s(&store),
        "--older-than",
        "3 weeks",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("use s, m, h or d"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn errors_carry_their_code_and_a_json_line_for_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let o = winbundle(&[
        "describe-bundle-tasks",
        "--bundle-ids",
        "bun-00000000",
        "--state-dir",
        s(&state),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    let first = err.lines().next().unwrap();
    assert!(
        first.starts_with("winbundle: error (InvalidBundleID.NotFound): "),
        "{err}"
    );
    assert!(first.contains("bun-00000000"), "{err}");
    // --output json (the default): the last line of stderr is the error as JSON.
    let v: serde_json::Value = serde_json::from_str(err.lines().last().unwrap()).unwrap();
    assert_eq!(v["Error"]["Code"], "InvalidBundleID.NotFound", "{v}");
    assert!(v["Error"]["Message"].as_str().unwrap().contains("bun-00000000"), "{v}");
    // Text output: no JSON line.
    let o = winbundle(&[
        "describe-bundle-tasks",
        "--bundle-ids",
        "bun-00000000",
        "--state-dir",
        s(&state),
        "--output",
        "text",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("{\"Error\""), "{err}");
    // A bundle that fails: code in the message and the JSON line, with the hint.
    let o = bundle_cmd(&dir.path().join("missing.img"), &dir.path().join("store"), &[]);
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    let v: serde_json::Value = serde_json::from_str(err.lines().last().unwrap()).unwrap();
    assert!(
        err.starts_with(&format!(
            "winbundle: error ({}): ",
            v["Error"]["Code"].as_str().unwrap()
        )),
        "{err}"
    );
    assert!(v["Error"]["Hint"].as_str().is_some_and(|h| !h.is_empty()), "{v}");
    // A missing source is a source problem, not a malformed instance id.
    assert_eq!(v["Error"]["Code"], "InvalidSource", "{v}");
    // So is a folder given as the source.
    let o = bundle_cmd(dir.path(), &dir.path().join("store"), &[]);
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("error (InvalidSource)"));
}

/// Writes `bytes` at `offset` of the file at `path`.
fn patch(path: &std::path::Path, offset: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// Makes the NTFS volume at `offset` (of `len` bytes) look like BitLocker: its boot sector's OEM
/// name, and no NTFS backup boot sector at its end.
fn lock_with_bitlocker(path: &std::path::Path, offset: u64, len: u64) {
    patch(path, offset + 3, b"-FVE-FS-");
    patch(path, offset + len - 4096, &[0u8; 4096]);
}

#[test]
fn inspect_shows_a_disk_without_a_root_volume_and_exits_with_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("gpt-disk.img", dir.path());
    let v: serde_json::Value = serde_json::from_slice(&winbundle(&["inspect", s(&src), "--json"]).stdout).unwrap();
    let c = &v["partitions"][2];
    lock_with_bitlocker(&src, c["offset"].as_u64().unwrap(), c["size"].as_u64().unwrap());

    // Text: every partition, the file systems named, then why there is no root; status 3.
    let o = winbundle(&["inspect", s(&src)]);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(3), "{out}{err}");
    assert!(out.contains("Partition table: GPT"), "{out}");
    assert!(
        out.contains("BitLocker") && out.contains("NTFS") && out.contains("FAT"),
        "{out}"
    );
    assert!(
        out.contains("Root volume:     none") && out.contains("encrypted with BitLocker"),
        "{out}"
    );
    assert!(
        err.contains("manage-bde") && !err.contains("run `winbundle inspect"),
        "{err}"
    );

    // JSON: the same facts, root null, the problem with its code.
    let o = winbundle(&["inspect", s(&src), "--json"]);
    assert_eq!(o.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["root"].is_null(), "{v}");
    assert_eq!(v["partitions"].as_array().unwrap().len(), 4);
    assert_eq!(v["partitions"][2]["file_system"], "BitLocker");
    assert_eq!(v["root_problem"]["Code"], "NoRootVolume");
    assert!(
        v["root_problem"]["Hint"]
            .as_str()
            .unwrap()
            .contains("bundle-instance C:"),
        "{v}"
    );

    // bundle-instance refuses (it would otherwise take D:, the only readable NTFS volume).
    let store = dir.path().join("store");
    let o = bundle_cmd(&src, &store, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("encrypted with BitLocker") && err.contains("manage-bde"),
        "{err}"
    );
    assert!(!store.join("bkt/p.manifest.json").exists());

    // Naming the other NTFS volume is the user's call.
    let o = winbundle(&["inspect", s(&src), "--partition", "4"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn bare_volumes_of_other_file_systems_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let sector = |oem: &[u8], fat32: bool| {
        let mut b = vec![0u8; 1 << 20];
        b[0..3].copy_from_slice(&[0xeb, 0x58, 0x90]);
        b[3..11].copy_from_slice(oem);
        if fat32 {
            b[11..13].copy_from_slice(&512u16.to_le_bytes());
            b[13] = 8; // sectors per cluster
            b[14..16].copy_from_slice(&32u16.to_le_bytes()); // reserved sectors
            b[16] = 2; // FATs
            b[82..90].copy_from_slice(b"FAT32   ");
        }
        b[510] = 0x55;
        b[511] = 0xaa;
        b
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("FAT", sector(b"MSWIN4.1", true)),
        ("exFAT", sector(b"EXFAT   ", false)),
        ("ReFS", sector(b"ReFS\0\0\0\0", false)),
        ("BitLocker", sector(b"-FVE-FS-", false)),
    ];
    for (name, bytes) in cases {
        let img = dir.path().join(format!("{name}.img"));
        std::fs::write(&img, bytes).unwrap();
        let o = winbundle(&["inspect", s(&img), "--json"]);
        assert_eq!(
            o.status.code(),
            Some(3),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["partition_table"], "none", "{name}: {v}");
        assert_eq!(v["partitions"][0]["file_system"], name, "{name}: {v}");
        let problem = v["root_problem"]["Message"].as_str().unwrap();
        assert!(
            problem.contains(&format!("the whole image ({name}")),
            "{name}: {problem}"
        );
    }
    // A BitLocker-encrypted bare volume image: the hint says how to get a readable one.
    let img = fixture("bare-volume.img", dir.path());
    let len = std::fs::metadata(&img).unwrap().len();
    lock_with_bitlocker(&img, 0, len);
    let o = bundle_cmd(&img, &dir.path().join("store"), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("BitLocker") && err.contains("manage-bde -off"), "{err}");
}

#[test]
fn completions_and_man_pages_come_from_the_flags() {
    for (shell, mark) in [
        ("bash", "_winbundle()"),
        ("zsh", "#compdef winbundle"),
        ("fish", "complete -c winbundle"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let o = winbundle(&["completions", shell]);
        assert!(o.status.success(), "{shell}");
        let text = String::from_utf8(o.stdout).unwrap();
        assert!(text.contains(mark), "{shell}: {}", &text[..text.len().min(300)]);
        // Every command and a late-added flag are offered.
        assert!(
            text.contains("bundle-instance") && text.contains("incremental"),
            "{shell}"
        );
        if shell == "bash" && have("bash") {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("winbundle.bash");
            std::fs::write(&f, &text).unwrap();
            let ok = std::process::Command::new("bash").arg("-n").arg(&f).status().unwrap();
            assert!(ok.success(), "bash -n rejects the script");
        }
    }
    let o = winbundle(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2));

    let o = winbundle(&["man"]);
    assert!(o.status.success());
    let page = String::from_utf8(o.stdout).unwrap();
    assert!(
        page.contains(".TH winbundle 1") && page.contains("bundle\\-instance"),
        "{page}"
    );
    let dir = tempfile::tempdir().unwrap();
    let o = winbundle(&["man", "--out", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for page in [
        "winbundle.1",
        "winbundle-bundle-instance.1",
        "winbundle-restore.1",
        "winbundle-serve.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
    let text = std::fs::read_to_string(dir.path().join("winbundle-bundle-instance.1")).unwrap();
    assert!(
        text.contains("\\-\\-parent") && text.contains("\\-\\-snapshot"),
        "{text}"
    );
}

/// Issue 26.4: `--output-file PATH` on every command that prints a result document. The file
/// holds what standard output would have held (UTF-8; `extract` and `restore` write their JSON
/// document), and standard output stays empty. A path that cannot be written fails before any
/// work: exit status 1, the path named, what to do.
#[test]
fn output_file_holds_what_standard_output_would() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("gpt-disk.img", dir.path());
    let store = dir.path().join("store");
    let tasks = dir.path().join("tasks");
    let id = "i-0123456789abcdef0";
    let (src, store_s, tasks_s) = (s(&src).to_string(), s(&store).to_string(), s(&tasks).to_string());
    let o = winbundle(&[
        "bundle-instance",
        &src,
        "--bucket",
        "bkt",
        "--prefix",
        "p",
        "--local-store",
        &store_s,
        "--state-dir",
        &tasks_s,
        "--instance-id",
        id,
        "-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let bundle_id = v["BundleTask"]["BundleId"].as_str().unwrap().to_string();
    let out_dir = dir.path().join("extracted");
    let volume = dir.path().join("volume.img");
    let (out_dir, volume) = (s(&out_dir).to_string(), s(&volume).to_string());
    let bundle = ["--bucket", "bkt", "--prefix", "p", "--local-store", &store_s];
    let with =
        |head: &[&str], tail: &[&str]| -> Vec<String> { head.iter().chain(tail).map(|a| a.to_string()).collect() };
    let ls = |tail: &[&str]| with(&[&["ls"], &bundle[..]].concat(), tail);
    let json_times = &["Seconds"][..];
    /// What is run, its arguments printing on stdout, the same with --output-file (when they
    /// differ), and the fields that differ from run to run.
    type Case<'a> = (&'a str, Vec<String>, Vec<String>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        ("inspect --json", with(&["inspect", &src, "--json"], &[]), vec![], &[]),
        ("inspect", with(&["inspect", &src], &[]), vec![], &[]),
        (
            "bundle-instance",
            with(
                &[
                    "bundle-instance",
                    &src,
                    "--bucket",
                    "bkt",
                    "--prefix",
                    "q",
                    "--local-store",
                    &store_s,
                ],
                &["--state-dir", &tasks_s, "--instance-id", id, "--overwrite", "-q"],
            ),
            vec![],
            &[
                "BundleId",
                "StartTime",
                "UpdateTime",
                "Seconds",
                "MBps",
                "ReadSeconds",
                "CompressSeconds",
                "StoreSeconds",
            ],
        ),
        (
            "describe-bundle-tasks",
            with(
                &[
                    "describe-bundle-tasks",
                    "--state-dir",
                    &tasks_s,
                    "--bundle-ids",
                    &bundle_id,
                ],
                &[],
            ),
            vec![],
            &[],
        ),
        (
            "describe-bundle-tasks --output text",
            with(
                &[
                    "describe-bundle-tasks",
                    "--state-dir",
                    &tasks_s,
                    "--bundle-ids",
                    &bundle_id,
                ],
                &["--output", "text"],
            ),
            vec![],
            &[],
        ),
        (
            "cancel-bundle-task",
            with(
                &["cancel-bundle-task", "--state-dir", &tasks_s, "--bundle-id", &bundle_id],
                &[],
            ),
            vec![],
            &[],
        ),
        ("cleanup", with(&[&["cleanup"], &bundle[..]].concat(), &[]), vec![], &[]),
        (
            "cleanup --output text",
            with(&[&["cleanup"], &bundle[..]].concat(), &["--output", "text"]),
            vec![],
            &[],
        ),
        (
            "upload-policy",
            with(
                &[
                    "upload-policy",
                    "--bucket",
                    "bkt",
                    "--prefix",
                    "p",
                    "--owner-akid",
                    "AKIAEXAMPLE",
                ],
                &[
                    "--owner-sak",
                    "secret",
                    "--signature-version",
                    "2",
                    "--expires-at",
                    "2030-01-01T00:00:00Z",
                ],
            ),
            vec![],
            &[],
        ),
        ("ls --json", ls(&["-R", "--json"]), vec![], &[]),
        ("ls -R -l", ls(&["-R", "-l"]), vec![], &[]),
        (
            "extract --json",
            with(
                &[&["extract"], &bundle[..]].concat(),
                &["\\", "-o", &out_dir, "--force", "-q", "--json"],
            ),
            // Without --json too: the document written is the JSON one.
            with(
                &[&["extract"], &bundle[..]].concat(),
                &["\\", "-o", &out_dir, "--force", "-q"],
            ),
            json_times,
        ),
        (
            "restore --json",
            with(
                &[&["restore"], &bundle[..]].concat(),
                &["-o", &volume, "--force", "-q", "--json"],
            ),
            with(&[&["restore"], &bundle[..]].concat(), &["-o", &volume, "--force", "-q"]),
            json_times,
        ),
        (
            "verify --json",
            with(&[&["verify"], &bundle[..]].concat(), &["-q", "--json"]),
            vec![],
            json_times,
        ),
        ("verify", with(&[&["verify"], &bundle[..]].concat(), &[]), vec![], &[]),
    ];
    fn drop_keys(v: &mut serde_json::Value, keys: &[&str]) {
        match v {
            serde_json::Value::Object(m) => {
                m.retain(|k, _| !keys.contains(&k.as_str()));
                m.values_mut().for_each(|x| drop_keys(x, keys));
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| drop_keys(x, keys)),
            _ => {}
        }
    }
    let run = |args: &[String]| winbundle(&args.iter().map(String::as_str).collect::<Vec<_>>());
    for (n, (what, printing, to_file, volatile)) in cases.iter().enumerate() {
        let printed = run(printing);
        assert!(
            printed.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&printed.stderr)
        );
        assert!(!printed.stdout.is_empty(), "{what}");
        let file = dir.path().join(format!("résultat {n}.out"));
        let mut args = if to_file.is_empty() {
            printing.clone()
        } else {
            to_file.clone()
        };
        args.extend(["--output-file".to_string(), s(&file).to_string()]);
        let o = run(&args);
        assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(o.stdout.is_empty(), "{what}: {}", String::from_utf8_lossy(&o.stdout));
        let written = String::from_utf8(std::fs::read(&file).unwrap()).expect("UTF-8");
        let stdout = String::from_utf8(printed.stdout).unwrap();
        match (
            serde_json::from_str::<serde_json::Value>(&stdout),
            serde_json::from_str::<serde_json::Value>(&written),
        ) {
            (Ok(mut a), Ok(mut b)) => {
                drop_keys(&mut a, volatile);
                drop_keys(&mut b, volatile);
                assert_eq!(a, b, "{what}");
                assert!(written.ends_with("}\n"), "{what}");
            }
            _ => assert_eq!(stdout, written, "{what}"),
        }
        // A file that cannot be written: refused before the command does anything.
        let bad = dir.path().join("no such folder").join("x.json");
        let mut args = printing.clone();
        if *what == "bundle-instance" {
            args[5] = "r".into(); // its --prefix: nothing may be stored under it
        }
        args.extend(["--output-file".to_string(), s(&bad).to_string()]);
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        assert!(o.stdout.is_empty(), "{what}");
        assert!(
            err.contains(&format!("cannot write the result document to {}", bad.display()))
                && err.contains("hint: give --output-file a path"),
            "{what}: {err}"
        );
    }
    assert!(!store.join("bkt").join("r.manifest.json").exists());
    assert!(!dir.path().join("no such folder").exists());
    // Nothing but the documents in the folder: no temporary file is left.
    let stray: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

/// Issue 26.5: a second Ctrl-C while the snapshot is being made still aborts and releases the
/// backup (bounded) before exiting 130, and the run still ends its task failed (`Cancelled`) with
/// nothing stored. The fake snapshotter of debug builds (`WINBUNDLE_FAKE_SNAPSHOT`) would take
/// 60 s to make the snapshot, and takes 2 s to abort and release it (AbortBackup and Release
/// block).
#[test]
fn a_second_ctrl_c_still_releases_the_snapshot_before_exiting_130() {
    if cfg!(windows) {
        eprintln!("skipped on Windows: it sends SIGINT (`kill -INT`)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = fixture("bare-volume.img", dir.path());
    let (log, store, state) = (
        dir.path().join("vss.log"),
        dir.path().join("store"),
        dir.path().join("state"),
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"))
        .args(["bundle-instance", "Q:", "--bucket", "bkt", "--prefix", "p"])
        .args(["--local-store", s(&store), "--state-dir", s(&state), "-q"])
        .env("WINBUNDLE_FAKE_SNAPSHOT", &img)
        .env("WINBUNDLE_FAKE_SNAPSHOT_TAKES", "60")
        .env("WINBUNDLE_FAKE_SNAPSHOT_ABORT_TAKES", "2")
        .env("WINBUNDLE_FAKE_SNAPSHOT_LOG", &log)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = || std::fs::read_to_string(&log).unwrap_or_default();
    let started = std::time::Instant::now();
    while !lines().contains("create") {
        assert!(started.elapsed().as_secs() < 30, "no snapshot started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let sigint = || {
        let kill = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
    };
    sigint();
    let first = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(300));
    sigint();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(first.elapsed().as_secs() < 20, "still running 20 s after Ctrl-C");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let took = first.elapsed();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(130), "{err}");
    // Bounded: the 5 s the second Ctrl-C allows, not the 60 s of the snapshot.
    assert!(took.as_secs_f64() < 7.0, "{took:?}: {err}");
    assert!(err.contains("stopping") && err.contains("quitting"), "{err}");
    // The backup was aborted and released before the process ended; no snapshot was left.
    assert_eq!(lines(), "create Q:\\\nabort\nrelease\n");
    // Nothing stored, no partial file, and the task ended failed (Cancelled), not `pending`.
    let left: Vec<_> = std::fs::read_dir(store.join("bkt"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let o = winbundle(&["describe-bundle-tasks", "--state-dir", s(&state)]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["BundleTasks"][0]["State"], "failed", "{v}");
    assert_eq!(v["BundleTasks"][0]["BundleTaskError"]["Code"], "Cancelled", "{v}");
}
