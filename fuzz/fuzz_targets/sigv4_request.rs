//! A signed EC2 API request: the Authorization header (or presigned query), the canonical
//! request built from the path, query and headers, and the signature check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use winbundle::api::sigv4::{Expect, Incoming, verify};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.split('\n');
    let path = lines.next().unwrap_or("/");
    let query = lines.next().unwrap_or("");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let req = Incoming {
        method: "POST",
        raw_path: path,
        raw_query: query,
        headers,
        body: b"Action=DescribeBundleTasks&Version=2016-11-15",
    };
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
        .map(|t| t.to_utc())
        .unwrap_or_default();
    let expect = Expect {
        service: "ec2",
        region: "us-east-1",
        now,
        max_skew_seconds: 900,
    };
    let _ = verify(&req, &expect, |ak| {
        (ak == "AKIDEXAMPLE").then_some("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    });
    let _ = winbundle::api::sigv4::canonical_uri(path);
});
