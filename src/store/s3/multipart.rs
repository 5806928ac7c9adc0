//! One data object as an S3 multipart upload. Each part is buffered whole, then uploaded on the
//! runtime while the pipeline goes on; at most `concurrency` uploads run at once (a semaphore),
//! so memory stays within (concurrency + 1) × part size. Any failure, and `abort`, ends with
//! AbortMultipartUpload, so no parts are left costing money.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use tokio::task::JoinHandle;

use super::error::convert;
use super::signing::PrecomputedSha256;
use super::{ABORT_TIMEOUT, Inner, b64};
use crate::store::{ObjectReceipt, ObjectWriter, PartInfo, StoreError};

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
}

impl MultipartWriter {
    pub(crate) fn start(inner: Arc<Inner>, key: &str) -> Result<Self, StoreError> {
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
        Ok(Self {
            inner,
            key: key.to_string(),
            upload_id,
            buf: Vec::new(),
            tasks: Vec::new(),
            done: Vec::new(),
            uploaded: Arc::default(),
            closed: false,
        })
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
        let request = i
            .client
            .abort_multipart_upload()
            .bucket(&i.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send();
        let why = match i.rt.block_on(async { tokio::time::timeout(ABORT_TIMEOUT, request).await }) {
            Ok(Ok(_)) => return,
            // Already gone (aborted by someone else, or completed): nothing is left.
            Ok(Err(e)) if e.as_service_error().is_some_and(|s| s.meta().code() == Some("NoSuchUpload")) => return,
            Ok(Err(e)) => convert("AbortMultipartUpload", &i.bucket, &self.key, e).to_string(),
            Err(_) => format!("no answer in {} s", ABORT_TIMEOUT.as_secs()),
        };
        i.leftovers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("the multipart upload of {} (upload id {}; {why})", self.key, self.upload_id));
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
        let number = part.number as i32 + 1;
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
