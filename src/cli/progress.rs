//! The terminal progress bar (indicatif, on stderr): bytes done of the total, rate, ETA, and
//! bytes stored. Hidden when stderr is not a terminal or with --quiet.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use winbundle::progress::Progress;
use winbundle::units::human;

/// The bar on screen, if any: log lines are written while it is suspended (cleared, then drawn
/// again), so the two never garble each other.
static ON_SCREEN: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Runs `f` with the bar on screen (if any) out of the way.
pub fn suspended<R>(f: impl FnOnce() -> R) -> R {
    let bar = ON_SCREEN.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match bar {
        Some(b) => b.suspend(f),
        None => f(),
    }
}

pub struct Bar {
    bar: ProgressBar,
    stored: AtomicU64,
    verb: &'static str,
}

impl Bar {
    /// A bar, or a hidden one when it should not show.
    pub fn new(quiet: bool, verb: &'static str) -> Self {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        if quiet || !std::io::stderr().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        } else {
            *ON_SCREEN.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
        }
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(verb);
        Self {
            bar,
            stored: AtomicU64::new(0),
            verb,
        }
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.bar.set_length(total);
        self.bar.set_position(0);
    }

    fn read(&self, n: u64) {
        self.bar.inc(n);
    }

    fn stored(&self, n: u64) {
        let before = self.stored.fetch_add(n, Ordering::Relaxed);
        // Refresh the message about every 16 MiB.
        if (before >> 24) != ((before + n) >> 24) {
            self.bar.set_message(format!("stored {}", human(before + n)));
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
        ON_SCREEN.lock().unwrap_or_else(|e| e.into_inner()).take();
        let _ = self.verb;
    }
}
