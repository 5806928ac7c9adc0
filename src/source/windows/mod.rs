//! Reading live volumes and disks on Windows: unbuffered raw handles (every read aligned, see
//! [`super::device`]), their size and sector size from IOCTLs with fall-backs, the elevation
//! check, the DLL search path, and Volume Shadow Copy snapshots ([`vss`]).

pub mod vss;

use std::fs::File;
use std::os::windows::fs::OpenOptionsExt;
use std::os::windows::io::AsRawHandle;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};

use windows_sys::Win32::Foundation::{CloseHandle, GetLastError, HANDLE};
use windows_sys::Win32::Security::{GetTokenInformation, TOKEN_ELEVATION, TOKEN_QUERY, TokenElevation};
use windows_sys::Win32::Storage::FileSystem::{FILE_FLAG_NO_BUFFERING, FILE_SHARE_READ, FILE_SHARE_WRITE};
use windows_sys::Win32::System::IO::DeviceIoControl;
use windows_sys::Win32::System::Ioctl::{
    FSCTL_ALLOW_EXTENDED_DASD_IO, IOCTL_DISK_GET_LENGTH_INFO, IOCTL_STORAGE_QUERY_PROPERTY,
};
use windows_sys::Win32::System::LibraryLoader::{LOAD_LIBRARY_SEARCH_SYSTEM32, SetDefaultDllDirectories};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

use super::device::{Alignment, Device};
use super::{DiskFile, SourceError};

/// Makes System32 the only folder later `LoadLibrary` calls search (the process runs elevated:
/// a DLL planted beside the executable or in the current directory must never be loaded).
/// DLLs the executable imports are resolved before `main`; those that are not KnownDLLs are
/// named in docs/windows.md, and the executable belongs in an administrators-only folder.
pub fn restrict_dll_search() {
    // SAFETY: a documented flag; the call only changes the process's DLL search path.
    unsafe { SetDefaultDllDirectories(LOAD_LIBRARY_SEARCH_SYSTEM32) };
}

/// Raw volume, disk or shadow-copy handles opened for unbuffered reads: several, because the
/// I/O manager runs one request at a time on a synchronous handle, so one handle per reader
/// thread is what gives the device a queue depth above 1.
struct RawHandle {
    files: Vec<File>,
    /// Indexes of the handles no read is using.
    free: Mutex<Vec<usize>>,
    returned: Condvar,
    alignment: Alignment,
}

impl RawHandle {
    fn new(files: Vec<File>, alignment: Alignment) -> Self {
        let free = (0..files.len()).collect();
        RawHandle {
            files,
            free: Mutex::new(free),
            returned: Condvar::new(),
            alignment,
        }
    }
}

impl Device for RawHandle {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let i = {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(i) = free.pop() {
                    break i;
                }
                free = self.returned.wait(free).unwrap_or_else(|e| e.into_inner());
            }
        };
        let r = super::disk::read_exact_at(&self.files[i], buf, offset);
        self.free.lock().unwrap_or_else(|e| e.into_inner()).push(i);
        self.returned.notify_one();
        r
    }

    fn alignment(&self) -> Alignment {
        self.alignment
    }

    fn handles(&self) -> usize {
        self.files.len()
    }
}

/// Opens `path` for unbuffered reads, with reads allowed up to the last sectors of a volume,
/// past what the file system covers.
fn open_handle(path: &str) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE)
        .custom_flags(FILE_FLAG_NO_BUFFERING)
        .open(path)?;
    let _ = ioctl::<(), ()>(&file, FSCTL_ALLOW_EXTENDED_DASD_IO, None);
    Ok(file)
}

/// `DeviceIoControl` with a fixed-size input and output; None when the device does not answer.
fn ioctl<I, O: Default>(file: &File, code: u32, input: Option<&I>) -> Option<O> {
    let mut out = O::default();
    let mut returned = 0u32;
    let (inp, inlen) = match input {
        Some(i) => (i as *const I as *const core::ffi::c_void, size_of::<I>() as u32),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: the buffers are valid for the sizes given; the handle is open.
    let ok = unsafe {
        DeviceIoControl(
            file.as_raw_handle() as HANDLE,
            code,
            inp,
            inlen,
            &mut out as *mut O as *mut core::ffi::c_void,
            size_of::<O>() as u32,
            &mut returned,
            std::ptr::null_mut(),
        )
    };
    (ok != 0).then_some(out)
}

#[repr(C)]
#[derive(Default)]
struct LengthInfo {
    length: i64,
}

#[repr(C)]
#[derive(Default)]
struct PropertyQuery {
    property_id: i32,
    query_type: i32,
    additional: [u8; 4],
}

#[repr(C)]
#[derive(Default)]
struct AccessAlignment {
    version: u32,
    size: u32,
    bytes_per_cache_line: u32,
    bytes_offset_for_cache_alignment: u32,
    bytes_per_logical_sector: u32,
    bytes_per_physical_sector: u32,
    bytes_offset_for_sector_alignment: u32,
}

/// `StorageAccessAlignmentProperty`, `PropertyStandardQuery`.
const ACCESS_ALIGNMENT_QUERY: PropertyQuery = PropertyQuery {
    property_id: 6,
    query_type: 0,
    additional: [0; 4],
};

/// Opens a volume, disk or shadow-copy device (`\\.\C:`, `\\.\PhysicalDrive0`,
/// `\\?\GLOBALROOT\Device\HarddiskVolumeShadowCopy3`) for unbuffered reads. The size comes from
/// IOCTL_DISK_GET_LENGTH_INFO (seeking to the end of a volume handle does not give it), else the
/// file size, else the NTFS boot sector; the sector size from IOCTL_STORAGE_QUERY_PROPERTY
/// (access alignment), cross-checked with the boot sector.
pub fn open_raw(path: &str) -> Result<DiskFile, SourceError> {
    let name = PathBuf::from(path);
    let open_err = |source| SourceError::Open {
        path: name.clone(),
        source,
    };
    let file = open_handle(path).map_err(open_err)?;
    let queried =
        ioctl::<PropertyQuery, AccessAlignment>(&file, IOCTL_STORAGE_QUERY_PROPERTY, Some(&ACCESS_ALIGNMENT_QUERY))
            .map(|a| (a.bytes_per_logical_sector as u64, a.bytes_per_physical_sector as u64))
            .filter(|&(l, p)| {
                let ok = |s: u64| s.is_power_of_two() && (512..=65536).contains(&s);
                ok(l) && ok(p) && p >= l
            });
    // The first 4096 bytes (whole sectors on any disk) tell NTFS's own sector size (and, for a
    // volume without a size from the system, its size).
    let probe = RawHandle::new(vec![file], Alignment::unbuffered(4096));
    let mut first = super::device::AlignedBuf::new(4096, 4096);
    let boot = probe
        .read_at(first.as_mut_slice(), 0)
        .ok()
        .map(|_| first.as_mut_slice()[..512].to_vec());
    let ntfs = boot.as_deref().and_then(ntfs_geometry);
    // Offsets and lengths in logical sectors (a 512e disk's volume is a multiple of 512 only),
    // buffers aligned to the physical size. Without the system's answer (Wine answers no IOCTL): NTFS's sector size, else 512 (the
    // logical size of all but 4Kn disks), with page-aligned buffers.
    let alignment = match (queried, ntfs) {
        (Some((l, p)), _) => Alignment::for_sectors(l, p),
        (None, Some((bps, _))) => Alignment::for_sectors(bps, 4096),
        (None, None) => Alignment::for_sectors(512, 4096),
    };
    let mut files = probe.files;
    let size = ioctl::<(), LengthInfo>(&files[0], IOCTL_DISK_GET_LENGTH_INFO, None)
        .map(|l| l.length as u64)
        .filter(|&l| l > 0)
        .or_else(|| files[0].metadata().ok().map(|m| m.len()).filter(|&l| l > 0))
        .or(ntfs.map(|(_, size)| size))
        .ok_or_else(|| SourceError::Live {
            source_name: path.to_string(),
            message: "the system gives no size for this device and it does not start with an NTFS boot sector".into(),
        })?;
    // One handle per reader thread (as many as cores, at most 8); a handle that cannot be
    // opened only lowers the queue depth.
    let wanted = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8);
    while files.len() < wanted {
        match open_handle(path) {
            Ok(f) => files.push(f),
            Err(_) => break,
        }
    }
    let device = RawHandle::new(files, alignment);
    Ok(DiskFile::from_device(name, Box::new(device), size))
}

/// (bytes per sector, volume size) from an NTFS boot sector: the total-sectors field counts all
/// but the last sector (the backup boot sector).
fn ntfs_geometry(boot: &[u8]) -> Option<(u64, u64)> {
    if boot.len() < 512 || &boot[3..11] != b"NTFS    " {
        return None;
    }
    let bps = u16::from_le_bytes([boot[11], boot[12]]) as u64;
    let total = u64::from_le_bytes(boot[0x28..0x30].try_into().ok()?);
    if !bps.is_power_of_two() || bps < 512 {
        return None;
    }
    Some((bps, total.checked_add(1)?.checked_mul(bps)?))
}

/// Refuses to go on without an elevated token. Opening a volume or disk for raw reads, and
/// making a shadow copy, need an elevated member of Administrators. `SeBackupPrivilege` is not
/// enabled: it bypasses file ACLs only for opens with `FILE_FLAG_BACKUP_SEMANTICS`, and
/// winbundle opens no file that way (it reads the raw device), so it would grant nothing.
pub fn require_elevation(source_name: &str) -> Result<(), SourceError> {
    let not = |detail: String| SourceError::NotElevated {
        source_name: source_name.to_string(),
        detail,
    };
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: out-pointers to locals; the token handle is closed below.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
        return Err(not(format!(" (cannot open the process token: error {})", unsafe {
            GetLastError()
        })));
    }
    let mut elevation = TOKEN_ELEVATION { TokenIsElevated: 0 };
    let mut len = 0u32;
    // SAFETY: TOKEN_ELEVATION is the documented output of TokenElevation.
    let ok = unsafe {
        GetTokenInformation(
            token,
            TokenElevation,
            &mut elevation as *mut _ as *mut core::ffi::c_void,
            size_of::<TOKEN_ELEVATION>() as u32,
            &mut len,
        )
    };
    // SAFETY: the handle was opened above.
    unsafe { CloseHandle(token) };
    if ok == 0 || elevation.TokenIsElevated == 0 {
        return Err(not(String::new()));
    }
    Ok(())
}
