//! `winbundle snapshot`: an EBS snapshot of a bundle's whole disk (what `restore --disk` writes),
//! made with the EBS direct APIs (`StartSnapshot`, `PutSnapshotBlock`, `CompleteSnapshot`).
//!
//! * [`blocks`]: which 512 KiB blocks to send: the non-zero ones of the restored disk, or for an
//!   incremental bundle on a snapshotted parent, the blocks of the chunks that differ.
//! * [`client`]: the EBS client, with its own retries (throttling, 5xx, timeouts) and backoff.
//! * [`record`]: the sidecar object `PREFIX.snapshot.json` beside the bundle (the manifest is
//!   never rewritten): the snapshot id, its state and client token, for later runs.
//! * [`run`]: the whole command: restore the disk to a sparse temporary file, start the
//!   snapshot, send the blocks in parallel, complete it with the LINEAR aggregate checksum.

pub mod blocks;
pub mod client;
pub mod record;
pub mod run;

/// The EBS direct APIs' block size (StartSnapshot answers it; PutSnapshotBlock takes exactly it).
pub const BLOCK_SIZE: u64 = 524_288;

/// What can go wrong making a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum EbsError {
    /// The service (or the network) refused a request, after the retries.
    #[error("EBS {op} failed ({code}): {message}")]
    Api {
        op: &'static str,
        code: String,
        message: String,
    },
    /// No region, a client that cannot be built.
    #[error("EBS client: {0}")]
    Config(String),
    /// A snapshot was started and not completed: it stays `pending` (never usable) until its
    /// timeout, when EBS marks it failed.
    #[error(
        "snapshot {snapshot_id} was left unfinished (pending, not completed: it cannot be used, and EBS fails it once its {timeout_minutes}-minute timeout passes): {cause}"
    )]
    Unfinished {
        snapshot_id: String,
        timeout_minutes: i32,
        cause: Box<EbsError>,
    },
    /// Ctrl-C, SIGTERM.
    #[error("cancelled (Ctrl-C or SIGTERM)")]
    Cancelled,
    /// A re-run could not take up the pending snapshot it recorded.
    #[error("cannot resume snapshot {snapshot_id} (client token {client_token}): {why}")]
    CannotResume {
        snapshot_id: String,
        client_token: String,
        why: String,
    },
    /// The snapshot asked for cannot be made this way (a parent that does not fit, ...).
    #[error("{0}")]
    Refused(String),
    /// Reading the restored disk.
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

impl EbsError {
    /// EC2-style code.
    pub fn code(&self) -> &'static str {
        match self {
            EbsError::Api { code, .. } if code.contains("AccessDenied") => "AccessDenied",
            EbsError::Api { code, .. } if code.contains("Throttl") => "RequestLimitExceeded",
            EbsError::Api { code, .. } if code.contains("Validation") => "InvalidParameterValue",
            EbsError::Api { .. } => "SnapshotFailed",
            EbsError::Config(_) | EbsError::Refused(_) => "InvalidParameterValue",
            EbsError::Unfinished { cause, .. } if matches!(**cause, EbsError::Cancelled) => "Cancelled",
            EbsError::Unfinished { .. } => "SnapshotIncomplete",
            EbsError::Cancelled => "Cancelled",
            EbsError::CannotResume { .. } => "SnapshotCannotResume",
            EbsError::Io { .. } => "InternalError",
        }
    }

    /// What to do next.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            EbsError::Unfinished { .. } => "run the same command again: it takes up the pending snapshot with the client token recorded in PREFIX.snapshot.json and sends the blocks again (the EBS direct APIs cannot list what a pending snapshot holds); or pass --no-resume to start a new snapshot and let this one expire".into(),
            EbsError::CannotResume { .. } => "pass --no-resume to start a new snapshot (the old one expires on its own)".into(),
            EbsError::Api { code, .. } if code.contains("AccessDenied") => "the credentials need ebs:StartSnapshot, ebs:PutSnapshotBlock and ebs:CompleteSnapshot (and kms: permissions for an encrypted snapshot)".into(),
            EbsError::Api { .. } => "check --ebs-endpoint-url/--region and the network; throttling, 5xx answers and timeouts were already retried (--ebs-max-attempts)".into(),
            EbsError::Config(_) => "pass --region or set AWS_REGION (or a region in your AWS profile)".into(),
            EbsError::Refused(_) => "make a full snapshot with --full, or snapshot the parent bundle first".into(),
            EbsError::Io { .. } => "the disk is rebuilt in a sparse temporary file first: give --work-dir a folder with room for the bundle's data".into(),
            EbsError::Cancelled => "nothing was completed; run the command again to resume".into(),
        })
    }

    /// Process exit status.
    pub fn exit_code(&self) -> i32 {
        match self {
            EbsError::Cancelled => 130,
            EbsError::Unfinished { cause, .. } => cause.exit_code(),
            EbsError::Config(_) | EbsError::Refused(_) => 2,
            _ => 1,
        }
    }
}
