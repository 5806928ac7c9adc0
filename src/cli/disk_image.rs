//! `restore --disk` written in one ordered stream ([`winbundle::read::image`]): a VMDK or VHDX
//! file, or any format into an S3 object (`--output s3://BUCKET/KEY`) or a key of the bundle's
//! own store (`--output-key KEY`).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::json;
use winbundle::Error;
use winbundle::format::disk::DiskInfo;
use winbundle::read::OpenedBundle;
use winbundle::read::disk::DiskFormat;
use winbundle::read::image::{Target, write_image};
use winbundle::store::ObjectStore;
use winbundle::store::s3::S3Store;
use winbundle::units::human;

use super::args::{DiskFormatArg, RestoreArgs};
use super::output::{Output, json_doc};
use super::progress::Bar;

pub fn format_of(a: DiskFormatArg) -> DiskFormat {
    match a {
        DiskFormatArg::Raw => DiskFormat::Raw,
        DiskFormatArg::Vhd => DiskFormat::Vhd,
        DiskFormatArg::Vmdk => DiskFormat::Vmdk,
        DiskFormatArg::Vhdx => DiskFormat::Vhdx,
    }
}

fn format_name(f: DiskFormat) -> &'static str {
    match f {
        DiskFormat::Raw => "raw",
        DiskFormat::Vhd => "vhd",
        DiskFormat::Vmdk => "vmdk",
        DiskFormat::Vhdx => "vhdx",
    }
}

/// Whether `restore --disk` with these arguments writes through [`write_image`]: a sparse
/// format, or an object of a store.
pub fn streams_image(args: &RestoreArgs) -> bool {
    args.disk
        && (args.output_key.is_some()
            || matches!(args.format, DiskFormatArg::Vmdk | DiskFormatArg::Vhdx)
            || args
                .output
                .as_deref()
                .is_some_and(|o| o.to_string_lossy().starts_with("s3://")))
}

/// `s3://BUCKET/KEY` split, or why not.
fn s3_url(url: &str) -> Result<(&str, &str), Error> {
    url.strip_prefix("s3://")
        .and_then(|r| r.split_once('/'))
        .filter(|(b, k)| !b.is_empty() && !k.is_empty() && !k.ends_with('/'))
        .ok_or_else(|| Error::InvalidParameter {
            parameter: "--output",
            message: format!("{url} is not s3://BUCKET/KEY: name the bucket and the object's key"),
        })
}

pub fn run(args: &RestoreArgs, cancel: &Arc<AtomicBool>, out: &Output) -> Result<i32, Error> {
    let format = format_of(args.format);
    let output = args.output.as_deref().map(|o| o.to_string_lossy().into_owned());
    if output.as_deref() == Some("-") {
        return Err(Error::InvalidParameter {
            parameter: "--output",
            message: "--disk writes a file, a block device or an S3 object, not standard output".into(),
        });
    }
    let (store, bundle, fetchers) = open_bundle(args, cancel)?;
    let bundle_id = bundle.manifest.bundle_id.clone();
    let target = target_of(args, output.as_deref(), store, cancel)?;
    let threads = winbundle::bundle::create::default_threads(args.threads);
    let bar = Bar::new(args.quiet, "restoring disk");
    let r = write_image(bundle, format, &target, threads, fetchers, &bar, cancel)?;
    let output = output.or_else(|| args.output_key.clone());
    report(args, out, format, &bundle_id, output, &target.describe(), &r)?;
    Ok(0)
}

/// The bundle's store (it lives until the process ends: the views read the bundle from threads
/// for as long as the image is written), the bundle, and how many objects to fetch at once.
fn open_bundle(
    args: &RestoreArgs,
    cancel: &Arc<AtomicBool>,
) -> Result<(&'static dyn ObjectStore, OpenedBundle<'static>, usize), Error> {
    let keyring = super::keyring(&args.identity)?;
    let store = super::open_store(&args.store, false, false, cancel)?;
    let store: &'static dyn ObjectStore = Box::leak(store);
    let mut bundle = OpenedBundle::open_readable(store, &args.store.prefix, &keyring)?;
    let fetchers = match args.store.local_store {
        Some(_) => 4,
        None => args.store.s3.concurrency.clamp(1, 16),
    };
    if args.store.local_store.is_none() {
        bundle.set_fetchers(args.store.s3.concurrency);
    }
    Ok((store, bundle, fetchers))
}

/// Where the image goes: a key of the bundle's own `store`, an S3 object, or a file.
fn target_of(
    args: &RestoreArgs,
    output: Option<&str>,
    store: &'static dyn ObjectStore,
    cancel: &Arc<AtomicBool>,
) -> Result<Target<'static>, Error> {
    Ok(match (&args.output_key, output) {
        (Some(key), _) => Target::Store {
            store,
            key: key.clone(),
        },
        (None, Some(url)) if url.starts_with("s3://") => {
            let (bucket, key) = s3_url(url)?;
            let opts = super::s3_options(&args.store.s3, false, cancel)?;
            // Like the bundle's store, it lives until the process ends.
            let dest: &'static dyn ObjectStore = Box::leak(Box::new(S3Store::connect(bucket, &opts)?));
            Target::Store {
                store: dest,
                key: key.to_string(),
            }
        }
        (None, Some(path)) => Target::File {
            path: path.into(),
            force: args.force,
        },
        (None, None) => {
            return Err(Error::InvalidParameter {
                parameter: "--output",
                message: "give --output PATH, --output s3://BUCKET/KEY or --output-key KEY".into(),
            });
        }
    })
}

/// The JSON document of a disk restore, whatever its format and target.
pub(super) fn disk_json(
    bundle_id: &str,
    output: serde_json::Value,
    format: DiskFormat,
    disk: &DiskInfo,
    size: u64,
    written_bytes: u64,
) -> serde_json::Value {
    let kept: Vec<serde_json::Value> = disk
        .kept_partitions
        .iter()
        .map(|p| json!({"Index": p.index, "Offset": p.offset, "Length": p.length, "Role": p.role}))
        .collect();
    json!({
        "BundleId": bundle_id,
        "Output": output,
        "Format": format_name(format),
        "DiskSize": disk.disk_size,
        "FileSize": size,
        "PartitionTable": disk.partition_table.to_string(),
        "KeptPartitions": kept,
        "DroppedPartitions": disk.dropped_partitions,
        "WrittenBytes": written_bytes,
    })
}

/// What was written: a JSON document, or a line on standard error.
fn report(
    args: &RestoreArgs,
    out: &Output,
    format: DiskFormat,
    bundle_id: &str,
    output: Option<String>,
    written_to: &str,
    r: &winbundle::read::image::ImageRestore,
) -> Result<(), Error> {
    if args.json || out.to_file() {
        let v = disk_json(bundle_id, json!(output), format, &r.disk, r.size, r.written_bytes);
        out.emit(&json_doc(&v))?;
    } else if !args.quiet {
        eprintln!(
            "restored the disk ({}, {} table) as a {} image of {} bytes to {}: {} of data, {}",
            human(r.disk.disk_size),
            r.disk.partition_table,
            format_name(format),
            r.size,
            written_to,
            human(r.written_bytes),
            if matches!(format, DiskFormat::Vmdk | DiskFormat::Vhdx) {
                "zero runs left out"
            } else {
                "zeros written out"
            }
        );
    }
    Ok(())
}
