//! Where a command's result document goes: standard output, or with `--output-file PATH` a file
//! that winbundle writes itself (UTF-8, whole: a temporary file beside it, renamed over it), so
//! that nothing has to be piped. In PowerShell a pipe (`| Tee-Object`) re-encodes the output and
//! makes Ctrl-C kill winbundle before it cleans up.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use winbundle::Error;

/// `--output-file`, shared by every command that prints a result document.
#[derive(Args, Debug, Clone, Default)]
pub struct OutputFileArgs {
    /// Write the result document to this file instead of standard output: UTF-8, written to a
    /// temporary file beside it and renamed over it (never half-written). Checked before any work
    /// starts. `extract` and `restore` write their JSON document (as with --json).
    #[arg(long, value_name = "PATH")]
    pub output_file: Option<PathBuf>,
}

/// Where the result document goes.
#[derive(Debug)]
pub struct Output {
    file: Option<PathBuf>,
}

impl Output {
    /// Standard output, or the file `--output-file` names. A file is tried at once (a temporary
    /// file made beside it, then removed), so that a path that cannot be written fails before
    /// the work (a bundle, a restore) rather than after it.
    pub fn new(a: &OutputFileArgs) -> Result<Self, Error> {
        if let Some(path) = &a.output_file {
            let probe = temp_beside(path).map_err(|source| Error::OutputFile {
                path: path.clone(),
                source,
                printed: false,
            })?;
            drop(probe); // removes it
            if path.is_dir() {
                return Err(Error::OutputFile {
                    path: path.clone(),
                    source: std::io::Error::other("it is a folder: name a file"),
                    printed: false,
                });
            }
        }
        Ok(Self {
            file: a.output_file.clone(),
        })
    }

    /// True when the document goes to a file.
    pub fn to_file(&self) -> bool {
        self.file.is_some()
    }

    /// Writes `doc`. When the file cannot be written, the document is printed on standard output
    /// instead (the work it reports is done) and the error says so.
    pub fn emit(&self, doc: &str) -> Result<(), Error> {
        let Some(path) = &self.file else {
            return print_stdout(doc);
        };
        write_whole(path, doc.as_bytes()).map_err(|source| {
            let printed = print_stdout(doc).is_ok();
            Error::OutputFile {
                path: path.clone(),
                source,
                printed,
            }
        })
    }
}

/// Pretty JSON and a final newline: the shape every JSON result document has.
pub fn json_doc(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

/// Prints `doc` on standard output; a closed pipe (`| head`) is not an error.
fn print_stdout(doc: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    match out.write_all(doc.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Io {
            context: "cannot write to standard output".into(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// A temporary file in `path`'s folder (removed when dropped). Its errors are the system's own
/// (the message names `path`, not the temporary file's random name).
fn temp_beside(path: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(plain)
}

/// The OS error inside `e`, without the path the tempfile crate adds to its message.
fn plain(e: std::io::Error) -> std::io::Error {
    e.raw_os_error().map_or(e, std::io::Error::from_raw_os_error)
}

/// Writes `bytes` to a temporary file beside `path`, flushes it to disk and renames it over
/// `path`: a reader sees the old file or the new one, never a part.
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = temp_beside(path)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| plain(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_replaces_the_file_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("résultat.json");
        std::fs::write(&path, "old").unwrap();
        let out = Output::new(&OutputFileArgs {
            output_file: Some(path.clone()),
        })
        .unwrap();
        out.emit("{\"ü\": 1}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"ü\": 1}\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // A folder, or a path in a folder that does not exist: refused before any work.
        for bad in [dir.path().to_path_buf(), dir.path().join("no/such.json")] {
            let e = Output::new(&OutputFileArgs {
                output_file: Some(bad.clone()),
            })
            .unwrap_err();
            assert!(e.to_string().contains(&bad.display().to_string()), "{e}");
            assert_eq!(e.exit_code(), 1);
            assert!(e.hint().unwrap().contains("--output-file"));
        }
    }
}
