//! `winbundle serve` as a process: EC2 Query requests signed by an independent SigV4 signer
//! (the aws-sigv4 crate), bundles POSTed with a policy to an in-process s3s server, every EC2
//! error code, cancel, the concurrency limit, restart and SIGTERM.

mod common;
#[path = "common/s3server.rs"]
mod s3server;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use common::*;
use s3server::{ACCESS_KEY, SECRET_KEY, TestS3};
use winbundle::api::sigv4::uri_encode;
use winbundle::store::ObjectStore;
use winbundle::store::post::policy;

const CALLER_AK: &str = "AKIACALLEREXAMPLE";
const CALLER_SK: &str = "caller/secret+key";
const INSTANCE: &str = "i-0123456789abcdef0";
const INSTANCE2: &str = "i-00000000000000002";

/// A running `winbundle serve`; killed when dropped.
struct Server {
    child: Child,
    endpoint: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    fn start(config: &Path, state: &Path) -> Server {
        Self::start_with_env(config, state, &[])
    }

    fn start_with_env(config: &Path, state: &Path, env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_winbundle"))
            .args(["serve", "--config", config.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .arg("--state-dir")
            .arg(state)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let endpoint = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line: {line:?}"))
            .to_string();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (mut err, sink) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Server {
            child,
            endpoint,
            stderr,
        }
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn client(&self) -> Client {
        Client {
            endpoint: self.endpoint.clone(),
            ak: CALLER_AK.into(),
            sk: CALLER_SK.into(),
            region: "us-east-1".into(),
            time: None,
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let end = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < end, "the server did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An EC2 client: requests signed with aws-sigv4 (not with winbundle's own code).
#[derive(Clone)]
struct Client {
    endpoint: String,
    ak: String,
    sk: String,
    region: String,
    /// Signing time (default: now).
    time: Option<SystemTime>,
}

fn form(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", uri_encode(k, false), uri_encode(v, false)))
        .collect::<Vec<_>>()
        .join("&")
}

struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn code(&self) -> String {
        xml_fields(&self.body)
            .0
            .get("Response/Errors/Error/Code")
            .cloned()
            .unwrap_or_default()
    }

    fn message(&self) -> String {
        xml_fields(&self.body)
            .0
            .get("Response/Errors/Error/Message")
            .cloned()
            .unwrap_or_default()
    }

    fn task_field(&self, f: &str) -> String {
        let (fields, _) = xml_fields(&self.body);
        for root in [
            "BundleInstanceResponse/bundleInstanceTask",
            "CancelBundleTaskResponse/bundleInstanceTask",
            "DescribeBundleTasksResponse/bundleInstanceTasksSet/item",
        ] {
            if let Some(v) = fields.get(&format!("{root}/{f}")) {
                return v.clone();
            }
        }
        String::new()
    }
}

impl Client {
    /// Signs and sends; `after_signing` may change the body before it goes out.
    fn send(&self, method: &str, query: &str, body: &str, after_signing: Option<&str>) -> Reply {
        let url = if query.is_empty() {
            format!("{}/", self.endpoint)
        } else {
            format!("{}/?{query}", self.endpoint)
        };
        let host = self.endpoint.trim_start_matches("http://").to_string();
        let mut headers = vec![("host".to_string(), host)];
        if method == "POST" {
            headers.push((
                "content-type".into(),
                "application/x-www-form-urlencoded; charset=utf-8".into(),
            ));
        }
        let identity: Identity = Credentials::new(&self.ak, &self.sk, None, None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ec2")
            .time(self.time.unwrap_or_else(SystemTime::now))
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let signable = SignableRequest::new(
            method,
            &url,
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::Bytes(body.as_bytes()),
        )
        .unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        for (k, v) in instructions.headers() {
            headers.push((k.to_string(), v.to_string()));
        }
        self.raw(method, &url, &headers, after_signing.unwrap_or(body))
    }

    fn raw(&self, method: &str, url: &str, headers: &[(String, String)], body: &str) -> Reply {
        let client = reqwest::blocking::Client::new();
        let mut rb = client.request(method.parse().unwrap(), url);
        for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
            rb = rb.header(k, v);
        }
        let resp = rb.body(body.to_string()).send().unwrap();
        Reply {
            status: resp.status().as_u16(),
            body: resp.text().unwrap(),
        }
    }

    fn post(&self, params: &[(&str, &str)]) -> Reply {
        self.send("POST", "", &form(params), None)
    }

    fn get(&self, params: &[(&str, &str)]) -> Reply {
        self.send("GET", &form(params), "", None)
    }

    fn describe(&self, id: &str) -> Reply {
        self.post(&[
            ("Action", "DescribeBundleTasks"),
            ("Version", "2016-11-15"),
            ("BundleId.1", id),
        ])
    }

    /// Polls until the task is in `state` (or failed), returning the last reply.
    fn wait_for(&self, id: &str, states: &[&str], within: Duration) -> Reply {
        let end = Instant::now() + within;
        loop {
            let r = self.describe(id);
            assert_eq!(r.status, 200, "{}", r.body);
            if states.contains(&r.task_field("state").as_str()) {
                return r;
            }
            assert!(
                Instant::now() < end,
                "task {id} not in {states:?} within {within:?}: {}",
                r.body
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A BundleInstance request as the aws-cli sends it, with a policy signed by the bucket owner.
fn bundle_params(instance: &str, bucket: &str, prefix: &str) -> Vec<(&'static str, String)> {
    let text = policy::aws_cli_policy(bucket, prefix, chrono::Utc::now() + chrono::Duration::hours(24));
    let b64 = policy::encode(&text);
    let sig = policy::sign(SECRET_KEY, &b64);
    vec![
        ("Action", "BundleInstance".into()),
        ("Version", "2016-11-15".into()),
        ("InstanceId", instance.into()),
        ("Storage.S3.Bucket", bucket.into()),
        ("Storage.S3.Prefix", prefix.into()),
        ("Storage.S3.AWSAccessKeyId", ACCESS_KEY.into()),
        ("Storage.S3.UploadPolicy", b64),
        ("Storage.S3.UploadPolicySignature", sig),
    ]
}

fn refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// An EC2 error answer: its status, code, a message naming `mentions`, and a RequestID.
fn expect(r: Reply, status: u16, code: &str, mentions: &str) {
    assert_eq!((r.status, r.code().as_str()), (status, code), "{}", r.body);
    assert!(
        r.message().contains(mentions),
        "{code}: {:?} lacks {mentions:?}",
        r.message()
    );
    let (fields, _) = xml_fields(&r.body);
    assert!(fields.contains_key("Response/RequestID"), "{}", r.body);
}

/// One task as `winbundle describe-bundle-tasks --state-dir STATE --bundle-ids ID` prints it.
fn cli_task(state: &Path, id: &str) -> serde_json::Value {
    let o = winbundle(&[
        "describe-bundle-tasks",
        "--state-dir",
        state.to_str().unwrap(),
        "--bundle-ids",
        id,
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["BundleTasks"][0].clone()
}

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    state: PathBuf,
    source: PathBuf,
}

/// A config for `s3`, with two instances on copies of the GPT fixture.
fn setup(s3: &TestS3, extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let source = fixture("gpt-disk.img", dir.path());
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            r#"region = "us-east-1"
{extra}
[s3]
endpoint_url = "{}"
concurrency = 1
max_attempts = 2
[bundle]
threads = 2
part_size = "1MiB"
[[caller]]
access_key_id = "{CALLER_AK}"
secret_access_key = "{CALLER_SK}"
[[instance]]
id = "{INSTANCE}"
source = '{}'
[[instance]]
id = "{INSTANCE2}"
source = '{}'
"#,
            s3.endpoint,
            source.display(),
            source.display()
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    Setup {
        config,
        state,
        source,
        _dir: dir,
    }
}

#[test]
fn aws_style_bundle_runs_in_the_background_and_restores_exactly() {
    let s3 = TestS3::start(&["bkt"]);
    let st = setup(&s3, "");
    let server = Server::start(&st.config, &st.state);
    let c = server.client();
    let params = bundle_params(INSTANCE, "bkt", "win/serve");
    let r = c.post(&refs(&params));
    assert_eq!(r.status, 200, "{}", r.body);
    let (fields, ns) = xml_fields(&r.body);
    assert_eq!(ns.as_deref(), Some("http://ec2.amazonaws.com/doc/2016-11-15/"));
    assert!(fields.contains_key("BundleInstanceResponse/requestId"));
    assert_eq!(r.task_field("state"), "pending");
    assert_eq!(r.task_field("instanceId"), INSTANCE);
    let id = r.task_field("bundleId");
    assert!(id.starts_with("bun-") && id.len() == 12, "{id}");
    // Never echoed: the policy signature (nor the policy itself).
    let sig = &params[7].1;
    assert!(
        !r.body.contains(sig.as_str()) && !r.body.contains("uploadPolicy"),
        "{}",
        r.body
    );

    let done = c.wait_for(&id, &["complete", "failed"], Duration::from_secs(60));
    assert_eq!(done.task_field("state"), "complete", "{}", done.body);
    assert_eq!(done.task_field("progress"), "100%");
    assert_eq!(done.task_field("storage/S3/bucket"), "bkt");
    assert_eq!(done.task_field("storage/S3/prefix"), "win/serve");
    assert_eq!(done.task_field("startTime"), r.task_field("startTime"));
    assert!(done.task_field("updateTime") >= done.task_field("startTime"));
    assert_eq!(done.task_field("error/code"), "");

    // Policy mode writes parts and the manifest with POSTs only.
    assert!(s3.faults.count("PostObject") >= 2);
    assert_eq!(s3.faults.count("CreateMultipartUpload"), 0);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("restored.img");
    restore_from(&s3.store("bkt"), "win/serve", &out).unwrap();
    assert_restored_matches(&st.source, &request(&st.source, "x").plan, &out);

    // The CLI sees the same task in the shared folder.
    let v = cli_task(&st.state, &id);
    assert_eq!(v["State"], "complete");

    // No secret in the server's log.
    let log = server.log();
    assert!(log.contains(&id), "{log}");
    // The aws-cli's plain-prefix policy (issue 25.5): taken, with a warning in the log saying
    // what its holder can reach.
    assert!(
        log.lines().any(|l| l.contains(&format!("{id} {INSTANCE} warning: "))
            && l.contains("starts-with \"win/serve\"")
            && l.contains("win/serve2.manifest.json")
            && l.contains("replace another bundle")),
        "{log}"
    );
    for secret in [sig.as_str(), CALLER_SK, SECRET_KEY] {
        assert!(!log.contains(secret), "{log}");
    }
}

#[test]
fn every_error_has_its_ec2_code_and_nothing_runs() {
    let s3 = TestS3::start(&["bkt"]);
    let st = setup(&s3, "");
    let server = Server::start(&st.config, &st.state);
    let c = server.client();
    let good = bundle_params(INSTANCE, "bkt", "win/e");
    let with = |k: &str, v: &str| -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = good.iter().map(|(a, b)| (a.to_string(), b.clone())).collect();
        match p.iter_mut().find(|(a, _)| a == k) {
            Some(e) => e.1 = v.to_string(),
            None => p.push((k.to_string(), v.to_string())),
        }
        p.retain(|(_, b)| b != "<drop>");
        p
    };
    let call = |p: &[(String, String)]| {
        let r: Vec<(&str, &str)> = p.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        c.post(&r)
    };

    // Authentication.
    let wrong = Client {
        sk: "not-the-secret".into(),
        ..c.clone()
    };
    expect(wrong.post(&refs(&good)), 401, "AuthFailure", "does not match");
    let unknown = Client {
        ak: "AKIAUNKNOWN".into(),
        ..c.clone()
    };
    expect(unknown.describe("bun-00000000"), 401, "AuthFailure", "AKIAUNKNOWN");
    let stale = Client {
        time: Some(SystemTime::now() - Duration::from_secs(20 * 60)),
        ..c.clone()
    };
    expect(stale.post(&refs(&good)), 401, "AuthFailure", "seconds away");
    let elsewhere = Client {
        region: "eu-west-1".into(),
        ..c.clone()
    };
    expect(elsewhere.post(&refs(&good)), 401, "AuthFailure", "--region us-east-1");
    let body = form(&refs(&good));
    let tampered = body.replace("win%2Fe", "win%2Fx");
    expect(
        c.send("POST", "", &body, Some(&tampered)),
        401,
        "AuthFailure",
        "does not match",
    );
    let unsigned = c.raw(
        "POST",
        &format!("{}/", c.endpoint),
        &[("content-type".into(), "application/x-www-form-urlencoded".into())],
        &body,
    );
    expect(unsigned, 401, "AuthFailure", "not signed");

    // Parameters of BundleInstance: (parameter, value or <drop>, status, code, the message names).
    let other_bucket = bundle_params(INSTANCE, "other", "win/e");
    let cases: [(&str, &str, u16, &str, &str); 13] = [
        ("InstanceId", "<drop>", 400, "MissingParameter", "InstanceId"),
        (
            "Storage.S3.UploadPolicySignature",
            "<drop>",
            400,
            "MissingParameter",
            "Storage.S3.UploadPolicySignature",
        ),
        (
            "Storage.S3.Bucket",
            "Bad_Bucket",
            400,
            "InvalidParameterValue",
            "Storage.S3.Bucket",
        ),
        (
            "Storage.S3.Prefix",
            "../up",
            400,
            "InvalidParameterValue",
            "Storage.S3.Prefix",
        ),
        ("DryRun", "maybe", 400, "InvalidParameterValue", "DryRun"),
        (
            "Storage.S3.UploadPolicy",
            "bm90IGpzb24=",
            400,
            "InvalidParameterValue",
            "Storage.S3.UploadPolicy",
        ),
        (
            "Storage.S3.UploadPolicySignature",
            "c2hvcnQ=",
            400,
            "InvalidParameterValue",
            "Storage.S3.UploadPolicySignature",
        ),
        (
            "Storage.S3.UploadPolicy",
            &other_bucket[6].1,
            400,
            "InvalidParameterValue",
            "another bucket",
        ),
        ("InstanceId", "vm-1", 400, "InvalidInstanceID.Malformed", "vm-1"),
        (
            "InstanceId",
            "i-0fffffffffffffff0",
            400,
            "InvalidInstanceID.NotFound",
            "i-0fffffffffffffff0",
        ),
        ("Colour", "red", 400, "UnknownParameter", "Colour"),
        ("Action", "RunInstances", 400, "InvalidAction", "RunInstances"),
        ("Action", "<drop>", 400, "MissingParameter", "Action"),
    ];
    for (param, value, status, code, mentions) in cases {
        expect(call(&with(param, value)), status, code, mentions);
    }
    expect(
        c.describe("bun-0000dead"),
        400,
        "InvalidBundleID.NotFound",
        "bun-0000dead",
    );
    expect(
        c.post(&[("Action", "CancelBundleTask"), ("BundleId", "bun-0000dead")]),
        400,
        "InvalidBundleID.NotFound",
        "bun-0000dead",
    );
    expect(
        c.post(&[("Action", "CancelBundleTask")]),
        400,
        "MissingParameter",
        "BundleId",
    );
    expect(
        c.post(&[
            ("Action", "DescribeBundleTasks"),
            ("Filter.1.Name", "colour"),
            ("Filter.1.Value.1", "red"),
        ]),
        400,
        "InvalidParameterValue",
        "colour",
    );
    expect(
        c.send("PUT", "Action=DescribeBundleTasks", "", None),
        405,
        "InvalidAction",
        "PUT",
    );

    // DryRun answers DryRunOperation after every check passed, and starts nothing.
    expect(call(&with("DryRun", "true")), 412, "DryRunOperation", "DryRun flag");
    expect(
        c.post(&[("Action", "DescribeBundleTasks"), ("DryRun", "true")]),
        412,
        "DryRunOperation",
        "DryRun",
    );

    // GET works as well as POST; no task was created by any of the above.
    let r = c.get(&[("Action", "DescribeBundleTasks"), ("Version", "2016-11-15")]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains("<item>"), "{}", r.body);
    assert_eq!(s3.faults.count("PostObject"), 0);
    let log = server.log();
    assert!(!log.contains(&good[7].1), "signature in the log: {log}");
}

#[test]
fn busy_instance_queue_and_cancel() {
    let s3 = TestS3::start(&["bkt"]);
    s3.faults.post_delay_ms.store(1200, Ordering::SeqCst);
    let st = setup(&s3, "max_concurrent_bundles = 1");
    let server = Server::start(&st.config, &st.state);
    let c = server.client();
    let first = c.post(&refs(&bundle_params(INSTANCE, "bkt", "q/one")));
    let a = first.task_field("bundleId");
    assert_eq!(first.status, 200, "{}", first.body);
    // A second bundle of the same instance is refused while the first runs.
    let again = c.post(&refs(&bundle_params(INSTANCE, "bkt", "q/again")));
    assert_eq!(
        (again.status, again.code().as_str()),
        (400, "BundlingInProgress"),
        "{}",
        again.body
    );
    assert!(again.message().contains(&a), "{}", again.message());
    // Another instance waits for the one slot, as pending.
    let second = c.post(&refs(&bundle_params(INSTANCE2, "bkt", "q/two")));
    let b = second.task_field("bundleId");
    c.wait_for(&a, &["bundling"], Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.describe(&b).task_field("state"), "pending");
    // Filters: by state and by instance (wildcards).
    let r = c.post(&[
        ("Action", "DescribeBundleTasks"),
        ("Filter.1.Name", "state"),
        ("Filter.1.Value.1", "pending"),
        ("Filter.1.Value.2", "complete"),
        ("Filter.2.Name", "instance-id"),
        ("Filter.2.Value.1", "i-0000*"),
    ]);
    assert_eq!(
        (r.body.matches("<item>").count(), r.task_field("bundleId")),
        (1, b.clone()),
        "{}",
        r.body
    );

    // Cancel the running one: cancelling at once, then failed/Cancelled, no manifest.
    let r = c.post(&[("Action", "CancelBundleTask"), ("BundleId", &a)]);
    assert_eq!(
        (r.status, r.task_field("state").as_str()),
        (200, "cancelling"),
        "{}",
        r.body
    );
    let done = c.wait_for(&a, &["failed", "complete"], Duration::from_secs(30));
    assert_eq!(done.task_field("state"), "failed", "{}", done.body);
    assert_eq!(done.task_field("error/code"), "Cancelled", "{}", done.body);
    assert!(!s3.store("bkt").exists("q/one.manifest.json").unwrap());
    // The queued one then runs to the end.
    s3.faults.post_delay_ms.store(0, Ordering::SeqCst);
    let done = c.wait_for(&b, &["complete", "failed"], Duration::from_secs(60));
    assert_eq!(done.task_field("state"), "complete", "{}", done.body);
    assert!(s3.store("bkt").exists("q/two.manifest.json").unwrap());
}

/// Issue 33: on a one-slot server, a damaged volume's bundle and a bundle that panics (the
/// fault-injection switch, once) both end `failed` with their error, each frees the slot, the
/// next healthy bundle completes, and SIGTERM stops the server within its grace period.
#[test]
fn a_damaged_volume_and_a_panicking_bundle_do_not_stop_serve() {
    if cfg!(windows) {
        eprintln!("skipped on Windows: it sends SIGTERM (`kill -TERM`), which Windows does not have");
        return;
    }
    let s3 = TestS3::start(&["bkt"]);
    let st = setup(&s3, "max_concurrent_bundles = 1");
    // INSTANCE's source: the root's first $INDEX_ROOT entry has length 0 (the crate panicked).
    let damaged = st.source.with_file_name("damaged.img");
    std::fs::copy(&st.source, &damaged).unwrap();
    zero_root_index_entry_length(&damaged, 10 << 20);
    let config = std::fs::read_to_string(&st.config).unwrap();
    let config = config.replacen(
        &format!("source = '{}'", st.source.display()),
        &format!("source = '{}'", damaged.display()),
        1,
    );
    std::fs::write(&st.config, config).unwrap();
    let mut server = Server::start_with_env(&st.config, &st.state, &[("WINBUNDLE_INJECT_PANIC", "compressor:once")]);
    let c = server.client();
    let bad = c.post(&refs(&bundle_params(INSTANCE, "bkt", "d/bad")));
    assert_eq!(bad.status, 200, "{}", bad.body);
    let panics = c.post(&refs(&bundle_params(INSTANCE2, "bkt", "d/panics")));
    assert_eq!(panics.status, 200, "{}", panics.body);
    let r = c.wait_for(
        &bad.task_field("bundleId"),
        &["failed", "complete"],
        Duration::from_secs(30),
    );
    assert_eq!(r.task_field("error/code"), "InvalidSource", "{}", r.body);
    assert!(
        r.task_field("error/message").contains("MFT record 5")
            && r.task_field("error/message").contains("index entry length 0"),
        "{}",
        r.body
    );
    let r = c.wait_for(
        &panics.task_field("bundleId"),
        &["failed", "complete"],
        Duration::from_secs(30),
    );
    assert_eq!(r.task_field("state"), "failed", "{}", r.body);
    assert_eq!(r.task_field("error/code"), "InternalError", "{}", r.body);
    assert!(
        r.task_field("error/message")
            .contains("injected fault in the compressor stage"),
        "{}",
        r.body
    );
    assert!(!s3.store("bkt").exists("d/panics.manifest.json").unwrap());
    let good = c.post(&refs(&bundle_params(INSTANCE2, "bkt", "d/good")));
    assert_eq!(good.status, 200, "{}", good.body);
    let r = c.wait_for(
        &good.task_field("bundleId"),
        &["failed", "complete"],
        Duration::from_secs(60),
    );
    assert_eq!(r.task_field("state"), "complete", "{}", r.body);
    assert!(s3.store("bkt").exists("d/good.manifest.json").unwrap());
    let status = server.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}: {}", server.log());
    assert!(!server.log().contains("panicked at"), "{}", server.log());
}

/// Issue 33.2: "cancel of a failing task always finishes". On a one-slot server, a bundle whose
/// store panics as it finishes its first object (`store-finish`, once) receives CancelBundleTask
/// over and over while it fails: every cancel is answered, the task ends `failed` (with its
/// panic, or Cancelled) within seconds instead of staying `cancelling`, the slot is given back
/// and the next bundle completes.
#[test]
fn cancel_of_a_failing_bundle_always_finishes_and_frees_the_slot() {
    let s3 = TestS3::start(&["bkt"]);
    s3.faults.post_delay_ms.store(300, Ordering::SeqCst);
    let st = setup(&s3, "max_concurrent_bundles = 1");
    let server = Server::start_with_env(
        &st.config,
        &st.state,
        &[("WINBUNDLE_INJECT_PANIC", "store-finish:once")],
    );
    let c = server.client();
    let failing = c.post(&refs(&bundle_params(INSTANCE, "bkt", "f/failing")));
    assert_eq!(failing.status, 200, "{}", failing.body);
    let id = failing.task_field("bundleId");
    // The next one waits for the slot.
    let next = c.post(&refs(&bundle_params(INSTANCE2, "bkt", "f/next")));
    assert_eq!(next.status, 200, "{}", next.body);
    c.wait_for(
        &id,
        &["bundling", "storing", "cancelling", "failed"],
        Duration::from_secs(30),
    );
    let start = Instant::now();
    let done = loop {
        let r = c.post(&[("Action", "CancelBundleTask"), ("BundleId", &id)]);
        assert_eq!(r.status, 200, "{}", r.body);
        let d = c.describe(&id);
        if ["failed", "complete"].contains(&d.task_field("state").as_str()) {
            break d;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "still {}", d.body);
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(done.task_field("state"), "failed", "{}", done.body);
    let code = done.task_field("error/code");
    assert!(code == "InternalError" || code == "Cancelled", "{}", done.body);
    assert!(!s3.store("bkt").exists("f/failing.manifest.json").unwrap());
    let r = c.wait_for(
        &next.task_field("bundleId"),
        &["failed", "complete"],
        Duration::from_secs(60),
    );
    assert_eq!(r.task_field("state"), "complete", "{}", r.body);
    assert!(s3.store("bkt").exists("f/next.manifest.json").unwrap());
    assert!(!server.log().contains("panicked at"), "{}", server.log());
}

/// Sets the length of the first entry of the root's `$INDEX_ROOT` to 0 on the volume at `vol`.
fn zero_root_index_entry_length(img: &Path, vol: u64) {
    use common::FileAt;
    use winbundle::ntfs::record;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(img).unwrap();
    let mut boot = vec![0u8; 512];
    f.read_exact_at(&mut boot, vol).unwrap();
    let cluster = u16::from_le_bytes([boot[11], boot[12]]) as u64 * boot[13] as u64;
    let mft = vol + u64::from_le_bytes(boot[0x30..0x38].try_into().unwrap()) * cluster;
    let at = mft + 5 * 1024;
    let mut rec = vec![0u8; 1024];
    f.read_exact_at(&mut rec, at).unwrap();
    record::apply_fixups(&mut rec, 5).unwrap();
    let attrs = record::attributes(&rec, 5).unwrap();
    let root = attrs.iter().find(|a| a.ty == 0x90).unwrap();
    let vo = root.offset + u16::from_le_bytes([rec[root.offset + 0x14], rec[root.offset + 0x15]]) as usize;
    let first = vo + 16 + u32::from_le_bytes(rec[vo + 16..vo + 20].try_into().unwrap()) as usize;
    rec[first + 8..first + 10].copy_from_slice(&0u16.to_le_bytes());
    record::encode_fixups(&mut rec);
    f.write_all_at(&rec, at).unwrap();
}

#[test]
fn restart_fails_orphaned_tasks_and_sigterm_cancels_cleanly() {
    if cfg!(windows) {
        eprintln!("skipped on Windows: it sends SIGTERM (`kill -TERM`), which Windows does not have");
        return;
    }
    let s3 = TestS3::start(&["bkt"]);
    s3.faults.post_delay_ms.store(1200, Ordering::SeqCst);
    let st = setup(&s3, "");
    // A server killed outright mid-bundle: the next one reports the task failed.
    let mut server = Server::start(&st.config, &st.state);
    let c = server.client();
    let id = c
        .post(&refs(&bundle_params(INSTANCE, "bkt", "r/one")))
        .task_field("bundleId");
    c.wait_for(&id, &["bundling"], Duration::from_secs(30));
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let mut server = Server::start(&st.config, &st.state);
    let c = server.client();
    let r = c.describe(&id);
    assert_eq!(r.task_field("state"), "failed", "{}", r.body);
    assert!(r.task_field("error/message").contains("server stopped"), "{}", r.body);
    assert!(
        server.log().contains("1 task(s) of an earlier server"),
        "{}",
        server.log()
    );

    // SIGTERM: the running bundle is cancelled cleanly and the server exits 0.
    let id = c
        .post(&refs(&bundle_params(INSTANCE, "bkt", "r/two")))
        .task_field("bundleId");
    c.wait_for(&id, &["bundling"], Duration::from_secs(30));
    let status = server.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}: {}", server.log());
    assert!(server.log().contains("stopping"), "{}", server.log());
    let v = cli_task(&st.state, &id);
    assert_eq!(v["State"], "failed", "{v}");
    assert_eq!(v["BundleTaskError"]["Code"], "Cancelled", "{v}");
    assert!(!s3.store("bkt").exists("r/two.manifest.json").unwrap());
}

#[test]
fn the_documented_configuration_is_valid() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/serve.md")).unwrap();
    let start = readme
        .find("```toml\nlisten =")
        .expect("docs/serve.md has the serve configuration")
        + 8;
    let text = &readme[start..start + readme[start..].find("```").unwrap()];
    let cfg = winbundle::api::config::Config::parse(text, Path::new("docs/serve.md")).unwrap();
    assert_eq!(cfg.instances[0].id, "i-0123456789abcdef0");
    assert_eq!(cfg.bundle.part_size.map(|s| s.0), Some(16 << 20));
}

/// BundleInstance with a SigV4 POST policy in the same three fields: bundled and restored; a
/// policy signed by another key than Storage.S3.AWSAccessKeyId, or for another region than the
/// server's bucket region, is refused naming the parameter, and no task is made.
#[test]
fn sigv4_policies_work_through_the_same_three_fields() {
    let s3 = TestS3::start(&["bkt"]);
    let st = setup(&s3, "");
    // The bucket's region is us-east-1 (also what s3s takes).
    let config = std::fs::read_to_string(&st.config)
        .unwrap()
        .replace("[s3]\n", "[s3]\nregion = \"us-east-1\"\n");
    std::fs::write(&st.config, config).unwrap();
    let server = Server::start(&st.config, &st.state);
    let c = server.client();
    let v4 = |prefix: &str, akid: &str, region: &str| {
        let now = chrono::Utc::now();
        let text = policy::v4_policy(&policy::V4Request {
            bucket: "bkt",
            prefix,
            acl: None,
            access_key_id: akid,
            region,
            now,
            expires: now + chrono::Duration::hours(24),
            max_object: policy::MAX_POST_OBJECT,
            extra: &[],
        });
        let b64 = policy::encode(&text);
        let sig = policy::sign_v4(SECRET_KEY, &policy::Credential::new(akid, now, region), &b64);
        let mut p = bundle_params(INSTANCE, "bkt", prefix);
        p[6].1 = b64;
        p[7].1 = sig;
        p
    };
    let wrong_region = v4("win/v4", ACCESS_KEY, "eu-west-3");
    expect(
        c.post(&refs(&wrong_region)),
        400,
        "InvalidParameterValue",
        "signed for the region eu-west-3",
    );
    let other_key = v4("win/v4", "AKIAOTHEROWNER", "us-east-1");
    expect(
        c.post(&refs(&other_key)),
        400,
        "InvalidParameterValue",
        "Storage.S3.AWSAccessKeyId",
    );
    let mut v2_signature = v4("win/v4", ACCESS_KEY, "us-east-1");
    v2_signature[7].1 = policy::sign(SECRET_KEY, &v2_signature[6].1);
    expect(
        c.post(&refs(&v2_signature)),
        400,
        "InvalidParameterValue",
        "64 hex digits",
    );
    assert!(!st.state.exists() || std::fs::read_dir(&st.state).unwrap().count() == 0);

    let params = v4("win/v4", ACCESS_KEY, "us-east-1");
    let r = c.post(&refs(&params));
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.task_field("bundleId");
    let done = c.wait_for(&id, &["complete", "failed"], Duration::from_secs(60));
    assert_eq!(done.task_field("state"), "complete", "{}", done.body);
    assert!(!done.body.contains(params[7].1.as_str()));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("restored.img");
    restore_from(&s3.store("bkt"), "win/v4", &out).unwrap();
    assert_restored_matches(&st.source, &request(&st.source, "x").plan, &out);
}

#[test]
fn many_clients_at_once_and_slow_ones_never_tie_it_up() {
    use std::io::Write;
    let s3 = TestS3::start(&["bkt"]);
    let st = setup(&s3, "");
    let server = Server::start(&st.config, &st.state);
    let host = server.endpoint.trim_start_matches("http://").to_string();
    // Slow clients first: connections that send nothing, half a request line, or headers
    // without the body they announce; all held open during the load.
    let opened = Instant::now();
    let mut slow = Vec::new();
    for i in 0..30 {
        let mut s = std::net::TcpStream::connect(&host).unwrap();
        match i % 3 {
            0 => {}
            1 => s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Le").unwrap(),
            _ => s
                .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nAction=Desc")
                .unwrap(),
        }
        slow.push(s);
    }
    // 50 signed clients, 40 DescribeBundleTasks each, and a burst of BundleInstance. Under Wine
    // (the Windows run of this suite) every request costs many times more CPU: a tenth of the
    // load there, so the bound below still tells a server tied up by the slow connections (their
    // header timeout is 10 s) from a busy one.
    let (clients, each) = if cfg!(windows) { (10, 20) } else { (50, 40) };
    let c = server.client();
    let describe: Vec<(&str, &str)> = vec![("Action", "DescribeBundleTasks"), ("Version", "2016-11-15")];
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (c, describe) = (c.clone(), describe.clone());
            std::thread::spawn(move || {
                (0..each)
                    .map(|_| {
                        let t = Instant::now();
                        let r = c.post(&describe);
                        assert_eq!(r.status, 200, "{}", r.body);
                        t.elapsed()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let burst: Vec<_> = (0..10)
        .map(|i| {
            let c = c.clone();
            std::thread::spawn(move || {
                let instance = if i % 2 == 0 { INSTANCE } else { INSTANCE2 };
                let r = c.post(&refs(&bundle_params(instance, "bkt", &format!("load/{i}"))));
                (r.status, r.code(), r.task_field("bundleId"))
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    let mut accepted = Vec::new();
    for b in burst {
        let (status, code, id) = b.join().unwrap();
        match status {
            200 => accepted.push(id),
            // One bundle per instance at a time: the others are refused as EC2 refuses them.
            _ => assert_eq!(code, "BundlingInProgress", "status {status}"),
        }
    }
    assert_eq!(latencies.len(), clients * each);
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    eprintln!(
        "{} DescribeBundleTasks from {clients} clients: p50 {:?}, p99 {:?}, max {:?}",
        clients * each,
        p(0.5),
        p(0.99),
        latencies[latencies.len() - 1]
    );
    assert!(p(0.99) < Duration::from_secs(5), "p99 {:?}", p(0.99));
    assert!(!accepted.is_empty() && accepted.len() <= 2, "{accepted:?}");
    // Every accepted bundle ends.
    for id in &accepted {
        let r = c.wait_for(id, &["complete", "failed"], Duration::from_secs(120));
        assert_eq!(r.task_field("state"), "complete", "{}", r.body);
    }
    // The slow connections were closed by the server (header and body timeouts), not kept.
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("a slow connection still open after {:?}: {e}", opened.elapsed()),
            }
        }
        let text = String::from_utf8_lossy(&got);
        assert!(got.is_empty() || text.contains(" 408 "), "{text}");
    }
    assert!(opened.elapsed() < Duration::from_secs(60));
}

/// A server killed outright in the middle of a bundle; after a restart, a BundleInstance for
/// the same instance, bucket and prefix resumes: the parts the first run's journal records are
/// not POSTed again, and the bundle restores exactly.
#[test]
fn a_bundle_cut_short_by_a_server_crash_resumes_after_the_restart() {
    let s3 = TestS3::start(&["bkt"]);
    s3.faults.post_delay_ms.store(300, Ordering::SeqCst);
    let st = setup(&s3, "");
    big_disk(st.source.parent().unwrap()); // the same file, now with 64 MiB of data
    // s3s now and then cannot read a form of random bytes (InvalidRequest, "failed to read file
    // stream") more than twice in a row: more attempts than the shared setup gives.
    let config = std::fs::read_to_string(&st.config).unwrap();
    std::fs::write(&st.config, config.replace("max_attempts = 2", "max_attempts = 8")).unwrap();
    let mut server = Server::start(&st.config, &st.state);
    let c = server.client();
    let id = c
        .post(&refs(&bundle_params(INSTANCE, "bkt", "crash/win")))
        .task_field("bundleId");
    // Four parts stored (part 0 is the probe's key, written again by the next run's probe),
    // others on their way: then the server dies. (Counted in the store, not by POSTs: s3s now
    // and then needs a form sent twice, and a loaded machine keeps several POSTs in flight.)
    let store = s3.store("bkt");
    let end = Instant::now() + Duration::from_secs(60);
    while store.list("crash/win.part.").map_or(0, |k| k.len()) < 4 {
        assert!(Instant::now() < end, "no progress: {}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    s3.faults.post_delay_ms.store(0, Ordering::SeqCst);
    // Forms the dead server sent in full are still held for the delay: let them land before
    // the count below starts.
    std::thread::sleep(Duration::from_millis(900));

    let server = Server::start(&st.config, &st.state);
    let c = server.client();
    assert_eq!(c.describe(&id).task_field("state"), "failed");
    let before = s3.faults.count_succeeded("PostObject");
    let id = c
        .post(&refs(&bundle_params(INSTANCE, "bkt", "crash/win")))
        .task_field("bundleId");
    let done = c.wait_for(&id, &["complete", "failed"], Duration::from_secs(120));
    assert_eq!(done.task_field("state"), "complete", "{}", done.body);
    // The job logs how it resumed just before its last line.
    let end = Instant::now() + Duration::from_secs(10);
    while !server.log().contains(&format!("{id} {INSTANCE} complete")) {
        assert!(Instant::now() < end, "{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = server.log();
    let reused: u32 = log
        .split("resumed the interrupted upload recorded in ")
        .nth(1)
        .and_then(|rest| rest.split(": ").nth(1))
        .and_then(|n| n.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume in the log: {log}"));
    // Part 0 was overwritten by the new run's policy probe; parts 1 and 2 (at least) reused.
    assert!(reused >= 2, "{reused} parts reused: {log}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&s3.store("bkt").get("crash/win.manifest.json").unwrap()).unwrap();
    let parts = manifest["data"]["objects"].as_array().unwrap().len();
    let disk_parts = manifest["disk"]["data"]["objects"].as_array().map_or(0, |o| o.len());
    // Stored forms, not POSTs sent: s3s now and then cannot read a form and it is sent again,
    // as often as a loaded machine makes it happen. What was stored is the probe, the parts not
    // reused, the disk stream's parts (written after the data), the chunk index and the manifest.
    let stored = s3.faults.count_succeeded("PostObject") - before;
    assert_eq!(
        stored,
        1 + parts - reused as usize + disk_parts + 2,
        "{stored} forms stored for {parts} parts, {reused} reused"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("restored.img");
    restore_from(&s3.store("bkt"), "crash/win", &out).unwrap();
    assert_restored_matches(&st.source, &request(&st.source, "x").plan, &out);
}

/// A task saved straight into the server's task folder, owned by `owner`.
fn seed_task(state: &Path, id: &str, prefix: &str, st: winbundle::task::State, owner: Option<&str>) {
    let now = winbundle::task::now_iso();
    let task = winbundle::task::BundleTask {
        bundle_id: id.into(),
        instance_id: INSTANCE.into(),
        state: st,
        start_time: now.clone(),
        update_time: now,
        bucket: "bkt".into(),
        prefix: prefix.into(),
        progress: "0%".into(),
        error: None,
    };
    winbundle::task::store::TaskStore::open(state)
        .unwrap()
        .save_owned(&task, owner.map(str::to_string))
        .unwrap();
}

/// Issue 25, 1: a 60,000-`*` filter overflowed the stack of the recursive matcher and killed
/// the server; `*a*a…*b` against a long prefix held a thread for ever. Now the first is refused
/// by the caps (naming the parameter), the second is answered, and a normal request after both
/// is answered within a second.
#[test]
fn hostile_filters_neither_stop_nor_hold_the_server() {
    let s3 = TestS3::start(&["bkt"]);
    let st = setup(&s3, "");
    seed_task(
        &st.state,
        "bun-0000000a",
        &"a".repeat(400),
        winbundle::task::State::Complete,
        Some(CALLER_AK),
    );
    let server = Server::start(&st.config, &st.state);
    let c = server.client();
    let stars = "*".repeat(60_000);
    let r = c.post(&[
        ("Action", "DescribeBundleTasks"),
        ("Filter.1.Name", "bundle-id"),
        ("Filter.1.Value.1", &stars),
    ]);
    expect(r, 400, "InvalidParameterValue", "Filter.1.Value.1");
    let backtrack = format!("{}b", "*a".repeat(12));
    let r = c.post(&[
        ("Action", "DescribeBundleTasks"),
        ("Filter.1.Name", "s3-prefix"),
        ("Filter.1.Value.1", &backtrack),
    ]);
    assert_eq!((r.status, r.body.matches("<item>").count()), (200, 0), "{}", r.body);
    let r = c.post(&[
        ("Action", "DescribeBundleTasks"),
        ("Filter.1.Name", "s3-prefix"),
        ("Filter.1.Value.1", &format!("{}a", "*a".repeat(12))),
    ]);
    assert_eq!((r.status, r.body.matches("<item>").count()), (200, 1), "{}", r.body);
    // Too many values, filters and ids: each refused naming its parameter.
    let many: Vec<(String, String)> = (1..=201)
        .map(|i| (format!("Filter.1.Value.{i}"), "x".to_string()))
        .chain([("Filter.1.Name".to_string(), "state".to_string())])
        .chain([("Action".to_string(), "DescribeBundleTasks".to_string())])
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    expect(c.post(&many), 400, "InvalidParameterValue", "Filter.1.Value.N");
    let ids: Vec<(String, String)> = (1..=201)
        .map(|i| (format!("BundleId.{i}"), format!("bun-{i:08x}")))
        .chain([("Action".to_string(), "DescribeBundleTasks".to_string())])
        .collect();
    let ids: Vec<(&str, &str)> = ids.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    expect(c.post(&ids), 400, "InvalidParameterValue", "BundleId.N");
    let long = "b".repeat(65);
    expect(
        c.post(&[("Action", "CancelBundleTask"), ("BundleId", &long)]),
        400,
        "InvalidParameterValue",
        "BundleId",
    );
    // The server is alive and answers at once.
    let started = Instant::now();
    let r = c.describe("bun-0000000a");
    assert_eq!(
        (r.status, r.task_field("state").as_str()),
        (200, "complete"),
        "{}",
        r.body
    );
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
}

const OTHER_AK: &str = "AKIAOTHERCALLER";
const ADMIN_AK: &str = "AKIAADMINCALLER";

/// Issue 25, 3: caller B listed caller A's tasks and could cancel them. Now each caller sees
/// only its own (another's id is InvalidBundleID.NotFound, as if it did not exist); an admin
/// caller sees all, including tasks with no recorded owner (the CLI's, older servers').
#[test]
fn callers_see_and_cancel_only_their_own_tasks() {
    let s3 = TestS3::start(&["bkt"]);
    let st = setup(
        &s3,
        &format!(
            "[[caller]]\naccess_key_id = \"{OTHER_AK}\"\nsecret_access_key = \"other-secret\"\n[[caller]]\naccess_key_id = \"{ADMIN_AK}\"\nsecret_access_key = \"admin-secret\"\nadmin = true\n"
        ),
    );
    use winbundle::task::State;
    // A running task of caller A (this process stands in for its bundler) and one of nobody.
    seed_task(
        &st.state,
        "bun-000000a1",
        "a/secret-prefix",
        State::Bundling,
        Some(CALLER_AK),
    );
    seed_task(&st.state, "bun-000000c1", "legacy", State::Complete, None);
    let server = Server::start(&st.config, &st.state);
    let a = server.client();
    let b = Client {
        ak: OTHER_AK.into(),
        sk: "other-secret".into(),
        ..server.client()
    };
    let admin = Client {
        ak: ADMIN_AK.into(),
        sk: "admin-secret".into(),
        ..server.client()
    };
    let all = |c: &Client| {
        let r = c.post(&[("Action", "DescribeBundleTasks")]);
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    };
    let seen = all(&a);
    assert!(
        seen.contains("bun-000000a1") && !seen.contains("bun-000000c1"),
        "{seen}"
    );
    let seen = all(&b);
    assert!(
        !seen.contains("bun-000000a1") && !seen.contains("secret-prefix"),
        "{seen}"
    );
    assert_eq!(seen.matches("<item>").count(), 0, "{seen}");
    expect(
        b.describe("bun-000000a1"),
        400,
        "InvalidBundleID.NotFound",
        "bun-000000a1",
    );
    expect(
        b.post(&[("Action", "CancelBundleTask"), ("BundleId", "bun-000000a1")]),
        400,
        "InvalidBundleID.NotFound",
        "bun-000000a1",
    );
    expect(
        b.post(&[("Action", "CancelBundleTask"), ("BundleId", "bun-000000c1")]),
        400,
        "InvalidBundleID.NotFound",
        "bun-000000c1",
    );
    assert_eq!(cli_task(&st.state, "bun-000000a1")["State"], "bundling");
    let seen = all(&admin);
    assert!(seen.contains("bun-000000a1") && seen.contains("bun-000000c1"), "{seen}");
    // B's own bundle: recorded with B's access key id (never a secret), seen by B, not by A.
    let r = b.post(&refs(&bundle_params(INSTANCE2, "bkt", "b/own")));
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.task_field("bundleId");
    let file = std::fs::read_to_string(st.state.join(format!("{id}.json"))).unwrap();
    assert!(file.contains(OTHER_AK) && !file.contains("other-secret"), "{file}");
    assert_eq!(b.describe(&id).task_field("bundleId"), id);
    expect(a.describe(&id), 400, "InvalidBundleID.NotFound", &id);
    let done = b.wait_for(&id, &["complete", "failed"], Duration::from_secs(60));
    assert_eq!(done.task_field("state"), "complete", "{}", done.body);
    // The owner stays recorded through the task's updates.
    let file = std::fs::read_to_string(st.state.join(format!("{id}.json"))).unwrap();
    assert!(file.contains(OTHER_AK), "{file}");
    // A cancels its own task; the CLI (no server) sees every task, as before.
    let r = a.post(&[("Action", "CancelBundleTask"), ("BundleId", "bun-000000a1")]);
    assert_eq!(
        (r.status, r.task_field("state").as_str()),
        (200, "cancelling"),
        "{}",
        r.body
    );
    assert_eq!(cli_task(&st.state, "bun-000000c1")["BundleId"], "bun-000000c1");
}

/// Issue 25.1, "no request may panic a worker": a request handler that panics (the debug-build
/// switch `WINBUNDLE_INJECT_PANIC=api-handler:once`) is answered 500 InternalError with a request
/// id; the server's log names that request and the panic (no panic output); the next request
/// is answered at once.
#[cfg(debug_assertions)]
#[test]
fn a_panicking_request_handler_answers_500_and_the_server_goes_on() {
    let s3 = TestS3::start(&["bkt"]);
    let st = setup(&s3, "");
    seed_task(
        &st.state,
        "bun-0000000b",
        "d/x",
        winbundle::task::State::Complete,
        Some(CALLER_AK),
    );
    let server = Server::start_with_env(&st.config, &st.state, &[("WINBUNDLE_INJECT_PANIC", "api-handler:once")]);
    let c = server.client();
    let r = c.describe("bun-0000000b");
    let id = xml_fields(&r.body)
        .0
        .get("Response/RequestID")
        .cloned()
        .unwrap_or_default();
    expect(r, 500, "InternalError", "the server's log says why");
    let started = Instant::now();
    let r = c.describe("bun-0000000b");
    assert_eq!(
        (r.status, r.task_field("state").as_str()),
        (200, "complete"),
        "{}",
        r.body
    );
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    let log = server.log();
    assert!(
        log.lines().any(|l| l.contains(&id)
            && l.contains("500 InternalError")
            && l.contains("injected fault in the api-handler stage")),
        "{log}"
    );
    assert!(!log.contains("panicked at"), "{log}");
}

#[test]
fn serve_encrypts_for_its_recipients_and_a_request_adds_its_own() {
    use age::secrecy::ExposeSecret;
    let s3 = TestS3::start(&["bkt"]);
    let st = setup(&s3, "");
    let (server_id, caller_id) = (age::x25519::Identity::generate(), age::x25519::Identity::generate());
    let text = std::fs::read_to_string(&st.config).unwrap().replace(
        "part_size = \"1MiB\"\n",
        &format!("part_size = \"1MiB\"\nencrypt_to = [\"{}\"]\n", server_id.to_public()),
    );
    std::fs::write(&st.config, text).unwrap();
    let server = Server::start(&st.config, &st.state);
    let c = server.client();
    // A request's recipient that is no key: refused, naming the parameter.
    let mut params = bundle_params(INSTANCE, "bkt", "win/enc");
    params.push(("EncryptTo.1", "age1notakey".into()));
    expect(c.post(&refs(&params)), 400, "InvalidParameterValue", "EncryptTo.N");
    params.pop();
    params.push(("EncryptTo.1", caller_id.to_public().to_string()));
    let r = c.post(&refs(&params));
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.task_field("bundleId");
    let done = c.wait_for(&id, &["complete", "failed"], Duration::from_secs(60));
    assert_eq!(done.task_field("state"), "complete", "{}", done.body);
    // Both the server's and the caller's identity open it; nothing does without one.
    let store = s3.store("bkt");
    let plain = winbundle::read::OpenedBundle::open(&store, "win/enc", &Default::default()).unwrap();
    assert_eq!(plain.manifest.format_version, 4);
    assert!(plain.require_key("win/enc").is_err());
    let dir = tempfile::tempdir().unwrap();
    for (n, who) in [server_id, caller_id].iter().enumerate() {
        let file = dir.path().join(format!("id{n}.txt"));
        std::fs::write(&file, who.to_string().expose_secret()).unwrap();
        let keyring = winbundle::crypt::keyring::Keyring::from_identity_files(&[file]).unwrap();
        let b = winbundle::read::OpenedBundle::open_readable(&store, "win/enc", &keyring).unwrap();
        let out = dir.path().join(format!("restored{n}.img"));
        let target = winbundle::read::RestoreTarget::File {
            path: out.clone(),
            force: true,
            assume_zeroed: false,
            direct: false,
        };
        b.restore(&target, 2, &winbundle::progress::NoProgress, &Default::default())
            .unwrap();
        assert_restored_matches(&st.source, &request(&st.source, "x").plan, &out);
    }
    // The chain key is kept in the server's task folder, owner-only.
    let kept: Vec<_> = walk(&st.state.join("keys"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "key"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
}
