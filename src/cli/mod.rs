//! Command-line interface: clap definitions ([`args`]), one module per subcommand, and the
//! terminal progress bar. Prints errors with their cause and a hint, and returns exit statuses
//! (0 ok, 1 failure, 2 usage, 3 damaged source, 4 damaged bundle, 130 cancelled).

mod acls;
mod args;
mod browse;
mod bundle;
mod cleanup;
mod disk_image;
mod docs;
mod inspect;
mod links;
mod log;
mod output;
mod policy;
mod progress;
mod restore;
mod snapshot;
mod tasks;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;

use args::{Cli, Command};
use winbundle::Error;
use winbundle::store::{LocalStore, ObjectStore, S3Options, S3Store};

/// Prints an error, its causes and a hint, and returns its exit status.
/// Prints `e` on stderr the way the aws-cli does, with its EC2-style code
/// (`winbundle: error (Code): message`), then what caused it and what to do; with `json`, also
/// as one JSON line (`{"Error": {"Code", "Message", "Hint"}}`), the last line of stderr.
/// Returns the exit status.
pub fn report(e: &Error, json: bool) -> i32 {
    // Text escapes control characters (a name from a volume may hold them); JSON stays exact.
    eprintln!("winbundle: error ({}): {}", e.code(), browse::escape(&e.to_string()));
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !e.to_string().contains(&text) {
            eprintln!("  caused by: {}", browse::escape(&text));
        }
        cause = c.source();
    }
    if let Some(h) = e.hint() {
        eprintln!("  hint: {}", browse::escape(&h));
    }
    if json {
        let mut v = serde_json::json!({"Error": {"Code": e.code(), "Message": e.to_string()}});
        if let Some(h) = e.hint() {
            v["Error"]["Hint"] = h.into();
        }
        eprintln!("{v}");
    }
    e.exit_code()
}

/// The identities `--identity` and WINBUNDLE_IDENTITY name, read and checked.
pub fn keyring(id: &args::IdentityArgs) -> Result<winbundle::crypt::keyring::Keyring, Error> {
    Ok(winbundle::crypt::keyring::Keyring::from_identity_files(&id.identity)?)
}

/// Opens the store the arguments name: a local folder, or S3. `no_resume`: start data objects
/// afresh; `cancel` ends any wait on a server at once.
pub fn open_store(
    a: &args::StoreArgs,
    create: bool,
    no_resume: bool,
    cancel: &Arc<AtomicBool>,
) -> Result<Box<dyn ObjectStore>, Error> {
    winbundle::store::names::check_prefix(&a.prefix)?;
    open_bucket(a, create, no_resume, cancel)
}

/// As [`open_store`], without checking the prefix.
fn open_bucket(
    a: &args::StoreArgs,
    create: bool,
    no_resume: bool,
    cancel: &Arc<AtomicBool>,
) -> Result<Box<dyn ObjectStore>, Error> {
    Ok(match &a.local_store {
        Some(dir) => Box::new(LocalStore::open(dir, &a.bucket, create)?.with_resume(!no_resume)),
        None => Box::new(S3Store::connect(&a.bucket, &s3_options(&a.s3, no_resume, cancel)?)?),
    })
}

/// The server-side encryption `--sse` and `--sse-kms-key-id` ask for.
pub fn server_side(
    sse: Option<args::SseArg>,
    kms_key_id: Option<&str>,
) -> Result<Option<winbundle::store::s3::sse::ServerSide>, Error> {
    use winbundle::store::s3::sse::ServerSide;
    match (sse, kms_key_id) {
        (Some(args::SseArg::AwsKms), key) => Ok(Some(ServerSide::Kms {
            key_id: key.map(str::to_string),
        })),
        (_, Some(_)) => Err(Error::InvalidParameter {
            parameter: "--sse-kms-key-id",
            message: "a KMS key goes with --sse aws:kms".into(),
        }),
        (Some(args::SseArg::Aes256), None) => Ok(Some(ServerSide::S3)),
        (None, None) => Ok(None),
    }
}

/// How to reach S3, from the command line.
pub fn s3_options(s3: &args::S3Args, no_resume: bool, cancel: &Arc<AtomicBool>) -> Result<S3Options, Error> {
    use winbundle::store::s3::sse::{CustomerKey, SseOptions};
    let server_side = server_side(s3.sse, s3.sse_kms_key_id.as_deref())?;
    let customer_key = s3
        .sse_c_key_file
        .as_deref()
        .map(CustomerKey::from_file)
        .transpose()
        .map_err(|message| Error::InvalidParameter {
            parameter: "--sse-c-key-file",
            message,
        })?;
    Ok(S3Options {
        region: s3.region.clone(),
        endpoint_url: s3.endpoint_url.clone(),
        profile: s3.profile.clone(),
        force_path_style: s3.force_path_style,
        concurrency: s3.concurrency,
        max_attempts: s3.max_attempts,
        credentials: None,
        cancel: Some(cancel.clone()),
        no_resume,
        read_timeout: None,
        initial_backoff: None,
        sse: SseOptions {
            server_side,
            customer_key,
        },
    })
}

/// How long a second Ctrl-C lets the run release its snapshot and abort its uploads.
const SECOND_CTRL_C_BOUND: std::time::Duration = std::time::Duration::from_secs(5);

/// A flag set by Ctrl-C / SIGTERM; long jobs poll it and stop cleanly.
fn cancel_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let _ = ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            // A second Ctrl-C: every wait on VSS stops now, and the run has at most
            // SECOND_CTRL_C_BOUND to abort and release its Volume Shadow Copy backup (so that no
            // snapshot set stays "in progress" for other requesters), abort its uploads and
            // save its task as failed. It ends the process itself when done (exit 130).
            let end = std::time::Instant::now() + SECOND_CTRL_C_BOUND;
            eprintln!(
                "\nwinbundle: quitting: releasing the snapshot and aborting uploads first (at most {} s)...",
                SECOND_CTRL_C_BOUND.as_secs()
            );
            winbundle::source::snapshot::quit_after_release(SECOND_CTRL_C_BOUND);
            std::thread::sleep(end.saturating_duration_since(std::time::Instant::now()));
            std::process::exit(130);
        }
        eprintln!("\nwinbundle: stopping (press Ctrl-C again to quit within 5 s)...");
    });
    flag
}

pub fn run() -> i32 {
    let cli = Cli::parse();
    log::init(cli.verbose);
    let json = wants_json(&cli.command);
    let result = match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::BundleInstance(a) => bundle::run(*a, &cancel_flag()),
        Command::Restore(a) => restore::run_restore(a, &cancel_flag()),
        Command::Verify(a) => restore::run_verify(a, &cancel_flag()),
        Command::Ls(a) => browse::ls(a, &cancel_flag()),
        Command::Extract(a) => browse::extract(a, &cancel_flag()),
        Command::Cat(a) => browse::cat(a, &cancel_flag()),
        Command::UploadPolicy(a) => policy::run(a),
        Command::DescribeBundleTasks(a) => tasks::describe(a),
        Command::CancelBundleTask(a) => tasks::cancel(a),
        Command::Cleanup(a) => cleanup::run(a, &cancel_flag()),
        Command::Snapshot(a) => snapshot::run(*a, &cancel_flag()),
        Command::Serve(a) => winbundle::api::serve(
            &a.config,
            &winbundle::api::ServeOptions {
                listen: a.listen,
                state_dir: a.state_dir,
            },
        )
        .map(|()| 0),
        Command::Completions(a) => docs::completions(a.shell),
        Command::Man(a) => docs::man(a.out.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(e) => report(&e, json),
    }
}

/// True when the command's output is JSON: its errors are JSON too.
fn wants_json(c: &Command) -> bool {
    use args::{OutputFormat as O, PolicyOutput as P};
    match c {
        Command::Inspect(a) => a.json,
        Command::BundleInstance(a) => a.output == O::Json,
        Command::Restore(a) => a.json,
        Command::Verify(a) => a.json,
        Command::Ls(a) => a.json,
        Command::Extract(a) => a.json,
        Command::Cat(_) => false,
        Command::UploadPolicy(a) => a.output == P::Json,
        Command::DescribeBundleTasks(a) => a.output == O::Json,
        Command::CancelBundleTask(a) => a.output == O::Json,
        Command::Cleanup(a) => a.output == O::Json,
        Command::Snapshot(a) => a.output == O::Json,
        Command::Serve(_) | Command::Completions(_) | Command::Man(_) => false,
    }
}
