//! S3 (AWS, MinIO, Garage, Ceph, s3s) as an object store, through aws-sdk-s3.
//!
//! * Data objects go up as multipart uploads ([`multipart`]): each part fully buffered with a
//!   known length (no aws-chunked bodies), uploaded concurrently, with `x-amz-checksum-sha256`
//!   that the server verifies; the same digest is the payload hash SigV4 signs ([`signing`]).
//! * The SDK's default CRC checksums are off (`WhenRequired`), so exactly the checksums we mean
//!   are sent, the same way on UploadPart and CompleteMultipartUpload.
//! * Timeouts are explicit; the SDK's standard retry mode retries throttling, 5xx, timeouts and
//!   dropped connections with backoff and jitter, and nothing else (AccessDenied,
//!   NoSuchBucket, InvalidAccessKeyId, SignatureDoesNotMatch fail at once).
//!
//! The store is synchronous (the pipeline runs on plain threads); it owns a small tokio runtime
//! for the SDK.

pub mod error;
pub mod http;
pub mod log;
pub mod multipart;
pub mod signing;
pub mod sse;
pub mod uploads;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::primitives::ByteStream;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

use super::{ObjectStore, ObjectWriter, StoreError, names};
use error::convert;
use signing::PrecomputedSha256;

/// Default parts uploaded at once: measured against Garage and s3s-fs on 2 cores, 4 keeps the
/// link busy without holding more part buffers than needed (see bench/).
pub const DEFAULT_CONCURRENCY: usize = 4;
/// Attempts per request (the first plus retries) in the SDK's standard retry mode.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// S3's smallest multipart part (all but the last).
pub const MIN_MULTIPART_PART: u64 = 5 << 20;
/// Establishing a TCP/TLS connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Waiting for the next bytes of a response (a server that stalls mid-body).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// One attempt of one request: a 64 MiB part at 1 MB/s still fits.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);
/// One request with all its retries.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(1200);
/// AbortMultipartUpload on the way out (after a failure or a cancel): bounded, so a server that
/// stopped answering cannot hold the exit.
const ABORT_TIMEOUT: Duration = Duration::from_secs(30);
/// Retry delays: the first, and the largest.
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(20);
/// How often a wait looks at the cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// How to reach S3. Unset fields come from the standard AWS environment and config files.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    /// Path-style addressing; default: on when an endpoint URL is given.
    pub force_path_style: Option<bool>,
    pub concurrency: usize,
    pub max_attempts: u32,
    /// Fixed credentials (access key id, secret key) instead of the default chain.
    pub credentials: Option<(String, String)>,
    /// Set by Ctrl-C or a cancel request: every wait on the server ends at once with
    /// [`StoreError::Cancelled`] (the request in flight is dropped).
    pub cancel: Option<Arc<AtomicBool>>,
    /// Start every data object afresh: abort any unfinished upload of its key instead of
    /// picking it up (`--no-resume`).
    pub no_resume: bool,
    /// Waiting for the next bytes of a response; default 60 s.
    pub read_timeout: Option<Duration>,
    /// First retry delay (doubling, with jitter, up to 20 s); default 1 s, so the default five
    /// attempts ride out a server restart of several seconds.
    pub initial_backoff: Option<Duration>,
    /// Server-side encryption of the objects written (and, with a customer key, read).
    pub sse: sse::SseOptions,
}

pub(crate) struct Inner {
    pub rt: Runtime,
    pub client: Client,
    pub bucket: String,
    pub permits: Arc<Semaphore>,
    pub endpoint: String,
    pub cancel: Option<Arc<AtomicBool>>,
    /// Pick up unfinished uploads of the same key.
    pub resume: bool,
    /// What a failed or cancelled run could not clean up (an upload it could not abort).
    pub leftovers: Mutex<Vec<String>>,
    /// The server has answered an UploadPartCopy: later objects' first copies need not wait
    /// for their answer (`--layout runs` starts most objects with one).
    pub copy_works: AtomicBool,
    pub sse: sse::SseOptions,
}

impl Inner {
    /// Runs one request (or a wait for one) to its end, or until the run is cancelled.
    pub(crate) fn run<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let Some(flag) = self.cancel.clone() else {
            return self.rt.block_on(fut);
        };
        self.rt.block_on(async move {
            tokio::select! {
                r = fut => r,
                () = cancelled(&flag) => Err(StoreError::Cancelled { op }),
            }
        })
    }
}

async fn cancelled(flag: &AtomicBool) {
    while !flag.load(Ordering::SeqCst) {
        tokio::time::sleep(CANCEL_POLL).await;
    }
}

/// A bucket in S3.
pub struct S3Store {
    inner: Arc<Inner>,
}

fn endpoint_from_env() -> Option<String> {
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

impl S3Store {
    /// Builds a client for `bucket`. Makes no request.
    pub fn connect(bucket: &str, opts: &S3Options) -> Result<Self, StoreError> {
        names::check_bucket(bucket)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("winbundle-s3")
            .enable_all()
            .build()
            .map_err(|e| StoreError::S3Config(format!("cannot start the I/O runtime: {e}")))?;
        let max_attempts = if opts.max_attempts == 0 {
            DEFAULT_MAX_ATTEMPTS
        } else {
            opts.max_attempts
        };
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http::https_client())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(opts.read_timeout.unwrap_or(READ_TIMEOUT))
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .operation_timeout(OPERATION_TIMEOUT)
                    .build(),
            )
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(max_attempts)
                    .with_initial_backoff(opts.initial_backoff.unwrap_or(INITIAL_BACKOFF))
                    .with_max_backoff(MAX_BACKOFF),
            )
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled());
        if let Some(p) = &opts.profile {
            loader = loader.profile_name(p);
        }
        if let Some(r) = &opts.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(e) = &opts.endpoint_url {
            loader = loader.endpoint_url(e);
        }
        if let Some((ak, sk)) = &opts.credentials {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(ak, sk, None, None, "winbundle"));
        }
        let sdk = rt.block_on(loader.load());
        let endpoint = opts.endpoint_url.clone().or_else(endpoint_from_env);
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(opts.force_path_style.unwrap_or(endpoint.is_some()))
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .interceptor(log::RequestLog);
        if sdk.region().is_none() {
            if endpoint.is_some() {
                // A custom endpoint still needs a region to sign with; MinIO and s3s take any.
                conf = conf.region(Region::new("us-east-1"));
            } else {
                return Err(StoreError::S3Config(
                    "no AWS region: pass --region or set AWS_REGION (or a region in your AWS profile)".into(),
                ));
            }
        }
        let client = Client::from_conf(conf.build());
        let concurrency = opts.concurrency.max(1);
        Ok(Self {
            inner: Arc::new(Inner {
                rt,
                client,
                bucket: bucket.to_string(),
                permits: Arc::new(Semaphore::new(concurrency)),
                endpoint: endpoint.unwrap_or_else(|| "AWS S3".into()),
                cancel: opts.cancel.clone(),
                resume: !opts.no_resume,
                leftovers: Mutex::default(),
                copy_works: AtomicBool::new(false),
                sse: opts.sse.clone(),
            }),
        })
    }

    fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let i = &self.inner;
        i.run("HeadObject", async {
            let req = sse::with_sse_c!(i.client.head_object().bucket(&i.bucket).key(key), i.sse);
            match req.send().await {
                Ok(o) => Ok(Some(o.content_length().unwrap_or(0).max(0) as u64)),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
                Err(e) => Err(convert("HeadObject", &i.bucket, key, e)),
            }
        })
    }
}

/// base64 of a SHA-256 digest, for `x-amz-checksum-sha256`.
pub(crate) fn b64(digest: &[u8; 32]) -> String {
    B64.encode(digest)
}

impl ObjectStore for S3Store {
    fn location(&self) -> String {
        format!("s3://{} at {}", self.inner.bucket, self.inner.endpoint)
    }

    fn server_side_encryption(&self) -> Option<serde_json::Value> {
        self.inner.sse.describe()
    }

    fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.head(key)?.is_some())
    }

    fn size(&self, key: &str) -> Result<u64, StoreError> {
        self.head(key)?.ok_or_else(|| StoreError::NotFound {
            key: key.to_string(),
            location: self.location(),
        })
    }

    fn read_at(&self, key: &str, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        if buf.is_empty() {
            return Ok(());
        }
        let i = &self.inner;
        let range = format!("bytes={}-{}", offset, offset + buf.len() as u64 - 1);
        // The SDK retries the request; a body cut off half-way is retried here.
        let mut last = None;
        for _ in 0..3 {
            let r = i.run("GetObject", async {
                let req = i.client.get_object().bucket(&i.bucket).key(key).range(&range);
                let out = sse::with_sse_c!(req, i.sse).send().await.map_err(|e| {
                    if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                        StoreError::NotFound {
                            key: key.to_string(),
                            location: self.location(),
                        }
                    } else {
                        convert("GetObject", &i.bucket, key, e)
                    }
                })?;
                // Straight into the caller's buffer, chunk by chunk: no collected copy.
                let mut body = out.body;
                let mut filled = 0usize;
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.map_err(|e| StoreError::S3Transport {
                        op: "GetObject",
                        location: format!("{}/{key}", i.bucket),
                        detail: format!("reading the body: {}", error::error_chain(&e)),
                    })?;
                    let room = buf.len() - filled;
                    if chunk.len() > room {
                        return Ok(filled + chunk.len()); // more than asked for: reported below
                    }
                    buf[filled..filled + chunk.len()].copy_from_slice(&chunk);
                    filled += chunk.len();
                }
                Ok(filled)
            });
            match r {
                Ok(n) if n == buf.len() => return Ok(()),
                Ok(n) => {
                    last = Some(StoreError::S3Transport {
                        op: "GetObject",
                        location: format!("{}/{key}", i.bucket),
                        detail: format!("asked for {} bytes ({range}), got {n}", buf.len()),
                    });
                }
                Err(e @ StoreError::S3Transport { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| StoreError::S3Config("read failed".into())))
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let i = &self.inner;
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let body = ByteStream::from(bytes.to_vec());
        i.run("PutObject", async {
            sse::with_sse_create!(i.client.put_object(), i.sse)
                .bucket(&i.bucket)
                .key(key)
                .body(body)
                .content_length(bytes.len() as i64)
                .checksum_sha256(b64(&digest))
                .customize()
                .interceptor(PrecomputedSha256(hex::encode(digest)))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| convert("PutObject", &i.bucket, key, e))
        })
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let i = &self.inner;
        i.run("DeleteObject", async {
            i.client
                .delete_object()
                .bucket(&i.bucket)
                .key(key)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| convert("DeleteObject", &i.bucket, key, e))
        })
    }

    fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StoreError> {
        Ok(Box::new(multipart::MultipartWriter::start(self.inner.clone(), key)?))
    }

    fn fresh_writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StoreError> {
        Ok(Box::new(multipart::MultipartWriter::start_fresh(
            self.inner.clone(),
            key,
        )?))
    }

    fn min_part_size(&self) -> u64 {
        MIN_MULTIPART_PART
    }

    fn copies_parts(&self) -> bool {
        true
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let i = &self.inner;
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = i.run("ListObjectsV2", async {
                i.client
                    .list_objects_v2()
                    .bucket(&i.bucket)
                    .prefix(prefix)
                    .set_continuation_token(token.clone())
                    .send()
                    .await
                    .map_err(|e| convert("ListObjectsV2", &i.bucket, prefix, e))
            })?;
            keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_string)));
            token = page.next_continuation_token().map(str::to_string);
            if !page.is_truncated().unwrap_or(false) || token.is_none() {
                break;
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn unfinished(&self, prefix: &str) -> Result<Vec<uploads::Upload>, StoreError> {
        uploads::list(&self.inner, prefix)
    }

    fn discard_unfinished(&self, u: &uploads::Upload) -> Result<(), StoreError> {
        uploads::abort(&self.inner, &u.key, &u.upload_id)
    }

    fn leftovers(&self) -> Option<String> {
        let left = self.inner.leftovers.lock().unwrap_or_else(|e| e.into_inner());
        (!left.is_empty()).then(|| {
            format!(
                "{} could not be aborted and remain{} until `winbundle cleanup --bucket {} --prefix PREFIX` (or a lifecycle rule) ends {}",
                left.join(", "),
                if left.len() == 1 { "s" } else { "" },
                self.inner.bucket,
                if left.len() == 1 { "it" } else { "them" },
            )
        })
    }
}
