//! Upload policies: the POST policies S3 takes in place of credentials. Two kinds:
//! - **Signature version 2**, exactly what the aws-cli writes for `ec2 bundle-instance`: the
//!   JSON text, signed with base64(HMAC-SHA1(secret key, base64 policy)). EC2's BundleInstance
//!   used this kind; AWS accepts it only for buckets made before June 24, 2020 in regions older
//!   than 2014, and Garage not at all.
//! - **Signature version 4**: conditions also pin `x-amz-algorithm`, `x-amz-credential`
//!   (`AKID/YYYYMMDD/REGION/s3/aws4_request`) and `x-amz-date`, and the signature is the hex
//!   HMAC-SHA256 of the base64 policy under the SigV4 signing key of that day and region. Every
//!   S3 server takes it.
//!
//! A policy is checked before any data is read: decodable, not expired, for this bucket, every
//! key of the bundle allowed, part sizes inside any content-length-range, an ACL that keeps the
//! image private, and for version 4 the signer's key, region and date.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Duration, NaiveDateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde_json::Value;

use crate::signing;

/// The canned ACL EC2's BundleInstance uploads carry (and version 2 policies keep by default).
pub const BUNDLE_ACL: &str = "ec2-bundle-read";
/// EC2 recommends at least this much validity; less gets a warning.
pub const RECOMMENDED_VALIDITY: Duration = Duration::hours(12);
/// The largest object a POST can create (5 GiB): the default content-length-range maximum.
pub const MAX_POST_OBJECT: u64 = 5 << 30;
/// How far in the future a version 4 policy's x-amz-date may be (clock skew), as S3 allows.
pub const MAX_CLOCK_SKEW: Duration = Duration::minutes(15);
/// Canned ACLs that would let others read the disk image: a policy requiring one is refused.
const PUBLIC_ACLS: [&str; 3] = ["public-read", "public-read-write", "authenticated-read"];

/// A policy problem, with the EC2 error code it maps to.
#[derive(Debug, Clone, thiserror::Error)]
#[error("upload policy: {message}")]
pub struct PolicyError {
    pub code: &'static str,
    pub message: String,
}

fn invalid(message: impl Into<String>) -> PolicyError {
    PolicyError {
        code: "InvalidParameterValue",
        message: message.into(),
    }
}

fn missing(message: impl Into<String>) -> PolicyError {
    PolicyError {
        code: "MissingParameter",
        message: message.into(),
    }
}

/// The policy text the aws-cli generates for `ec2 bundle-instance` (byte for byte).
pub fn aws_cli_policy(bucket: &str, prefix: &str, expires: DateTime<Utc>) -> String {
    v2_policy(bucket, prefix, Some(BUNDLE_ACL), &[], expires)
}

/// A version 2 policy in the aws-cli's layout; with `acl` None the acl condition is left out
/// (for buckets whose ACLs are disabled).
pub fn v2_policy(
    bucket: &str,
    prefix: &str,
    acl: Option<&str>,
    extra: &[(String, String)],
    expires: DateTime<Utc>,
) -> String {
    let expiration = expires.to_rfc3339_opts(SecondsFormat::Micros, true);
    let q = |s: &str| Value::String(s.to_string()).to_string();
    let mut acl = acl.map(|a| format!("{{\"acl\": \"{a}\"}},")).unwrap_or_default();
    for (field, value) in extra {
        acl += &format!("{{{}: {}}},", q(field), q(value));
    }
    // The aws-cli builds this with string formatting, not a JSON encoder: so do we.
    format!(
        "{{\"expiration\": \"{expiration}\",\"conditions\": [{{\"bucket\": \"{bucket}\"}},{acl}[\"starts-with\", \"$key\", \"{prefix}\"]]}}"
    )
}

/// base64(HMAC-SHA1(secret key, base64 policy)): the SigV2 POST policy signature.
pub fn sign(secret_key: &str, policy_b64: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret_key.as_bytes()).expect("HMAC takes any key length");
    mac.update(policy_b64.as_bytes());
    B64.encode(mac.finalize().into_bytes())
}

/// The scope a version 4 policy is signed for: `AKID/YYYYMMDD/REGION/s3/aws4_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub access_key_id: String,
    /// `YYYYMMDD`.
    pub day: String,
    pub region: String,
}

impl Credential {
    /// The scope for signing at `at` in `region`.
    pub fn new(access_key_id: &str, at: DateTime<Utc>, region: &str) -> Self {
        Self {
            access_key_id: access_key_id.to_string(),
            day: at.format("%Y%m%d").to_string(),
            region: region.to_string(),
        }
    }

    /// Parses `AKID/YYYYMMDD/REGION/s3/aws4_request`.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let bad = |why: &str| {
            invalid(format!(
                "its x-amz-credential {text:?} {why} (the form is AKID/YYYYMMDD/REGION/s3/aws4_request)"
            ))
        };
        let parts: Vec<&str> = text.split('/').collect();
        let [akid, day, region, service, terminator] = parts[..] else {
            return Err(bad("does not have five parts"));
        };
        if akid.is_empty() || region.is_empty() {
            return Err(bad("has an empty access key id or region"));
        }
        if day.len() != 8 || chrono::NaiveDate::parse_from_str(day, "%Y%m%d").is_err() {
            return Err(bad("has no valid date"));
        }
        if let Err(why) = crate::store::names::check_region(region) {
            return Err(bad(&format!("names a bad region: {why}")));
        }
        if service != "s3" {
            return Err(bad("is not for the service s3"));
        }
        if terminator != "aws4_request" {
            return Err(bad("does not end in aws4_request"));
        }
        Ok(Self {
            access_key_id: akid.to_string(),
            day: day.to_string(),
            region: region.to_string(),
        })
    }
}

impl std::fmt::Display for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}/s3/aws4_request", self.access_key_id, self.day, self.region)
    }
}

/// `x-amz-date`'s format: `20151229T000000Z`.
const AMZ_DATE: &str = "%Y%m%dT%H%M%SZ";

/// What a version 4 policy says about its signer.
#[derive(Debug, Clone)]
pub struct V4Signer {
    pub credential: Credential,
    /// As it appears in the policy, sent unchanged.
    pub amz_date_text: String,
    pub amz_date: DateTime<Utc>,
}

/// How a policy is signed, from its conditions.
#[derive(Debug, Clone)]
pub enum Signing {
    V2,
    V4(V4Signer),
}

impl Signing {
    pub fn version(&self) -> u8 {
        match self {
            Signing::V2 => 2,
            Signing::V4(_) => 4,
        }
    }
}

/// What a version 4 policy is made of, besides its bucket and prefix.
#[derive(Debug, Clone)]
pub struct V4Request<'a> {
    pub bucket: &'a str,
    pub prefix: &'a str,
    pub acl: Option<&'a str>,
    pub access_key_id: &'a str,
    pub region: &'a str,
    /// When it is signed (x-amz-date and the credential's day).
    pub now: DateTime<Utc>,
    pub expires: DateTime<Utc>,
    /// The content-length-range maximum (one object).
    pub max_object: u64,
    /// More fields every upload must carry with exactly this value (server-side encryption:
    /// `x-amz-server-side-encryption`, `x-amz-server-side-encryption-aws-kms-key-id`).
    pub extra: &'a [(String, String)],
}

/// A version 4 policy text: bucket, key prefix, the ACL if any, a content-length-range, and the
/// signer's algorithm, credential and date. Strings are JSON-escaped.
pub fn v4_policy(r: &V4Request<'_>) -> String {
    let q = |s: &str| Value::String(s.to_string()).to_string();
    let mut conditions = vec![
        format!("{{\"bucket\": {}}}", q(r.bucket)),
        format!("[\"starts-with\", \"$key\", {}]", q(r.prefix)),
    ];
    if let Some(acl) = r.acl {
        conditions.push(format!("{{\"acl\": {}}}", q(acl)));
    }
    for (field, value) in r.extra {
        conditions.push(format!("{{{}: {}}}", q(field), q(value)));
    }
    conditions.push(format!("[\"content-length-range\", 0, {}]", r.max_object));
    conditions.push(format!("{{\"x-amz-algorithm\": \"{}\"}}", signing::ALGORITHM));
    let credential = Credential::new(r.access_key_id, r.now, r.region);
    conditions.push(format!("{{\"x-amz-credential\": {}}}", q(&credential.to_string())));
    conditions.push(format!("{{\"x-amz-date\": \"{}\"}}", r.now.format(AMZ_DATE)));
    format!(
        "{{\"expiration\": \"{}\",\"conditions\": [{}]}}",
        r.expires.to_rfc3339_opts(SecondsFormat::Millis, true),
        conditions.join(",")
    )
}

/// hex(HMAC-SHA256(signing key for the credential's day and region and `s3`, base64 policy)):
/// the SigV4 POST policy signature.
pub fn sign_v4(secret_key: &str, credential: &Credential, policy_b64: &str) -> String {
    let key = signing::signing_key(secret_key, &credential.day, &credential.region, "s3");
    signing::signature(&key, policy_b64)
}

/// base64 of a policy text.
pub fn encode(policy: &str) -> String {
    B64.encode(policy.as_bytes())
}

/// One condition of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// `{"field": "value"}` or `["eq", "$field", "value"]`.
    Eq { field: String, value: String },
    /// `["starts-with", "$field", "prefix"]`.
    StartsWith { field: String, prefix: String },
    /// `["content-length-range", min, max]`.
    LengthRange { min: u64, max: u64 },
}

/// A decoded upload policy.
#[derive(Debug, Clone)]
pub struct UploadPolicy {
    /// As given: sent unchanged.
    pub base64: String,
    pub expiration: DateTime<Utc>,
    pub conditions: Vec<Condition>,
    /// Version 2, or version 4 with its signer (when the conditions carry `x-amz-credential`).
    pub signing: Signing,
}

/// Form fields the upload fills in itself; any other field a condition names is sent with a
/// value that satisfies it.
const OWN_FIELDS: [&str; 11] = [
    "bucket",
    "key",
    "acl",
    "policy",
    "signature",
    "awsaccesskeyid",
    "x-amz-algorithm",
    "x-amz-credential",
    "x-amz-date",
    "x-amz-signature",
    "file",
];

impl UploadPolicy {
    /// Decodes base64 → JSON → conditions, and tells a version 4 policy by its conditions.
    pub fn parse(b64: &str) -> Result<Self, PolicyError> {
        let bytes = B64
            .decode(b64.trim())
            .map_err(|e| invalid(format!("the upload policy is not valid base64 ({e}): pass the policy exactly as printed by `winbundle upload-policy`, boto3 or the aws-cli")))?;
        let json: Value = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("the decoded upload policy is not JSON ({e})")))?;
        let exp = json
            .get("expiration")
            .and_then(Value::as_str)
            .ok_or_else(|| missing("upload policy: no \"expiration\""))?;
        let expiration = DateTime::parse_from_rfc3339(exp)
            .map_err(|e| invalid(format!("expiration {exp:?} is not an ISO-8601 time ({e})")))?
            .with_timezone(&Utc);
        let list = json
            .get("conditions")
            .and_then(Value::as_array)
            .ok_or_else(|| missing("upload policy: no \"conditions\" list"))?;
        let mut conditions = Vec::new();
        for c in list {
            conditions.push(parse_condition(c)?);
        }
        let mut policy = Self {
            base64: b64.trim().to_string(),
            expiration,
            conditions,
            signing: Signing::V2,
        };
        policy.signing = policy.detect_signing()?;
        Ok(policy)
    }

    /// The exact value a condition requires of `field`.
    fn exact(&self, name: &str) -> Option<&str> {
        self.field(name).find_map(|c| match c {
            Condition::Eq { value, .. } => Some(value.as_str()),
            _ => None,
        })
    }

    fn detect_signing(&self) -> Result<Signing, PolicyError> {
        let v4_fields = ["x-amz-credential", "x-amz-algorithm", "x-amz-date"];
        if !v4_fields.iter().any(|f| self.field(f).next().is_some()) {
            return Ok(Signing::V2);
        }
        let need = |f: &str| {
            self.exact(f).ok_or_else(|| {
                missing(format!(
                    "upload policy: a signature version 4 policy needs an exact {f} condition ({{\"{f}\": \"...\"}})"
                ))
            })
        };
        let algorithm = need("x-amz-algorithm")?;
        if algorithm != signing::ALGORITHM {
            return Err(invalid(format!(
                "its x-amz-algorithm is {algorithm:?}; S3 takes only {}",
                signing::ALGORITHM
            )));
        }
        let credential = Credential::parse(need("x-amz-credential")?)?;
        let amz_date_text = need("x-amz-date")?.to_string();
        let amz_date = NaiveDateTime::parse_from_str(&amz_date_text, AMZ_DATE)
            .map_err(|_| {
                invalid(format!(
                    "its x-amz-date {amz_date_text:?} is not a time like 20261127T101500Z"
                ))
            })?
            .and_utc();
        if amz_date.format("%Y%m%d").to_string() != credential.day {
            return Err(invalid(format!(
                "its x-amz-date {amz_date_text} is not on the day of its x-amz-credential ({}): S3 would refuse the signature",
                credential.day
            )));
        }
        Ok(Signing::V4(V4Signer {
            credential,
            amz_date_text,
            amz_date,
        }))
    }

    fn field(&self, name: &str) -> impl Iterator<Item = &Condition> {
        self.conditions.iter().filter(move |c| match c {
            Condition::Eq { field, .. } | Condition::StartsWith { field, .. } => field.eq_ignore_ascii_case(name),
            Condition::LengthRange { .. } => false,
        })
    }

    /// The server-side encryption the policy makes every upload ask for (its exact conditions
    /// on `x-amz-server-side-encryption` and the KMS key id).
    pub fn server_side(&self) -> Option<crate::store::s3::sse::ServerSide> {
        crate::store::s3::sse::ServerSide::from_fields(|name| {
            self.field(name).find_map(|c| match c {
                Condition::Eq { value, .. } => Some(value.clone()),
                _ => None,
            })
        })
    }

    fn allows(&self, field: &str, value: &str) -> bool {
        self.field(field).all(|c| match c {
            Condition::Eq { value: v, .. } => v == value,
            Condition::StartsWith { prefix, .. } => value.starts_with(prefix.as_str()),
            Condition::LengthRange { .. } => true,
        })
    }

    /// The ACL uploads must carry: None when the policy has no acl condition (the field is then
    /// left out, as buckets with ACLs disabled require). A condition that only fixes a start
    /// gets `ec2-bundle-read` if that fits. ACLs that make objects readable by others are refused.
    pub fn acl(&self) -> Result<Option<String>, PolicyError> {
        let mut conditions = self.field("acl").peekable();
        if conditions.peek().is_none() {
            return Ok(None);
        }
        let acl = match self.exact("acl") {
            Some(a) => a.to_string(),
            None => BUNDLE_ACL.to_string(),
        };
        if !self.allows("acl", &acl) {
            return Err(invalid(format!(
                "the upload policy's acl condition does not allow {BUNDLE_ACL} and names no exact ACL: ask for a policy with {{\"acl\": \"ec2-bundle-read\"}}, another private ACL, or none"
            )));
        }
        if PUBLIC_ACLS.contains(&acl.as_str()) {
            return Err(invalid(format!(
                "the upload policy requires the ACL {acl}, which would make the disk image readable by others: ask the bucket owner for a policy with acl ec2-bundle-read, bucket-owner-full-control, or none (`winbundle upload-policy --acl none`)"
            )));
        }
        Ok(Some(acl))
    }

    /// Checks the signature's shape for this kind of policy (it can be verified only by the server).
    pub fn check_signature_shape(&self, signature: &str) -> Result<(), PolicyError> {
        let s = signature.trim();
        match self.signing {
            Signing::V2 if B64.decode(s).map(|b| b.len()) != Ok(20) => Err(invalid(
                "the signature of a version 2 policy is the base64 of an HMAC-SHA1 (20 bytes): pass the signature the bucket owner made for this policy",
            )),
            Signing::V4(_) if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) => Err(invalid(
                "the signature of a version 4 policy is 64 hex digits (HMAC-SHA256; boto3 calls it x-amz-signature): pass the signature the bucket owner made for this policy",
            )),
            _ => Ok(()),
        }
    }

    /// Checks who signed a version 4 policy against what this run uses: the owner's access key
    /// id, if given, and the endpoint's signing region, if known. Returns the region the policy
    /// is for (None for version 2).
    pub fn check_signer(
        &self,
        access_key_id: Option<&str>,
        region: Option<&str>,
    ) -> Result<Option<String>, PolicyError> {
        let Signing::V4(s) = &self.signing else {
            return Ok(None);
        };
        let c = &s.credential;
        if let Some(akid) = access_key_id
            && akid != c.access_key_id
        {
            return Err(invalid(format!(
                "it is signed by the access key {} (its x-amz-credential) but the owner's access key id given is {akid}: pass --owner-akid {} (Storage.S3.AWSAccessKeyId), or ask for a policy signed with {akid}",
                c.access_key_id, c.access_key_id
            )));
        }
        if let Some(r) = region
            && r != c.region
        {
            return Err(invalid(format!(
                "it is signed for the region {} but the S3 endpoint signs as {r}: pass --region {} if the bucket is there, or ask the bucket owner for a policy made with --region {r}",
                c.region, c.region
            )));
        }
        Ok(Some(c.region.clone()))
    }

    /// The form fields of an upload of `key`, in order, before `file`: `key`, the ACL if any,
    /// the signer's fields (version 2: `AWSAccessKeyId`, `policy`, `signature`; version 4:
    /// `x-amz-algorithm`, `x-amz-credential`, `x-amz-date`, `policy`, `x-amz-signature`), and
    /// a value for every other field a condition names (e.g. boto3's `x-amz-security-token`).
    pub fn form_fields(&self, access_key_id: &str, signature: &str) -> Result<Vec<(String, String)>, PolicyError> {
        // A redirect field would make S3 answer 303 to a URL of the policy maker's choice;
        // winbundle reads the 204/201 answer itself and follows no redirect.
        if let Some(field) = ["success_action_redirect", "redirect"]
            .into_iter()
            .find(|f| self.field(f).next().is_some())
        {
            return Err(invalid(format!(
                "it has a {field} condition: winbundle reads S3's own answer and follows no redirect, so it does not take policies that require one; ask the bucket owner for a policy without {field} (`winbundle upload-policy` makes one)"
            )));
        }
        let mut fields = Vec::new();
        if let Some(acl) = self.acl()? {
            fields.push(("acl".to_string(), acl));
        }
        let mut own = |name: &str, value: &str| fields.push((name.to_string(), value.to_string()));
        match &self.signing {
            Signing::V2 => {
                own("AWSAccessKeyId", access_key_id);
                own("policy", &self.base64);
                own("signature", signature.trim());
            }
            Signing::V4(s) => {
                own("x-amz-algorithm", signing::ALGORITHM);
                own("x-amz-credential", &s.credential.to_string());
                own("x-amz-date", &s.amz_date_text);
                own("policy", &self.base64);
                own("x-amz-signature", signature.trim());
            }
        }
        for c in &self.conditions {
            let (field, value) = match c {
                Condition::Eq { field, value } => (field, value),
                Condition::StartsWith { field, prefix } => (field, prefix),
                Condition::LengthRange { .. } => continue,
            };
            let lower = field.to_ascii_lowercase();
            if OWN_FIELDS.contains(&lower.as_str())
                || lower.starts_with("x-ignore-")
                || fields.iter().any(|(f, _)| f.eq_ignore_ascii_case(field))
            {
                continue;
            }
            fields.push((field.clone(), value.clone()));
        }
        Ok(fields)
    }

    /// Checks the policy against a bundle into `bucket` writing `keys` in objects of at most
    /// `part_size` bytes, finishing by about `finish_by`. Returns warnings.
    pub fn check(
        &self,
        bucket: &str,
        keys: &[String],
        part_size: u64,
        now: DateTime<Utc>,
        finish_by: Option<DateTime<Utc>>,
    ) -> Result<Vec<String>, PolicyError> {
        let mut warnings = Vec::new();
        if self.expiration <= now {
            return Err(invalid(format!(
                "it expired at {}: ask the bucket owner for a new one",
                self.expiration.to_rfc3339()
            )));
        }
        if let Signing::V4(s) = &self.signing {
            if s.amz_date >= self.expiration {
                return Err(invalid(format!(
                    "its x-amz-date {} is not before its expiration {}: the policy was never valid; ask for a new one",
                    s.amz_date_text,
                    self.expiration.to_rfc3339()
                )));
            }
            if s.amz_date > now + MAX_CLOCK_SKEW {
                return Err(invalid(format!(
                    "its x-amz-date {} is in the future (now is {}): this machine's clock or the policy maker's is wrong; fix the clock, or ask for a new policy",
                    s.amz_date_text,
                    now.format(AMZ_DATE)
                )));
            }
        }
        if let Some(end) = finish_by
            && self.expiration <= end
        {
            return Err(invalid(format!(
                "it expires at {}, before this bundle is expected to finish (about {}): ask for a policy valid longer",
                self.expiration.to_rfc3339(),
                end.to_rfc3339()
            )));
        }
        if self.expiration - now < RECOMMENDED_VALIDITY {
            warnings.push(format!(
                "the upload policy expires in {} minutes (EC2 recommends 12 hours or more)",
                (self.expiration - now).num_minutes()
            ));
        }
        if self.field("bucket").next().is_none() {
            return Err(missing("upload policy: no bucket condition"));
        }
        if !self.allows("bucket", bucket) {
            return Err(invalid(format!(
                "the upload policy is for another bucket, not {bucket}"
            )));
        }
        self.acl()?;
        for key in keys {
            if !self.allows("key", key) {
                return Err(invalid(format!(
                    "the upload policy does not allow the key {key:?} (check the prefix)"
                )));
            }
        }
        if let Some(w) = self.broad_key_warning() {
            warnings.push(w);
        }
        for c in &self.conditions {
            if let Condition::LengthRange { min, max } = c {
                if *max < part_size {
                    return Err(invalid(format!(
                        "its content-length-range allows at most {max} bytes but parts are {part_size} bytes: pass a smaller --part-size"
                    )));
                }
                if *min > 1024 {
                    return Err(invalid(format!(
                        "its content-length-range requires at least {min} bytes: the last part and the manifest can be smaller"
                    )));
                }
            }
        }
        Ok(warnings)
    }
}

impl UploadPolicy {
    /// A warning when the key condition is `starts-with` a plain prefix (`prod/web`, as the
    /// aws-cli and EC2 make it) rather than `prod/web.`: every key of a bundle starts with
    /// `PREFIX.`, but the plain condition lets the holder write other bundles' keys too.
    pub fn broad_key_warning(&self) -> Option<String> {
        self.field("key").find_map(|c| match c {
            Condition::StartsWith { prefix, .. } if !prefix.ends_with('.') => Some(format!(
                "the upload policy's key condition is starts-with {prefix:?} (as the aws-cli and EC2 make it): besides this bundle's {prefix}.* objects, its holder can write any key that starts with {prefix:?}, such as {prefix}2.manifest.json or {prefix}x/..., and so replace another bundle's objects; policies from `winbundle upload-policy` are limited to {:?}.",
                format!("{prefix}.")
            )),
            _ => None,
        })
    }
}

fn parse_condition(c: &Value) -> Result<Condition, PolicyError> {
    let bad = || {
        invalid(format!(
            "condition {c} is not one of {{\"field\": \"value\"}}, [\"eq\", \"$field\", \"value\"], [\"starts-with\", \"$field\", \"prefix\"], [\"content-length-range\", min, max]"
        ))
    };
    match c {
        Value::Object(m) if m.len() == 1 => {
            let (k, v) = m.iter().next().ok_or_else(bad)?;
            Ok(Condition::Eq {
                field: k.clone(),
                value: v.as_str().ok_or_else(bad)?.to_string(),
            })
        }
        Value::Array(a) if a.len() == 3 => {
            let op = a[0].as_str().ok_or_else(bad)?.to_ascii_lowercase();
            let field = || {
                a[1].as_str()
                    .map(|f| f.trim_start_matches('$').to_string())
                    .ok_or_else(bad)
            };
            match op.as_str() {
                "eq" => Ok(Condition::Eq {
                    field: field()?,
                    value: a[2].as_str().ok_or_else(bad)?.to_string(),
                }),
                "starts-with" => Ok(Condition::StartsWith {
                    field: field()?,
                    prefix: a[2].as_str().ok_or_else(bad)?.to_string(),
                }),
                "content-length-range" => {
                    let n = |v: &Value| {
                        v.as_u64()
                            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                            .ok_or_else(bad)
                    };
                    Ok(Condition::LengthRange {
                        min: n(&a[1])?,
                        max: n(&a[2])?,
                    })
                }
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    #[test]
    fn aws_cli_vectors_reproduce() {
        let t = DateTime::parse_from_rfc3339("2013-08-10T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let text = aws_cli_policy("mybucket", "foobar", t);
        assert_eq!(
            text,
            r#"{"expiration": "2013-08-10T00:00:00.000000Z","conditions": [{"bucket": "mybucket"},{"acl": "ec2-bundle-read"},["starts-with", "$key", "foobar"]]}"#
        );
        assert_eq!(sign(DOC_SECRET, &encode(&text)), "ynxybUMv9YuGbPl7HZ8AFJW/2t0=");
        assert_eq!(
            sign(DOC_SECRET, &encode(r#"{"notarealpolicy":true}"#)),
            "a5SmoLOxoM0MHpOdC25nE7KIafg="
        );
        let p = UploadPolicy::parse(&encode(&text)).unwrap();
        assert_eq!(p.signing.version(), 2);
        assert_eq!(p.acl().unwrap().as_deref(), Some(BUNDLE_ACL));
    }

    /// The S3 API reference's "Browser-Based Upload using HTTP POST (Using AWS Signature Version
    /// 4)" example: its policy (with its CRLF line ends), the base64 it gives, and its signature.
    #[test]
    fn aws_sigv4_post_example_reproduces() {
        let text = [
            r#"{ "expiration": "2015-12-30T12:00:00.000Z","#,
            r#"  "conditions": ["#,
            r#"    {"bucket": "sigv4examplebucket"},"#,
            r#"    ["starts-with", "$key", "user/user1/"],"#,
            r#"    {"acl": "public-read"},"#,
            r#"    {"success_action_redirect": "http://sigv4examplebucket.s3.amazonaws.com/successful_upload.html"},"#,
            r#"    ["starts-with", "$Content-Type", "image/"],"#,
            r#"    {"x-amz-meta-uuid": "14365123651274"},"#,
            r#"    {"x-amz-server-side-encryption": "AES256"},"#,
            r#"    ["starts-with", "$x-amz-meta-tag", ""],"#,
            "",
            r#"    {"x-amz-credential": "AKIAIOSFODNN7EXAMPLE/20151229/us-east-1/s3/aws4_request"},"#,
            r#"    {"x-amz-algorithm": "AWS4-HMAC-SHA256"},"#,
            r#"    {"x-amz-date": "20151229T000000Z" }"#,
            "  ]",
            "}",
        ]
        .join("\r\n");
        let b64 = encode(&text);
        assert_eq!(
            b64,
            "eyAiZXhwaXJhdGlvbiI6ICIyMDE1LTEyLTMwVDEyOjAwOjAwLjAwMFoiLA0KICAiY29uZGl0aW9ucyI6IFsNCiAgICB7ImJ1Y2tldCI6ICJzaWd2NGV4YW1wbGVidWNrZXQifSwNCiAgICBbInN0YXJ0cy13aXRoIiwgIiRrZXkiLCAidXNlci91c2VyMS8iXSwNCiAgICB7ImFjbCI6ICJwdWJsaWMtcmVhZCJ9LA0KICAgIHsic3VjY2Vzc19hY3Rpb25fcmVkaXJlY3QiOiAiaHR0cDovL3NpZ3Y0ZXhhbXBsZWJ1Y2tldC5zMy5hbWF6b25hd3MuY29tL3N1Y2Nlc3NmdWxfdXBsb2FkLmh0bWwifSwNCiAgICBbInN0YXJ0cy13aXRoIiwgIiRDb250ZW50LVR5cGUiLCAiaW1hZ2UvIl0sDQogICAgeyJ4LWFtei1tZXRhLXV1aWQiOiAiMTQzNjUxMjM2NTEyNzQifSwNCiAgICB7IngtYW16LXNlcnZlci1zaWRlLWVuY3J5cHRpb24iOiAiQUVTMjU2In0sDQogICAgWyJzdGFydHMtd2l0aCIsICIkeC1hbXotbWV0YS10YWciLCAiIl0sDQoNCiAgICB7IngtYW16LWNyZWRlbnRpYWwiOiAiQUtJQUlPU0ZPRE5ON0VYQU1QTEUvMjAxNTEyMjkvdXMtZWFzdC0xL3MzL2F3czRfcmVxdWVzdCJ9LA0KICAgIHsieC1hbXotYWxnb3JpdGhtIjogIkFXUzQtSE1BQy1TSEEyNTYifSwNCiAgICB7IngtYW16LWRhdGUiOiAiMjAxNTEyMjlUMDAwMDAwWiIgfQ0KICBdDQp9"
        );
        let p = UploadPolicy::parse(&b64).unwrap();
        let Signing::V4(signer) = &p.signing else {
            panic!("the example is a version 4 policy")
        };
        assert_eq!(
            signer.credential,
            Credential {
                access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
                day: "20151229".into(),
                region: "us-east-1".into()
            }
        );
        assert_eq!(
            sign_v4(DOC_SECRET, &signer.credential, &b64),
            "8afdbf4008c03f22c2cd3cdb72e4afbb1f6a588f3255ac628749a66d7f09699e"
        );
        // Its public-read ACL would expose a disk image: refused.
        assert!(p.acl().unwrap_err().message.contains("readable by others"));
        // And its success_action_redirect would send the upload's answer elsewhere: refused.
        let e = p.form_fields("AKIAIOSFODNN7EXAMPLE", "00").unwrap_err();
        assert!(e.message.contains("success_action_redirect"), "{}", e.message);
    }

    #[test]
    fn redirects_and_bad_regions_in_policies_are_refused() {
        let exp = "2030-01-01T00:00:00Z";
        for field in ["success_action_redirect", "redirect"] {
            let text = format!(
                r#"{{"expiration": "{exp}","conditions": [{{"bucket": "b"}},["starts-with", "$key", "p."],{{"{field}": "http://127.0.0.1:1/"}}]}}"#
            );
            let p = UploadPolicy::parse(&encode(&text)).unwrap();
            let e = p.form_fields("AKID", "sig").unwrap_err();
            assert!(e.message.contains(field), "{}", e.message);
            let starts = text.replace(
                &format!(r#"{{"{field}": "http://127.0.0.1:1/"}}"#),
                &format!(r#"["starts-with", "${field}", ""]"#),
            );
            let p = UploadPolicy::parse(&encode(&starts)).unwrap();
            assert!(p.form_fields("AKID", "sig").unwrap_err().message.contains(field));
        }
        let text = format!(
            r#"{{"expiration": "{exp}","conditions": [{{"bucket": "b"}},{{"x-amz-algorithm": "AWS4-HMAC-SHA256"}},{{"x-amz-credential": "AKID/20291231/x@127.0.0.1:18556#/s3/aws4_request"}},{{"x-amz-date": "20291231T000000Z"}}]}}"#
        );
        let e = UploadPolicy::parse(&encode(&text)).unwrap_err();
        assert!(e.message.contains("not a region name"), "{}", e.message);
    }

    #[test]
    fn v4_policies_made_here_parse_back_with_their_fields() {
        let now = DateTime::parse_from_rfc3339("2026-11-27T10:15:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let req = V4Request {
            bucket: "bkt",
            prefix: "win/\"q\"",
            acl: None,
            access_key_id: "AKID",
            region: "garage",
            now,
            expires: now + Duration::hours(24),
            max_object: MAX_POST_OBJECT,
            extra: &[],
        };
        let text = v4_policy(&req);
        assert_eq!(
            text,
            r#"{"expiration": "2026-11-28T10:15:00.000Z","conditions": [{"bucket": "bkt"},["starts-with", "$key", "win/\"q\""],["content-length-range", 0, 5368709120],{"x-amz-algorithm": "AWS4-HMAC-SHA256"},{"x-amz-credential": "AKID/20261127/garage/s3/aws4_request"},{"x-amz-date": "20261127T101500Z"}]}"#
        );
        let p = UploadPolicy::parse(&encode(&text)).unwrap();
        assert_eq!(p.signing.version(), 4);
        assert_eq!(p.acl().unwrap(), None);
        let sig = sign_v4("secret", &Credential::new("AKID", now, "garage"), &p.base64);
        p.check_signature_shape(&sig).unwrap();
        assert!(p.check_signature_shape("c2lnbmF0dXJl").is_err());
        let fields = p.form_fields("AKID", &sig).unwrap();
        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "x-amz-algorithm",
                "x-amz-credential",
                "x-amz-date",
                "policy",
                "x-amz-signature"
            ]
        );
        assert_eq!(
            p.check_signer(Some("AKID"), Some("garage")).unwrap().as_deref(),
            Some("garage")
        );
        assert!(
            p.check_signer(Some("OTHER"), None)
                .unwrap_err()
                .message
                .contains("--owner-akid AKID")
        );
        assert!(
            p.check_signer(None, Some("us-east-1"))
                .unwrap_err()
                .message
                .contains("--region garage")
        );
        // With an ACL, the field comes right after the key.
        let with_acl = v4_policy(&V4Request {
            acl: Some(BUNDLE_ACL),
            ..req
        });
        let p = UploadPolicy::parse(&encode(&with_acl)).unwrap();
        assert_eq!(
            p.form_fields("AKID", &sig).unwrap()[0],
            ("acl".into(), BUNDLE_ACL.into())
        );
    }

    #[test]
    fn v4_dates_must_lie_in_the_validity() {
        let now = Utc::now();
        let make = |signed: DateTime<Utc>, expires: DateTime<Utc>| {
            let text = v4_policy(&V4Request {
                bucket: "bkt",
                prefix: "win.",
                acl: None,
                access_key_id: "AKID",
                region: "us-east-1",
                now: signed,
                expires,
                max_object: MAX_POST_OBJECT,
                extra: &[],
            });
            UploadPolicy::parse(&encode(&text)).unwrap()
        };
        let keys = ["win.part.0".to_string()];
        let ok = make(now, now + Duration::hours(24));
        assert!(ok.check("bkt", &keys, 1 << 20, now, None).unwrap().is_empty());
        let future = make(now + Duration::hours(2), now + Duration::hours(24));
        let e = future.check("bkt", &keys, 1 << 20, now, None).unwrap_err();
        assert!(e.message.contains("is in the future"), "{}", e.message);
        let never = make(now - Duration::hours(1), now - Duration::hours(2));
        let e = never
            .check("bkt", &keys, 1 << 20, now - Duration::hours(3), None)
            .unwrap_err();
        assert!(e.message.contains("not before its expiration"), "{}", e.message);
        // The credential's day must be x-amz-date's day.
        let text = String::from_utf8(B64.decode(&ok.base64).unwrap()).unwrap();
        let day = now.format("%Y%m%d").to_string();
        let other = (now - Duration::days(1)).format("%Y%m%d").to_string();
        let moved = text.replace(&format!("/{day}/"), &format!("/{other}/"));
        let e = UploadPolicy::parse(&encode(&moved)).unwrap_err();
        assert!(
            e.message.contains("not on the day of its x-amz-credential"),
            "{}",
            e.message
        );
        // Half a version 4 policy is an error, not a version 2 policy.
        let half = text.replace(r#"{"x-amz-algorithm": "AWS4-HMAC-SHA256"},"#, "");
        let e = UploadPolicy::parse(&encode(&half)).unwrap_err();
        assert_eq!(e.code, "MissingParameter");
        assert!(e.message.contains("x-amz-algorithm"), "{}", e.message);
    }
}
