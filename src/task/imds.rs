//! The instance id from EC2's instance metadata service (IMDSv2), for a bundle of the machine's
//! own live volume: one attempt, one-second timeouts, so a machine without IMDS waits at most
//! about two seconds. `AWS_EC2_METADATA_DISABLED=true` turns it off;
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT` points it elsewhere (tests use a fake on loopback).
//! The request never goes through a proxy: `HTTP_PROXY`/`HTTPS_PROXY` are for S3, and a proxy
//! asked for 169.254.169.254 (or fd00:ec2::254) would answer for itself, not for this instance.

use std::time::Duration;

/// The instance id, if the metadata service answers with one that looks like an instance id.
pub fn instance_id() -> Option<String> {
    if std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return None;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let providers = aws_config::provider_config::ProviderConfig::without_region().with_http_client(direct_client());
        let client = aws_config::imds::client::Client::builder()
            .configure(&providers)
            .max_attempts(1)
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(1))
            .build();
        let fetch = client.get("/latest/meta-data/instance-id");
        let id = tokio::time::timeout(Duration::from_secs(3), fetch).await.ok()?.ok()?;
        let id: String = id.as_ref().trim().to_string();
        super::check_instance_id(&id).is_ok().then_some(id)
    })
}

/// The SDK's HTTP client without any proxy, whatever the environment says.
fn direct_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::proxy::ProxyConfig;
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    use aws_smithy_http_client::{Builder, ConnectorBuilder};
    Builder::new().build_with_connector_fn(|settings, components| {
        let mut conn = ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(CryptoMode::Ring));
        conn.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            conn.set_sleep_impl(components.sleep_impl());
        }
        conn.set_proxy_config(Some(ProxyConfig::disabled()));
        conn.build()
    })
}
