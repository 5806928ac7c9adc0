//! The three EC2 actions. A request is authenticated first, then its parameters are checked
//! (each failure names the parameter), then `DryRun` answers `DryRunOperation`, and only then
//! does anything happen.

use std::sync::{Mutex, MutexGuard};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::Utc;

use super::config::{Config, ResolvedCaller};
use super::error::ApiError;
use super::jobs::{JobSpec, Jobs};
use super::query::Params;
use super::sigv4::{self, Expect, Incoming};
use crate::bundle::create::{
    Assigned, BundleRequest, DEFAULT_CHUNK_SIZE, DEFAULT_LEVEL, DEFAULT_PART_SIZE, default_threads, validate,
};
use crate::bundle::encrypt::EncryptTo;
use crate::crypt::chain::ChainKeys;
use crate::format::Keys;
use crate::format::manifest::Layout;
use crate::store::names;
use crate::store::post::{PostTarget, UploadPolicy};
use crate::task::store::{FILTER_NAMES, MAX_BUNDLE_ID_LEN, MAX_BUNDLE_IDS, TaskStore, TaskStoreError, matches};
use crate::task::{self, BundleTask, State};

/// The service name callers sign for.
pub const SERVICE: &str = "ec2";

/// What a request produced, for the response and the log line.
pub struct Answer {
    pub request_id: String,
    pub action: String,
    pub caller: Option<String>,
    pub result: Result<String, ApiError>,
}

/// The caller of a request, once its signature is verified.
struct Who {
    access_key_id: String,
    /// `admin = true` in its `[[caller]]`: sees every task.
    admin: bool,
}

/// The API: configuration, callers, tasks and jobs.
pub struct Api {
    pub config: Config,
    callers: Vec<ResolvedCaller>,
    pub tasks: TaskStore,
    pub jobs: Jobs,
    /// Serialises "is this instance busy? then add a task" within this server.
    admit: Mutex<()>,
}

impl Api {
    pub fn new(config: Config, callers: Vec<ResolvedCaller>, tasks: TaskStore) -> Self {
        let jobs = Jobs::new(config.max_concurrent_bundles, tasks.clone());
        Self {
            config,
            callers,
            tasks,
            jobs,
            admit: Mutex::new(()),
        }
    }

    /// Answers one request.
    pub fn handle(&self, req: &Incoming<'_>) -> Answer {
        let mut answer = Answer {
            request_id: task::new_request_id(),
            action: "-".into(),
            caller: None,
            result: Err(ApiError::internal("not handled")),
        };
        answer.result = self.dispatch(req, &mut answer);
        answer
    }

    fn dispatch(&self, req: &Incoming<'_>, answer: &mut Answer) -> Result<String, ApiError> {
        let form = match req.method {
            "GET" => None,
            "POST" => {
                let ct = req
                    .headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
                    .map(|(_, v)| v.to_ascii_lowercase());
                match ct {
                    Some(ct) if ct.starts_with("application/x-www-form-urlencoded") => Some(req.body),
                    _ if req.body.is_empty() => None,
                    _ => {
                        return Err(ApiError::malformed_request(
                            "a POST body must be application/x-www-form-urlencoded (the EC2 Query protocol)",
                        ));
                    }
                }
            }
            m => {
                return Err(ApiError::new(
                    405,
                    "InvalidAction",
                    format!("method {m} is not supported: send the EC2 Query API as a form POST or a GET"),
                ));
            }
        };
        let expect = Expect {
            service: SERVICE,
            region: &self.config.region,
            now: Utc::now(),
            max_skew_seconds: self.config.max_clock_skew_seconds,
        };
        let verified = sigv4::verify(req, &expect, |akid| {
            self.callers
                .iter()
                .find(|c| c.access_key_id == akid)
                .map(|c| c.secret.expose())
        })
        .map_err(|e| ApiError::auth(e.to_string()))?;
        let caller = Who {
            admin: self
                .callers
                .iter()
                .any(|c| c.access_key_id == verified.access_key_id && c.admin),
            access_key_id: verified.access_key_id,
        };
        answer.caller = Some(caller.access_key_id.clone());
        let params = Params::parse(req.raw_query, form)?;
        let action = params.required("Action")?.to_string();
        answer.action = action.clone();
        crate::panics::inject("api-handler");
        match action.as_str() {
            "BundleInstance" => self.bundle_instance(&params, &answer.request_id, &caller),
            "DescribeBundleTasks" => self.describe(&params, &answer.request_id, &caller),
            "CancelBundleTask" => self.cancel(&params, &answer.request_id, &caller),
            other => Err(ApiError::invalid_action(other)),
        }
    }

    /// BundleInstance: checks the parameters and the upload policy, builds the bundle request
    /// from the server's settings for the instance, admits it (the instance is not busy), and
    /// unless `DryRun`, saves the task and starts its job.
    fn bundle_instance(&self, p: &Params, request_id: &str, caller: &Who) -> Result<String, ApiError> {
        let (q, policy) = bundle_params(p)?;
        let part_size = self.config.bundle.part_size.map_or(DEFAULT_PART_SIZE, |s| s.0);
        let (target, warnings) = self.upload_target(&q, policy, part_size)?;
        let request = self.bundle_request(&q, part_size)?;
        let _admit = self.admit(q.instance_id, caller)?;
        if q.dry {
            return Err(ApiError::dry_run());
        }
        let task = self.save_task(&q, caller)?;
        for w in &warnings {
            super::jobs::log(&format!("{} {} warning: {w}", task.bundle_id, q.instance_id));
        }
        self.start_job(task, request, target, request_id)
    }

    /// Checks that the policy's signer agrees with the access key and the bucket's region, and
    /// that the policy allows this bundle; returns the upload target and the policy's warnings.
    fn upload_target(
        &self,
        q: &BundleParams<'_>,
        policy: UploadPolicy,
        part_size: u64,
    ) -> Result<(PostTarget, Vec<String>), ApiError> {
        // A version 4 policy names its signer: the access key given and the bucket's region must agree.
        let policy_region = policy
            .check_signer(None, self.config.s3.region.as_deref())
            .map_err(|e| ApiError::invalid(POLICY, &e.message))?;
        policy
            .check_signer(Some(q.akid), None)
            .map_err(|e| ApiError::invalid(AKID, &e.message))?;
        let keys = Keys::new(q.prefix);
        let mut planned = vec![keys.manifest(), keys.part(0), keys.part(9999)];
        if !q.encrypt_to.is_empty() || !self.config.bundle.encrypt_to.is_empty() {
            planned.push(keys.data_key());
        }
        let warnings = policy
            .check(q.bucket, &planned, part_size, Utc::now(), None)
            .map_err(|e| ApiError::invalid(POLICY, &e.message))?;
        let target = PostTarget::new(
            PostTarget::url_for(
                q.bucket,
                self.config.s3.endpoint_url.as_deref(),
                self.config.s3.region.as_deref().or(policy_region.as_deref()),
            )
            .map_err(|e| ApiError::invalid(POLICY, &e.message))?,
            q.bucket,
            q.akid,
            policy,
            q.signature,
        )
        .map_err(|e| ApiError::invalid(POLICY, &e.message))?;
        Ok((target, warnings))
    }

    /// The bundle request for the instance, from the server's `[bundle]` and instance settings.
    fn bundle_request(&self, q: &BundleParams<'_>, part_size: u64) -> Result<BundleRequest, ApiError> {
        let instance_id = q.instance_id;
        let inst = self.config.instance(instance_id).ok_or_else(|| {
            ApiError::new(
                400,
                "InvalidInstanceID.NotFound",
                format!("The instance ID '{instance_id}' does not exist"),
            )
        })?;
        let b = &self.config.bundle;
        let request = BundleRequest {
            source: inst.source.clone(),
            bucket: q.bucket.to_string(),
            prefix: q.prefix.to_string(),
            instance_id: Some(instance_id.to_string()),
            plan: inst.plan_options(),
            chunk_size: b
                .chunk_size
                .map_or(DEFAULT_CHUNK_SIZE, |s| usize::try_from(s.0).unwrap_or(usize::MAX)),
            level: inst.zstd_level.or(b.zstd_level).unwrap_or(DEFAULT_LEVEL),
            threads: default_threads(inst.threads.or(b.threads)),
            layout: Layout::Parts,
            part_size: Some(part_size),
            overwrite: b.overwrite,
            assigned: None,
            live: Default::default(),
            parent: None,
            force_parent: false,
            from_parent: Default::default(),
            rehash: Default::default(),
            encrypt: self.encrypt_to(q),
        };
        validate(&request).map_err(|e| ApiError::internal(format!("the server's [bundle] settings: {e}")))?;
        Ok(request)
    }

    /// The recipients of the bundle: `[bundle] encrypt_to` and the request's `EncryptTo.N`;
    /// None when there are none (a plaintext bundle). Chain keys live in the task folder.
    fn encrypt_to(&self, q: &BundleParams<'_>) -> Option<EncryptTo> {
        let mut recipients = self.config.bundle.encrypt_to.clone();
        recipients.extend(q.encrypt_to.iter().cloned());
        (!recipients.is_empty()).then(|| EncryptTo {
            recipients,
            chain: Some(ChainKeys::in_task_dir(self.tasks.dir())),
        })
    }

    /// Admits a bundle of the instance: refused while the server stops or while a task of the
    /// instance runs. The guard returned keeps other requests from admitting one meanwhile.
    fn admit(&self, instance_id: &str, caller: &Who) -> Result<MutexGuard<'_, ()>, ApiError> {
        if self.jobs.stopping() {
            return Err(ApiError::unavailable(
                "the server is shutting down: try again when it is back",
            ));
        }
        let admit = self.admit.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = self.tasks.check_not_running(instance_id, "") {
            return Err(match e {
                // The instance is the server's, so that it is busy is no secret; whose task
                // makes it busy is, unless it is the caller's own.
                TaskStoreError::InProgress { instance, bundle }
                    if self
                        .tasks
                        .get_visible(&bundle, &caller.access_key_id, caller.admin)
                        .is_err() =>
                {
                    ApiError::new(
                        400,
                        "BundlingInProgress",
                        format!(
                            "Instance {instance} is already being bundled by another caller's task: try again when it has ended"
                        ),
                    )
                }
                e => e.into(),
            });
        }
        Ok(admit)
    }

    /// A new pending task for the bundle, saved as the caller's.
    fn save_task(&self, q: &BundleParams<'_>, caller: &Who) -> Result<BundleTask, ApiError> {
        let now = task::now_iso();
        let task = BundleTask {
            bundle_id: task::new_bundle_id(),
            instance_id: q.instance_id.to_string(),
            state: State::Pending,
            start_time: now.clone(),
            update_time: now,
            bucket: q.bucket.to_string(),
            prefix: q.prefix.to_string(),
            progress: "0%".into(),
            error: None,
        };
        self.tasks.save_owned(&task, Some(caller.access_key_id.clone()))?;
        Ok(task)
    }

    /// Starts the task's job and answers with the task; a job that cannot start fails its task.
    fn start_job(
        &self,
        task: BundleTask,
        request: BundleRequest,
        target: PostTarget,
        request_id: &str,
    ) -> Result<String, ApiError> {
        let spec = JobSpec {
            request: BundleRequest {
                assigned: Some(Assigned {
                    bundle_id: task.bundle_id.clone(),
                    start_time: task.start_time.clone(),
                }),
                ..request
            },
            target,
            concurrency: self
                .config
                .s3
                .concurrency
                .unwrap_or(crate::store::s3::DEFAULT_CONCURRENCY),
            max_attempts: self
                .config
                .s3
                .max_attempts
                .unwrap_or(crate::store::s3::DEFAULT_MAX_ATTEMPTS),
        };
        let xml = task.to_bundle_instance_xml(request_id);
        if let Err(e) = self.jobs.spawn(task.clone(), spec) {
            super::jobs::fail(&self.tasks, task, &e);
            return Err(ApiError::internal(e.to_string()));
        }
        Ok(xml)
    }

    fn describe(&self, p: &Params, request_id: &str, caller: &Who) -> Result<String, ApiError> {
        p.only(&[], &["BundleId.", "Filter."])?;
        let dry = p.flag("DryRun")?;
        let ids = p.list("BundleId", MAX_BUNDLE_IDS, MAX_BUNDLE_ID_LEN)?;
        let filters = p.filters(&FILTER_NAMES)?;
        // Another caller's task is not there, as another account's is not in EC2.
        let all = self.tasks.visible(&caller.access_key_id, caller.admin)?;
        if let Some(missing) = ids.iter().find(|id| !all.iter().any(|t| &t.bundle_id == *id)) {
            return Err(crate::task::store::TaskStoreError::NotFound(missing.clone()).into());
        }
        if dry {
            return Err(ApiError::dry_run());
        }
        let chosen: Vec<BundleTask> = all
            .into_iter()
            .filter(|t| ids.is_empty() || ids.contains(&t.bundle_id))
            .filter(|t| matches(t, &filters))
            .collect();
        Ok(task::describe_xml(&chosen, request_id))
    }

    fn cancel(&self, p: &Params, request_id: &str, caller: &Who) -> Result<String, ApiError> {
        p.only(&["BundleId"], &[])?;
        let dry = p.flag("DryRun")?;
        let id = p.required("BundleId")?;
        if id.chars().count() > MAX_BUNDLE_ID_LEN {
            return Err(ApiError::invalid(
                "BundleId",
                &format!("the value is longer than {MAX_BUNDLE_ID_LEN} characters"),
            ));
        }
        self.tasks.get_visible(id, &caller.access_key_id, caller.admin)?;
        if dry {
            return Err(ApiError::dry_run());
        }
        let task = self.tasks.request_cancel(id)?;
        self.jobs.cancel(id);
        Ok(task.to_cancel_xml(request_id))
    }
}

const BUCKET: &str = "Storage.S3.Bucket";
const PREFIX: &str = "Storage.S3.Prefix";
const AKID: &str = "Storage.S3.AWSAccessKeyId";
const POLICY: &str = "Storage.S3.UploadPolicy";
const SIGNATURE: &str = "Storage.S3.UploadPolicySignature";
const ENCRYPT_TO: &str = "EncryptTo";
const ENCRYPT_TO_PREFIX: &str = "EncryptTo.";

/// BundleInstance's parameters, each checked on its own (the policy is returned beside them).
struct BundleParams<'a> {
    dry: bool,
    instance_id: &'a str,
    bucket: &'a str,
    prefix: &'a str,
    akid: &'a str,
    signature: &'a str,
    /// `EncryptTo.N`: recipients this bundle is encrypted for, besides `[bundle] encrypt_to`
    /// (a winbundle extension: EC2's BundleInstance has no such parameter).
    encrypt_to: Vec<String>,
}

/// Reads and checks BundleInstance's parameters in order, each failure naming its parameter;
/// decodes the upload policy and checks the signature's shape.
fn bundle_params(p: &Params) -> Result<(BundleParams<'_>, UploadPolicy), ApiError> {
    p.only(
        &["InstanceId", BUCKET, PREFIX, AKID, POLICY, SIGNATURE],
        &[ENCRYPT_TO_PREFIX],
    )?;
    let dry = p.flag("DryRun")?;
    let instance_id = p.required("InstanceId")?;
    task::check_instance_id(instance_id)
        .map_err(|m| ApiError::new(400, "InvalidInstanceID.Malformed", format!("Invalid id: {m}")))?;
    let bucket = p.required(BUCKET)?;
    names::check_bucket(bucket).map_err(|e| ApiError::invalid(BUCKET, &e.to_string()))?;
    let prefix = p.required(PREFIX)?;
    names::check_prefix(prefix).map_err(|e| ApiError::invalid(PREFIX, &e.to_string()))?;
    let akid = p.required(AKID)?;
    let policy_b64 = policy_base64(p.required(POLICY)?).map_err(|m| ApiError::invalid(POLICY, &m))?;
    let signature = p.required(SIGNATURE)?.trim();
    let policy = UploadPolicy::parse(&policy_b64).map_err(|e| ApiError::invalid(POLICY, &e.message))?;
    policy
        .check_signature_shape(signature)
        .map_err(|e| ApiError::invalid(SIGNATURE, &e.message))?;
    let encrypt_to = p.list(ENCRYPT_TO, 16, 4096)?;
    for r in &encrypt_to {
        crate::crypt::parse_recipient(r).map_err(|e| ApiError::invalid(&format!("{ENCRYPT_TO}.N"), &e.to_string()))?;
    }
    let q = BundleParams {
        dry,
        instance_id,
        bucket,
        prefix,
        akid,
        signature,
        encrypt_to,
    };
    Ok((q, policy))
}

/// The base64 policy that the signature signs. Clients send it base64-encoded once (the
/// aws-cli, and boto3 given the policy JSON); a policy that was already base64 when given to
/// boto3 arrives encoded twice, and is unwrapped once.
pub fn policy_base64(wire: &str) -> Result<String, String> {
    let once = B64
        .decode(wire.trim())
        .map_err(|e| format!("it is not base64 ({e}): send the base64 of the policy JSON"))?;
    if serde_json::from_slice::<serde_json::Value>(&once).is_ok() {
        return Ok(wire.trim().to_string());
    }
    if let Ok(inner) = std::str::from_utf8(&once)
        && let Ok(twice) = B64.decode(inner.trim())
        && serde_json::from_slice::<serde_json::Value>(&twice).is_ok()
    {
        return Ok(inner.trim().to_string());
    }
    Err("the decoded policy is not JSON: send the base64 of the policy JSON".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_encoded_once_or_twice() {
        let json = r#"{"expiration": "2030-01-01T00:00:00Z","conditions": []}"#;
        let once = B64.encode(json);
        let twice = B64.encode(&once);
        assert_eq!(policy_base64(&once).unwrap(), once);
        assert_eq!(policy_base64(&twice).unwrap(), once);
        assert!(policy_base64("not base64!").unwrap_err().contains("not base64"));
        assert!(
            policy_base64(&B64.encode("plain text"))
                .unwrap_err()
                .contains("not JSON")
        );
    }
}
