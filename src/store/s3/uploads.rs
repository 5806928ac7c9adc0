//! Unfinished multipart uploads: listing them (under a prefix, or for one key), listing the parts
//! one already holds, and aborting them. Resume ([`super::multipart`]) and `winbundle cleanup`
//! are built on these.

use std::collections::HashMap;

use aws_sdk_s3::error::ProvideErrorMetadata;

use super::Inner;
use super::error::convert;
use crate::store::StoreError;

/// An unfinished multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub key: String,
    pub upload_id: String,
    /// When it was started (RFC 3339), as the server says.
    pub initiated: Option<String>,
    /// Seconds since the Unix epoch, for age filters.
    pub initiated_epoch: Option<i64>,
}

/// A part an unfinished upload already holds.
#[derive(Debug, Clone)]
pub struct StoredPart {
    pub size: u64,
    pub etag: String,
    /// base64 SHA-256, when the server reports part checksums (AWS, Garage; not every server).
    pub sha256_b64: Option<String>,
}

/// Every unfinished upload whose key starts with `prefix`, oldest first.
pub(crate) fn list(inner: &Inner, prefix: &str) -> Result<Vec<Upload>, StoreError> {
    let mut out = Vec::new();
    let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
    loop {
        let page = inner.run("ListMultipartUploads", async {
            inner
                .client
                .list_multipart_uploads()
                .bucket(&inner.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| convert("ListMultipartUploads", &inner.bucket, prefix, e))
        })?;
        for u in page.uploads() {
            let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                continue;
            };
            out.push(Upload {
                key: key.to_string(),
                upload_id: id.to_string(),
                initiated: u
                    .initiated()
                    .and_then(|t| t.fmt(aws_smithy_types::date_time::Format::DateTime).ok()),
                initiated_epoch: u.initiated().map(|t| t.secs()),
            });
        }
        let next = (page.next_key_marker(), page.next_upload_id_marker());
        if page.is_truncated() != Some(true) || next.0.is_none() {
            break;
        }
        // A server that answers "truncated" with the same markers would loop forever.
        let next = (next.0.map(str::to_string), next.1.map(str::to_string));
        if next == (key_marker.clone(), id_marker.clone()) {
            break;
        }
        (key_marker, id_marker) = next;
    }
    out.sort_by(|a, b| a.initiated_epoch.cmp(&b.initiated_epoch).then(a.key.cmp(&b.key)));
    Ok(out)
}

/// The parts upload `upload_id` of `key` holds, by part number (1-based).
pub(crate) fn parts(inner: &Inner, key: &str, upload_id: &str) -> Result<HashMap<i32, StoredPart>, StoreError> {
    let mut out = HashMap::new();
    let mut marker: Option<String> = None;
    loop {
        let page = inner.run("ListParts", async {
            inner
                .client
                .list_parts()
                .bucket(&inner.bucket)
                .key(key)
                .upload_id(upload_id)
                .set_part_number_marker(marker.clone())
                .send()
                .await
                .map_err(|e| convert("ListParts", &inner.bucket, key, e))
        })?;
        for p in page.parts() {
            let Some(n) = p.part_number() else { continue };
            out.insert(
                n,
                StoredPart {
                    size: p.size().unwrap_or(-1).max(0) as u64,
                    etag: p.e_tag().unwrap_or_default().trim_matches('"').to_string(),
                    sha256_b64: p.checksum_sha256().map(str::to_string),
                },
            );
        }
        let next = page.next_part_number_marker().map(str::to_string);
        if page.is_truncated() != Some(true) || next.is_none() || next == marker {
            break;
        }
        marker = next;
    }
    Ok(out)
}

/// Aborts one upload. An upload already gone (completed or aborted meanwhile) is no error.
pub(crate) fn abort(inner: &Inner, key: &str, upload_id: &str) -> Result<(), StoreError> {
    inner.run("AbortMultipartUpload", abort_request(inner, key, upload_id))
}

/// AbortMultipartUpload, with "already gone" counted as done; [`abort`] runs it cancellably,
/// a failing writer runs it under a time limit instead (it is what a cancel does).
pub(crate) async fn abort_request(inner: &Inner, key: &str, upload_id: &str) -> Result<(), StoreError> {
    match inner
        .client
        .abort_multipart_upload()
        .bucket(&inner.bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.as_service_error().is_some_and(|s| s.code() == Some("NoSuchUpload")) => Ok(()),
        Err(e) => Err(convert("AbortMultipartUpload", &inner.bucket, key, e)),
    }
}
