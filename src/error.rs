//! The library's error type. Each module has its own `thiserror` enum with context (path,
//! offset, chunk, key); this one gathers them, and adds for each an EC2-style error code (used
//! in failed bundle tasks), a hint of what to do next, and the process exit status.
//!
//! Exit statuses: 1 runtime failure, 2 bad usage or parameters, 3 the source is damaged or
//! unsupported, 4 a bundle failed verification (damaged or tampered), 130 cancelled.

use crate::crypt::CryptError;
use crate::format::FormatError;
use crate::ntfs::NtfsError;
use crate::source::SourceError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("NTFS volume at byte {offset}: {source}")]
    Ntfs { offset: u64, source: NtfsError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("invalid value for {parameter}: {message}")]
    InvalidParameter { parameter: &'static str, message: String },
    #[error("compression failed: {0}")]
    Compress(String),
    #[error(
        "cancelled (by cancel-bundle-task, Ctrl-C or SIGTERM): what was uploaded was aborted or removed, and no manifest was written"
    )]
    Cancelled,
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    /// `--output-file` could not be written; `printed`: the document went to standard output
    /// instead (the work was done), else nothing was done yet.
    #[error("cannot write the result document to {}: {source}{}", path.display(), if *printed { " (it was printed on standard output instead)" } else { "" })]
    OutputFile {
        path: std::path::PathBuf,
        source: std::io::Error,
        printed: bool,
    },
    #[error(transparent)]
    Task(#[from] crate::task::store::TaskStoreError),
    #[error(transparent)]
    Config(#[from] crate::api::config::ConfigError),
    /// `snapshot`: the EBS direct APIs.
    #[error(transparent)]
    Ebs(#[from] crate::ebs::EbsError),
    /// A path asked for inside a bundle's volume that is not there.
    #[error("{path}: no such file or folder in the bundle's volume")]
    NotInBundle { path: String },
    /// A file inside a bundle whose contents cannot be given (encrypted, left out, a name the
    /// local system cannot hold).
    #[error("{path}: {problem}")]
    Unreadable { path: String, problem: String },
    /// Encryption: recipients, identities, data keys, sealed frames.
    #[error(transparent)]
    Crypt(#[from] crate::crypt::CryptError),
    /// `--require-ec2-ready`, and the volume's Windows will not boot on EC2 (or that is not known).
    #[error("the Windows on this volume is not ready for EC2: {0}")]
    NotEc2Ready(String),
    /// A failure after which objects remain in a store that cannot delete them.
    #[error("{message}")]
    Incomplete {
        code: &'static str,
        message: String,
        exit: i32,
    },
}

impl From<NtfsError> for Error {
    fn from(source: NtfsError) -> Self {
        match source {
            NtfsError::Source(s) => Error::Source(s),
            source => Error::Ntfs { offset: 0, source },
        }
    }
}

impl Error {
    /// An EC2-style error code for a failed bundle task.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Source(SourceError::NotElevated { .. }) => "UnauthorizedOperation",
            Error::Source(SourceError::Snapshot { .. }) => "SnapshotFailed",
            Error::Source(SourceError::NoRootVolume { .. }) => "NoRootVolume",
            Error::Source(SourceError::AmbiguousRoot { .. } | SourceError::BadPartitionChoice { .. }) => {
                "InvalidParameterValue"
            }
            Error::Source(_) => "InvalidSource",
            Error::Ntfs { .. } => "InvalidSource",
            Error::Store(StoreError::BundleExists { .. }) => "BundleExists",
            Error::Store(StoreError::Cancelled { .. }) => "Cancelled",
            Error::Store(StoreError::Policy(p)) => p.code,
            Error::Store(StoreError::InvalidName { .. }) => "InvalidParameterValue",
            Error::Store(StoreError::NotFound { .. }) => "NoSuchBundle",
            Error::Store(StoreError::S3 { code, .. }) if code == "AccessDenied" || code == "Forbidden" => {
                "AccessDenied"
            }
            Error::Store(StoreError::S3 { code, .. }) if code == "NoSuchBucket" => "NoSuchBucket",
            Error::Store(_) => "StorageError",
            Error::Format(FormatError::Integrity { .. }) => "IntegrityError",
            Error::Format(_) => "InvalidBundle",
            Error::InvalidParameter { .. } => "InvalidParameterValue",
            Error::OutputFile { printed: false, .. } => "InvalidParameterValue",
            Error::Compress(_) | Error::Internal(_) | Error::Io { .. } | Error::OutputFile { .. } => "InternalError",
            Error::Cancelled => "Cancelled",
            Error::NotInBundle { .. } => "NoSuchFile",
            Error::Unreadable { .. } => "UnsupportedOperation",
            Error::Incomplete { code, .. } => code,
            Error::Task(t) => t.code(),
            Error::NotEc2Ready(_) => "NotEc2Ready",
            Error::Config(_) => "InvalidParameterValue",
            Error::Ebs(e) => e.code(),
            Error::Crypt(CryptError::Recipient { .. } | CryptError::Identity { .. }) => "InvalidParameterValue",
            Error::Crypt(CryptError::Locked { .. } | CryptError::NoMatchingIdentity) => "AccessDenied",
            Error::Crypt(CryptError::KeyFile(_) | CryptError::Frame { .. }) => "IntegrityError",
            Error::Crypt(CryptError::ChainStore { .. }) => "InternalError",
        }
    }

    /// What the user can do about it, when there is something.
    ///
    /// (Inspect, which is what most hints point to, has its own wording: see `hint_in_inspect`.)
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Error::NotEc2Ready(_) => {
                "install what is missing (the page named says how) and image again, or leave out --require-ec2-ready; `winbundle inspect SOURCE` shows the assessment".into()
            }
            Error::Source(SourceError::Open { .. }) => {
                "check the path; a block device needs read permission (run as root or add yourself to group disk)".into()
            }
            Error::Source(SourceError::AmbiguousRoot { .. }) => {
                "run `winbundle inspect SOURCE` to see the partitions, then pass --partition N".into()
            }
            Error::Source(SourceError::NoRootVolume { bitlocker: true, .. }) => BITLOCKER_HINT.into(),
            Error::Source(SourceError::NoRootVolume { .. }) => {
                "run `winbundle inspect SOURCE` to see what is on the disk; pass --partition N to bundle a specific NTFS volume".into()
            }
            Error::Source(SourceError::ReadVolume { .. } | SourceError::Read { .. }) => {
                "the disk has unreadable sectors there: check its health (SMART, `chkdsk /r` in Windows), copy it with ddrescue (which skips what it cannot read) and bundle the copy".into()
            }
            Error::Source(SourceError::PastEnd { .. } | SourceError::PartitionPastEnd { .. }) => {
                "the image is incomplete: copy it again (compare its size with the source disk)".into()
            }
            Error::Source(SourceError::Snapshot { hint, .. }) => (*hint).into(),
            Error::Source(SourceError::NotElevated { .. }) => {
                "right-click PowerShell or the Command Prompt, choose \"Run as administrator\", and run the command again".into()
            }
            Error::Source(SourceError::Table(_)) => {
                "the partition table is damaged: repair it (gdisk/testdisk) or image a bare volume instead".into()
            }
            Error::Ntfs { .. } | Error::Source(SourceError::DamagedVolume { .. }) => {
                "the NTFS volume is damaged: run `chkdsk /f` on it in Windows (or `ntfsfix`), then bundle again".into()
            }
            Error::Store(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::StorageFull => {
                "free space where --local-store points (a bundle needs about the compressed size of the volume's data), or choose another folder; nothing of this bundle was kept".into()
            }
            Error::Store(StoreError::BundleExists { .. }) => {
                "choose another --prefix, or pass --overwrite to replace the existing bundle".into()
            }
            Error::Store(StoreError::NotFound { .. }) => {
                "check --bucket, --prefix and --local-store; a bundle without its manifest is incomplete".into()
            }
            Error::Format(FormatError::Integrity { .. }) => {
                "the stored bundle is damaged or was modified: bundle the instance again".into()
            }
            Error::Cancelled => "nothing was kept; run the command again to start over".into(),
            Error::OutputFile { .. } => {
                "give --output-file a path in an existing folder you may write to, with free space (or leave it out to print the document)".into()
            }
            Error::NotInBundle { .. } => {
                "names are matched in any case, with \\ or / between them: list the folder above it with `winbundle ls --bucket B --prefix P FOLDER`".into()
            }
            Error::Store(StoreError::Cancelled { .. }) => "run the command again to start over".into(),
            Error::Config(_) => {
                "fix the configuration file (docs/serve.md has a complete example), then start the server again".into()
            }
            Error::Ebs(e) => return e.hint(),
            Error::Crypt(CryptError::NoMatchingIdentity) => {
                "pass the identity whose public key was given to --encrypt-to; `age-keygen -y KEY_FILE` prints an age identity's public key, `ssh-keygen -y -f KEY` an SSH key's".into()
            }
            Error::Crypt(CryptError::Recipient { .. }) => {
                "make a key pair with `age-keygen -o key.txt` (its public key is printed) and pass `--encrypt-to age1…`, or an SSH public key line (`--encrypt-to-file ~/.ssh/id_ed25519.pub`)".into()
            }
            Error::Crypt(CryptError::KeyFile(_) | CryptError::Frame { .. }) => {
                "the stored bundle is damaged or was modified: bundle the instance again".into()
            }
            Error::Crypt(CryptError::ChainStore { .. }) => {
                "check the task folder's permissions (--state-dir); remove the damaged key file to start a new chain".into()
            }
            Error::Store(StoreError::S3 { op, code, .. })
                if *op == crate::store::post::POST_V2 || *op == crate::store::post::POST_V4 =>
            {
                crate::store::post::hint(op, code)?.into()
            }
            Error::Store(StoreError::S3 { code, .. }) => crate::store::s3::error::hint(code)?.into(),
            Error::Store(StoreError::S3Transport { detail, .. }) if detail.contains("certificate") => {
                "the server's TLS certificate is not trusted: check --endpoint-url; for a private CA, put its certificate (PEM) in the file SSL_CERT_FILE names, or in the system's trust store".into()
            }
            Error::Store(StoreError::S3Transport { .. }) => {
                "check --endpoint-url (and that the server is running) and the network; transient failures were already retried".into()
            }
            _ => return None,
        })
    }

    /// The hint for a source problem met by `inspect`, which must not tell the user to run
    /// `inspect`: what to do instead.
    pub fn hint_in_inspect(&self) -> Option<String> {
        match self {
            Error::Source(SourceError::NoRootVolume { bitlocker: true, .. }) => Some(BITLOCKER_HINT.into()),
            Error::Source(SourceError::NoRootVolume { .. }) => Some(
                "the partitions above hold no readable NTFS volume: if C: is on another disk or image, inspect that one; a damaged NTFS volume can be repaired with `chkdsk /f` (or `ntfsfix`)".into(),
            ),
            Error::Source(SourceError::AmbiguousRoot { .. }) => {
                Some("pass --partition N (one of the NTFS partitions above) to inspect or bundle that one".into())
            }
            Error::Source(SourceError::BadPartitionChoice { .. }) => {
                Some("pass --partition N with one of the NTFS partitions above".into())
            }
            e => e.hint(),
        }
    }

    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::InvalidParameter { .. } | Error::NotInBundle { .. } => 2,
            Error::Source(SourceError::AmbiguousRoot { .. } | SourceError::BadPartitionChoice { .. }) => 2,
            Error::Source(SourceError::NotElevated { .. }) => 2,
            Error::Source(SourceError::Snapshot { .. }) => 1,
            Error::Store(StoreError::BundleExists { .. } | StoreError::InvalidName { .. }) => 2,
            Error::Source(_) | Error::Ntfs { .. } => 3,
            Error::Format(_) => 4,
            Error::Cancelled | Error::Store(StoreError::Cancelled { .. }) => 130,
            Error::Incomplete { exit, .. } => *exit,
            Error::Task(crate::task::store::TaskStoreError::Io { .. }) => 1,
            Error::Task(_) => 2,
            Error::Store(StoreError::Policy(_)) => 2,
            Error::Config(_) => 2,
            Error::Ebs(e) => e.exit_code(),
            Error::Crypt(CryptError::KeyFile(_) | CryptError::Frame { .. }) => 4,
            Error::Crypt(CryptError::ChainStore { .. }) => 1,
            Error::Crypt(_) => 2,
            _ => 1,
        }
    }

    /// Attaches the volume offset to an NTFS error.
    pub fn ntfs_at(offset: u64) -> impl Fn(NtfsError) -> Error {
        move |source| match source {
            NtfsError::Source(s) => Error::Source(s),
            source => Error::Ntfs { offset, source },
        }
    }
}

/// What to do about a BitLocker volume.
const BITLOCKER_HINT: &str = "bundle from inside the running Windows instance, where the volume is unlocked (`winbundle bundle-instance C:` reads it decrypted through Windows), or decrypt it first (`manage-bde -off C:`, then wait for `manage-bde -status` to say Fully Decrypted) and image the disk again";
