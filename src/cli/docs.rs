//! `completions` and `man`: shell completion scripts and man pages, generated from the clap
//! definitions so they always match the flags.

use std::path::Path;

use clap::CommandFactory;
use winbundle::Error;

use super::args::Cli;

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<i32, Error> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "winbundle", &mut std::io::stdout());
    Ok(0)
}

/// Prints winbundle.1, or with `out` writes winbundle.1 and winbundle-COMMAND.1 for every
/// command into that folder.
pub fn man(out: Option<&Path>) -> Result<i32, Error> {
    let cmd = Cli::command();
    let io = |context: String| move |source: std::io::Error| Error::Io { context, source };
    let Some(dir) = out else {
        return match clap_mangen::Man::new(cmd).render(&mut std::io::stdout()) {
            // `winbundle man | head`: the reader has what it wanted.
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(io("writing the man page".into())(e)),
            _ => Ok(0),
        };
    };
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let mut pages = vec![("winbundle.1".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        let name = format!("winbundle-{}", sub.get_name());
        pages.push((format!("{name}.1"), sub.clone().name(name)));
    }
    for (file, page) in pages {
        let path = dir.join(&file);
        let mut bytes = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut bytes)
            .map_err(io(format!("rendering {file}")))?;
        std::fs::write(&path, bytes).map_err(io(format!("writing {}", path.display())))?;
    }
    Ok(0)
}
