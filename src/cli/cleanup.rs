//! `winbundle cleanup`: finds the unfinished uploads under a bucket and prefix (S3 multipart
//! uploads; a local store's partial files) and ends them.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::json;
use winbundle::Error;
use winbundle::store::Upload;

use super::args::{CleanupArgs, OutputFormat};
use super::output::{Output, json_doc};

pub fn run(a: CleanupArgs, cancel: &Arc<AtomicBool>) -> Result<i32, Error> {
    let out = Output::new(&a.out)?;
    if a.output == OutputFormat::Xml {
        return Err(Error::InvalidParameter {
            parameter: "--output",
            message: "cleanup prints json or text (EC2 has no such call to mimic)".into(),
        });
    }
    // Here a prefix may name a folder (`bundles/`), or be empty: the whole bucket.
    let trimmed = a.store.prefix.trim_end_matches('/');
    if !trimmed.is_empty() {
        winbundle::store::names::check_prefix(trimmed)?;
    }
    let store = super::open_bucket(&a.store, false, false, cancel)?;
    let now = chrono::Utc::now().timestamp();
    let age = |u: &Upload| u.initiated_epoch.map(|t| (now - t).max(0) as u64);
    let mut rows = Vec::new();
    let mut failed = None;
    for u in store.unfinished(&a.store.prefix)? {
        let old_enough = match (a.older_than, age(&u)) {
            (None, _) => true,
            (Some(min), Some(age)) => age >= min,
            (Some(_), None) => false, // no start time: kept, since its age is unknown
        };
        let action = if !old_enough {
            "kept (newer than --older-than)".to_string()
        } else if a.dry_run {
            "would abort (dry run)".to_string()
        } else {
            match store.discard_unfinished(&u) {
                Ok(()) => "aborted".to_string(),
                Err(e) => {
                    let text = format!("failed: {e}");
                    failed.get_or_insert(e);
                    text
                }
            }
        };
        rows.push((u.clone(), age(&u), action));
    }
    let mut doc = String::new();
    match a.output {
        OutputFormat::Json | OutputFormat::Xml => {
            let v = json!({
                "Location": store.location(),
                "Prefix": a.store.prefix,
                "Uploads": rows.iter().map(|(u, age, action)| json!({
                    "Key": u.key,
                    "UploadId": u.upload_id,
                    "Initiated": u.initiated,
                    "AgeSeconds": age,
                    "Action": action,
                })).collect::<Vec<_>>(),
                "Aborted": rows.iter().filter(|r| r.2 == "aborted").count(),
            });
            doc = json_doc(&v);
        }
        OutputFormat::Text => {
            for (u, _, action) in &rows {
                doc.push_str(&format!(
                    "UPLOAD\t{}\t{}\t{}\t{action}\n",
                    u.key,
                    u.upload_id,
                    u.initiated.as_deref().unwrap_or("-")
                ));
            }
            if rows.is_empty() {
                doc = format!(
                    "no unfinished uploads under {} in {}\n",
                    a.store.prefix,
                    store.location()
                );
            }
        }
    }
    out.emit(&doc)?;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(0),
    }
}
