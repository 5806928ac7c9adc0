//! `extract --acls`: gives each extracted file and folder the security descriptor (owner,
//! group, permissions, audit entries) it has on the volume.
//!
//! On Windows through `SetFileSecurityW`, with `SeRestorePrivilege` (any owner) and
//! `SeSecurityPrivilege` (audit entries) enabled when the token holds them; without them the
//! permissions are applied and what was not is said once. On Linux the one file system that
//! holds an NTFS descriptor is an NTFS volume mounted by ntfs-3g, through its
//! `system.ntfs_acl` extended attribute; any other target is refused before anything is written.

use std::path::Path;

use winbundle::Error;
use winbundle::ntfs::NtfsVolume;
use winbundle::ntfs::catalog::FileInfo;
use winbundle::ntfs::security::Descriptors;

/// What applies descriptors for one extraction.
pub struct AclWriter {
    all: Descriptors,
    /// Owners and groups can be set to anyone (SeRestorePrivilege); always true on Linux.
    #[cfg_attr(not(windows), allow(dead_code))]
    any_owner: bool,
    /// Audit lists can be set (SeSecurityPrivilege); always true on Linux.
    #[cfg_attr(not(windows), allow(dead_code))]
    audit: bool,
    /// Files whose owner and group were left as they are (no privilege for them).
    owners_not_set: u64,
    /// Files whose audit list was left out (no privilege for it).
    audits_not_set: u64,
}

impl AclWriter {
    /// Reads the volume's descriptors and checks that `output` can hold them.
    pub fn open(vol: &NtfsVolume<'_>, output: &Path) -> Result<Self, Error> {
        check_target(output)?;
        let all = vol.security_descriptors().map_err(Error::ntfs_at(0))?;
        #[cfg(windows)]
        let (any_owner, audit) = (
            windows::enable_privilege("SeRestorePrivilege"),
            windows::enable_privilege("SeSecurityPrivilege"),
        );
        #[cfg(not(windows))]
        let (any_owner, audit) = (true, true);
        tracing::debug!(
            descriptors = all.len(),
            any_owner,
            audit,
            "security descriptors read from $Secure"
        );
        Ok(AclWriter {
            all,
            any_owner,
            audit,
            owners_not_set: 0,
            audits_not_set: 0,
        })
    }

    /// Gives `dest` the descriptor of `info`'s file. `Err`: why it could not.
    pub fn apply(&mut self, vol: &NtfsVolume<'_>, info: &FileInfo, dest: &Path) -> Result<(), String> {
        let d = vol
            .descriptor_of(info.record, info.security_id, &self.all)
            .map_err(|e| format!("{e}; run `chkdsk /f` on the volume"))?
            .ok_or("it has no security descriptor on the volume")?;
        #[cfg(windows)]
        {
            let (owner_skipped, audit_skipped) = windows::set(dest, &d, self.any_owner, self.audit)?;
            self.owners_not_set += u64::from(owner_skipped);
            self.audits_not_set += u64::from(audit_skipped);
        }
        #[cfg(target_os = "linux")]
        linux::set(dest, d.bytes()).map_err(|e| format!("system.ntfs_acl not written: {e}"))?;
        #[cfg(not(any(windows, target_os = "linux")))]
        let _ = (d, dest);
        Ok(())
    }

    /// What was not applied to every file, one line each.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.owners_not_set > 0 {
            notes.push(format!(
                "the owner and group of {} files were not set (that takes SeRestorePrivilege): run from an elevated prompt to keep them; their permissions were applied",
                self.owners_not_set
            ));
        }
        if self.audits_not_set > 0 {
            notes.push(format!(
                "the audit entries (SACL) of {} files were not set (that takes SeSecurityPrivilege): run from an elevated prompt to keep them",
                self.audits_not_set
            ));
        }
        notes
    }
}

/// Refuses a target that cannot hold NTFS descriptors, before anything is extracted.
#[cfg(target_os = "linux")]
fn check_target(output: &Path) -> Result<(), Error> {
    linux::get(output).map_err(|e| Error::InvalidParameter {
        parameter: "--acls",
        message: format!(
            "{} cannot hold NTFS security descriptors (system.ntfs_acl: {e}): on Linux only an NTFS volume mounted by ntfs-3g can; extract onto one, or leave out --acls",
            output.display()
        ),
    })
}

/// Windows holds them on any NTFS target (another file system refuses each, listed).
#[cfg(windows)]
fn check_target(_output: &Path) -> Result<(), Error> {
    Ok(())
}

#[cfg(not(any(windows, target_os = "linux")))]
fn check_target(output: &Path) -> Result<(), Error> {
    Err(Error::InvalidParameter {
        parameter: "--acls",
        message: format!(
            "{}: security descriptors can be applied on Windows, and on Linux to an NTFS volume mounted by ntfs-3g; leave out --acls here",
            output.display()
        ),
    })
}

#[cfg(target_os = "linux")]
mod linux {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    const NAME: &[u8] = b"system.ntfs_acl\0";

    fn c_path(path: &Path) -> std::io::Result<CString> {
        CString::new(path.as_os_str().as_bytes()).map_err(|_| std::io::Error::other("a NUL in the path"))
    }

    /// Reads the attribute's size: ntfs-3g answers for every file it holds.
    pub fn get(path: &Path) -> std::io::Result<()> {
        let p = c_path(path)?;
        // SAFETY: NUL-terminated path and name; a null buffer of size 0 asks for the size.
        let n = unsafe { libc::getxattr(p.as_ptr(), NAME.as_ptr().cast(), std::ptr::null_mut(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn set(path: &Path, descriptor: &[u8]) -> std::io::Result<()> {
        let p = c_path(path)?;
        // SAFETY: NUL-terminated path and name; the value's pointer and length are one slice.
        let r = unsafe {
            libc::setxattr(
                p.as_ptr(),
                NAME.as_ptr().cast(),
                descriptor.as_ptr().cast(),
                descriptor.len(),
                0,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(windows)]
mod windows {
    use std::os::windows::ffi::OsStrExt;
    use std::path::Path;

    use windows_sys::Win32::Foundation::{CloseHandle, ERROR_NOT_ALL_ASSIGNED, GetLastError, HANDLE, LUID};
    use windows_sys::Win32::Security::{
        AdjustTokenPrivileges, DACL_SECURITY_INFORMATION, GROUP_SECURITY_INFORMATION, LABEL_SECURITY_INFORMATION,
        LUID_AND_ATTRIBUTES, LookupPrivilegeValueW, OWNER_SECURITY_INFORMATION, SACL_SECURITY_INFORMATION,
        SE_PRIVILEGE_ENABLED, SetFileSecurityW, TOKEN_ADJUST_PRIVILEGES, TOKEN_PRIVILEGES, TOKEN_QUERY,
    };
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

    use winbundle::ntfs::security::Descriptor;

    fn wide(s: &std::ffi::OsStr) -> Vec<u16> {
        s.encode_wide().chain([0]).collect()
    }

    /// Enables `name` in this process's token; false when the token does not hold it.
    pub fn enable_privilege(name: &str) -> bool {
        let name = wide(std::ffi::OsStr::new(name));
        let mut token: HANDLE = std::ptr::null_mut();
        // SAFETY: out-pointers to locals; the handle is closed below.
        unsafe {
            if OpenProcessToken(GetCurrentProcess(), TOKEN_ADJUST_PRIVILEGES | TOKEN_QUERY, &mut token) == 0 {
                return false;
            }
            let mut luid = LUID {
                LowPart: 0,
                HighPart: 0,
            };
            let mut ok = LookupPrivilegeValueW(std::ptr::null(), name.as_ptr(), &mut luid) != 0;
            if ok {
                let tp = TOKEN_PRIVILEGES {
                    PrivilegeCount: 1,
                    Privileges: [LUID_AND_ATTRIBUTES {
                        Luid: luid,
                        Attributes: SE_PRIVILEGE_ENABLED,
                    }],
                };
                ok = AdjustTokenPrivileges(token, 0, &tp, 0, std::ptr::null_mut(), std::ptr::null_mut()) != 0
                    && GetLastError() != ERROR_NOT_ALL_ASSIGNED;
            }
            CloseHandle(token);
            ok
        }
    }

    /// Sets `d` on `path`. Returns whether the owner and group, and the audit list, had to be
    /// left out for want of a privilege.
    pub fn set(path: &Path, d: &Descriptor, any_owner: bool, audit: bool) -> Result<(bool, bool), String> {
        // A `\\?\` path: beyond MAX_PATH too, as std::fs wrote the file.
        let abs = std::path::absolute(path).map_err(|e| e.to_string())?;
        let text = abs.as_os_str().to_string_lossy();
        let long = if text.starts_with(r"\\") {
            abs.as_os_str().to_owned()
        } else {
            let mut s = std::ffi::OsString::from(r"\\?\");
            s.push(abs.as_os_str());
            s
        };
        let p = wide(&long);
        let mut what = DACL_SECURITY_INFORMATION;
        if d.has_owner() {
            what |= OWNER_SECURITY_INFORMATION;
        }
        if d.has_group() {
            what |= GROUP_SECURITY_INFORMATION;
        }
        // Mandatory labels (integrity levels) live in the SACL but need no privilege; the
        // audit entries there need SeSecurityPrivilege.
        if d.has_sacl() {
            what |= LABEL_SECURITY_INFORMATION;
        }
        let audit_skipped = d.has_audit_entries() && !audit;
        if d.has_audit_entries() && audit {
            what |= SACL_SECURITY_INFORMATION;
        }
        let set = |what| {
            // SAFETY: a NUL-terminated path, and a checked self-relative descriptor that lives
            // across the call.
            if unsafe { SetFileSecurityW(p.as_ptr(), what, d.bytes().as_ptr() as *mut _) } == 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        match set(what) {
            Ok(()) => Ok((false, audit_skipped)),
            // Without SeRestorePrivilege an owner other than oneself is refused
            // (ERROR_INVALID_OWNER, or access denied): without the owner, then without the
            // group too.
            Err(e) if !any_owner && matches!(e.raw_os_error(), Some(1307 | 5)) => {
                let no_owner = what & !OWNER_SECURITY_INFORMATION;
                if set(no_owner).is_ok() {
                    return Ok((true, audit_skipped));
                }
                set(no_owner & !GROUP_SECURITY_INFORMATION).map_err(|e| format!("SetFileSecurityW: {e}"))?;
                Ok((true, audit_skipped))
            }
            Err(e) => Err(format!("SetFileSecurityW: {e}")),
        }
    }
}
