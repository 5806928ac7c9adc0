//! EC2 Query API parameters (query string and form body) and what the server reads of them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use winbundle::api::query::Params;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (query, body) = data.split_at(split);
    let Ok(query) = std::str::from_utf8(query) else { return };
    let Ok(p) = Params::parse(query, Some(body)) else {
        return;
    };
    let _ = p.list("BundleId");
    let _ = p.flag("DryRun");
    let _ = p.filters(&["bundle-id", "state", "instance-id"]);
    let _ = p.only(&["Action", "Version"], &["Filter."]);
    let _ = winbundle::api::sigv4::canonical_query(query, None);
});
