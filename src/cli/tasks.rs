//! `describe-bundle-tasks` and `cancel-bundle-task`, on the shared task folder.

use std::path::PathBuf;

use serde_json::json;
use winbundle::Error;
use winbundle::task::store::{self, TaskStore};
use winbundle::task::{describe_xml, new_request_id};

use super::args::{CancelArgs, DescribeArgs, OutputFormat};
use super::output::{Output, json_doc};

pub fn open(dir: &Option<PathBuf>) -> Result<TaskStore, Error> {
    Ok(TaskStore::open(&dir.clone().unwrap_or_else(store::default_dir))?)
}

pub fn describe(a: DescribeArgs) -> Result<i32, Error> {
    let out = Output::new(&a.out)?;
    let ts = open(&a.state_dir)?;
    let filters = a
        .filters
        .iter()
        .map(|f| {
            store::parse_filter(f).map_err(|m| Error::InvalidParameter {
                parameter: "--filters",
                message: m,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let all = ts.all()?;
    for id in &a.bundle_ids {
        if !all.iter().any(|t| &t.bundle_id == id) {
            return Err(store::TaskStoreError::NotFound(id.clone()).into());
        }
    }
    let tasks: Vec<_> = all
        .into_iter()
        .filter(|t| a.bundle_ids.is_empty() || a.bundle_ids.contains(&t.bundle_id))
        .filter(|t| store::matches(t, &filters))
        .collect();
    out.emit(&match a.output {
        OutputFormat::Json => json_doc(&json!({"BundleTasks": tasks.iter().map(|t| t.to_json()).collect::<Vec<_>>()})),
        OutputFormat::Xml => describe_xml(&tasks, &new_request_id()),
        OutputFormat::Text => tasks.iter().map(|t| t.to_text()).collect(),
    })?;
    Ok(0)
}

pub fn cancel(a: CancelArgs) -> Result<i32, Error> {
    let out = Output::new(&a.out)?;
    let ts = open(&a.state_dir)?;
    let task = ts.request_cancel(&a.bundle_id)?;
    out.emit(&match a.output {
        OutputFormat::Json => json_doc(&json!({"BundleTask": task.to_json()})),
        OutputFormat::Xml => task.to_cancel_xml(&new_request_id()),
        OutputFormat::Text => task.to_text(),
    })?;
    Ok(0)
}
