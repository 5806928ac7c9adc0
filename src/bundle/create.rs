//! `bundle-instance`: analyse the source, stream its root volume through the chunk pipeline
//! into the store, then write the manifest. A failure at any point removes what was written and
//! leaves no manifest: a bundle exists only once its manifest does.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use super::encrypt::{BundleKey, EncryptTo};
use super::parent::Parent;
pub use super::parent::ParentChoice;
use super::plan::{Plan, PlanOptions};
use super::writer::{Finished, StreamWriter};
use crate::Error;
use crate::chunk::{PipelineConfig, PipelineStats, run_pipeline};
use crate::format::Keys;
use crate::format::disk::DiskInfo;
use crate::format::index::ChunkIndex;
use crate::format::manifest::{
    Compression, ExcludedPartition, FORMAT_NAME, FORMAT_VERSION, FORMAT_VERSION_DISK, FORMAT_VERSION_PART_SIZES,
    IndexInfo, Layout, Manifest, ParentInfo, RootInfo, SourceInfo, Stats,
};
use crate::format::stream::DataInfo;
use crate::progress::Progress;
use crate::source::DiskFile;
use crate::source::live::Opened;
use crate::source::snapshot::WriterStatus;
use crate::store::{ObjectStore, names};
use crate::task::{self, BundleTask, State, TaskError};

/// Default chunk size: big enough for zstd to compress well and for few seek-table entries,
/// small enough that a ranged read of one chunk is cheap.
pub const DEFAULT_CHUNK_SIZE: usize = 4 << 20;
/// Default zstd level: level 1 keeps pace with two cores' worth of reading.
pub const DEFAULT_LEVEL: i32 = 1;
/// Default part size: 16 MiB parts keep S3 request counts low while (concurrency + 1) part
/// buffers stay small; it grows for streams over 160 GB (10,000 parts).
pub const DEFAULT_PART_SIZE: u64 = 16 << 20;
/// S3 allows at most 10,000 parts per multipart upload; the part size grows to stay below.
pub const MAX_PARTS: u64 = 10_000;
/// Smallest part we write; S3 multipart uploads need 5 MiB (checked against the store).
pub const MIN_PART_SIZE: u64 = 1 << 20;
/// S3's largest part, and largest object of a single PUT/POST.
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// Parallel GETs of the parent bytes an incremental bundle on S3 sends again (padding changed
/// frames' parts to the 5 MiB minimum).
const FETCH_THREADS: usize = 4;

/// Compression threads: the number asked for, else one per core.
pub fn default_threads(requested: Option<usize>) -> usize {
    requested.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

/// Bytes per second assumed when estimating when a bundle ends (for upload-policy expiry):
/// slow on purpose, so a policy that might run out is refused up front.
const PESSIMISTIC_RATE: f64 = 20e6;

/// Everything `bundle-instance` needs.
#[derive(Debug, Clone)]
pub struct BundleRequest {
    pub source: PathBuf,
    pub bucket: String,
    pub prefix: String,
    pub instance_id: Option<String>,
    pub plan: PlanOptions,
    pub chunk_size: usize,
    pub level: i32,
    pub threads: usize,
    pub layout: Layout,
    pub part_size: Option<u64>,
    pub overwrite: bool,
    /// The bundle id and start time, when the task was announced before the run (the API
    /// server answers `pending` at once); otherwise both are made when the run starts.
    pub assigned: Option<Assigned>,
    /// How a live Windows volume is read (snapshot or not); ignored for image files.
    pub live: crate::source::live::LiveOptions,
    /// The earlier bundle an incremental bundle reuses frames of.
    pub parent: Option<ParentChoice>,
    /// Reuse a parent bundle of another instance.
    pub force_parent: bool,
    /// What an incremental bundle takes from its parent rather than from this request, so that
    /// the parent's frames can be reused: settings the user did not choose.
    pub from_parent: FromParent,
    /// `--rehash`, `--rehash-every`: when an incremental bundle reads every chunk.
    pub rehash: super::detect::RehashOptions,
    /// `--encrypt-to`, `--encrypt-to-file`: seal the bundle for these recipients.
    pub encrypt: Option<EncryptTo>,
}

/// Settings an incremental bundle takes from its parent.
#[derive(Debug, Clone, Copy, Default)]
pub struct FromParent {
    pub chunk_size: bool,
    pub level: bool,
}

/// A task's identity given before its run.
#[derive(Debug, Clone)]
pub struct Assigned {
    pub bundle_id: String,
    pub start_time: String,
}

/// The end of a bundle run: the final task, and on success the manifest and statistics.
pub struct BundleOutcome {
    pub task: BundleTask,
    pub instance_id_derived: bool,
    /// The instance id came from EC2's instance metadata service (a live volume on EC2).
    pub instance_id_from_imds: bool,
    /// Things the user should know that did not stop the bundle.
    pub warnings: Vec<String>,
    pub result: Result<(Manifest, PipelineStats), Error>,
}

fn invalid(parameter: &'static str, message: impl Into<String>) -> Error {
    Error::InvalidParameter {
        parameter,
        message: message.into(),
    }
}

/// What a run found out besides its result.
#[derive(Default)]
struct Notes {
    derived: bool,
    from_imds: bool,
    warnings: Vec<String>,
}

/// Checks the chunk size and zstd level.
fn check_settings(req: &BundleRequest) -> Result<(), Error> {
    let cs = req.chunk_size;
    if !(64 << 10..=1 << 30).contains(&cs) || !cs.is_multiple_of(4096) {
        return Err(invalid(
            "--chunk-size",
            format!("{cs} bytes: use a multiple of 4 KiB from 64 KiB to 1 GiB"),
        ));
    }
    if !(-7..=22).contains(&req.level) || req.level == 0 {
        return Err(invalid(
            "--zstd-level",
            format!("{}: use 1 (fastest) to 22, or -7 to -1 for faster", req.level),
        ));
    }
    Ok(())
}

/// Checks the request's parameters (before any task exists, as EC2 rejects a bad call).
pub fn validate(req: &BundleRequest) -> Result<(), Error> {
    names::check_bucket(&req.bucket)?;
    names::check_prefix(&req.prefix)?;
    if let Some(id) = &req.instance_id {
        task::check_instance_id(id).map_err(|m| invalid("--instance-id", m))?;
    }
    check_settings(req)?;
    if let Some(e) = &req.encrypt {
        e.check()?;
    }
    if req.threads == 0 || req.threads > 256 {
        return Err(invalid("--threads", format!("{}: use 1 to 256", req.threads)));
    }
    if let Some(p) = req.part_size {
        let min = if req.layout != Layout::Parts {
            MIN_PART_SIZE
        } else {
            1 << 20
        };
        if p < min || p > MAX_PART_SIZE {
            return Err(invalid(
                "--part-size",
                format!("{p} bytes: use {} MiB to 5 GiB (S3's part and POST limits)", min >> 20),
            ));
        }
    }
    Ok(())
}

/// The part size for a stream of at most `bound` bytes: the requested (or default) size, grown
/// in whole MiB so that no more than [`MAX_PARTS`] parts are needed.
pub fn part_size_for(requested: Option<u64>, bound: u64) -> u64 {
    let base = requested.unwrap_or(DEFAULT_PART_SIZE);
    let needed = bound.div_ceil(MAX_PARTS).next_multiple_of(1 << 20);
    base.max(needed)
}

/// Identity of the source for a derived instance id: disk id, root partition, NTFS serial.
fn instance_identity(plan: &Plan<'_>) -> String {
    format!(
        "{}/{}/{}",
        plan.layout.table.disk_id.as_deref().unwrap_or("-"),
        plan.layout.root.index,
        plan.facts.serial64
    )
}

/// Runs a whole bundle. `on_update` sees every state change of the task; an error from it (say,
/// the instance is already being bundled) stops the run.
pub fn bundle_instance(
    req: &BundleRequest,
    store: &dyn ObjectStore,
    progress: &dyn Progress,
    cancel: &AtomicBool,
    on_update: &mut dyn FnMut(&BundleTask) -> Result<(), Error>,
) -> BundleOutcome {
    let mut task = new_task(req);
    let first = on_update(&task);
    let mut notes = Notes::default();
    let result = match first {
        // The last wall: a panic anywhere in the run fails the bundle like any error, so the
        // cleanup below (aborted uploads, the task saved as failed) still happens.
        Ok(()) => crate::panics::catch(|| run(req, store, progress, cancel, &mut task, &mut notes, on_update))
            .unwrap_or_else(|m| Err(Error::Internal(format!("the bundle panicked: {m}")))),
        Err(e) => Err(e),
    };
    let result = settle(result, store, cancel);
    end_task(&mut task, &result);
    let _ = on_update(&task);
    BundleOutcome {
        task,
        instance_id_derived: notes.derived,
        instance_id_from_imds: notes.from_imds,
        warnings: notes.warnings,
        result,
    }
}

/// The task of a new run, `pending`: its bundle id and start time as announced, or new ones.
fn new_task(req: &BundleRequest) -> BundleTask {
    let (bundle_id, start_time) = match &req.assigned {
        Some(a) => (a.bundle_id.clone(), a.start_time.clone()),
        None => (task::new_bundle_id(), task::now_iso()),
    };
    BundleTask {
        bundle_id,
        instance_id: req.instance_id.clone().unwrap_or_default(),
        state: State::Pending,
        update_time: task::now_iso(),
        start_time,
        bucket: req.bucket.clone(),
        prefix: req.prefix.clone(),
        progress: "0%".into(),
        error: None,
    }
}

/// The error a failed run reports: the cancel, when one was asked for, and what could not be
/// cleaned up, once the uploads under way have ended.
fn settle<T>(mut result: Result<T, Error>, store: &dyn ObjectStore, cancel: &AtomicBool) -> Result<T, Error> {
    if result.is_err() && cancel.load(std::sync::atomic::Ordering::SeqCst) {
        // Whatever failed after a cancel request (an upload cut short, say) is the cancel.
        result = Err(Error::Cancelled);
    }
    if let Err(e) = &result {
        let _ = store.flush(); // uploads already under way finish (or fail) first
        if let Some(left) = store.leftovers() {
            // What could not be cleaned up (an upload policy cannot delete; an abort that
            // failed): say what stays behind.
            let what = format!("{e}; {left}");
            result = Err(Error::Incomplete {
                code: e.code(),
                message: what,
                exit: e.exit_code(),
            });
        }
    }
    result
}

/// Ends the task as `complete` or `failed` (with the error).
fn end_task<T>(task: &mut BundleTask, result: &Result<T, Error>) {
    task.update_time = task::now_iso();
    match result {
        Ok(_) => {
            task.state = State::Complete;
            task.progress = "100%".into();
        }
        Err(e) => {
            task.state = State::Failed;
            task.error = Some(TaskError::from_error(e));
        }
    }
}

/// The bundle itself, step by step: from opening the source to storing the manifest, which makes
/// it complete.
fn run(
    req: &BundleRequest,
    store: &dyn ObjectStore,
    progress: &dyn Progress,
    cancel: &AtomicBool,
    task: &mut BundleTask,
    notes: &mut Notes,
    on_update: &mut dyn FnMut(&BundleTask) -> Result<(), Error>,
) -> Result<(Manifest, PipelineStats), Error> {
    // A live volume's snapshot lives as long as `opened.disk`: it is deleted on every way out of here.
    let started = std::time::Instant::now();
    let opened = open_source(req, cancel, notes)?;
    let plan = analyse(req, &opened.disk, started)?;
    name_instance(task, notes, opened.live, &plan);
    make_room(store, req)?;
    let (req, mut parent) = adopt_parent(store, req, &task.instance_id, notes)?;
    let bundle_key = (req.encrypt.as_ref())
        .map(|e| super::encrypt::choose_key(e, parent.as_ref(), &req.bucket, &req.prefix))
        .transpose()?;
    let mut detection = detect_changes(&plan, parent.as_mut(), &req, notes)?;
    let mut env = Env::new(&req, parent.as_ref(), store, progress, cancel, started);
    env.key = bundle_key.as_ref();
    let sizes = size_stream(&env, &plan)?;
    preflight(&env, &plan, &sizes, notes)?;
    announce(&env, &sizes, task, on_update)?;
    let (mut stats, finished) = write_volume_stream(&env, &plan, &sizes, task, on_update)?;
    record_volume_stream(&env, &mut stats, finished.reuse, notes);
    let mut written = Written::new(store, &finished.data);
    let disk_info = write_disk_stream(&env, &plan, &sizes, &mut stats, notes, &mut written)?;
    let encryption = store_key_object(&env, &mut written)?;
    let mut chunk_index = finished.index;
    chunk_index.records = detection.records.take();
    let index = store_index(&env, &chunk_index, &mut written)?;
    let streams = Streams {
        data: finished.data,
        chunk_count: sizes.chunk_count,
        bundle_sha256: finished.bundle_sha256,
        index,
        disk: disk_info,
        detection,
        encryption,
    };
    let manifest = build_manifest(&env, task, &plan, &stats, streams, opened.writers);
    store_manifest(&env, &manifest, &written)?;
    if let Some(c) = req.encrypt.as_ref().and_then(|e| e.chain.as_ref()) {
        c.clear_pending(&req.bucket, &req.prefix);
    }
    stats.source_reads = opened.disk.read_stats();
    notes.warnings.extend(finished.resumed.note.clone());
    stats.resumed = finished.resumed;
    Ok((manifest, stats))
}

/// What the steps after the parent is chosen share: the request (with the parent's settings where
/// it takes them), the parent whose frames are reused, and where the bundle goes.
struct Env<'a> {
    req: &'a BundleRequest,
    parent: Option<&'a Parent<'a>>,
    store: &'a dyn ObjectStore,
    keys: Keys,
    progress: &'a dyn Progress,
    cancel: &'a AtomicBool,
    /// When the run started (before the source was opened).
    started: std::time::Instant,
    /// The data key the bundle is sealed under (an encrypted bundle).
    key: Option<&'a BundleKey>,
}

impl<'a> Env<'a> {
    fn new(
        req: &'a BundleRequest,
        parent: Option<&'a Parent<'a>>,
        store: &'a dyn ObjectStore,
        progress: &'a dyn Progress,
        cancel: &'a AtomicBool,
        started: std::time::Instant,
    ) -> Self {
        Env {
            req,
            parent,
            store,
            keys: Keys::new(&req.prefix),
            progress,
            cancel,
            started,
            key: None,
        }
    }

    /// The cipher that seals the frames, in an encrypted bundle.
    fn cipher(&self) -> Option<&'a crate::crypt::FrameCipher> {
        self.key.map(|k| &k.cipher)
    }
}

/// How the volume's data stream is cut: its chunks, a bound on its bytes, and its part size.
struct Sizes {
    chunk_count: u64,
    bound: u64,
    part_size: u64,
}

/// The objects of this bundle stored so far, in the order they were stored. A later step that
/// fails deletes them all (in that order) before it returns: the bundle must not become complete.
struct Written<'a> {
    store: &'a dyn ObjectStore,
    keys: Vec<String>,
}

impl<'a> Written<'a> {
    /// Starts with the objects of the volume's data stream.
    fn new(store: &'a dyn ObjectStore, data: &DataInfo) -> Self {
        Written {
            store,
            keys: data.objects.iter().map(|o| o.key.clone()).collect(),
        }
    }

    /// Records more objects as stored.
    fn add(&mut self, keys: impl IntoIterator<Item = String>) {
        self.keys.extend(keys);
    }

    /// Deletes every object recorded (as far as it can: the failure that led here is the error).
    fn undo(&self) {
        for k in &self.keys {
            let _ = self.store.delete(k);
        }
    }
}

/// The streams a finished run stored, as the manifest names them.
struct Streams {
    data: DataInfo,
    chunk_count: u64,
    bundle_sha256: String,
    index: IndexInfo,
    disk: Option<DiskInfo>,
    /// How the changed chunks were found (its record digests already in the index).
    detection: super::detect::Detection,
    /// The key object of an encrypted bundle.
    encryption: Option<crate::format::manifest::EncryptionInfo>,
}

/// Opens the source (a live volume through its snapshot) and notes its warnings, the VSS
/// writers' among them.
fn open_source(req: &BundleRequest, cancel: &AtomicBool, notes: &mut Notes) -> Result<Opened, Error> {
    let mut opened = crate::source::live::open(&req.source, &req.live, true, cancel)?;
    notes.warnings.append(&mut opened.notes);
    if let Some(w) = opened
        .writers
        .as_deref()
        .and_then(crate::source::snapshot::writers_warning)
    {
        notes.warnings.push(w);
    }
    Ok(opened)
}

/// Analyses the source (layout, root volume, exclusions) and logs the plan.
fn analyse<'d>(req: &BundleRequest, disk: &'d DiskFile, started: std::time::Instant) -> Result<Plan<'d>, Error> {
    let plan = Plan::analyse(disk, &req.plan)?;
    let root = plan.layout.root();
    tracing::info!(
        "plan: {} ({} bytes, partition table {}): root volume partition {} at byte {} ({} bytes; {}); {} bytes allocated, {} left out, {} to read; analysed in {} ms",
        req.source.display(),
        plan.layout.disk_size,
        plan.layout.table.kind,
        root.partition.index,
        root.partition.offset,
        plan.image_len,
        plan.layout.root.reason,
        plan.allocated_bytes,
        plan.excluded_bytes,
        plan.read_bytes,
        started.elapsed().as_millis()
    );
    Ok(plan)
}

/// Gives the task an instance id when the request named none: this EC2 instance's own for its
/// live volume, else one derived from the source's identity.
fn name_instance(task: &mut BundleTask, notes: &mut Notes, live: bool, plan: &Plan<'_>) {
    // Bundling this machine's own volume on EC2: its instance id is the natural one.
    if task.instance_id.is_empty()
        && live
        && let Some(id) = task::imds::instance_id()
    {
        task.instance_id = id;
        notes.from_imds = true;
    }
    if task.instance_id.is_empty() {
        task.instance_id = task::derived_instance_id(&instance_identity(plan));
        notes.derived = true;
    }
}

/// Refuses a prefix that already holds a bundle, or with `--overwrite` deletes its manifest.
fn make_room(store: &dyn ObjectStore, req: &BundleRequest) -> Result<(), Error> {
    let keys = Keys::new(&req.prefix);
    if store.exists(&keys.manifest())? {
        if !req.overwrite {
            return Err(crate::store::StoreError::BundleExists {
                bucket: req.bucket.clone(),
                prefix: req.prefix.clone(),
                manifest: keys.manifest(),
            }
            .into());
        }
        // The old bundle stops being complete before any of its objects is replaced.
        store.delete(&keys.manifest())?;
    }
    Ok(())
}

/// Opens the parent an incremental bundle asks for: the request with the parent's settings it
/// takes, and the parent when its frames can be reused.
fn adopt_parent<'r, 's>(
    store: &'s dyn ObjectStore,
    req: &'r BundleRequest,
    instance_id: &str,
    notes: &mut Notes,
) -> Result<(Cow<'r, BundleRequest>, Option<Parent<'s>>), Error> {
    let Some(choice) = &req.parent else {
        return Ok((Cow::Borrowed(req), None));
    };
    let opened = match open_parent(store, req, choice, instance_id) {
        Err(Error::Crypt(crate::crypt::CryptError::Locked { prefix, key_id })) => {
            return match &req.encrypt {
                Some(e) => {
                    notes.warnings.push(super::encrypt::key_not_kept(e, &key_id, &prefix));
                    Ok((Cow::Borrowed(req), None))
                }
                None => Err(invalid(
                    "--parent",
                    format!(
                        "the parent bundle {prefix} is encrypted: a bundle built on it must be encrypted too; pass --encrypt-to (or --encrypt-to-file) with its recipients, or bundle without --parent"
                    ),
                )),
            };
        }
        r => r?,
    };
    let req = match follow_parent(req, &opened)? {
        Some(adopted) => Cow::Owned(adopted),
        None => Cow::Borrowed(req),
    };
    if let Some(why) = req
        .encrypt
        .as_ref()
        .and_then(|e| super::encrypt::parent_refusal(e, &opened))
    {
        notes.warnings.push(why);
        return Ok((req, None));
    }
    let parent = reusable_parent(store, &req, opened, notes)?;
    Ok((req, parent))
}

/// Cuts the volume's data stream into chunks and parts, refusing sizes a bundle cannot have.
fn size_stream(env: &Env<'_>, plan: &Plan<'_>) -> Result<Sizes, Error> {
    let (req, store) = (env.req, env.store);
    let chunk_count = plan.image_len.div_ceil(req.chunk_size as u64);
    if chunk_count > crate::format::manifest::MAX_CHUNKS {
        // Readers refuse more (it bounds the seek table and index they read).
        return Err(invalid(
            "--chunk-size",
            format!(
                "{} bytes makes {chunk_count} chunks of this volume, more than the {} a bundle may have: use a larger --chunk-size",
                req.chunk_size,
                crate::format::manifest::MAX_CHUNKS
            ),
        ));
    }
    let bound = plan.read_bytes + plan.read_bytes / 64 + chunk_count * (256 + 12) + 64;
    let part_size = part_size_for(req.part_size, bound);
    if req.layout != Layout::Parts && part_size < store.min_part_size() {
        return Err(invalid(
            "--part-size",
            format!(
                "{part_size} bytes: {} needs parts of at least {} MiB",
                store.location(),
                store.min_part_size() >> 20
            ),
        ));
    }
    if part_size > MAX_PART_SIZE {
        return Err(invalid(
            "--part-size",
            "this volume needs parts over 5 GiB to stay within 10,000 parts",
        ));
    }
    Ok(Sizes {
        chunk_count,
        bound,
        part_size,
    })
}

/// Asks the store whether the bundle's objects can be written (and in time, under an upload
/// policy), and notes its warnings.
fn preflight(env: &Env<'_>, plan: &Plan<'_>, sizes: &Sizes, notes: &mut Notes) -> Result<(), Error> {
    let keys = &env.keys;
    let max_parts = sizes.bound.div_ceil(sizes.part_size).max(1) as u32;
    let mut planned_keys = match env.req.layout {
        Layout::Single => vec![keys.manifest(), keys.index(), keys.image()],
        Layout::Parts => vec![keys.manifest(), keys.index(), keys.part(0), keys.part(max_parts - 1)],
        Layout::Runs => vec![keys.manifest(), keys.index(), keys.run_object(0)],
    };
    if env.key.is_some() {
        planned_keys.push(keys.data_key());
    }
    notes.warnings.extend(env.store.preflight(
        &planned_keys,
        sizes.part_size,
        plan.read_bytes as f64 / PESSIMISTIC_RATE,
    )?);
    Ok(())
}

/// Logs the bundle's settings and moves the task to `bundling`.
fn announce(
    env: &Env<'_>,
    sizes: &Sizes,
    task: &mut BundleTask,
    on_update: &mut dyn FnMut(&BundleTask) -> Result<(), Error>,
) -> Result<(), Error> {
    let req = env.req;
    tracing::info!(
        "bundle {} of instance {} to {} under {:?}: chunks of {} bytes, zstd level {}, {} threads, {:?} layout, parts of {} bytes{}",
        task.bundle_id,
        task.instance_id,
        env.store.location(),
        req.prefix,
        req.chunk_size,
        req.level,
        req.threads,
        req.layout,
        sizes.part_size,
        env.parent.map(|p| format!(", parent {}", p.prefix)).unwrap_or_default()
    );
    set_state(task, State::Bundling, None, on_update)
}

/// Moves the task to `state` (and `progress`, when given) and passes it to `on_update`.
fn set_state(
    task: &mut BundleTask,
    state: State,
    progress: Option<&str>,
    on_update: &mut dyn FnMut(&BundleTask) -> Result<(), Error>,
) -> Result<(), Error> {
    task.state = state;
    if let Some(p) = progress {
        task.progress = p.into();
    }
    task.update_time = task::now_iso();
    on_update(task)
}

/// Streams the root volume through the chunk pipeline into the store, reusing the parent's
/// frames, then moves the task to `storing` and finishes the stream (its last parts and index).
fn write_volume_stream(
    env: &Env<'_>,
    plan: &Plan<'_>,
    sizes: &Sizes,
    task: &mut BundleTask,
    on_update: &mut dyn FnMut(&BundleTask) -> Result<(), Error>,
) -> Result<(PipelineStats, Finished), Error> {
    let (req, store, parent) = (env.req, env.store, env.parent);
    env.progress.start(plan.read_bytes);
    let mut source = plan.chunk_source()?;
    let cfg = PipelineConfig {
        chunk_size: req.chunk_size,
        level: req.level,
        threads: req.threads,
    };
    // Threads that fetch parent bytes for an incremental bundle on S3 live as long as the
    // writer: both inside this scope.
    std::thread::scope(|scope| -> Result<_, Error> {
        let copies = parent.filter(|p| !crate::chunk::Reuse::reads_frames(*p));
        let fetcher = copies.map(|p| super::fetch::Fetcher::start(scope, p, FETCH_THREADS));
        let mut writer = StreamWriter::new(store, env.keys.clone(), req.layout, sizes.part_size, env.progress)
            .sealed(env.key.is_some());
        if let Some(p) = copies {
            writer = writer.copy_from(super::writer::Copying {
                parent: p,
                min_part: min_copy_part(store, sizes),
                fetcher: fetcher.as_ref(),
            });
        }
        // A local store copies the parent's frames file to file (the pipeline still reads
        // and checks them).
        if let Some(p) = parent.filter(|p| crate::chunk::Reuse::reads_frames(*p) && store.is_local()) {
            writer = writer.copy_locally_from(p);
        }
        let reuse = parent.map(|p| p as &dyn crate::chunk::Reuse);
        let stats = match run_pipeline(
            &mut source,
            cfg,
            &mut writer,
            reuse,
            env.cipher(),
            env.progress,
            env.cancel,
        ) {
            Ok(s) => s,
            Err(e) => {
                writer.abort();
                return Err(e);
            }
        };
        set_state(task, State::Storing, Some("99%"), on_update)?;
        let finished = writer.finish(req.chunk_size as u64, plan.image_len)?;
        Ok((stats, finished))
    })
}

/// The smallest part but the last of a stream that copies the parent's frames on the server.
fn min_copy_part(store: &dyn ObjectStore, sizes: &Sizes) -> u64 {
    // Every part but the last at least `min_part`: S3's 5 MiB, or more so that a
    // stream of copied and sent parts still fits in 10,000 parts.
    store
        .min_part_size()
        .max(sizes.bound.div_ceil(MAX_PARTS - 1).next_multiple_of(1 << 20))
        .min(sizes.part_size)
}

/// Logs the data stream's statistics, adds the parent's I/O to them, and notes what the user
/// should know: a damaged parent, copies the server refused.
fn record_volume_stream(
    env: &Env<'_>,
    stats: &mut PipelineStats,
    reuse: crate::chunk::pipeline::ReuseStats,
    notes: &mut Notes,
) {
    tracing::info!(
        "data stream: {} chunks ({} all zeros, {} reused) in {:.2} s: reading {:.2} s, compressing {:.2} s over {} threads, storing {:.2} s; {} bytes read, {} bytes of frames",
        stats.chunks,
        stats.zero_chunks,
        stats.reused_chunks,
        stats.elapsed.as_secs_f64(),
        stats.read_time.as_secs_f64(),
        stats.compress_time.as_secs_f64(),
        env.req.threads,
        stats.store_time.as_secs_f64(),
        stats.data_bytes,
        stats.compressed_bytes
    );
    if let (Some(p), Some(first)) = (env.parent, stats.first_disagreement) {
        notes.warnings.push(format!(
            "{} chunks (the first chunk {first}, at volume byte {}) hold other data than the parent {} has for them, though the volume's metadata says nothing in them changed: something wrote to the volume without going through NTFS (a raw write, a disk tool, damage); this bundle holds the data as it is now. Keep using --rehash, or --rehash-every, on this machine",
            stats.metadata_disagreements,
            first * env.req.chunk_size as u64,
            p.prefix
        ));
    }
    if let (Some(p), Some(first)) = (env.parent, stats.first_damaged_chunk) {
        notes.warnings.push(format!(
            "the parent bundle {} is damaged: {} of its frames (the first for chunk {first}) are not the bytes its index names; those chunks were compressed again, so this bundle is whole; check the parent with `winbundle verify --prefix {}`",
            p.prefix, stats.damaged_parent_frames, p.prefix
        ));
    }
    stats.parent_io = reuse;
    notes.warnings.extend(stats.parent_io.copies.note.clone());
}

/// Writes the disk around C: (partition table, system partitions) as a stream of its own, or
/// copies the parent's when it is unchanged; or notes why `restore --disk` will not have it.
fn write_disk_stream(
    env: &Env<'_>,
    plan: &Plan<'_>,
    sizes: &Sizes,
    stats: &mut PipelineStats,
    notes: &mut Notes,
    written: &mut Written<'_>,
) -> Result<Option<DiskInfo>, Error> {
    let req = env.req;
    let dp = match &plan.disk_plan {
        Ok(dp) => dp,
        Err(why) if why != "--volume-only" && plan.layout.table.kind != crate::source::TableKind::None => {
            notes.warnings.push(format!(
                "only C: is kept, `restore --disk` will not rebuild this disk: {why}"
            ));
            return Ok(None);
        }
        Err(_) => return Ok(None),
    };
    let settings = super::disk::StreamSettings {
        store: env.store,
        prefix: &req.prefix,
        // The disk stream is never copied in pieces: one object is all it needs.
        layout: match req.layout {
            Layout::Runs => Layout::Single,
            l => l,
        },
        part_size: sizes.part_size,
        chunk_size: req.chunk_size,
        level: req.level,
        cipher: env.cipher(),
    };
    let parent_disk = env.parent.and_then(|p| p.bundle.manifest.disk.as_ref());
    let (d, copied) =
        super::disk::write_stream(&settings, plan.disk, dp, parent_disk).inspect_err(|_| written.undo())?;
    if let Some(p) = env.parent {
        tracing::info!(
            "disk stream: {}",
            match copied {
                true => format!("unchanged since {}, its objects copied", p.prefix),
                false => format!("differs from {}'s (or it has none), written in full", p.prefix),
            }
        );
        stats.parent_io.disk_stream = Some(if copied { "copied" } else { "written" }.into());
    }
    written.add(d.data.objects.iter().map(|o| o.key.clone()));
    Ok(Some(d))
}

/// Stores the chunk index once every data object is stored, unless the run was cancelled.
fn store_index(env: &Env<'_>, index: &ChunkIndex, written: &mut Written<'_>) -> Result<IndexInfo, Error> {
    let keys = &env.keys;
    env.store.flush()?;
    let mut index_bytes = index.encode();
    if let Some(c) = env.cipher() {
        let mut sealed = Vec::new();
        c.seal(&index_bytes, &mut sealed);
        index_bytes = sealed;
    }
    let stored_index = if env.cancel.load(std::sync::atomic::Ordering::SeqCst) {
        Err(Error::Cancelled)
    } else {
        env.store.put(&keys.index(), &index_bytes).map_err(Error::from)
    };
    if let Err(e) = stored_index {
        // Cancelled while the last parts were stored, or the index could not be stored: the
        // bundle must not become complete.
        written.undo();
        return Err(e);
    }
    written.add([keys.index()]);
    Ok(IndexInfo {
        key: keys.index(),
        size: index_bytes.len() as u64,
        sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&index_bytes)),
        chunk_hash: "blake3".into(),
    })
}

/// Stores an encrypted bundle's key object (its data key wrapped for the recipients), once the
/// data is stored; None for a plaintext bundle.
fn store_key_object(
    env: &Env<'_>,
    written: &mut Written<'_>,
) -> Result<Option<crate::format::manifest::EncryptionInfo>, Error> {
    let (Some(enc), Some(key)) = (&env.req.encrypt, env.key) else {
        return Ok(None);
    };
    let object = env.keys.data_key();
    let stored = super::encrypt::store_key_object(env.store, &object, enc, key).inspect_err(|_| written.undo())?;
    written.add([object]);
    Ok(Some(stored))
}

/// The manifest of the finished bundle.
fn build_manifest(
    env: &Env<'_>,
    task: &BundleTask,
    plan: &Plan<'_>,
    stats: &PipelineStats,
    streams: Streams,
    writers: Option<Vec<WriterStatus>>,
) -> Manifest {
    let req = env.req;
    Manifest {
        format: FORMAT_NAME.into(),
        format_version: if streams.encryption.is_some() {
            crate::format::manifest::FORMAT_VERSION_ENCRYPTED
        } else if streams.disk.is_some() {
            FORMAT_VERSION_DISK
        } else if streams.data.objects.iter().any(|o| o.part_sizes.is_some()) {
            FORMAT_VERSION_PART_SIZES
        } else {
            FORMAT_VERSION
        },
        tool_version: env!("CARGO_PKG_VERSION").into(),
        bundle_id: task.bundle_id.clone(),
        instance_id: task.instance_id.clone(),
        start_time: task.start_time.clone(),
        end_time: task::now_iso(),
        source: source_info(req, plan),
        volume_size: plan.image_len,
        chunk_size: req.chunk_size as u64,
        chunk_count: streams.chunk_count,
        compression: Compression {
            algorithm: "zstd".into(),
            level: req.level,
            frame_checksum: "xxh64-low32".into(),
            zero_chunks: stats.zero_chunks,
            zstd_version: Some(zstd::zstd_safe::version_string().to_string()),
        },
        data: streams.data,
        bundle_sha256: streams.bundle_sha256,
        index: Some(streams.index),
        parent: env.parent.map(|p| ParentInfo {
            prefix: p.prefix.clone(),
            bundle_id: p.bundle.manifest.bundle_id.clone(),
            reused_chunks: stats.reused_chunks,
            reused_bytes: stats.reused_bytes,
            copied_parts: stats.parent_io.copies.copied_parts,
            copied_bytes: stats.parent_io.copies.copied_bytes,
            change_detection: Some(streams.detection.mode.as_str().into()),
            unread_chunks: stats.unread_chunks,
            changed_records: streams.detection.changed_records,
            metadata_disagreements: stats.metadata_disagreements,
            first_disagreement: stats.first_disagreement,
            since_rehash: streams.detection.since_rehash,
        }),
        disk: streams.disk,
        stats: Stats {
            allocated_bytes: plan.allocated_bytes,
            data_bytes: stats.data_bytes,
            excluded_bytes: plan.excluded_bytes,
        },
        excluded_partitions: excluded_partitions(plan),
        excluded_files: plan.exclusions.items.clone(),
        snapshot: writers.map(|writers| crate::format::manifest::SnapshotInfo { writers }),
        encryption: streams.encryption,
        windows: plan.windows.clone(),
    }
}

/// The manifest's description of the source: the disk and its root volume.
fn source_info(req: &BundleRequest, plan: &Plan<'_>) -> SourceInfo {
    let root = plan.layout.root();
    SourceInfo {
        path: req.source.display().to_string(),
        disk_size: plan.layout.disk_size,
        partition_table: plan.layout.table.kind,
        sector_size: plan.layout.table.sector_size,
        disk_id: plan.layout.table.disk_id.clone(),
        root: RootInfo {
            index: root.partition.index,
            offset: root.partition.offset,
            length: root.partition.length,
            type_id: root.partition.ptype.id(),
            type_name: root.partition.ptype.name().into(),
            name: root.partition.name.clone(),
            reason: plan.layout.root.reason.clone(),
        },
        ntfs: plan.facts.clone(),
    }
}

/// Stores the manifest, which makes the bundle complete, and says so.
fn store_manifest(env: &Env<'_>, manifest: &Manifest, written: &Written<'_>) -> Result<(), Error> {
    let json = serde_json::to_vec_pretty(manifest).map_err(|e| Error::Internal(e.to_string()))?;
    if let Err(e) = env.store.put(&env.keys.manifest(), &json) {
        written.undo();
        return Err(e.into());
    }
    env.progress.finish();
    tracing::info!(
        "bundle complete: {} ({} bytes of data, index {} bytes, manifest {} bytes) in {:.2} s",
        env.keys.manifest(),
        manifest.data.stream_size,
        manifest.index.as_ref().map_or(0, |i| i.size),
        json.len(),
        env.started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Scans the volume's `$MFT` for the record digests the new index keeps and, with a parent,
/// for the chunks that changed since it: `parent` then reads only those (or everything, with
/// a note saying why).
fn detect_changes(
    plan: &Plan<'_>,
    parent: Option<&mut super::parent::Parent<'_>>,
    req: &BundleRequest,
    notes: &mut Notes,
) -> Result<super::detect::Detection, Error> {
    let t = std::time::Instant::now();
    let since = |p: &super::parent::Parent<'_>| p.bundle.manifest.parent.as_ref().map_or(0, |i| i.since_rehash);
    let of_parent = parent
        .as_deref()
        .and_then(|p| Some((p.bundle.index.as_ref()?, since(p))));
    let detection = super::detect::detect(
        plan.disk,
        &plan.layout,
        &plan.facts,
        of_parent,
        req.chunk_size as u64,
        req.rehash,
    )?;
    tracing::info!(
        "change detection: {} ({} MFT records, {} changed, {} bytes of $MFT read, {} chunks to read) in {:.2} s",
        detection.mode.as_str(),
        detection.records.as_ref().map_or(0, |r| r.digests.len()),
        detection.changed_records,
        detection.mft_bytes,
        detection
            .plan
            .as_ref()
            .map_or("all".to_string(), |p| p.read.len().to_string()),
        t.elapsed().as_secs_f64()
    );
    if let Some(p) = parent {
        if let Some(why) = detection.why_rehash.as_ref().filter(|_| !req.rehash.always) {
            notes.warnings.push(why.clone());
        }
        p.change = detection.plan.clone();
    }
    Ok(detection)
}

/// Opens the parent of an incremental bundle, or says why this store cannot have one.
fn open_parent<'s>(
    store: &'s dyn ObjectStore,
    req: &BundleRequest,
    choice: &ParentChoice,
    instance_id: &str,
) -> Result<super::parent::Parent<'s>, Error> {
    if !store.is_local() && !store.copies_parts() {
        return Err(invalid(
            "--parent",
            format!(
                "{} cannot copy objects (an upload policy only lets one POST new ones): an incremental bundle reuses its parent's frames by having the server copy them, which needs credentials for the bucket; bundle with --owner-akid/--owner-sak or an AWS profile instead of the policy, or without --parent/--incremental",
                store.location()
            ),
        ));
    }
    if !store.is_local() && req.layout == Layout::Parts {
        return Err(invalid(
            "--parent",
            "--layout parts stores each part as an object of its own, which a server-side copy cannot fill from a range of the parent: use --layout single (the default) for incremental bundles",
        ));
    }
    let keyring = req.encrypt.as_ref().map(EncryptTo::keyring).unwrap_or_default();
    super::parent::open(store, choice, &req.prefix, instance_id, req.force_parent, &keyring)
}

/// The request with the parent's chunk size and zstd level, each where the user did not choose
/// it and it differs (None: nothing to change). A parent's settings this winbundle would refuse as
/// options are refused here too.
fn follow_parent(req: &BundleRequest, parent: &super::parent::Parent<'_>) -> Result<Option<BundleRequest>, Error> {
    let m = &parent.bundle.manifest;
    let take = req.from_parent;
    let chunk_size = if take.chunk_size {
        m.chunk_size
    } else {
        req.chunk_size as u64
    };
    let level = if take.level { m.compression.level } else { req.level };
    if chunk_size == req.chunk_size as u64 && level == req.level {
        return Ok(None);
    }
    let adopted = BundleRequest {
        chunk_size: usize::try_from(chunk_size).unwrap_or(usize::MAX),
        level,
        ..req.clone()
    };
    check_settings(&adopted).map_err(|e| {
        invalid(
            "--parent",
            format!(
                "the parent bundle {} was made with chunks of {chunk_size} bytes at zstd level {level}, settings this winbundle does not make ({e}); bundle without --parent, or name another parent",
                parent.prefix
            ),
        )
    })?;
    tracing::info!(
        "chunks of {chunk_size} bytes at zstd level {level}, as the parent bundle {}",
        parent.prefix
    );
    Ok(Some(adopted))
}

/// Whether the parent's frames can be reused. `None` when they could be read but would not give
/// the frames a full bundle makes (another zstd version or level, no frame hashes for copies):
/// then every chunk is compressed, with a note.
fn reusable_parent<'s>(
    store: &'s dyn ObjectStore,
    req: &BundleRequest,
    parent: super::parent::Parent<'s>,
    notes: &mut Notes,
) -> Result<Option<super::parent::Parent<'s>>, Error> {
    if !store.is_local() && !parent.has_frame_hashes() {
        notes.warnings.push(format!(
            "the parent bundle {}'s chunk index has no frame hashes (it was made by an earlier winbundle), which copies on the server need so that every byte stays covered: every chunk is compressed again (a full bundle); the next bundle can build on this one",
            parent.prefix
        ));
        return Ok(None);
    }
    let m = &parent.bundle.manifest;
    if m.chunk_size != req.chunk_size as u64 {
        return Err(invalid(
            "--chunk-size",
            format!(
                "{} bytes, but the parent bundle {} has chunks of {} bytes: an incremental bundle reuses whole chunks, so pass --chunk-size {} (or bundle without --parent)",
                req.chunk_size, parent.prefix, m.chunk_size, m.chunk_size
            ),
        ));
    }
    let zstd_now = zstd::zstd_safe::version_string();
    let same_frames = m.compression.level == req.level && m.compression.zstd_version.as_deref() == Some(zstd_now);
    if !same_frames {
        notes.warnings.push(format!(
            "the parent bundle {} was compressed by zstd {} at level {}, this run uses zstd {zstd_now} at level {}: its frames would differ from this run's, so every chunk is compressed again (a full bundle)",
            parent.prefix,
            m.compression.zstd_version.as_deref().unwrap_or("(unknown)"),
            m.compression.level,
            req.level
        ));
        return Ok(None);
    }
    Ok(Some(parent))
}

/// The partitions a bundle leaves out, with why.
pub fn excluded_partitions(plan: &Plan<'_>) -> Vec<ExcludedPartition> {
    plan.layout
        .partitions
        .iter()
        .filter_map(|p| {
            Some(ExcludedPartition {
                index: p.partition.index,
                offset: p.partition.offset,
                length: p.partition.length,
                type_id: p.partition.ptype.id(),
                type_name: p.partition.ptype.name().into(),
                file_system: p.fs.to_string(),
                label: p.label.clone(),
                reason: p.excluded_because.clone()?,
            })
        })
        .collect()
}
