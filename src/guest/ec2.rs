//! Whether the Windows will boot on EC2, per family of instance types, from the drivers and
//! agents its registry has installed. The table, with the AWS and Microsoft pages it comes from,
//! is docs/ec2-readiness.md.
//!
//! - Nitro types (M5, C5, T3 and later) present EBS volumes as NVMe and the network as ENA:
//!   they need the ENA driver (service `ena`) and an NVMe driver (`AWSNVMe`, or Windows' own
//!   `stornvme`). They boot UEFI and BIOS images.
//! - Xen types (M4, C4, T2 and earlier) need the AWS PV drivers (`xenvbd` for storage,
//!   `xennet`/`xenvif` for the network), and boot BIOS images only.
//! - EC2 runs 64-bit x86 Windows only.
//! - A launch agent (EC2Launch v2, EC2Launch v1, EC2Config) sets the password and runs user
//!   data: without one an instance boots but cannot be logged into with a generated password.

use serde::{Deserialize, Serialize};

use super::hive::Hive;
use super::identity::Identity;
use crate::ntfs::NtfsVolume;

pub const NITRO_FIX: &str = "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/migrating-latest-types.html";
pub const XEN_FIX: &str = "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/xen-drivers-overview.html";
pub const AGENT_FIX: &str = "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2launch-v2-install.html";

/// One driver or agent looked for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Component {
    /// What it is (`ENA network driver`).
    pub name: String,
    /// The service key found under `Services`, when one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub installed: bool,
    /// The service's `Start` (0 boot, 1 system, 2 automatic, 3 on demand, 4 disabled: then it
    /// counts as not installed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u32>,
}

/// The verdict for one family of instance types.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    /// `nitro` or `xen`.
    pub family: String,
    pub boots: bool,
    /// What stops it, each with what to do.
    #[serde(default)]
    pub missing: Vec<String>,
    /// The AWS page that says how to fix it.
    pub fix: String,
}

/// EC2 readiness: the components found and a verdict per family.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Readiness {
    pub components: Vec<Component>,
    /// `EC2Launch v2`, `EC2Launch v1` or `EC2Config`; absent when none is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_agent: Option<String>,
    pub verdicts: Vec<Verdict>,
    /// Boots on at least one family.
    pub ready: bool,
}

impl Readiness {
    /// One line: `boots on Nitro types; not on Xen types (missing: ...)`.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .verdicts
            .iter()
            .map(|v| {
                let family = if v.family == "nitro" { "Nitro" } else { "Xen" };
                if v.boots {
                    format!("boots on {family} types")
                } else {
                    format!("not on {family} types ({}; see {})", v.missing.join("; "), v.fix)
                }
            })
            .collect();
        if self.launch_agent.is_none() {
            parts.push(format!(
                "no launch agent (EC2Launch v2, EC2Launch, EC2Config): no generated password or user data; see {AGENT_FIX}"
            ));
        }
        parts.join("; ")
    }
}

/// The first of `services` that exists under the control set's `Services`.
fn service(h: &Hive, cs: &str, name: &str, services: &[&str]) -> Component {
    for s in services {
        let key = format!("{cs}\\Services\\{s}");
        if h.has_key(&key) {
            let start = h.value(&key, "Start").and_then(|v| v.as_u32());
            return Component {
                name: name.into(),
                service: Some((*s).into()),
                // Start 4: disabled, as good as absent.
                installed: start != Some(4),
                start,
            };
        }
    }
    Component {
        name: name.into(),
        service: None,
        installed: false,
        start: None,
    }
}

/// Assesses the volume's Windows.
pub fn assess(h: &Hive, cs: &str, vol: &NtfsVolume<'_>, id: &Identity) -> Readiness {
    let ena = service(h, cs, "ENA network driver", &["ena"]);
    let nvme = service(h, cs, "NVMe storage driver", &["AWSNVMe", "stornvme"]);
    let pv_storage = service(h, cs, "AWS PV storage driver", &["xenvbd"]);
    let pv_net = service(h, cs, "AWS PV network driver", &["xennet", "xenvif"]);
    let v2 = service(h, cs, "EC2Launch v2", &["EC2Launch"]);
    let config = service(h, cs, "EC2Config", &["Ec2Config"]);
    let v1 = matches!(
        vol.lookup("\\ProgramData\\Amazon\\EC2-Windows\\Launch\\Module"),
        Ok(Some(_))
    );
    let launch_agent = if v2.installed {
        Some("EC2Launch v2")
    } else if v1 {
        Some("EC2Launch v1")
    } else if config.installed {
        Some("EC2Config")
    } else {
        None
    };
    let x64 = match id.architecture.as_deref() {
        Some(a) if !a.eq_ignore_ascii_case("AMD64") => {
            Some(format!("a {a} Windows: EC2 runs 64-bit x86 (AMD64) Windows only"))
        }
        _ => None,
    };
    let mut nitro = Vec::new();
    nitro.extend(x64.clone());
    if !ena.installed {
        nitro.push("the ENA network driver (service ena): install it before imaging".into());
    }
    if !nvme.installed {
        nitro.push("an NVMe driver (AWSNVMe, or Windows' stornvme): install AWS NVMe before imaging".into());
    }
    let mut xen = Vec::new();
    xen.extend(x64);
    if !pv_storage.installed || !pv_net.installed {
        xen.push("the AWS PV drivers (services xenvbd and xennet): install them before imaging".into());
    }
    if id.boot_mode.as_deref() == Some("uefi") {
        xen.push("a UEFI (GPT) disk: Xen types boot legacy BIOS only".into());
    }
    let verdicts = vec![
        Verdict {
            family: "nitro".into(),
            boots: nitro.is_empty(),
            missing: nitro,
            fix: NITRO_FIX.into(),
        },
        Verdict {
            family: "xen".into(),
            boots: xen.is_empty(),
            missing: xen,
            fix: XEN_FIX.into(),
        },
    ];
    let ready = verdicts.iter().any(|v| v.boots);
    let mut components = vec![ena, nvme, pv_storage, pv_net, v2, config];
    components.push(Component {
        name: "EC2Launch v1".into(),
        service: None,
        installed: v1,
        start: None,
    });
    Readiness {
        components,
        launch_agent: launch_agent.map(str::to_string),
        verdicts,
        ready,
    }
}
