//! Server-side encryption on S3 (`--sse AES256|aws:kms`, `--sse-kms-key-id`,
//! `--sse-c-key-file`), against the in-process server, which enforces SSE-C's contract as AWS
//! does: an object created with a customer key answers only requests that carry the same key.
//! tests/e2e.sh runs the same against Garage (which really encrypts with SSE-C) and moto.

mod common;
#[path = "common/s3server.rs"]
mod s3server;

use std::path::Path;
use std::process::Output;

use common::*;
use s3server::TestS3;

/// `winbundle ARGS` against the test server, with its credentials.
fn cli(s3: &TestS3, state: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"))
        .env("XDG_STATE_HOME", state)
        .env("AWS_ACCESS_KEY_ID", s3server::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", s3server::SECRET_KEY)
        .env_remove("AWS_PROFILE")
        .args(args)
        .args(["--endpoint-url", &s3.endpoint, "--region", "us-east-1"])
        .output()
        .unwrap()
}

/// `bundle-instance SRC --bucket bkt --prefix PREFIX EXTRA…` against the test server.
fn bundle_to(s3: &TestS3, state: &Path, src: &str, prefix: &str, extra: &[&str]) -> Output {
    let mut args = vec!["bundle-instance", src, "--bucket", "bkt", "--prefix", prefix];
    args.extend_from_slice(extra);
    cli(s3, state, &args)
}

fn ok(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

#[test]
fn a_customer_key_encrypts_every_object_and_every_read_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let src = fixture("gpt-disk.img", dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let key_file = dir.path().join("sse-c.key");
    let raw: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    std::fs::write(&key_file, raw).unwrap();
    let key_b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, raw);
    let kf = key_file.to_str().unwrap();
    let s = src.to_str().unwrap();

    let o = bundle_to(&s3, &state, s, "c/0", &["--sse-c-key-file", kf]);
    let out = ok(&o);
    assert_eq!(out["Bundle"]["ServerSideEncryption"]["Mode"], "SSE-C", "{out}");
    // Every object of the bundle was created with the key.
    let objects = s3.faults.sse_c.lock().unwrap().clone();
    for k in [
        "c/0.manifest.json",
        "c/0.image.zst",
        "c/0.index.zst",
        "c/0.disk.image.zst",
    ] {
        assert!(objects.contains_key(&format!("bkt/{k}")), "{k} not SSE-C: {objects:?}");
    }
    // The key is in no output, no task file.
    let mut seen = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    for f in walk(&state) {
        seen += &String::from_utf8_lossy(&std::fs::read(f).unwrap());
    }
    assert!(
        !seen.contains(&key_b64) && !seen.contains(&hex::encode(raw)),
        "the key leaked"
    );

    // Without the key nothing can be read: the error says what to pass.
    let restored = dir.path().join("disk.img");
    let r = restored.to_str().unwrap();
    let o = cli(
        &s3,
        &state,
        &["restore", "--disk", "--bucket", "bkt", "--prefix", "c/0", "--output", r],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "read without the key: {err}");
    assert!(
        err.contains("StorageError") && err.contains("--sse-c-key-file"),
        "{err}"
    );
    // A wrong key neither.
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, [9u8; 32]).unwrap();
    let w = wrong.to_str().unwrap();
    let o = cli(
        &s3,
        &state,
        &["verify", "--bucket", "bkt", "--prefix", "c/0", "--sse-c-key-file", w],
    );
    assert!(!o.status.success());

    // With it: verify, restore --disk equal to a local bundle's, ls and cat.
    ok(&cli(
        &s3,
        &state,
        &["verify", "--bucket", "bkt", "--prefix", "c/0", "--sse-c-key-file", kf],
    ));
    let args = [
        "restore",
        "--disk",
        "--bucket",
        "bkt",
        "--prefix",
        "c/0",
        "--output",
        r,
        "--sse-c-key-file",
        kf,
    ];
    ok(&cli(&s3, &state, &args));
    let local = dir.path().join("local");
    bundle(&request(&src, "c/0"), &local).result.unwrap();
    let from_local = dir.path().join("local.img");
    let l = from_local.to_str().unwrap();
    ok(&cli_local_prefix(&local, "c/0", &["restore", "--disk", "--output", l]));
    assert!(std::fs::read(&restored).unwrap() == std::fs::read(&from_local).unwrap());
    let o = cli(
        &s3,
        &state,
        &["ls", "--bucket", "bkt", "--prefix", "c/0", "--sse-c-key-file", kf, "/"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // A disk image exported to S3 with the key, read back through the key.
    let args = [
        "restore",
        "--disk",
        "--format",
        "vmdk",
        "--bucket",
        "bkt",
        "--prefix",
        "c/0",
        "--output",
        "s3://bkt/export/c0.vmdk",
        "--sse-c-key-file",
        kf,
    ];
    ok(&cli(&s3, &state, &args));
    assert!(s3.faults.sse_c.lock().unwrap().contains_key("bkt/export/c0.vmdk"));

    // An incremental child copies its parent's parts on the server: source and target both
    // under the key (the server refuses a copy whose SSE-C headers do not fit either).
    s3.faults.reset_counts();
    let out = ok(&bundle_to(
        &s3,
        &state,
        s,
        "c/1",
        &["--parent", "c/0", "--layout", "runs", "--sse-c-key-file", kf],
    ));
    assert!(out["Bundle"]["Parent"]["CopiedParts"].as_u64().unwrap() > 0, "{out}");
    assert!(s3.faults.count_succeeded("UploadPartCopy") > 0);
    ok(&cli(
        &s3,
        &state,
        &["verify", "--bucket", "bkt", "--prefix", "c/1", "--sse-c-key-file", kf],
    ));
}

#[test]
fn sse_s3_and_kms_are_asked_for_on_every_object_created() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let src = fixture("bare-volume.img", dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let s = src.to_str().unwrap();
    let out = ok(&bundle_to(&s3, &state, s, "s/0", &["--sse", "AES256"]));
    assert_eq!(out["Bundle"]["ServerSideEncryption"]["Mode"], "AES256", "{out}");
    let out = ok(&bundle_to(
        &s3,
        &state,
        s,
        "k/0",
        &["--sse", "aws:kms", "--sse-kms-key-id", "alias/winbundle"],
    ));
    assert_eq!(
        out["Bundle"]["ServerSideEncryption"]["KmsKeyId"], "alias/winbundle",
        "{out}"
    );
    let seen = s3.faults.sse_requests.lock().unwrap().clone();
    for (prefix, want) in [("s/0", "AES256 -"), ("k/0", "aws:kms alias/winbundle")] {
        for (op, key) in [
            ("CreateMultipartUpload", "image.zst"),
            ("PutObject", "index.zst"),
            ("PutObject", "manifest.json"),
        ] {
            let line = format!("{op} bkt/{prefix}.{key} {want}");
            assert!(seen.contains(&line), "{line} not in {seen:#?}");
        }
    }
    // Reads need nothing.
    ok(&cli(&s3, &state, &["verify", "--bucket", "bkt", "--prefix", "k/0"]));
    // A KMS key without aws:kms, and both kinds at once, are refused before any request.
    let o = bundle_to(&s3, &state, s, "x/0", &["--sse-kms-key-id", "k"]);
    assert!(!o.status.success());
    let key_file = dir.path().join("k");
    std::fs::write(&key_file, [1u8; 32]).unwrap();
    let o = bundle_to(
        &s3,
        &state,
        s,
        "x/0",
        &["--sse", "AES256", "--sse-c-key-file", key_file.to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(!s3.faults.requests.lock().unwrap().iter().any(|r| r.contains("x/0")));
}

#[test]
fn a_key_file_that_is_not_a_key_is_refused_without_showing_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let src = fixture("bare-volume.img", dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let key_file = dir.path().join("k");
    std::fs::write(&key_file, "my-passphrase-is-not-a-key\n").unwrap();
    let (s, k) = (src.to_str().unwrap(), key_file.to_str().unwrap());
    let o = bundle_to(&s3, &state, s, "x/0", &["--sse-c-key-file", k]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--sse-c-key-file") && err.contains("head -c 32"), "{err}");
    assert!(!err.contains("passphrase"), "{err}");
    assert!(s3.faults.requests.lock().unwrap().is_empty());
}

/// `upload-policy --sse` makes every POST carry the encryption fields (the server refuses a
/// form without them), bundle-instance sends what the policy requires by itself, and a `--sse`
/// or customer key the policy cannot carry is refused before any request.
#[test]
fn a_policy_made_with_sse_makes_every_upload_ask_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let src = fixture("bare-volume.img", dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"))
        .args([
            "upload-policy",
            "--owner-akid",
            s3server::ACCESS_KEY,
            "--owner-sak",
            s3server::SECRET_KEY,
        ])
        .args(["--bucket", "bkt", "--prefix", "enc/win", "--region", "us-east-1"])
        .args(["--sse", "aws:kms", "--sse-kms-key-id", "alias/bundles"])
        .output()
        .unwrap();
    let made = ok(&o);
    let fields = made["Fields"].as_object().unwrap();
    assert_eq!(fields["x-amz-server-side-encryption"], "aws:kms", "{made}");
    assert_eq!(
        fields["x-amz-server-side-encryption-aws-kms-key-id"], "alias/bundles",
        "{made}"
    );
    let text = made["Policy"].as_str().unwrap();
    assert!(
        text.contains(r#"{"x-amz-server-side-encryption": "aws:kms"}"#),
        "{text}"
    );
    // The server holds the form to the policy: without the encryption field it refuses it.
    let post = |fields: &serde_json::Map<String, serde_json::Value>| {
        let boundary = "wb-sse-test";
        let mut body = String::new();
        let pairs = fields.iter().map(|(k, v)| (k.as_str(), v.as_str().unwrap()));
        for (name, value) in std::iter::once(("key", "enc/win.probe")).chain(pairs) {
            body += &format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n");
        }
        body += &format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\nx\r\n--{boundary}--\r\n"
        );
        let resp = reqwest::blocking::Client::new()
            .post(format!("{}/bkt", s3.endpoint))
            .header("content-type", format!("multipart/form-data; boundary={boundary}"))
            .body(body)
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.text().unwrap_or_default())
    };
    let (status, body) = post(fields);
    assert!(status < 300, "{status} {body}");
    let mut without = fields.clone();
    without.remove("x-amz-server-side-encryption");
    let (status, body) = post(&without);
    // AWS answers 403 AccessDenied, s3s 400 InvalidPolicyDocument naming the field.
    assert!(
        matches!(status, 400 | 403) && body.contains("x-amz-server-side-encryption"),
        "{status} {body}"
    );
    let (pol, sig) = (
        made["UploadPolicy"].as_str().unwrap(),
        made["UploadPolicySignature"].as_str().unwrap(),
    );
    let policy_args = |prefix: &'static str| {
        vec![
            "bundle-instance".to_string(),
            src.to_str().unwrap().to_string(),
            "--bucket".into(),
            "bkt".into(),
            "--prefix".into(),
            prefix.into(),
            "--owner-akid".into(),
            s3server::ACCESS_KEY.into(),
            "--upload-policy".into(),
            pol.into(),
            "--upload-policy-signature".into(),
            sig.into(),
        ]
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&s3, &state, &args)
    };
    let out = ok(&run(policy_args("enc/win")));
    assert_eq!(out["Bundle"]["ServerSideEncryption"]["Mode"], "aws:kms", "{out}");
    assert_eq!(
        out["Bundle"]["ServerSideEncryption"]["KmsKeyId"], "alias/bundles",
        "{out}"
    );
    ok(&cli(&s3, &state, &["verify", "--bucket", "bkt", "--prefix", "enc/win"]));

    // --sse that is not the policy's, and a customer key: refused, nothing sent.
    s3.faults.reset_counts();
    let mut args = policy_args("enc/win");
    args.extend(["--sse".into(), "AES256".into()]);
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("fixes the server-side encryption") && err.contains("aws:kms"),
        "{err}"
    );
    let key = dir.path().join("k");
    std::fs::write(&key, [3u8; 32]).unwrap();
    let mut args = policy_args("enc/win");
    args.extend(["--sse-c-key-file".into(), key.to_str().unwrap().into()]);
    let o = run(args);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(s3.faults.count("PostObject"), 0);
}
