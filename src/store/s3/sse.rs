//! Server-side encryption of the objects winbundle writes to S3: SSE-S3 (`AES256`), SSE-KMS
//! (`aws:kms`, optionally with a key id), or SSE-C (a customer key sent with every request that
//! writes or reads an object, never stored by the server).
//!
//! SSE-S3 and SSE-KMS are asked for when an object is created (PutObject,
//! CreateMultipartUpload); reads need nothing. SSE-C goes with every PutObject,
//! CreateMultipartUpload, UploadPart, UploadPartCopy (for the new object and for the source),
//! CompleteMultipartUpload, GetObject and HeadObject. The customer key never appears in a log,
//! an error or `Debug` output: only its MD5 (which the server echoes) is shown.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use md5::{Digest, Md5};

/// What the server is asked to encrypt objects with, when they are created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSide {
    /// `x-amz-server-side-encryption: AES256` (SSE-S3).
    S3,
    /// `x-amz-server-side-encryption: aws:kms` (SSE-KMS), with the KMS key to use (default:
    /// the account's `aws/s3` key).
    Kms { key_id: Option<String> },
}

const SSE_FIELD: &str = "x-amz-server-side-encryption";
const KMS_KEY_FIELD: &str = "x-amz-server-side-encryption-aws-kms-key-id";

impl ServerSide {
    /// The header value.
    pub fn algorithm(&self) -> &'static str {
        match self {
            ServerSide::S3 => "AES256",
            ServerSide::Kms { .. } => "aws:kms",
        }
    }

    /// The headers that ask for it, which are also the POST form fields (and upload-policy
    /// conditions) that do.
    pub fn fields(&self) -> Vec<(String, String)> {
        let mut out = vec![(SSE_FIELD.to_string(), self.algorithm().to_string())];
        if let ServerSide::Kms { key_id: Some(k) } = self {
            out.push((KMS_KEY_FIELD.to_string(), k.clone()));
        }
        out
    }

    /// What those fields ask for, given a lookup of their values (an upload policy's exact
    /// conditions); `None` when they ask for nothing this knows.
    pub fn from_fields(value: impl Fn(&str) -> Option<String>) -> Option<Self> {
        match value(SSE_FIELD)?.as_str() {
            "AES256" => Some(ServerSide::S3),
            "aws:kms" => Some(ServerSide::Kms {
                key_id: value(KMS_KEY_FIELD),
            }),
            _ => None,
        }
    }

    /// For the JSON summary: `{"Mode": "AES256"}` or `{"Mode": "aws:kms", "KmsKeyId": …}`.
    pub fn describe(&self) -> serde_json::Value {
        match self {
            ServerSide::S3 => serde_json::json!({"Mode": "AES256"}),
            ServerSide::Kms { key_id } => serde_json::json!({"Mode": "aws:kms", "KmsKeyId": key_id}),
        }
    }
}

/// A 256-bit SSE-C key, as S3 wants it in headers (base64 of the key, base64 of its MD5).
#[derive(Clone, PartialEq, Eq)]
pub struct CustomerKey {
    key_b64: String,
    md5_b64: String,
}

impl std::fmt::Debug for CustomerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CustomerKey(md5 {})", self.md5_b64)
    }
}

impl CustomerKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(key: &[u8; 32]) -> Self {
        Self {
            key_b64: B64.encode(key),
            md5_b64: B64.encode(Md5::digest(key)),
        }
    }

    /// Reads a key file: exactly 32 bytes (`head -c 32 /dev/urandom > FILE`), or one line of
    /// 64 hex digits or of base64 of 32 bytes (`openssl rand -base64 32 > FILE`). The message
    /// of an error never quotes the file's contents.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let bad = |problem: String| {
            format!(
                "{}: {problem}; make one with `head -c 32 /dev/urandom > FILE` (or `openssl rand -base64 32 > FILE`) and keep it: without it the objects cannot be read",
                path.display()
            )
        };
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it ({e})")))?;
        Self::parse(&bytes).ok_or_else(|| {
            bad(format!(
                "{} bytes that are neither a 32-byte key, nor 64 hex digits, nor base64 of 32 bytes",
                bytes.len()
            ))
        })
    }

    fn parse(bytes: &[u8]) -> Option<Self> {
        if let Ok(raw) = <[u8; 32]>::try_from(bytes) {
            return Some(Self::from_bytes(&raw));
        }
        let text = std::str::from_utf8(bytes).ok()?.trim();
        let decoded = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).ok()?
        } else {
            B64.decode(text).ok()?
        };
        Some(Self::from_bytes(&<[u8; 32]>::try_from(decoded.as_slice()).ok()?))
    }

    /// base64 of the key (the `…-customer-key` header). Goes into request headers only.
    pub(crate) fn key_b64(&self) -> &str {
        &self.key_b64
    }

    /// base64 of the key's MD5 (the `…-customer-key-MD5` header): what identifies the key.
    pub fn md5_b64(&self) -> &str {
        &self.md5_b64
    }
}

/// The server-side encryption of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseOptions {
    pub server_side: Option<ServerSide>,
    pub customer_key: Option<CustomerKey>,
}

impl SseOptions {
    /// What objects are encrypted with, for the JSON summary: `AES256`, `aws:kms` or `SSE-C`.
    pub fn describe(&self) -> Option<serde_json::Value> {
        if let Some(k) = &self.customer_key {
            return Some(serde_json::json!({"Mode": "SSE-C", "CustomerKeyMd5": k.md5_b64}));
        }
        self.server_side.as_ref().map(ServerSide::describe)
    }

    /// (algorithm, key, key MD5) of SSE-C, each `None` without a customer key.
    pub(crate) fn c_headers(&self) -> (Option<String>, Option<String>, Option<String>) {
        match &self.customer_key {
            Some(k) => (
                Some("AES256".to_string()),
                Some(k.key_b64().to_string()),
                Some(k.md5_b64().to_string()),
            ),
            None => (None, None, None),
        }
    }

    /// (`x-amz-server-side-encryption`, KMS key id) for a request that creates an object.
    pub(crate) fn create_headers(&self) -> (Option<aws_sdk_s3::types::ServerSideEncryption>, Option<String>) {
        match &self.server_side {
            Some(ServerSide::S3) => (Some(aws_sdk_s3::types::ServerSideEncryption::Aes256), None),
            Some(ServerSide::Kms { key_id }) => (Some(aws_sdk_s3::types::ServerSideEncryption::AwsKms), key_id.clone()),
            None => (None, None),
        }
    }
}

/// Sets the SSE-C headers of `$opts` (an [`SseOptions`]) on an SDK request builder.
macro_rules! with_sse_c {
    ($builder:expr, $opts:expr) => {{
        let (alg, key, md5) = $opts.c_headers();
        $builder
            .set_sse_customer_algorithm(alg)
            .set_sse_customer_key(key)
            .set_sse_customer_key_md5(md5)
    }};
}

/// Sets every SSE header of a request that creates an object (PutObject,
/// CreateMultipartUpload).
macro_rules! with_sse_create {
    ($builder:expr, $opts:expr) => {{
        let (sse, kms) = $opts.create_headers();
        $crate::store::s3::sse::with_sse_c!($builder, $opts)
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms)
    }};
}

pub(crate) use {with_sse_c, with_sse_create};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_take_raw_hex_and_base64_and_nothing_else() {
        let raw = [7u8; 32];
        let want = CustomerKey::from_bytes(&raw);
        assert_eq!(CustomerKey::parse(&raw), Some(want.clone()));
        assert_eq!(
            CustomerKey::parse(format!("{}\n", hex::encode(raw)).as_bytes()),
            Some(want.clone())
        );
        assert_eq!(
            CustomerKey::parse(format!("{}\n", B64.encode(raw)).as_bytes()),
            Some(want.clone())
        );
        // The MD5 S3 checks: base64 of MD5 of the 32 bytes.
        assert_eq!(want.md5_b64(), B64.encode(Md5::digest(raw)));
        for bad in [
            &b"short"[..],
            &[1u8; 31][..],
            &[1u8; 33][..],
            B64.encode([1u8; 16]).as_bytes(),
        ] {
            assert_eq!(CustomerKey::parse(bad), None);
        }
    }

    #[test]
    fn the_fields_asked_for_read_back_as_the_same_encryption() {
        for s in [
            ServerSide::S3,
            ServerSide::Kms { key_id: None },
            ServerSide::Kms {
                key_id: Some("alias/x".into()),
            },
        ] {
            let fields = s.fields();
            let lookup = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            assert_eq!(ServerSide::from_fields(lookup), Some(s));
        }
        assert_eq!(ServerSide::from_fields(|_| Some("aws:kms:dsse".into())), None);
    }

    #[test]
    fn the_key_is_never_in_debug_output_or_errors() {
        let raw = [0x5au8; 32];
        let k = CustomerKey::from_bytes(&raw);
        let shown = format!(
            "{:?}",
            SseOptions {
                server_side: None,
                customer_key: Some(k.clone())
            }
        );
        assert!(!shown.contains(k.key_b64()), "{shown}");
        assert!(shown.contains(k.md5_b64()), "{shown}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, "c2VjcmV0LXNlY3JldC1zZWNyZXQ=").unwrap();
        let e = CustomerKey::from_file(&f).unwrap_err();
        assert!(!e.contains("c2VjcmV0"), "{e}");
        assert!(e.contains("28 bytes") && e.contains("head -c 32"), "{e}");
    }
}
