//! Which Windows it is: from `SOFTWARE\Microsoft\Windows NT\CurrentVersion` (product, edition,
//! version, build, installation type, system root) and the current control set of `SYSTEM`
//! (architecture, computer name, last shutdown).

use serde::{Deserialize, Serialize};

use super::hive::{Hive, Value};

const CURRENT_VERSION: &str = "Microsoft\\Windows NT\\CurrentVersion";

/// The facts that name a Windows installation. Each is absent when the registry does not say.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Identity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
    /// `EditionID`: `ServerDatacenter`, `Professional`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edition: Option<String>,
    /// `DisplayVersion` (`22H2`), else `ReleaseId` (`1809`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_version: Option<String>,
    /// `CurrentBuild` (`20348`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    /// Update build revision: the patch level (`20348.2227`'s 2227).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ubr: Option<u32>,
    /// `Server`, `Server Core` or `Client`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installation_type: Option<String>,
    /// `PROCESSOR_ARCHITECTURE` of the system environment: `AMD64`, `x86`, `ARM64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computer_name: Option<String>,
    /// When it last shut down (RFC 3339, UTC): a volume imaged after a clean shutdown, or a
    /// live one's previous shutdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_shutdown: Option<String>,
    /// `uefi` (GPT disk) or `bios` (MBR disk); absent for a bare volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_mode: Option<String>,
    /// The drive letter Windows runs from (`C:`), from `SystemRoot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_drive: Option<String>,
}

impl Identity {
    /// One line: `Windows Server 2022 Datacenter (ServerDatacenter), 21H2, build 20348.2227, Server, AMD64`.
    pub fn summary(&self) -> String {
        let mut parts = vec![match (&self.product_name, &self.edition) {
            (Some(p), Some(e)) => format!("{p} ({e})"),
            (Some(p), None) => p.clone(),
            (None, Some(e)) => e.clone(),
            (None, None) => "Windows (product not named)".into(),
        }];
        if let Some(v) = &self.display_version {
            parts.push(v.clone());
        }
        if let Some(b) = &self.build {
            parts.push(match self.ubr {
                Some(u) => format!("build {b}.{u}"),
                None => format!("build {b}"),
            });
        }
        parts.extend(self.installation_type.clone());
        parts.extend(self.architecture.clone());
        parts.join(", ")
    }
}

fn string(h: &Hive, key: &str, name: &str) -> Option<String> {
    match h.value(key, name)? {
        Value::String(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// FILETIME bytes (`ShutdownTime` is REG_BINARY) as RFC 3339.
fn shutdown_time(v: Value) -> Option<String> {
    let ft = match v {
        Value::Binary(b) if b.len() == 8 => u64::from_le_bytes(b.try_into().ok()?),
        Value::Qword(q) => q,
        _ => return None,
    };
    (ft != 0).then(|| crate::ntfs::catalog::filetime_rfc3339(ft))
}

/// Reads the identity from whichever hives could be opened.
pub fn read(system: Option<&Hive>, software: Option<&Hive>, cs: Option<&str>, boot_mode: Option<&str>) -> Identity {
    let mut id = Identity {
        boot_mode: boot_mode.map(str::to_string),
        ..Identity::default()
    };
    if let Some(h) = software {
        id.product_name = string(h, CURRENT_VERSION, "ProductName");
        id.edition = string(h, CURRENT_VERSION, "EditionID");
        id.display_version =
            string(h, CURRENT_VERSION, "DisplayVersion").or_else(|| string(h, CURRENT_VERSION, "ReleaseId"));
        id.build =
            string(h, CURRENT_VERSION, "CurrentBuild").or_else(|| string(h, CURRENT_VERSION, "CurrentBuildNumber"));
        id.ubr = h.value(CURRENT_VERSION, "UBR").and_then(|v| v.as_u32());
        id.installation_type = string(h, CURRENT_VERSION, "InstallationType");
        id.system_drive = string(h, CURRENT_VERSION, "SystemRoot").and_then(|r| {
            let b = r.as_bytes();
            (b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':').then(|| r[..2].to_ascii_uppercase())
        });
    }
    if let (Some(h), Some(cs)) = (system, cs) {
        id.architecture = string(
            h,
            &format!("{cs}\\Control\\Session Manager\\Environment"),
            "PROCESSOR_ARCHITECTURE",
        );
        id.computer_name = string(h, &format!("{cs}\\Control\\ComputerName\\ComputerName"), "ComputerName");
        id.last_shutdown = h
            .value(&format!("{cs}\\Control\\Windows"), "ShutdownTime")
            .and_then(shutdown_time);
    }
    id
}
