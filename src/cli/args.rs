//! Raw command-line arguments. Checked and turned into library requests by each subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use winbundle::format::Layout;

#[derive(Parser, Debug)]
#[command(
    name = "winbundle",
    version,
    about = "Image the Windows root volume (C:) of a disk into a bundle, like EC2 BundleInstance"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log what the run does on stderr, with timestamps: -v the plan, stages and their timings,
    /// S3 retries and failures; -vv also every S3 request and part; -vvv everything. RUST_LOG
    /// (e.g. `winbundle=debug`) sets the filter instead. Never logs secrets.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show the partitions, which one is C: and why, the NTFS facts, what is left out, and how
    /// much a bundle will read.
    Inspect(InspectArgs),
    /// Bundle the root volume of SOURCE under a bucket and prefix.
    BundleInstance(Box<BundleArgs>),
    /// Rebuild the raw root volume from a bundle, verifying every part and chunk.
    Restore(RestoreArgs),
    /// Check every object of a bundle against its manifest; writes nothing.
    Verify(VerifyArgs),
    /// List the files and folders inside a bundle (names, sizes, times, attributes), read
    /// straight from the bundle: only the chunks needed are fetched.
    Ls(LsArgs),
    /// Copy files and whole folders out of a bundle, keeping their times, without restoring
    /// the volume.
    Extract(ExtractArgs),
    /// Write one file of a bundle (or one of its alternate data streams) to standard output.
    Cat(CatArgs),
    /// Make an upload policy and its signature (as the aws-cli does for ec2 bundle-instance):
    /// what a machine needs to bundle into your bucket without your secret key.
    UploadPolicy(UploadPolicyArgs),
    /// List bundle tasks (from any terminal, while bundles run), with EC2's filters.
    DescribeBundleTasks(DescribeArgs),
    /// Stop a running bundle cleanly: uploads are aborted and the task ends failed (Cancelled).
    CancelBundleTask(CancelArgs),
    /// Find and abort unfinished multipart uploads under a bucket and prefix (what a killed
    /// bundle leaves; S3 bills their parts until they are aborted), or old partial files of a
    /// local store.
    Cleanup(CleanupArgs),
    /// Make an EBS snapshot of a bundle's whole disk (as `restore --disk` writes it) through
    /// the EBS direct APIs; incremental on the parent bundle's snapshot.
    Snapshot(Box<SnapshotArgs>),
    /// Serve the EC2 Query API (BundleInstance, DescribeBundleTasks, CancelBundleTask) so the
    /// aws-cli, boto3 and the SDKs drive winbundle with only --endpoint-url.
    Serve(ServeArgs),
    /// Print the shell completion script for bash, zsh, fish, PowerShell or elvish.
    Completions(CompletionsArgs),
    /// Print the man page (winbundle.1), or write one page per command into a folder.
    Man(ManArgs),
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write winbundle.1 and winbundle-COMMAND.1 for every command into this folder instead of
    /// printing winbundle.1.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only uploads started longer ago than this (e.g. 90m, 24h, 7d; default: all). A running
    /// bundle's upload is recent: an age keeps clear of it.
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    pub older_than: Option<u64>,
    /// List what would be aborted; abort nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How to print the uploads found.
    #[arg(long, value_enum, default_value = "json")]
    pub output: OutputFormat,
    #[command(flatten)]
    pub out: super::output::OutputFileArgs,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The server's configuration (TOML): instances, S3 endpoint, callers, state folder.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Address to listen on (default: the file's `listen`, else 127.0.0.1:8773; port 0 picks a
    /// free port, printed on the first line of stdout).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Folder of the task files (default: the file's `state_dir`, else
    /// $XDG_STATE_HOME/winbundle/tasks).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DescribeArgs {
    /// Only these bundle ids.
    #[arg(long, num_args = 1..)]
    pub bundle_ids: Vec<String>,
    /// `Name=NAME,Values=V1,V2` (values ORed, filters ANDed; * and ? wildcards): bundle-id,
    /// error-code, error-message, instance-id, progress, s3-bucket, s3-prefix, start-time, state,
    /// update-time. Repeatable.
    #[arg(long)]
    pub filters: Vec<String>,
    #[arg(long, value_enum, default_value = "json")]
    pub output: OutputFormat,
    #[command(flatten)]
    pub out: super::output::OutputFileArgs,
    /// Folder of the task files (default: $XDG_STATE_HOME/winbundle/tasks).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CancelArgs {
    #[arg(long)]
    pub bundle_id: String,
    #[arg(long, value_enum, default_value = "json")]
    pub output: OutputFormat,
    #[command(flatten)]
    pub out: super::output::OutputFileArgs,
    /// Folder of the task files (default: $XDG_STATE_HOME/winbundle/tasks).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

/// BundleInstance's storage parameters: upload with a policy instead of credentials.
#[derive(Args, Debug, Clone, Default)]
pub struct PolicyArgs {
    /// Access key id of the bucket owner (pairs with the policy signature; a version 4 policy
    /// names it too, and may stand in for it).
    #[arg(long, value_name = "AKID")]
    pub owner_akid: Option<String>,
    /// base64 upload policy from the bucket owner (`winbundle upload-policy`, boto3's
    /// generate_presigned_post or the aws-cli): signature version 2 or 4, told by its conditions.
    #[arg(long, value_name = "BASE64")]
    pub upload_policy: Option<String>,
    /// Signature of the upload policy: base64 for version 2, hex (boto3's x-amz-signature) for 4.
    #[arg(long, value_name = "SIGNATURE")]
    pub upload_policy_signature: Option<String>,
    /// The owner's secret key: make the policy (24 h) and signature here, as the aws-cli does.
    /// The key is used for signing only and never sent.
    #[arg(long, value_name = "SECRET", hide_env_values = true)]
    pub owner_sak: Option<String>,
    /// With --owner-sak: the signature version of the policy made here (4 needs a region).
    #[arg(long, value_name = "4|2", default_value_t = 4, value_parser = parse_signature_version)]
    pub signature_version: u8,
}

/// `4` or `2`.
pub fn parse_signature_version(s: &str) -> Result<u8, String> {
    match s.trim() {
        "4" | "v4" => Ok(4),
        "2" | "v2" => Ok(2),
        _ => Err(format!("{s:?}: the signature version is 4 or 2")),
    }
}

#[derive(Args, Debug)]
pub struct UploadPolicyArgs {
    /// Bucket the policy allows.
    #[arg(long)]
    pub bucket: String,
    /// Key prefix the policy allows.
    #[arg(long)]
    pub prefix: String,
    /// Access key id of the bucket owner.
    #[arg(long, value_name = "AKID")]
    pub owner_akid: String,
    /// The owner's secret key (default: AWS_SECRET_ACCESS_KEY).
    #[arg(long, value_name = "SECRET", env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub owner_sak: Option<String>,
    /// 4: a SigV4 POST policy, which AWS (every bucket and region), Garage, MinIO, Ceph and s3s
    /// accept; 2: EC2's original kind, laid out as the aws-cli's `ec2 bundle-instance` (refused
    /// by AWS buckets made since June 2020 and by Garage). Both limit keys to `PREFIX.`.
    #[arg(long, value_name = "4|2", default_value_t = 4, value_parser = parse_signature_version)]
    pub signature_version: u8,
    /// The bucket's region, which a version 4 policy is signed for (default: AWS_REGION,
    /// AWS_DEFAULT_REGION, or the profile's region). Garage's is its `s3_region`.
    #[arg(long, env = "AWS_REGION", hide_env_values = true)]
    pub region: Option<String>,
    /// Named profile whose region to use (default: AWS_PROFILE, else `default`).
    #[arg(long)]
    pub profile: Option<String>,
    /// Canned ACL every upload must carry, or `none` (default: none for version 4, as buckets
    /// with ACLs disabled require; ec2-bundle-read for version 2, as EC2 did).
    #[arg(long, value_name = "NAME|none")]
    pub acl: Option<String>,
    /// Validity from now (`24h`, `90m`, `2d`, `3600s`).
    #[arg(long, default_value = "24h", conflicts_with = "expires_at")]
    pub expires: String,
    /// Expiry as an ISO-8601 UTC time (`2026-12-01T00:00:00Z`); a time in the past is refused.
    #[arg(long)]
    pub expires_at: Option<String>,
    /// The disk the policy is for: its size tells whether the policy lasts long enough (a
    /// warning when a bundle at 20 MiB/s would outlive it).
    #[arg(long, value_name = "DISK", conflicts_with = "size")]
    pub source: Option<std::path::PathBuf>,
    /// The size of the disk the policy is for (`500GiB`), instead of --source.
    #[arg(long, value_name = "SIZE")]
    pub size: Option<String>,
    /// Require every upload to ask S3 for this server-side encryption: `AES256` (SSE-S3) or
    /// `aws:kms` (SSE-KMS). bundle-instance sends the fields the policy requires by itself.
    #[arg(long, value_enum, value_name = "ALGORITHM")]
    pub sse: Option<SseArg>,
    /// The KMS key every upload must name with `--sse aws:kms`.
    #[arg(long, value_name = "ID", requires = "sse")]
    pub sse_kms_key_id: Option<String>,
    #[arg(long, value_enum, default_value = "json")]
    pub output: PolicyOutput,
    #[command(flatten)]
    pub out: super::output::OutputFileArgs,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyOutput {
    Json,
    Text,
}

/// Which volume, and what to leave out.
#[derive(Args, Debug, Clone)]
pub struct VolumeArgs {
    /// Bundle partition N instead of the detected root volume (numbers as `inspect` shows them).
    #[arg(long, value_name = "N")]
    pub partition: Option<u32>,
    /// Leave out the contents of this root-relative file or directory (its clusters are imaged
    /// as zeros; the files stay). Repeatable.
    #[arg(long, value_name = "PATH")]
    pub exclude: Vec<String>,
    /// Keep what is left out by default: \pagefile.sys, \swapfile.sys, \hiberfil.sys, the
    /// page files the volume's registry names, and the storage of earlier shadow copies.
    #[arg(long)]
    pub no_default_excludes: bool,
    /// Keep the storage of the volume's earlier shadow copies (\System Volume
    /// Information\*{3808876b-…}), left out by default. A restored volume has no earlier
    /// shadow copies without it.
    #[arg(long)]
    pub keep_shadow_copies: bool,
    /// Refuse (exit 1, NotEc2Ready) unless the volume's registry shows a Windows that boots on
    /// some EC2 instance family (docs/ec2-readiness.md); `inspect` shows the assessment.
    #[arg(long)]
    pub require_ec2_ready: bool,
    /// Also leave out what the volume's own FilesNotToSnapshot and FilesNotToBackup lists match
    /// (`inspect` shows them). Their files are imaged as zeros, not deleted as Windows' own
    /// snapshots show them.
    #[arg(long)]
    pub exclude_windows_lists: bool,
    /// Keep only C:, not the partition table and the system partitions (EFI, MSR, recovery,
    /// System Reserved) that `restore --disk` needs to rebuild a bootable disk.
    #[arg(long)]
    pub volume_only: bool,
}

/// How a live Windows volume is read.
#[derive(Args, Debug, Clone)]
pub struct LiveArgs {
    /// For a live Windows volume (C:): read a Volume Shadow Copy snapshot (vss, consistent while
    /// Windows runs), or the volume itself (none: only for volumes nothing writes to).
    #[arg(long, value_enum, default_value = "vss")]
    pub snapshot: winbundle::source::live::SnapshotMode,
    /// How long making the snapshot may take (`120s`, `5m`).
    #[arg(long, default_value = "120s", value_parser = parse_seconds)]
    pub snapshot_timeout: std::time::Duration,
    /// Fail the bundle when a VSS writer fails (by default: a warning, and the writer is
    /// recorded as failed in the manifest: its application's data is only crash-consistent).
    #[arg(long)]
    pub require_writers: bool,
}

fn parse_seconds(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    d.to_std()
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s:?}: give a positive duration (examples: 120s, 5m)"))
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Disk image, bare NTFS volume image, block device, or on Windows a live volume or disk
    /// (C:, \\.\C:, \\?\Volume{GUID}\, \\.\PhysicalDriveN).
    pub source: PathBuf,
    #[command(flatten)]
    pub volume: VolumeArgs,
    #[command(flatten)]
    pub live: LiveArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub out: super::output::OutputFileArgs,
}

/// Where a bundle is stored.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Bucket that holds the bundle.
    #[arg(long)]
    pub bucket: String,
    /// Prefix of every object of the bundle (PREFIX.manifest.json, PREFIX.image.zst, ...).
    #[arg(long)]
    pub prefix: String,
    /// Keep the bundle in this folder (objects at DIR/BUCKET/KEY) instead of S3.
    #[arg(long, value_name = "DIR")]
    pub local_store: Option<PathBuf>,
    #[command(flatten)]
    pub s3: S3Args,
}

/// How to reach S3 (credentials come from the standard AWS chain: environment, profile, SSO,
/// instance metadata).
#[derive(Args, Debug, Clone)]
pub struct S3Args {
    /// AWS region (default: AWS_REGION or the profile's; `us-east-1` with a custom endpoint).
    #[arg(long, env = "AWS_REGION", hide_env_values = true)]
    pub region: Option<String>,
    /// S3-compatible endpoint, e.g. http://127.0.0.1:9000 (AWS_ENDPOINT_URL_S3 and
    /// AWS_ENDPOINT_URL are honoured too).
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// Named profile from ~/.aws/config and ~/.aws/credentials.
    #[arg(long)]
    pub profile: Option<String>,
    /// Path-style addressing (http://host/bucket/key); on by default with an endpoint URL.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub force_path_style: Option<bool>,
    /// Requests in flight at once (parts uploaded, ranges fetched).
    #[arg(long, default_value_t = winbundle::store::s3::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Attempts per request, first try included (throttling, 5xx, timeouts and dropped
    /// connections are retried with backoff; access and signature errors never are).
    #[arg(long, default_value_t = winbundle::store::s3::DEFAULT_MAX_ATTEMPTS)]
    pub max_attempts: u32,
    /// Have S3 encrypt the objects written: `AES256` (SSE-S3) or `aws:kms` (SSE-KMS).
    #[arg(long, value_enum, value_name = "ALGORITHM", conflicts_with = "sse_c_key_file")]
    pub sse: Option<SseArg>,
    /// The KMS key for `--sse aws:kms` (key id, ARN or alias; default: the account's aws/s3 key).
    #[arg(long, value_name = "ID", requires = "sse")]
    pub sse_kms_key_id: Option<String>,
    /// Encrypt (and read) the objects with this customer key (SSE-C): a file of 32 bytes, or of
    /// 64 hex digits or base64 of 32 bytes. S3 keeps no copy: without the key the bundle is lost.
    #[arg(long, value_name = "FILE")]
    pub sse_c_key_file: Option<PathBuf>,
}

/// What opens an encrypted bundle.
#[derive(Args, Debug, Clone, Default)]
pub struct IdentityArgs {
    /// An age identity file (age-keygen's) or an unencrypted SSH private key (ed25519, RSA)
    /// that opens an encrypted bundle. Repeatable; WINBUNDLE_IDENTITY names one too. Never
    /// needed for a plaintext bundle.
    #[arg(long, value_name = "FILE", env = "WINBUNDLE_IDENTITY", hide_env_values = true)]
    pub identity: Vec<PathBuf>,
}

/// Server-side encryption asked of S3 when objects are created.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseArg {
    #[value(name = "AES256")]
    Aes256,
    #[value(name = "aws:kms")]
    AwsKms,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Json,
    Xml,
    Text,
}

#[derive(Args, Debug)]
pub struct BundleArgs {
    /// Disk image, bare NTFS volume image, block device, or on Windows a live volume or disk
    /// (C:, \\.\C:, \\?\Volume{GUID}\, \\.\PhysicalDriveN).
    pub source: PathBuf,
    #[command(flatten)]
    pub live: LiveArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Instance id to record (default: derived from the source, stable across runs).
    #[arg(long)]
    pub instance_id: Option<String>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub volume: VolumeArgs,
    /// Uncompressed bytes per zstd frame [default: 4MiB; with --parent or --incremental, the
    /// parent's].
    #[arg(long, value_parser = parse_size)]
    pub chunk_size: Option<u64>,
    /// zstd level (1 fastest … 22 smallest; -7…-1 faster still) [default: 1; with --parent or
    /// --incremental, the parent's].
    #[arg(long, allow_negative_numbers = true)]
    pub zstd_level: Option<i32>,
    /// Compression threads (default: the number of cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// One object PREFIX.image.zst; objects PREFIX.part.N; or `runs`: objects
    /// PREFIX.image.NNNNNN.zst, split where an incremental bundle's copies on S3 need it, so
    /// that only changed frames are sent.
    #[arg(long, value_enum, default_value = "single")]
    pub layout: Layout,
    /// Bytes per part (grown automatically so a bundle never needs more than 10,000 parts).
    #[arg(long, value_parser = parse_size)]
    pub part_size: Option<u64>,
    /// Replace a bundle that already exists under this prefix.
    #[arg(long)]
    pub overwrite: bool,
    /// Do not pick up an interrupted earlier run of this bundle: abort its unfinished upload
    /// (S3), drop its partial file (local store) or forget its POST journal (upload policy),
    /// and start over.
    #[arg(long)]
    pub no_resume: bool,
    /// Incremental bundle: reuse the frames of the bundle under this prefix (same bucket) for
    /// chunks that did not change. The result is still a complete bundle on its own.
    #[arg(long, value_name = "PREFIX", conflicts_with = "incremental")]
    pub parent: Option<String>,
    /// Incremental bundle on the newest complete bundle of the same instance in the folder of
    /// --prefix (what comes before its last `/`).
    #[arg(long)]
    pub incremental: bool,
    /// Reuse a parent bundle made of another instance.
    #[arg(long)]
    pub force_parent: bool,
    /// Incremental bundle: read and hash every chunk, as a full bundle does, instead of only
    /// the chunks the volume's metadata says changed; report every chunk where the metadata
    /// and the data disagree (a write that bypassed the file system).
    #[arg(long)]
    pub rehash: bool,
    /// Incremental bundle: make every N-th bundle of a chain a --rehash (the chain counts the
    /// bundles that took chunks on the metadata's word since the last full read).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub rehash_every: Option<u32>,
    /// Encrypt the bundle for this recipient: an age public key (`age1…`, from age-keygen) or
    /// an SSH public key line (`ssh-ed25519 …`, `ssh-rsa …`). Repeatable: any one recipient's
    /// identity opens the bundle. The bundler needs no secret.
    #[arg(long, value_name = "RECIPIENT")]
    pub encrypt_to: Vec<String>,
    /// Encrypt the bundle for the recipients in this file, one per line (`#` comments; age's
    /// recipients-file format, or an SSH `.pub` file). Repeatable.
    #[arg(long, value_name = "FILE")]
    pub encrypt_to_file: Vec<PathBuf>,
    /// How to print the final bundle task.
    #[arg(long, value_enum, default_value = "json")]
    pub output: OutputFormat,
    #[command(flatten)]
    pub out: super::output::OutputFileArgs,
    /// No progress bar and no notes on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Folder of the task files (default: $XDG_STATE_HOME/winbundle/tasks).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// File (or block device) to write the raw volume to; `-` for standard output. With
    /// --disk also `s3://BUCKET/KEY`: the image streams into an S3 multipart upload there (the
    /// store options say how to reach S3), complete only when the upload completes.
    #[arg(long, short, required_unless_present = "output_key")]
    pub output: Option<PathBuf>,
    /// With --disk: write the image into this key of the bundle's bucket (S3 or
    /// --local-store) instead of --output.
    #[arg(long, value_name = "KEY", requires = "disk", conflicts_with = "output")]
    pub output_key: Option<String>,
    /// Replace OUTPUT if it is an existing file.
    #[arg(long)]
    pub force: bool,
    /// OUTPUT is a block device that reads back zeros where nothing is written (a new EBS
    /// volume, a discarded SSD, a thin LUN): zero runs are skipped instead of written.
    #[arg(long)]
    pub assume_zeroed: bool,
    /// Write through the page cache. By default a file or device is written around it (direct
    /// I/O, Linux), which leaves the CPU to the decompression; a file system that refuses
    /// direct I/O is written buffered anyway.
    #[arg(long)]
    pub buffered: bool,
    /// Write the whole disk, bootable: the partition table (without the left-out partitions),
    /// the system partitions and C:, each at its original offset.
    #[arg(long)]
    pub disk: bool,
    /// With --disk: `raw`; `vhd` (a fixed VHD: the raw disk plus a 512-byte footer, for
    /// Hyper-V and EC2 VM Import); `vmdk` (stream-optimized, deflated grains, zero grains left
    /// out: what VM Import prefers); `vhdx` (dynamic, zero blocks left unallocated).
    #[arg(long, value_enum, default_value = "raw", requires = "disk")]
    pub format: DiskFormatArg,
    /// Decompression threads (default: the number of cores; twice that for a file or device
    /// written with direct I/O, where each thread also waits for its writes).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the result as JSON (on stderr when OUTPUT is `-`).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub out: super::output::OutputFileArgs,
    #[arg(long, short)]
    pub quiet: bool,
}

/// The format `restore --disk` writes.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormatArg {
    Raw,
    Vhd,
    Vmdk,
    Vhdx,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Folder or file inside the volume (`\Windows\System32` or `/Windows/System32`, any
    /// case); the root when left out.
    #[arg(default_value = "\\")]
    pub path: String,
    /// Attributes, modification time and size of each entry, and its alternate data streams.
    #[arg(long, short)]
    pub long: bool,
    /// List subfolders too, with paths from PATH.
    #[arg(long, short = 'R')]
    pub recursive: bool,
    /// Also the file system's own files ($MFT, $Bitmap, $Extend, ...).
    #[arg(long)]
    pub system: bool,
    /// Print the entries (every fact) and what was fetched as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub out: super::output::OutputFileArgs,
}

#[derive(Args, Debug)]
pub struct ExtractArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Files or folders inside the volume; each lands in OUTPUT under its own name (`\` puts
    /// the whole volume's tree there).
    #[arg(required = true)]
    pub paths: Vec<String>,
    /// Folder to write into (made if missing).
    #[arg(long, short)]
    pub output: PathBuf,
    /// Extract this alternate data stream of each file instead of its contents, as
    /// `NAME:STREAM` (on Windows, a stream of that file again).
    #[arg(long, value_name = "NAME")]
    pub stream: Option<String>,
    /// Replace files that already exist in OUTPUT.
    #[arg(long)]
    pub force: bool,
    /// Symbolic links, junctions and mount points: `link` makes a symbolic link where Windows
    /// has one (absolute targets on this volume point under OUTPUT), never followed; `copy`
    /// writes the contents of a link's target when it is a file on this volume; `skip` leaves
    /// them out.
    #[arg(long, value_enum, default_value = "link")]
    pub links: super::links::LinksArg,
    /// Give each file and folder its security descriptor from the volume (owner, group,
    /// permissions, audit entries): on Windows, and on Linux onto an NTFS volume mounted by
    /// ntfs-3g. Owners and audit entries take an elevated prompt on Windows.
    #[arg(long, conflicts_with = "stream")]
    pub acls: bool,
    /// Print what was extracted and fetched as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub out: super::output::OutputFileArgs,
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct CatArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// The file inside the volume.
    pub path: String,
    /// Write this alternate data stream instead of the file's contents.
    #[arg(long, value_name = "NAME")]
    pub stream: Option<String>,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Decompression threads (default: the number of cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also open every frame of an encrypted bundle and check its plaintext (needs --identity
    /// or WINBUNDLE_IDENTITY; an identity given does this anyway). Without an identity, only
    /// the stored bytes are checked against the manifest's digests.
    #[arg(long)]
    pub decrypt: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub out: super::output::OutputFileArgs,
    #[arg(long, short)]
    pub quiet: bool,
}

/// `90s`, `30m`, `24h`, `7d` (or plain seconds) → seconds.
fn parse_age(s: &str) -> Result<u64, String> {
    let d = parse_duration(s)?;
    u64::try_from(d.num_seconds()).map_err(|_| format!("{s:?}: an age cannot be negative"))
}

fn parse_size(s: &str) -> Result<u64, String> {
    winbundle::units::parse_size(s)
}

/// `24h`, `90m`, `2d`, `3600s`, `3600`.
pub fn parse_duration(s: &str) -> Result<chrono::Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: i64 = t[..split]
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (examples: 24h, 90m, 2d)"))?;
    match &t[split..] {
        "" | "s" => Ok(chrono::Duration::seconds(n)),
        "m" => Ok(chrono::Duration::minutes(n)),
        "h" => Ok(chrono::Duration::hours(n)),
        "d" => Ok(chrono::Duration::days(n)),
        u => Err(format!("unknown duration unit {u:?} in {s:?} (use s, m, h or d)")),
    }
}

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Build on this snapshot of the parent bundle (default: the one the parent's
    /// PREFIX.snapshot.json records, when the bundle is incremental); only blocks of changed
    /// chunks are sent.
    #[arg(long, value_name = "SNAPSHOT_ID")]
    pub parent_snapshot: Option<String>,
    /// A full snapshot even when the bundle is incremental on a snapshotted parent.
    #[arg(long, conflicts_with = "parent_snapshot")]
    pub full: bool,
    /// The snapshot's description (default: winbundle BUNDLE_ID (INSTANCE_ID)).
    #[arg(long)]
    pub description: Option<String>,
    /// A tag KEY=VALUE for the snapshot. Repeatable.
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// StartSnapshot's client token (default: the pending run's, recorded in
    /// PREFIX.snapshot.json, else a new one).
    #[arg(long)]
    pub client_token: Option<String>,
    /// Do not take up the pending snapshot an interrupted run recorded: start a new one.
    #[arg(long)]
    pub no_resume: bool,
    /// Make a new snapshot even if PREFIX.snapshot.json records a completed one.
    #[arg(long)]
    pub again: bool,
    /// Minutes EBS waits for CompleteSnapshot before failing the snapshot (10-4320; default
    /// sized to the data: twice its time at 2 MiB/s, plus 10 minutes).
    #[arg(long)]
    pub timeout_minutes: Option<i32>,
    /// EBS direct APIs endpoint, e.g. a test server (AWS_ENDPOINT_URL_EBS is honoured too).
    #[arg(long, value_name = "URL")]
    pub ebs_endpoint_url: Option<String>,
    /// Blocks sent at once.
    #[arg(long, default_value_t = winbundle::ebs::client::DEFAULT_CONCURRENCY)]
    pub ebs_concurrency: usize,
    /// Attempts per EBS request, the first included (throttling, 5xx, timeouts are retried
    /// with backoff).
    #[arg(long, default_value_t = winbundle::ebs::client::DEFAULT_MAX_ATTEMPTS)]
    pub ebs_max_attempts: u32,
    /// Folder for the temporary disk image (sparse: it takes the bundle's data size; default:
    /// the system's temporary folder).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Decompression threads (default: the number of cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// How to print the result.
    #[arg(long, value_enum, default_value = "json")]
    pub output: OutputFormat,
    #[command(flatten)]
    pub out: super::output::OutputFileArgs,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `KEY=VALUE`.
fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s}: a tag is KEY=VALUE")),
    }
}
