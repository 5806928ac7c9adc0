//! Bucket names and key prefixes, checked as S3 (and MinIO, Garage) accept them, so that a
//! bundle made into a local folder can later go to S3 under the same keys.

use super::StoreError;

fn invalid(what: &'static str, value: &str, reason: impl Into<String>) -> StoreError {
    StoreError::InvalidName {
        what,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// An AWS region name as it may reach a host name: 1 to 32 lowercase letters, digits and
/// hyphens, starting with a letter and not ending with a hyphen (`us-east-1`, `garage`). Used on
/// every region that comes from outside (a policy's credential, a request), so that it can never
/// name another host, port or path.
pub fn check_region(r: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && r.as_bytes()[0].is_ascii_lowercase()
        && !r.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{r:?} is not a region name (1 to 32 lowercase letters, digits and hyphens, such as us-east-1)"
        ))
    }
}

/// S3 bucket naming rules (3–63 chars of a-z 0-9 . -, starting and ending with a letter or digit).
pub fn check_bucket(b: &str) -> Result<(), StoreError> {
    if !(3..=63).contains(&b.len()) {
        return Err(invalid("bucket name", b, "must be 3 to 63 characters long"));
    }
    if !b
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
    {
        return Err(invalid(
            "bucket name",
            b,
            "may hold only lower-case letters, digits, '.' and '-'",
        ));
    }
    let first_last_ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !first_last_ok(b.as_bytes()[0]) || !first_last_ok(b.as_bytes()[b.len() - 1]) {
        return Err(invalid("bucket name", b, "must start and end with a letter or digit"));
    }
    if b.contains("..") {
        return Err(invalid("bucket name", b, "must not contain '..'"));
    }
    if b.split('.').count() == 4 && b.split('.').all(|p| p.parse::<u8>().is_ok()) {
        return Err(invalid("bucket name", b, "must not look like an IP address"));
    }
    Ok(())
}

/// A prefix becomes the start of every key: `PREFIX.manifest.json`, `PREFIX.part.0`, ...
pub fn check_prefix(p: &str) -> Result<(), StoreError> {
    if p.is_empty() {
        return Err(invalid("prefix", p, "must not be empty"));
    }
    if p.len() > 900 {
        return Err(invalid(
            "prefix",
            p,
            "must be at most 900 bytes (keys are limited to 1024)",
        ));
    }
    if p.starts_with('/') || p.ends_with('/') {
        return Err(invalid("prefix", p, "must not start or end with '/'"));
    }
    if p.chars().any(|c| c.is_control() || c == '\\') {
        return Err(invalid("prefix", p, "must not contain control characters or '\\'"));
    }
    if p.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
        return Err(invalid(
            "prefix",
            p,
            "must not contain empty, '.' or '..' path segments",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_rules() {
        assert!(check_bucket("my-bucket.1").is_ok());
        for bad in ["ab", "Upper", "-x-y", "a..b", "192.168.1.1", "under_score"] {
            assert!(check_bucket(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefix_rules() {
        assert!(check_prefix("winami").is_ok());
        assert!(check_prefix("bundles/2026/win").is_ok());
        for bad in ["", "/abs", "a/../b", "a//b", "trail/", "back\\slash"] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}
