//! An upload policy (base64 JSON) and its signature as `bundle-instance` and `serve` take them
//! from outside: decoding, every check, and the form fields built from it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use winbundle::store::post::UploadPolicy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (policy, signature) = text.split_once('\n').unwrap_or((text, ""));
    let _ = winbundle::store::post::policy::Credential::parse(signature);
    // Raw JSON too, not only what happens to be valid base64.
    for b64 in [policy.to_string(), winbundle::store::post::policy::encode(policy)] {
        let Ok(p) = UploadPolicy::parse(&b64) else { continue };
        let _ = p.acl();
        let _ = p.check_signature_shape(signature);
        let _ = p.check_signer(Some("AKIAEXAMPLE"), Some("us-east-1"));
        let _ = p.form_fields("AKIAEXAMPLE", signature);
    }
});
