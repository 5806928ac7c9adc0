//! EC2 Query API parameters (query string and form body) and what the server reads of them,
//! including the DescribeBundleTasks wildcard matcher on every value (capped or not: the
//! matcher must stay iterative and bounded whatever the pattern).
#![no_main]

use libfuzzer_sys::fuzz_target;
use winbundle::api::query::Params;
use winbundle::task::store::glob;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (query, body) = data.split_at(split);
    let Ok(query) = std::str::from_utf8(query) else { return };
    let Ok(p) = Params::parse(query, Some(body)) else {
        return;
    };
    let _ = p.list("BundleId", 200, 64);
    let _ = p.flag("DryRun");
    let _ = p.filters(&["bundle-id", "state", "instance-id"]);
    let _ = p.only(&["Action", "Version"], &["Filter."]);
    let _ = winbundle::api::sigv4::canonical_query(query, None);
    // Each value as a pattern, against each value and a long text of its own characters.
    let values: Vec<&str> = p.values().collect();
    for pattern in &values {
        let long: String = pattern.chars().filter(|c| *c != '*' && *c != '?').cycle().take(4096).collect();
        let _ = glob(pattern, &long);
        for text in &values {
            let _ = glob(pattern, text);
        }
    }
});
