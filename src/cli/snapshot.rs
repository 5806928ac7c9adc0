//! `winbundle snapshot`: an EBS snapshot of a bundle's disk (see `winbundle::ebs`), printed
//! as JSON (`{"Snapshot": {...}}`), XML (`SnapshotResponse`, EC2's element style) or a line
//! of text.

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use serde_json::json;
use winbundle::Error;
use winbundle::bundle::create::default_threads;
use winbundle::ebs::client::{Ebs, EbsOptions};
use winbundle::ebs::run::{SnapshotOutcome, SnapshotRequest, snapshot};
use winbundle::read::OpenedBundle;

use super::args::{OutputFormat, SnapshotArgs};
use super::output::{Output, json_doc};
use super::progress::Bar;

pub fn run(a: SnapshotArgs, cancel: &Arc<AtomicBool>) -> Result<i32, Error> {
    let out = Output::new(&a.out)?;
    let keyring = super::keyring(&a.identity)?;
    let store = super::open_store(&a.store, false, false, cancel)?;
    let mut bundle = OpenedBundle::open_readable(store.as_ref(), &a.store.prefix, &keyring)?;
    if a.store.local_store.is_none() {
        bundle.set_fetchers(a.store.s3.concurrency);
    }
    let ebs = Ebs::connect(&EbsOptions {
        region: a.store.s3.region.clone(),
        endpoint_url: a.ebs_endpoint_url.clone(),
        profile: a.store.s3.profile.clone(),
        max_attempts: a.ebs_max_attempts,
        initial_backoff: None,
        cancel: Some(cancel.clone()),
    })?;
    let req = SnapshotRequest {
        keyring,
        prefix: a.store.prefix.clone(),
        description: a.description.clone(),
        tags: a.tags.clone(),
        parent_snapshot: a.parent_snapshot.clone(),
        full: a.full,
        client_token: a.client_token.clone(),
        no_resume: a.no_resume,
        again: a.again,
        timeout_minutes: a.timeout_minutes,
        concurrency: a.ebs_concurrency,
        threads: default_threads(a.threads),
        work_dir: a.work_dir.clone(),
    };
    let restoring = Bar::new(a.quiet, "restoring disk");
    let sending = Bar::new(a.quiet, "sending blocks");
    let o = snapshot(store.as_ref(), &bundle, &req, &ebs, &restoring, &sending, cancel)?;
    out.emit(&render(&o, a.output))?;
    Ok(0)
}

/// The result document.
fn render(o: &SnapshotOutcome, format: OutputFormat) -> String {
    let v = serde_json::to_value(o).unwrap_or_default();
    match format {
        OutputFormat::Json => json_doc(&json!({ "Snapshot": v })),
        OutputFormat::Xml => xml(&v),
        OutputFormat::Text => text(o),
    }
}

fn text(o: &SnapshotOutcome) -> String {
    if o.already_made {
        return format!(
            "SNAPSHOT\t{}\t{}\talready made from bundle {} (recorded in {}; pass --again for a new one)\n",
            o.snapshot_id, o.status, o.bundle_id, o.record_key
        );
    }
    format!(
        "SNAPSHOT\t{}\t{}\t{} GiB\t{} of {} blocks sent ({} non-zero){}{}\trecorded in {}\n",
        o.snapshot_id,
        o.status,
        o.volume_size,
        o.blocks_sent,
        o.disk_blocks,
        o.non_zero_blocks,
        o.parent_snapshot_id
            .as_ref()
            .map_or(String::new(), |p| format!(", incremental on {p}")),
        if o.resumed { ", resumed" } else { "" },
        o.record_key
    )
}

/// `SnapshotResponse` with one element per field, named in EC2's style (`snapshotId`).
fn xml(v: &serde_json::Value) -> String {
    let mut w = Writer::new_with_indent(Cursor::new(Vec::new()), b' ', 2);
    let r = (|| -> std::io::Result<()> {
        w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
        w.write_event(Event::Start(BytesStart::new("SnapshotResponse")))?;
        w.write_event(Event::Start(BytesStart::new("requestId")))?;
        w.write_event(Event::Text(BytesText::new(&winbundle::task::new_request_id())))?;
        w.write_event(Event::End(BytesEnd::new("requestId")))?;
        if let Some(m) = v.as_object() {
            for (k, val) in m {
                let mut name = k.clone();
                if let Some(f) = name.get(..1) {
                    name = f.to_lowercase() + &name[1..];
                }
                let text = match val {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                w.write_event(Event::Start(BytesStart::new(name.as_str())))?;
                w.write_event(Event::Text(BytesText::new(&text)))?;
                w.write_event(Event::End(BytesEnd::new(name.as_str())))?;
            }
        }
        w.write_event(Event::End(BytesEnd::new("SnapshotResponse")))?;
        Ok(())
    })();
    debug_assert!(r.is_ok());
    String::from_utf8_lossy(&w.into_inner().into_inner()).into_owned() + "\n"
}
