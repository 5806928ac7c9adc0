//! The `snapshot` command's work: the disk of a bundle, as `restore --disk` writes it, into a
//! new EBS snapshot through the EBS direct APIs.
//!
//! 1. The disk is rebuilt by `restore --disk` into a sparse temporary file (only the bundle's
//!    data takes room) under the work folder.
//! 2. `StartSnapshot` with the volume size in GiB, the parent snapshot (incremental), a client
//!    token (a re-run takes up a pending snapshot with it), and a `Timeout` sized to the data.
//! 3. `PutSnapshotBlock` for each block to send (see [`super::blocks`]), in parallel, each with
//!    its base64 SHA-256; retried with backoff on throttling and server errors.
//! 4. `CompleteSnapshot` with the count and the LINEAR aggregate (SHA-256 over the blocks'
//!    digests in ascending block order), only when every block was accepted and the run was
//!    not cancelled. Anything else leaves the snapshot pending (named in the error) to expire.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm, Status, Tag};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

use super::blocks::{block_count, changed_blocks, read_block};
use super::client::Ebs;
use super::record::{self, SnapshotRecord};
use super::{BLOCK_SIZE, EbsError};
use crate::Error;
use crate::progress::Progress;
use crate::read::OpenedBundle;
use crate::store::ObjectStore;

/// The shortest and longest `Timeout` StartSnapshot takes, in minutes.
pub const MIN_TIMEOUT_MINUTES: i32 = 10;
pub const MAX_TIMEOUT_MINUTES: i32 = 4320;
/// The slowest rate the sized timeout allows for (bytes a second).
const SLOWEST_RATE: u64 = 2 << 20;

/// What to make.
#[derive(Debug, Clone, Default)]
pub struct SnapshotRequest {
    pub prefix: String,
    pub description: Option<String>,
    pub tags: Vec<(String, String)>,
    /// The parent bundle's snapshot (must be the one its sidecar records).
    pub parent_snapshot: Option<String>,
    /// Never incremental.
    pub full: bool,
    pub client_token: Option<String>,
    /// Do not take up a pending snapshot this bundle's sidecar records.
    pub no_resume: bool,
    /// Make a new snapshot even if the sidecar records a completed one.
    pub again: bool,
    pub timeout_minutes: Option<i32>,
    /// Blocks in flight.
    pub concurrency: usize,
    /// Decompression threads of the disk restore.
    pub threads: usize,
    /// Where the temporary disk image goes (default: the system's temporary folder).
    pub work_dir: Option<PathBuf>,
    /// Opens an encrypted bundle's parent (its chunk index says which chunks changed).
    pub keyring: crate::crypt::keyring::Keyring,
}

/// What was made.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SnapshotOutcome {
    pub snapshot_id: String,
    /// What CompleteSnapshot answered (`pending` until EBS finishes it, then `completed`).
    pub status: String,
    pub bundle_id: String,
    pub volume_size: i64,
    pub disk_size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_snapshot_id: Option<String>,
    pub block_size: u64,
    /// Blocks of the disk, with a non-zero byte, and sent.
    pub disk_blocks: u64,
    pub non_zero_blocks: u64,
    pub blocks_sent: u64,
    /// An incremental snapshot: blocks the changed chunks touch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_blocks: Option<u64>,
    pub client_token: String,
    pub timeout_minutes: i32,
    /// LINEAR aggregate, base64.
    pub checksum: String,
    /// The sidecar object that records the snapshot.
    pub record_key: String,
    /// A pending snapshot of an earlier run was taken up.
    pub resumed: bool,
    /// The sidecar already recorded a completed snapshot: nothing was sent.
    pub already_made: bool,
    pub throttled: u64,
    pub retries: u64,
    /// The whole command, and its PutSnapshotBlock phase.
    pub seconds: f64,
    pub send_seconds: f64,
}

/// The `Timeout` (minutes) for a snapshot of `bytes` bytes of data: twice the time at 2 MiB/s,
/// plus 10 minutes, within what StartSnapshot accepts.
pub fn timeout_for(bytes: u64) -> i32 {
    let minutes = (bytes / SLOWEST_RATE).div_ceil(60) * 2 + 10;
    minutes.clamp(MIN_TIMEOUT_MINUTES as u64, MAX_TIMEOUT_MINUTES as u64) as i32
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn new_token() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    format!("winbundle-{}", hex::encode(b))
}

/// The parent snapshot an incremental snapshot of `b` builds on, with the parent bundle; None
/// for a full snapshot.
fn parent_of<'s>(
    store: &'s dyn ObjectStore,
    b: &OpenedBundle<'_>,
    req: &SnapshotRequest,
) -> Result<Option<(String, OpenedBundle<'s>)>, Error> {
    if req.full {
        return Ok(None);
    }
    let Some(p) = &b.manifest.parent else {
        return match &req.parent_snapshot {
            Some(s) => Err(EbsError::Refused(format!(
                "bundle {} is not incremental, so --parent-snapshot {s} cannot be checked against a parent bundle",
                b.manifest.bundle_id
            ))
            .into()),
            None => Ok(None),
        };
    };
    let recorded = record::read(store, &p.prefix)?
        .filter(|r| r.state == "completed" && r.bundle_id == p.bundle_id)
        .map(|r| r.snapshot_id);
    match (&req.parent_snapshot, recorded) {
        (Some(asked), Some(rec)) if *asked != rec => {
            Err(EbsError::Refused(format!(
                "--parent-snapshot {asked} is not the snapshot of the parent bundle {} ({}): its {} records {rec}",
                p.prefix,
                p.bundle_id,
                record::key(&p.prefix)
            ))
            .into())
        }
        (Some(asked), None) => {
            Err(EbsError::Refused(format!(
                "--parent-snapshot {asked}: the parent bundle {} has no completed snapshot recorded in {}, so which blocks the snapshot holds is not known",
                p.prefix,
                record::key(&p.prefix)
            ))
            .into())
        }
        (_, None) => Ok(None),
        (_, Some(rec)) => {
            let parent = OpenedBundle::open_readable(store, &p.prefix, &req.keyring)
                .map_err(|e| EbsError::Refused(format!("the parent bundle {} cannot be read ({e})", p.prefix)))?;
            if parent.manifest.bundle_id != p.bundle_id {
                return Err(EbsError::Refused(format!(
                    "the bundle under {} is {}, not the parent {} this bundle was made on",
                    p.prefix, parent.manifest.bundle_id, p.bundle_id
                ))
                .into());
            }
            Ok(Some((rec, parent)))
        }
    }
}

/// Makes the snapshot of bundle `b` (under `req.prefix` in `store`).
pub fn snapshot(
    store: &dyn ObjectStore,
    b: &OpenedBundle<'_>,
    req: &SnapshotRequest,
    ebs: &Ebs,
    restoring: &dyn Progress,
    sending: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<SnapshotOutcome, Error> {
    let started = Instant::now();
    let disk_size = check_request(b, req)?;
    let key = record::key(&req.prefix);
    let mine = record::read(store, &req.prefix)?.filter(|r| r.bundle_id == b.manifest.bundle_id);
    if let Some(r) = mine.as_ref().filter(|r| r.state == "completed" && !req.again) {
        return Ok(already_made(r, key, started));
    }
    let resume = mine.filter(|r| r.state == "pending" && !req.no_resume && !req.again);
    let (parent_id, changed) = incremental_base(store, b, req)?;
    // 1. The disk, in a sparse temporary file.
    let disk = TempDisk::restore(b, req, restoring, cancel)?;
    // 2. StartSnapshot, recorded as pending in the sidecar.
    let plan = Plan::new(req, disk_size, disk.written_bytes, resume.as_ref(), parent_id);
    if cancel.load(Ordering::SeqCst) {
        return Err(Error::Cancelled);
    }
    let snapshot_id = start_snapshot(ebs, b, req, &plan, resume.as_ref())?;
    let resumed = resume.as_ref().is_some_and(|r| r.snapshot_id == snapshot_id);
    let mut rec = plan.record(&snapshot_id, b, disk_size);
    let unfinished = |cause: EbsError| -> Error {
        EbsError::Unfinished {
            snapshot_id: snapshot_id.clone(),
            timeout_minutes: plan.timeout,
            cause: Box::new(cause),
        }
        .into()
    };
    record::write(store, &req.prefix, &rec)
        .map_err(|e| unfinished(EbsError::Refused(format!("cannot record it in {key} ({e})"))))?;
    // 3. The blocks.
    let sending_since = Instant::now();
    let sent = send_blocks(
        ebs,
        &snapshot_id,
        &disk.file,
        disk_size,
        changed.as_deref(),
        req.concurrency,
        sending,
        cancel,
    )
    .map_err(unfinished)?;
    let send_seconds = sending_since.elapsed().as_secs_f64();
    drop(disk);
    // 4. CompleteSnapshot, only now; then the sidecar says so.
    if cancel.load(Ordering::SeqCst) || ebs.api.cancelled() {
        return Err(unfinished(EbsError::Cancelled));
    }
    let checksum = B64.encode(sent.linear);
    let status = complete_snapshot(ebs, &snapshot_id, &sent, &checksum).map_err(unfinished)?;
    rec.state = "completed".into();
    rec.complete_time = Some(now());
    rec.blocks_sent = sent.sent;
    rec.checksum = Some(checksum.clone());
    if let Err(e) = record::write(store, &req.prefix, &rec) {
        tracing::warn!("snapshot {snapshot_id} is complete, but {key} could not record it: {e}");
    }
    Ok(SnapshotOutcome {
        snapshot_id,
        status,
        bundle_id: b.manifest.bundle_id.clone(),
        volume_size: plan.volume_gib,
        disk_size,
        parent_snapshot_id: plan.parent_id,
        block_size: BLOCK_SIZE,
        disk_blocks: block_count(disk_size),
        non_zero_blocks: sent.non_zero,
        blocks_sent: sent.sent,
        changed_blocks: changed.map(|c| c.iter().filter(|&&x| x).count() as u64),
        client_token: plan.token,
        timeout_minutes: plan.timeout,
        checksum,
        record_key: key,
        resumed,
        already_made: false,
        throttled: ebs.api.throttled.load(Ordering::Relaxed),
        retries: ebs.api.retries.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        send_seconds,
    })
}

/// The parent snapshot an incremental snapshot builds on, and the blocks the changed chunks
/// touch (to send instead of every non-zero block); None and None for a full snapshot.
fn incremental_base(
    store: &dyn ObjectStore,
    b: &OpenedBundle<'_>,
    req: &SnapshotRequest,
) -> Result<(Option<String>, Option<Vec<bool>>), Error> {
    match parent_of(store, b, req)? {
        Some((id, p)) => Ok((Some(id), Some(changed_blocks(b, &p)?))),
        None => Ok((None, None)),
    }
}

/// The disk size of bundle `b`, once the request is known to be one a snapshot can be made of.
fn check_request(b: &OpenedBundle<'_>, req: &SnapshotRequest) -> Result<u64, Error> {
    let Some(disk) = &b.manifest.disk else {
        return Err(EbsError::Refused(format!(
            "bundle {} keeps only C: (a bare volume, --volume-only, or an earlier winbundle): a snapshot needs the whole disk; bundle the disk again",
            b.manifest.bundle_id
        ))
        .into());
    };
    if let Some(t) = req.timeout_minutes
        && !(MIN_TIMEOUT_MINUTES..=MAX_TIMEOUT_MINUTES).contains(&t)
    {
        return Err(Error::InvalidParameter {
            parameter: "--timeout-minutes",
            message: format!("{t}: StartSnapshot takes {MIN_TIMEOUT_MINUTES} to {MAX_TIMEOUT_MINUTES} minutes"),
        });
    }
    Ok(disk.disk_size)
}

/// The outcome of a run whose bundle's sidecar already records a completed snapshot `r`.
fn already_made(r: &SnapshotRecord, record_key: String, started: Instant) -> SnapshotOutcome {
    SnapshotOutcome {
        snapshot_id: r.snapshot_id.clone(),
        status: "completed".into(),
        bundle_id: r.bundle_id.clone(),
        volume_size: r.volume_size,
        disk_size: r.disk_size,
        parent_snapshot_id: r.parent_snapshot_id.clone(),
        block_size: BLOCK_SIZE,
        blocks_sent: 0,
        client_token: r.client_token.clone(),
        timeout_minutes: r.timeout_minutes,
        checksum: r.checksum.clone().unwrap_or_default(),
        record_key,
        already_made: true,
        seconds: started.elapsed().as_secs_f64(),
        ..Default::default()
    }
}

/// The disk of a bundle, rebuilt by `restore --disk` into a sparse file in a temporary folder
/// (removed when this is dropped).
struct TempDisk {
    file: std::fs::File,
    written_bytes: u64,
    _dir: tempfile::TempDir,
}

impl TempDisk {
    fn restore(
        b: &OpenedBundle<'_>,
        req: &SnapshotRequest,
        progress: &dyn Progress,
        cancel: &AtomicBool,
    ) -> Result<TempDisk, Error> {
        let dir = tempfile::Builder::new()
            .prefix(".winbundle-snapshot-")
            .tempdir_in(req.work_dir.clone().unwrap_or_else(std::env::temp_dir))
            .map_err(|e| EbsError::Io {
                context: "create the temporary folder for the disk".into(),
                source: e,
            })?;
        let image = dir.path().join("disk.raw");
        let restored = crate::read::disk::restore(
            b,
            &image,
            crate::read::disk::DiskFormat::Raw,
            true,
            false,
            req.threads.max(1),
            progress,
            cancel,
        )?;
        let file = std::fs::File::open(&image).map_err(|e| EbsError::Io {
            context: format!("open {}", image.display()),
            source: e,
        })?;
        Ok(TempDisk {
            file,
            written_bytes: restored.written_bytes,
            _dir: dir,
        })
    }
}

/// What StartSnapshot is asked for.
struct Plan {
    volume_gib: i64,
    timeout: i32,
    token: String,
    parent_id: Option<String>,
}

impl Plan {
    /// For a disk of `disk_size` bytes, `data` of them data; the client token of the pending
    /// snapshot `resume` unless the request names one.
    fn new(
        req: &SnapshotRequest,
        disk_size: u64,
        data: u64,
        resume: Option<&SnapshotRecord>,
        parent_id: Option<String>,
    ) -> Plan {
        Plan {
            volume_gib: disk_size.div_ceil(1 << 30) as i64,
            timeout: req.timeout_minutes.unwrap_or_else(|| timeout_for(data)),
            token: req
                .client_token
                .clone()
                .or_else(|| resume.map(|r| r.client_token.clone()))
                .unwrap_or_else(new_token),
            parent_id,
        }
    }

    /// The sidecar's record of the pending snapshot `snapshot_id`.
    fn record(&self, snapshot_id: &str, b: &OpenedBundle<'_>, disk_size: u64) -> SnapshotRecord {
        SnapshotRecord {
            snapshot_id: snapshot_id.to_string(),
            state: "pending".into(),
            bundle_id: b.manifest.bundle_id.clone(),
            volume_size: self.volume_gib,
            disk_size,
            parent_snapshot_id: self.parent_id.clone(),
            client_token: self.token.clone(),
            timeout_minutes: self.timeout,
            start_time: now(),
            complete_time: None,
            blocks_sent: 0,
            checksum: None,
        }
    }
}

/// StartSnapshot: the id of the new snapshot, or of the pending one `resume` (or the client
/// token) names.
fn start_snapshot(
    ebs: &Ebs,
    b: &OpenedBundle<'_>,
    req: &SnapshotRequest,
    plan: &Plan,
    resume: Option<&SnapshotRecord>,
) -> Result<String, Error> {
    let api = ebs.api.clone();
    let description = req
        .description
        .clone()
        .unwrap_or_else(|| format!("winbundle {} ({})", b.manifest.bundle_id, b.manifest.instance_id));
    let start = ebs.rt.block_on(api.retrying("StartSnapshot", 0, || {
        let mut r = api
            .client
            .start_snapshot()
            .volume_size(plan.volume_gib)
            .client_token(&plan.token)
            .timeout(plan.timeout)
            .description(description.clone())
            .set_parent_snapshot_id(plan.parent_id.clone());
        for (k, v) in &req.tags {
            r = r.tags(Tag::builder().key(k).value(v).build());
        }
        r.send()
    }));
    let start = match (start, resume) {
        (Ok(s), _) => s,
        (Err(e), Some(r)) => {
            return Err(EbsError::CannotResume {
                snapshot_id: r.snapshot_id.clone(),
                client_token: plan.token.clone(),
                why: e.to_string(),
            }
            .into());
        }
        (Err(e), None) => return Err(e.into()),
    };
    let Some(snapshot_id) = start.snapshot_id().map(str::to_string) else {
        return Err(EbsError::Api {
            op: "StartSnapshot",
            code: "MissingSnapshotId".into(),
            message: "the answer names no snapshot".into(),
        }
        .into());
    };
    if let Some(st) = start.status()
        && *st != Status::Pending
    {
        return Err(EbsError::CannotResume {
            snapshot_id,
            client_token: plan.token.clone(),
            why: format!(
                "StartSnapshot with this client token answers a snapshot that is {}, not pending (a client token names one snapshot for good)",
                st.as_str()
            ),
        }
        .into());
    }
    if let Some(bs) = start.block_size()
        && bs as u64 != BLOCK_SIZE
    {
        tracing::warn!(
            "StartSnapshot answered a block size of {bs} bytes; the EBS direct APIs define {BLOCK_SIZE}, which is what is sent"
        );
    }
    Ok(snapshot_id)
}

/// CompleteSnapshot with the count and LINEAR aggregate of the blocks sent: the status it answers.
fn complete_snapshot(ebs: &Ebs, snapshot_id: &str, sent: &Sent, checksum: &str) -> Result<String, EbsError> {
    let api = &ebs.api;
    let done = ebs.rt.block_on(api.retrying("CompleteSnapshot", 1, || {
        api.client
            .complete_snapshot()
            .snapshot_id(snapshot_id)
            .changed_blocks_count(sent.sent as i32)
            .checksum(checksum)
            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
            .checksum_aggregation_method(ChecksumAggregationMethod::ChecksumAggregationLinear)
            .send()
    }))?;
    Ok(done.status().map_or("pending", |s| s.as_str()).to_string())
}

/// What [`send_blocks`] did.
struct Sent {
    sent: u64,
    non_zero: u64,
    linear: [u8; 32],
}

/// The state the block uploads share: the first failure, the stop it sets, the count accepted.
#[derive(Default, Clone)]
struct Uploads {
    failed: Arc<Mutex<Option<EbsError>>>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
}

impl Uploads {
    fn fail(&self, e: EbsError) {
        self.stop.store(true, Ordering::SeqCst);
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// PutSnapshotBlock of block `i` (`data`, whose SHA-256 is `digest`), retried; a failure
    /// stops the rest.
    async fn put(
        self,
        api: Arc<super::client::Api>,
        snapshot_id: String,
        i: u64,
        data: bytes::Bytes,
        digest: [u8; 32],
    ) {
        if self.stopped() {
            return;
        }
        let sum = B64.encode(digest);
        let r = api
            .retrying("PutSnapshotBlock", i, || {
                api.client
                    .put_snapshot_block()
                    .snapshot_id(&snapshot_id)
                    .block_index(i as i32)
                    .block_data(ByteStream::from(data.clone()))
                    .data_length(BLOCK_SIZE as i32)
                    .checksum(&sum)
                    .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
                    .send()
            })
            .await;
        match r {
            Ok(_) => {
                self.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(EbsError::Api { op, code, message }) => self.fail(EbsError::Api {
                op,
                code,
                message: format!("block {i}: {message}"),
            }),
            Err(e) => self.fail(e),
        }
    }
}

/// Sends the blocks of the disk image `file`: the non-zero ones, or with `changed` the marked
/// ones; `concurrency` at a time. The first failure stops the rest.
#[allow(clippy::too_many_arguments)]
fn send_blocks(
    ebs: &Ebs,
    snapshot_id: &str,
    file: &std::fs::File,
    disk_size: u64,
    changed: Option<&[bool]>,
    concurrency: usize,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<Sent, EbsError> {
    let concurrency = concurrency.max(1);
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let uploads = Uploads::default();
    let mut linear = Sha256::new();
    let (mut sent, mut non_zero) = (0u64, 0u64);
    progress.start(disk_size);
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    for i in 0..block_count(disk_size) {
        if uploads.stopped() {
            break;
        }
        if cancel.load(Ordering::SeqCst) {
            uploads.fail(EbsError::Cancelled);
            break;
        }
        let zero = read_block(file, disk_size, i, &mut buf).map_err(|e| EbsError::Io {
            context: format!("read block {i} of the restored disk"),
            source: e,
        })?;
        progress.read(BLOCK_SIZE.min(disk_size - i * BLOCK_SIZE));
        non_zero += u64::from(!zero);
        let send = match changed {
            Some(c) => c.get(i as usize).copied().unwrap_or(false),
            None => !zero,
        };
        if !send {
            continue;
        }
        let digest: [u8; 32] = Sha256::digest(&buf).into();
        linear.update(digest);
        sent += 1;
        let Ok(permit) = ebs.rt.block_on(permits.clone().acquire_owned()) else {
            break;
        };
        let put = uploads.clone().put(
            ebs.api.clone(),
            snapshot_id.to_string(),
            i,
            bytes::Bytes::copy_from_slice(&buf),
            digest,
        );
        ebs.rt.spawn(async move {
            let _permit = permit;
            put.await
        });
        progress.stored(BLOCK_SIZE);
    }
    // Every task ends (its permit comes back) before the answer.
    let _all = ebs.rt.block_on(permits.acquire_many(concurrency as u32));
    progress.finish();
    if let Some(e) = uploads.failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    let done = uploads.done.load(Ordering::SeqCst);
    if done != sent {
        return Err(EbsError::Api {
            op: "PutSnapshotBlock",
            code: "Incomplete".into(),
            message: format!("{done} of {sent} blocks were accepted"),
        });
    }
    Ok(Sent {
        sent,
        non_zero,
        linear: linear.finalize().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_grows_with_the_data_within_the_api_range() {
        assert_eq!(timeout_for(0), 10);
        assert_eq!(timeout_for(2 << 20), 12);
        assert_eq!(timeout_for(100 << 30), 1718);
        assert_eq!(timeout_for(10 << 40), MAX_TIMEOUT_MINUTES);
    }
}
