//! Background reads of the parent's data stream, for an incremental bundle on S3: the parent
//! bytes that pad a changed frame's part to S3's 5 MiB minimum (or a run too short to copy)
//! are fetched by a few threads while the pipeline goes on, instead of one GET at a time in the
//! writer (measured with bench/incremental-s3.sh: the writer used to wait on each of them).

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::Scope;

use super::parent::Parent;
use crate::Error;

/// One read: stream offset, length, and where the bytes go.
type Job = (u64, usize, Sender<Result<Vec<u8>, Error>>);

/// Threads reading the parent's stream. Dropping it lets them end (the scope then joins them).
pub struct Fetcher {
    jobs: Sender<Job>,
}

/// The bytes of one fetch, once they have arrived.
pub struct Pending {
    rx: Receiver<Result<Vec<u8>, Error>>,
    pub len: usize,
    ready: Option<Result<Vec<u8>, Error>>,
}

impl Fetcher {
    /// Starts `threads` readers of `parent` on `scope`.
    pub fn start<'scope, 'env: 'scope>(
        scope: &'scope Scope<'scope, 'env>,
        parent: &'env Parent<'env>,
        threads: usize,
    ) -> Self {
        let (jobs, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            scope.spawn(move || {
                loop {
                    // The lock is held only to take the next job.
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    let Ok((start, len, reply)) = job else { return };
                    let mut buf = vec![0u8; len];
                    let read = parent.read_stream(start, &mut buf).map(|()| buf);
                    // The writer may have given up (an error elsewhere): nobody to tell.
                    let _ = reply.send(read);
                }
            });
        }
        Self { jobs }
    }

    /// Asks for stream bytes [start, start + len) of the parent.
    pub fn fetch(&self, start: u64, len: usize) -> Pending {
        let (tx, rx) = channel();
        let ready = match self.jobs.send((start, len, tx)) {
            Ok(()) => None,
            Err(_) => Some(Err(Error::Internal("the parent's readers have stopped".into()))),
        };
        Pending { rx, len, ready }
    }
}

impl Pending {
    /// Whether the bytes (or the error) have arrived.
    pub fn is_ready(&mut self) -> bool {
        if self.ready.is_none()
            && let Ok(r) = self.rx.try_recv()
        {
            self.ready = Some(r);
        }
        self.ready.is_some()
    }

    /// The bytes, waiting for them if need be.
    pub fn wait(mut self) -> Result<Vec<u8>, Error> {
        match self.ready.take() {
            Some(r) => r,
            None => self.rx.recv().unwrap_or_else(|_| {
                Err(Error::Internal(
                    "a reader of the parent stopped without an answer".into(),
                ))
            }),
        }
    }
}
