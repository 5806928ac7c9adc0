//! The documentation shows only commands and flags winbundle has (issue 27): every winbundle
//! command in README.md and docs/*.md, in code blocks and in inline code, names a subcommand the
//! built binary knows, and each flag it shows is one of that subcommand's options in its
//! `--help`. A command is a `winbundle` (or `winbundle.exe`, `& $wb`, `cargo run ... --`) at the
//! start of a line, span or pipeline step; other tools' commands (aws, curl, zstd, qemu-img...)
//! are not checked.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

/// README.md and every docs/*.md, sorted.
fn documents() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ is readable")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    docs.insert(0, root.join("README.md"));
    docs
}

/// A document's path from the repository's root, for messages.
fn shown(doc: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    doc.strip_prefix(root).unwrap_or(doc).display().to_string()
}

/// A piece of a document that may hold commands: a logical line of a code block (continuation
/// lines joined) or an inline code span; `line` is where it starts (1-based).
struct Snippet {
    line: usize,
    text: String,
}

/// The code-block lines and inline code spans of a Markdown text.
fn snippets(text: &str) -> Vec<Snippet> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut pending: Option<Snippet> = None;
    let mut prose = String::new();
    let mut prose_lines = Vec::new(); // the line number of each line appended to `prose`
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            if let Some(s) = pending.take() {
                out.push(s);
            }
            continue;
        }
        if !in_block {
            prose.push_str(line);
            prose.push('\n');
            prose_lines.push(i + 1);
            continue;
        }
        let trimmed = line.trim_end();
        // `\` (sh) and a backtick (PowerShell) at the end continue the command on the next line.
        let (body, continued) = match trimmed.strip_suffix('\\').or_else(|| trimmed.strip_suffix('`')) {
            Some(body) => (body, true),
            None => (trimmed, false),
        };
        let s = pending.get_or_insert_with(|| Snippet {
            line: i + 1,
            text: String::new(),
        });
        s.text.push(' ');
        s.text.push_str(body);
        if !continued {
            out.extend(pending.take());
        }
    }
    out.extend(pending);
    // Inline code: the text between a pair of backticks, which may span a line break.
    let line_of = |offset: usize| prose_lines[prose[..offset].matches('\n').count()];
    let mut rest = prose.as_str();
    let mut base = 0;
    while let Some(open) = rest.find('`') {
        let run = rest[open..].chars().take_while(|&c| c == '`').count();
        let fence = &rest[open..open + run];
        let after = &rest[open + run..];
        let Some(close) = after.find(fence) else { break };
        out.push(Snippet {
            line: line_of(base + open),
            text: after[..close].replace('\n', " "),
        });
        let consumed = open + run + close + run;
        base += consumed;
        rest = &rest[consumed..];
    }
    out
}

/// A winbundle command found in a snippet: the words after the program name, up to the end of
/// the pipeline step (a `|`, `&&`, `;`, redirection or comment outside brackets).
fn commands(snippet: &str) -> Vec<Vec<String>> {
    let words: Vec<&str> = snippet.split_whitespace().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let at_start = i == 0
            || matches!(words[i - 1], "sudo" | "&" | "|" | "&&" | ";" | "$" | "(")
            || is_env_assignment(words[i - 1]);
        let args_from = match words[i] {
            "winbundle" | "winbundle.exe" if at_start => Some(i + 1),
            "$wb" if i > 0 && words[i - 1] == "&" => Some(i + 1),
            "cargo" if at_start && words.get(i + 1) == Some(&"run") => {
                words[i..].iter().position(|w| *w == "--").map(|p| i + p + 1)
            }
            _ => None,
        };
        let Some(start) = args_from else {
            i += 1;
            continue;
        };
        let mut depth = 0i32;
        let mut args = Vec::new();
        let mut j = start;
        while j < words.len() {
            let w = words[j];
            let ends = depth <= 0
                && (matches!(w, "|" | "||" | "&&" | ";")
                    || w.starts_with('#')
                    || w.starts_with('>')
                    || w.starts_with("2>")
                    || w.starts_with('<'));
            if ends {
                break;
            }
            depth += w.matches('[').count() as i32 - w.matches(']').count() as i32;
            args.push(w.to_string());
            j += 1;
        }
        found.push(args);
        i = j;
    }
    found
}

fn is_env_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    })
}

/// The option a word shows (`--name` or `-x`; `-vv` shows `-v`), without the brackets,
/// punctuation and `=value` around it; None for anything else (`-` for stdout, `-7`).
fn flag(word: &str) -> Option<String> {
    let w = word.trim_start_matches(['[', '(', '"', '\'']);
    if let Some(name) = w.strip_prefix("--") {
        let name: String = name
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let starts_with_letter = name.starts_with(|c: char| c.is_ascii_alphabetic());
        return starts_with_letter.then(|| format!("--{name}"));
    }
    let letter = w.strip_prefix('-')?.chars().next()?;
    letter.is_ascii_alphabetic().then(|| format!("-{letter}"))
}

/// The options a `--help` text lists: the `-x` and `--name` words that open its option lines.
fn options_in_help(help: &str) -> BTreeSet<String> {
    let mut options = BTreeSet::new();
    for line in help.lines() {
        let line = line.trim_start();
        if !line.starts_with('-') {
            continue;
        }
        let head = line.split("  ").next().unwrap_or("");
        for word in head.split([',', ' ']) {
            if word.starts_with('-')
                && let Some(f) = flag(word)
            {
                options.insert(f);
            }
        }
    }
    options
}

/// `winbundle ARGS --help`, or None when winbundle refuses it (an unknown subcommand).
fn help(args: &[&str]) -> Option<BTreeSet<String>> {
    let out = Command::new(env!("CARGO_BIN_EXE_winbundle"))
        .args(args)
        .arg("--help")
        .output()
        .expect("run winbundle --help");
    out.status
        .success()
        .then(|| options_in_help(&String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn every_winbundle_command_and_flag_in_the_docs_exists_in_its_help() {
    let top = help(&[]).expect("winbundle --help");
    let mut subcommands: HashMap<String, Option<BTreeSet<String>>> = HashMap::new();
    let mut problems = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).expect("read the document");
        let name = shown(&doc);
        for snippet in snippets(&text) {
            for args in commands(&snippet.text) {
                let at = format!("{name}:{}: winbundle {}", snippet.line, args.join(" "));
                // Options before the subcommand are the program's own (-v).
                let sub_at = args.iter().position(|a| flag(a).is_none());
                for a in &args[..sub_at.unwrap_or(args.len())] {
                    if let Some(f) = flag(a)
                        && !top.contains(&f)
                    {
                        problems.push(format!("{at}\n    {f} is not an option of winbundle"));
                    }
                }
                let Some(sub_at) = sub_at else { continue };
                let sub = args[sub_at].as_str();
                let options = subcommands.entry(sub.to_string()).or_insert_with(|| help(&[sub]));
                let Some(options) = options else {
                    problems.push(format!("{at}\n    `{sub}` is not a winbundle command"));
                    continue;
                };
                checked += 1;
                for f in args[sub_at + 1..].iter().filter_map(|a| flag(a)) {
                    if !options.contains(&f) {
                        problems.push(format!("{at}\n    {f} is not in `winbundle {sub} --help`"));
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the docs show commands or flags winbundle does not have (fix the doc, or the flag):\n{}",
        problems.join("\n")
    );
    // The scan must find the docs' commands: if it finds few, it is the scan that broke.
    assert!(checked > 50, "only {checked} winbundle commands found in the docs");
}

/// Flags of other tools that the docs show, with the tool: any other `--flag` in the docs must be
/// an option of some winbundle command (the flag tables, prose).
const OTHER_TOOLS_FLAGS: &[(&str, &str)] = &[
    ("--sparse", "zstd -d"),
    (
        "--snapshot-id",
        "aws ec2 create-volume, create-replace-root-volume-task",
    ),
    ("--license-type", "aws ec2 import-image"),
    ("--release", "cargo"),
    ("--target", "cargo"),
    ("--bin", "cargo build"),
    ("--example", "cargo build"),
    ("--test", "cargo test"),
    ("--nocapture", "the test harness"),
    ("--path", "cargo install"),
    ("--read", "garage bucket allow"),
    ("--write", "garage bucket allow"),
    ("--owner", "garage bucket allow"),
    ("--key", "garage bucket allow"),
    (
        "--lifecycle-configuration",
        "aws s3api put-bucket-lifecycle-configuration",
    ),
    ("--disk-container", "aws ec2 import-snapshot"),
    ("--root-device-name", "aws ec2 register-image"),
    ("--block-device-mappings", "aws ec2 register-image"),
    ("--boot-mode", "aws ec2 register-image"),
    ("--porcelain", "git status"),
    ("--license-type", "aws ec2 import-image"),
    ("--platform", "aws ec2 import-image"),
    ("--disk-containers", "aws ec2 import-image"),
    ("--description", "aws ec2 import-image"),
    ("--import-task-ids", "aws ec2 describe-import-image-tasks"),
    ("--image-id", "aws ec2 run-instances"),
    ("--instance-type", "aws ec2 run-instances"),
    ("--key-name", "aws ec2 run-instances"),
];

/// The subcommands `winbundle --help` lists, but `help`.
fn subcommand_names() -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_winbundle"))
        .arg("--help")
        .output()
        .expect("run winbundle --help");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .filter(|name| name != "help")
        .collect()
}

#[test]
fn every_flag_named_in_the_docs_is_a_winbundle_option_or_another_tools() {
    let subcommands = subcommand_names();
    assert!(
        subcommands.len() > 10,
        "winbundle --help lists commands: {subcommands:?}"
    );
    let mut known = help(&[]).expect("winbundle --help");
    for sub in &subcommands {
        known.extend(help(&[sub]).unwrap_or_else(|| panic!("winbundle {sub} --help")));
    }
    let mut problems = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).expect("read the document");
        for (i, line) in text.lines().enumerate() {
            for (at, _) in line.match_indices("--") {
                let Some(f) = flag(&line[at..]) else { continue };
                let preceded = line[..at].chars().next_back();
                if preceded.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-') {
                    continue; // inside a word (a-long--name) or a longer run of dashes
                }
                if !known.contains(&f) && !OTHER_TOOLS_FLAGS.iter().any(|(o, _)| *o == f) {
                    problems.push(format!("{}:{}: {f}", shown(&doc), i + 1));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "flags in the docs that no winbundle command has (fix the doc or the flag; another \
         tool's flag goes in OTHER_TOOLS_FLAGS):\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_scanner_finds_commands_in_blocks_spans_and_pipelines() {
    let doc = "Run `winbundle ls --bucket B\n--prefix P --long` or `& $wb cat --stream S`.\n\
               ```sh\nsudo winbundle man --out D && man winbundle-bundle-instance\n\
               winbundle -v restore --disk \\\n  --output x # --bogus\n\
               aws s3 cp - --bogus | winbundle completions bash | tee f\n\
               winbundle inspect SRC [--partition N | --exclude P]... --json\n\
               cargo run --release -- verify --threads 2\n```\n";
    let found: Vec<Vec<String>> = snippets(doc).iter().flat_map(|s| commands(&s.text)).collect();
    let words = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
    assert_eq!(
        found,
        vec![
            words("man --out D"),
            words("-v restore --disk --output x"),
            words("completions bash"),
            words("inspect SRC [--partition N | --exclude P]... --json"),
            words("verify --threads 2"),
            words("ls --bucket B --prefix P --long"),
            words("cat --stream S"),
        ]
    );
    assert_eq!(flag("[--disk"), Some("--disk".into()));
    assert_eq!(flag("--format=vhd]]"), Some("--format".into()));
    assert_eq!(flag("-vv"), Some("-v".into()));
    assert_eq!(flag("-"), None);
    assert_eq!(flag("-7"), None);
    assert_eq!(flag("|---|"), None);
    assert_eq!(flag("---"), None);
}
