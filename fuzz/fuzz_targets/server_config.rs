//! `winbundle serve`'s TOML configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = std::path::Path::new("fuzz.toml");
    if let Ok(c) = winbundle::api::config::Config::parse(text, path) {
        let _ = c.resolve_callers(path);
    }
});
