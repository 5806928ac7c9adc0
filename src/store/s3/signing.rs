//! One SHA-256 for three jobs. The stream writer hashes every part once; that digest is the
//! manifest's part digest, the `x-amz-checksum-sha256` the server verifies, and (through this
//! interceptor) the payload hash SigV4 signs, so the SDK does not hash the body again.

use aws_runtime::auth::PayloadSigningOverride;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// Signs a request with a payload hash computed beforehand.
#[derive(Debug)]
pub struct PrecomputedSha256(pub String);

impl Intercept for PrecomputedSha256 {
    fn name(&self) -> &'static str {
        "PrecomputedSha256"
    }

    fn modify_before_signing(
        &self,
        _context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(PayloadSigningOverride::Precomputed(self.0.clone()));
        Ok(())
    }
}
