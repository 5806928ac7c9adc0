//! Volume Shadow Copy: a requester that snapshots one volume for a backup and deletes the
//! snapshot afterwards. `IVssBackupComponents` is not in the Win32 metadata (vsbackup.h uses C++
//! class syntax), so its vtable is declared here, slot by slot, in the order of the SDK's
//! vsbackup.h (and mingw-w64's C declaration). vssapi.dll is loaded at run time, so the binary
//! starts on systems without it (Wine's is a stub that answers E_NOTIMPL).
//!
//! The call order follows Microsoft's "simple shadow copy creation for backup": initialise,
//! backup context, copy backup (writers keep their history), gather writer metadata, start a
//! set, add the volume, prepare, make the snapshot, read its device name. One deadline covers
//! the whole creation. Any failure after PrepareForBackup aborts the backup; a failed
//! DoSnapshotSet reports the failing writers by name and state.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::SysFreeString;
use windows_sys::Win32::System::Com::{CoInitializeEx, CoInitializeSecurity, CoUninitialize};
use windows_sys::Win32::System::LibraryLoader::{GetProcAddress, LOAD_LIBRARY_SEARCH_SYSTEM32, LoadLibraryExW};
use windows_sys::core::{BSTR, GUID, HRESULT};

use crate::source::snapshot::{
    AsyncOp, CANCELLED, OpenBackup, Snapshot, SnapshotError, Snapshotter, WriterStatus, wait_async, writers_warning,
};

type Fp = usize; // a slot this requester never calls

#[repr(C)]
struct BackupVtbl {
    _query_interface: Fp,
    _add_ref: Fp,
    release: unsafe extern "system" fn(*mut c_void) -> u32,
    _get_writer_components_count: Fp,
    _get_writer_components: Fp,
    initialize_for_backup: unsafe extern "system" fn(*mut c_void, BSTR) -> HRESULT,
    set_backup_state: unsafe extern "system" fn(*mut c_void, bool, bool, i32, bool) -> HRESULT,
    _initialize_for_restore: Fp,
    _set_restore_state: Fp,
    gather_writer_metadata: unsafe extern "system" fn(*mut c_void, *mut *mut c_void) -> HRESULT,
    _get_writer_metadata_count: Fp,
    _get_writer_metadata: Fp,
    _free_writer_metadata: Fp,
    _add_component: Fp,
    prepare_for_backup: unsafe extern "system" fn(*mut c_void, *mut *mut c_void) -> HRESULT,
    abort_backup: unsafe extern "system" fn(*mut c_void) -> HRESULT,
    gather_writer_status: unsafe extern "system" fn(*mut c_void, *mut *mut c_void) -> HRESULT,
    get_writer_status_count: unsafe extern "system" fn(*mut c_void, *mut u32) -> HRESULT,
    free_writer_status: unsafe extern "system" fn(*mut c_void) -> HRESULT,
    get_writer_status:
        unsafe extern "system" fn(*mut c_void, u32, *mut GUID, *mut GUID, *mut BSTR, *mut i32, *mut HRESULT) -> HRESULT,
    _set_backup_succeeded: Fp,
    _set_backup_options: Fp,
    _set_selected_for_restore: Fp,
    _set_restore_options: Fp,
    _set_additional_restores: Fp,
    _set_previous_backup_stamp: Fp,
    _save_as_xml: Fp,
    backup_complete: unsafe extern "system" fn(*mut c_void, *mut *mut c_void) -> HRESULT,
    _add_alternative_location_mapping: Fp,
    _add_restore_subcomponent: Fp,
    _set_file_restore_status: Fp,
    _add_new_target: Fp,
    _set_ranges_file_path: Fp,
    _pre_restore: Fp,
    _post_restore: Fp,
    set_context: unsafe extern "system" fn(*mut c_void, i32) -> HRESULT,
    start_snapshot_set: unsafe extern "system" fn(*mut c_void, *mut GUID) -> HRESULT,
    add_to_snapshot_set: unsafe extern "system" fn(*mut c_void, *const u16, GUID, *mut GUID) -> HRESULT,
    do_snapshot_set: unsafe extern "system" fn(*mut c_void, *mut *mut c_void) -> HRESULT,
    delete_snapshots: unsafe extern "system" fn(*mut c_void, GUID, i32, i32, *mut i32, *mut GUID) -> HRESULT,
    _import_snapshots: Fp,
    _break_snapshot_set: Fp,
    get_snapshot_properties: unsafe extern "system" fn(*mut c_void, GUID, *mut SnapshotProp) -> HRESULT,
}

#[repr(C)]
struct AsyncVtbl {
    _query_interface: Fp,
    _add_ref: Fp,
    release: unsafe extern "system" fn(*mut c_void) -> u32,
    cancel: unsafe extern "system" fn(*mut c_void) -> HRESULT,
    wait: unsafe extern "system" fn(*mut c_void, u32) -> HRESULT,
    query_status: unsafe extern "system" fn(*mut c_void, *mut HRESULT, *mut i32) -> HRESULT,
}

/// VSS_SNAPSHOT_PROP (x64: 128 bytes, the device name at 40).
#[repr(C)]
struct SnapshotProp {
    snapshot_id: GUID,
    snapshot_set_id: GUID,
    snapshots_count: i32,
    snapshot_device_object: *mut u16,
    original_volume_name: *mut u16,
    originating_machine: *mut u16,
    service_machine: *mut u16,
    exposed_name: *mut u16,
    exposed_path: *mut u16,
    provider_id: GUID,
    snapshot_attributes: i32,
    creation_timestamp: i64,
    status: i32,
}

const VSS_CTX_BACKUP: i32 = 0;
const VSS_BT_COPY: i32 = 5;
const VSS_OBJECT_SNAPSHOT: i32 = 3;
const VSS_E_SNAPSHOT_SET_IN_PROGRESS: HRESULT = 0x8004_2316_u32 as i32;
const RPC_E_TOO_LATE: HRESULT = 0x8001_0119_u32 as i32;
const GUID_NULL: GUID = GUID::from_u128(0);

const WRITER_STATES: [&str; 16] = [
    "unknown",
    "stable",
    "waiting for freeze",
    "waiting for thaw",
    "waiting for post-snapshot",
    "waiting for backup complete",
    "failed at identify",
    "failed at prepare backup",
    "failed at prepare snapshot",
    "failed at freeze",
    "failed at thaw",
    "failed at post-snapshot",
    "failed at backup complete",
    "failed at pre-restore",
    "failed at post-restore",
    "failed at backup shutdown",
];

type CreateFn = unsafe extern "system" fn(*mut *mut c_void) -> HRESULT;
type FreePropFn = unsafe extern "system" fn(*mut SnapshotProp);

fn failed(step: &'static str, hr: HRESULT, message: impl Into<String>) -> SnapshotError {
    SnapshotError {
        step,
        hresult: Some(hr as u32),
        message: message.into(),
    }
}

fn check(step: &'static str, hr: HRESULT) -> Result<(), SnapshotError> {
    if hr < 0 {
        Err(failed(step, hr, "the call was refused"))
    } else {
        Ok(())
    }
}

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

/// A NUL-terminated UTF-16 string.
///
/// # Safety
/// `p` is null or points to a NUL-terminated UTF-16 string.
unsafe fn from_wide(p: *const u16) -> String {
    if p.is_null() {
        return String::new();
    }
    let mut n = 0;
    // SAFETY: per the contract, the string ends with a NUL.
    while unsafe { *p.add(n) } != 0 {
        n += 1;
    }
    // SAFETY: n elements were just read.
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(p, n) })
}

struct Api {
    create: CreateFn,
    free_prop: FreePropFn,
}

fn load() -> Result<Api, SnapshotError> {
    let name = wide("vssapi.dll");
    // From System32 only: vssapi.dll is not a KnownDLL, so a bare name would first be looked
    // for in the executable's own folder, and an elevated process must never load a DLL
    // planted there.
    // SAFETY: a NUL-terminated name; the library stays loaded for the process.
    let lib = unsafe { LoadLibraryExW(name.as_ptr(), std::ptr::null_mut(), LOAD_LIBRARY_SEARCH_SYSTEM32) };
    if lib.is_null() {
        return Err(failed(
            "LoadLibraryEx(vssapi.dll, System32 only)",
            0x8007_007E_u32 as i32,
            "vssapi.dll is missing from System32",
        ));
    }
    // SAFETY: NUL-terminated names; the pointers are these functions' documented signatures.
    unsafe {
        let create = GetProcAddress(lib, c"CreateVssBackupComponentsInternal".as_ptr().cast());
        let free = GetProcAddress(lib, c"VssFreeSnapshotPropertiesInternal".as_ptr().cast());
        match (create, free) {
            (Some(c), Some(f)) => Ok(Api {
                create: std::mem::transmute::<unsafe extern "system" fn() -> isize, CreateFn>(c),
                free_prop: std::mem::transmute::<unsafe extern "system" fn() -> isize, FreePropFn>(f),
            }),
            _ => Err(failed(
                "CreateVssBackupComponents",
                0x8000_4001_u32 as i32,
                "vssapi.dll lacks CreateVssBackupComponentsInternal or VssFreeSnapshotPropertiesInternal",
            )),
        }
    }
}

/// A live IVssAsync, released when dropped.
struct ComAsync {
    op: *mut c_void,
}

impl ComAsync {
    fn vtbl(&self) -> &'static AsyncVtbl {
        // SAFETY: `op` is a live IVssAsync; its first field is the vtable pointer.
        unsafe { &**(self.op as *const *const AsyncVtbl) }
    }
}

impl AsyncOp for ComAsync {
    fn wait(&self, ms: u32) -> i32 {
        // SAFETY: live object.
        unsafe { (self.vtbl().wait)(self.op, ms) }
    }
    fn query_status(&self) -> (i32, i32) {
        let mut status: HRESULT = 0;
        // SAFETY: live object, out-pointer to a local; the reserved argument may be null.
        let hr = unsafe { (self.vtbl().query_status)(self.op, &mut status, std::ptr::null_mut()) };
        (hr, status)
    }
    fn cancel(&self) -> i32 {
        // SAFETY: live object.
        unsafe { (self.vtbl().cancel)(self.op) }
    }
}

impl Drop for ComAsync {
    fn drop(&mut self) {
        // SAFETY: we own this reference.
        unsafe { (self.vtbl().release)(self.op) };
    }
}

/// This thread's membership of the multithreaded apartment: CoUninitialize pairs each
/// successful CoInitializeEx (S_OK or S_FALSE) on the thread that made it (`serve` runs many
/// bundles, each on its own thread).
struct Com {
    initialised: bool,
    thread: std::thread::ThreadId,
}

impl Com {
    /// Joins the multithreaded apartment. RPC_E_CHANGED_MODE (the thread is already
    /// single-threaded) leaves COM usable and is not paired.
    fn init() -> Self {
        // SAFETY: plain COM initialisation.
        let hr = unsafe {
            CoInitializeEx(std::ptr::null(), 0 /* COINIT_MULTITHREADED */)
        };
        Com {
            initialised: hr >= 0,
            thread: std::thread::current().id(),
        }
    }
}

impl Drop for Com {
    fn drop(&mut self) {
        // Only on the thread that initialised: elsewhere it would undo another's init.
        if self.initialised && std::thread::current().id() == self.thread {
            // SAFETY: pairs the successful CoInitializeEx above, on its thread.
            unsafe { CoUninitialize() };
        }
    }
}

/// The COM object and where the backup stands. Fields drop after `drop` has released the
/// object: the open-backup count, then this thread's COM membership.
struct Components {
    this: *mut c_void,
    prepared: bool,
    _open: OpenBackup,
    _com: Com,
}

impl Components {
    fn vtbl(&self) -> &'static BackupVtbl {
        // SAFETY: `this` is a live IVssBackupComponents; its first field is the vtable pointer,
        // and a COM vtable is static data of the DLL, which stays loaded.
        unsafe { &**(self.this as *const *const BackupVtbl) }
    }

    /// Waits for an async operation until `deadline`, in slices so that `cancel` stops it (see
    /// [`wait_async`]).
    fn wait(
        &self,
        step: &'static str,
        hr: HRESULT,
        op: *mut c_void,
        deadline: Instant,
        cancel: &AtomicBool,
    ) -> Result<(), SnapshotError> {
        let op = (!op.is_null()).then_some(ComAsync { op });
        check(step, hr)?;
        let Some(op) = op else {
            return Err(failed(step, hr, "no asynchronous operation was returned"));
        };
        wait_async(step, &op, deadline, cancel)
    }

    /// Every writer's state now (GatherWriterStatus, then each GetWriterStatus).
    fn writer_statuses(&self, deadline: Instant, cancel: &AtomicBool) -> Result<Vec<WriterStatus>, SnapshotError> {
        let v = self.vtbl();
        let mut op = std::ptr::null_mut();
        // SAFETY: live object, out-pointers to locals, BSTRs freed after reading, the status
        // array freed with FreeWriterStatus.
        unsafe {
            let hr = (v.gather_writer_status)(self.this, &mut op);
            self.wait("GatherWriterStatus", hr, op, deadline, cancel)?;
            let mut count = 0u32;
            check(
                "GetWriterStatusCount",
                (v.get_writer_status_count)(self.this, &mut count),
            )?;
            let mut all = Vec::new();
            for i in 0..count {
                let (mut inst, mut id) = (GUID_NULL, GUID_NULL);
                let (mut name, mut state, mut failure): (BSTR, i32, HRESULT) = (std::ptr::null(), 0, 0);
                if (v.get_writer_status)(self.this, i, &mut inst, &mut id, &mut name, &mut state, &mut failure) >= 0 {
                    let text = from_wide(name);
                    SysFreeString(name);
                    all.push(WriterStatus {
                        name: text,
                        state: WRITER_STATES.get(state as usize).copied().unwrap_or("unknown").into(),
                        failure: (failure != 0).then(|| format!("0x{:08X}", failure as u32)),
                        failed: failure < 0 || (6..=15).contains(&state),
                    });
                }
            }
            (v.free_writer_status)(self.this);
            Ok(all)
        }
    }

    /// The failed writers, by name and state (after a failed DoSnapshotSet).
    fn failed_writers(&self, deadline: Instant, cancel: &AtomicBool) -> String {
        let Ok(all) = self.writer_statuses(deadline, cancel) else {
            return String::new();
        };
        all.iter()
            .filter(|w| w.failed)
            .map(|w| {
                format!(
                    "writer \"{}\": {}, HRESULT {}",
                    w.name,
                    w.state,
                    w.failure.as_deref().unwrap_or("none")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Merges a later look at the writers into an earlier one: a writer that failed stays failed.
fn merge_writers(seen: &mut Vec<WriterStatus>, now: Vec<WriterStatus>) {
    for w in now {
        match seen.iter_mut().find(|s| s.name == w.name) {
            Some(s) if !s.failed => *s = w,
            Some(_) => {}
            None => seen.push(w),
        }
    }
}

impl Drop for Components {
    fn drop(&mut self) {
        let v = self.vtbl();
        // SAFETY: live object; after PrepareForBackup a stop must abort the backup first.
        unsafe {
            if self.prepared {
                (v.abort_backup)(self.this);
            }
            (v.release)(self.this);
        }
    }
}

// IVssBackupComponents lives in the multithreaded apartment: any MTA thread may call it.
unsafe impl Send for Components {}
unsafe impl Sync for Components {}

/// A snapshot made by [`Vss`], deleted by [`Snapshot::delete`] (or dropped: then the backup is
/// aborted and the auto-release snapshot goes with the object).
struct VssSnapshot {
    components: Option<Components>,
    snapshot_id: GUID,
    device: String,
    writers: Vec<WriterStatus>,
}

impl Snapshot for VssSnapshot {
    fn device_path(&self) -> &str {
        &self.device
    }

    fn writers(&self) -> Vec<WriterStatus> {
        self.writers.clone()
    }

    fn delete(&mut self) -> Result<(), SnapshotError> {
        let Some(mut c) = self.components.take() else {
            return Ok(());
        };
        let _com = Com::init();
        let deadline = Instant::now() + Duration::from_secs(120);
        let v = c.vtbl();
        let mut op = std::ptr::null_mut();
        // SAFETY: live object; out-pointers to locals.
        let complete = unsafe { (v.backup_complete)(c.this, &mut op) };
        // A second Ctrl-C stops this wait too (the backup is then aborted on release).
        let complete = c.wait("BackupComplete", complete, op, deadline, &AtomicBool::new(false));
        // Writers can still fail at thaw or backup-complete; the manifest is written by now, so
        // this can only be said on stderr.
        if complete.is_ok()
            && let Ok(after) = c.writer_statuses(Instant::now() + Duration::from_secs(30), &AtomicBool::new(false))
        {
            let newly: Vec<WriterStatus> = after
                .into_iter()
                .filter(|w| w.failed && !self.writers.iter().any(|s| s.name == w.name && s.failed))
                .collect();
            if let Some(w) = writers_warning(&newly) {
                eprintln!("winbundle: warning: after BackupComplete: {w}");
            }
        }
        let (mut deleted, mut nondeleted) = (0i32, GUID_NULL);
        // SAFETY: as above; the id is the snapshot's (by value, as the ABI wants).
        let hr = unsafe {
            (v.delete_snapshots)(
                c.this,
                self.snapshot_id,
                VSS_OBJECT_SNAPSHOT,
                1,
                &mut deleted,
                &mut nondeleted,
            )
        };
        c.prepared = complete.is_err(); // a backup that did not complete is aborted on release
        drop(c);
        complete?;
        check("DeleteSnapshots", hr)
    }
}

impl Drop for VssSnapshot {
    fn drop(&mut self) {
        let _ = self.delete();
    }
}

/// The Volume Shadow Copy Service.
#[derive(Debug, Default)]
pub struct Vss;

impl Snapshotter for Vss {
    fn create(
        &self,
        volume_root: &str,
        timeout: Duration,
        cancel: &AtomicBool,
    ) -> Result<Box<dyn Snapshot>, SnapshotError> {
        let deadline = Instant::now() + timeout;
        let api = load()?;
        let com = Com::init();
        allow_callbacks()?;
        let mut c = Components::from_factory(&api, com)?;
        c.begin_backup(deadline, cancel)?;
        c.start_snapshot_set(deadline, cancel)?;
        let snapshot_id = c.add_volume(volume_root)?;
        c.prepare(deadline, cancel)?;
        // Writers that fail here without failing the backup leave only crash-consistent data.
        let mut writers = c.writer_statuses(deadline, cancel)?;
        c.do_snapshot_set(deadline, cancel)?;
        merge_writers(&mut writers, c.writer_statuses(deadline, cancel)?);
        let device = c.device(&api, snapshot_id)?;
        Ok(Box::new(VssSnapshot {
            components: Some(c),
            snapshot_id,
            device,
            writers,
        }))
    }
}

/// Lets writers and the VSS service call back into this process (CoInitializeSecurity, once per
/// process).
fn allow_callbacks() -> Result<(), SnapshotError> {
    // SAFETY: documented arguments; RPC_E_TOO_LATE means it was already done.
    let hr = unsafe {
        CoInitializeSecurity(
            std::ptr::null_mut(),
            -1,
            std::ptr::null(),
            std::ptr::null(),
            6, // RPC_C_AUTHN_LEVEL_PKT_PRIVACY
            3, // RPC_C_IMP_LEVEL_IMPERSONATE
            std::ptr::null(),
            0x20, // EOAC_STATIC_CLOAKING
            std::ptr::null(),
        )
    };
    if hr < 0 && hr != RPC_E_TOO_LATE {
        return Err(failed("CoInitializeSecurity", hr, "COM security could not be set up"));
    }
    Ok(())
}

/// The steps of [`Vss::create`], in Microsoft's order. A failure returns at once; dropping the
/// object then releases it (aborting the backup once it is prepared).
impl Components {
    /// A new IVssBackupComponents from the DLL's factory, holding this thread's COM membership.
    fn from_factory(api: &Api, com: Com) -> Result<Self, SnapshotError> {
        let mut this = std::ptr::null_mut();
        // SAFETY: the factory's documented signature; out-pointer to a local.
        let hr = unsafe { (api.create)(&mut this) };
        if hr < 0 || this.is_null() {
            return Err(failed(
                "CreateVssBackupComponents",
                hr,
                "the Volume Shadow Copy Service cannot be used here",
            ));
        }
        Ok(Components {
            this,
            prepared: false,
            _open: OpenBackup::new(),
            _com: com,
        })
    }

    /// InitializeForBackup, a backup context, a copy backup (writers keep their history), then
    /// the writers' metadata.
    fn begin_backup(&self, deadline: Instant, cancel: &AtomicBool) -> Result<(), SnapshotError> {
        let v = self.vtbl();
        // SAFETY (all calls below): live object, documented arguments, out-pointers to locals.
        check("InitializeForBackup", unsafe {
            (v.initialize_for_backup)(self.this, std::ptr::null())
        })?;
        check("SetContext", unsafe { (v.set_context)(self.this, VSS_CTX_BACKUP) })?;
        check("SetBackupState", unsafe {
            (v.set_backup_state)(self.this, false, false, VSS_BT_COPY, false)
        })?;
        let mut op = std::ptr::null_mut();
        let hr = unsafe { (v.gather_writer_metadata)(self.this, &mut op) };
        self.wait("GatherWriterMetadata", hr, op, deadline, cancel)
    }

    /// StartSnapshotSet, tried again every 5 s while another set is being made (until the
    /// deadline, or a cancel).
    fn start_snapshot_set(&self, deadline: Instant, cancel: &AtomicBool) -> Result<(), SnapshotError> {
        let v = self.vtbl();
        let mut set_id = GUID_NULL;
        loop {
            // SAFETY: live object, out-pointer to a local.
            let hr = unsafe { (v.start_snapshot_set)(self.this, &mut set_id) };
            if hr != VSS_E_SNAPSHOT_SET_IN_PROGRESS || Instant::now() + Duration::from_secs(5) > deadline {
                return check("StartSnapshotSet", hr);
            }
            // Another set is being made: try again in 5 s, seeing a cancel meanwhile.
            let retry = Instant::now() + Duration::from_secs(5);
            while Instant::now() < retry {
                if cancel.load(Ordering::SeqCst) || crate::source::snapshot::hurrying() {
                    return Err(SnapshotError {
                        step: "StartSnapshotSet",
                        hresult: None,
                        message: CANCELLED.into(),
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// AddToSnapshotSet for the volume: the snapshot's id.
    fn add_volume(&self, volume_root: &str) -> Result<GUID, SnapshotError> {
        let v = self.vtbl();
        let root = wide(volume_root);
        let mut snapshot_id = GUID_NULL;
        // SAFETY: live object, a NUL-terminated name, out-pointer to a local.
        check("AddToSnapshotSet", unsafe {
            (v.add_to_snapshot_set)(self.this, root.as_ptr(), GUID_NULL, &mut snapshot_id)
        })?;
        Ok(snapshot_id)
    }

    /// PrepareForBackup; from here on, a failure aborts the backup.
    fn prepare(&mut self, deadline: Instant, cancel: &AtomicBool) -> Result<(), SnapshotError> {
        let v = self.vtbl();
        let mut op = std::ptr::null_mut();
        // SAFETY: live object, out-pointer to a local.
        let hr = unsafe { (v.prepare_for_backup)(self.this, &mut op) };
        self.prepared = true;
        self.wait("PrepareForBackup", hr, op, deadline, cancel)
    }

    /// DoSnapshotSet; when it fails (and was not cancelled), the error names the failed writers.
    fn do_snapshot_set(&self, deadline: Instant, cancel: &AtomicBool) -> Result<(), SnapshotError> {
        let v = self.vtbl();
        let mut op = std::ptr::null_mut();
        // SAFETY: live object, out-pointer to a local.
        let hr = unsafe { (v.do_snapshot_set)(self.this, &mut op) };
        if let Err(mut e) = self.wait("DoSnapshotSet", hr, op, deadline, cancel) {
            let writers = match cancel.load(Ordering::SeqCst) {
                true => String::new(),
                false => self.failed_writers(Instant::now() + Duration::from_secs(30), cancel),
            };
            if !writers.is_empty() {
                e.message = format!("{}; {writers}", e.message);
                e.step = "DoSnapshotSet (writer failure)";
            }
            return Err(e);
        }
        Ok(())
    }

    /// The snapshot's device name (GetSnapshotProperties).
    fn device(&self, api: &Api, snapshot_id: GUID) -> Result<String, SnapshotError> {
        let v = self.vtbl();
        // SAFETY: a zeroed VSS_SNAPSHOT_PROP, freed with the DLL's own function.
        unsafe {
            let mut prop: SnapshotProp = std::mem::zeroed();
            check(
                "GetSnapshotProperties",
                (v.get_snapshot_properties)(self.this, snapshot_id, &mut prop),
            )?;
            let d = from_wide(prop.snapshot_device_object);
            (api.free_prop)(&mut prop);
            Ok(d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_layouts_match_the_sdk() {
        assert_eq!(size_of::<SnapshotProp>(), 128);
        assert_eq!(std::mem::offset_of!(SnapshotProp, snapshot_device_object), 40);
        assert_eq!(std::mem::offset_of!(SnapshotProp, creation_timestamp), 112);
        let slot = |off: usize| off / size_of::<usize>();
        assert_eq!(slot(std::mem::offset_of!(BackupVtbl, initialize_for_backup)), 5);
        assert_eq!(slot(std::mem::offset_of!(BackupVtbl, gather_writer_metadata)), 9);
        assert_eq!(slot(std::mem::offset_of!(BackupVtbl, prepare_for_backup)), 14);
        assert_eq!(slot(std::mem::offset_of!(BackupVtbl, get_writer_status)), 19);
        assert_eq!(slot(std::mem::offset_of!(BackupVtbl, backup_complete)), 27);
        assert_eq!(slot(std::mem::offset_of!(BackupVtbl, set_context)), 35);
        assert_eq!(slot(std::mem::offset_of!(BackupVtbl, get_snapshot_properties)), 42);
        assert_eq!(slot(std::mem::offset_of!(AsyncVtbl, query_status)), 5);
    }
}
