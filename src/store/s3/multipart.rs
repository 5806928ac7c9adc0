//! One data object as an S3 multipart upload. Each part is buffered whole, then uploaded on the
//! runtime while the pipeline goes on; at most `concurrency` uploads run at once (a semaphore),
//! so memory stays within (concurrency + 1) × part size. Any failure, and `abort`, ends with
//! AbortMultipartUpload, so no parts are left costing money.
//!
//! Resume: an unfinished upload of the same key (a run killed outright, a machine that
//! rebooted) is picked up. Each recomputed part is compared with the part of that number the
//! upload holds (its SHA-256 checksum, or its ETag as MD5 where the server lists no checksums):
//! an equal part is not sent again, a different one (the source changed) is sent and replaces
//! it. Older unfinished uploads of the key are aborted.
//!
//! Copies (incremental bundles): a part can be an UploadPartCopy of a range of the parent
//! bundle's object, made only while that object keeps the ETag its manifest recorded. Its
//! SHA-256 is the server's checksum of the copy: in the UploadPartCopy answer (AWS computes one
//! for copied parts of an upload created with SHA-256 checksums), else as ListParts lists it
//! before the upload is completed (Garage), else the source range is read back and hashed here
//! (s3s-fs). The store's first copy waits for its answer: a server that does not do
//! UploadPartCopy says so there, and the caller sends the bytes instead; later copies, in this
//! object or another, run in the background like uploads.
//!
//! A fresh writer (`--layout runs`: every object after the first) creates its upload in the
//! background; its parts wait for the id, the caller does not.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use md5::{Digest, Md5};
use tokio::task::JoinHandle;

use super::error::convert;
use super::signing::PrecomputedSha256;
use super::uploads::{self, StoredPart};
use super::{ABORT_TIMEOUT, Inner, b64};
use crate::store::{CopySource, CopyStats, ObjectReceipt, ObjectWriter, PartInfo, ResumeStats, StoreError};

/// What one part's request left: the part for CompleteMultipartUpload, and for a copy its
/// SHA-256.
struct Done {
    part: CompletedPart,
    copied: Option<[u8; 32]>,
    /// A copy whose answer carried no checksum: its source, to get the SHA-256 another way.
    unsummed: Option<CopySource>,
    stats: CopyStats,
}

/// Error codes with which a server says it does not do UploadPartCopy at all.
const COPY_REFUSED: &[&str] = &["NotImplemented", "MethodNotAllowed", "UnsupportedOperation"];

pub struct MultipartWriter {
    inner: Arc<Inner>,
    key: String,
    /// The upload's id, once CreateMultipartUpload has answered.
    upload: Upload,
    /// The CreateMultipartUpload of a fresh writer, under way in the background.
    creating: Option<JoinHandle<Result<String, StoreError>>>,
    buf: Vec<u8>,
    tasks: Vec<JoinHandle<Result<Done, StoreError>>>,
    done: Vec<CompletedPart>,
    copied: Vec<(u32, [u8; 32])>,
    /// Copies without a checksum yet: part number → source.
    unsummed: HashMap<i32, CopySource>,
    copy: CopyStats,
    uploaded: Arc<AtomicU64>,
    /// Completed or aborted: nothing left to clean up.
    closed: bool,
    /// The parts the resumed upload held, by part number, until each is compared.
    stored: HashMap<i32, StoredPart>,
    resumed: ResumeStats,
}

/// The upload to write `key` into: the newest unfinished one (resume) or a new one.
fn pick_upload(inner: &Inner, key: &str) -> Result<(Option<String>, ResumeStats), StoreError> {
    let mut stats = ResumeStats::default();
    let mut found = match uploads::list(inner, key) {
        Ok(all) => all.into_iter().filter(|u| u.key == key).collect::<Vec<_>>(),
        Err(e @ StoreError::Cancelled { .. }) => return Err(e),
        Err(e) => {
            // No permission to list (s3:ListBucketMultipartUploads), or a server without the
            // call: a fresh upload, as before resume existed.
            stats.note = Some(format!(
                "cannot look for an unfinished upload to resume ({e}); starting a new one"
            ));
            return Ok((None, stats));
        }
    };
    let newest = if inner.resume { found.pop() } else { None };
    for old in &found {
        uploads::abort(inner, &old.key, &old.upload_id)?;
    }
    Ok((newest.map(|u| u.upload_id), stats))
}

impl MultipartWriter {
    pub(crate) fn start(inner: Arc<Inner>, key: &str) -> Result<Self, StoreError> {
        let (resume, resumed) = pick_upload(&inner, key)?;
        Self::start_from(inner, key, resume, resumed)
    }

    /// A new upload, without looking for one to resume, created in the background: its parts
    /// wait for its id, the caller does not (`--layout runs` opens many objects; each would
    /// otherwise cost a round trip).
    pub(crate) fn start_fresh(inner: Arc<Inner>, key: &str) -> Result<Self, StoreError> {
        let upload = Upload::default();
        let (i, k, u) = (inner.clone(), key.to_string(), upload.clone());
        let creating = inner.rt.spawn(async move { upload_id(&i, &k, &u).await });
        let mut w = Self::new(inner, key, upload, HashMap::new(), ResumeStats::default());
        w.creating = Some(creating);
        Ok(w)
    }

    fn start_from(
        inner: Arc<Inner>,
        key: &str,
        resume: Option<String>,
        mut resumed: ResumeStats,
    ) -> Result<Self, StoreError> {
        if let Some(upload_id) = resume {
            match uploads::parts(&inner, key, &upload_id) {
                Ok(stored) => {
                    resumed.resumed_from = Some(upload_id.clone());
                    return Ok(Self::new(inner, key, known(upload_id), stored, resumed));
                }
                Err(e @ StoreError::Cancelled { .. }) => return Err(e),
                Err(e) => {
                    resumed.note = Some(format!(
                        "cannot list the parts of unfinished upload {upload_id} ({e}); starting a new one"
                    ));
                    uploads::abort(&inner, key, &upload_id)?;
                }
            }
        }
        let upload_id = inner.run("CreateMultipartUpload", create_upload(&inner, key))?;
        Ok(Self::new(inner, key, known(upload_id), HashMap::new(), resumed))
    }

    fn new(
        inner: Arc<Inner>,
        key: &str,
        upload: Upload,
        stored: HashMap<i32, StoredPart>,
        resumed: ResumeStats,
    ) -> Self {
        Self {
            inner,
            key: key.to_string(),
            upload,
            creating: None,
            buf: Vec::new(),
            tasks: Vec::new(),
            done: Vec::new(),
            copied: Vec::new(),
            unsummed: HashMap::new(),
            copy: CopyStats::default(),
            uploaded: Arc::default(),
            closed: false,
            stored,
            resumed,
        }
    }

    /// True if the resumed upload already holds this part, byte for byte.
    fn already_stored(&mut self, number: i32, part: &PartInfo) -> Option<StoredPart> {
        let old = self.stored.remove(&number)?;
        let same = old.size == self.buf.len() as u64
            && match &old.sha256_b64 {
                Some(sum) => *sum == b64(&part.sha256),
                // No checksum listed: S3's ETag of a plain part is the MD5 of its bytes.
                None => old.etag.len() == 32 && old.etag.eq_ignore_ascii_case(&hex::encode(Md5::digest(&self.buf))),
            };
        if same {
            Some(old)
        } else {
            self.resumed.replaced_parts += 1;
            None
        }
    }

    /// The first failed upload among those already finished, if any.
    fn check_finished(&mut self) -> Result<(), StoreError> {
        let mut i = 0;
        while i < self.tasks.len() {
            if self.tasks[i].is_finished() {
                let t = self.tasks.remove(i);
                self.join(t)?;
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Waits for one part upload and records the part.
    fn join(&mut self, t: JoinHandle<Result<Done, StoreError>>) -> Result<(), StoreError> {
        let location = self.location();
        let done = self.inner.run("UploadPart", async move {
            t.await.map_err(|e| StoreError::S3Transport {
                op: "UploadPart",
                location,
                detail: e.to_string(),
            })?
        })?;
        self.record(done);
        Ok(())
    }

    fn record(&mut self, done: Done) {
        if let (Some(sum), Some(n)) = (done.copied, done.part.part_number()) {
            self.copied.push((n as u32 - 1, sum));
        }
        if let (Some(source), Some(n)) = (done.unsummed, done.part.part_number()) {
            self.unsummed.insert(n, source);
        }
        self.copy.add(&done.stats);
        self.done.push(done.part);
    }

    /// The SHA-256 of every copied part the server did not give one for in its answer: as
    /// ListParts lists it, else read back from the source and hashed.
    fn sum_copies(&mut self) -> Result<(), StoreError> {
        if self.unsummed.is_empty() {
            return Ok(());
        }
        let listed = uploads::parts(&self.inner, &self.key, &self.upload_id()?).unwrap_or_default();
        let mut readback = 0u64;
        for (number, source) in std::mem::take(&mut self.unsummed) {
            let listed = listed
                .get(&number)
                .filter(|p| p.size == source.len)
                .and_then(|p| p.sha256_b64.as_deref())
                .and_then(|s| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s).ok())
                .and_then(|d| <[u8; 32]>::try_from(d).ok());
            let sum = match listed {
                Some(sum) => sum,
                None => {
                    readback += source.len;
                    let i = self.inner.clone();
                    self.inner
                        .run("GetObject", async move { hash_range(&i, &source).await })?
                }
            };
            self.copied.push((number as u32 - 1, sum));
            if let Some(p) = self.done.iter_mut().find(|p| p.part_number() == Some(number)) {
                *p = CompletedPart::builder()
                    .part_number(number)
                    .e_tag(p.e_tag().unwrap_or_default())
                    .checksum_sha256(b64(&sum))
                    .build();
            }
        }
        self.copy.read_back_bytes += readback;
        Ok(())
    }

    /// Waits for a free upload slot.
    fn permit(&self, op: &'static str) -> Result<tokio::sync::OwnedSemaphorePermit, StoreError> {
        let location = self.location();
        let permits = self.inner.permits.clone();
        self.inner.run(op, async move {
            permits.acquire_owned().await.map_err(|e| StoreError::S3Transport {
                op,
                location,
                detail: e.to_string(),
            })
        })
    }

    fn location(&self) -> String {
        format!("{}/{}", self.inner.bucket, self.key)
    }

    /// The upload's id, waiting for (or making) its creation.
    fn upload_id(&self) -> Result<String, StoreError> {
        self.inner
            .run("CreateMultipartUpload", upload_id(&self.inner, &self.key, &self.upload))
    }

    /// Ends the upload on the server, so no parts are left costing money. Not cancellable (it is
    /// what a cancel does), but bounded: an upload it cannot abort is reported as a leftover.
    fn abort_upload(&mut self) {
        self.closed = true;
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let i = &self.inner;
        // An upload still being created is waited for, so that it is ended too.
        if let Some(t) = self.creating.take() {
            let _ = i.rt.block_on(async { tokio::time::timeout(ABORT_TIMEOUT, t).await });
        }
        let Some(upload_id) = self.upload.get() else {
            return; // never created
        };
        let request = uploads::abort_request(i, &self.key, upload_id);
        let why = match i
            .rt
            .block_on(async { tokio::time::timeout(ABORT_TIMEOUT, request).await })
        {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer in {} s", ABORT_TIMEOUT.as_secs()),
        };
        i.leftovers.lock().unwrap_or_else(|e| e.into_inner()).push(format!(
            "the multipart upload of {} (upload id {upload_id}; {why})",
            self.key
        ));
    }
}

impl ObjectWriter for MultipartWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn stored_bytes(&self) -> u64 {
        self.uploaded.load(Ordering::Relaxed)
    }

    fn end_part(&mut self, part: &PartInfo) -> Result<(), StoreError> {
        self.check_finished()?;
        let number = part.number as i32 + 1;
        if let Some(old) = self.already_stored(number, part) {
            let len = self.buf.len() as u64;
            self.buf.clear();
            self.uploaded.fetch_add(len, Ordering::Relaxed);
            self.resumed.reused_parts += 1;
            self.resumed.reused_bytes += len;
            self.done.push(
                CompletedPart::builder()
                    .part_number(number)
                    .e_tag(format!("\"{}\"", old.etag))
                    .checksum_sha256(b64(&part.sha256))
                    .build(),
            );
            return Ok(());
        }
        let permit = self.permit("UploadPart")?;
        let body = std::mem::replace(&mut self.buf, Vec::with_capacity(part.size as usize));
        let (inner, key, upload, uploaded, sha256) = (
            self.inner.clone(),
            self.key.clone(),
            self.upload.clone(),
            self.uploaded.clone(),
            part.sha256,
        );
        let task = self.inner.rt.spawn(async move {
            let _permit = permit;
            let upload_id = upload_id(&inner, &key, &upload).await?;
            let part = upload_part(&inner, &key, &upload_id, number, body, &sha256).await?;
            uploaded.fetch_add(part.1, Ordering::Relaxed);
            Ok(Done {
                part: part.0,
                copied: None,
                unsummed: None,
                stats: CopyStats::default(),
            })
        });
        self.tasks.push(task);
        Ok(())
    }

    fn copy_part(&mut self, number: u32, source: &CopySource) -> Result<(), StoreError> {
        self.check_finished()?;
        let number = number as i32 + 1;
        // A copy is never matched against a resumed upload's part: copying again is cheap.
        if self.stored.remove(&number).is_some() {
            self.resumed.replaced_parts += 1;
        }
        let permit = self.permit("UploadPartCopy")?;
        let (inner, key, upload, uploaded, source) = (
            self.inner.clone(),
            self.key.clone(),
            self.upload.clone(),
            self.uploaded.clone(),
            source.clone(),
        );
        let copy = async move {
            let _permit = permit;
            let upload_id = upload_id(&inner, &key, &upload).await?;
            let done = copy_part(&inner, &key, &upload_id, number, &source).await?;
            uploaded.fetch_add(source.len, Ordering::Relaxed);
            Ok(done)
        };
        if self.inner.copy_works.load(Ordering::Relaxed) {
            let task = self.inner.rt.spawn(copy);
            self.tasks.push(task);
            return Ok(());
        }
        // The store's first copy: its answer says whether the server copies at all.
        let done = self.inner.run("UploadPartCopy", copy)?;
        self.inner.copy_works.store(true, Ordering::Relaxed);
        self.record(done);
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<ObjectReceipt, StoreError> {
        let tasks = std::mem::take(&mut self.tasks);
        for t in tasks {
            if let Err(e) = self.join(t) {
                self.abort_upload();
                return Err(e);
            }
        }
        if let Err(e) = self.sum_copies() {
            self.abort_upload();
            return Err(e);
        }
        let upload_id = match self.upload_id() {
            Ok(id) => id,
            Err(e) => {
                self.abort_upload();
                return Err(e);
            }
        };
        let mut parts = std::mem::take(&mut self.done);
        parts.sort_by_key(|p| p.part_number());
        let part_etags = parts
            .iter()
            .map(|p| p.e_tag().unwrap_or_default().to_string())
            .collect();
        crate::panics::inject("store-finish");
        let i = self.inner.clone();
        let r = i.run("CompleteMultipartUpload", async {
            crate::store::s3::sse::with_sse_c!(i.client.complete_multipart_upload(), i.sse)
                .bucket(&i.bucket)
                .key(&self.key)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map_err(|e| convert("CompleteMultipartUpload", &i.bucket, &self.key, e))
        });
        match r {
            Ok(out) => {
                self.closed = true;
                Ok(ObjectReceipt {
                    etag: out.e_tag().map(str::to_string),
                    part_etags,
                    resumed: std::mem::take(&mut self.resumed),
                    copied: std::mem::take(&mut self.copied),
                    copy: std::mem::take(&mut self.copy),
                })
            }
            Err(e) => {
                self.abort_upload();
                Err(e)
            }
        }
    }

    fn abort(mut self: Box<Self>) {
        self.abort_upload();
    }
}

impl Drop for MultipartWriter {
    fn drop(&mut self) {
        if !self.closed {
            self.abort_upload();
        }
    }
}

/// A multipart upload's id, set once it is created.
type Upload = Arc<tokio::sync::OnceCell<String>>;

/// An upload whose id is known.
fn known(upload_id: String) -> Upload {
    Arc::new(tokio::sync::OnceCell::new_with(Some(upload_id)))
}

/// The id of `upload`, creating the upload if nobody has (a creation that failed is tried
/// again by the next caller).
async fn upload_id(inner: &Inner, key: &str, upload: &Upload) -> Result<String, StoreError> {
    upload.get_or_try_init(|| create_upload(inner, key)).await.cloned()
}

async fn create_upload(inner: &Inner, key: &str) -> Result<String, StoreError> {
    let out = crate::store::s3::sse::with_sse_create!(inner.client.create_multipart_upload(), inner.sse)
        .bucket(&inner.bucket)
        .key(key)
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .send()
        .await
        .map_err(|e| convert("CreateMultipartUpload", &inner.bucket, key, e))?;
    match out.upload_id() {
        Some(id) if !id.is_empty() => Ok(id.to_string()),
        _ => Err(StoreError::S3Transport {
            op: "CreateMultipartUpload",
            location: format!("{}/{key}", inner.bucket),
            detail: "the server returned no upload id".into(),
        }),
    }
}

/// Uploads one part; returns it for CompleteMultipartUpload, and its size.
async fn upload_part(
    inner: &Inner,
    key: &str,
    upload_id: &str,
    number: i32,
    body: Vec<u8>,
    sha256: &[u8; 32],
) -> Result<(CompletedPart, u64), StoreError> {
    let len = body.len();
    let checksum = b64(sha256);
    let out = crate::store::s3::sse::with_sse_c!(inner.client.upload_part(), inner.sse)
        .bucket(&inner.bucket)
        .key(key)
        .upload_id(upload_id)
        .part_number(number)
        .content_length(len as i64)
        .checksum_sha256(&checksum)
        .body(ByteStream::from(body))
        .customize()
        .interceptor(PrecomputedSha256(hex::encode(sha256)))
        .send()
        .await
        .map_err(|e| convert("UploadPart", &inner.bucket, key, e))?;
    let part = CompletedPart::builder()
        .part_number(number)
        .e_tag(out.e_tag().unwrap_or_default())
        .checksum_sha256(checksum)
        .build();
    Ok((part, len as u64))
}

/// `bucket/key` for `x-amz-copy-source`, the key percent-encoded except for `/`.
fn copy_source_header(bucket: &str, key: &str) -> String {
    let mut out = format!("{bucket}/");
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Has the server copy `source` into part `number`. Its SHA-256: the server's checksum, or
/// the source range read back and hashed.
async fn copy_part(
    inner: &Inner,
    key: &str,
    upload_id: &str,
    number: i32,
    source: &CopySource,
) -> Result<Done, StoreError> {
    let range = source.range_header();
    let (alg, key_b64, md5) = inner.sse.c_headers();
    let req = crate::store::s3::sse::with_sse_c!(inner.client.upload_part_copy(), inner.sse)
        .set_copy_source_sse_customer_algorithm(alg)
        .set_copy_source_sse_customer_key(key_b64)
        .set_copy_source_sse_customer_key_md5(md5);
    let out = req
        .bucket(&inner.bucket)
        .key(key)
        .upload_id(upload_id)
        .part_number(number)
        .copy_source(copy_source_header(&inner.bucket, &source.key))
        .copy_source_range(&range)
        .set_copy_source_if_match(source.etag.clone())
        .send()
        .await
        .map_err(|e| match convert("UploadPartCopy", &inner.bucket, key, e) {
            StoreError::S3 { code, message, .. } if COPY_REFUSED.contains(&code.as_str()) => StoreError::CopyRefused {
                location: format!("{}/{key}", inner.bucket),
                code,
                message,
            },
            StoreError::S3 { op, location, code, .. } if code == "PreconditionFailed" => StoreError::S3 {
                op,
                location,
                code,
                message: format!(
                    "the parent object {} no longer has the ETag {} its manifest recorded: it was replaced after the parent bundle was made, so its frames cannot be trusted; bundle without --parent/--incremental, or name another parent",
                    source.key,
                    source.etag.as_deref().unwrap_or("")
                ),
            },
            e => e,
        })?;
    let result = out.copy_part_result();
    let server_sum = result
        .and_then(|r| r.checksum_sha256())
        .and_then(|s| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s).ok())
        .and_then(|d| <[u8; 32]>::try_from(d).ok());
    let stats = CopyStats {
        copied_parts: 1,
        copied_bytes: source.len,
        ..Default::default()
    };
    let mut part = CompletedPart::builder()
        .part_number(number)
        .e_tag(result.and_then(|r| r.e_tag()).unwrap_or_default());
    if let Some(sum) = server_sum {
        part = part.checksum_sha256(b64(&sum));
    }
    Ok(Done {
        part: part.build(),
        copied: server_sum,
        unsummed: server_sum.is_none().then(|| source.clone()),
        stats,
    })
}

/// SHA-256 of a range of an object, read as a stream (nothing kept).
async fn hash_range(inner: &Inner, source: &CopySource) -> Result<[u8; 32], StoreError> {
    let range = source.range_header();
    let location = format!("{}/{}", inner.bucket, source.key);
    let out = crate::store::s3::sse::with_sse_c!(inner.client.get_object(), inner.sse)
        .bucket(&inner.bucket)
        .key(&source.key)
        .range(&range)
        .set_if_match(source.etag.clone())
        .send()
        .await
        .map_err(|e| convert("GetObject", &inner.bucket, &source.key, e))?;
    let mut body = out.body;
    let mut hasher = sha2::Sha256::new();
    let mut got = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| StoreError::S3Transport {
            op: "GetObject",
            location: location.clone(),
            detail: format!("reading the body: {}", super::error::error_chain(&e)),
        })?;
        got += chunk.len() as u64;
        sha2::Digest::update(&mut hasher, &chunk);
    }
    if got != source.len {
        return Err(StoreError::S3Transport {
            op: "GetObject",
            location,
            detail: format!("asked for {} bytes ({range}), got {got}", source.len),
        });
    }
    Ok(sha2::Digest::finalize(hasher).into())
}
