//! `winbundle restore` and `winbundle verify`.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::json;
use winbundle::Error;
use winbundle::read::{OpenedBundle, ReadStats, RestoreTarget};
use winbundle::units::human;

use super::args::{RestoreArgs, VerifyArgs};
use super::output::{Output, json_doc};
use super::progress::Bar;
use winbundle::bundle::create::default_threads;

fn summary(b: &OpenedBundle<'_>, s: &ReadStats) -> serde_json::Value {
    json!({
        "BundleId": b.manifest.bundle_id,
        "InstanceId": b.manifest.instance_id,
        "VolumeSize": b.manifest.volume_size,
        "Chunks": s.chunks,
        "PartsVerified": s.parts_verified,
        "Checked": s.checked,
        "StoredBytes": s.stream_bytes,
        "WrittenBytes": s.written_bytes,
        "BundleSha256": b.manifest.bundle_sha256,
        "Seconds": s.elapsed.as_secs_f64(),
    })
}

/// Decompression threads: as many as asked, else one per core, and twice that when a file or
/// device is written with direct I/O: each thread then also waits for its own writes, and the
/// disk needs several in flight (bench/README.md, "Restore against `zstd -d`").
fn restore_threads(args: &RestoreArgs) -> usize {
    let cores = default_threads(None);
    let direct = args.output.as_deref().is_some_and(|o| o.as_os_str() != "-") && !args.buffered;
    args.threads.unwrap_or(if direct { 2 * cores } else { cores })
}

pub fn run_restore(args: RestoreArgs, cancel: &Arc<AtomicBool>) -> Result<i32, Error> {
    let out = Output::new(&args.out)?;
    if super::disk_image::streams_image(&args) {
        return super::disk_image::run(&args, cancel, &out);
    }
    // clap requires --output unless --output-key, which streams_image takes.
    let output = args.output.clone().unwrap_or_default();
    let keyring = super::keyring(&args.identity)?;
    let store = super::open_store(&args.store, false, false, cancel)?;
    let mut bundle = OpenedBundle::open_readable(store.as_ref(), &args.store.prefix, &keyring)?;
    if args.store.local_store.is_none() {
        bundle.set_fetchers(args.store.s3.concurrency);
    }
    if args.disk {
        return restore_disk(&args, &output, &bundle, cancel, &out);
    }
    let target = if output.as_os_str() == "-" {
        RestoreTarget::Stdout
    } else {
        RestoreTarget::File {
            path: output.clone(),
            force: args.force,
            assume_zeroed: args.assume_zeroed,
            direct: !args.buffered,
        }
    };
    let bar = Bar::new(args.quiet, "restoring");
    let stats = bundle.restore(&target, restore_threads(&args), &bar, cancel)?;
    let v = summary(&bundle, &stats);
    let to_stdout = !matches!(target, RestoreTarget::Stdout);
    if out.to_file() || (args.json && to_stdout) {
        out.emit(&json_doc(&v))?;
    } else if args.json {
        eprint!("{}", json_doc(&v));
    } else if !args.quiet {
        eprintln!(
            "restored {} ({} bytes) to {}: {} chunks, {}",
            human(bundle.manifest.volume_size),
            bundle.manifest.volume_size,
            output.display(),
            stats.chunks,
            match stats.parts_verified {
                0 => "every frame checked against the chunk index".to_string(),
                n => format!("{n} parts verified, bundle SHA-256 {}", bundle.manifest.bundle_sha256),
            }
        );
    }
    Ok(0)
}

/// `restore --disk`: the whole disk, bootable.
fn restore_disk(
    args: &RestoreArgs,
    output: &std::path::Path,
    bundle: &OpenedBundle<'_>,
    cancel: &Arc<AtomicBool>,
    out: &Output,
) -> Result<i32, Error> {
    use winbundle::read::disk::restore;
    if output.as_os_str() == "-" {
        return Err(Error::InvalidParameter {
            parameter: "--output",
            message: "--disk writes a file or a block device, not standard output".into(),
        });
    }
    let format = super::disk_image::format_of(args.format);
    let bar = Bar::new(args.quiet, "restoring disk");
    let r = restore(
        bundle,
        output,
        format,
        args.force,
        !args.buffered,
        restore_threads(args),
        &bar,
        cancel,
    )?;
    if args.json || out.to_file() {
        let v = super::disk_image::disk_json(
            &bundle.manifest.bundle_id,
            json!(output),
            format,
            &r.disk,
            r.size,
            r.written_bytes,
        );
        out.emit(&json_doc(&v))?;
    } else if !args.quiet {
        eprintln!(
            "restored the disk ({}, {} bytes, {} table) to {}: {}; left out: {}",
            human(r.disk.disk_size),
            r.size,
            r.disk.partition_table,
            output.display(),
            r.disk
                .kept_partitions
                .iter()
                .map(|p| format!("partition {} ({})", p.index, p.role))
                .collect::<Vec<_>>()
                .join(", "),
            if r.disk.dropped_partitions.is_empty() {
                "nothing".to_string()
            } else {
                r.disk
                    .dropped_partitions
                    .iter()
                    .map(|i| format!("partition {i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    }
    Ok(0)
}

pub fn run_verify(args: VerifyArgs, cancel: &Arc<AtomicBool>) -> Result<i32, Error> {
    let out = Output::new(&args.out)?;
    let keyring = super::keyring(&args.identity)?;
    if args.decrypt && args.identity.identity.is_empty() {
        return Err(Error::InvalidParameter {
            parameter: "--decrypt",
            message: "it needs the identity that opens the bundle: pass --identity FILE (or set WINBUNDLE_IDENTITY)"
                .into(),
        });
    }
    let store = super::open_store(&args.store, false, false, cancel)?;
    let mut bundle = OpenedBundle::open(store.as_ref(), &args.store.prefix, &keyring)?;
    if args.decrypt {
        bundle.require_key(&args.store.prefix)?;
    }
    if args.store.local_store.is_none() {
        bundle.set_fetchers(args.store.s3.concurrency);
    }
    let bar = Bar::new(args.quiet, "verifying");
    let stats = bundle.verify(default_threads(args.threads), &bar, cancel)?;
    if args.json {
        let mut v = summary(&bundle, &stats);
        v["Valid"] = json!(true);
        out.emit(&json_doc(&v))?;
    } else if !args.quiet || out.to_file() {
        out.emit(&format!(
            "OK: {} objects, {} parts and {} chunks verified; bundle SHA-256 {}{}\n",
            bundle.manifest.data.objects.len(),
            stats.parts_verified,
            stats.chunks,
            bundle.manifest.bundle_sha256,
            if stats.checked == "stored" {
                " (encrypted, no identity given: the stored bytes were checked against the manifest's digests; pass --identity to check every plaintext too)"
            } else {
                ""
            }
        ))?;
    }
    Ok(0)
}
