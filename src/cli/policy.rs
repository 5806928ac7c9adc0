//! `winbundle upload-policy`, and turning bundle-instance's policy flags into a POST store.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use winbundle::Error;
use winbundle::store::post::policy::{self, PolicyError, UploadPolicy};
use winbundle::store::post::{PostStore, PostTarget};

use super::args::{PolicyArgs, PolicyOutput, StoreArgs, UploadPolicyArgs};

fn missing(what: &str) -> Error {
    PolicyError {
        code: "MissingParameter",
        message: format!("{what} is required"),
    }
    .into_error()
}

trait IntoError {
    fn into_error(self) -> Error;
}

impl IntoError for PolicyError {
    fn into_error(self) -> Error {
        Error::Store(self.into())
    }
}

/// `24h`, `90m`, `2d`, `3600s`, `3600`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: i64 = t[..split]
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (examples: 24h, 90m, 2d)"))?;
    match &t[split..] {
        "" | "s" => Ok(Duration::seconds(n)),
        "m" => Ok(Duration::minutes(n)),
        "h" => Ok(Duration::hours(n)),
        "d" => Ok(Duration::days(n)),
        u => Err(format!("unknown duration unit {u:?} in {s:?} (use s, m, h or d)")),
    }
}

pub fn run(a: UploadPolicyArgs) -> Result<i32, Error> {
    winbundle::store::names::check_bucket(&a.bucket)?;
    winbundle::store::names::check_prefix(&a.prefix)?;
    let sak = a
        .owner_sak
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| missing("--owner-sak (or AWS_SECRET_ACCESS_KEY)"))?;
    let expires: DateTime<Utc> = match &a.expires_at {
        Some(t) => DateTime::parse_from_rfc3339(t)
            .map_err(|e| Error::InvalidParameter {
                parameter: "--expires-at",
                message: format!("{t:?}: {e} (use 2026-12-01T00:00:00Z)"),
            })?
            .with_timezone(&Utc),
        None => {
            Utc::now()
                + parse_duration(&a.expires).map_err(|m| Error::InvalidParameter {
                    parameter: "--expires",
                    message: m,
                })?
        }
    };
    let text = policy::aws_cli_policy(&a.bucket, &a.prefix, expires);
    let b64 = policy::encode(&text);
    let signature = policy::sign(sak, &b64);
    match a.output {
        PolicyOutput::Json => {
            let v = json!({
                "Bucket": a.bucket,
                "Prefix": a.prefix,
                "AWSAccessKeyId": a.owner_akid,
                "Expiration": expires.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "Policy": text,
                "UploadPolicy": b64,
                "UploadPolicySignature": signature,
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        PolicyOutput::Text => {
            println!("UPLOADPOLICY\t{b64}");
            println!("UPLOADPOLICYSIGNATURE\t{signature}");
            println!(
                "EXPIRATION\t{}",
                expires.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            );
        }
    }
    Ok(0)
}

/// The POST store when bundle-instance was given a policy (or the owner's secret key), else None.
/// The policy is decoded and checked here, before the disk is opened.
pub fn post_store(p: &PolicyArgs, store: &StoreArgs, part_size: u64) -> Result<Option<PostStore>, Error> {
    let given = p.upload_policy.is_some() || p.upload_policy_signature.is_some() || p.owner_sak.is_some();
    if !given {
        return Ok(None);
    }
    if store.local_store.is_some() {
        return Err(Error::InvalidParameter {
            parameter: "--local-store",
            message: "an upload policy uploads to S3; drop --local-store".into(),
        });
    }
    let akid = p.owner_akid.clone().ok_or_else(|| missing("--owner-akid"))?;
    let (b64, signature) = match (&p.upload_policy, &p.upload_policy_signature, &p.owner_sak) {
        (Some(pol), Some(sig), _) => (pol.clone(), sig.clone()),
        (Some(_), None, _) => return Err(missing("--upload-policy-signature")),
        (None, Some(_), _) => return Err(missing("--upload-policy")),
        (None, None, Some(sak)) => {
            let text = policy::aws_cli_policy(&store.bucket, &store.prefix, Utc::now() + Duration::hours(24));
            let b64 = policy::encode(&text);
            let sig = policy::sign(sak, &b64);
            (b64, sig)
        }
        (None, None, None) => return Ok(None),
    };
    let parsed = UploadPolicy::parse(&b64).map_err(IntoError::into_error)?;
    let url = PostTarget::url_for(
        &store.bucket,
        store.s3.endpoint_url.as_deref(),
        store.s3.region.as_deref(),
    );
    let target = PostTarget {
        url,
        bucket: store.bucket.clone(),
        access_key_id: akid,
        policy: parsed,
        signature,
    };
    let post = PostStore::new(target, store.s3.concurrency, store.s3.max_attempts)?;
    let keys = winbundle::bundle::Keys::new(&store.prefix);
    post.check_policy(&[keys.manifest(), keys.part(0), keys.part(9999)], part_size, None)
        .map_err(IntoError::into_error)?;
    post.probe(&keys.part(0))?;
    Ok(Some(post))
}
