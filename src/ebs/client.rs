//! The EBS direct APIs client: the SDK with its own retries turned off, and ours in their place,
//! so that throttling (`RequestThrottledException`, `ThrottlingException`, HTTP 429), 5xx
//! answers, timeouts and dropped connections are retried with exponential backoff and jitter
//! for as many attempts as asked, however many blocks are in flight.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ebs::config::Region;
use aws_sdk_ebs::error::{ProvideErrorMetadata, SdkError};

use super::EbsError;

/// Attempts per request by default (the first included).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// Blocks in flight by default.
pub const DEFAULT_CONCURRENCY: usize = 32;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_BACKOFF: Duration = Duration::from_secs(20);

/// How to reach the EBS direct APIs.
#[derive(Debug, Clone, Default)]
pub struct EbsOptions {
    pub region: Option<String>,
    /// E.g. a test server; AWS_ENDPOINT_URL_EBS and AWS_ENDPOINT_URL are honoured too.
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    pub max_attempts: u32,
    /// First retry delay (doubling up to 20 s, with jitter); default 100 ms.
    pub initial_backoff: Option<Duration>,
    pub cancel: Option<Arc<AtomicBool>>,
}

/// A connected client and its runtime.
pub struct Ebs {
    pub(crate) rt: tokio::runtime::Runtime,
    pub api: Arc<Api>,
}

/// The client and its retry state, shared by the tasks that send blocks.
pub struct Api {
    pub(crate) client: aws_sdk_ebs::Client,
    max_attempts: u32,
    initial_backoff: Duration,
    pub(crate) cancel: Option<Arc<AtomicBool>>,
    /// Answers that were throttling, retried.
    pub throttled: AtomicU64,
    /// Retries of any kind.
    pub retries: AtomicU64,
}

impl Ebs {
    /// Builds the client; makes no request.
    pub fn connect(opts: &EbsOptions) -> Result<Self, EbsError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("winbundle-ebs")
            .enable_all()
            .build()
            .map_err(|e| EbsError::Config(format!("cannot start the I/O runtime: {e}")))?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(crate::store::s3::http::https_client())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(READ_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            )
            .retry_config(RetryConfig::disabled());
        if let Some(p) = &opts.profile {
            loader = loader.profile_name(p);
        }
        if let Some(r) = &opts.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(e) = &opts.endpoint_url {
            loader = loader.endpoint_url(e);
        }
        let sdk = rt.block_on(loader.load());
        let custom = opts.endpoint_url.is_some()
            || ["AWS_ENDPOINT_URL_EBS", "AWS_ENDPOINT_URL"]
                .iter()
                .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()));
        let mut conf = aws_sdk_ebs::config::Builder::from(&sdk);
        if sdk.region().is_none() {
            if !custom {
                return Err(EbsError::Config("no AWS region".into()));
            }
            conf = conf.region(Region::new("us-east-1"));
        }
        let api = Arc::new(Api {
            client: aws_sdk_ebs::Client::from_conf(conf.build()),
            max_attempts: if opts.max_attempts == 0 {
                DEFAULT_MAX_ATTEMPTS
            } else {
                opts.max_attempts
            },
            initial_backoff: opts.initial_backoff.unwrap_or(Duration::from_millis(100)),
            cancel: opts.cancel.clone(),
            throttled: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        });
        Ok(Self { rt, api })
    }
}

impl Api {
    /// True once Ctrl-C was pressed.
    pub fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.load(Ordering::SeqCst))
    }

    /// Runs `call` until it succeeds, fails for good, or the attempts run out; retries what
    /// [`retryable`] says with backoff. `seed` varies the jitter between callers.
    pub(crate) async fn retrying<T, E, Fut>(
        &self,
        op: &'static str,
        seed: u64,
        call: impl Fn() -> Fut,
    ) -> Result<T, EbsError>
    where
        Fut: Future<Output = Result<T, SdkError<E, aws_smithy_runtime_api::http::Response>>>,
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let mut attempt = 0u32;
        loop {
            if self.cancelled() {
                return Err(EbsError::Cancelled);
            }
            attempt += 1;
            let r = tokio::select! {
                r = call() => r,
                () = self.until_cancelled() => return Err(EbsError::Cancelled),
            };
            let e = match r {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let (retry, throttled) = retryable(&e);
            let err = api_error(op, &e);
            if !retry || attempt >= self.max_attempts {
                return Err(err);
            }
            if throttled {
                self.throttled.fetch_add(1, Ordering::Relaxed);
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("{op}: attempt {attempt} failed, retrying: {err}");
            tokio::select! {
                () = tokio::time::sleep(backoff(self.initial_backoff, attempt, seed)) => {}
                () = self.until_cancelled() => return Err(EbsError::Cancelled),
            }
        }
    }

    /// Returns once the run is cancelled (never without a cancel flag).
    async fn until_cancelled(&self) {
        loop {
            if self.cancelled() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The delay before attempt `attempt + 1`: doubling from `first` up to 20 s, times a jitter
/// between 1/2 and 1.
pub fn backoff(first: Duration, attempt: u32, seed: u64) -> Duration {
    let full = first.saturating_mul(1u32 << attempt.min(16)).min(MAX_BACKOFF);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mut x = seed ^ nanos ^ (u64::from(attempt) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    let frac = 0.5 + (x % 1000) as f64 / 2000.0;
    full.mul_f64(frac)
}

/// (retry it, it was throttling).
fn retryable<E: ProvideErrorMetadata>(e: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> (bool, bool) {
    match e {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => (true, false),
        // Connections refused or dropped, and timeouts; not missing credentials.
        SdkError::DispatchFailure(d) => (d.is_io() || d.is_timeout(), false),
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or_default();
            let status = s.raw().status().as_u16();
            let throttled = code.contains("Throttl") || status == 429;
            let server = status >= 500 || code == "InternalServerException";
            (throttled || server, throttled)
        }
        _ => (false, false),
    }
}

/// Our error for a failed request: its code and message (never credentials: the SDK's
/// messages hold none).
fn api_error<E: ProvideErrorMetadata + std::error::Error + 'static>(
    op: &'static str,
    e: &SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> EbsError {
    match e {
        SdkError::ServiceError(s) => EbsError::Api {
            op,
            code: s
                .err()
                .code()
                .map_or_else(|| format!("HTTP {}", s.raw().status().as_u16()), str::to_string),
            message: s.err().message().unwrap_or("no message").to_string(),
        },
        other => {
            let mut message = other.to_string();
            let mut cause = std::error::Error::source(other);
            while let Some(c) = cause {
                message.push_str(&format!(": {c}"));
                cause = c.source();
            }
            EbsError::Api {
                op,
                code: "Transport".into(),
                message,
            }
        }
    }
}
