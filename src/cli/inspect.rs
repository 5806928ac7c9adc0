//! `winbundle inspect`: what a bundle of SOURCE would hold, as text or JSON.

use serde_json::json;
use winbundle::Error;
use winbundle::bundle::create::excluded_partitions;
use winbundle::bundle::plan::{Plan, PlanOptions};
use winbundle::source::layout::{self, PartitionInfo, RootChoice};
use winbundle::source::live::{self, LiveOptions, LiveSource, SnapshotMode};
use winbundle::source::partition::PartitionTable;
use winbundle::source::{DiskFile, SourceError};
use winbundle::units::human;

use super::args::{InspectArgs, VolumeArgs};
use super::output::{Output, json_doc};

pub fn plan_options(v: &VolumeArgs) -> PlanOptions {
    PlanOptions {
        partition: v.partition,
        excludes: v.exclude.clone(),
        default_excludes: !v.no_default_excludes,
        volume_only: v.volume_only,
        keep_shadow_copies: v.keep_shadow_copies,
        require_ec2_ready: v.require_ec2_ready,
        exclude_windows_lists: v.exclude_windows_lists,
    }
}

pub fn run(args: InspectArgs) -> Result<i32, Error> {
    let out = Output::new(&args.out)?;
    // A live volume is read directly: inspect reports, it makes no snapshot.
    let opts = LiveOptions {
        snapshot: args.live.snapshot,
        ..Default::default()
    };
    let live = live::recognise(&args.source);
    let opened = live::open(&args.source, &opts, false, &std::sync::atomic::AtomicBool::new(false))?;
    let plan = match Plan::analyse(&opened.disk, &plan_options(&args.volume)) {
        Ok(plan) => plan,
        Err(
            e @ Error::Source(
                SourceError::NoRootVolume { .. }
                | SourceError::DamagedVolume { .. }
                | SourceError::AmbiguousRoot { .. }
                | SourceError::BadPartitionChoice { .. },
            ),
        ) => return no_root(&opened.disk, &e, args.json, &out),
        Err(e) => return Err(e),
    };
    let snapshot = match (&live, args.live.snapshot) {
        (None, _) => None,
        (Some(LiveSource::Volume { root, .. }), SnapshotMode::Vss) => Some(format!(
            "bundle-instance will read {root} from a Volume Shadow Copy snapshot (none was taken now)"
        )),
        (Some(LiveSource::PhysicalDrive { .. }), SnapshotMode::Vss) => Some(
            "bundle-instance refuses --snapshot vss for a whole disk: bundle the volume (C:), or pass --snapshot none"
                .into(),
        ),
        (Some(_), SnapshotMode::None) => {
            Some("bundle-instance will read the live volume directly (--snapshot none)".into())
        }
    };
    if args.json {
        let mut v = to_json(&plan);
        if let Some(s) = &snapshot {
            v["live"] = json!({"snapshot": args.live.snapshot, "plan": s, "read_stats": opened.disk.read_stats()});
        }
        out.emit(&json_doc(&v))?;
    } else {
        let mut doc = to_text(&plan);
        if let Some(s) = &snapshot {
            doc.push_str(&format!("Snapshot:        {s}\n"));
        }
        out.emit(&doc)?;
    }
    Ok(0)
}

fn to_json(plan: &Plan<'_>) -> serde_json::Value {
    let l = &plan.layout;
    let parts: Vec<_> = l.partitions.iter().map(|p| partition_json(p, Some(&l.root))).collect();
    json!({
        "source": plan.disk.path().display().to_string(),
        "disk_size": l.disk_size,
        "partition_table": l.table.kind,
        "sector_size": l.table.sector_size,
        "disk_id": l.table.disk_id,
        "warnings": l.table.warnings,
        "partitions": parts,
        "root": {"index": l.root.index, "reason": l.root.reason, "offset": l.root().partition.offset, "size": plan.image_len},
        "ntfs": plan.facts,
        "allocated_bytes": plan.allocated_bytes,
        "windows": plan.windows,
        "excluded_files": plan.exclusions.items,
        "excluded_bytes": plan.excluded_bytes,
        "excluded_partitions": excluded_partitions(plan),
        "bytes_to_read": plan.read_bytes,
        "disk": match &plan.disk_plan {
            Ok(d) => json!({
                "kept": true,
                "regions": d.regions.iter().map(|(w, o, l)| json!({"what": w, "offset": o, "length": l})).collect::<Vec<_>>(),
                "kept_partitions": d.kept,
                "dropped_partitions": d.dropped,
            }),
            Err(why) => json!({"kept": false, "reason": why}),
        },
    })
}

/// The Windows on the volume: its name, EC2 readiness, page files, and what could not be read.
/// Every line is escaped: names and patterns come from the volume's registry.
fn windows_text(w: &winbundle::guest::WindowsFacts, out: &mut impl FnMut(String)) {
    let mut line = |t: String| out(super::browse::escape(&t).into_owned());
    let id = &w.identity;
    line(format!("Windows:         {}", id.summary()));
    if let Some(n) = &id.computer_name {
        line(format!("  computer name  {n}"));
    }
    if let Some(t) = &id.last_shutdown {
        line(format!("  last shutdown  {t}"));
    }
    if let Some(b) = &id.boot_mode {
        line(format!("  boot mode      {b}"));
    }
    if let Some(e) = &w.ec2 {
        line(format!("  EC2            {}", e.summary()));
        for c in &e.components {
            line(format!(
                "    {:<24} {}",
                c.name,
                match (&c.service, c.installed) {
                    (Some(s), true) => format!("installed (service {s})"),
                    (_, true) => "installed".into(),
                    _ => "not installed".into(),
                }
            ));
        }
    }
    for p in &w.page_files {
        match (&p.path, &p.note) {
            (Some(path), _) => line(format!("  page file      {} ({path} on this volume)", p.registry)),
            (None, Some(n)) => line(format!("  page file      {} ({n})", p.registry)),
            (None, None) => line(format!("  page file      {}", p.registry)),
        }
    }
    for l in &w.lists {
        line(format!(
            "  {:<19}{} = {}: {} file{}, {}",
            l.list,
            l.name,
            l.pattern,
            l.files,
            if l.files == 1 { "" } else { "s" },
            human(l.size)
        ));
        for n in &l.notes {
            line(format!("    note: {n}"));
        }
    }
    for n in &w.notes {
        line(format!("  note: {n}"));
    }
}

/// What `inspect` shows of a disk on which no root volume can be chosen: everything found, then
/// why; the exit status is the error's (the one `bundle-instance` would end with).
fn no_root(disk: &DiskFile, e: &Error, json: bool, out: &Output) -> Result<i32, Error> {
    let (table, parts) = layout::survey(disk)?;
    let hint = e.hint_in_inspect();
    if json {
        let mut v = json!({
            "source": disk.path().display().to_string(),
            "disk_size": disk.size(),
            "partition_table": table.kind,
            "sector_size": table.sector_size,
            "disk_id": table.disk_id,
            "warnings": table.warnings,
            "partitions": parts.iter().map(|p| partition_json(p, None)).collect::<Vec<_>>(),
            "root": null,
            "root_problem": {"Code": e.code(), "Message": e.to_string()},
        });
        if let Some(h) = &hint {
            v["root_problem"]["Hint"] = h.clone().into();
        }
        out.emit(&json_doc(&v))?;
    } else {
        out.emit(&format!(
            "{}\nRoot volume:     none: {e}\n",
            table_text(disk, &table, &parts, None)
        ))?;
    }
    eprintln!(
        "winbundle: error ({}): {}",
        e.code(),
        super::browse::escape(&e.to_string())
    );
    if let Some(h) = hint {
        eprintln!("  hint: {}", super::browse::escape(&h));
    }
    Ok(e.exit_code())
}

fn partition_json(p: &PartitionInfo, root: Option<&RootChoice>) -> serde_json::Value {
    json!({
        "index": p.partition.index,
        "offset": p.partition.offset,
        "size": p.partition.length,
        "type_id": p.partition.ptype.id(),
        "type": p.partition.ptype.name(),
        "name": p.partition.name,
        "bootable": p.partition.bootable,
        "file_system": p.fs.to_string(),
        "label": p.label,
        "has_windows": p.has_windows,
        "error": p.error,
        "root": root.is_some_and(|r| r.index == p.partition.index),
        "excluded_because": p.excluded_because,
    })
}

/// The source, its partition table and every partition, with the root volume's role when
/// there is one.
fn table_text(disk: &DiskFile, table: &PartitionTable, parts: &[PartitionInfo], root: Option<&RootChoice>) -> String {
    let mut s = String::new();
    let mut line = |t: String| {
        s.push_str(&t);
        s.push('\n');
    };
    line(format!(
        "Source:          {} ({})",
        disk.path().display(),
        human(disk.size())
    ));
    line(format!(
        "Partition table: {}, {}-byte sectors{}",
        table.kind,
        table.sector_size,
        table
            .disk_id
            .as_ref()
            .map(|d| format!(", disk id {d}"))
            .unwrap_or_default()
    ));
    for w in &table.warnings {
        line(format!("Warning:         {w}"));
    }
    line(String::new());
    line(format!(
        "{:>3}  {:>14}  {:>10}  {:<22} {:<9} {:<18} {}",
        "#", "offset", "size", "type", "fs", "label", "role"
    ));
    for p in parts {
        let role = match root {
            Some(r) if p.partition.index == r.index => format!("ROOT (C:): {}", r.reason),
            Some(_)
                if p.excluded_because
                    .as_deref()
                    .is_some_and(|w| w.contains("restore --disk")) =>
            {
                "kept for restore --disk (system partition)".to_string()
            }
            Some(_) => "excluded (not the root volume)".to_string(),
            None if p.has_windows => "holds \\Windows\\System32".to_string(),
            None => "-".to_string(),
        };
        line(format!(
            "{:>3}  {:>14}  {:>10}  {:<22} {:<9} {:<18} {}",
            p.partition.index,
            p.partition.offset,
            human(p.partition.length),
            p.partition.ptype.name(),
            p.fs.to_string(),
            p.label
                .as_deref()
                .map(|l| format!("{l:?}"))
                .unwrap_or_else(|| "-".into()),
            role
        ));
        if let Some(e) = &p.error {
            line(format!("     (cannot read this NTFS volume: {e})"));
        }
    }
    s
}

fn to_text(plan: &Plan<'_>) -> String {
    let l = &plan.layout;
    let mut s = table_text(plan.disk, &l.table, &l.partitions, Some(&l.root));
    let mut line = |t: String| {
        s.push_str(&t);
        s.push('\n');
    };
    let f = &plan.facts;
    line(String::new());
    line(format!("Root volume (partition {}):", l.root.index));
    line(format!("  NTFS serial      {} (full {})", f.serial, f.serial64));
    line(format!("  label            {}", f.label.as_deref().unwrap_or("-")));
    line(format!(
        "  cluster size     {} bytes; {} clusters; sector size {}",
        f.cluster_size, f.cluster_count, f.sector_size
    ));
    line(format!(
        "  volume size      {} (file system {}; image {})",
        human(plan.image_len),
        human(f.fs_size),
        plan.image_len
    ));
    line(format!(
        "  MFT              {} records of {} bytes{}",
        f.mft_records,
        f.mft_record_size,
        if f.mft_attribute_list {
            ", fragmented ($ATTRIBUTE_LIST)"
        } else {
            ""
        }
    ));
    line(format!(
        "  allocated        {} ({} bytes)",
        human(plan.allocated_bytes),
        plan.allocated_bytes
    ));
    line(String::new());
    match &plan.disk_plan {
        Ok(d) => {
            line("Kept for a bootable disk (restore --disk):".into());
            for (what, offset, length) in &d.regions {
                line(format!("  {what:40} at {offset:>14}, {}", human(*length)));
            }
            if !d.dropped.is_empty() {
                let dropped: Vec<String> = d.dropped.iter().map(|i| i.to_string()).collect();
                line(format!(
                    "  partitions {} (instance stores) are left out and removed from the table",
                    dropped.join(", ")
                ));
            }
        }
        Err(why) => line(format!("Kept for a bootable disk: nothing but C: ({why})")),
    }
    line(String::new());
    line("Contents left out (clusters imaged as zeros, files kept):".into());
    if plan.exclusions.items.is_empty() {
        line("  none".into());
    }
    for x in &plan.exclusions.items {
        let why = x.reason.map(|r| r.as_str()).unwrap_or("default");
        if x.found {
            line(format!(
                "  {:<28} {:>10} ({} allocated, {} file{}, {why})",
                x.path,
                human(x.size),
                human(x.allocated_bytes),
                x.files,
                if x.files == 1 { "" } else { "s" },
            ));
        } else {
            line(format!("  {:<28} not present ({why})", x.path));
        }
    }
    if let Some(w) = &plan.windows {
        line(String::new());
        windows_text(w, &mut line);
    }
    line(String::new());
    line(format!(
        "A bundle will read {} ({} bytes): allocated minus {} left out, plus the boot-sector tail.",
        human(plan.read_bytes),
        plan.read_bytes,
        human(plan.excluded_bytes)
    ));
    s
}
