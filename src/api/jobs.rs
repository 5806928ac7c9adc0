//! Background bundles of the API server. Each accepted BundleInstance gets a thread that waits
//! (as `pending`) for one of `max_concurrent_bundles` slots, then uploads with the caller's
//! policy (POST mode) through [`run_tracked`]. A job goes on when its client disconnects; it
//! stops on CancelBundleTask (or the CLI's cancel-bundle-task) and on server shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::Error;
use crate::bundle::create::BundleRequest;
use crate::format::Keys;
use crate::progress::NoProgress;
use crate::store::post::{Journal, PostStore, PostTarget};
use crate::task::run::run_tracked;
use crate::task::store::TaskStore;
use crate::task::{BundleTask, State, TaskError};

/// How a job uploads.
pub struct JobSpec {
    pub request: BundleRequest,
    pub target: PostTarget,
    pub concurrency: usize,
    pub max_attempts: u32,
}

struct Running {
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Inner {
    max: usize,
    busy: Mutex<usize>,
    freed: Condvar,
    jobs: Mutex<HashMap<String, Running>>,
    stopping: AtomicBool,
    tasks: TaskStore,
}

/// The server's bundles.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

/// Writes one line to the server log (stderr).
pub fn log(line: &str) {
    eprintln!("{} {line}", crate::task::now_iso());
}

impl Jobs {
    pub fn new(max: usize, tasks: TaskStore) -> Self {
        Self {
            inner: Arc::new(Inner {
                max: max.max(1),
                busy: Mutex::new(0),
                freed: Condvar::new(),
                jobs: Mutex::new(HashMap::new()),
                stopping: AtomicBool::new(false),
                tasks,
            }),
        }
    }

    /// True once shutdown began: no new work.
    pub fn stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }

    /// Starts the job of `task` (already saved as pending).
    pub fn spawn(&self, task: BundleTask, spec: JobSpec) -> Result<(), Error> {
        let cancel = Arc::new(AtomicBool::new(false));
        let inner = self.inner.clone();
        let c = cancel.clone();
        let id = task.bundle_id.clone();
        let mut jobs = self.inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let thread = std::thread::Builder::new()
            .name(format!("bundle {id}"))
            .spawn(move || {
                run_job(&inner, task, spec, &c);
            })
            .map_err(|e| Error::Io {
                context: "cannot start a bundle thread".into(),
                source: e,
            })?;
        jobs.insert(
            id,
            Running {
                cancel,
                thread: Some(thread),
            },
        );
        Ok(())
    }

    /// Stops a job at once (the cancel request in the task folder also reaches it).
    pub fn cancel(&self, bundle_id: &str) {
        if let Some(j) = self.inner.jobs.lock().unwrap_or_else(|e| e.into_inner()).get(bundle_id) {
            j.cancel.store(true, Ordering::SeqCst);
        }
        self.inner.freed.notify_all();
    }

    /// Jobs not finished yet.
    pub fn active(&self) -> usize {
        let jobs = self.inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.values()
            .filter(|j| j.thread.as_ref().is_some_and(|t| !t.is_finished()))
            .count()
    }

    /// Refuses new work, cancels every job, and waits for them to clean up.
    pub fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        let threads: Vec<JoinHandle<()>> = {
            let mut jobs = self.inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
            jobs.values_mut()
                .filter_map(|j| {
                    j.cancel.store(true, Ordering::SeqCst);
                    j.thread.take()
                })
                .collect()
        };
        self.inner.freed.notify_all();
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Ends a task that never ran.
pub(crate) fn fail(tasks: &TaskStore, mut task: BundleTask, e: &Error) -> BundleTask {
    task.state = State::Failed;
    task.update_time = crate::task::now_iso();
    task.error = Some(TaskError::from_error(e));
    let _ = tasks.save(&task);
    task
}

fn run_job(inner: &Inner, task: BundleTask, spec: JobSpec, cancel: &Arc<AtomicBool>) {
    let tasks = &inner.tasks;
    let id = task.bundle_id.clone();
    // Wait for a slot, as pending; a cancel (or shutdown) meanwhile ends the task.
    loop {
        if cancel.load(Ordering::SeqCst) || inner.stopping.load(Ordering::SeqCst) || tasks.cancel_requested(&id) {
            let t = fail(tasks, task, &Error::Cancelled);
            tasks.clear_cancel(&id);
            log(&format!("{id} {} failed: Cancelled before it started", t.instance_id));
            forget(inner, &id);
            return;
        }
        let mut busy = inner.busy.lock().unwrap_or_else(|e| e.into_inner());
        if *busy < inner.max {
            *busy += 1;
            break;
        }
        let _ = inner.freed.wait_timeout(busy, Duration::from_millis(250));
    }
    // The slot is given back however the job ends, a panic included.
    let _slot = Slot(inner);
    log(&format!("{id} {} started", task.instance_id));
    let keys = Keys::new(&spec.request.prefix);
    // The journal lets a BundleInstance for the same bucket and prefix, after a failure or a
    // server restart, skip what this one stored.
    let (url, bucket) = (spec.target.url.clone(), spec.target.bucket.clone());
    let store = PostStore::with_cancel(spec.target, spec.concurrency, spec.max_attempts, Some(cancel.clone()))
        .and_then(|s| {
            let j = Journal::open(&tasks.journal_dir(), &url, &bucket, &spec.request.prefix, true)?;
            Ok(s.with_journal(j))
        })
        .and_then(|s| s.probe(&keys.part(0)).map(|()| s));
    let final_task = match store {
        Ok(store) => {
            let outcome = run_tracked(&spec.request, &store, tasks, &NoProgress, cancel);
            if let Ok((_, stats)) = &outcome.result
                && let Some(from) = &stats.resumed.resumed_from
            {
                let r = &stats.resumed;
                log(&format!(
                    "{id} resumed the interrupted upload {from}: {} parts ({} bytes) reused, {} sent again",
                    r.reused_parts, r.reused_bytes, r.replaced_parts
                ));
            }
            outcome.task
        }
        Err(e) => fail(tasks, task, &Error::Store(e)),
    };
    match &final_task.error {
        None => log(&format!(
            "{id} {} {}",
            final_task.instance_id,
            final_task.state.as_str()
        )),
        Some(e) => log(&format!(
            "{id} {} failed: {}: {}",
            final_task.instance_id, e.code, e.message
        )),
    }
    forget(inner, &id);
}

/// A busy slot; dropping it frees the slot.
struct Slot<'a>(&'a Inner);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        {
            let mut busy = self.0.busy.lock().unwrap_or_else(|e| e.into_inner());
            *busy = busy.saturating_sub(1);
        }
        self.0.freed.notify_all();
    }
}

/// Drops a finished job from the table (unless shutdown already took its thread to join).
fn forget(inner: &Inner, id: &str) {
    inner.jobs.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
}
