//! BundleInstance upload policies: the JSON the aws-cli writes for `ec2 bundle-instance`, its
//! SigV2 signature (base64 of HMAC-SHA1 over the base64 policy), and the checks made before any
//! data is read: decodable, not expired, for this bucket, with the `ec2-bundle-read` ACL, every
//! key of the bundle allowed, and part sizes inside any content-length-range.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde_json::Value;

/// The canned ACL every BundleInstance upload carries.
pub const BUNDLE_ACL: &str = "ec2-bundle-read";
/// EC2 recommends at least this much validity; less gets a warning.
pub const RECOMMENDED_VALIDITY: Duration = Duration::hours(12);

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

/// The policy text the aws-cli generates for `ec2 bundle-instance` (byte for byte).
pub fn aws_cli_policy(bucket: &str, prefix: &str, expires: DateTime<Utc>) -> String {
    let expiration = expires.to_rfc3339_opts(SecondsFormat::Micros, true);
    // The aws-cli builds this with string formatting, not a JSON encoder: so do we.
    format!(
        "{{\"expiration\": \"{expiration}\",\"conditions\": [{{\"bucket\": \"{bucket}\"}},{{\"acl\": \"{BUNDLE_ACL}\"}},[\"starts-with\", \"$key\", \"{prefix}\"]]}}"
    )
}

/// base64(HMAC-SHA1(secret key, base64 policy)): the SigV2 POST policy signature.
pub fn sign(secret_key: &str, policy_b64: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret_key.as_bytes()).expect("HMAC takes any key length");
    mac.update(policy_b64.as_bytes());
    B64.encode(mac.finalize().into_bytes())
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
}

impl UploadPolicy {
    /// Decodes base64 → JSON → conditions.
    pub fn parse(b64: &str) -> Result<Self, PolicyError> {
        let bytes = B64
            .decode(b64.trim())
            .map_err(|e| invalid(format!("the upload policy is not valid base64 ({e}): pass the policy exactly as printed by `winbundle upload-policy` or the aws-cli")))?;
        let json: Value = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("the decoded upload policy is not JSON ({e})")))?;
        let exp = json
            .get("expiration")
            .and_then(Value::as_str)
            .ok_or_else(|| PolicyError {
                code: "MissingParameter",
                message: "upload policy: no \"expiration\"".into(),
            })?;
        let expiration = DateTime::parse_from_rfc3339(exp)
            .map_err(|e| invalid(format!("expiration {exp:?} is not an ISO-8601 time ({e})")))?
            .with_timezone(&Utc);
        let list = json
            .get("conditions")
            .and_then(Value::as_array)
            .ok_or_else(|| PolicyError {
                code: "MissingParameter",
                message: "upload policy: no \"conditions\" list".into(),
            })?;
        let mut conditions = Vec::new();
        for c in list {
            conditions.push(parse_condition(c)?);
        }
        Ok(Self {
            base64: b64.trim().to_string(),
            expiration,
            conditions,
        })
    }

    fn field(&self, name: &str) -> impl Iterator<Item = &Condition> {
        self.conditions.iter().filter(move |c| match c {
            Condition::Eq { field, .. } | Condition::StartsWith { field, .. } => field.eq_ignore_ascii_case(name),
            Condition::LengthRange { .. } => false,
        })
    }

    fn allows(&self, field: &str, value: &str) -> bool {
        self.field(field).all(|c| match c {
            Condition::Eq { value: v, .. } => v == value,
            Condition::StartsWith { prefix, .. } => value.starts_with(prefix.as_str()),
            Condition::LengthRange { .. } => true,
        })
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
            return Err(PolicyError {
                code: "InvalidParameterValue",
                message: format!(
                    "upload policy: it expired at {} : ask the bucket owner for a new one",
                    self.expiration.to_rfc3339()
                ),
            });
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
            return Err(PolicyError {
                code: "MissingParameter",
                message: "upload policy: no bucket condition".into(),
            });
        }
        if !self.allows("bucket", bucket) {
            return Err(invalid(format!(
                "the upload policy is for another bucket, not {bucket}"
            )));
        }
        if self.field("acl").next().is_none() {
            return Err(PolicyError {
                code: "MissingParameter",
                message: format!("upload policy: no acl condition (it must allow {BUNDLE_ACL})"),
            });
        }
        if !self.allows("acl", BUNDLE_ACL) {
            return Err(invalid(format!(
                "the upload policy's acl condition does not allow {BUNDLE_ACL}"
            )));
        }
        for key in keys {
            if !self.allows("key", key) {
                return Err(invalid(format!(
                    "the upload policy does not allow the key {key:?} (check the prefix)"
                )));
            }
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
    }
}
