//! `winbundle upload-policy`, and turning bundle-instance's policy flags into a POST store.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use winbundle::Error;
use winbundle::store::post::policy::{self, PolicyError, Signing, UploadPolicy};
use winbundle::store::post::{Journal, PostStore, PostTarget};

use super::args::{PolicyArgs, PolicyOutput, SseArg, StoreArgs, UploadPolicyArgs, parse_duration};

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

/// The region from `--region`/AWS_REGION, AWS_DEFAULT_REGION (the aws-cli's), or the profile.
fn resolve_region(flag: Option<&str>, profile: Option<&str>) -> Option<String> {
    if let Some(r) = flag.filter(|r| !r.is_empty()) {
        return Some(r.to_string());
    }
    if let Ok(r) = std::env::var("AWS_DEFAULT_REGION")
        && !r.is_empty()
    {
        return Some(r);
    }
    use aws_config::meta::region::ProvideRegion;
    let mut builder = aws_config::profile::ProfileFileRegionProvider::builder();
    if let Some(p) = profile {
        builder = builder.profile_name(p);
    }
    let provider = builder.build();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(provider.region()).map(|r| r.to_string())
}

fn region_required() -> Error {
    missing(
        "--region for a version 4 policy (the bucket's region: AWS_REGION or a profile's region also do; Garage's is its s3_region, e.g. garage)",
    )
}

/// A policy text and its signature, made with the owner's secret key.
struct Made {
    text: String,
    base64: String,
    signature: String,
    credential: Option<policy::Credential>,
}

/// What a policy made here is for.
struct Spec<'a> {
    version: u8,
    bucket: &'a str,
    prefix: &'a str,
    acl: Option<&'a str>,
    akid: &'a str,
    region: Option<&'a str>,
    expires: DateTime<Utc>,
    /// Server-side encryption fields every upload must carry.
    sse: &'a [(String, String)],
}

fn make_policy(spec: &Spec<'_>, sak: &str) -> Result<Made, Error> {
    let Spec {
        version,
        bucket,
        prefix,
        acl,
        akid,
        region,
        expires,
        sse,
    } = *spec;
    // Every key of the bundle starts with `PREFIX.`: a holder of the policy can write only
    // those, not `PREFIX2.manifest.json` nor `PREFIX/...` (another bundle's objects).
    let own = format!("{prefix}.");
    let prefix = own.as_str();
    if version == 2 {
        let text = policy::v2_policy(bucket, prefix, acl, sse, expires);
        let base64 = policy::encode(&text);
        let signature = policy::sign(sak, &base64);
        return Ok(Made {
            text,
            base64,
            signature,
            credential: None,
        });
    }
    let region = region.ok_or_else(region_required)?;
    let now = Utc::now();
    let text = policy::v4_policy(&policy::V4Request {
        bucket,
        prefix,
        acl,
        access_key_id: akid,
        region,
        now,
        expires,
        max_object: policy::MAX_POST_OBJECT,
        extra: sse,
    });
    let base64 = policy::encode(&text);
    let credential = policy::Credential::new(akid, now, region);
    let signature = policy::sign_v4(sak, &credential, &base64);
    Ok(Made {
        text,
        base64,
        signature,
        credential: Some(credential),
    })
}

/// `--acl`: a canned ACL name, or `none`; the default depends on the signature version.
fn acl_choice(acl: Option<&str>, version: u8) -> Result<Option<String>, Error> {
    match acl.map(str::trim) {
        None if version == 2 => Ok(Some(policy::BUNDLE_ACL.to_string())),
        None => Ok(None),
        Some(a) if a.eq_ignore_ascii_case("none") => Ok(None),
        Some(a) if !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
            Ok(Some(a.to_string()))
        }
        Some(a) => Err(Error::InvalidParameter {
            parameter: "--acl",
            message: format!(
                "{a:?} is not a canned ACL name (examples: ec2-bundle-read, bucket-owner-full-control, none)"
            ),
        }),
    }
}

/// When the policy expires (`--expires-at`, or now plus `--expires`): refused when not in the
/// future, with a warning when a bundle of the size given would outlast it.
fn expiry(a: &UploadPolicyArgs) -> Result<DateTime<Utc>, Error> {
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
    let now = Utc::now();
    if expires <= now {
        return Err(Error::InvalidParameter {
            parameter: if a.expires_at.is_some() {
                "--expires-at"
            } else {
                "--expires"
            },
            message: format!(
                "{} is not in the future (now is {}): a policy that has expired is refused by S3; give a later time, or --expires 24h",
                expires.to_rfc3339(),
                now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        });
    }
    if let Some(size) = bundle_size(a)? {
        let seconds = size as f64 / ASSUMED_THROUGHPUT as f64;
        let finish = now + Duration::seconds(seconds.ceil() as i64);
        if expires <= finish {
            eprintln!(
                "warning: the policy expires at {}, but a bundle of {} takes about {} at {} MiB/s (the throughput assumed here: compression and upload together), so it would end about {}: the uploads after the expiry would be refused; give a longer --expires",
                expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                winbundle::units::human(size),
                human_duration(seconds),
                ASSUMED_THROUGHPUT >> 20,
                finish.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
        }
    }
    Ok(expires)
}

pub fn run(a: UploadPolicyArgs) -> Result<i32, Error> {
    let out = super::output::Output::new(&a.out)?;
    winbundle::store::names::check_bucket(&a.bucket)?;
    winbundle::store::names::check_prefix(&a.prefix)?;
    let sak = a
        .owner_sak
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| missing("--owner-sak (or AWS_SECRET_ACCESS_KEY)"))?;
    let expires = expiry(&a)?;
    let acl = acl_choice(a.acl.as_deref(), a.signature_version)?;
    let sse = sse_fields(a.sse, a.sse_kms_key_id.as_deref())?;
    let region = match a.signature_version {
        4 => Some(resolve_region(a.region.as_deref(), a.profile.as_deref()).ok_or_else(region_required)?),
        _ => None,
    };
    let spec = Spec {
        version: a.signature_version,
        bucket: &a.bucket,
        prefix: &a.prefix,
        acl: acl.as_deref(),
        akid: &a.owner_akid,
        region: region.as_deref(),
        expires,
        sse: &sse,
    };
    let made = make_policy(&spec, sak)?;
    let parsed = UploadPolicy::parse(&made.base64).map_err(IntoError::into_error)?;
    // What a form upload sends besides `key` and `file` (the fields boto3 returns).
    let mut fields = serde_json::Map::new();
    for (name, value) in parsed
        .form_fields(&a.owner_akid, &made.signature)
        .map_err(IntoError::into_error)?
    {
        fields.insert(name, value.into());
    }
    let expiration = match made.credential {
        Some(_) => expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => expires.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    };
    match a.output {
        PolicyOutput::Json => {
            let mut v = json!({
                "Bucket": a.bucket,
                "Prefix": a.prefix,
                "AWSAccessKeyId": a.owner_akid,
                "SignatureVersion": a.signature_version,
                "Expiration": expiration,
                "Policy": made.text,
                "UploadPolicy": made.base64,
                "UploadPolicySignature": made.signature,
                "Fields": fields,
            });
            if let Some(c) = &made.credential {
                v["Region"] = c.region.clone().into();
                v["Credential"] = c.to_string().into();
            }
            out.emit(&super::output::json_doc(&v))?;
        }
        PolicyOutput::Text => {
            let mut doc = format!(
                "UPLOADPOLICY\t{}\nUPLOADPOLICYSIGNATURE\t{}\nEXPIRATION\t{expiration}\nSIGNATUREVERSION\t{}\n",
                made.base64, made.signature, a.signature_version
            );
            if let Some(c) = &made.credential {
                doc.push_str(&format!("CREDENTIAL\t{c}\n"));
            }
            out.emit(&doc)?;
        }
    }
    Ok(0)
}

/// What `upload-policy` assumes a bundle moves per second (reading, compressing and uploading
/// together) when it warns that a policy would expire before the bundle ends: 20 MiB/s, a
/// cautious figure for one machine uploading over the internet.
pub const ASSUMED_THROUGHPUT: u64 = 20 << 20;

/// The size of the bundle the policy is for: `--size`, or the size of `--source` (a disk image
/// file or block device).
fn bundle_size(a: &UploadPolicyArgs) -> Result<Option<u64>, Error> {
    if let Some(s) = &a.size {
        return winbundle::units::parse_size(s)
            .map(Some)
            .map_err(|m| Error::InvalidParameter {
                parameter: "--size",
                message: m,
            });
    }
    let Some(src) = &a.source else { return Ok(None) };
    let size = std::fs::File::open(src)
        .and_then(|mut f| std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)))
        .map_err(|e| Error::InvalidParameter {
            parameter: "--source",
            message: format!("cannot read the size of {}: {e}", src.display()),
        })?;
    Ok(Some(size))
}

fn human_duration(seconds: f64) -> String {
    let s = seconds.ceil() as u64;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{:.1} h", s as f64 / 3600.0),
    }
}

/// The form fields (and policy conditions) of the server-side encryption the flags ask for.
fn sse_fields(sse: Option<SseArg>, kms_key_id: Option<&str>) -> Result<Vec<(String, String)>, Error> {
    Ok(super::server_side(sse, kms_key_id)?
        .map(|s| s.fields())
        .unwrap_or_default())
}

/// A policy fixes the server-side encryption of every upload (the form can carry no field it
/// does not name): `--sse` must be what it requires, and SSE-C is not for policies.
fn check_sse(parsed: &UploadPolicy, s3: &super::args::S3Args) -> Result<(), Error> {
    if s3.sse_c_key_file.is_some() {
        return Err(Error::InvalidParameter {
            parameter: "--sse-c-key-file",
            message: "upload-policy mode cannot send a customer key (the policy holder would need it to read the bundle back, and a POST form carries it in the clear to every part); use --sse AES256 or aws:kms in the policy (`winbundle upload-policy --sse …`), or bundle with credentials".into(),
        });
    }
    let required = parsed.server_side();
    let asked = super::server_side(s3.sse, s3.sse_kms_key_id.as_deref())?;
    if asked.is_some() && asked != required {
        let shown = |s: &Option<winbundle::store::s3::sse::ServerSide>| match s {
            None => "none".to_string(),
            Some(s) => s
                .fields()
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        return Err(Error::InvalidParameter {
            parameter: "--sse",
            message: format!(
                "the upload policy fixes the server-side encryption of every upload ({}), and --sse asks for {}: drop --sse (the policy's own choice is sent), or ask the bucket owner for a policy made with `winbundle upload-policy --sse …`",
                shown(&required),
                shown(&asked)
            ),
        });
    }
    Ok(())
}

/// The POST store when bundle-instance was given a policy (or the owner's secret key), else None.
/// The policy is decoded and checked here, before the disk is opened. With `journal` (a folder,
/// and whether to resume), the store keeps the journal that lets an interrupted run resume.
pub fn post_store(
    p: &PolicyArgs,
    store: &StoreArgs,
    part_size: u64,
    cancel: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    journal: Option<(&std::path::Path, bool)>,
) -> Result<Option<PostStore>, Error> {
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
    let (b64, signature) = match (&p.upload_policy, &p.upload_policy_signature, &p.owner_sak) {
        (Some(pol), Some(sig), _) => (pol.clone(), sig.clone()),
        (Some(_), None, _) => return Err(missing("--upload-policy-signature")),
        (None, Some(_), _) => return Err(missing("--upload-policy")),
        (None, None, Some(sak)) => {
            let akid = p.owner_akid.as_deref().ok_or_else(|| missing("--owner-akid"))?;
            // A custom endpoint signs as us-east-1 unless told otherwise, as the S3 store does.
            let region = resolve_region(store.s3.region.as_deref(), store.s3.profile.as_deref())
                .or_else(|| store.s3.endpoint_url.as_ref().map(|_| "us-east-1".to_string()));
            let acl = acl_choice(None, p.signature_version)?;
            let spec = Spec {
                version: p.signature_version,
                bucket: &store.bucket,
                prefix: &store.prefix,
                acl: acl.as_deref(),
                akid,
                region: region.as_deref(),
                expires: Utc::now() + Duration::hours(24),
                sse: &sse_fields(store.s3.sse, store.s3.sse_kms_key_id.as_deref())?,
            };
            let made = make_policy(&spec, sak)?;
            (made.base64, made.signature)
        }
        (None, None, None) => return Ok(None),
    };
    let parsed = UploadPolicy::parse(&b64).map_err(IntoError::into_error)?;
    check_sse(&parsed, &store.s3)?;
    // The signer: a version 4 policy names its access key and region, which must agree with
    // --owner-akid and --region when they are given, and stand in for them when not.
    let policy_region = parsed
        .check_signer(p.owner_akid.as_deref(), store.s3.region.as_deref())
        .map_err(IntoError::into_error)?;
    let akid = match (&p.owner_akid, &parsed.signing) {
        (Some(a), _) => a.clone(),
        (None, Signing::V4(s)) => s.credential.access_key_id.clone(),
        (None, Signing::V2) => return Err(missing("--owner-akid")),
    };
    let url = PostTarget::url_for(
        &store.bucket,
        store.s3.endpoint_url.as_deref(),
        store.s3.region.as_deref().or(policy_region.as_deref()),
    )
    .map_err(IntoError::into_error)?;
    let target = PostTarget::new(url, &store.bucket, &akid, parsed, &signature).map_err(IntoError::into_error)?;
    let url = target.url.clone();
    let mut post = PostStore::with_cancel(
        target,
        store.s3.concurrency,
        store.s3.max_attempts,
        Some(cancel.clone()),
    )?;
    if let Some((dir, resume)) = journal {
        post = post.with_journal(Journal::open(dir, &url, &store.bucket, &store.prefix, resume)?);
    }
    let keys = winbundle::format::Keys::new(&store.prefix);
    let warnings = post
        .check_policy(&[keys.manifest(), keys.part(0), keys.part(9999)], part_size, None)
        .map_err(IntoError::into_error)?;
    for w in warnings {
        eprintln!("winbundle: warning: {}", super::browse::escape(&w));
    }
    post.probe(&keys.part(0))?;
    Ok(Some(post))
}
