//! Panics as errors. A panic that escapes a parser or a pipeline thread must end the work it
//! interrupted like any other failure (a typed error, cleanup, exit status), never reach the
//! user as a backtrace, and never leave a thread waiting on the one that died.
//!
//! [`install_quiet_hook`] (the CLI calls it first) keeps the default panic output off the
//! terminal: the hook only notes the panic's location for [`message`] and logs it at debug level.
//! [`catch`] runs a closure and turns its panic into the panic's message.
//! [`inject`] is the fault-injection switch of test builds (see its docs).

use std::any::Any;
use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};

thread_local! {
    /// Where the last panic on this thread happened (`file:line`), for [`message`].
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Replaces the default panic hook by one that prints nothing: every panic is caught and
/// reported as an error (by [`catch`], a join, or the CLI's last wall), with its message.
pub fn install_quiet_hook() {
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
        tracing::debug!(
            "panic at {}: {}",
            at.as_deref().unwrap_or("?"),
            payload_text(info.payload())
        );
        LOCATION.with(|l| *l.borrow_mut() = at);
    }));
}

fn payload_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// The message of a caught panic, with where it happened when the quiet hook saw it.
pub fn message(payload: &(dyn Any + Send)) -> String {
    let text = payload_text(payload);
    match LOCATION.with(|l| l.borrow_mut().take()) {
        Some(at) => format!("{text} (at {at})"),
        None => text,
    }
}

/// Runs `f`; a panic inside it becomes `Err(message)`.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| message(p.as_ref()))
}

/// The fault-injection switch, for tests: in a debug build, when the environment variable
/// `WINBUNDLE_INJECT_PANIC` names `stage`, panics there. Stages: `reader`, `compressor`,
/// `hasher`, `writer`, `uploader`, `store-finish` (inside a store's own `finish`, as it makes
/// the object visible), `progress`, `task-writer`; `file-read` (a read of a file's data for
/// `cat`/`extract`, outside the NTFS layer's own wall); `api-handler` (a signed request to
/// `serve`, once its action is known). Release builds have no switch:
/// the function is empty and the variable is never read. `STAGE:once` panics only the first
/// time the process reaches the stage (a server's first bundle fails, the next completes).
#[inline]
pub fn inject(stage: &str) {
    #[cfg(debug_assertions)]
    if let Ok(v) = std::env::var("WINBUNDLE_INJECT_PANIC") {
        static FIRED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let (name, once) = match v.strip_suffix(":once") {
            Some(n) => (n, true),
            None => (v.as_str(), false),
        };
        if name == stage && !(once && FIRED.swap(true, std::sync::atomic::Ordering::SeqCst)) {
            panic!("injected fault in the {stage} stage");
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = stage;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_gives_its_message() {
        let e = catch(|| -> u32 { panic!("boom {}", 7) }).unwrap_err();
        assert!(e.starts_with("boom 7"), "{e}");
        assert_eq!(catch(|| 5).unwrap(), 5);
        let e = catch(|| std::panic::panic_any(3u8)).unwrap_err();
        assert!(e.contains("without a message"), "{e}");
    }
}
