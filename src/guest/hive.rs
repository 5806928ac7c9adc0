//! A registry hive read offline from the volume, with no mount and no Windows: the file through
//! the NTFS reader, parsed by the `notatin` crate, with its transaction logs (`.LOG1`, `.LOG2`)
//! applied when the hive is dirty. Every call into the parser runs inside a panic wall: a
//! damaged or hostile hive is a note, never a failure.

use std::io::Cursor;

use notatin::cell_key_node::CellKeyNode;
use notatin::cell_key_value::CellKeyValue;
use notatin::cell_value::CellValue;
use notatin::parser::Parser;
use notatin::parser_builder::ParserBuilder;

use crate::ntfs::NtfsVolume;
use crate::ntfs::wof::Contents;

/// A hive file larger than this is not read (SOFTWARE is rarely over 200 MB).
const MAX_HIVE: u64 = 1 << 30;

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

fn content(v: &CellKeyValue) -> Option<Value> {
    match v.get_content().0 {
        CellValue::String(s) => Some(Value::String(s)),
        CellValue::MultiString(v) => Some(Value::Strings(v)),
        CellValue::U32(d) => Some(Value::Dword(d)),
        CellValue::I32(d) => Some(Value::Dword(d as u32)),
        CellValue::U64(q) => Some(Value::Qword(q)),
        CellValue::I64(q) => Some(Value::Qword(q as u64)),
        CellValue::Binary(b) => Some(Value::Binary(b)),
        CellValue::None | CellValue::Error => None,
    }
}

/// An open hive.
pub struct Hive {
    parser: Parser,
    /// Which file it is (`\Windows\System32\config\SYSTEM`).
    pub path: String,
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
        return Err(format!("{} bytes, more than the {max} a hive may have", c.size()));
    }
    let mut buf = vec![0u8; c.size() as usize];
    c.read_at(0, &mut buf).map_err(|e| e.to_string())?;
    Ok(Some(buf))
}

/// Why a transaction log must not be handed to the parser: an entry that would grow the hive
/// past [`MAX_HIVE`] (the parser allocates what an entry's hive-bins size says). Entries are
/// `HvLE` blocks at 512-byte boundaries after the log's 512-byte base block.
fn log_problem(log: &[u8]) -> Option<String> {
    let mut at = 512;
    while at + 24 <= log.len() {
        if &log[at..at + 4] == b"HvLE" {
            let bins = u32::from_le_bytes([log[at + 16], log[at + 17], log[at + 18], log[at + 19]]);
            if u64::from(bins) > MAX_HIVE {
                return Some(format!(
                    "an entry at byte {at} grows the hive to {bins} bytes, more than the {MAX_HIVE} a hive may have"
                ));
            }
        }
        at += 512;
    }
    None
}

/// Whether a hive's base block says it was not written back cleanly (its two sequence
/// numbers differ): its last changes are in its logs.
fn dirty(bytes: &[u8]) -> bool {
    bytes.len() >= 12 && bytes[4..8] != bytes[8..12]
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
        if dirty(&bytes) {
            for ext in ["LOG1", "LOG2"] {
                match read_file(vol, &format!("{path}.{ext}"), MAX_HIVE) {
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

    /// Parses a hive's bytes, with its transaction logs' when it is dirty. `path` names it in
    /// notes and errors.
    pub fn parse(path: &str, bytes: Vec<u8>, logs: Vec<(String, Vec<u8>)>) -> Result<Hive, String> {
        if bytes.get(..4) != Some(b"regf") {
            return Err("not a registry hive (no \"regf\" signature)".into());
        }
        let mut notes = Vec::new();
        let logs: Vec<Vec<u8>> = logs
            .into_iter()
            .filter_map(|(name, log)| match log_problem(&log) {
                None => Some(log),
                Some(p) => {
                    notes.push(format!("{name} not applied: {p}"));
                    None
                }
            })
            .collect();
        if dirty(&bytes) && logs.is_empty() {
            notes.push(format!(
                "{path} was not written back cleanly and has no transaction logs: read as it is, without its last changes"
            ));
        }
        let with_logs = dirty(&bytes) && !logs.is_empty();
        let build = |logs: Vec<Vec<u8>>| {
            crate::panics::catch(|| {
                let mut b = ParserBuilder::from_file(Cursor::new(bytes.clone()));
                for l in logs {
                    b.with_transaction_log(Cursor::new(l));
                }
                b.build()
            })
            .map_err(|p| format!("the parser stopped ({p})"))
            .and_then(|r| r.map_err(|e| e.to_string()))
        };
        let parser = match build(if with_logs { logs } else { Vec::new() }) {
            Ok(p) => p,
            // Logs that cannot be applied: the base alone, said so.
            Err(e) if with_logs => {
                notes.push(format!(
                    "{path}: its transaction logs could not be applied ({e}): read without them"
                ));
                build(Vec::new())?
            }
            Err(e) => return Err(e),
        };
        Ok(Hive {
            parser,
            path: path.to_string(),
            notes,
        })
    }

    fn key(&mut self, key: &str) -> Option<CellKeyNode> {
        let parser = &mut self.parser;
        crate::panics::catch(|| parser.get_key(key, false).ok().flatten())
            .ok()
            .flatten()
    }

    /// The value `name` of `key` (`ControlSet001\Control`), when both exist and it reads.
    pub fn value(&mut self, key: &str, name: &str) -> Option<Value> {
        let k = self.key(key)?;
        crate::panics::catch(|| content(&k.get_value(name)?)).ok().flatten()
    }

    /// The names of `key`'s subkeys.
    pub fn subkeys(&mut self, key: &str) -> Vec<String> {
        let Some(mut k) = self.key(key) else {
            return Vec::new();
        };
        let parser = &mut self.parser;
        crate::panics::catch(|| k.read_sub_keys(parser).into_iter().map(|s| s.key_name).collect()).unwrap_or_default()
    }

    /// The names and values of `key`'s values.
    pub fn values(&mut self, key: &str) -> Vec<(String, Value)> {
        let Some(k) = self.key(key) else {
            return Vec::new();
        };
        crate::panics::catch(|| {
            k.value_iter()
                .filter_map(|v| Some((v.get_pretty_name(), content(&v)?)))
                .collect()
        })
        .unwrap_or_default()
    }

    /// Whether `key` exists.
    pub fn has_key(&mut self, key: &str) -> bool {
        self.key(key).is_some()
    }
}
