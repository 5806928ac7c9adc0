#![allow(dead_code)] // each test binary uses part of it
//! An S3 server inside the test process: s3s + s3s-fs on a random loopback port, with faults
//! that tests can switch on (5xx answers, dropped connections, AccessDenied) and a log of the
//! operations it saw.
//!
//! s3s-fs has no ListMultipartUploads and lists parts without ETags or checksums; this layer
//! keeps its own table of unfinished uploads and answers both calls as AWS does (Garage's
//! answers are checked against the same code in tests/e2e.sh).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub const ACCESS_KEY: &str = "AKIAWINBUNDLETEST";
pub const SECRET_KEY: &str = "winbundle-test-secret-key";

/// Switchable faults, applied to UploadPart requests.
#[derive(Default)]
pub struct Faults {
    /// Answer this many UploadPart requests with 500 InternalError.
    pub fail_5xx: AtomicU32,
    /// Drop the connection of this many UploadPart requests.
    pub drop: AtomicU32,
    /// Answer every UploadPart with 403 AccessDenied.
    pub deny: AtomicBool,
    /// Hold every PostObject (policy upload) this many milliseconds: keeps a bundle running.
    pub post_delay_ms: AtomicU64,
    /// Accept this many more PostObject requests, then answer 403 AccessDenied (None: no limit).
    pub posts_left: Mutex<Option<u32>>,
    /// Answer this many UploadPart requests with 503 SlowDown (throttling).
    pub slow_down: AtomicU32,
    /// Hold every UploadPart without answering (a server that stalls).
    pub stall_parts: AtomicBool,
    /// Answer AbortMultipartUpload with 403 AccessDenied (an upload that cannot be aborted).
    pub deny_abort: AtomicBool,
    /// Operations seen, in order.
    pub log: Mutex<Vec<String>>,
    /// ListParts leaves out part checksums (servers that only give ETags).
    pub no_part_checksums: AtomicBool,
    /// Unfinished multipart uploads by upload id.
    pub uploads: Mutex<std::collections::BTreeMap<String, Pending>>,
    /// Answer UploadPartCopy with 501 NotImplemented (a server that does not copy).
    pub refuse_copy: AtomicBool,
    /// Accept this many more CreateMultipartUpload requests, then answer 403 AccessDenied
    /// (None: no limit).
    pub creates_left: Mutex<Option<u32>>,
    /// Accept this many more UploadPart requests, then answer 403 AccessDenied (None: no
    /// limit): an upload cut short after some parts were stored.
    pub parts_left: Mutex<Option<u32>>,
    /// Request body bytes received, by operation.
    pub bytes_in: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Operations seen with their keys (`GetObject bkt/p.manifest.json`), in order.
    pub requests: Mutex<Vec<String>>,
    /// Operations the server answered with a 2xx status, in order.
    pub succeeded: Mutex<Vec<String>>,
    /// SSE-C as AWS enforces it (s3s-fs has none): the key MD5 each object (`bucket/key`) was
    /// created with. Requests on such an object need the same key (AWS also refuses a key for
    /// an object stored without one; this table does not, so that a missing object answers 404).
    /// The bytes on disk stay plain: a test double of the headers' contract, not of the cipher.
    pub sse_c: Mutex<std::collections::BTreeMap<String, String>>,
    /// `x-amz-server-side-encryption` and the KMS key id of each request that sent them:
    /// `CreateMultipartUpload bkt/p.image.zst AES256 -`.
    pub sse_requests: Mutex<Vec<String>>,
}

/// The SSE-C headers of a request, checked as AWS checks them: (key MD5) when present, or the
/// message of an InvalidArgument answer.
fn sse_c_of(headers: &http::HeaderMap, prefix: &str) -> Result<Option<String>, &'static str> {
    use base64::Engine as _;
    let h = |n: &str| {
        headers
            .get(format!("{prefix}{n}"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (alg, key, md5) = (h("algorithm"), h("key"), h("key-MD5"));
    if alg.is_none() && key.is_none() && md5.is_none() {
        return Ok(None);
    }
    if alg.as_deref() != Some("AES256") {
        return Err("The encryption algorithm must be AES256.");
    }
    let raw = key
        .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
        .filter(|k| k.len() == 32)
        .ok_or("The secret key was invalid for the specified algorithm.")?;
    let want = base64::engine::general_purpose::STANDARD.encode(<md5::Md5 as md5::Digest>::digest(&raw));
    if md5.as_deref() != Some(want.as_str()) {
        return Err("The calculated MD5 hash of the key did not match the hash that was provided.");
    }
    Ok(Some(want))
}

impl Faults {
    /// Refuses a request whose SSE-C headers do not fit the object, as AWS does; records the
    /// key of objects created with one, and the SSE-S3/KMS headers of every request.
    fn check_sse(&self, op: &str, path: &str, headers: &http::HeaderMap) -> Option<http::Response<s3s::Body>> {
        let (bucket, key) = bucket_key(path);
        let object = format!("{bucket}/{key}");
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
        if headers.contains_key("x-amz-server-side-encryption") {
            self.sse_requests.lock().unwrap().push(format!(
                "{op} {object} {} {}",
                h("x-amz-server-side-encryption"),
                h("x-amz-server-side-encryption-aws-kms-key-id")
            ));
        }
        let given = match sse_c_of(headers, "x-amz-server-side-encryption-customer-") {
            Ok(g) => g,
            Err(m) => return Some(s3_error(400, "InvalidArgument", m)),
        };
        let mut objects = self.sse_c.lock().unwrap();
        match op {
            "PutObject" | "CreateMultipartUpload" => {
                match &given {
                    Some(md5) => objects.insert(object, md5.clone()),
                    None => objects.remove(&object),
                };
                None
            }
            "UploadPartCopy" => {
                let src = headers
                    .get("x-amz-copy-source")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let src = percent_decode(src.trim_start_matches('/'));
                let given_src = match sse_c_of(headers, "x-amz-copy-source-server-side-encryption-customer-") {
                    Ok(g) => g,
                    Err(m) => return Some(s3_error(400, "InvalidArgument", m)),
                };
                (objects.get(&src) != given_src.as_ref() || objects.get(&object) != given.as_ref()).then(|| {
                    s3_error(
                        400,
                        "InvalidRequest",
                        "The SSE-C parameters of the copy source or target do not match the objects.",
                    )
                })
            }
            "UploadPart" | "CompleteMultipartUpload" | "GetObject" | "HeadObject" => {
                // A key for an object stored without one: AWS refuses it too, but a missing
                // object must still answer 404, and this table does not know which exist.
                let stored = objects.get(&object)?;
                if Some(stored) == given.as_ref() || (op == "CompleteMultipartUpload" && given.is_none()) {
                    return None;
                }
                Some(if op == "HeadObject" {
                    http::Response::builder().status(400).body(s3s::Body::empty()).unwrap()
                } else {
                    s3_error(
                        400,
                        "InvalidRequest",
                        "The object was stored using a form of Server Side Encryption. The correct parameters must be provided to retrieve the object.",
                    )
                })
            }
            _ => None,
        }
    }
}

/// An unfinished multipart upload, as ListMultipartUploads and ListParts report it.
#[derive(Clone, Debug)]
pub struct Pending {
    pub bucket: String,
    pub key: String,
    pub initiated: String,
    /// Part number → (size, ETag, base64 SHA-256 checksum sent with it).
    pub parts: std::collections::BTreeMap<u32, (u64, String, Option<String>)>,
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(x) = u8::from_str_radix(&v[i + 1..i + 3], 16)
        {
            out.push(x);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// One more request out of an allowance (None: no limit); false once it is used up.
fn take_allowed(left: &Mutex<Option<u32>>) -> bool {
    match left.lock().unwrap().as_mut() {
        Some(0) => false,
        Some(n) => {
            *n -= 1;
            true
        }
        None => true,
    }
}

/// `/bucket/key` of a path-style request.
fn bucket_key(path: &str) -> (String, String) {
    let path = percent_decode(path.trim_start_matches('/'));
    let (b, k) = path.split_once('/').unwrap_or((&path, ""));
    (b.to_string(), k.to_string())
}

fn xml_ok(body: String) -> http::Response<s3s::Body> {
    http::Response::builder()
        .status(200)
        .header("content-type", "application/xml")
        .body(s3s::Body::from(body))
        .unwrap()
}

impl Faults {
    /// Answers ListMultipartUploads and ListParts from the table; None for other requests.
    fn answer_listing(&self, op: &str, path: &str, query: &str) -> Option<http::Response<s3s::Body>> {
        let uploads = self.uploads.lock().unwrap();
        let (bucket, key) = bucket_key(path);
        match op {
            "ListMultipartUploads" => {
                let prefix = query_param(query, "prefix").unwrap_or_default();
                let mut xml = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListMultipartUploadsResult><Bucket>{bucket}</Bucket><Prefix>{prefix}</Prefix><IsTruncated>false</IsTruncated>"
                );
                for (id, u) in uploads
                    .iter()
                    .filter(|(_, u)| u.bucket == bucket && u.key.starts_with(&prefix))
                {
                    xml += &format!(
                        "<Upload><Key>{}</Key><UploadId>{id}</UploadId><Initiated>{}</Initiated></Upload>",
                        u.key, u.initiated
                    );
                }
                Some(xml_ok(xml + "</ListMultipartUploadsResult>"))
            }
            "ListParts" => {
                let id = query_param(query, "uploadId").unwrap_or_default();
                let Some(u) = uploads.get(&id) else {
                    return Some(s3_error(404, "NoSuchUpload", "The specified upload does not exist."));
                };
                let mut xml = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListPartsResult><Bucket>{bucket}</Bucket><Key>{key}</Key><UploadId>{id}</UploadId><IsTruncated>false</IsTruncated>"
                );
                for (n, (size, etag, sum)) in &u.parts {
                    xml += &format!("<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag><Size>{size}</Size>");
                    if let Some(sum) = sum.as_ref().filter(|_| !self.no_part_checksums.load(Ordering::SeqCst)) {
                        xml += &format!("<ChecksumSHA256>{sum}</ChecksumSHA256>");
                    }
                    xml += "</Part>";
                }
                Some(xml_ok(xml + "</ListPartsResult>"))
            }
            _ => None,
        }
    }

    /// Keeps the table up to date with a request that succeeded.
    fn record(&self, op: &str, path: &str, query: &str, headers: &http::HeaderMap, resp: &http::Response<s3s::Body>) {
        if !resp.status().is_success() {
            return;
        }
        self.succeeded.lock().unwrap().push(op.to_string());
        let mut uploads = self.uploads.lock().unwrap();
        let id = query_param(query, "uploadId").unwrap_or_default();
        match op {
            "CreateMultipartUpload" => {
                let body = resp
                    .body()
                    .bytes()
                    .map(|b| String::from_utf8_lossy(&b).to_string())
                    .unwrap_or_default();
                let Some(id) = body.split("<UploadId>").nth(1).and_then(|r| r.split('<').next()) else {
                    return;
                };
                let (bucket, key) = bucket_key(path);
                let initiated = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
                uploads.insert(
                    id.to_string(),
                    Pending {
                        bucket,
                        key,
                        initiated,
                        parts: Default::default(),
                    },
                );
            }
            "UploadPart" => {
                let Some(u) = uploads.get_mut(&id) else { return };
                let n: u32 = query_param(query, "partNumber")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
                let size = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                let etag = resp
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                u.parts.insert(n, (size, etag, header("x-amz-checksum-sha256")));
            }
            "UploadPartCopy" => {
                let Some(u) = uploads.get_mut(&id) else { return };
                let n: u32 = query_param(query, "partNumber")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let size = headers
                    .get("x-amz-copy-source-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.split_once('-'))
                    .and_then(|(a, b)| Some(b.parse::<u64>().ok()? + 1 - a.parse::<u64>().ok()?))
                    .unwrap_or(0);
                u.parts.insert(n, (size, String::new(), None));
            }
            "CompleteMultipartUpload" | "AbortMultipartUpload" => {
                uploads.remove(&id);
            }
            _ => {}
        }
    }
}

impl Faults {
    pub fn count(&self, op: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|o| *o == op).count()
    }

    /// Operations `op` the server answered with a 2xx status.
    pub fn count_succeeded(&self, op: &str) -> usize {
        self.succeeded.lock().unwrap().iter().filter(|o| *o == op).count()
    }

    /// Request body bytes received by operation `op`.
    pub fn bytes_in(&self, op: &str) -> u64 {
        self.bytes_in.lock().unwrap().get(op).copied().unwrap_or(0)
    }

    /// Forgets the operations and bytes seen so far.
    pub fn reset_counts(&self) {
        self.log.lock().unwrap().clear();
        self.requests.lock().unwrap().clear();
        self.succeeded.lock().unwrap().clear();
        self.bytes_in.lock().unwrap().clear();
    }
}

fn take(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

fn classify(method: &hyper::Method, query: &str) -> &'static str {
    let has = |k: &str| query.split('&').any(|p| p == k || p.starts_with(&format!("{k}=")));
    match (method.as_str(), has("uploadId"), has("uploads"), has("partNumber")) {
        ("PUT", true, _, true) => "UploadPart",
        ("GET", _, true, _) => "ListMultipartUploads",
        ("GET", true, _, _) => "ListParts",
        ("POST", _, true, _) => "CreateMultipartUpload",
        ("POST", true, _, _) => "CompleteMultipartUpload",
        ("POST", false, false, _) if query.is_empty() => "PostObject",
        ("DELETE", true, _, _) => "AbortMultipartUpload",
        ("PUT", _, _, _) => "PutObject",
        ("GET", _, _, _) => "GetObject",
        ("HEAD", _, _, _) => "HeadObject",
        ("DELETE", _, _, _) => "DeleteObject",
        _ => "Other",
    }
}

fn s3_error(status: u16, code: &str, message: &str) -> http::Response<s3s::Body> {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    http::Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .body(s3s::Body::from(xml))
        .unwrap()
}

/// The s3s service behind the switchable faults.
#[derive(Clone)]
struct Faulty {
    inner: s3s::service::S3Service,
    faults: Arc<Faults>,
}

impl Service<http::Request<Incoming>> for Faulty {
    type Response = http::Response<s3s::Body>;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        let (inner, faults) = (self.inner.clone(), self.faults.clone());
        Box::pin(async move {
            let query = req.uri().query().unwrap_or("").to_string();
            let path = req.uri().path().to_string();
            let mut op = classify(req.method(), &query);
            if op == "UploadPart" && req.headers().contains_key("x-amz-copy-source") {
                op = "UploadPartCopy";
            }
            faults.log.lock().unwrap().push(op.to_string());
            faults
                .requests
                .lock()
                .unwrap()
                .push(format!("{op} {}", percent_decode(path.trim_start_matches('/'))));
            let len: u64 = req
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            *faults.bytes_in.lock().unwrap().entry(op.to_string()).or_default() += len;
            if op == "UploadPartCopy" && faults.refuse_copy.load(Ordering::SeqCst) {
                return Ok(s3_error(
                    501,
                    "NotImplemented",
                    "A header you provided implies functionality that is not implemented.",
                ));
            }
            if let Some(resp) = faults.answer_listing(op, &path, &query) {
                return Ok(resp);
            }
            if let Some(resp) = faults.check_sse(op, &path, req.headers()) {
                return Ok(resp);
            }
            let headers = req.headers().clone();
            let delay = faults.post_delay_ms.load(Ordering::SeqCst);
            if op == "PostObject" && delay > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            }
            let allowance = match op {
                "PostObject" => Some(&faults.posts_left),
                "CreateMultipartUpload" => Some(&faults.creates_left),
                "UploadPart" => Some(&faults.parts_left),
                _ => None,
            };
            if allowance.is_some_and(|left| !take_allowed(left)) {
                return Ok(s3_error(403, "AccessDenied", "Access Denied"));
            }
            if op == "AbortMultipartUpload" && faults.deny_abort.load(Ordering::SeqCst) {
                return Ok(s3_error(403, "AccessDenied", "Access Denied"));
            }
            if op == "UploadPart" {
                if faults.stall_parts.load(Ordering::SeqCst) {
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                }
                if faults.deny.load(Ordering::SeqCst) {
                    return Ok(s3_error(403, "AccessDenied", "Access Denied"));
                }
                if take(&faults.slow_down) {
                    return Ok(s3_error(503, "SlowDown", "Please reduce your request rate."));
                }
                if take(&faults.fail_5xx) {
                    return Ok(s3_error(
                        500,
                        "InternalError",
                        "We encountered an internal error. Please try again.",
                    ));
                }
                if take(&faults.drop) {
                    return Err(BoxError::from("dropping the connection"));
                }
            }
            let resp = Service::call(&inner, req)
                .await
                .map_err(|e| BoxError::from(format!("{e:?}")))?;
            faults.record(op, &path, &query, &headers, &resp);
            Ok(resp)
        })
    }
}

pub struct TestS3 {
    pub endpoint: String,
    root: tempfile::TempDir,
    pub faults: Arc<Faults>,
    _thread: std::thread::JoinHandle<()>,
}

impl TestS3 {
    /// Starts a server with these buckets.
    pub fn start(buckets: &[&str]) -> Self {
        let root = tempfile::tempdir().unwrap();
        for b in buckets {
            std::fs::create_dir_all(root.path().join(b)).unwrap();
        }
        let faults = Arc::new(Faults::default());
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut b = S3ServiceBuilder::new(fs);
        b.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = b.build();
        let f = faults.clone();
        let (endpoint, thread) = serve_loopback(move |socket| {
            let svc = Faulty {
                inner: service.clone(),
                faults: f.clone(),
            };
            async move {
                let _ = ConnBuilder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), svc)
                    .await;
            }
        });
        TestS3 {
            endpoint,
            root,
            faults,
            _thread: thread,
        }
    }

    pub fn options(&self) -> winbundle::store::S3Options {
        winbundle::store::S3Options {
            region: Some("us-east-1".into()),
            endpoint_url: Some(self.endpoint.clone()),
            profile: None,
            force_path_style: Some(true),
            concurrency: 4,
            max_attempts: 4,
            credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
            cancel: None,
            no_resume: false,
            read_timeout: None,
            // Short retry delays keep the fault tests quick; the default is 1 s.
            initial_backoff: Some(std::time::Duration::from_millis(100)),
            sse: Default::default(),
        }
    }

    /// The file s3s-fs keeps an object's bytes in.
    #[allow(dead_code)] // not every test binary looks at the files
    pub fn object_file(&self, bucket: &str, key: &str) -> std::path::PathBuf {
        self.root.path().join(bucket).join(key)
    }

    pub fn store(&self, bucket: &str) -> winbundle::store::S3Store {
        winbundle::store::S3Store::connect(bucket, &self.options()).unwrap()
    }
}

/// Listens on a free loopback port and runs `on_connection` for every connection, on a runtime
/// of its own thread. Returns `http://127.0.0.1:PORT` and the thread.
pub fn serve_loopback<F, Fut>(on_connection: F) -> (String, std::thread::JoinHandle<()>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                if let Ok((socket, _)) = listener.accept().await {
                    tokio::spawn(on_connection(socket));
                }
            }
        });
    });
    (endpoint, thread)
}
