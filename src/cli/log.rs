//! `-v`/`--verbose` and `RUST_LOG`: tracing events on stderr with timestamps, written around the
//! progress bar. Crates that could log request signatures are kept quiet whatever the filter.

use std::io::Write;

use tracing_subscriber::EnvFilter;

/// Where log lines go: stderr, with the progress bar out of the way, each line escaped.
struct AroundTheBar;

impl Write for AroundTheBar {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = escaped_line(buf);
        super::progress::suspended(|| std::io::stderr().write_all(line.as_bytes()))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// One formatted log event as it reaches the terminal: names from a volume or a manifest, keys,
/// panic messages (anything a line may hold) with their non-printable characters escaped as
/// text output escapes them (`\033`, `\n`), so a log line cannot set the window title or fake
/// another line; only the event's own final newline stays.
fn escaped_line(buf: &[u8]) -> String {
    let text = String::from_utf8_lossy(buf);
    let (body, end) = match text.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (text.as_ref(), ""),
    };
    format!("{}{end}", super::browse::escape(body))
}

/// Directives always added: aws-sigv4 logs canonical requests and signatures at debug and trace.
const NEVER: &[&str] = &["aws_sigv4=off", "aws_sigv4a=off"];

/// Starts logging for `verbose` (the number of `-v`), or as RUST_LOG says; nothing when neither
/// asks for it.
pub fn init(verbose: u8) {
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let base = match (from_env, verbose) {
        (Some(env), _) => env,
        (None, 0) => return,
        (None, 1) => "winbundle=info,winbundle::s3=info".into(),
        (None, 2) => "winbundle=debug".into(),
        (None, _) => "winbundle=trace,aws_smithy_runtime=debug,aws_config=debug".into(),
    };
    let mut filter = EnvFilter::builder().parse_lossy(&base);
    for d in NEVER {
        if let Ok(d) = d.parse() {
            filter = filter.add_directive(d);
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| AroundTheBar)
        .with_ansi(false)
        .with_target(true)
        .try_init();
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_lines_keep_only_their_own_newline() {
        let line = super::escaped_line(b"INFO parent p (bun-\x1b]0;X\x07\nfake line): 3 chunks\n");
        assert_eq!(line, "INFO parent p (bun-\\033]0;X\\007\\nfake line): 3 chunks\n");
        assert_eq!(super::escaped_line(b"plain"), "plain");
    }
}
