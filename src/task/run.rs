//! Running a bundle as a task: the task file follows every state change, its progress is kept
//! current, a cancel request left by another process (cancel-bundle-task, the API server) stops
//! the run, and a second bundle of the same instance is refused. Used by the CLI and the server.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::store::TaskStore;
use super::{BundleTask, State};
use crate::bundle::create::{BundleOutcome, BundleRequest, bundle_instance};
use crate::progress::Progress;
use crate::store::ObjectStore;

/// How often the task file's progress is refreshed and cancel requests are looked for.
const POLL: Duration = Duration::from_millis(250);

/// Runs `req` into `store`, recording the task in `tasks`. `cancel` stops the run when set
/// (and is set when a cancel request for the task appears).
pub fn run_tracked(
    req: &BundleRequest,
    store: &dyn ObjectStore,
    tasks: &TaskStore,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> BundleOutcome {
    let counted = Counted {
        inner: progress,
        read: AtomicU64::new(0),
        total: AtomicU64::new(0),
    };
    let current: Mutex<Option<BundleTask>> = Mutex::new(None);
    let done = AtomicBool::new(false);
    // A panic in the task writer: it stops the bundle, which then fails with it.
    let poll_panic: Mutex<Option<String>> = Mutex::new(None);
    let mut outcome = std::thread::scope(|scope| {
        scope.spawn(|| {
            let polled = crate::panics::catch(|| poll(&done, &current, tasks, cancel, &counted));
            if let Err(m) = polled {
                *poll_panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(m);
                cancel.store(true, Ordering::SeqCst);
            }
        });
        // `done` is set however bundle_instance ends, or this scope would wait for the
        // poller for good.
        let outcome = crate::panics::catch(|| {
            bundle_instance(req, store, &counted, cancel, &mut |t| {
                if t.state == State::Bundling {
                    tasks.check_not_running(&t.instance_id, &t.bundle_id)?;
                }
                let mut guard = current.lock().unwrap_or_else(|e| e.into_inner());
                let mut t = t.clone();
                if let (State::Failed, Some(last)) = (t.state, guard.as_ref()) {
                    t.progress = last.progress.clone(); // how far it got
                }
                if t.state == State::Bundling && tasks.cancel_requested(&t.bundle_id) {
                    cancel.store(true, Ordering::SeqCst); // cancelled while it was pending
                }
                tasks.save(&t)?;
                *guard = Some(t);
                Ok(())
            })
        });
        done.store(true, Ordering::Relaxed);
        outcome
    });
    let panicked = poll_panic.into_inner().unwrap_or_else(|e| e.into_inner());
    let failure = match (&mut outcome, panicked) {
        (Ok(o), Some(m)) if o.result.is_err() => Some((Some(o), format!("the task writer panicked: {m}"))),
        (Err(m), _) => Some((None, format!("the bundle panicked: {m}"))),
        _ => None,
    };
    if let Some((o, message)) = failure {
        let e = crate::Error::Internal(message);
        let mut task = match o {
            Some(o) => o.task.clone(),
            None => current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_else(|| empty_task(req)),
        };
        task.state = State::Failed;
        task.update_time = super::now_iso();
        task.error = Some(super::TaskError::from_error(&e));
        let _ = tasks.save(&task);
        let (warnings, derived, imds) = match &outcome {
            Ok(o) => (o.warnings.clone(), o.instance_id_derived, o.instance_id_from_imds),
            Err(_) => (Vec::new(), false, false),
        };
        outcome = Ok(BundleOutcome {
            task,
            instance_id_derived: derived,
            instance_id_from_imds: imds,
            warnings,
            result: Err(e),
        });
    }
    let outcome = match outcome {
        Ok(o) => o,
        Err(_) => unreachable!("a panicked run became a failed outcome above"),
    };
    tasks.clear_cancel(&outcome.task.bundle_id);
    outcome
}

/// A task record for a run that panicked before it saved one.
fn empty_task(req: &BundleRequest) -> BundleTask {
    BundleTask {
        bundle_id: req.assigned.as_ref().map(|a| a.bundle_id.clone()).unwrap_or_default(),
        instance_id: req.instance_id.clone().unwrap_or_default(),
        state: State::Failed,
        update_time: super::now_iso(),
        start_time: super::now_iso(),
        bucket: req.bucket.clone(),
        prefix: req.prefix.clone(),
        progress: "0%".into(),
        error: None,
    }
}

/// The task writer: saves progress and notices cancel requests until `done`.
fn poll(
    done: &AtomicBool,
    current: &Mutex<Option<BundleTask>>,
    tasks: &TaskStore,
    cancel: &AtomicBool,
    counted: &Counted<'_>,
) {
    while !done.load(Ordering::Relaxed) {
        crate::panics::inject("task-writer");
        std::thread::sleep(POLL);
        let mut guard = current.lock().unwrap_or_else(|e| e.into_inner());
        let Some(task) = guard.as_mut() else { continue };
        if tasks.cancel_requested(&task.bundle_id) && !cancel.swap(true, Ordering::SeqCst) {
            task.state = State::Cancelling;
            task.update_time = super::now_iso();
            let _ = tasks.save(task);
        }
        let total = counted.total.load(Ordering::Relaxed).max(1);
        let pct = (counted.read.load(Ordering::Relaxed) * 100 / total).min(99);
        let progress = format!("{pct}%");
        if task.state == State::Bundling && task.progress != progress {
            task.progress = progress;
            task.update_time = super::now_iso();
            let _ = tasks.save(task);
        }
    }
}

/// Forwards progress and counts it for the task file.
struct Counted<'a> {
    inner: &'a dyn Progress,
    read: AtomicU64,
    total: AtomicU64,
}

impl Progress for Counted<'_> {
    fn start(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.inner.start(total);
    }

    fn read(&self, n: u64) {
        crate::panics::inject("progress");
        self.read.fetch_add(n, Ordering::Relaxed);
        self.inner.read(n);
    }

    fn stored(&self, n: u64) {
        self.inner.stored(n);
    }

    fn finish(&self) {
        self.inner.finish();
    }
}
