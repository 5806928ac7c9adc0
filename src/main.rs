//! The `winbundle` command. All logic lives in the library; this maps the CLI onto it and
//! errors onto exit statuses.

mod cli;

fn main() {
    std::process::exit(cli::run());
}
