//! The `winbundle` command. All logic lives in the library; this maps the CLI onto it and
//! errors onto exit statuses.

mod cli;

fn main() {
    // First thing on Windows: DLLs loaded later come from System32 only, never from the
    // executable's folder or the current directory (winbundle runs elevated).
    #[cfg(windows)]
    winbundle::source::windows::restrict_dll_search();
    std::process::exit(cli::run());
}
