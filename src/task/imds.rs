//! The instance id from EC2's instance metadata service (IMDSv2), for a bundle of the machine's
//! own live volume: one attempt, one-second timeouts, so a machine without IMDS waits at most
//! about two seconds. `AWS_EC2_METADATA_DISABLED=true` turns it off;
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT` points it elsewhere (tests use a fake on loopback).

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
        let providers = aws_config::provider_config::ProviderConfig::without_region()
            .with_http_client(crate::store::s3::http::https_client());
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
