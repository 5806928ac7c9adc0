//! Progress reporting, behind a trait so the library never writes to the terminal itself.
//! The CLI supplies an indicatif bar; tests and quiet runs use [`NoProgress`].

/// Receives progress from the pipelines. Called from several threads.
pub trait Progress: Sync {
    /// The job has `total` bytes of source data to process.
    fn start(&self, _total: u64) {}
    /// `n` more bytes were read from the source.
    fn read(&self, _n: u64) {}
    /// `n` more bytes were stored (written or uploaded).
    fn stored(&self, _n: u64) {}
    /// The job ended.
    fn finish(&self) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
