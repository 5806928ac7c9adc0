//! `winbundle bundle-instance`: runs a bundle and prints the final task.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::{Value, json};
use winbundle::Error;
use winbundle::bundle::create::{
    BundleOutcome, BundleRequest, DEFAULT_CHUNK_SIZE, DEFAULT_LEVEL, DEFAULT_PART_SIZE, FromParent, ParentChoice,
    default_threads, validate,
};
use winbundle::bundle::encrypt::EncryptTo;
use winbundle::chunk::PipelineStats;
use winbundle::crypt::chain::ChainKeys;
use winbundle::format::manifest::Manifest;
use winbundle::progress::Progress;
use winbundle::store::ObjectStore;
use winbundle::task::new_request_id;
use winbundle::task::run::run_tracked;
use winbundle::task::store::TaskStore;

use super::args::{BundleArgs, OutputFormat};
use super::inspect::plan_options;
use super::output::Output;
use super::progress::Bar;

/// `bundle-instance`: checks where the document goes, builds the request, opens the store (or
/// the policy upload), runs the bundle as a tracked task, says what it decided by itself, and
/// prints the final task with the bundle's summary.
pub fn run(args: BundleArgs, cancel: &Arc<AtomicBool>) -> Result<i32, Error> {
    let out = Output::new(&args.out)?;
    let tasks = super::tasks::open(&args.state_dir)?;
    let req = request(&args, &tasks)?;
    let (req, store) = open_target(req, &args, &tasks, cancel)?;
    if let Some(id) = &req.instance_id {
        tasks.check_not_running(id, "")?;
    }
    let outcome = bundle_with_progress(&req, store.as_ref(), &tasks, args.quiet, cancel);
    announce(&args, &outcome);
    let summary = outcome.result.as_ref().ok().map(|(m, s)| {
        let mut v = summary(&req, &outcome, m, s);
        v["ServerSideEncryption"] = store.server_side_encryption().unwrap_or(Value::Null);
        v
    });
    let doc = output_document(args.output, &outcome, summary.as_ref());
    if let Some(code) = write_output(&out, &doc, &outcome, args.output) {
        return Ok(code);
    }
    Ok(exit_code(outcome.result, args.output))
}

/// The bundle request the arguments ask for (before a policy upload sets its layout).
fn request(args: &BundleArgs, tasks: &TaskStore) -> Result<BundleRequest, Error> {
    Ok(BundleRequest {
        source: args.source.clone(),
        bucket: args.store.bucket.clone(),
        prefix: args.store.prefix.clone(),
        instance_id: args.instance_id.clone(),
        plan: plan_options(&args.volume),
        chunk_size: args
            .chunk_size
            .map_or(DEFAULT_CHUNK_SIZE, |c| usize::try_from(c).unwrap_or(usize::MAX)),
        level: args.zstd_level.unwrap_or(DEFAULT_LEVEL),
        threads: default_threads(args.threads),
        layout: args.layout,
        part_size: args.part_size,
        overwrite: args.overwrite,
        assigned: None,
        live: winbundle::source::live::LiveOptions {
            snapshot: args.live.snapshot,
            snapshot_timeout: args.live.snapshot_timeout,
            require_writers: args.live.require_writers,
            ..Default::default()
        },
        parent: match (&args.parent, args.incremental) {
            (Some(p), _) => Some(ParentChoice::Prefix(p.clone())),
            (None, true) => Some(ParentChoice::Newest),
            (None, false) => None,
        },
        force_parent: args.force_parent,
        from_parent: FromParent {
            chunk_size: args.chunk_size.is_none(),
            level: args.zstd_level.is_none(),
        },
        rehash: winbundle::bundle::detect::RehashOptions {
            always: args.rehash,
            every: args.rehash_every,
        },
        encrypt: encrypt_to(args, tasks)?,
    })
}

/// `--encrypt-to` and the recipients of `--encrypt-to-file`, with the task folder's chain keys.
fn encrypt_to(args: &BundleArgs, tasks: &TaskStore) -> Result<Option<EncryptTo>, Error> {
    let mut recipients = args.encrypt_to.clone();
    for f in &args.encrypt_to_file {
        recipients.extend(winbundle::crypt::recipient_lines(f)?);
    }
    Ok((!recipients.is_empty()).then(|| EncryptTo {
        recipients,
        chain: Some(ChainKeys::in_task_dir(tasks.dir())),
    }))
}

/// Sets up the policy upload if one is given, validates the request, and opens the store the
/// bundle goes to: the policy upload, or the store the arguments name.
fn open_target(
    mut req: BundleRequest,
    args: &BundleArgs,
    tasks: &TaskStore,
    cancel: &Arc<AtomicBool>,
) -> Result<(BundleRequest, Box<dyn ObjectStore>), Error> {
    let post = super::policy::post_store(
        &args.policy,
        &args.store,
        req.part_size.unwrap_or(DEFAULT_PART_SIZE),
        cancel,
        Some((&tasks.journal_dir(), !args.no_resume)),
    )?;
    if post.is_some() {
        // Policy uploads write one object per part, as EC2 bundles did.
        req.layout = winbundle::format::Layout::Parts;
    }
    validate(&req)?;
    let store: Box<dyn ObjectStore> = match post {
        Some(p) => Box::new(p),
        None => super::open_store(&args.store, true, args.no_resume, cancel)?,
    };
    Ok((req, store))
}

/// Runs the bundle as a tracked task, with a progress bar unless quiet.
fn bundle_with_progress(
    req: &BundleRequest,
    store: &dyn ObjectStore,
    tasks: &TaskStore,
    quiet: bool,
    cancel: &AtomicBool,
) -> BundleOutcome {
    let bar = Bar::new(quiet, "bundling");
    let outcome = run_tracked(req, store, tasks, &bar, cancel);
    bar.finish();
    outcome
}

/// Prints the run's warnings and, unless quiet, the notes on what it decided by itself.
fn announce(args: &BundleArgs, outcome: &BundleOutcome) {
    for w in &outcome.warnings {
        eprintln!("winbundle: warning: {}", super::browse::escape(w));
    }
    if outcome.instance_id_from_imds && !args.quiet {
        eprintln!(
            "winbundle: note: no --instance-id given; using {} from the EC2 instance metadata service",
            outcome.task.instance_id
        );
    }
    if outcome.instance_id_derived && !args.quiet {
        eprintln!(
            "winbundle: note: no --instance-id given; using {} (derived from the disk id, root partition and NTFS serial: the same for every run on this source)",
            outcome.task.instance_id
        );
    }
    let Ok((m, s)) = &outcome.result else {
        return;
    };
    if !args.quiet {
        note_resumed(s);
        note_incremental(args, m, s);
        warn_missing_excludes(m);
    }
}

/// Notes that the run took over an interrupted upload, and what it reused.
fn note_resumed(s: &PipelineStats) {
    if let Some(from) = &s.resumed.resumed_from {
        eprintln!(
            "winbundle: note: resumed the interrupted upload {from}: {} parts ({} bytes) already stored were reused{}",
            s.resumed.reused_parts,
            s.resumed.reused_bytes,
            match s.resumed.replaced_parts {
                0 => String::new(),
                n => format!("; {n} had changed since (the source changed) and were sent again"),
            }
        );
    }
}

/// Notes what an incremental bundle took from its parent, how, and which settings were the parent's.
fn note_incremental(args: &BundleArgs, m: &Manifest, s: &PipelineStats) {
    let Some(p) = &m.parent else {
        return;
    };
    let how = parent_copies(s);
    let disk = match s.parent_io.disk_stream.as_deref() {
        Some("copied") => {
            "; the partition table and system partitions are unchanged: their stream was copied from the parent"
        }
        Some(_) => "; the partition table or a system partition changed: their stream was written in full",
        None => "",
    };
    let settings = settings_from_parent(args, m);
    eprintln!(
        "winbundle: note: incremental on {} ({}): {} of {} chunks ({} bytes of the image) took its frames instead of being compressed again{how}{disk}{settings}",
        p.prefix,
        super::browse::escape(&p.bundle_id),
        p.reused_chunks,
        s.chunks,
        p.reused_bytes
    );
}

/// How the reused frames reached the new bundle: copied by the file system, or by the server
/// (with what was read back or fetched and sent), as a clause of the incremental note.
fn parent_copies(s: &PipelineStats) -> String {
    let io = &s.parent_io;
    match io.copies.copied_parts {
        0 if io.copies.file_copied_bytes > 0 => format!(
            "; the file system copied {} bytes of them from the parent's object",
            io.copies.file_copied_bytes
        ),
        0 => String::new(),
        n => format!(
            "; the server copied {} bytes of them in {n} parts{}, {} bytes were read from the parent and sent",
            io.copies.copied_bytes,
            match io.copies.read_back_bytes {
                0 => String::new(),
                b => format!(" (it returned no checksums, so {b} bytes were read back to hash them)"),
            },
            io.fetched_bytes
        ),
    }
}

/// The settings taken from the parent, as a clause of the incremental note.
fn settings_from_parent(args: &BundleArgs, m: &Manifest) -> String {
    // Settings taken from the parent (not given, and not the defaults) are named.
    let taken: Vec<String> = [
        (args.chunk_size.is_none() && m.chunk_size != DEFAULT_CHUNK_SIZE as u64)
            .then(|| format!("chunks of {} bytes", m.chunk_size)),
        (args.zstd_level.is_none() && m.compression.level != DEFAULT_LEVEL)
            .then(|| format!("zstd level {}", m.compression.level)),
    ]
    .into_iter()
    .flatten()
    .collect();
    match taken.is_empty() {
        true => String::new(),
        false => format!("; {}, as the parent's", taken.join(" and ")),
    }
}

/// Warns of each `--exclude` that matched nothing on the volume.
fn warn_missing_excludes(m: &Manifest) {
    for x in m
        .excluded_files
        .iter()
        .filter(|x| !x.found && x.origin == winbundle::ntfs::exclude::ExclusionOrigin::User)
    {
        eprintln!(
            "winbundle: warning: --exclude {}: no such file or directory on the volume (nothing left out)",
            x.path
        );
    }
}

/// The `Bundle` summary of a successful run, as the JSON output shows it.
fn summary(req: &BundleRequest, outcome: &BundleOutcome, m: &Manifest, s: &PipelineStats) -> Value {
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    json!({
        "ManifestKey": format!("{}.manifest.json", req.prefix),
        "Objects": m.data.objects.iter().map(|o| json!({"Key": o.key, "Size": o.size})).collect::<Vec<_>>(),
        "BundleSha256": m.bundle_sha256,
        "VolumeSize": m.volume_size,
        "AllocatedBytes": m.stats.allocated_bytes,
        "DataBytes": s.data_bytes,
        "ExcludedBytes": m.stats.excluded_bytes,
        "StoredBytes": m.data.stream_size,
        "Chunks": s.chunks,
        "ZeroChunks": s.zero_chunks,
        "Seconds": (secs * 1000.0).round() / 1000.0,
        "MBps": ((s.data_bytes as f64 / 1e6 / secs) * 10.0).round() / 10.0,
        "ReadSeconds": s.read_time.as_secs_f64(),
        "CompressSeconds": s.compress_time.as_secs_f64(),
        "StoreSeconds": s.store_time.as_secs_f64(),
        "SourceReads": s.source_reads,
        "Resumed": s.resumed,
        "IndexKey": m.index.as_ref().map(|i| i.key.clone()),
        "Parent": m.parent.as_ref().map(|p| json!({
            "Prefix": p.prefix,
            "BundleId": p.bundle_id,
            "ReusedChunks": p.reused_chunks,
            "ReusedBytes": p.reused_bytes,
            "CopiedParts": s.parent_io.copies.copied_parts,
            "CopiedBytes": s.parent_io.copies.copied_bytes,
            "ReadBackBytes": s.parent_io.copies.read_back_bytes,
            "FetchedBytes": s.parent_io.fetched_bytes,
            "FileCopiedBytes": s.parent_io.copies.file_copied_bytes,
            "NewBytes": m.data.stream_size - s.parent_io.copies.copied_bytes - s.parent_io.fetched_bytes,
            "DiskStream": s.parent_io.disk_stream,
            "ChangeDetection": p.change_detection,
            "UnreadChunks": p.unread_chunks,
            "ChangedRecords": p.changed_records,
            "MetadataDisagreements": p.metadata_disagreements,
            "FirstDisagreement": p.first_disagreement,
            "SinceRehash": p.since_rehash,
        })),
        "InstanceIdDerived": outcome.instance_id_derived,
        "Encryption": m.encryption.as_ref().map(|e| json!({
            "Scheme": e.scheme,
            "KeyId": e.key_id,
            "KeyObject": e.key_object.key,
            "Recipients": req.encrypt.as_ref().map_or(0, |r| r.recipients.len()),
        })),
        "Snapshot": m.snapshot.as_ref().map(|s| json!({
            "Writers": s.writers.iter().map(|w| json!({
                "Name": w.name,
                "State": w.state,
                "Failure": w.failure,
                "Failed": w.failed,
            })).collect::<Vec<_>>(),
        })),
        "Warnings": outcome.warnings,
    })
}

/// The result document in the chosen format: the final task, and the summary if the run succeeded.
fn output_document(format: OutputFormat, outcome: &BundleOutcome, summary: Option<&Value>) -> String {
    let mut doc = String::new();
    match format {
        OutputFormat::Json => {
            let mut v = json!({"BundleTask": outcome.task.to_json()});
            if let Some(s) = summary {
                v["Bundle"] = s.clone();
            }
            doc = serde_json::to_string_pretty(&v).unwrap_or_default();
            doc.push('\n');
        }
        OutputFormat::Xml => doc.push_str(&outcome.task.to_bundle_instance_xml(&new_request_id())),
        OutputFormat::Text => {
            doc.push_str(&outcome.task.to_text());
            if let Some(s) = summary {
                doc.push_str(&format!(
                    "BUNDLE\t{}\t{}\t{} bytes read\t{} bytes stored\t{} s\t{} MB/s\n",
                    s["ManifestKey"].as_str().unwrap_or_default(),
                    s["BundleSha256"].as_str().unwrap_or_default(),
                    s["DataBytes"],
                    s["StoredBytes"],
                    s["Seconds"],
                    s["MBps"]
                ));
            }
        }
    }
    doc
}

/// Writes the document to standard output or `--output-file`. When the file cannot be written,
/// reports that (the document is then on standard output) and says where the task is still
/// listed; returns the exit code to end with if the bundle itself succeeded.
fn write_output(out: &Output, doc: &str, outcome: &BundleOutcome, format: OutputFormat) -> Option<i32> {
    let Err(e) = out.emit(doc) else {
        return None;
    };
    // The task is kept in the task folder either way: say where to find it.
    super::report(&e, format == OutputFormat::Json);
    eprintln!(
        "winbundle: the task is still listed by `winbundle describe-bundle-tasks --filters Name=bundle-id,Values={}`",
        outcome.task.bundle_id
    );
    outcome.result.is_ok().then(|| e.exit_code())
}

/// The exit code: 0 on success, else the error's, after reporting it.
fn exit_code(result: Result<(Manifest, PipelineStats), Error>, format: OutputFormat) -> i32 {
    match result {
        Ok(_) => 0,
        Err(e) => super::report(&e, format == OutputFormat::Json),
    }
}
