//! The HTTPS client behind every AWS SDK call (S3, credential providers, instance metadata).
//!
//! The SDK's default client is the same hyper 1 + rustls client with aws-lc as its crypto
//! library; this one uses ring, which reqwest (the upload-policy POST store) already brings, so a
//! build compiles one TLS crypto library. Proxies come from the environment (`HTTPS_PROXY`,
//! `NO_PROXY`), as with the SDK's default client.

use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_http_client::{Builder, ConnectorBuilder};
use aws_smithy_runtime_api::client::http::SharedHttpClient;

/// A new HTTPS (and plain HTTP) client for the AWS SDK.
pub fn https_client() -> SharedHttpClient {
    Builder::new().build_with_connector_fn(|settings, components| {
        let mut conn = ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(CryptoMode::Ring));
        conn.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            conn.set_sleep_impl(components.sleep_impl());
        }
        conn.set_proxy_config(Some(ProxyConfig::from_env()));
        conn.build()
    })
}
