//! A registry hive read offline from the volume, with no mount and no Windows: the file through
//! the NTFS reader, parsed by [`super::regf`] (every structure bounds-checked: a hostile hive
//! is a note, never a failure, a hang or a panic), with its transaction logs (`.LOG1`, `.LOG2`)
//! replayed when the hive is dirty.

use super::regf::{RawValue, Regf};
use crate::ntfs::NtfsVolume;
use crate::ntfs::wof::Contents;

/// A hive file larger than this is not read (SOFTWARE is rarely over 200 MB).
const MAX_HIVE: u64 = 512 << 20;
/// A transaction log larger than this is not read.
const MAX_LOG: u64 = 64 << 20;
/// The data of one key's values read at once, at most (the lists hold a few short strings).
const VALUES_BUDGET: usize = 16 << 20;

/// One registry value, as the facts need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    String(String),
    Strings(Vec<String>),
    Dword(u32),
    Qword(u64),
    Binary(Vec<u8>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_u32(&self) -> Option<u32> {
        match self {
            Value::Dword(d) => Some(*d),
            _ => None,
        }
    }

    /// A REG_MULTI_SZ's strings, or a REG_SZ as one.
    pub fn strings(&self) -> Vec<String> {
        match self {
            Value::Strings(v) => v.clone(),
            Value::String(s) => vec![s.clone()],
            _ => Vec::new(),
        }
    }
}

/// A value in the types the facts use (strings, numbers, bytes).
fn content(v: RawValue) -> Option<Value> {
    let utf16 = |d: &[u8]| -> Vec<u16> { d.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect() };
    match v.kind {
        // REG_SZ, REG_EXPAND_SZ: up to the first NUL.
        1 | 2 => {
            let u = utf16(&v.data);
            let end = u.iter().position(|&c| c == 0).unwrap_or(u.len());
            Some(Value::String(String::from_utf16_lossy(&u[..end])))
        }
        // REG_MULTI_SZ: NUL-separated, ended by an empty string.
        7 => Some(Value::Strings(
            utf16(&v.data)
                .split(|&c| c == 0)
                .map(String::from_utf16_lossy)
                .take_while(|s| !s.is_empty())
                .collect(),
        )),
        4 if v.data.len() >= 4 => Some(Value::Dword(u32::from_le_bytes(v.data[..4].try_into().ok()?))),
        5 if v.data.len() >= 4 => Some(Value::Dword(u32::from_be_bytes(v.data[..4].try_into().ok()?))),
        11 if v.data.len() >= 8 => Some(Value::Qword(u64::from_le_bytes(v.data[..8].try_into().ok()?))),
        3 => Some(Value::Binary(v.data)),
        _ => None,
    }
}

/// An open hive.
pub struct Hive {
    regf: Regf,
    /// What was noticed reading it (a dirty hive read without its logs, ...).
    pub notes: Vec<String>,
}

/// Reads a whole file of the volume, refused above `max` bytes. `Ok(None)`: it is not there.
pub fn read_file(vol: &NtfsVolume<'_>, path: &str, max: u64) -> Result<Option<Vec<u8>>, String> {
    let Some(found) = vol.lookup(path).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    if found.is_dir {
        return Err("it is a folder".into());
    }
    let info = vol.stat(found.record).map_err(|e| e.to_string())?;
    let mut c = Contents::open(vol, &info, None, path).map_err(|e| e.to_string())?;
    if c.size() > max {
        return Err(format!("{} bytes, more than the {max} it may have", c.size()));
    }
    let mut buf = vec![0u8; c.size() as usize];
    c.read_at(0, &mut buf).map_err(|e| e.to_string())?;
    Ok(Some(buf))
}

impl Hive {
    /// Opens the hive at `path` on `vol`. `Ok(None)`: there is no such file. `Err`: why it
    /// cannot be read (damaged, hostile, too large).
    pub fn open(vol: &NtfsVolume<'_>, path: &str) -> Result<Option<Hive>, String> {
        let Some(bytes) = read_file(vol, path, MAX_HIVE)? else {
            return Ok(None);
        };
        let mut notes = Vec::new();
        let mut logs = Vec::new();
        if super::regf::dirty(&bytes) {
            for ext in ["LOG1", "LOG2"] {
                match read_file(vol, &format!("{path}.{ext}"), MAX_LOG) {
                    Ok(Some(log)) if !log.is_empty() => logs.push((format!("{path}.{ext}"), log)),
                    Ok(_) => {}
                    Err(e) => notes.push(format!("{path}.{ext} not read: {e}")),
                }
            }
        }
        let mut h = Hive::parse(path, bytes, logs)?;
        notes.append(&mut h.notes);
        h.notes = notes;
        Ok(Some(h))
    }

    /// Parses a hive's bytes, replaying its transaction logs when it is dirty. `path` names it
    /// in notes and errors.
    pub fn parse(path: &str, mut bytes: Vec<u8>, logs: Vec<(String, Vec<u8>)>) -> Result<Hive, String> {
        let mut notes = Vec::new();
        if super::regf::dirty(&bytes) {
            let names: Vec<String> = logs.iter().map(|(n, _)| n.clone()).collect();
            let logs: Vec<Vec<u8>> = logs.into_iter().map(|(_, l)| l).collect();
            // (The replay checks every entry before it changes a byte: on an error the hive is
            // as it was.)
            match super::regf::replay(&mut bytes, &logs, MAX_HIVE as usize) {
                Ok(0) if logs.is_empty() => notes.push(format!(
                    "{path} was not written back cleanly and has no transaction logs: read as it is, without its last changes"
                )),
                Ok(0) => notes.push(format!(
                    "{path} was not written back cleanly and its logs ({}) hold none of its last changes: read as it is",
                    names.join(", ")
                )),
                Ok(_) => {}
                Err(e) => {
                    notes.push(format!(
                        "{path}: its transaction logs ({}) could not be replayed ({e}): read without them",
                        names.join(", ")
                    ));
                }
            }
        }
        Ok(Hive {
            regf: Regf::new(bytes)?,
            notes,
        })
    }

    /// The value `name` of `key` (`ControlSet001\Control`), when both exist and it reads.
    pub fn value(&self, key: &str, name: &str) -> Option<Value> {
        let k = self.regf.key(key)?;
        content(self.regf.value(k, name)?)
    }

    /// The names of `key`'s subkeys.
    pub fn subkeys(&self, key: &str) -> Vec<String> {
        let Some(k) = self.regf.key(key) else {
            return Vec::new();
        };
        self.regf
            .subkeys(k)
            .into_iter()
            .filter_map(|s| self.regf.name(s))
            .collect()
    }

    /// The names and values of `key`'s values.
    pub fn values(&self, key: &str) -> Vec<(String, Value)> {
        let Some(k) = self.regf.key(key) else {
            return Vec::new();
        };
        self.regf
            .values(k, VALUES_BUDGET)
            .into_iter()
            .filter_map(|(n, v)| Some((n, content(v)?)))
            .collect()
    }

    /// Whether `key` exists.
    pub fn has_key(&self, key: &str) -> bool {
        self.regf.key(key).is_some()
    }
}
