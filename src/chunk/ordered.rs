//! The parallel engine under both bundling and restoring: one producer thread makes jobs in
//! index order, `threads` workers transform them, and the calling thread consumes the results
//! in index order. At most `window` items are in flight (a ticket each), so memory is bounded
//! and no stage can run away from the others. Any error stops all three stages promptly.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use crate::Error;

/// A pool of reusable buffers.
pub struct Pool<T>(Mutex<Vec<T>>);

/// A pool of reusable byte buffers.
pub type BufPool = Pool<Vec<u8>>;

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Self(Mutex::new(Vec::new()))
    }
}

impl<T: Default> Pool<T> {
    pub fn take(&self) -> T {
        self.0.lock().map(|mut v| v.pop()).ok().flatten().unwrap_or_default()
    }

    pub fn give(&self, buf: T) {
        if let Ok(mut v) = self.0.lock() {
            v.push(buf);
        }
    }
}

/// Runs the three stages; see the module docs. `work` gets a per-thread state made by `init`.
#[allow(clippy::too_many_arguments)]
pub fn ordered_map<J, O, S>(
    count: u64,
    threads: usize,
    window: usize,
    cancel: &AtomicBool,
    produce: impl FnMut(u64) -> Result<J, Error> + Send,
    init: impl Fn() -> Result<S, Error> + Sync,
    work: impl Fn(&mut S, u64, J) -> Result<O, Error> + Sync,
    mut consume: impl FnMut(u64, O) -> Result<(), Error>,
) -> Result<(), Error>
where
    J: Send,
    O: Send,
{
    let threads = threads.max(1);
    let window = window.max(threads + 1);
    let (ticket_tx, ticket_rx) = bounded::<()>(window);
    for _ in 0..window {
        let _ = ticket_tx.send(());
    }
    let (job_tx, job_rx) = bounded::<(u64, J)>(window);
    let (done_tx, done_rx) = unbounded::<Done<O>>();
    let stop = AtomicBool::new(false);

    std::thread::scope(|scope| {
        let stop = &stop;
        let producer_done = done_tx.clone();
        let producer =
            scope.spawn(move || produce_jobs(count, ticket_rx, job_tx, producer_done, stop, cancel, produce));
        let mut workers = Vec::new();
        for _ in 0..threads {
            let (job_rx, done_tx, init, work) = (job_rx.clone(), done_tx.clone(), &init, &work);
            workers.push(scope.spawn(move || work_jobs(job_rx, done_tx, stop, init, work)));
        }
        drop((done_tx, job_rx));

        let outcome = consume_in_order(count, &done_rx, &ticket_tx, &mut consume);
        if outcome.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        drop((ticket_tx, done_rx));
        let panicked =
            producer.join().is_err() | workers.into_iter().map(|w| w.join().is_err()).fold(false, |a, b| a | b);
        match outcome {
            Ok(()) if panicked => Err(Error::Internal("a pipeline thread panicked".into())),
            other => other,
        }
    })
}

/// What a worker (or the producer, failing) hands the consumer.
type Done<O> = Result<(u64, O), Error>;

/// The producer: makes each job in index order once a ticket is free, until the last one, a
/// stop, a cancel or an error (which it hands the consumer).
fn produce_jobs<J, O>(
    count: u64,
    ticket_rx: Receiver<()>,
    job_tx: Sender<(u64, J)>,
    producer_done: Sender<Done<O>>,
    stop: &AtomicBool,
    cancel: &AtomicBool,
    mut produce: impl FnMut(u64) -> Result<J, Error>,
) {
    for index in 0..count {
        if ticket_rx.recv().is_err() || stop.load(Ordering::Relaxed) {
            return;
        }
        if cancel.load(Ordering::Relaxed) {
            let _ = producer_done.send(Err(Error::Cancelled));
            return;
        }
        let produced = crate::panics::catch(|| produce(index))
            .unwrap_or_else(|m| Err(Error::Internal(format!("the reader thread panicked: {m}"))));
        match produced {
            Ok(job) => {
                if job_tx.send((index, job)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = producer_done.send(Err(e));
                return;
            }
        }
    }
}

/// A worker: makes its state, then transforms jobs until they run out or the run stops; its
/// first error stops the run.
fn work_jobs<J, O, S>(
    job_rx: Receiver<(u64, J)>,
    done_tx: Sender<Done<O>>,
    stop: &AtomicBool,
    init: &impl Fn() -> Result<S, Error>,
    work: &impl Fn(&mut S, u64, J) -> Result<O, Error>,
) {
    let mut state = match crate::panics::catch(init)
        .unwrap_or_else(|m| Err(Error::Internal(format!("a worker thread panicked: {m}"))))
    {
        Ok(s) => s,
        Err(e) => {
            let _ = done_tx.send(Err(e));
            return;
        }
    };
    for (index, job) in job_rx.iter() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let r = crate::panics::catch(|| work(&mut state, index, job))
            .unwrap_or_else(|m| Err(Error::Internal(format!("a worker thread panicked: {m}"))))
            .map(|o| (index, o));
        if r.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        if done_tx.send(r).is_err() {
            return;
        }
    }
}

/// The consumer: hands the results on in index order, giving a ticket back for each.
fn consume_in_order<O>(
    count: u64,
    done_rx: &Receiver<Done<O>>,
    ticket_tx: &Sender<()>,
    consume: &mut impl FnMut(u64, O) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut pending = BTreeMap::new();
    let mut next = 0u64;
    while next < count {
        let Ok(msg) = done_rx.recv() else {
            return Err(Error::Internal("a pipeline stage stopped before the last item".into()));
        };
        let (index, out) = msg?;
        pending.insert(index, out);
        while let Some(out) = pending.remove(&next) {
            crate::panics::catch(|| consume(next, out))
                .unwrap_or_else(|m| Err(Error::Internal(format!("the writer panicked: {m}"))))?;
            next += 1;
            let _ = ticket_tx.send(());
        }
    }
    Ok(())
}
