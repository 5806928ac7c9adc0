//! Verifying AWS Signature Version 4 on incoming requests (the `Authorization` header, or the
//! `X-Amz-*` query parameters of a presigned URL): rebuild the canonical request from what was
//! received, derive the signing key from the caller's secret, and compare in constant time.
//! Only the received bytes are trusted: the canonical request is built from the raw path, the
//! raw query and the body as they arrived.

use chrono::{DateTime, NaiveDateTime, Utc};
use sha2::{Digest, Sha256};

pub use crate::signing::{ALGORITHM, signature, signing_key};
/// SHA-256 of the empty string: the payload hash of a request without a body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// A request as received.
#[derive(Debug, Clone)]
pub struct Incoming<'a> {
    pub method: &'a str,
    /// The path as sent (still percent-encoded).
    pub raw_path: &'a str,
    /// The query string as sent, without `?`.
    pub raw_query: &'a str,
    /// Header names and values, in the order received (repeated names allowed).
    pub headers: Vec<(String, String)>,
    pub body: &'a [u8],
}

/// Why a request is not authenticated. Every variant becomes EC2's `AuthFailure`; the message
/// says what was wrong without revealing anything secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "the request is not signed: sign it with AWS Signature Version 4 (the aws-cli and SDKs do; check that credentials are configured)"
    )]
    Missing,
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("unsupported signing algorithm {0:?}: sign with AWS4-HMAC-SHA256 (Signature Version 4)")]
    Algorithm(String),
    #[error("AWS was not able to validate the provided access credentials: unknown access key id {0}")]
    UnknownKey(String),
    #[error(
        "the credential scope is for service {got:?}; this endpoint is service \"ec2\": sign for ec2 (aws ec2 ..., boto3.client('ec2'))"
    )]
    Service { got: String },
    #[error(
        "the credential scope is for region {got:?}, but this server answers as region {want:?}: pass --region {want} (or set AWS_DEFAULT_REGION)"
    )]
    Region { got: String, want: String },
    #[error(
        "request time {stamp} is more than {skew} seconds away from the server time {now}: check the clock of the client (and of the server)"
    )]
    Skew { stamp: String, now: String, skew: i64 },
    #[error("the presigned request expired at {0}")]
    Expired(String),
    #[error(
        "the presigned request was signed at {stamp}, more than max_clock_skew_seconds ({skew}) ago: this server takes presigned requests only within that window, whatever X-Amz-Expires says; presign it again just before sending it"
    )]
    PresignedTooOld { stamp: String, skew: i64 },
    #[error("the signed headers must include host{0}")]
    Unsigned(&'static str),
    #[error(
        "the request signature we calculated does not match the signature you provided: check your secret access key and signing method"
    )]
    Mismatch,
}

/// A request whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub access_key_id: String,
    pub region: String,
}

/// What the server expects of signatures.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    pub service: &'a str,
    pub region: &'a str,
    pub now: DateTime<Utc>,
    /// Largest allowed difference between the request's time and `now`, in seconds.
    pub max_skew_seconds: i64,
}

/// URI-encodes per SigV4: everything but `A-Za-z0-9-_.~` (and `/` when `keep_slash`).
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Decodes `%XX` escapes; `plus_is_space` for form data. Fails on a broken escape or bad UTF-8.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("broken percent-escape at byte {i} of {s:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8 text"))
}

/// Splits `a=1&b=2` into decoded pairs (`+` is a space, as forms and query strings write it).
pub fn parse_pairs(raw: &str) -> Result<Vec<(String, String)>, String> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((percent_decode(k, true)?, percent_decode(v, true)?))
        })
        .collect()
}

/// The canonical query string: every pair decoded, encoded again, sorted by key then value;
/// `skip` names a parameter left out (the signature of a presigned request).
pub fn canonical_query(raw: &str, skip: Option<&str>) -> Result<String, String> {
    let mut pairs: Vec<(String, String)> = parse_pairs(raw)?
        .into_iter()
        .filter(|(k, _)| Some(k.as_str()) != skip)
        .map(|(k, v)| (uri_encode(&k, false), uri_encode(&v, false)))
        .collect();
    pairs.sort();
    Ok(pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&"))
}

/// The canonical URI of a non-S3 service: the path with `.`/`..` segments and repeated slashes
/// removed, then encoded (so an escape the client sent is encoded a second time).
pub fn canonical_uri(raw_path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in raw_path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut path = format!("/{}", out.join("/"));
    if raw_path.ends_with('/') && path.len() > 1 {
        path.push('/');
    }
    uri_encode(&path, true)
}

/// The canonical headers block (`name:value\n` each) for the signed header names, and whether
/// every signed header was present.
fn canonical_headers(headers: &[(String, String)], signed: &[&str]) -> Result<String, AuthError> {
    let mut out = String::new();
    for name in signed {
        let values: Vec<String> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if values.is_empty() {
            return Err(AuthError::Malformed {
                what: "SignedHeaders",
                detail: format!("the signed header {name:?} is not in the request"),
            });
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    Ok(out)
}

/// The canonical request, from its parts.
pub fn canonical_request(
    method: &str,
    canonical_uri: &str,
    canonical_query: &str,
    canonical_headers: &str,
    signed_headers: &str,
    payload_hash: &str,
) -> String {
    format!(
        "{}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}",
        method.to_ascii_uppercase()
    )
}

/// The string to sign for a canonical request made at `amz_date` within `scope`.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

/// The parts of a signature, from the header or the query.
struct Parts {
    access_key_id: String,
    day: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
    amz_date: String,
    /// Seconds a presigned request stays valid.
    expires: Option<i64>,
    presigned: bool,
}

fn malformed(what: &'static str, detail: impl Into<String>) -> AuthError {
    AuthError::Malformed {
        what,
        detail: detail.into(),
    }
}

fn header<'a>(req: &'a Incoming<'_>, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn parse_credential(c: &str) -> Result<(String, String, String, String), AuthError> {
    let f: Vec<&str> = c.split('/').collect();
    if f.len() != 5 || f[4] != "aws4_request" || f[0].is_empty() {
        return Err(malformed(
            "Credential",
            format!("{c:?} is not AKID/YYYYMMDD/region/service/aws4_request"),
        ));
    }
    Ok((f[0].into(), f[1].into(), f[2].into(), f[3].into()))
}

fn split_signed(s: &str) -> Vec<String> {
    s.split(';').map(|h| h.trim().to_ascii_lowercase()).collect()
}

fn parts(req: &Incoming<'_>) -> Result<Parts, AuthError> {
    if let Some(auth) = header(req, "authorization") {
        let (alg, rest) = auth.trim().split_once(' ').unwrap_or((auth.trim(), ""));
        if alg != ALGORITHM {
            return Err(AuthError::Algorithm(alg.chars().take(40).collect()));
        }
        let (mut cred, mut signed, mut sig) = (None, None, None);
        for kv in rest.split(',') {
            match kv.trim().split_once('=') {
                Some(("Credential", v)) => cred = Some(v.trim()),
                Some(("SignedHeaders", v)) => signed = Some(v.trim()),
                Some(("Signature", v)) => sig = Some(v.trim()),
                _ => {}
            }
        }
        let cred = cred.ok_or_else(|| malformed("Authorization header", "no Credential="))?;
        let signed = signed.ok_or_else(|| malformed("Authorization header", "no SignedHeaders="))?;
        let sig = sig.ok_or_else(|| malformed("Authorization header", "no Signature="))?;
        let (access_key_id, day, region, service) = parse_credential(cred)?;
        let amz_date = match header(req, "x-amz-date") {
            Some(d) => d.trim().to_string(),
            None => {
                let d = header(req, "date").ok_or_else(|| malformed("request", "no X-Amz-Date or Date header"))?;
                DateTime::parse_from_rfc2822(d.trim())
                    .map_err(|e| malformed("Date header", format!("{d:?}: {e}")))?
                    .with_timezone(&Utc)
                    .format("%Y%m%dT%H%M%SZ")
                    .to_string()
            }
        };
        return Ok(Parts {
            access_key_id,
            day,
            region,
            service,
            signed_headers: split_signed(signed),
            signature: sig.to_string(),
            amz_date,
            expires: None,
            presigned: false,
        });
    }
    let q = parse_pairs(req.raw_query).map_err(|e| malformed("query string", e))?;
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(alg) = get("X-Amz-Algorithm") else {
        return Err(AuthError::Missing);
    };
    if alg != ALGORITHM {
        return Err(AuthError::Algorithm(alg.chars().take(40).collect()));
    }
    let need = |k: &'static str| get(k).ok_or_else(|| malformed("presigned request", format!("no {k}")));
    let (access_key_id, day, region, service) = parse_credential(&need("X-Amz-Credential")?)?;
    let expires = match get("X-Amz-Expires") {
        Some(e) => Some(
            e.parse::<i64>()
                .ok()
                .filter(|s| (1..=604_800).contains(s))
                .ok_or_else(|| malformed("X-Amz-Expires", format!("{e:?} is not 1 to 604800 seconds")))?,
        ),
        None => None,
    };
    Ok(Parts {
        access_key_id,
        day,
        region,
        service,
        signed_headers: split_signed(&need("X-Amz-SignedHeaders")?),
        signature: need("X-Amz-Signature")?,
        amz_date: need("X-Amz-Date")?,
        expires,
        presigned: true,
    })
}

/// Checks the signature of `req`. `secret_of` gives the secret key of an access key id.
pub fn verify<'s>(
    req: &Incoming<'_>,
    expect: &Expect<'_>,
    secret_of: impl Fn(&str) -> Option<&'s str>,
) -> Result<Verified, AuthError> {
    let p = parts(req)?;
    let stamp = NaiveDateTime::parse_from_str(&p.amz_date, "%Y%m%dT%H%M%SZ")
        .map_err(|_| malformed("X-Amz-Date", format!("{:?} is not YYYYMMDDTHHMMSSZ", p.amz_date)))?
        .and_utc();
    if !p.amz_date.starts_with(&p.day) {
        return Err(malformed(
            "Credential",
            format!("its date {} is not the day of X-Amz-Date {}", p.day, p.amz_date),
        ));
    }
    let secret = secret_of(&p.access_key_id).ok_or_else(|| AuthError::UnknownKey(p.access_key_id.clone()))?;
    if p.service != expect.service {
        return Err(AuthError::Service { got: p.service });
    }
    if p.region != expect.region {
        return Err(AuthError::Region {
            got: p.region,
            want: expect.region.to_string(),
        });
    }
    let skew = (expect.now - stamp).num_seconds();
    if p.presigned {
        // X-Amz-Expires past its end is refused; and whatever it says, a presigned request
        // older than the skew window is too (a leaked URL must not stay usable for a week).
        let lifetime = p.expires.unwrap_or(expect.max_skew_seconds);
        if skew > lifetime {
            return Err(AuthError::Expired(
                (stamp + chrono::Duration::seconds(lifetime)).to_rfc3339(),
            ));
        }
        if skew > expect.max_skew_seconds {
            return Err(AuthError::PresignedTooOld {
                stamp: p.amz_date,
                skew: expect.max_skew_seconds,
            });
        }
    }
    if skew.abs() > expect.max_skew_seconds {
        return Err(AuthError::Skew {
            stamp: p.amz_date,
            now: expect.now.format("%Y%m%dT%H%M%SZ").to_string(),
            skew: expect.max_skew_seconds,
        });
    }
    if !p.signed_headers.iter().any(|h| h == "host") {
        return Err(AuthError::Unsigned(""));
    }
    if !p.presigned && header(req, "x-amz-date").is_some() && !p.signed_headers.iter().any(|h| h == "x-amz-date") {
        return Err(AuthError::Unsigned(" and x-amz-date"));
    }
    let signed: Vec<&str> = p.signed_headers.iter().map(String::as_str).collect();
    let headers = canonical_headers(&req.headers, &signed)?;
    let query = canonical_query(req.raw_query, p.presigned.then_some("X-Amz-Signature"))
        .map_err(|e| malformed("query string", e))?;
    let payload = match header(req, "x-amz-content-sha256") {
        Some(h) => h.trim().to_string(),
        None => hex::encode(Sha256::digest(req.body)),
    };
    if payload != "UNSIGNED-PAYLOAD" && payload != hex::encode(Sha256::digest(req.body)) {
        return Err(malformed("x-amz-content-sha256", "it is not the SHA-256 of the body"));
    }
    let creq = canonical_request(
        req.method,
        &canonical_uri(req.raw_path),
        &query,
        &headers,
        &signed.join(";"),
        &payload,
    );
    let scope = format!("{}/{}/{}/aws4_request", p.day, p.region, p.service);
    let sts = string_to_sign(&p.amz_date, &scope, &creq);
    let key = signing_key(secret, &p.day, &p.region, &p.service);
    if !crate::signing::verify(&key, &sts, &p.signature) {
        return Err(AuthError::Mismatch);
    }
    Ok(Verified {
        access_key_id: p.access_key_id,
        region: p.region,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // AWS's published Signature Version 4 test suite: these credentials, scope and time.
    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";

    fn suite_now() -> DateTime<Utc> {
        NaiveDateTime::parse_from_str(DATE, "%Y%m%dT%H%M%SZ").unwrap().and_utc()
    }

    fn expect() -> Expect<'static> {
        Expect {
            service: "service",
            region: "us-east-1",
            now: suite_now(),
            max_skew_seconds: 300,
        }
    }

    fn secret(k: &str) -> Option<&'static str> {
        (k == AKID).then_some(SECRET)
    }

    /// A suite request: signed headers are host, x-amz-date and `extra`; the signature given.
    fn suite(
        method: &str,
        path: &str,
        query: &str,
        extra: &[(&str, &str)],
        body: &[u8],
        sig: &str,
    ) -> Result<Verified, AuthError> {
        let mut headers: Vec<(String, String)> = vec![
            ("Host".into(), "example.amazonaws.com".into()),
            ("X-Amz-Date".into(), DATE.into()),
        ];
        headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        let mut names: Vec<String> = headers.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
        names.sort();
        names.dedup();
        headers.push((
            "Authorization".into(),
            format!(
                "AWS4-HMAC-SHA256 Credential={AKID}/20150830/us-east-1/service/aws4_request, SignedHeaders={}, Signature={sig}",
                names.join(";")
            ),
        ));
        let req = Incoming {
            method,
            raw_path: path,
            raw_query: query,
            headers,
            body,
        };
        verify(&req, &expect(), secret)
    }

    #[test]
    fn aws_test_suite_vectors_verify() {
        let ok = |r: Result<Verified, AuthError>, name: &str| assert!(r.is_ok(), "{name}: {r:?}");
        ok(
            suite(
                "GET",
                "/",
                "",
                &[],
                b"",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            "get-vanilla",
        );
        ok(
            suite(
                "POST",
                "/",
                "",
                &[],
                b"",
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            ),
            "post-vanilla",
        );
        ok(
            suite(
                "POST",
                "/",
                "Param1=value1",
                &[],
                b"",
                "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11",
            ),
            "post-vanilla-query",
        );
        ok(
            suite(
                "GET",
                "/",
                "Param1=value1",
                &[],
                b"",
                "a67d582fa61cc504c4bae71f336f98b97f1ea3c7a6bfe1b6e45aec72011b9aeb",
            ),
            "get-vanilla-query",
        );
        ok(
            suite(
                "GET",
                "/",
                "Param2=value2&Param1=value1",
                &[],
                b"",
                "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
            ),
            "get-vanilla-query-order-key-case",
        );
        let unreserved = "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        ok(
            suite(
                "GET",
                "/",
                &format!("{unreserved}={unreserved}"),
                &[],
                b"",
                "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197",
            ),
            "get-vanilla-query-unreserved",
        );
        ok(
            suite(
                "GET",
                "/",
                "%E1%88%B4=bar",
                &[],
                b"",
                "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04",
            ),
            "get-vanilla-utf8-query",
        );
        ok(
            suite(
                "GET",
                &format!("/{unreserved}"),
                "",
                &[],
                b"",
                "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f",
            ),
            "get-unreserved",
        );
        ok(
            suite(
                "GET",
                "/\u{1234}",
                "",
                &[],
                b"",
                "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85",
            ),
            "get-utf8",
        );
        ok(
            suite(
                "GET",
                "/example space/",
                "",
                &[],
                b"",
                "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741",
            ),
            "get-space",
        );
        ok(
            suite(
                "GET",
                "/",
                "",
                &[("My-Header1", "value2,value2,value1")],
                b"",
                "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea",
            ),
            "get-header-key-duplicate",
        );
        ok(
            suite(
                "GET",
                "/",
                "",
                &[("My-Header1", " value1"), ("My-Header2", " \"a   b   c\"")],
                b"",
                "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
            ),
            "get-header-value-trim",
        );
        ok(
            suite(
                "POST",
                "/",
                "",
                &[("MY-HEADER1", "value1")],
                b"",
                "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c",
            ),
            "post-header-key-case",
        );
        ok(
            suite(
                "POST",
                "/",
                "",
                &[("My-Header1", "VALUE1")],
                b"",
                "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d",
            ),
            "post-header-value-case",
        );
        ok(
            suite(
                "POST",
                "/",
                "",
                &[("Content-Type", "application/x-www-form-urlencoded")],
                b"Param1=value1",
                "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
            ),
            "post-x-www-form-urlencoded",
        );
    }

    #[test]
    fn documented_signing_key_and_iam_example() {
        // The signing-key derivation example of the SigV4 documentation.
        let key = signing_key(SECRET, "20120215", "us-east-1", "iam");
        assert_eq!(
            hex::encode(key),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
        // The IAM ListUsers walk-through: canonical request hash and signature.
        let creq = canonical_request(
            "GET",
            "/",
            &canonical_query("Version=2010-05-08&Action=ListUsers", None).unwrap(),
            "content-type:application/x-www-form-urlencoded; charset=utf-8\nhost:iam.amazonaws.com\nx-amz-date:20150830T123600Z\n",
            "content-type;host;x-amz-date",
            EMPTY_SHA256,
        );
        assert_eq!(
            hex::encode(Sha256::digest(creq.as_bytes())),
            "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
        );
        let sts = string_to_sign(DATE, "20150830/us-east-1/iam/aws4_request", &creq);
        let sig = signature(&signing_key(SECRET, "20150830", "us-east-1", "iam"), &sts);
        assert_eq!(sig, "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7");
    }

    #[test]
    fn every_failure_has_its_reason() {
        let good = "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a";
        let ct = [("Content-Type", "application/x-www-form-urlencoded")];
        // The body changed after signing.
        assert_eq!(
            suite("POST", "/", "", &ct, b"Param1=value2", good),
            Err(AuthError::Mismatch)
        );
        // A signature one digit off, and one that is not hex.
        let off = format!("{}0", &good[..63]);
        assert_eq!(
            suite("POST", "/", "", &ct, b"Param1=value1", &off),
            Err(AuthError::Mismatch)
        );
        assert_eq!(
            suite("POST", "/", "", &ct, b"Param1=value1", "zz"),
            Err(AuthError::Mismatch)
        );
        // A query added after signing.
        assert_eq!(
            suite("POST", "/", "Extra=1", &ct, b"Param1=value1", good),
            Err(AuthError::Mismatch)
        );
        let base = Incoming {
            method: "GET",
            raw_path: "/",
            raw_query: "",
            headers: vec![("Host".into(), "example.amazonaws.com".into())],
            body: b"",
        };
        assert_eq!(verify(&base, &expect(), secret), Err(AuthError::Missing));
        let with_auth = |auth: &str, date: &str| {
            let mut r = base.clone();
            r.headers.push(("X-Amz-Date".into(), date.into()));
            r.headers.push(("Authorization".into(), auth.into()));
            verify(&r, &expect(), secret)
        };
        let auth = |akid: &str, scope: &str| {
            format!(
                "AWS4-HMAC-SHA256 Credential={akid}/{scope}/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
            )
        };
        assert_eq!(
            with_auth(&auth("AKIDUNKNOWN", "20150830/us-east-1/service"), DATE),
            Err(AuthError::UnknownKey("AKIDUNKNOWN".into()))
        );
        assert!(matches!(
            with_auth(&auth(AKID, "20150830/eu-west-1/service"), DATE),
            Err(AuthError::Region { .. })
        ));
        assert!(matches!(
            with_auth(&auth(AKID, "20150830/us-east-1/s3"), DATE),
            Err(AuthError::Service { .. })
        ));
        // Signed correctly, but ten minutes before the server's time.
        let mut old = expect();
        old.now = suite_now() + chrono::Duration::minutes(10);
        let mut r = base.clone();
        r.headers.push(("X-Amz-Date".into(), DATE.into()));
        r.headers
            .push(("Authorization".into(), auth(AKID, "20150830/us-east-1/service")));
        assert!(verify(&r, &expect(), secret).is_ok());
        assert!(matches!(verify(&r, &old, secret), Err(AuthError::Skew { .. })));
        assert!(matches!(
            with_auth("AWS AKID:c2ln", DATE),
            Err(AuthError::Algorithm(a)) if a == "AWS"
        ));
        assert!(matches!(
            with_auth("AWS4-HMAC-SHA256 Credential=x, Signature=1", DATE),
            Err(AuthError::Malformed { .. })
        ));
        assert!(matches!(
            with_auth(&auth(AKID, "20150830/us-east-1/service"), "yesterday"),
            Err(AuthError::Malformed { what: "X-Amz-Date", .. })
        ));
        // host must be signed.
        let no_host = auth(AKID, "20150830/us-east-1/service").replace("host;x-amz-date", "x-amz-date");
        assert_eq!(with_auth(&no_host, DATE), Err(AuthError::Unsigned("")));
    }

    #[test]
    fn presigned_query_signature() {
        // Build a presigned GET the way SDKs do and check it verifies, expires and is bound.
        let query_base = format!(
            "Action=DescribeBundleTasks&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={AKID}%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date={DATE}&X-Amz-Expires=60&X-Amz-SignedHeaders=host"
        );
        let creq = canonical_request(
            "GET",
            "/",
            &canonical_query(&query_base, None).unwrap(),
            "host:example.amazonaws.com\n",
            "host",
            EMPTY_SHA256,
        );
        let sts = string_to_sign(DATE, "20150830/us-east-1/service/aws4_request", &creq);
        let sig = signature(&signing_key(SECRET, "20150830", "us-east-1", "service"), &sts);
        let query = format!("{query_base}&X-Amz-Signature={sig}");
        let req = Incoming {
            method: "GET",
            raw_path: "/",
            raw_query: &query,
            headers: vec![("Host".into(), "example.amazonaws.com".into())],
            body: b"",
        };
        assert!(verify(&req, &expect(), secret).is_ok());
        let mut later = expect();
        later.now = suite_now() + chrono::Duration::seconds(61);
        assert!(matches!(verify(&req, &later, secret), Err(AuthError::Expired(_))));
        // Signed two days ago for a week: refused, as older than the skew window.
        let week = query_base.replace("X-Amz-Expires=60", "X-Amz-Expires=604800");
        let creq = canonical_request(
            "GET",
            "/",
            &canonical_query(&week, None).unwrap(),
            "host:example.amazonaws.com\n",
            "host",
            EMPTY_SHA256,
        );
        let sts = string_to_sign(DATE, "20150830/us-east-1/service/aws4_request", &creq);
        let sig = signature(&signing_key(SECRET, "20150830", "us-east-1", "service"), &sts);
        let week = format!("{week}&X-Amz-Signature={sig}");
        let req_week = Incoming {
            raw_query: &week,
            ..req.clone()
        };
        assert!(verify(&req_week, &expect(), secret).is_ok());
        let mut two_days = expect();
        two_days.now = suite_now() + chrono::Duration::days(2);
        assert!(matches!(
            verify(&req_week, &two_days, secret),
            Err(AuthError::PresignedTooOld { .. })
        ));
        let mut inside = expect();
        inside.now = suite_now() + chrono::Duration::seconds(299);
        assert!(verify(&req_week, &inside, secret).is_ok());
        let mut past_end = expect();
        past_end.now = suite_now() + chrono::Duration::seconds(604_801);
        assert!(matches!(
            verify(&req_week, &past_end, secret),
            Err(AuthError::Expired(_))
        ));
        let changed = query.replace("DescribeBundleTasks", "CancelBundleTask");
        let req2 = Incoming {
            raw_query: &changed,
            ..req.clone()
        };
        assert_eq!(verify(&req2, &expect(), secret), Err(AuthError::Mismatch));
    }

    #[test]
    fn decoding_is_strict() {
        assert_eq!(percent_decode("a%20b+c", true).unwrap(), "a b c");
        assert_eq!(percent_decode("a+b", false).unwrap(), "a+b");
        assert!(percent_decode("a%2", true).is_err());
        assert!(percent_decode("a%zz", true).is_err());
        assert!(percent_decode("%ff%fe", true).is_err());
        assert_eq!(canonical_uri("/a/./b/../c//d/"), "/a/c/d/");
        assert_eq!(canonical_uri("/a%20b"), "/a%2520b");
        assert_eq!(uri_encode("a b/c~d_e.f-g*h+é", false), "a%20b%2Fc~d_e.f-g%2Ah%2B%C3%A9");
    }
}
