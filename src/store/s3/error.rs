//! S3 errors in our terms: the operation, the key, the server's code and message, and a hint.
//! Retrying is the SDK's job (standard mode: throttling, 5xx, timeouts, dropped connections);
//! what reaches here has failed for good.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::http::Response as HttpResponse;

use crate::store::StoreError;

/// Converts an SDK error of operation `op` on `bucket`/`key`.
pub fn convert<E>(op: &'static str, bucket: &str, key: &str, err: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let location = format!("{bucket}/{key}");
    match &err {
        SdkError::ServiceError(se) => {
            let e = se.err();
            let status = se.raw().status().as_u16();
            let code = e.code().filter(|c| !c.is_empty() && *c != "Unknown");
            let (code, message) = match (code, status) {
                (Some(c), _) => (c.to_string(), e.message().unwrap_or_default().to_string()),
                // HEAD responses carry no error body: name the status instead.
                (None, 403) => (
                    "Forbidden".to_string(),
                    "HTTP 403: wrong credentials, or no permission for this bucket and key".to_string(),
                ),
                (None, 400) => (
                    "BadRequest".to_string(),
                    "HTTP 400: the server refused the request (an object stored with a customer key, SSE-C, answers so when the key is missing or wrong)".to_string(),
                ),
                (None, 300..=399) => (
                    redirect_code(status).to_string(),
                    redirect_message(status, se.raw().headers().get("location")),
                ),
                (None, s) => ("Unknown".to_string(), format!("HTTP {s}")),
            };
            StoreError::S3 {
                op,
                location,
                code,
                message,
            }
        }
        SdkError::TimeoutError(_) => StoreError::S3Transport {
            op,
            location,
            detail: "timed out (after retries)".into(),
        },
        SdkError::DispatchFailure(d) => {
            let detail = match d.as_connector_error() {
                Some(c) if c.is_timeout() => "connection timed out".to_string(),
                Some(c) if c.is_io() => format!("connection failed: {}", error_chain(c)),
                _ => error_chain(&err),
            };
            StoreError::S3Transport { op, location, detail }
        }
        _ => StoreError::S3Transport {
            op,
            location,
            detail: error_chain(&err),
        },
    }
}

/// The error code of a redirect without an error body (S3's own for 301 and 307).
pub fn redirect_code(status: u16) -> &'static str {
    match status {
        301 => "PermanentRedirect",
        307 => "TemporaryRedirect",
        _ => "Redirect",
    }
}

/// What a redirect answer means: winbundle follows none (neither the S3 client nor the
/// upload-policy POST client), so the request would not go where the server points.
pub fn redirect_message(status: u16, location: Option<&str>) -> String {
    let to = location.map_or_else(|| "elsewhere".to_string(), |l| format!("to {l:?}"));
    format!(
        "HTTP {status}: the server redirected the request {to}, and winbundle follows no redirect (S3 answers a request itself; a 301 means the bucket is in another region)"
    )
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cause = c.source();
    }
    s
}

/// What to do about an S3 error code.
pub fn hint(code: &str) -> Option<&'static str> {
    Some(match code {
        "Forbidden" => {
            "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or --profile) and that the key may access this bucket"
        }
        "PermanentRedirect" | "TemporaryRedirect" | "Redirect" => {
            "pass the bucket's --region, and an --endpoint-url that answers for the bucket itself (not a redirecting front)"
        }
        "AccessDenied" => {
            "the credentials may not write or read this bucket and prefix: check the key's policy or the bucket policy"
        }
        "NoSuchBucket" => "create the bucket first (aws s3 mb s3://BUCKET), or check --bucket and --endpoint-url",
        "InvalidAccessKeyId" => {
            "the endpoint does not know this access key: check AWS_ACCESS_KEY_ID or --profile, and --endpoint-url"
        }
        "SignatureDoesNotMatch" => {
            "the secret key does not match the access key, or the region is wrong: check AWS_SECRET_ACCESS_KEY and --region"
        }
        "AuthorizationHeaderMalformed" => {
            "the region is wrong for this endpoint: pass --region (Garage's default is `garage`)"
        }
        "NoSuchKey" | "NotFound" => "check --bucket and --prefix; a bundle without its manifest is incomplete",
        "EntityTooSmall" => "a part is below the server's minimum: raise --part-size (at least 5 MiB)",
        "InvalidRequest" | "NotImplemented" => {
            "the server rejected a request feature: see docs/s3-servers.md (MinIO, Garage); objects stored with a customer key need the same --sse-c-key-file to be read"
        }
        "BadRequest" => "if the bundle was written with --sse-c-key-file, pass the same key file to read it",
        _ => return None,
    })
}
