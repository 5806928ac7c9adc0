//! Logs every S3 request attempt (`-v`/`RUST_LOG`): the operation, the attempt number, the
//! HTTP status or the transport failure, and how long it took. Only the method, the path and
//! the query go into the log (the bucket, key, part number and upload id), never a header:
//! signatures and credentials stay out.

use std::time::Instant;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::retries::RequestAttempts;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};

/// The interceptor.
#[derive(Debug)]
pub struct RequestLog;

/// When the attempt started, and its method and path.
#[derive(Debug, Clone)]
struct AttemptStart(Instant, String);

impl Storable for AttemptStart {
    type Storer = StoreReplace<Self>;
}

impl Intercept for RequestLog {
    fn name(&self) -> &'static str {
        "RequestLog"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let r = context.request();
        let uri = r.uri();
        // From the path on: the host is in the endpoint already.
        let path = uri
            .find("://")
            .and_then(|i| uri[i + 3..].find('/').map(|j| &uri[i + 3 + j..]))
            .unwrap_or(uri);
        let target = format!("{} {path}", r.method());
        cfg.interceptor_state().store_put(AttemptStart(Instant::now(), target));
        Ok(())
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let op = cfg.load::<Metadata>().map_or("request", |m| m.name());
        let attempt = cfg.load::<RequestAttempts>().map_or(1, |a| a.attempts());
        let (ms, target) = cfg
            .load::<AttemptStart>()
            .map_or((0, String::new()), |s| (s.0.elapsed().as_millis(), s.1.clone()));
        match context.response().map(|r| r.status().as_u16()) {
            // 404 is how HeadObject says "not there yet": an answer, not a problem.
            Some(status) if status < 400 || status == 404 => {
                tracing::debug!(target: "winbundle::s3", "{op} {target}: {status} in {ms} ms (attempt {attempt})")
            }
            Some(status) if status >= 500 || status == 429 => tracing::warn!(
                target: "winbundle::s3",
                "{op} {target}: {status} in {ms} ms (attempt {attempt}; retried while attempts remain)"
            ),
            Some(status) => {
                tracing::info!(target: "winbundle::s3", "{op} {target}: {status} in {ms} ms (attempt {attempt})")
            }
            None => {
                let why = context
                    .output_or_error()
                    .and_then(|r| r.err())
                    .map(|e| super::error::error_chain(e))
                    .unwrap_or_else(|| "no response".into());
                tracing::warn!(
                    target: "winbundle::s3",
                    "{op} {target}: {why} after {ms} ms (attempt {attempt}; retried while attempts remain)"
                )
            }
        }
        Ok(())
    }
}
