//! The `winbundle` command. All logic lives in the library; this maps the CLI onto it and
//! errors onto exit statuses.

mod cli;

fn main() {
    // First thing on Windows: DLLs loaded later come from System32 only, never from the
    // executable's folder or the current directory (winbundle runs elevated).
    #[cfg(windows)]
    winbundle::source::windows::restrict_dll_search();
    // No panic output reaches the user: panics are caught where they happen and reported as
    // errors; one that reaches this wall is an `InternalError` with its message, exit 1.
    winbundle::panics::install_quiet_hook();
    let code = winbundle::panics::catch(cli::run).unwrap_or_else(|m| {
        eprintln!(
            "error (InternalError): winbundle stopped on an internal error: {m}\nhint: this is a bug; please report it with the command line and `-v` output"
        );
        1
    });
    std::process::exit(code);
}
