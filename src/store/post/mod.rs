//! Uploads with only an upload policy: S3 POST Object (browser-form upload), the way EC2's
//! BundleInstance wrote bundles. The form carries `key`, the ACL when the policy names one, the
//! signer's fields (version 2: `AWSAccessKeyId`, `policy`, `signature`; version 4:
//! `x-amz-algorithm`, `x-amz-credential`, `x-amz-date`, `policy`, `x-amz-signature`) exactly as
//! given, then `file`. No secret key is needed or read. A policy can only add objects: nothing
//! can be read back, replaced or deleted, so a failed bundle lists the parts it left behind.

pub mod journal;
pub mod policy;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crossbeam_channel::{SendTimeoutError, Sender, bounded};
use sha2::Digest;

use super::{ObjectReceipt, ObjectStore, ObjectWriter, PartInfo, StoreError, names};
pub use journal::Journal;
use journal::Stored;
pub use policy::{PolicyError, UploadPolicy};

/// The operation named in errors of uploads with a version 2 policy.
pub const POST_V2: &str = "PostObject (SigV2 policy)";
/// The operation named in errors of uploads with a version 4 policy.
pub const POST_V4: &str = "PostObject (SigV4 policy)";

/// What to do about a server's refusal of a policy upload (`op` is [`POST_V2`] or [`POST_V4`]).
pub fn hint(op: &str, code: &str) -> Option<&'static str> {
    let v2 = op == POST_V2;
    Some(match code {
        "SignatureDoesNotMatch" => {
            "the policy signature does not match: the bucket owner must sign this exact policy with the secret key of the access key id given (--owner-akid / Storage.S3.AWSAccessKeyId); a policy changed after signing is refused"
        }
        "InvalidAccessKeyId" => {
            "the S3 server does not know the owner's access key id (--owner-akid / Storage.S3.AWSAccessKeyId): check it, and the S3 endpoint"
        }
        "AccessControlListNotSupported" => {
            "the bucket has ACLs disabled (Object Ownership \"bucket owner enforced\", the default for AWS buckets made since April 2023): ask the bucket owner for a policy without an ACL (`winbundle upload-policy --acl none`)"
        }
        "AccessDenied" | "Forbidden" => {
            "the server refused the policy upload: the policy may have expired or not cover this bucket and prefix, or the owner's key may not write the bucket; ask the bucket owner for a new policy"
        }
        "NoSuchBucket" => "the bucket does not exist: the bucket owner must create it first",
        "InvalidArgument"
        | "InvalidRequest"
        | "NotImplemented"
        | "InvalidSignatureVersion"
        | "AuthorizationHeaderMalformed"
            if v2 =>
        {
            "the server does not take signature-version-2 POST policies (AWS buckets made since June 2020 or in regions opened since 2014, Garage): ask the bucket owner for a version 4 policy (`winbundle upload-policy`, whose default it is, or boto3's generate_presigned_post)"
        }
        "InvalidArgument" | "InvalidRequest" | "AuthorizationHeaderMalformed" | "AuthorizationQueryParametersError" => {
            "the server refused the form under the version 4 policy (its message says which rule): check that the policy's region (in its x-amz-credential) is the bucket's region, that it covers this bucket, prefix and part size, that it has not expired, and that it is passed unchanged"
        }
        _ => return None,
    })
}

/// A POST upload waiting for a worker.
struct Job {
    key: String,
    body: Vec<u8>,
    /// The body's size and SHA-256 when the writer knows them (for the journal).
    stored: Option<Stored>,
}

/// Where and how to POST.
#[derive(Clone)]
pub struct PostTarget {
    /// `https://BUCKET.s3.amazonaws.com/`, or `ENDPOINT/BUCKET` (path style) for other servers.
    pub url: String,
    pub bucket: String,
    pub policy: UploadPolicy,
    /// Every form field but `key` and `file`, signature included: never logged.
    fields: Vec<(String, String)>,
}

impl std::fmt::Debug for PostTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostTarget")
            .field("url", &self.url)
            .field("bucket", &self.bucket)
            .field("signature_version", &self.policy.signing.version())
            .finish_non_exhaustive()
    }
}

impl PostTarget {
    /// A target for uploads with `policy` and its `signature`, made by the owner of
    /// `access_key_id` (for version 4 it is also in the policy, and must agree). Checks the
    /// signature's shape and the ACL; the rest is checked by [`UploadPolicy::check`].
    pub fn new(
        url: String,
        bucket: &str,
        access_key_id: &str,
        policy: UploadPolicy,
        signature: &str,
    ) -> Result<Self, PolicyError> {
        policy.check_signature_shape(signature)?;
        policy.check_signer(Some(access_key_id), None)?;
        let fields = policy.form_fields(access_key_id, signature)?;
        Ok(Self {
            url,
            bucket: bucket.to_string(),
            policy,
            fields,
        })
    }

    /// The operation name errors carry: which kind of policy the server refused.
    pub fn op(&self) -> &'static str {
        match self.policy.signing {
            policy::Signing::V2 => POST_V2,
            policy::Signing::V4(_) => POST_V4,
        }
    }

    /// The form-upload URL for `bucket` at `endpoint` (None: AWS, in `region` if given). Built
    /// with a URL builder from a checked bucket and region: neither can name another host.
    pub fn url_for(bucket: &str, endpoint: Option<&str>, region: Option<&str>) -> Result<String, PolicyError> {
        let bad = |m: String| PolicyError {
            code: "InvalidParameterValue",
            message: m,
        };
        names::check_bucket(bucket).map_err(|e| bad(e.to_string()))?;
        let url = match endpoint {
            Some(e) => {
                let mut url = reqwest::Url::parse(e)
                    .map_err(|err| bad(format!("the S3 endpoint URL {e:?} is not a URL ({err})")))?;
                url.path_segments_mut()
                    .map_err(|()| bad(format!("the S3 endpoint URL {e:?} cannot have a path")))?
                    .pop_if_empty()
                    .push(bucket);
                url
            }
            None => {
                let host = match region {
                    Some(r) if r != "us-east-1" => {
                        names::check_region(r).map_err(|m| bad(format!("the bucket's region: {m}")))?;
                        format!("{bucket}.s3.{r}.amazonaws.com")
                    }
                    _ => format!("{bucket}.s3.amazonaws.com"),
                };
                let mut url = reqwest::Url::parse("https://s3.amazonaws.com/").map_err(|e| bad(e.to_string()))?;
                url.set_host(Some(&host)).map_err(|e| bad(format!("{host:?}: {e}")))?;
                url
            }
        };
        Ok(url.to_string())
    }
}

struct Shared {
    target: PostTarget,
    client: reqwest::blocking::Client,
    max_attempts: u32,
    uploaded: Mutex<Vec<String>>,
    error: Mutex<Option<StoreError>>,
    /// Set by Ctrl-C or a cancel request: no new upload starts, and no wait goes on.
    cancel: Option<Arc<AtomicBool>>,
    /// What this bundle's earlier runs and this one stored (see [`journal`]).
    journal: OnceLock<Journal>,
}

/// A bucket reachable only through an upload policy.
pub struct PostStore {
    shared: std::sync::Arc<Shared>,
    jobs: Mutex<Option<Sender<Job>>>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl PostStore {
    pub fn new(target: PostTarget, concurrency: usize, max_attempts: u32) -> Result<Self, StoreError> {
        Self::with_cancel(target, concurrency, max_attempts, None)
    }

    /// As [`PostStore::new`]; once `cancel` is set, no new upload starts and no wait goes on
    /// (a POST already on the wire runs to its end or its timeout in the background).
    pub fn with_cancel(
        target: PostTarget,
        concurrency: usize,
        max_attempts: u32,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<Self, StoreError> {
        names::check_bucket(&target.bucket)?;
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(1200))
            // S3 answers a POST itself; a redirect (a policy's, or a server's) is never followed.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| StoreError::S3Config(format!("cannot build the HTTP client: {e}")))?;
        let shared = std::sync::Arc::new(Shared {
            target,
            client,
            max_attempts: max_attempts.max(1),
            uploaded: Mutex::default(),
            error: Mutex::default(),
            cancel,
            journal: OnceLock::new(),
        });
        let (tx, rx) = bounded::<Job>(0);
        let mut workers = Vec::new();
        for _ in 0..concurrency.max(1) {
            let (rx, shared) = (rx.clone(), shared.clone());
            workers.push(std::thread::spawn(move || {
                for job in rx.iter() {
                    if shared.cancelled() || shared.error.lock().map(|e| e.is_some()).unwrap_or(true) {
                        continue; // after a failure or a cancel, drop the rest
                    }
                    match post(&shared, &job.key, job.body, job.stored) {
                        Ok(()) => shared.uploaded.lock().map(|mut u| u.push(job.key)).unwrap_or(()),
                        Err(e) => {
                            if let Ok(mut slot) = shared.error.lock() {
                                slot.get_or_insert(e);
                            }
                        }
                    }
                }
            }));
        }
        Ok(Self {
            shared,
            jobs: Mutex::new(Some(tx)),
            workers: Mutex::new(workers),
        })
    }

    /// Keeps a journal of what is stored, and skips objects an earlier run of the same bundle
    /// stored with the same bytes (see [`journal`]).
    pub fn with_journal(self, journal: Journal) -> Self {
        let _ = self.shared.journal.set(journal);
        self
    }

    /// The journal, when the store keeps one.
    pub fn journal(&self) -> Option<&Journal> {
        self.shared.journal.get()
    }

    fn failed(&self) -> Option<StoreError> {
        self.shared.failed()
    }

    /// Objects uploaded so far.
    pub fn uploaded(&self) -> Vec<String> {
        self.shared.uploaded.lock().map(|u| u.clone()).unwrap_or_default()
    }

    fn read_only_error(&self) -> StoreError {
        StoreError::S3Config(
            "an upload policy only allows uploads: reading, replacing or deleting objects needs credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)".into(),
        )
    }
}

impl Shared {
    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.load(Ordering::SeqCst))
    }

    fn failed(&self) -> Option<StoreError> {
        self.error.lock().ok().and_then(|e| e.as_ref().map(clone_error))
    }
}

/// One object, buffered whole, then handed to an upload worker.
struct PostWriter {
    tx: Sender<Job>,
    shared: std::sync::Arc<Shared>,
    key: String,
    buf: Vec<u8>,
    /// The parts ended so far; an object of one part has its size and SHA-256 known.
    parts: Vec<PartInfo>,
}

impl ObjectWriter for PostWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn end_part(&mut self, part: &PartInfo) -> Result<(), StoreError> {
        self.parts.push(*part);
        Ok(())
    }

    fn stored_bytes(&self) -> u64 {
        0
    }

    fn finish(self: Box<Self>) -> Result<ObjectReceipt, StoreError> {
        crate::panics::inject("store-finish");
        if let Some(e) = self.shared.failed() {
            return Err(e);
        }
        let PostWriter {
            tx,
            shared,
            key,
            buf,
            parts,
        } = *self;
        let stored = match parts.as_slice() {
            [p] if p.size == buf.len() as u64 => Some(Stored {
                size: p.size,
                sha256: p.sha256,
            }),
            _ => None,
        };
        let mut receipt = ObjectReceipt::default();
        if let (Some(j), Some(now)) = (shared.journal.get(), stored)
            && let Some(before) = j.earlier(&key)
        {
            receipt.resumed.resumed_from = Some(format!("recorded in {}", j.path().display()));
            if before == now {
                receipt.resumed.reused_parts = 1;
                receipt.resumed.reused_bytes = now.size;
                return Ok(receipt); // stored by an earlier run, with these very bytes
            }
            receipt.resumed.replaced_parts = 1;
        }
        let mut job = Job { key, body: buf, stored };
        loop {
            // Waits for a free worker, looking at the cancel flag meanwhile.
            match tx.send_timeout(job, Duration::from_millis(100)) {
                Ok(()) => return Ok(receipt),
                Err(SendTimeoutError::Timeout(j)) if !shared.cancelled() => job = j,
                Err(SendTimeoutError::Timeout(_)) => return Err(StoreError::Cancelled { op: "PostObject" }),
                Err(SendTimeoutError::Disconnected(_)) => {
                    return Err(StoreError::S3Config("the upload workers stopped".into()));
                }
            }
        }
    }

    fn abort(self: Box<Self>) {}
}

/// StoreError is not Clone (io errors); the POST store only ever holds these kinds.
fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::S3 {
            op,
            location,
            code,
            message,
        } => StoreError::S3 {
            op,
            location: location.clone(),
            code: code.clone(),
            message: message.clone(),
        },
        StoreError::S3Transport { op, location, detail } => StoreError::S3Transport {
            op,
            location: location.clone(),
            detail: detail.clone(),
        },
        other => StoreError::S3Config(other.to_string()),
    }
}

/// The multipart/form-data body of a POST Object upload, built once: the fields, then `file`.
/// (reqwest's blocking multipart needs a copy of the data per attempt; this body is built once
/// and resent by reference.)
fn form_body(t: &PostTarget, key: &str, data: &[u8]) -> (String, bytes::Bytes) {
    let boundary = format!("winbundle-{}", crate::task::new_request_id().replace('-', ""));
    let mut body = Vec::with_capacity(data.len() + 4096);
    let fields = t.fields.iter().map(|(n, v)| (n.as_str(), v.as_str()));
    for (name, value) in std::iter::once(("key", key)).chain(fields) {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
    }
    let file_name = key.rsplit('/').next().unwrap_or(key).replace(['"', '\r', '\n'], "_");
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (
        format!("multipart/form-data; boundary={boundary}"),
        bytes::Bytes::from(body),
    )
}

/// One POST Object (see [`post_once`]), recorded in the journal once the server took it.
fn post(s: &Shared, key: &str, data: Vec<u8>, stored: Option<Stored>) -> Result<(), StoreError> {
    let journal = s.journal.get();
    let stored = journal.map(|_| {
        stored.unwrap_or_else(|| Stored {
            size: data.len() as u64,
            sha256: sha2::Sha256::digest(&data).into(),
        })
    });
    if let Some(j) = journal {
        j.withdraw(key)?;
    }
    post_once(s, key, data)?;
    if let (Some(j), Some(stored)) = (journal, stored) {
        // Without its line the object is only sent again by a resumed run: not worth failing for.
        let _ = j.record(key, stored);
    }
    Ok(())
}

/// A redirect answer (3xx): never followed, an error of its own.
fn r3xx(status: u16) -> bool {
    (300..400).contains(&status)
}

/// One POST Object, retried on 5xx and connection failures with backoff.
fn post_once(s: &Shared, key: &str, data: Vec<u8>) -> Result<(), StoreError> {
    let t = &s.target;
    let location = format!("{}/{key}", t.bucket);
    let (content_type, body) = form_body(t, key, &data);
    drop(data);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let started = std::time::Instant::now();
        let request = s
            .client
            .post(&t.url)
            .header(reqwest::header::CONTENT_TYPE, content_type.as_str())
            // Streamed in small pieces: s3s (0.14) fails to parse a form whose file bytes arrive
            // in large reads ending in a partial boundary; small writes keep reads small.
            .body(reqwest::blocking::Body::sized(
                std::io::Cursor::new(body.clone()),
                body.len() as u64,
            ));
        let retry_later = match request.send() {
            Ok(r) if r.status().is_success() => {
                tracing::debug!(
                    target: "winbundle::s3",
                    "{} {key} ({} bytes): {} in {} ms (attempt {attempt})",
                    t.op(),
                    body.len(),
                    r.status().as_u16(),
                    started.elapsed().as_millis()
                );
                return Ok(());
            }
            Ok(r) => {
                let status = r.status().as_u16();
                let to = r
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .map(str::to_string);
                let text = r.text().unwrap_or_default();
                let (code, message) = match (xml_field(&text, "Code"), xml_field(&text, "Message")) {
                    (c, _) if r3xx(status) => (
                        c.unwrap_or_else(|| super::s3::error::redirect_code(status).into()),
                        super::s3::error::redirect_message(status, to.as_deref()),
                    ),
                    (c, m) => (
                        c.unwrap_or_else(|| format!("HTTP{status}")),
                        m.unwrap_or_else(|| format!("HTTP {status}")),
                    ),
                };
                let err = StoreError::S3 {
                    op: t.op(),
                    location: location.clone(),
                    code,
                    message,
                };
                // A body the server could not read whole is worth sending again: AWS says
                // IncompleteBody or RequestTimeout; s3s 0.14 answers InvalidRequest ("failed to
                // read file stream") when its form parser trips over how the bytes arrived.
                let resend = matches!(&err, StoreError::S3 { code, message, .. }
                    if code == "IncompleteBody" || code == "RequestTimeout"
                        || (code == "InvalidRequest" && message.contains("stream")));
                if status < 500 && status != 429 && !resend {
                    return Err(err);
                }
                err
            }
            Err(e) => StoreError::S3Transport {
                op: t.op(),
                location: location.clone(),
                detail: super::s3::error::error_chain(&e),
            },
        };
        if attempt >= s.max_attempts {
            tracing::warn!(target: "winbundle::s3", "{} {key}: {retry_later} (attempt {attempt}, the last)", t.op());
            return Err(retry_later);
        }
        tracing::warn!(
            target: "winbundle::s3",
            "{} {key}: {retry_later} after {} ms (attempt {attempt} of {}; sending again)",
            t.op(),
            started.elapsed().as_millis(),
            s.max_attempts
        );
        // Exponential backoff with jitter: 200 ms, 400 ms, ... up to 10 s.
        let base = 200u64 << (attempt - 1).min(6);
        let jitter = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0) as u64)
            % base;
        std::thread::sleep(Duration::from_millis((base + jitter).min(10_000)));
    }
}

/// The text of `<name>…</name>` in an XML error document.
fn xml_field(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(xml[start..end].to_string())
}

impl ObjectStore for PostStore {
    fn location(&self) -> String {
        format!(
            "s3://{} (POST with an upload policy, {})",
            self.shared.target.bucket, self.shared.target.url
        )
    }

    /// What the policy makes every upload ask for.
    fn server_side_encryption(&self) -> Option<serde_json::Value> {
        self.shared.target.policy.server_side().map(|s| s.describe())
    }

    /// A policy cannot look: assume nothing is there.
    fn exists(&self, _key: &str) -> Result<bool, StoreError> {
        Ok(false)
    }

    fn size(&self, _key: &str) -> Result<u64, StoreError> {
        Err(self.read_only_error())
    }

    fn read_at(&self, _key: &str, _offset: u64, _buf: &mut [u8]) -> Result<(), StoreError> {
        Err(self.read_only_error())
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.flush()?;
        post(&self.shared, key, bytes.to_vec(), None)?;
        if let Ok(mut u) = self.shared.uploaded.lock() {
            u.push(key.to_string());
        }
        Ok(())
    }

    fn delete(&self, _key: &str) -> Result<(), StoreError> {
        Err(self.read_only_error())
    }

    fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StoreError> {
        if let Some(e) = self.failed() {
            return Err(e);
        }
        let tx = self
            .jobs
            .lock()
            .ok()
            .and_then(|j| j.clone())
            .ok_or_else(|| StoreError::S3Config("the store is closed".into()))?;
        Ok(Box::new(PostWriter {
            tx,
            shared: self.shared.clone(),
            key: key.to_string(),
            buf: Vec::new(),
            parts: Vec::new(),
        }))
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Closing the queue lets the workers finish what they have; then they are joined.
        if let Ok(mut j) = self.jobs.lock() {
            j.take();
        }
        let workers: Vec<_> = self
            .workers
            .lock()
            .map(|mut w| w.drain(..).collect())
            .unwrap_or_default();
        for w in workers {
            while !w.is_finished() {
                if self.shared.cancelled() {
                    // A POST on the wire cannot be called back: leave it to its timeout.
                    return Err(StoreError::Cancelled { op: "PostObject" });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = w.join();
        }
        match self.failed() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn unfinished(&self, _prefix: &str) -> Result<Vec<super::Upload>, StoreError> {
        Err(self.read_only_error())
    }

    fn leftovers(&self) -> Option<String> {
        let left = self.uploaded();
        (!left.is_empty()).then(|| match self.journal() {
            Some(j) => format!(
                "these objects were written and remain (an upload policy cannot delete them): {}; run the same command again to resume: what they hold is recorded in {} and is not sent again",
                left.join(", "),
                j.path().display()
            ),
            None => format!(
                "these objects were written and remain (an upload policy can neither delete them nor resume the bundle: run it again to start over): {}",
                left.join(", ")
            ),
        })
    }

    fn preflight(&self, keys: &[String], part_size: u64, seconds: f64) -> Result<Vec<String>, StoreError> {
        Ok(self.check_policy(keys, part_size, Some(seconds))?)
    }
}

impl PostStore {
    /// Asks the server whether it takes this policy and signature, before anything is read: a
    /// tiny upload to `key` (the first part's key, which the real part replaces). A refusal
    /// comes back with the server's code and message; a large part refused mid-upload could
    /// only report a dropped connection.
    pub fn probe(&self, key: &str) -> Result<(), StoreError> {
        let min = self
            .shared
            .target
            .policy
            .conditions
            .iter()
            .find_map(|c| match c {
                policy::Condition::LengthRange { min, .. } => Some(*min),
                _ => None,
            })
            .unwrap_or(0);
        let body = vec![0u8; min as usize];
        let stored = Stored {
            size: body.len() as u64,
            sha256: sha2::Sha256::digest(&body).into(),
        };
        if let Some(j) = self.journal() {
            j.withdraw(key)?;
        }
        post_once(&self.shared, key, body)?;
        match self.journal() {
            // Its line must reach the journal: the earlier run's part there is gone.
            Some(j) => j.overwritten(key, stored),
            None => Ok(()),
        }
    }

    /// The policy checks for a bundle: keys, part size, and whether it lasts until the end.
    pub fn check_policy(
        &self,
        keys: &[String],
        part_size: u64,
        seconds: Option<f64>,
    ) -> Result<Vec<String>, PolicyError> {
        let now = chrono::Utc::now();
        let finish_by = seconds.map(|s| now + chrono::Duration::seconds(s.ceil() as i64));
        self.shared
            .target
            .policy
            .check(&self.shared.target.bucket, keys, part_size, now, finish_by)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_urls_are_built_not_pasted() {
        assert_eq!(
            PostTarget::url_for("bkt", Some("http://127.0.0.1:9000/"), None).unwrap(),
            "http://127.0.0.1:9000/bkt"
        );
        assert_eq!(
            PostTarget::url_for("bkt", Some("http://127.0.0.1:9000"), Some("x@evil")).unwrap(),
            "http://127.0.0.1:9000/bkt"
        );
        assert_eq!(
            PostTarget::url_for("bkt", None, Some("eu-west-3")).unwrap(),
            "https://bkt.s3.eu-west-3.amazonaws.com/"
        );
        assert_eq!(
            PostTarget::url_for("bkt", None, None).unwrap(),
            "https://bkt.s3.amazonaws.com/"
        );
        // The region of the attack: it named a loopback port as the host.
        for region in ["x@127.0.0.1:18556#", "us-east-1.evil.com/", "EU-WEST-1", "a b", ""] {
            let e = PostTarget::url_for("bkt", None, Some(region)).unwrap_err();
            assert!(e.message.contains("not a region name"), "{region}: {}", e.message);
        }
        assert!(PostTarget::url_for("b/../x", None, None).is_err());
    }

    #[test]
    fn refusal_hints_say_what_to_change() {
        assert!(
            hint(POST_V4, "AccessControlListNotSupported")
                .unwrap()
                .contains("--acl none")
        );
        assert!(
            hint(POST_V2, "AccessControlListNotSupported")
                .unwrap()
                .contains("--acl none")
        );
        assert!(hint(POST_V2, "InvalidRequest").unwrap().contains("version 4 policy"));
        assert!(
            !hint(POST_V4, "InvalidRequest")
                .unwrap()
                .contains("version 4 policy (`winbundle")
        );
        assert!(
            hint(POST_V4, "SignatureDoesNotMatch")
                .unwrap()
                .contains("changed after signing")
        );
        assert_eq!(hint(POST_V4, "SlowDown"), None);
    }
}
