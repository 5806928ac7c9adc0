//! The data keys a bundler keeps for its chains. An encrypted incremental bundle reuses its
//! parent's sealed frames, so it must seal under the parent's data key. The bundler holds no
//! identity: it keeps each data key it made in the task folder (`keys/KEY_ID.key`), readable by
//! its owner only (mode 0600 in a 0700 folder; on Windows also sealed with DPAPI for the user).
//! A machine without the key (another machine, a wiped task folder) starts a new chain.
//!
//! Each key is kept with the fingerprint of the recipients it was made for: a chain whose
//! recipients changed (a key rotated out) starts anew, so a removed recipient cannot read the
//! bundles made after it was removed. The key an interrupted bundle used is remembered by its
//! bucket and prefix, so that its run again seals the same frames and resumes its upload.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use super::{CryptError, DataKey};

const HEADER: &str = "winbundle chain key v1";

/// A kept data key and the recipients it was made for.
pub struct ChainKey {
    pub key: DataKey,
    /// [`recipients_fingerprint`] of its recipients.
    pub recipients: String,
}

/// The folder of kept chain keys.
#[derive(Debug, Clone)]
pub struct ChainKeys {
    dir: PathBuf,
}

/// SHA-256 (hex) over the recipients as given (trimmed, sorted, one per line): the same set in
/// any order gives the same fingerprint.
pub fn recipients_fingerprint(recipients: &[String]) -> String {
    let mut r: Vec<&str> = recipients.iter().map(|s| s.trim()).collect();
    r.sort_unstable();
    r.dedup();
    hex::encode(Sha256::digest(r.join("\n").as_bytes()))
}

impl ChainKeys {
    /// The key folder inside the task folder `task_dir`.
    pub fn in_task_dir(task_dir: &Path) -> Self {
        Self {
            dir: task_dir.join("keys"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn err(&self, path: &Path, problem: String) -> CryptError {
        CryptError::ChainStore {
            path: path.display().to_string(),
            problem,
        }
    }

    fn key_path(&self, key_id: &str) -> PathBuf {
        self.dir.join(format!("{key_id}.key"))
    }

    fn pending_path(&self, bucket: &str, prefix: &str) -> PathBuf {
        let h = Sha256::digest(format!("{bucket}\0{prefix}").as_bytes());
        self.dir.join(format!("prefix-{}.id", hex::encode(&h[..8])))
    }

    /// The key `key_id`, when this machine keeps it.
    pub fn load(&self, key_id: &str) -> Result<Option<ChainKey>, CryptError> {
        if key_id.len() != 16 || !key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let path = self.key_path(key_id);
        let stored = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err(&path, format!("cannot read it ({e})"))),
        };
        let mut text = protect::unseal(&stored).map_err(|e| self.err(&path, e))?;
        let parsed = parse(&text);
        text.zeroize();
        let k = parsed.ok_or_else(|| self.err(&path, "not a chain key file winbundle wrote".into()))?;
        if k.key.id() != key_id {
            return Err(self.err(&path, format!("it holds the key {}, not {key_id}", k.key.id())));
        }
        Ok(Some(k))
    }

    /// Keeps `key` (made for the recipients with fingerprint `recipients`), readable by this
    /// user only.
    pub fn save(&self, key: &DataKey, recipients: &str) -> Result<(), CryptError> {
        let path = self.key_path(&key.id());
        let mut text = format!("{HEADER}\nkey {}\nrecipients {recipients}\n", key.to_hex().as_str()).into_bytes();
        let sealed = protect::seal(&text);
        text.zeroize();
        let sealed = sealed.map_err(|e| self.err(&path, e))?;
        self.write_private(&path, &sealed)
    }

    /// The key id an earlier run of the bundle `bucket`/`prefix` used, if one was recorded.
    pub fn pending(&self, bucket: &str, prefix: &str) -> Option<String> {
        let id = std::fs::read_to_string(self.pending_path(bucket, prefix)).ok()?;
        let id = id.trim();
        (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    }

    /// Records which key the bundle `bucket`/`prefix` uses (not a secret: its id).
    pub fn set_pending(&self, bucket: &str, prefix: &str, key_id: &str) -> Result<(), CryptError> {
        let path = self.pending_path(bucket, prefix);
        self.write_private(&path, format!("{key_id}\n").as_bytes())
    }

    /// Forgets the key an interrupted run used, once the bundle is complete.
    pub fn clear_pending(&self, bucket: &str, prefix: &str) {
        let _ = std::fs::remove_file(self.pending_path(bucket, prefix));
    }

    /// Writes `bytes` to `path` through a new owner-only file renamed into place.
    fn write_private(&self, path: &Path, bytes: &[u8]) -> Result<(), CryptError> {
        make_private_dir(&self.dir).map_err(|e| self.err(&self.dir, format!("cannot create it ({e})")))?;
        let tmp = self.dir.join(format!(".{}.tmp", std::process::id()));
        let written = (|| {
            let mut f = private_file(&tmp)?;
            std::io::Write::write_all(&mut f, bytes)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, path)
        })();
        written.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            self.err(path, format!("cannot write it ({e})"))
        })
    }
}

fn parse(text: &[u8]) -> Option<ChainKey> {
    let text = std::str::from_utf8(text).ok()?;
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let key = lines.next()?.strip_prefix("key ")?;
    let recipients = lines.next()?.strip_prefix("recipients ")?.to_string();
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(key, &mut bytes).ok()?;
    let key = DataKey::from_bytes(bytes);
    bytes.zeroize();
    Some(ChainKey { key, recipients })
}

#[cfg(unix)]
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(not(unix))]
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).create_new(true).open(path)
}

/// Windows: the key file is sealed with DPAPI for the current user (CryptProtectData), so a
/// copy of the file is useless on another account or machine. Elsewhere: the bytes as they are
/// (the file's mode keeps others out).
#[cfg(windows)]
mod protect {
    use windows_sys::Win32::Foundation::LocalFree;
    use windows_sys::Win32::Security::Cryptography::{
        CRYPT_INTEGER_BLOB, CRYPTPROTECT_UI_FORBIDDEN, CryptProtectData, CryptUnprotectData,
    };

    const MAGIC: &[u8] = b"DPAPI1\n";

    fn call(data: &[u8], protect: bool) -> Result<Vec<u8>, String> {
        let input = CRYPT_INTEGER_BLOB {
            cbData: u32::try_from(data.len()).map_err(|_| "too large".to_string())?,
            pbData: data.as_ptr() as *mut u8,
        };
        let mut output = CRYPT_INTEGER_BLOB {
            cbData: 0,
            pbData: std::ptr::null_mut(),
        };
        // SAFETY: `input` points at `data`, alive for the call; DPAPI allocates `output`, which
        // is copied out and released with LocalFree as its documentation says.
        let ok = unsafe {
            if protect {
                CryptProtectData(
                    &input,
                    std::ptr::null(),
                    std::ptr::null(),
                    std::ptr::null(),
                    std::ptr::null(),
                    CRYPTPROTECT_UI_FORBIDDEN,
                    &mut output,
                )
            } else {
                CryptUnprotectData(
                    &input,
                    std::ptr::null_mut(),
                    std::ptr::null(),
                    std::ptr::null(),
                    std::ptr::null(),
                    CRYPTPROTECT_UI_FORBIDDEN,
                    &mut output,
                )
            }
        };
        if ok == 0 || output.pbData.is_null() {
            return Err(format!(
                "DPAPI {} failed ({})",
                if protect {
                    "CryptProtectData"
                } else {
                    "CryptUnprotectData"
                },
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: DPAPI returned `cbData` bytes at `pbData`.
        let out = unsafe { std::slice::from_raw_parts(output.pbData, output.cbData as usize) }.to_vec();
        // SAFETY: the buffer DPAPI allocated, freed once.
        unsafe { LocalFree(output.pbData as _) };
        Ok(out)
    }

    pub fn seal(text: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = MAGIC.to_vec();
        out.extend(call(text, true)?);
        Ok(out)
    }

    pub fn unseal(stored: &[u8]) -> Result<Vec<u8>, String> {
        let blob = stored
            .strip_prefix(MAGIC)
            .ok_or_else(|| "not sealed with DPAPI by winbundle".to_string())?;
        call(blob, false).map_err(|e| format!("{e}: it was sealed for another Windows user or machine"))
    }
}

#[cfg(not(windows))]
mod protect {
    pub fn seal(text: &[u8]) -> Result<Vec<u8>, String> {
        Ok(text.to_vec())
    }

    pub fn unseal(stored: &[u8]) -> Result<Vec<u8>, String> {
        Ok(stored.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_key_comes_back_with_its_recipients_and_only_by_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ChainKeys::in_task_dir(dir.path());
        let key = DataKey::generate().unwrap();
        let fp = recipients_fingerprint(&["age1b".into(), " age1a".into()]);
        assert_eq!(fp, recipients_fingerprint(&["age1a".into(), "age1b".into()]));
        keys.save(&key, &fp).unwrap();
        let back = keys.load(&key.id()).unwrap().unwrap();
        assert_eq!(back.key, key);
        assert_eq!(back.recipients, fp);
        assert!(keys.load("0123456789abcdef").unwrap().is_none());
        assert!(keys.load("../../etc/passwd").unwrap().is_none());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&keys.dir().join(format!("{}.key", key.id()))), 0o600);
            assert_eq!(mode(keys.dir()), 0o700);
        }
        // On Windows the file is sealed with DPAPI: the key is not in it as written.
        #[cfg(windows)]
        {
            let raw = std::fs::read(keys.dir().join(format!("{}.key", key.id()))).unwrap();
            assert!(raw.starts_with(b"DPAPI1\n"));
            assert!(!String::from_utf8_lossy(&raw).contains(key.to_hex().as_str()));
        }
        keys.set_pending("b", "p/x", &key.id()).unwrap();
        assert_eq!(keys.pending("b", "p/x"), Some(key.id()));
        assert_eq!(keys.pending("b", "p/y"), None);
        keys.clear_pending("b", "p/x");
        assert_eq!(keys.pending("b", "p/x"), None);
        // A damaged file is an error naming it, never a key.
        std::fs::write(keys.dir().join(format!("{}.key", key.id())), b"junk").unwrap();
        let e = keys.load(&key.id()).err().unwrap().to_string();
        assert!(
            e.contains(".key") && (e.contains("not a chain key file") || e.contains("DPAPI")),
            "{e}"
        );
    }
}
