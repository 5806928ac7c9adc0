//! `winbundle ls`, `extract` and `cat`: the NTFS volume inside a bundle, read through a
//! [`BundleView`], so only the chunks the walk needs are fetched (ranged reads) and checked.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::json;
use winbundle::Error;
use winbundle::ntfs::NtfsVolume;
use winbundle::ntfs::catalog::{
    ATTRIBUTE_NAMES, FIRST_USER_RECORD, FileInfo, attribute_letters, filetime_rfc3339, filetime_to_unix,
};
use winbundle::ntfs::exclude::normalise;
use winbundle::ntfs::wof::Contents;
use winbundle::read::opened::{OpenedBundle, raw_stdout};
use winbundle::read::output::write_sparse;
use winbundle::read::view::{BundleView, ViewDevice};
use winbundle::source::DiskFile;
use winbundle::store::ObjectStore;
use winbundle::units::human;

use super::args::{CatArgs, ExtractArgs, IdentityArgs, LsArgs, StoreArgs};
use super::links::{self, LinksArg};
use winbundle::ntfs::reparse::Reparse;

const ENCRYPTED: u32 = 0x4000;

/// A bundle's volume, opened for reading.
struct Browse {
    view: Arc<BundleView>,
    disk: DiskFile,
}

impl Browse {
    fn open(a: &StoreArgs, id: &IdentityArgs, cancel: &Arc<AtomicBool>) -> Result<Self, Error> {
        let keyring = super::keyring(id)?;
        let store = super::open_store(a, false, false, cancel)?;
        // The view is a device of a DiskFile, which lives as long as the process: so does the
        // store it reads from.
        let store: &'static dyn ObjectStore = Box::leak(store);
        let bundle = OpenedBundle::open_readable(store, &a.prefix, &keyring)?;
        let fetchers = match a.local_store {
            Some(_) => 4,
            None => a.s3.concurrency.clamp(1, 16),
        };
        let view = Arc::new(BundleView::new(bundle, fetchers));
        let name = PathBuf::from(format!("the volume in bundle {}", a.prefix));
        let disk = DiskFile::from_device(name, Box::new(ViewDevice(view.clone())), view.size());
        Ok(Self { view, disk })
    }

    fn volume(&self) -> Result<NtfsVolume<'_>, Error> {
        NtfsVolume::open(&self.disk, 0, self.disk.size())
            .map_err(Error::ntfs_at(0))
            .map_err(|e| self.explain(e))
    }

    /// The error a read of the bundle met (integrity, store), rather than what the NTFS layer
    /// made of it.
    fn explain(&self, e: Error) -> Error {
        self.view.take_failure().unwrap_or(e)
    }

    fn fetched(&self) -> serde_json::Value {
        serde_json::to_value(self.view.stats()).unwrap_or_default()
    }

    fn log_fetched(&self, started: std::time::Instant) {
        let s = self.view.stats();
        tracing::info!(
            "fetched {} bytes ({} frames, {} requests, {} cache hits) of the bundle's {} bytes in {:.2} s",
            s.fetched_bytes,
            s.frames,
            s.requests,
            s.cache_hits,
            s.stream_bytes,
            started.elapsed().as_secs_f64()
        );
    }

    /// The path left out when the bundle was made that covers `path`, if any.
    fn excluded(&self, path: &str) -> Option<String> {
        let p = path.to_lowercase();
        self.view
            .bundle()
            .manifest
            .excluded_files
            .iter()
            .filter(|x| x.found)
            .map(|x| x.path.to_lowercase())
            .find(|x| p == *x || p.starts_with(&format!("{x}\\")) || x == "\\")
    }
}

/// Looks `path` up: its normalised form and its facts.
fn resolve(vol: &NtfsVolume<'_>, path: &str) -> Result<(String, FileInfo), Error> {
    let norm = normalise(path);
    let found = vol
        .lookup(&norm)
        .map_err(Error::ntfs_at(0))?
        .ok_or_else(|| Error::NotInBundle { path: norm.clone() })?;
    let info = vol.stat(found.record).map_err(Error::ntfs_at(0))?;
    Ok((norm, info))
}

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('\\') {
        format!("{dir}{name}")
    } else {
        format!("{dir}\\{name}")
    }
}

fn unix_time(ft: u64) -> Option<SystemTime> {
    let (secs, nanos) = filetime_to_unix(ft);
    let d = Duration::new(secs.unsigned_abs(), nanos);
    if secs >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(d)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(d)
    }
}

fn entry_json(path: &str, name: &str, i: &FileInfo, excluded: bool) -> serde_json::Value {
    let attrs: Vec<&str> = ATTRIBUTE_NAMES
        .iter()
        .filter(|(bit, _, _)| i.attributes & bit != 0)
        .map(|(_, _, n)| *n)
        .collect();
    json!({
        "Path": path,
        "Name": name,
        "Type": links::entry_type(i),
        "Reparse": links::reparse_json(i),
        "Size": i.size,
        "Attributes": attrs,
        "Created": filetime_rfc3339(i.created),
        "Modified": filetime_rfc3339(i.modified),
        "Accessed": filetime_rfc3339(i.accessed),
        "Changed": filetime_rfc3339(i.changed),
        "Record": i.record,
        "Links": i.links,
        "Streams": i.streams,
        "Excluded": excluded,
    })
}

fn long_line(name: &str, i: &FileInfo) -> String {
    let (secs, _) = filetime_to_unix(i.modified);
    let when = chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "????-??-?? ??:??:??".into());
    let size = if i.is_dir {
        "<DIR>".to_string()
    } else {
        i.size.to_string()
    };
    let mut line = format!("{} {when} {size:>14} {name}", attribute_letters(i.attributes));
    if i.is_dir && i.reparse.as_ref().and_then(Reparse::entry_type).is_none() {
        line.push('\\');
    }
    line.push_str(&escape(&links::long_suffix(i)));
    for s in &i.streams {
        line.push_str(&format!(
            "\n{:10} {:19} {:>14} {name}:{}",
            "",
            "",
            s.size,
            escape(&s.name)
        ));
    }
    line
}

pub fn ls(a: LsArgs, cancel: &Arc<AtomicBool>) -> Result<i32, Error> {
    let output = super::output::Output::new(&a.out)?;
    let started = std::time::Instant::now();
    let b = Browse::open(&a.store, &a.identity, cancel)?;
    let vol = b.volume()?;
    let mut entries = Vec::new();
    let mut not_read: Vec<(String, String)> = Vec::new();
    let mut run = || -> Result<(), Error> {
        let (path, info) = resolve(&vol, &a.path)?;
        if !info.is_dir {
            let name = path.rsplit('\\').next().unwrap_or("").to_string();
            entries.push((path, name, info));
            return Ok(());
        }
        // Depth first, each entry followed by what is under it (the walk extract uses too).
        let walk = Walk {
            b: &b,
            vol: &vol,
            system: a.system,
            recursive: a.recursive,
            cancel,
        };
        walk.run(path, info, &mut |ev| {
            match ev {
                Event::Entry { path, name, info } => entries.push((path.to_string(), name.to_string(), info.clone())),
                Event::Skip { path, reason, .. } => not_read.push((path, reason)),
                Event::Dir { .. } | Event::Done { .. } => {}
            }
            Ok(true)
        })
    };
    run().map_err(|e| b.explain(e))?;
    b.log_fetched(started);
    for (p, r) in &not_read {
        eprintln!("winbundle: not read: {}: {}", escape(p), escape(r));
    }
    let code = if not_read.is_empty() { 0 } else { NOT_READ_EXIT };
    if a.json {
        let list: Vec<_> = entries
            .iter()
            .map(|(p, n, i)| entry_json(p, n, i, b.excluded(p).is_some()))
            .collect();
        let v = json!({
            "BundleId": b.view.bundle().manifest.bundle_id,
            "Path": normalise(&a.path),
            "Entries": list,
            "NotRead": not_read.iter().map(|(p, r)| json!({"Path": p, "Reason": r})).collect::<Vec<_>>(),
            "Fetched": b.fetched(),
        });
        output.emit(&super::output::json_doc(&v))?;
        return Ok(code);
    }
    let mut doc = String::new();
    for (p, n, i) in &entries {
        let shown = escape(if a.recursive { p.as_str() } else { n.as_str() });
        let line = if a.long {
            long_line(&shown, i)
        } else if i.is_dir {
            format!("{shown}\\")
        } else {
            shown.to_string()
        };
        doc.push_str(&line);
        doc.push('\n');
    }
    output.emit(&doc)?; // a closed pipe (`| head`) is not an error
    if !not_read.is_empty() {
        eprintln!(
            "winbundle: {} entries could not be read (listed above, damaged); everything else is listed",
            not_read.len()
        );
    }
    Ok(code)
}

/// The exit status when a walk skipped damaged entries (3: the volume is damaged there) ...
const NOT_READ_EXIT: i32 = 3;
/// ... and when only entries this system cannot hold were left out (1).
const NOT_EXTRACTED_EXIT: i32 = 1;

/// The root folder's MFT record (its index has an entry "." for itself).
const ROOT_RECORD: u64 = 5;

/// What a walk meets, in order.
enum Event<'e> {
    /// A folder about to be listed; return false to leave it unlisted.
    Dir { path: &'e str },
    /// An entry of a listed folder (folders too, before their own `Dir`).
    Entry {
        path: &'e str,
        name: &'e str,
        info: &'e FileInfo,
    },
    /// A folder whose entries have all been met.
    Done { path: &'e str, info: &'e FileInfo },
    /// An entry or folder that could not be read: damaged (a record, an index, a cycle), or a
    /// panic in the NTFS layer.
    Skip { path: String, reason: String },
}

/// The one walk of a folder tree, shared by `ls -R` and `extract`: each folder's MFT record is
/// listed at most once (a folder met again elsewhere is skipped as damage: NTFS has no folder
/// hard links), a folder that contains one of its own ancestors is a cycle, named and not
/// entered, and a folder or entry that cannot be read (damage, or a panic below) is skipped
/// with the reason while the rest goes on. Errors of the bundle itself (integrity, store) and
/// cancellation end the walk.
struct Walk<'a, 'v> {
    b: &'a Browse,
    vol: &'a NtfsVolume<'v>,
    system: bool,
    recursive: bool,
    cancel: &'a AtomicBool,
}

impl Walk<'_, '_> {
    fn run(
        &self,
        path: String,
        info: FileInfo,
        f: &mut dyn FnMut(Event<'_>) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        struct Frame {
            path: String,
            info: FileInfo,
            entries: std::vec::IntoIter<Listed>,
        }
        let mut first_seen: std::collections::HashMap<u64, String> = std::collections::HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        first_seen.insert(info.record, path.clone());
        if f(Event::Dir { path: &path })? {
            match self.list(&path, info.record)? {
                Ok(list) => stack.push(Frame {
                    path,
                    info,
                    entries: list.into_iter(),
                }),
                Err(reason) => {
                    f(Event::Skip { path, reason })?;
                }
            }
        }
        while let Some(top) = stack.last_mut() {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let Some(next) = top.entries.next() else {
                if let Some(done) = stack.pop() {
                    f(Event::Done {
                        path: &done.path,
                        info: &done.info,
                    })?;
                }
                continue;
            };
            let (name, info) = match next {
                Ok(e) => e,
                Err((path, reason)) => {
                    f(Event::Skip { path, reason })?;
                    continue;
                }
            };
            let p = join(&top.path, &name);
            if info.is_dir {
                if let Some(anc) = stack.iter().find(|fr| fr.info.record == info.record) {
                    let reason = format!(
                        "directory cycle: this folder is {} again (MFT record {}), which contains it; not entered (run `chkdsk /f` on the volume)",
                        anc.path, info.record
                    );
                    f(Event::Skip { path: p, reason })?;
                    continue;
                }
                if let Some(first) = first_seen.get(&info.record) {
                    let reason = format!(
                        "the same folder (MFT record {}) as {first}, already read: a damaged index points to it twice",
                        info.record
                    );
                    f(Event::Skip { path: p, reason })?;
                    continue;
                }
            }
            f(Event::Entry {
                path: &p,
                name: &name,
                info: &info,
            })?;
            if !(info.is_dir && self.recursive) {
                continue;
            }
            first_seen.insert(info.record, p.clone());
            if !f(Event::Dir { path: &p })? {
                continue;
            }
            match self.list(&p, info.record)? {
                Ok(list) => stack.push(Frame {
                    path: p,
                    info,
                    entries: list.into_iter(),
                }),
                Err(reason) => {
                    f(Event::Skip { path: p, reason })?;
                }
            }
        }
        Ok(())
    }

    /// The entries of folder `record` with their facts: Err(reason) when the folder cannot be
    /// read; an entry whose record cannot be read is an entry (path, reason) of its own, so
    /// the walk reports it and goes on. Errors of the bundle itself are the outer Err.
    fn list(&self, path: &str, record: u64) -> Result<Result<Vec<Listed>, String>, Error> {
        let listed = match guarded(|| self.vol.list_dir(record)) {
            Ok(l) => l,
            Err(reason) => return self.bundle_error().map_or(Ok(Err(reason)), Err),
        };
        let mut out = Vec::new();
        for (name, r, _) in listed {
            if (r < FIRST_USER_RECORD && !self.system) || (r == record && r == ROOT_RECORD) {
                continue; // metadata files; the root's entry "." for itself (elsewhere: a cycle)
            }
            match guarded(|| self.vol.stat(r)) {
                Ok(info) => out.push(Ok((name, info))),
                Err(reason) => {
                    if let Some(e) = self.bundle_error() {
                        return Err(e);
                    }
                    out.push(Err((join(path, &name), reason)));
                }
            }
        }
        Ok(Ok(out))
    }

    /// The failure of a read of the bundle (integrity, store), if one happened.
    fn bundle_error(&self) -> Option<Error> {
        self.b.view.take_failure()
    }
}

/// An entry of a listed folder: its name and facts, or (its path, why its record is unreadable).
type Listed = Result<(String, FileInfo), (String, String)>;

/// Runs one read of the NTFS layer for one path: its error, or a panic that escapes it (the
/// `ntfs` crate on a damaged structure), becomes the reason the path is skipped, and the panic
/// is not printed (no backtrace reaches the user).
fn guarded<T>(read: impl FnOnce() -> Result<T, winbundle::ntfs::NtfsError>) -> Result<T, String> {
    match winbundle::panics::catch(read) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{e} (the volume is damaged there: run `chkdsk /f` on it)")),
        Err(why) => Err(format!(
            "the NTFS reader stopped on a damaged structure ({why}); the volume is damaged there: run `chkdsk /f` on it"
        )),
    }
}

/// One read of `path` for `cat`, guarded as `ls` and `extract` guard theirs: an error of the NTFS
/// layer, or a panic that escapes it, names the path (a damaged volume, exit 3); the panic is not
/// printed.
fn of_path<T>(path: &str, read: impl FnOnce() -> Result<T, winbundle::ntfs::NtfsError>) -> Result<T, Error> {
    use winbundle::ntfs::NtfsError;
    let named = |problem: String| NtfsError::Path {
        path: path.to_string(),
        problem,
    };
    let e = match winbundle::panics::catch(read) {
        Ok(Ok(v)) => return Ok(v),
        Ok(Err(e @ (NtfsError::Path { .. } | NtfsError::Source(_)))) => e,
        Ok(Err(e)) => named(e.to_string()),
        Err(why) => named(format!("the NTFS reader stopped on a damaged structure ({why})")),
    };
    Err(Error::ntfs_at(0)(e))
}

/// `text` with every non-printable character escaped as `ls -b` does (`\n`, `\t`, `\033`,
/// `\u{202e}`), so that a name cannot move the cursor, set the window title or fake a line.
/// JSON output keeps names exact; this is for text and messages.
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
    };
    if !text.chars().any(bad) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if bad(c) && (c as u32) < 0x80 => out.push_str(&format!("\\{:03o}", c as u32)),
            c if bad(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A name as a file name here: refused when it could step out of the target folder or is not
/// a valid name on this system.
fn local_name(name: &str) -> Result<&str, String> {
    let bad_here: &[char] = if cfg!(windows) {
        &['/', '\\', ':', '*', '?', '"', '<', '>', '|', '\0']
    } else {
        &['/', '\0']
    };
    if name.is_empty() || name == "." || name == ".." || name.contains(bad_here) {
        return Err(format!("its name {name:?} is not a valid file name here"));
    }
    Ok(name)
}

#[derive(Default)]
struct Extracted {
    files: u64,
    folders: u64,
    /// Symbolic links made (for links and junctions, `--links link`).
    links: u64,
    bytes: u64,
    /// Left out when the bundle was made: (path, why).
    skipped: Vec<(String, String)>,
    /// Could not be extracted here (a name or path this system cannot hold, a write that
    /// failed, an encrypted file): (path, why).
    failed: Vec<(String, String)>,
    /// Could not be read: the volume is damaged there (a record, an index, a cycle): (path, why).
    damaged: Vec<(String, String)>,
    /// Extracted, but its security descriptor (`--acls`) could not be applied: (path, why).
    unsecured: Vec<(String, String)>,
}

struct Extractor<'a, 'v> {
    b: &'a Browse,
    vol: &'a NtfsVolume<'v>,
    args: &'a ExtractArgs,
    cancel: &'a AtomicBool,
    done: Extracted,
    buf: Vec<u8>,
    /// With `--acls`: what gives each file its descriptor.
    acls: Option<super::acls::AclWriter>,
}

impl Extractor<'_, '_> {
    /// One PATH of the command line: a folder through the shared walk, else a file.
    fn top(&mut self, path: &str, info: &FileInfo, dest: &Path) -> Result<(), Error> {
        if !(info.is_dir && self.args.stream.is_none()) || self.b.excluded(path).is_some() {
            return self.entry(path, info, dest);
        }
        let mut dests: std::collections::HashMap<String, Option<PathBuf>> = std::collections::HashMap::new();
        dests.insert(path.to_string(), Some(dest.to_path_buf()));
        let (b, vol, cancel) = (self.b, self.vol, self.cancel);
        let walk = Walk {
            b,
            vol,
            system: false,
            recursive: true,
            cancel,
        };
        walk.run(path.to_string(), info.clone(), &mut |ev| match ev {
            Event::Dir { path, .. } => {
                let Some(Some(dest)) = dests.get(path) else {
                    return Ok(false);
                };
                match std::fs::create_dir_all(dest) {
                    Ok(()) => Ok(true),
                    Err(e) => {
                        self.done.failed.push((
                            path.to_string(),
                            format!("cannot make the folder {}: {e}", dest.display()),
                        ));
                        dests.insert(path.to_string(), None);
                        Ok(false)
                    }
                }
            }
            Event::Entry { path, name, info } => {
                let parent = &path[..path.len() - name.len()];
                let parent = if parent.len() > 1 {
                    parent.trim_end_matches('\\')
                } else {
                    parent
                };
                let Some(Some(dir)) = dests.get(parent).cloned() else {
                    return Ok(false);
                };
                // A link or junction to a folder is not entered: it is an entry of its own.
                let plain_dir = info.reparse.as_ref().and_then(Reparse::entry_type).is_none();
                match local_name(name) {
                    Ok(n) if info.is_dir && plain_dir && self.b.excluded(path).is_none() => {
                        dests.insert(path.to_string(), Some(dir.join(n)));
                    }
                    Ok(n) => self.entry(path, info, &dir.join(n))?,
                    Err(why) => {
                        self.done.failed.push((path.to_string(), why));
                        dests.insert(path.to_string(), None);
                    }
                }
                Ok(true)
            }
            Event::Done { path, info } => {
                if let Some(Some(dest)) = dests.remove(path) {
                    self.done.folders += 1;
                    set_times(&dest, info, true);
                    // OUTPUT itself (for `\`) is the user's folder: it keeps its own descriptor.
                    if dest != self.args.output {
                        self.secure(path, info, &dest);
                    }
                }
                Ok(true)
            }
            Event::Skip { path, reason } => {
                self.done.damaged.push((path, reason));
                Ok(true)
            }
        })
    }

    /// A file (or the stream `--stream` names of a file or folder), or a left-out folder.
    fn entry(&mut self, path: &str, info: &FileInfo, dest: &Path) -> Result<(), Error> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        if let Some(x) = self.b.excluded(path) {
            self.done.skipped.push((
                path.to_string(),
                format!("left out when the bundle was made (excluded: {x}): its contents were not kept"),
            ));
            return Ok(());
        }
        if let Some(r) = info.reparse.as_ref().filter(|_| self.args.stream.is_none()) {
            if let Some(why) = links::why_no_contents(r) {
                self.done.failed.push((path.to_string(), why));
                return Ok(());
            }
            if r.entry_type().is_some() {
                return self.link(path, info, r, dest);
            }
        }
        if info.attributes & ENCRYPTED != 0 {
            self.done.failed.push((
                path.to_string(),
                "encrypted with EFS: the bundle holds only ciphertext, which needs the user's key".into(),
            ));
            return Ok(());
        }
        let dest = match &self.args.stream {
            Some(s) => {
                let name = dest
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                // The stream's name becomes part of a local name: the same rules apply to it (on
                // Windows `FILE:NAME` is that file's stream again, so the `:` is checked apart).
                match local_name(s) {
                    Ok(s) => dest.with_file_name(format!("{name}:{s}")),
                    Err(_) => {
                        self.done.failed.push((
                            path.to_string(),
                            format!("the stream name {s:?} is not a valid part of a file name here"),
                        ));
                        return Ok(());
                    }
                }
            }
            None => dest.to_path_buf(),
        };
        self.make_room(&dest)?;
        let e = match winbundle::panics::catch(|| self.file(path, info, &dest)) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(why) => {
                let _ = std::fs::remove_file(&dest);
                self.done.damaged.push((
                    path.to_string(),
                    format!("the NTFS reader stopped on a damaged structure ({why}); run `chkdsk /f` on the volume"),
                ));
                return Ok(());
            }
        };
        // What was written of it is not the file: removed.
        let _ = std::fs::remove_file(&dest);
        if let Some(bundle) = self.b.view.take_failure() {
            return Err(bundle); // the bundle itself (integrity, store): nothing more can be read
        }
        match e {
            Error::Ntfs { .. } | Error::Source(_) => self.done.damaged.push((path.to_string(), e.to_string())),
            Error::Io { .. } => self.done.failed.push((path.to_string(), e.to_string())),
            e => return Err(e),
        }
        Ok(())
    }

    /// Refuses to replace what is at `dest` without --force; with it, removes a link there, so
    /// that nothing is ever written through one (a link made earlier, or left by someone).
    fn make_room(&self, dest: &Path) -> Result<(), Error> {
        let Ok(meta) = std::fs::symlink_metadata(dest) else {
            return Ok(());
        };
        if !self.args.force {
            return Err(Error::InvalidParameter {
                parameter: "--output",
                message: format!(
                    "{} already exists: pass --force to replace it, or extract into another folder",
                    dest.display()
                ),
            });
        }
        // A link is removed, never written through; a read-only file (as an earlier extract
        // left it) too, so that it can be written again.
        if meta.file_type().is_symlink() || (meta.is_file() && meta.permissions().readonly()) {
            let _ = std::fs::remove_file(dest).or_else(|_| std::fs::remove_dir(dest));
        }
        Ok(())
    }

    /// A symbolic link, junction or mount point, as `--links` says.
    fn link(&mut self, path: &str, info: &FileInfo, r: &Reparse, dest: &Path) -> Result<(), Error> {
        let kind = links::entry_type(info);
        match self.args.links {
            LinksArg::Skip => {
                self.done
                    .skipped
                    .push((path.to_string(), format!("a {kind} (--links skip)")));
                Ok(())
            }
            LinksArg::Link => {
                // Targets on this volume point under OUTPUT, by an absolute path: a link is
                // read from its own folder.
                let output = std::path::absolute(&self.args.output).unwrap_or_else(|_| self.args.output.clone());
                let Some(target) = links::local_target(r, &output) else {
                    return Ok(());
                };
                self.make_room(dest)?;
                match links::make_link(&target, dest, info.is_dir) {
                    Ok(()) => {
                        self.done.links += 1;
                        Ok(())
                    }
                    Err(e) => {
                        self.done.failed.push((
                            path.to_string(),
                            format!(
                                "a {kind} to {}: the symbolic link could not be made ({e}){}",
                                target.display(),
                                if cfg!(windows) {
                                    "; on Windows that takes Developer Mode or an elevated prompt, or pass --links skip or copy"
                                } else {
                                    ""
                                }
                            ),
                        ));
                        Ok(())
                    }
                }
            }
            LinksArg::Copy => {
                let found = links::volume_target(r, path).and_then(|t| {
                    let (t, ti) = resolve(self.vol, &t).ok()?;
                    (!ti.is_dir && ti.reparse.is_none()).then_some((t, ti))
                });
                match found {
                    Some((t, ti)) => self.entry(&t, &ti, dest),
                    None => {
                        self.done.failed.push((
                            path.to_string(),
                            format!("a {kind}: --links copy copies only a link to a plain file on this volume (a folder's link could lead back into itself); pass --links link"),
                        ));
                        Ok(())
                    }
                }
            }
        }
    }

    fn file(&mut self, path: &str, info: &FileInfo, dest: &Path) -> Result<(), Error> {
        let size = self.copy_stream(path, info, self.args.stream.as_deref(), dest)?;
        if self.args.stream.is_none() {
            // On Windows the alternate data streams come along, as streams of the file (a WOF
            // file's compressed data is its contents, not a stream to keep).
            #[cfg(windows)]
            for s in &info.streams {
                let wof =
                    matches!(info.reparse, Some(Reparse::Wof { .. })) && s.name == winbundle::ntfs::wof::WOF_STREAM;
                if wof {
                    continue;
                }
                let Ok(name) = local_name(&s.name) else {
                    self.done.failed.push((
                        format!("{path}:{}", s.name),
                        "the stream's name is not a valid part of a file name here".into(),
                    ));
                    continue;
                };
                let mut with = dest.as_os_str().to_owned();
                with.push(format!(":{name}"));
                self.copy_stream(path, info, Some(&s.name), Path::new(&with))?;
            }
        }
        set_times(dest, info, false);
        if self.args.stream.is_none() {
            set_attributes(dest, info.attributes);
            self.secure(path, info, dest);
        }
        self.done.files += 1;
        self.done.bytes += size;
        Ok(())
    }

    /// With `--acls`, gives `dest` the descriptor of `info`'s file: last, after its contents,
    /// times and attributes (the descriptor may deny this process the right to write them).
    fn secure(&mut self, path: &str, info: &FileInfo, dest: &Path) {
        if let Some(acls) = self.acls.as_mut()
            && let Err(why) = acls.apply(self.vol, info, dest)
        {
            self.done.unsecured.push((path.to_string(), why));
        }
    }

    /// Writes the stream `stream` of `info`'s file (its contents without one) to `dest`;
    /// returns its size.
    fn copy_stream(&mut self, path: &str, info: &FileInfo, stream: Option<&str>, dest: &Path) -> Result<u64, Error> {
        let mut contents = Contents::open(self.vol, info, stream, path).map_err(Error::ntfs_at(0))?;
        let f = File::create(dest).map_err(|e| io_err(dest, "create", e))?;
        let size = contents.size();
        let piece = self.b.view.read_ahead().clamp(1 << 20, 64 << 20);
        let mut at = 0u64;
        while at < size {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let n = (size - at).min(piece) as usize;
            self.buf.resize(n, 0);
            contents.read_at(at, &mut self.buf[..n]).map_err(Error::ntfs_at(0))?;
            write_sparse(&f, &self.buf[..n], at).map_err(|e| io_err(dest, "write", e))?;
            at += n as u64;
        }
        f.set_len(size).map_err(|e| io_err(dest, "write", e))?;
        Ok(size)
    }
}

fn io_err(path: &Path, what: &str, source: std::io::Error) -> Error {
    Error::Io {
        context: format!("cannot {what} {}", path.display()),
        source,
    }
}

/// Gives an extracted file the entry's read-only flag (on Windows also hidden, system and
/// archive). Best effort, after its times (a read-only file cannot be opened to set them).
fn set_attributes(path: &Path, attributes: u32) {
    const READONLY: u32 = 0x1;
    #[cfg(windows)]
    {
        use std::os::windows::ffi::OsStrExt;
        // FILE_ATTRIBUTE_READONLY, HIDDEN, SYSTEM, ARCHIVE; NORMAL when none is set.
        let kept = match attributes & 0x27 {
            0 => 0x80,
            a => a,
        };
        let wide: Vec<u16> = path.as_os_str().encode_wide().chain([0]).collect();
        // SAFETY: a NUL-terminated UTF-16 path that lives across the call.
        if unsafe { windows_sys::Win32::Storage::FileSystem::SetFileAttributesW(wide.as_ptr(), kept) } == 0 {
            tracing::debug!(
                "{}: attributes not set: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
    }
    #[cfg(not(windows))]
    if attributes & READONLY != 0
        && let Ok(m) = std::fs::metadata(path)
    {
        let mut p = m.permissions();
        p.set_readonly(true);
        if let Err(e) = std::fs::set_permissions(path, p) {
            tracing::debug!("{}: read-only not set: {e}", path.display());
        }
    }
    #[cfg(windows)]
    let _ = READONLY;
}

/// Gives `path` the entry's modification and access times (and on Windows its creation time).
/// Best effort: a file system that cannot hold them keeps its own.
fn set_times(path: &Path, info: &FileInfo, is_dir: bool) {
    let mut times = std::fs::FileTimes::new();
    if let Some(t) = unix_time(info.modified) {
        times = times.set_modified(t);
    }
    if let Some(t) = unix_time(info.accessed) {
        times = times.set_accessed(t);
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::{FileTimesExt, OpenOptionsExt};
        if let Some(t) = unix_time(info.created) {
            times = times.set_created(t);
        }
        // FILE_FLAG_BACKUP_SEMANTICS: what opens a folder as a handle.
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(if is_dir { 0x0200_0000 } else { 0 })
            .open(path);
        if let Err(e) = opened.and_then(|f| f.set_times(times)) {
            tracing::debug!("{}: times not set: {e}", path.display());
        }
    }
    #[cfg(not(windows))]
    {
        let _ = is_dir;
        let opened = if is_dir {
            File::open(path)
        } else {
            std::fs::OpenOptions::new().write(true).open(path)
        };
        if let Err(e) = opened.and_then(|f| f.set_times(times)) {
            tracing::debug!("{}: times not set: {e}", path.display());
        }
    }
}

pub fn extract(a: ExtractArgs, cancel: &Arc<AtomicBool>) -> Result<i32, Error> {
    let output = super::output::Output::new(&a.out)?;
    let started = std::time::Instant::now();
    let b = Browse::open(&a.store, &a.identity, cancel)?;
    let vol = b.volume()?;
    let mut x = Extractor {
        b: &b,
        vol: &vol,
        args: &a,
        cancel,
        done: Extracted::default(),
        buf: Vec::new(),
        acls: None,
    };
    let run = |x: &mut Extractor<'_, '_>| -> Result<(), Error> {
        std::fs::create_dir_all(&a.output).map_err(|e| io_err(&a.output, "make the folder", e))?;
        if a.acls {
            x.acls = Some(super::acls::AclWriter::open(&vol, &a.output)?);
        }
        for p in &a.paths {
            let (path, info) = resolve(&vol, p)?;
            let dest = match path.rsplit('\\').next() {
                Some("") | None => a.output.clone(),
                Some(name) => match local_name(name) {
                    Ok(n) => a.output.join(n),
                    Err(why) => {
                        x.done.failed.push((path.clone(), why));
                        continue;
                    }
                },
            };
            // A folder's tree (`\\`: into OUTPUT itself), or a file.
            x.top(&path, &info, &dest)?;
        }
        Ok(())
    };
    run(&mut x).map_err(|e| b.explain(e))?;
    let acl_notes = x.acls.as_ref().map(|w| w.notes()).unwrap_or_default();
    let done = x.done;
    b.log_fetched(started);
    let s = b.view.stats();
    let pairs = |v: &[(String, String)]| -> Vec<serde_json::Value> {
        v.iter().map(|(p, r)| json!({"Path": p, "Reason": r})).collect()
    };
    if a.json || output.to_file() {
        let v = json!({
            "BundleId": b.view.bundle().manifest.bundle_id,
            "Output": a.output,
            "Files": done.files,
            "Folders": done.folders,
            "Links": done.links,
            "Bytes": done.bytes,
            "Skipped": pairs(&done.skipped),
            "Failed": pairs(&done.failed),
            "Damaged": pairs(&done.damaged),
            "AclsNotApplied": pairs(&done.unsecured),
            "AclNotes": acl_notes,
            "Fetched": b.fetched(),
            "Seconds": started.elapsed().as_secs_f64(),
        });
        output.emit(&super::output::json_doc(&v))?;
    }
    if !a.quiet && !a.json {
        for (p, r) in &done.skipped {
            eprintln!("skipped {}: {}", escape(p), escape(r));
        }
    }
    for (p, r) in done.failed.iter().chain(&done.damaged) {
        eprintln!("winbundle: not extracted: {}: {}", escape(p), escape(r));
    }
    if !a.quiet && !a.json {
        eprintln!(
            "extracted {} files ({}), {} folders and {} links to {}; fetched {} of the bundle's {} ({} frames, {} requests)",
            done.files,
            human(done.bytes),
            done.folders,
            done.links,
            escape(&a.output.display().to_string()),
            human(s.fetched_bytes),
            human(s.stream_bytes),
            s.frames,
            s.requests
        );
    }
    for (p, r) in &done.unsecured {
        eprintln!(
            "winbundle: security descriptor not applied: {}: {}",
            escape(p),
            escape(r)
        );
    }
    for n in &acl_notes {
        eprintln!("winbundle: {n}");
    }
    let not_done = done.failed.len() + done.damaged.len();
    if not_done > 0 {
        eprintln!("winbundle: {not_done} entries could not be extracted (listed above); everything else was");
    }
    Ok(if !done.damaged.is_empty() {
        NOT_READ_EXIT
    } else if !done.failed.is_empty() || !done.unsecured.is_empty() || !acl_notes.is_empty() {
        NOT_EXTRACTED_EXIT
    } else {
        0
    })
}

pub fn cat(a: CatArgs, cancel: &Arc<AtomicBool>) -> Result<i32, Error> {
    let started = std::time::Instant::now();
    let b = Browse::open(&a.store, &a.identity, cancel)?;
    let vol = b.volume()?;
    let run = || -> Result<(), Error> {
        let (path, info) = resolve(&vol, &a.path)?;
        if let Some(r) = info.reparse.as_ref().filter(|_| a.stream.is_none()) {
            let why = links::why_no_contents(r).or_else(|| {
                r.entry_type()
                    .map(|kind| format!("a {kind}{}: cat reads files; cat its target", links::long_suffix(&info)))
            });
            if let Some(problem) = why {
                return Err(Error::Unreadable { path, problem });
            }
        }
        if info.is_dir && a.stream.is_none() {
            return Err(Error::InvalidParameter {
                parameter: "PATH",
                message: format!(
                    "{path} is a folder: list it with `winbundle ls`, or copy it out with `winbundle extract`"
                ),
            });
        }
        if let Some(x) = b.excluded(&path) {
            return Err(Error::Unreadable {
                path,
                problem: format!("left out when the bundle was made (excluded: {x}): its contents were not kept"),
            });
        }
        if info.attributes & ENCRYPTED != 0 {
            return Err(Error::Unreadable {
                path,
                problem: "encrypted with EFS: the bundle holds only ciphertext, which needs the user's key (restore the volume and read the file in Windows as that user)".into(),
            });
        }
        let mut stream = of_path(&path, || Contents::open(&vol, &info, a.stream.as_deref(), &path))?;
        let mut out = raw_stdout()?;
        let size = stream.size();
        let piece = b.view.read_ahead().clamp(1 << 20, 64 << 20);
        let mut buf = Vec::new();
        let mut at = 0u64;
        while at < size {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let n = (size - at).min(piece) as usize;
            buf.resize(n, 0);
            of_path(&path, || stream.read_at(at, &mut buf))?;
            match out.write_all(&buf) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => {
                    return Err(Error::Io {
                        context: "cannot write to standard output".into(),
                        source: e,
                    });
                }
            }
            at += n as u64;
        }
        Ok(())
    };
    run().map_err(|e| b.explain(e))?;
    b.log_fetched(started);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::{escape, local_name};

    #[test]
    fn non_printable_characters_are_escaped_as_ls_b_does() {
        assert_eq!(escape("cmd.exe"), "cmd.exe");
        assert_eq!(escape("ファイル ☃.txt"), "ファイル ☃.txt");
        assert_eq!(escape("a\u{1b}]0;title\u{7}b"), "a\\033]0;title\\007b");
        assert_eq!(escape("fake\nentry\t\r"), "fake\\nentry\\t\\r");
        assert_eq!(escape("x\u{202e}gpj.exe\u{85}"), "x\\u{202e}gpj.exe\\u{85}");
        assert_eq!(escape("\\Windows\\System32"), "\\Windows\\System32");
    }

    #[test]
    fn names_that_would_leave_the_target_folder_are_refused() {
        for bad in ["", ".", "..", "a/b", "nul\0byte", "../x"] {
            assert!(local_name(bad).is_err(), "{bad:?}");
        }
        for good in ["cmd.exe", "ファイル ☃.txt", "...", "a b", "$RECYCLE.BIN"] {
            assert_eq!(local_name(good), Ok(good));
        }
        assert_eq!(local_name("a:b").is_err(), cfg!(windows));
        assert_eq!(local_name("a\\b").is_err(), cfg!(windows));
    }
}
