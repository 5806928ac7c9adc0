//! An S3 server inside the test process: s3s + s3s-fs on a random loopback port, with faults
//! that tests can switch on (5xx answers, dropped connections, AccessDenied) and a log of the
//! operations it saw.

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
    /// Hold every UploadPart without answering (a server that stalls).
    pub stall_parts: AtomicBool,
    /// Answer AbortMultipartUpload with 403 AccessDenied (an upload that cannot be aborted).
    pub deny_abort: AtomicBool,
    /// Operations seen, in order.
    pub log: Mutex<Vec<String>>,
}

impl Faults {
    pub fn count(&self, op: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|o| *o == op).count()
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
            let op = classify(req.method(), req.uri().query().unwrap_or(""));
            faults.log.lock().unwrap().push(op.to_string());
            let delay = faults.post_delay_ms.load(Ordering::SeqCst);
            if op == "PostObject" && delay > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
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
            Service::call(&inner, req)
                .await
                .map_err(|e| BoxError::from(format!("{e:?}")))
        })
    }
}

pub struct TestS3 {
    pub endpoint: String,
    _root: tempfile::TempDir,
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
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let f = faults.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        continue;
                    };
                    let svc = Faulty {
                        inner: service.clone(),
                        faults: f.clone(),
                    };
                    tokio::spawn(async move {
                        let _ = ConnBuilder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(socket), svc)
                            .await;
                    });
                }
            });
        });
        TestS3 {
            endpoint,
            _root: root,
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
        }
    }

    pub fn store(&self, bucket: &str) -> winbundle::store::S3Store {
        winbundle::store::S3Store::connect(bucket, &self.options()).unwrap()
    }
}
