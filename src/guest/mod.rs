//! The Windows installed on the root volume, read from its own registry with no mount: which
//! Windows it is ([`identity`]), whether it will boot on EC2's instance types ([`ec2`]), and
//! what Windows itself leaves out of its snapshots: the page files its registry names and the
//! storage of its earlier shadow copies ([`leave_out`]), and what its own snapshot and backup
//! lists match ([`lists`]). The hives are read by [`hive`] over [`regf`].
//!
//! Nothing here fails a bundle: a missing, damaged or hostile hive is a note, and the facts it
//! would have given are absent.

pub mod ec2;
pub mod hive;
pub mod identity;
pub mod leave_out;
pub mod lists;
pub mod regf;

use serde::{Deserialize, Serialize};

use crate::ntfs::NtfsVolume;
use crate::source::partition::TableKind;
use hive::Hive;

pub const SYSTEM_HIVE: &str = "\\Windows\\System32\\config\\SYSTEM";
pub const SOFTWARE_HIVE: &str = "\\Windows\\System32\\config\\SOFTWARE";

/// What the volume's registry says; in `inspect` and in the manifest (`windows`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WindowsFacts {
    #[serde(flatten)]
    pub identity: identity::Identity,
    /// The control set `Select\Current` names (`ControlSet001` is 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_set: Option<u32>,
    /// Page files the registry names, on this volume or not.
    #[serde(default)]
    pub page_files: Vec<leave_out::PageFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2: Option<ec2::Readiness>,
    /// `FilesNotToSnapshot` and `FilesNotToBackup`, each pattern with what it matches here.
    #[serde(default)]
    pub lists: Vec<lists::ListEntry>,
    /// What could not be read, and what was read with a caveat.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// The boot mode the disk layout implies: a GPT disk boots with UEFI, an MBR disk with BIOS; a
/// bare volume says nothing.
pub fn boot_mode(table: &TableKind) -> Option<&'static str> {
    match table {
        TableKind::Gpt => Some("uefi"),
        TableKind::Mbr => Some("bios"),
        TableKind::None => None,
    }
}

/// Opens one hive, a note when it cannot be read.
fn open(vol: &NtfsVolume<'_>, path: &str, notes: &mut Vec<String>) -> Option<Hive> {
    match Hive::open(vol, path) {
        Ok(Some(mut h)) => {
            notes.append(&mut h.notes);
            Some(h)
        }
        Ok(None) => {
            notes.push(format!("{path} is not on the volume"));
            None
        }
        Err(e) => {
            notes.push(format!("{path} not read: {e}"));
            None
        }
    }
}

/// Reads the facts of the Windows on `vol`. `None`: the volume holds no Windows (no
/// `\Windows\System32\config`), as a data volume or a test fixture.
pub fn read(vol: &NtfsVolume<'_>, table: &TableKind) -> Option<WindowsFacts> {
    if !matches!(vol.lookup("\\Windows\\System32\\config"), Ok(Some(_))) {
        return None;
    }
    let mut f = WindowsFacts::default();
    let system = open(vol, SYSTEM_HIVE, &mut f.notes);
    let software = open(vol, SOFTWARE_HIVE, &mut f.notes);
    let cs = system.as_ref().and_then(|h| {
        let n = h.value("Select", "Current").and_then(|v| v.as_u32())?;
        let key = format!("ControlSet{n:03}");
        h.has_key(&key).then_some((n, key))
    });
    if system.is_some() && cs.is_none() {
        f.notes.push(format!(
            "{SYSTEM_HIVE}: Select\\Current names no control set that exists: services, page files and the computer name are not known"
        ));
    }
    f.control_set = cs.as_ref().map(|c| c.0);
    let cs_key = cs.map(|c| c.1);
    f.identity = identity::read(system.as_ref(), software.as_ref(), cs_key.as_deref(), boot_mode(table));
    if let (Some(h), Some(cs)) = (system.as_ref(), cs_key.as_deref()) {
        f.page_files = leave_out::page_files(h, cs, vol, f.identity.system_drive.as_deref());
        f.ec2 = Some(ec2::assess(h, cs, vol, &f.identity));
        let context = lists::Context::read(software.as_ref(), f.identity.system_drive.as_deref());
        f.lists = lists::read(h, cs, &context, vol);
    }
    Some(f)
}
