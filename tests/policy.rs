//! Upload-policy mode: checks that refuse bad policies before anything is uploaded, and
//! bundles POSTed with a policy alone (no secret key) to an in-process s3s server that checks
//! policies and signatures.

mod common;
#[path = "common/s3server.rs"]
mod s3server;
#[path = "common/tls.rs"]
mod tls;

use std::sync::atomic::AtomicBool;

use chrono::{Duration, Utc};
use common::*;
use s3server::{ACCESS_KEY, SECRET_KEY, TestS3};
use winbundle::bundle::create::bundle_instance;
use winbundle::format::Layout;
use winbundle::progress::NoProgress;
use winbundle::store::post::policy::{self, UploadPolicy};
use winbundle::store::post::{PostStore, PostTarget};
use winbundle::store::{ObjectStore, StoreError};

fn b64(s: &str) -> String {
    policy::encode(s)
}

fn check(policy_text: &str, bucket: &str, prefix: &str, part_size: u64) -> Result<Vec<String>, (&'static str, String)> {
    let p = UploadPolicy::parse(&b64(policy_text)).map_err(|e| (e.code, e.message))?;
    let keys = winbundle::format::Keys::new(prefix);
    p.check(
        bucket,
        &[keys.manifest(), keys.part(0), keys.part(9999)],
        part_size,
        Utc::now(),
        None,
    )
    .map_err(|e| (e.code, e.message))
}

fn policy_text(expires: chrono::DateTime<Utc>, bucket: &str, acl: &str, prefix: &str, extra: &str) -> String {
    format!(
        r#"{{"expiration": "{}","conditions": [{{"bucket": "{bucket}"}},{{"acl": "{acl}"}},["starts-with", "$key", "{prefix}"]{extra}]}}"#,
        expires.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    )
}

#[test]
fn each_bad_policy_has_its_own_message_and_code() {
    let soon = Utc::now() + Duration::hours(24);
    let ok = policy_text(soon, "bkt", "ec2-bundle-read", "win", "");
    // A plain prefix (the aws-cli's) passes with only the warning about what it reaches.
    let warnings = check(&ok, "bkt", "win/a", 16 << 20).unwrap();
    assert!(
        warnings.len() == 1 && warnings[0].contains("starts-with \"win\""),
        "{warnings:?}"
    );
    let own = policy_text(soon, "bkt", "ec2-bundle-read", "win/a.", "");
    assert!(check(&own, "bkt", "win/a", 16 << 20).unwrap().is_empty());
    let cases: Vec<(String, &str, &str, &str)> = vec![
        (
            policy_text(Utc::now() - Duration::hours(1), "bkt", "ec2-bundle-read", "win", ""),
            "win/a",
            "InvalidParameterValue",
            "expired",
        ),
        (
            policy_text(soon, "other", "ec2-bundle-read", "win", ""),
            "win/a",
            "InvalidParameterValue",
            "another bucket",
        ),
        (
            policy_text(soon, "bkt", "public-read", "win", ""),
            "win/a",
            "InvalidParameterValue",
            "readable by others",
        ),
        (
            policy_text(soon, "bkt", "ec2-bundle-read", "win", ""),
            "elsewhere/a",
            "InvalidParameterValue",
            "does not allow the key",
        ),
        (
            policy_text(
                soon,
                "bkt",
                "ec2-bundle-read",
                "win",
                r#",["content-length-range", 0, 1048576]"#,
            ),
            "win/a",
            "InvalidParameterValue",
            "content-length-range allows at most 1048576",
        ),
        (
            r#"{"expiration": "2030-01-01T00:00:00Z","conditions": [{"acl": "ec2-bundle-read"}]}"#.to_string(),
            "win/a",
            "MissingParameter",
            "no bucket condition",
        ),
        (
            r#"{"conditions": []}"#.to_string(),
            "win/a",
            "MissingParameter",
            "no \"expiration\"",
        ),
    ];
    for (text, prefix, code, words) in cases {
        let (c, m) = check(&text, "bkt", prefix, 16 << 20).unwrap_err();
        assert_eq!(c, code, "{m}");
        assert!(m.contains(words), "{m:?} should mention {words:?}");
    }
    let e = UploadPolicy::parse("not base64!").unwrap_err();
    assert!(e.message.contains("not valid base64"), "{}", e.message);
    let e = UploadPolicy::parse(&b64("{not json")).unwrap_err();
    assert!(e.message.contains("not JSON"), "{}", e.message);
    // A short validity warns; one that ends before the bundle would is refused.
    let short = policy_text(Utc::now() + Duration::hours(2), "bkt", "ec2-bundle-read", "win", "");
    let w = check(&short, "bkt", "win/a", 16 << 20).unwrap();
    assert!(w[0].contains("12 hours"), "{w:?}");
    let p = UploadPolicy::parse(&b64(&short)).unwrap();
    let e = p
        .check("bkt", &[], 1 << 20, Utc::now(), Some(Utc::now() + Duration::hours(3)))
        .unwrap_err();
    assert!(
        e.message.contains("before this bundle is expected to finish"),
        "{}",
        e.message
    );
}

fn post_store(s3: &TestS3, bucket: &str, prefix: &str, secret: &str) -> PostStore {
    let text = policy::aws_cli_policy(bucket, prefix, Utc::now() + Duration::hours(24));
    let b64 = policy::encode(&text);
    let signature = policy::sign(secret, &b64);
    store_for(s3, bucket, &b64, &signature)
}

fn store_for(s3: &TestS3, bucket: &str, b64: &str, signature: &str) -> PostStore {
    let url = PostTarget::url_for(bucket, Some(&s3.endpoint), None).unwrap();
    let target = PostTarget::new(url, bucket, ACCESS_KEY, UploadPolicy::parse(b64).unwrap(), signature).unwrap();
    PostStore::new(target, 3, 3).unwrap()
}

/// A version 4 policy for `prefix` in `bkt`, signed by `akid`/`secret` for `region`: (base64, signature).
fn v4(
    prefix: &str,
    acl: Option<&str>,
    akid: &str,
    secret: &str,
    region: &str,
    expires_in: Duration,
) -> (String, String) {
    let now = Utc::now();
    let text = policy::v4_policy(&policy::V4Request {
        bucket: "bkt",
        prefix,
        acl,
        access_key_id: akid,
        region,
        now,
        expires: now + expires_in,
        max_object: policy::MAX_POST_OBJECT,
        extra: &[],
    });
    let b64 = policy::encode(&text);
    let sig = policy::sign_v4(secret, &policy::Credential::new(akid, now, region), &b64);
    (b64, sig)
}

#[test]
fn a_bundle_posted_with_a_sigv4_policy_restores_like_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("mbr-disk.img", dir.path());
    let s3 = TestS3::start(&["bkt"]);
    for (prefix, acl) in [("v4/noacl", None), ("v4/acl", Some("bucket-owner-full-control"))] {
        let (b64, sig) = v4(prefix, acl, ACCESS_KEY, SECRET_KEY, "us-east-1", Duration::hours(24));
        let post = store_for(&s3, "bkt", &b64, &sig);
        post.probe(&format!("{prefix}.part.0")).unwrap();
        let mut req = request(&src, prefix);
        req.layout = Layout::Parts;
        req.part_size = Some(1 << 20);
        bundle_instance(&req, &post, &NoProgress, &AtomicBool::new(false), &mut |_| Ok(()))
            .result
            .unwrap();
        let out = dir.path().join("out.img");
        restore_from(&s3.store("bkt"), prefix, &out).unwrap();
        assert_restored_matches(&src, &req.plan, &out);
    }
    assert_eq!(s3.faults.count("PutObject"), 0);
}

/// bundle-instance with a version 4 policy that is wrong in one way: refused before the
/// source is opened (the source does not even exist), with its own message and exit status 2;
/// or, tampered, refused by the server's answer to the probe, and nothing stored.
#[test]
fn bad_sigv4_policies_are_refused_before_any_data_is_read() {
    let s3 = TestS3::start(&["bkt"]);
    let run = |b64: &str, sig: &str, extra: &[&str]| {
        let mut args = vec![
            "bundle-instance",
            "/nonexistent/disk.img",
            "--bucket",
            "bkt",
            "--prefix",
            "v4/bad",
            "--endpoint-url",
            &s3.endpoint,
            "--upload-policy",
            b64,
            "--upload-policy-signature",
            sig,
            "--output",
            "json",
        ];
        args.extend_from_slice(extra);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"))
            .env(
                "XDG_STATE_HOME",
                std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-state"),
            )
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .args(&args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let good = v4("v4/bad", None, ACCESS_KEY, SECRET_KEY, "us-east-1", Duration::hours(24));
    let expired = v4(
        "v4/bad",
        None,
        ACCESS_KEY,
        SECRET_KEY,
        "us-east-1",
        Duration::seconds(-60),
    );
    // (what, the policy and its signature, extra flags, what the message says); each exits 2.
    let cases = [
        ("expired", expired, vec![], "expired at"),
        (
            "wrong region",
            good.clone(),
            vec!["--region", "eu-west-3"],
            "signed for the region us-east-1 but the S3 endpoint signs as eu-west-3",
        ),
        (
            "wrong key",
            good.clone(),
            vec!["--owner-akid", "AKIASOMEONEELSE"],
            "signed by the access key AKIAWINBUNDLETEST",
        ),
        (
            "not hex",
            (good.0.clone(), "bm90IGhleA==".to_string()),
            vec![],
            "64 hex digits",
        ),
    ];
    for (what, (b64, sig), extra, words) in &cases {
        let (code, err, _) = run(b64, sig, extra);
        assert_eq!(code, Some(2), "{what}: {err}");
        assert!(err.contains(words), "{what}: {err:?} should say {words:?}");
        assert!(!err.contains(SECRET_KEY), "{what}: the secret key in {err}");
        if sig.len() == 64 {
            assert!(!err.contains(sig.as_str()), "{what}: the signature in {err}");
        }
    }
    // Tampered: the policy text changed after signing (a longer validity). Only the server can
    // tell; the probe asks it first, so no data is read (the source does not exist) and nothing is stored.
    let text = String::from_utf8(base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &good.0).unwrap())
        .unwrap();
    let year = Utc::now().format("%Y").to_string();
    let later = (Utc::now() + Duration::days(400)).format("%Y").to_string();
    let tampered = policy::encode(&text.replacen(
        &format!("\"expiration\": \"{year}"),
        &format!("\"expiration\": \"{later}"),
        1,
    ));
    assert_ne!(tampered, good.0);
    let (code, err, _) = run(&tampered, &good.1, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("PostObject (SigV4 policy)") && err.contains("SignatureDoesNotMatch"),
        "{err}"
    );
    assert!(err.contains("changed after signing"), "the hint: {err}");
    assert!(!err.contains(&good.1), "the signature leaked: {err}");
    assert!(!s3.store("bkt").exists("v4/bad.part.0").unwrap());
    // Made right, the same run gets past every check to the source, which does not exist.
    let (code, err, _) = run(&good.0, &good.1, &[]);
    assert_ne!(code, Some(2), "{err}");
    assert!(err.contains("/nonexistent/disk.img"), "{err}");
}

#[test]
fn a_bundle_posted_with_only_a_policy_restores_like_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("gpt-disk.img", dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let post = post_store(&s3, "bkt", "pol/win", SECRET_KEY);
    post.probe("pol/win.part.0").unwrap();
    let mut req = request(&src, "pol/win");
    req.layout = Layout::Parts;
    req.part_size = Some(1 << 20);
    let (m, _) = bundle_instance(&req, &post, &NoProgress, &AtomicBool::new(false), &mut |_| Ok(()))
        .result
        .unwrap();
    assert!(m.data.objects.len() >= 3, "{} parts", m.data.objects.len());
    // The volume's parts, the disk stream's parts, the chunk index, the probe and the manifest;
    // s3s now and then fails to read a form body (answering InvalidRequest), and that POST is
    // sent again.
    let disk_parts = m.disk.as_ref().map_or(0, |d| d.data.objects.len());
    assert!(disk_parts >= 1, "a GPT disk keeps its disk stream");
    let index = usize::from(m.index.is_some());
    let objects = m.data.objects.len() + disk_parts + index + 2;
    let posts = s3.faults.count("PostObject");
    assert!(
        (objects..=objects + 3).contains(&posts),
        "{posts} POSTs for {} parts, {disk_parts} disk parts, {index} index, the probe and the manifest",
        m.data.objects.len()
    );
    assert_eq!(
        s3.faults.count("PutObject") + s3.faults.count("CreateMultipartUpload"),
        0
    );
    // Read back with credentials: every part, and the restored volume.
    let reader = s3.store("bkt");
    assert!(reader.exists("pol/win.manifest.json").unwrap());
    let out = dir.path().join("out.img");
    restore_from(&reader, "pol/win", &out).unwrap();
    assert_restored_matches(&src, &req.plan, &out);

    // An incremental bundle needs the server to copy the parent's frames: a policy cannot.
    let post = post_store(&s3, "bkt", "pol/inc", SECRET_KEY);
    let mut inc = request(&src, "pol/inc");
    inc.layout = Layout::Parts;
    inc.parent = Some(winbundle::bundle::create::ParentChoice::Prefix("pol/win".into()));
    let err = bundle_instance(&inc, &post, &NoProgress, &AtomicBool::new(false), &mut |_| Ok(()))
        .result
        .unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    let err = err.to_string();
    assert!(
        err.contains("cannot copy objects") && err.contains("needs credentials"),
        "{err}"
    );
    assert!(!reader.exists("pol/inc.manifest.json").unwrap());
}

#[test]
fn a_wrong_signature_is_refused_by_the_server_before_any_data() {
    let s3 = TestS3::start(&["bkt"]);
    let post = post_store(&s3, "bkt", "pol/bad", "not-the-owner-secret");
    let e = post.probe("pol/bad.part.0").unwrap_err();
    assert!(
        matches!(&e, StoreError::S3 { op: "PostObject (SigV2 policy)", code, .. } if code == "SignatureDoesNotMatch" || code == "AccessDenied"),
        "{e}"
    );
    assert!(!s3.store("bkt").exists("pol/bad.part.0").unwrap());
}

#[test]
fn a_failed_policy_bundle_lists_the_parts_it_left() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("gpt-disk.img", dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let post = post_store(&s3, "bkt", "pol/cancel", SECRET_KEY);
    let mut req = request(&src, "pol/cancel");
    req.layout = Layout::Parts;
    req.part_size = Some(1 << 20);
    // Cancel once a few MiB were read: some parts are already stored and cannot be deleted.
    struct After<'a>(&'a AtomicBool, std::sync::atomic::AtomicU64);
    impl winbundle::progress::Progress for After<'_> {
        fn read(&self, n: u64) {
            if self.1.fetch_add(n, std::sync::atomic::Ordering::SeqCst) + n > (5 << 20) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
    let cancel = AtomicBool::new(false);
    let outcome = bundle_instance(&req, &post, &After(&cancel, Default::default()), &cancel, &mut |_| {
        Ok(())
    });
    let e = outcome.result.err().unwrap();
    let msg = e.to_string();
    assert_eq!(e.code(), "Cancelled");
    if s3.faults.count("PostObject") > 0 {
        assert!(msg.contains("remain") && msg.contains("pol/cancel.part.0"), "{msg}");
    }
    assert!(!s3.store("bkt").exists("pol/cancel.manifest.json").unwrap());
}

/// `winbundle upload-policy`: version 4 by default, its region from the flag, the environment
/// or the profile (and an error naming --region without one); version 2 stays the aws-cli's text.
#[test]
fn upload_policy_takes_its_region_from_flag_environment_or_profile() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::write(&config, "[profile bundler]\nregion = ap-south-2\n").unwrap();
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"));
        cmd.args([
            "upload-policy",
            "--bucket",
            "bkt",
            "--prefix",
            "win",
            "--owner-akid",
            "AKIDOWNER",
            "--owner-sak",
            "secret",
        ])
        .args(extra)
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let field = |json: &str, name: &str| serde_json::from_str::<serde_json::Value>(json).unwrap()[name].clone();
    let (code, out, err) = run(&["--region", "garage"], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(field(&out, "SignatureVersion"), 4);
    assert_eq!(field(&out, "Region"), "garage");
    let p = UploadPolicy::parse(field(&out, "UploadPolicy").as_str().unwrap()).unwrap();
    assert_eq!(p.acl().unwrap(), None, "version 4 has no ACL by default");
    assert_eq!(
        field(&out, "Fields")["x-amz-signature"],
        field(&out, "UploadPolicySignature")
    );
    let (_, out, _) = run(&[], &[("AWS_REGION", "eu-north-1")]);
    assert_eq!(field(&out, "Region"), "eu-north-1");
    let (_, out, _) = run(&[], &[("AWS_DEFAULT_REGION", "eu-south-1")]);
    assert_eq!(field(&out, "Region"), "eu-south-1");
    let (_, out, _) = run(&["--profile", "bundler"], &[]);
    assert_eq!(field(&out, "Region"), "ap-south-2");
    let (_, out, _) = run(&[], &[("AWS_PROFILE", "bundler")]);
    assert_eq!(field(&out, "Region"), "ap-south-2");
    let (code, _, err) = run(&[], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--region"), "{err}");
    // Version 2: the aws-cli's text layout and signature, ec2-bundle-read unless --acl none,
    // for the bundle's own keys (`win.`, not any key starting with `win`: issue 25).
    let (code, out, _) = run(
        &["--signature-version", "2", "--expires-at", "2040-08-10T00:00:00Z"],
        &[],
    );
    assert_eq!(code, Some(0));
    let at = chrono::DateTime::parse_from_rfc3339("2040-08-10T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    assert_eq!(field(&out, "Policy"), policy::aws_cli_policy("bkt", "win.", at));
    assert_eq!(
        field(&out, "UploadPolicySignature"),
        policy::sign("secret", &policy::encode(&policy::aws_cli_policy("bkt", "win.", at)))
    );
    // The aws-cli's own vector (a past date) is an expired policy: refused (exit 2).
    let (code, _, err) = run(
        &["--signature-version", "2", "--expires-at", "2013-08-10T00:00:00Z"],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    let (_, out, _) = run(&["--signature-version", "2", "--acl", "none"], &[]);
    assert!(!field(&out, "Policy").as_str().unwrap().contains("acl"));
    let (code, _, err) = run(&["--signature-version", "3"], &[]);
    assert_eq!(code, Some(2), "{err}");
}

/// POSTs over HTTPS: the certificate is checked against the system's roots plus `SSL_CERT_FILE`
/// (as for the S3 API), and an untrusted one ends the run before any data is read.
#[test]
fn a_policy_bundle_over_https_trusts_ssl_cert_file_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("gpt-disk.img", dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let front = tls::TlsFront::start(&s3.endpoint);
    let (b64, sig) = v4("tls/win", None, ACCESS_KEY, SECRET_KEY, "us-east-1", Duration::hours(1));
    let run = |prefix: &str, ca: Option<&std::path::Path>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"));
        c.args([
            "bundle-instance",
            src.to_str().unwrap(),
            "--bucket",
            "bkt",
            "--prefix",
            prefix,
        ])
        .args(["--endpoint-url", &front.endpoint, "--upload-policy", &b64])
        .args(["--upload-policy-signature", &sig, "--part-size", "1MiB", "-q"])
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .env_remove("SSL_CERT_DIR");
        match ca {
            Some(ca) => c.env("SSL_CERT_FILE", ca),
            None => c.env_remove("SSL_CERT_FILE"),
        };
        c.output().unwrap()
    };
    let o = run("tls/win", None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "an untrusted certificate must fail the run");
    assert!(
        err.contains("invalid peer certificate"),
        "the error names the certificate: {err}"
    );
    assert!(
        err.contains("SSL_CERT_FILE"),
        "the hint says how to trust a private CA: {err}"
    );
    assert_eq!(s3.faults.count("PostObject"), 0, "nothing reached the server");

    let o = run("tls/win", Some(&front.ca_pem));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.path().join("out.img");
    restore_from(&s3.store("bkt"), "tls/win", &out).unwrap();
    assert_restored_matches(&src, &request(&src, "tls/win").plan, &out);
}

/// A policy bundle refused part-way (here: the server stops accepting POSTs) is resumed by the
/// same command: the parts its journal records, recomputed equal, are not POSTed again; a part
/// whose recorded digest differs is sent again; the journal goes once the manifest is stored.
#[test]
fn an_interrupted_policy_bundle_resumes_from_its_journal() {
    let dir = tempfile::tempdir().unwrap();
    let src = big_disk(dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let state = dir.path().join("state");
    let (b64, sig) = v4("res/win", None, ACCESS_KEY, SECRET_KEY, "us-east-1", Duration::hours(1));
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"))
            .args([
                "bundle-instance",
                src.to_str().unwrap(),
                "--bucket",
                "bkt",
                "--prefix",
                "res/win",
            ])
            .args(["--endpoint-url", &s3.endpoint, "--upload-policy", &b64])
            .args([
                "--upload-policy-signature",
                &sig,
                "--part-size",
                "5MiB",
                "--concurrency",
                "1",
            ])
            .args(["-q", "--state-dir", state.to_str().unwrap()])
            .output()
            .unwrap()
    };
    // The probe and four parts are accepted, then every POST is refused.
    *s3.faults.posts_left.lock().unwrap() = Some(5);
    let o = run();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("run the same command again to resume"), "{err}");
    let journals: Vec<_> = std::fs::read_dir(state.join("journals")).unwrap().collect();
    assert_eq!(journals.len(), 1, "one journal for the bundle");
    let journal = journals[0].as_ref().unwrap().path();
    assert!(
        err.contains(&journal.display().to_string()),
        "the error names the journal: {err}"
    );

    // The last part the journal vouches for no longer matches what the source gives: it is
    // sent again. (Usually parts 0 to 3; fewer when s3s made the run send a form twice.)
    let text = std::fs::read_to_string(&journal).unwrap();
    let stored: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("res/win.part.") && !l.contains("res/win.part.0\""))
        .collect();
    assert!(!stored.is_empty(), "{text}");
    let last = stored[stored.len() - 1];
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    let sha = v["Sha256"].as_str().unwrap();
    let flipped = format!("{}{}", if sha.starts_with('0') { "1" } else { "0" }, &sha[1..]);
    std::fs::write(&journal, text.replace(sha, &flipped)).unwrap();

    // Mark every part stored so far with an old modification time: a part the second run sends
    // again gets a new one, a reused part keeps it.
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_400);
    let part_files: Vec<_> = (0..1000)
        .map(|i| s3.object_file("bkt", &format!("res/win.part.{i}")))
        .take_while(|f| f.exists())
        .collect();
    assert!(part_files.len() > stored.len(), "{} part files", part_files.len());
    for f in &part_files {
        let file = std::fs::OpenOptions::new().write(true).open(f).unwrap();
        file.set_modified(old).unwrap();
    }

    *s3.faults.posts_left.lock().unwrap() = None;
    let before = s3.faults.count("PostObject");
    let o = run();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let resumed = &v["Bundle"]["Resumed"];
    // Part 0 was overwritten by the policy probe and is sent again; the others are reused.
    assert_eq!(resumed["ReusedParts"], stored.len() - 1, "{v}");
    assert_eq!(resumed["ReplacedParts"], 1, "{v}");
    assert!(resumed["ResumedFrom"].as_str().unwrap().contains("journals"), "{v}");
    let parts = s3.store("bkt").get("res/win.manifest.json").map(|m| {
        let m: serde_json::Value = serde_json::from_slice(&m).unwrap();
        m["data"]["objects"].as_array().unwrap().len()
    });
    let parts = parts.unwrap();
    assert!(parts > 5, "{parts} parts");
    // Exactly the parts the journal vouched for (but the last, tampered with) were not sent
    // again; every other part was.
    let untouched: Vec<usize> = part_files
        .iter()
        .enumerate()
        .filter(|(_, f)| std::fs::metadata(f).unwrap().modified().unwrap() == old)
        .map(|(i, _)| i)
        .collect();
    let mut reused: Vec<usize> = stored[..stored.len() - 1]
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["Key"].as_str().unwrap().rsplit('.').next().unwrap().parse().unwrap()
        })
        .collect();
    reused.sort_unstable();
    assert_eq!(untouched, reused, "parts not sent again");
    // At least the probe, the parts not reused, the chunk index and the manifest were posted
    // (more where s3s needed a form sent again).
    let posts = s3.faults.count("PostObject") - before;
    assert!(posts > parts - reused.len() + 2, "{posts} POSTs for {parts} parts");
    assert!(!journal.exists(), "the journal is removed once the bundle is complete");
    let out = dir.path().join("out.img");
    restore_from(&s3.store("bkt"), "res/win", &out).unwrap();
    assert_restored_matches(&src, &request(&src, "res/win").plan, &out);
}

/// Runs `winbundle upload-policy` with `args` (plus owner keys): exit code, stdout, stderr.
fn upload_policy(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"))
        .args(["upload-policy", "--owner-akid", ACCESS_KEY, "--owner-sak", SECRET_KEY])
        .args(args)
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A browser-style form POST of `key` with the policy's fields: the server's status and body.
fn form_post(
    endpoint: &str,
    bucket: &str,
    fields: &serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> (u16, String) {
    let boundary = "----winbundle-test-boundary";
    let mut body = Vec::new();
    let mut field = |name: &str, value: &str| {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
    };
    field("key", key);
    for (name, value) in fields {
        field(name, value.as_str().unwrap());
    }
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\nContent-Type: application/octet-stream\r\n\r\n{{}}\r\n--{boundary}--\r\n").as_bytes(),
    );
    let resp = reqwest::blocking::Client::new()
        .post(format!("{endpoint}/{bucket}"))
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(body)
        .send()
        .unwrap();
    (resp.status().as_u16(), resp.text().unwrap_or_default())
}

/// Issue 25, 5: a policy for `prod/web` once signed `starts-with prod/web`, so its holder could
/// write `prod/web2.manifest.json` (another bundle). Now it signs `prod/web.`, and the S3 server
/// itself (s3s checks POST policy conditions) refuses the other bundle's key.
#[test]
fn a_policy_for_a_prefix_reaches_only_that_bundles_keys() {
    let s3 = TestS3::start(&["bkt"]);
    for version in ["4", "2"] {
        let (code, out, err) = upload_policy(&[
            "--bucket",
            "bkt",
            "--prefix",
            "prod/web",
            "--region",
            "us-east-1",
            "--signature-version",
            version,
            "--acl",
            "none",
        ]);
        assert_eq!(code, Some(0), "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let text = v["Policy"].as_str().unwrap();
        assert!(text.contains(r#"["starts-with", "$key", "prod/web."]"#), "{text}");
        let fields = v["Fields"].as_object().unwrap();
        let (status, body) = form_post(&s3.endpoint, "bkt", fields, "prod/web2.manifest.json");
        // s3s says 400 InvalidPolicyDocument; AWS and Garage say 403 AccessDenied.
        assert!(
            matches!(status, 400 | 403) && body.contains("prod/web."),
            "v{version}: another bundle's key must be refused: {status} {body}"
        );
        assert!(!s3.object_file("bkt", "prod/web2.manifest.json").exists());
        let (status, _) = form_post(&s3.endpoint, "bkt", fields, "prod/webserver/x.manifest.json");
        assert!(matches!(status, 400 | 403), "v{version}: {status}");
        let (status, body) = form_post(&s3.endpoint, "bkt", fields, "prod/web.manifest.json");
        assert!((200..300).contains(&status), "v{version}: its own key: {status} {body}");
        // And the policy checks of bundle-instance take it without a warning.
        let p = UploadPolicy::parse(v["UploadPolicy"].as_str().unwrap()).unwrap();
        assert_eq!(p.broad_key_warning(), None);
    }
    // A plain-prefix policy (the aws-cli's, EC2's) is still taken, with a warning saying what it
    // lets a holder do.
    let text = policy::aws_cli_policy("bkt", "prod/web", Utc::now() + Duration::hours(24));
    let warnings = check(&text, "bkt", "prod/web", 1 << 20).unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("prod/web2.manifest.json") && w.contains("replace another bundle")),
        "{warnings:?}"
    );
}

/// Issue 25, 6: an already-expired --expires-at is refused (exit 2); a policy that would expire
/// before a bundle of the named size ends gets a warning with the assumed throughput.
#[test]
fn upload_policy_refuses_expired_and_warns_about_short_policies() {
    let base = ["--bucket", "bkt", "--prefix", "p", "--region", "us-east-1"];
    let past = (Utc::now() - Duration::minutes(5)).to_rfc3339();
    let (code, out, err) = upload_policy(&[&base[..], &["--expires-at", &past]].concat());
    assert_eq!(code, Some(2), "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("--expires-at") && err.contains("not in the future"),
        "{err}"
    );
    let (code, _, err) = upload_policy(&[&base[..], &["--expires", "0s"]].concat());
    assert_eq!(code, Some(2), "{err}");
    // 500 GiB at 20 MiB/s takes about 7 hours: a 1-hour policy is too short.
    let (code, out, err) = upload_policy(&[&base[..], &["--expires", "1h", "--size", "500GiB"]].concat());
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.is_empty());
    assert!(
        err.contains("warning") && err.contains("20 MiB/s") && err.contains("--expires"),
        "{err}"
    );
    let (code, _, err) = upload_policy(&[&base[..], &["--expires", "24h", "--size", "500GiB"]].concat());
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("warning"), "{err}");
    // --source: the size of the disk file.
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(200 << 30).unwrap();
    let (code, _, err) =
        upload_policy(&[&base[..], &["--expires", "30m", "--source", disk.to_str().unwrap()]].concat());
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("warning") && err.contains("200"), "{err}");
}

/// Issue 25.5: bundle-instance in policy mode takes a plain-prefix policy (the aws-cli's and
/// EC2's `starts-with "PREFIX"`), and says on stderr what it lets a holder do.
#[test]
fn a_plain_prefix_policy_is_taken_with_a_warning_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("mbr-disk.img", dir.path());
    let s3 = TestS3::start(&["bkt"]);
    let run = |prefix: &str| {
        let (b64, sig) = v4(prefix, None, ACCESS_KEY, SECRET_KEY, "us-east-1", Duration::hours(24));
        std::process::Command::new(env!("CARGO_BIN_EXE_winbundle"))
            .args([
                "bundle-instance",
                src.to_str().unwrap(),
                "--bucket",
                "bkt",
                "--prefix",
                "warn/win",
            ])
            .args(["--endpoint-url", &s3.endpoint, "--upload-policy", &b64])
            .args(["--upload-policy-signature", &sig, "--part-size", "1MiB", "-q"])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .output()
            .unwrap()
    };
    let o = run("warn/win");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("winbundle: warning: the upload policy's key condition is starts-with \"warn/win\"")
            && err.contains("warn/win2.manifest.json")
            && err.contains("replace another bundle")
            && err.contains("limited to \"warn/win.\""),
        "{err}"
    );
    assert!(s3.store("bkt").exists("warn/win.manifest.json").unwrap());
}
