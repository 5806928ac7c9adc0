//! The `winbundle serve` configuration file (TOML): which instance ids map to which disks, the
//! S3 endpoint bundles upload to, the callers' credentials, the state folder and how many
//! bundles run at once. Checked as a whole when loaded, with errors that name the key.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::bundle::plan::PlanOptions;

/// Default address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8773";
/// Default allowed difference between a request's signing time and the server's clock.
pub const DEFAULT_MAX_SKEW_SECONDS: i64 = 300;

/// A secret read from the file or the environment; never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A byte size: a number, or a string such as `"16MiB"`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "SizeValue")]
pub struct Size(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Number(u64),
    Text(String),
}

impl TryFrom<SizeValue> for Size {
    type Error = String;
    fn try_from(v: SizeValue) -> Result<Self, String> {
        match v {
            SizeValue::Number(n) => Ok(Size(n)),
            SizeValue::Text(s) => crate::units::parse_size(&s).map(Size),
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (`--listen` overrides it).
    pub listen: Option<String>,
    /// The region this endpoint answers as: callers sign for it (`--region`).
    #[serde(default = "default_region")]
    pub region: String,
    /// Task folder, shared with the CLI's describe-bundle-tasks / cancel-bundle-task.
    pub state_dir: Option<PathBuf>,
    /// Bundles that run at once; more wait as `pending`.
    #[serde(default = "one")]
    pub max_concurrent_bundles: usize,
    #[serde(default = "default_skew")]
    pub max_clock_skew_seconds: i64,
    pub s3: S3Target,
    #[serde(default)]
    pub bundle: BundleSettings,
    #[serde(rename = "caller", default)]
    pub callers: Vec<Caller>,
    #[serde(rename = "instance", default)]
    pub instances: Vec<Instance>,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn one() -> usize {
    1
}

fn default_skew() -> i64 {
    DEFAULT_MAX_SKEW_SECONDS
}

/// Where bundles go: the S3 endpoint the callers' upload policies are for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Target {
    /// `http://127.0.0.1:9000` for MinIO, s3s-fs, Garage; absent for AWS S3.
    pub endpoint_url: Option<String>,
    /// Region of the bucket: AWS S3's regional endpoint, and the region version 4 upload
    /// policies must be signed for (with an endpoint URL too: Garage's is its `s3_region`).
    /// Absent: the region a version 4 policy names is used.
    pub region: Option<String>,
    /// Parts uploaded at once per bundle.
    pub concurrency: Option<usize>,
    pub max_attempts: Option<u32>,
}

/// Pipeline settings for every bundle.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleSettings {
    pub threads: Option<usize>,
    pub zstd_level: Option<i32>,
    pub chunk_size: Option<Size>,
    pub part_size: Option<Size>,
    /// Replace a bundle that already exists under the prefix (a policy upload cannot check).
    #[serde(default)]
    pub overwrite: bool,
    /// Encrypt every bundle for these recipients (age `age1…` keys, SSH public key lines);
    /// a request's `EncryptTo.N` adds to them.
    #[serde(default)]
    pub encrypt_to: Vec<String>,
}

/// A caller allowed to use the API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caller {
    pub access_key_id: String,
    /// The secret, in the file (keep the file private) …
    pub secret_access_key: Option<Secret>,
    /// … or the name of an environment variable that holds it.
    pub secret_access_key_env: Option<String>,
    /// Sees and cancels every task, not only its own (and tasks with no recorded owner: the
    /// CLI's, and those of servers before owners were recorded).
    #[serde(default)]
    pub admin: bool,
}

/// An instance: an id and the disk that is its root device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    pub id: String,
    /// Disk image file, `.zst` image, or block device.
    pub source: PathBuf,
    /// Bundle this partition instead of the detected C:.
    pub partition: Option<u32>,
    /// Files or folders on C: imaged as zeros, besides pagefile/swapfile/hiberfil.
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub no_default_excludes: bool,
    /// Keep the storage of the volume's earlier shadow copies (left out by default).
    #[serde(default)]
    pub keep_shadow_copies: bool,
    /// Leave out what the volume's FilesNotToSnapshot and FilesNotToBackup match.
    #[serde(default)]
    pub exclude_windows_lists: bool,
    /// This instance's compression threads and zstd level, instead of `[bundle]`'s (a disk
    /// that shares its machine with running work may need fewer threads).
    pub threads: Option<usize>,
    pub zstd_level: Option<i32>,
}

impl Instance {
    pub fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            partition: self.partition,
            excludes: self.exclude.clone(),
            default_excludes: !self.no_default_excludes,
            volume_only: false,
            keep_shadow_copies: self.keep_shadow_copies,
            require_ec2_ready: false,
            exclude_windows_lists: self.exclude_windows_lists,
        }
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("configuration {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("configuration {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// A caller with the secret resolved.
#[derive(Debug, Clone)]
pub struct ResolvedCaller {
    pub access_key_id: String,
    pub secret: Secret,
    pub admin: bool,
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks the text of a configuration (`path` is for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|r| text[..r.start.min(text.len())].lines().count().max(1));
            ConfigError::Parse {
                path: path.to_path_buf(),
                message: match line {
                    Some(l) => format!("line {l}: {}", e.message()),
                    None => e.message().to_string(),
                },
            }
        })?;
        cfg.check(path)?;
        Ok(cfg)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        if self.callers.is_empty() {
            return Err(bad(
                "caller",
                "no [[caller]] entries: add one with access_key_id and secret_access_key (or secret_access_key_env), the credentials clients sign with".into(),
            ));
        }
        if self.instances.is_empty() {
            return Err(bad(
                "instance",
                "no [[instance]] entries: add one with id = \"i-…\" and source = \"/path/to/disk.img\"".into(),
            ));
        }
        if !(1..=64).contains(&self.max_concurrent_bundles) {
            return Err(bad("max_concurrent_bundles", "use 1 to 64".into()));
        }
        if !(1..=86_400).contains(&self.max_clock_skew_seconds) {
            return Err(bad("max_clock_skew_seconds", "use 1 to 86400".into()));
        }
        if self.region.is_empty() || !self.region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(bad("region", format!("{:?} is not a region name", self.region)));
        }
        for (i, r) in self.bundle.encrypt_to.iter().enumerate() {
            crate::crypt::parse_recipient(r).map_err(|e| bad(&format!("bundle.encrypt_to[{i}]"), e.to_string()))?;
        }
        let mut ids = BTreeSet::new();
        for (i, inst) in self.instances.iter().enumerate() {
            crate::task::check_instance_id(&inst.id).map_err(|m| bad(&format!("instance[{i}].id"), m))?;
            if !ids.insert(inst.id.as_str()) {
                return Err(bad(
                    &format!("instance[{i}].id"),
                    format!("{} is listed twice", inst.id),
                ));
            }
        }
        let mut keys = BTreeSet::new();
        for (i, c) in self.callers.iter().enumerate() {
            if c.access_key_id.is_empty() {
                return Err(bad(&format!("caller[{i}].access_key_id"), "empty".into()));
            }
            if !keys.insert(c.access_key_id.as_str()) {
                return Err(bad(
                    &format!("caller[{i}].access_key_id"),
                    format!("{} is listed twice", c.access_key_id),
                ));
            }
            if c.secret_access_key.is_some() == c.secret_access_key_env.is_some() {
                return Err(bad(
                    &format!("caller[{i}]"),
                    "give exactly one of secret_access_key and secret_access_key_env".into(),
                ));
            }
        }
        if let Some(u) = &self.s3.endpoint_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(bad(
                "s3.endpoint_url",
                format!("{u:?} must start with http:// or https://"),
            ));
        }
        Ok(())
    }

    /// The callers with their secrets (reading environment variables now).
    pub fn resolve_callers(&self, path: &Path) -> Result<Vec<ResolvedCaller>, ConfigError> {
        self.callers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let secret = match (&c.secret_access_key, &c.secret_access_key_env) {
                    (Some(s), _) => s.clone(),
                    (None, Some(var)) => Secret(std::env::var(var).map_err(|_| ConfigError::Invalid {
                        path: path.to_path_buf(),
                        key: format!("caller[{i}].secret_access_key_env"),
                        message: format!("the environment variable {var} is not set"),
                    })?),
                    (None, None) => unreachable!("checked when loaded"),
                };
                Ok(ResolvedCaller {
                    access_key_id: c.access_key_id.clone(),
                    secret,
                    admin: c.admin,
                })
            })
            .collect()
    }

    pub fn instance(&self, id: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
region = "us-east-1"
max_concurrent_bundles = 2
[s3]
endpoint_url = "http://127.0.0.1:8014"
[bundle]
part_size = "8MiB"
[[caller]]
access_key_id = "AKIDCALLER"
secret_access_key = "caller-secret"
[[instance]]
id = "i-0123456789abcdef0"
source = "/images/win.img"
exclude = ['\Temp']
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("serve.toml"))
    }

    #[test]
    fn a_good_file_loads_and_hides_secrets() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.bundle.part_size.map(|s| s.0), Some(8 << 20));
        assert_eq!(c.instance("i-0123456789abcdef0").unwrap().exclude, ["\\Temp"]);
        assert!(c.instance("i-00000000").is_none());
        let debug = format!("{c:?}");
        assert!(!debug.contains("caller-secret"), "{debug}");
        let callers = c.resolve_callers(Path::new("serve.toml")).unwrap();
        assert_eq!(callers[0].secret.expose(), "caller-secret");
    }

    #[test]
    fn mistakes_name_the_key() {
        let cases = [
            (GOOD.replace("i-0123456789abcdef0", "instance-1"), "instance[0].id"),
            (
                GOOD.replace("max_concurrent_bundles = 2", "max_concurrent_bundles = 0"),
                "max_concurrent_bundles",
            ),
            (GOOD.replace("secret_access_key = \"caller-secret\"", ""), "caller[0]"),
            (
                GOOD.replace("http://127.0.0.1:8014", "127.0.0.1:8014"),
                "s3.endpoint_url",
            ),
            (
                GOOD.replace(
                    "[[instance]]",
                    "[[instance]]\nid = \"i-0123456789abcdef0\"\nsource = \"/a\"\n[[instance]]",
                ),
                "listed twice",
            ),
        ];
        for (text, key) in cases {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        let e = parse(&GOOD.replace("region =", "regoin =")).unwrap_err().to_string();
        assert!(e.contains("regoin"), "{e}");
        let e = parse(&GOOD.replace("\"8MiB\"", "\"8 parsecs\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("part_size") || e.contains("parsecs"), "{e}");
        let e = parse("[s3]\n[[caller]]\naccess_key_id = \"A\"\nsecret_access_key = \"B\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[[instance]]"), "{e}");
    }

    #[test]
    fn secrets_from_the_environment() {
        let text = GOOD.replace(
            "secret_access_key = \"caller-secret\"",
            "secret_access_key_env = \"WINBUNDLE_TEST_UNSET_SECRET_VAR\"",
        );
        let c = parse(&text).unwrap();
        let e = c.resolve_callers(Path::new("serve.toml")).unwrap_err().to_string();
        assert!(e.contains("WINBUNDLE_TEST_UNSET_SECRET_VAR is not set"), "{e}");
    }
}
