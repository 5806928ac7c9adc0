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
use crate::store::{ObjectReceipt, ObjectWriter, PartInfo, ResumeStats, StoreError};

pub struct MultipartWriter {
    inner: Arc<Inner>,
    key: String,
    upload_id: String,
    buf: Vec<u8>,
    tasks: Vec<JoinHandle<Result<CompletedPart, StoreError>>>,
    done: Vec<CompletedPart>,
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
        let (resume, mut resumed) = pick_upload(&inner, key)?;
        if let Some(upload_id) = resume {
            match uploads::parts(&inner, key, &upload_id) {
                Ok(stored) => {
                    resumed.resumed_from = Some(upload_id.clone());
                    return Ok(Self::new(inner, key, upload_id, stored, resumed));
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
        let out = inner.run("CreateMultipartUpload", async {
            inner
                .client
                .create_multipart_upload()
                .bucket(&inner.bucket)
                .key(key)
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .send()
                .await
                .map_err(|e| convert("CreateMultipartUpload", &inner.bucket, key, e))
        })?;
        let upload_id = out.upload_id().unwrap_or_default().to_string();
        if upload_id.is_empty() {
            return Err(StoreError::S3Transport {
                op: "CreateMultipartUpload",
                location: format!("{}/{key}", inner.bucket),
                detail: "the server returned no upload id".into(),
            });
        }
        Ok(Self::new(inner, key, upload_id, HashMap::new(), resumed))
    }

    fn new(
        inner: Arc<Inner>,
        key: &str,
        upload_id: String,
        stored: HashMap<i32, StoredPart>,
        resumed: ResumeStats,
    ) -> Self {
        Self {
            inner,
            key: key.to_string(),
            upload_id,
            buf: Vec::new(),
            tasks: Vec::new(),
            done: Vec::new(),
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
    fn join(&mut self, t: JoinHandle<Result<CompletedPart, StoreError>>) -> Result<(), StoreError> {
        let location = self.location();
        let part = self.inner.run("UploadPart", async move {
            t.await.map_err(|e| StoreError::S3Transport {
                op: "UploadPart",
                location,
                detail: e.to_string(),
            })?
        })?;
        self.done.push(part);
        Ok(())
    }

    fn location(&self) -> String {
        format!("{}/{}", self.inner.bucket, self.key)
    }

    /// Ends the upload on the server, so no parts are left costing money. Not cancellable (it is
    /// what a cancel does), but bounded: an upload it cannot abort is reported as a leftover.
    fn abort_upload(&mut self) {
        self.closed = true;
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let i = &self.inner;
        let request = uploads::abort_request(i, &self.key, &self.upload_id);
        let why = match i
            .rt
            .block_on(async { tokio::time::timeout(ABORT_TIMEOUT, request).await })
        {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer in {} s", ABORT_TIMEOUT.as_secs()),
        };
        i.leftovers.lock().unwrap_or_else(|e| e.into_inner()).push(format!(
            "the multipart upload of {} (upload id {}; {why})",
            self.key, self.upload_id
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
        let location = self.location();
        let permits = self.inner.permits.clone();
        let permit = self.inner.run("UploadPart", async move {
            permits.acquire_owned().await.map_err(|e| StoreError::S3Transport {
                op: "UploadPart",
                location,
                detail: e.to_string(),
            })
        })?;
        let body = std::mem::replace(&mut self.buf, Vec::with_capacity(part.size as usize));
        let len = body.len();
        let checksum = b64(&part.sha256);
        let payload_hash = hex::encode(part.sha256);
        let (inner, key, upload_id, uploaded) = (
            self.inner.clone(),
            self.key.clone(),
            self.upload_id.clone(),
            self.uploaded.clone(),
        );
        let task = self.inner.rt.spawn(async move {
            let _permit = permit;
            let out = inner
                .client
                .upload_part()
                .bucket(&inner.bucket)
                .key(&key)
                .upload_id(&upload_id)
                .part_number(number)
                .content_length(len as i64)
                .checksum_sha256(&checksum)
                .body(ByteStream::from(body))
                .customize()
                .interceptor(PrecomputedSha256(payload_hash))
                .send()
                .await
                .map_err(|e| convert("UploadPart", &inner.bucket, &key, e))?;
            uploaded.fetch_add(len as u64, Ordering::Relaxed);
            Ok(CompletedPart::builder()
                .part_number(number)
                .e_tag(out.e_tag().unwrap_or_default())
                .checksum_sha256(checksum)
                .build())
        });
        self.tasks.push(task);
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
        let mut parts = std::mem::take(&mut self.done);
        parts.sort_by_key(|p| p.part_number());
        let part_etags = parts
            .iter()
            .map(|p| p.e_tag().unwrap_or_default().to_string())
            .collect();
        let i = self.inner.clone();
        let r = i.run("CompleteMultipartUpload", async {
            i.client
                .complete_multipart_upload()
                .bucket(&i.bucket)
                .key(&self.key)
                .upload_id(&self.upload_id)
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
