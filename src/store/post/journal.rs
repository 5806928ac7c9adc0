//! The POST store's journal: what this machine has POSTed for one bundle (bucket, endpoint,
//! prefix), each object with its size and SHA-256, recorded only after the server accepted it.
//! An upload policy can neither list nor read the bucket, so this file is how a policy bundle
//! interrupted by a crash, a lost network or a server restart resumes: a later run for the same
//! bucket and prefix does not POST again an object whose recomputed bytes have the size and
//! SHA-256 the journal records. The journal is removed once the bundle's manifest is stored.
//!
//! One JSON object a line: a header naming the bundle, then one line per stored object (a later
//! line for the same key replaces an earlier one). Before a key the file names is POSTed again,
//! a line without a digest withdraws it: a POST whose answer was lost may have replaced the
//! object, so the file never vouches for bytes the bucket may no longer hold. A line cut short
//! by a crash is ignored: at worst, an object is sent again.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::StoreError;

const FORMAT: &str = "winbundle-post-journal-1";

/// An object the server accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub size: u64,
    pub sha256: [u8; 32],
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Header {
    format: String,
    url: String,
    bucket: String,
    prefix: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Line {
    key: String,
    size: u64,
    sha256: String,
    time: String,
}

/// The journal of one bundle's POSTs.
pub struct Journal {
    path: PathBuf,
    manifest_key: String,
    /// What an earlier run stored (empty for a fresh start).
    earlier: Mutex<HashMap<String, Stored>>,
    file: Mutex<Option<File>>,
    /// Keys the file vouches for now.
    vouched: Mutex<HashSet<String>>,
}

impl Journal {
    /// The journal file for a bundle under `prefix` in `bucket` at `url`, in `dir`.
    pub fn path_for(dir: &Path, url: &str, bucket: &str, prefix: &str) -> PathBuf {
        let id = Sha256::digest(format!("{url}\n{bucket}\n{prefix}").as_bytes());
        dir.join(format!("post-{}.jsonl", hex::encode(&id[..12])))
    }

    /// Opens the journal of a bundle under `prefix` (in `dir`, created if needed). With
    /// `resume`, what an earlier run recorded is kept and offered; without, it is dropped.
    pub fn open(dir: &Path, url: &str, bucket: &str, prefix: &str, resume: bool) -> Result<Self, StoreError> {
        let path = Self::path_for(dir, url, bucket, prefix);
        let io = |source| StoreError::Io {
            op: "POST journal",
            key: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let header = Header {
            format: FORMAT.into(),
            url: url.into(),
            bucket: bucket.into(),
            prefix: prefix.into(),
        };
        let earlier = if resume { read(&path, &header) } else { None };
        let file = match &earlier {
            Some((_, whole_lines)) => {
                let mut f = OpenOptions::new().append(true).open(&path).map_err(io)?;
                if !whole_lines {
                    // A line cut short by a crash: what comes next starts on a line of its own.
                    writeln!(f).map_err(io)?;
                }
                f
            }
            None => {
                let mut f = File::create(&path).map_err(io)?;
                let line = serde_json::to_string(&header).unwrap_or_default();
                writeln!(f, "{line}").and_then(|()| f.flush()).map_err(io)?;
                f
            }
        };
        let earlier = earlier.map(|(m, _)| m);
        let vouched = earlier.iter().flat_map(|m| m.keys().cloned()).collect();
        Ok(Self {
            manifest_key: crate::format::Keys::new(prefix).manifest(),
            vouched: Mutex::new(vouched),
            earlier: Mutex::new(earlier.unwrap_or_default()),
            file: Mutex::new(Some(file)),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What an earlier run stored under `key`.
    pub fn earlier(&self, key: &str) -> Option<Stored> {
        self.earlier.lock().unwrap_or_else(|e| e.into_inner()).get(key).copied()
    }

    /// Objects an earlier run stored.
    pub fn earlier_count(&self) -> usize {
        self.earlier.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Records `key` as overwritten by something that is not the bundle's (the policy probe):
    /// what an earlier run stored there is gone, and is neither reused nor counted as replaced.
    pub fn overwritten(&self, key: &str, stored: Stored) -> Result<(), StoreError> {
        self.earlier.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        self.record(key, stored)
    }

    /// Withdraws what the file says of `key`, before it is POSTed again.
    pub fn withdraw(&self, key: &str) -> Result<(), StoreError> {
        if !self.vouched.lock().unwrap_or_else(|e| e.into_inner()).remove(key) {
            return Ok(());
        }
        self.append(key, None)
    }

    /// Records an object the server accepted. Once the bundle's manifest is stored, the
    /// journal has served its purpose and is removed.
    pub fn record(&self, key: &str, stored: Stored) -> Result<(), StoreError> {
        self.append(key, Some(stored))?;
        self.vouched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string());
        Ok(())
    }

    fn append(&self, key: &str, stored: Option<Stored>) -> Result<(), StoreError> {
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if key == self.manifest_key {
            guard.take();
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.io(e)),
                _ => Ok(()),
            };
        }
        let Some(f) = guard.as_mut() else { return Ok(()) };
        let line = Line {
            key: key.into(),
            size: stored.map_or(0, |s| s.size),
            sha256: stored.map_or(String::new(), |s| hex::encode(s.sha256)),
            time: crate::task::now_iso(),
        };
        let line = serde_json::to_string(&line).unwrap_or_default();
        writeln!(f, "{line}").and_then(|()| f.flush()).map_err(|e| self.io(e))
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            op: "POST journal",
            key: self.path.display().to_string(),
            source,
        }
    }
}

/// The objects recorded in the journal at `path`, if it is one for the bundle `header` names,
/// and whether the file ends with a whole line.
fn read(path: &Path, header: &Header) -> Option<(HashMap<String, Stored>, bool)> {
    let text = std::fs::read(path).ok()?;
    let whole_lines = text.last() == Some(&b'\n');
    let mut lines = text.split(|b| *b == b'\n');
    let first: Header = serde_json::from_slice(lines.next()?).ok()?;
    if first.format != header.format
        || first.url != header.url
        || first.bucket != header.bucket
        || first.prefix != header.prefix
    {
        return None;
    }
    let mut stored = HashMap::new();
    for line in lines {
        let Ok(l) = serde_json::from_slice::<Line>(line) else {
            continue;
        };
        let mut sha256 = [0u8; 32];
        if hex::decode_to_slice(&l.sha256, &mut sha256).is_ok() {
            stored.insert(l.key, Stored { size: l.size, sha256 });
        } else {
            stored.remove(&l.key); // withdrawn
        }
    }
    Some((stored, whole_lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(n: u8) -> Stored {
        Stored {
            size: n as u64,
            sha256: [n; 32],
        }
    }

    #[test]
    fn a_reopened_journal_offers_what_was_recorded_and_forgets_without_resume() {
        let dir = tempfile::tempdir().unwrap();
        let (url, b, p) = ("http://h/b", "b", "win/x");
        let j = Journal::open(dir.path(), url, b, p, true).unwrap();
        assert_eq!(j.earlier_count(), 0);
        j.record("win/x.part.0", stored(1)).unwrap();
        j.record("win/x.part.1", stored(2)).unwrap();
        j.record("win/x.part.0", stored(3)).unwrap(); // a later line wins
        drop(j);
        // A line cut short by a crash is ignored.
        let path = Journal::path_for(dir.path(), url, b, p);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        write!(f, "{{\"Key\":\"win/x.part.2\",\"Si").unwrap();
        drop(f);
        let j = Journal::open(dir.path(), url, b, p, true).unwrap();
        assert_eq!(j.earlier("win/x.part.0"), Some(stored(3)));
        assert_eq!(j.earlier("win/x.part.1"), Some(stored(2)));
        assert_eq!(j.earlier("win/x.part.2"), None);
        // Withdrawn before being POSTed again, and that POST never confirmed: not vouched for.
        j.withdraw("win/x.part.1").unwrap();
        j.withdraw("win/x.part.7").unwrap(); // never recorded: nothing to withdraw
        drop(j);
        let j = Journal::open(dir.path(), url, b, p, true).unwrap();
        assert_eq!(j.earlier("win/x.part.1"), None);
        assert_eq!(j.earlier_count(), 1);
        drop(j);
        // Another bundle's journal is another file; --no-resume starts empty.
        assert_eq!(
            Journal::open(dir.path(), url, b, "win/y", true)
                .unwrap()
                .earlier_count(),
            0
        );
        assert_eq!(Journal::open(dir.path(), url, b, p, false).unwrap().earlier_count(), 0);
        assert_eq!(Journal::open(dir.path(), url, b, p, true).unwrap().earlier_count(), 0);
    }

    #[test]
    fn storing_the_manifest_removes_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), "u", "b", "p", true).unwrap();
        j.record("p.part.0", stored(1)).unwrap();
        assert!(j.path().exists());
        j.record("p.manifest.json", stored(2)).unwrap();
        assert!(!j.path().exists());
        j.record("p.part.1", stored(1)).unwrap(); // nothing more is written
        assert!(!j.path().exists());
    }

    #[test]
    fn a_file_of_another_bundle_under_the_same_name_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = Journal::path_for(dir.path(), "u", "b", "p");
        std::fs::write(
            &path,
            "{\"Format\":\"winbundle-post-journal-1\",\"Url\":\"u\",\"Bucket\":\"b\",\"Prefix\":\"q\"}\n{\"Key\":\"p.part.0\",\"Size\":1,\"Sha256\":\"0101010101010101010101010101010101010101010101010101010101010101\",\"Time\":\"t\"}\n",
        )
        .unwrap();
        assert_eq!(
            Journal::open(dir.path(), "u", "b", "p", true).unwrap().earlier_count(),
            0
        );
        std::fs::write(&path, "not json\n").unwrap();
        assert_eq!(
            Journal::open(dir.path(), "u", "b", "p", true).unwrap().earlier_count(),
            0
        );
    }
}
