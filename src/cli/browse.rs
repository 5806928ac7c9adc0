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
use winbundle::bundle::output::write_sparse;
use winbundle::bundle::read::{OpenedBundle, raw_stdout};
use winbundle::bundle::view::{BundleView, ViewDevice};
use winbundle::ntfs::NtfsVolume;
use winbundle::ntfs::catalog::{ATTRIBUTE_NAMES, FileInfo, attribute_letters, filetime_rfc3339, filetime_to_unix};
use winbundle::ntfs::content::FileStream;
use winbundle::ntfs::exclude::normalise;
use winbundle::source::DiskFile;
use winbundle::store::ObjectStore;
use winbundle::units::human;

use super::args::{CatArgs, ExtractArgs, LsArgs, StoreArgs};

const ENCRYPTED: u32 = 0x4000;

/// A bundle's volume, opened for reading.
struct Browse {
    view: Arc<BundleView>,
    disk: DiskFile,
}

impl Browse {
    fn open(a: &StoreArgs, cancel: &Arc<AtomicBool>) -> Result<Self, Error> {
        let store = super::open_store(a, false, false, cancel)?;
        // The view is a device of a DiskFile, which lives as long as the process: so does the
        // store it reads from.
        let store: &'static dyn ObjectStore = Box::leak(store);
        let bundle = OpenedBundle::open(store, &a.prefix)?;
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
        "Type": if i.is_dir { "directory" } else { "file" },
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
    if i.is_dir {
        line.push('\\');
    }
    for s in &i.streams {
        line.push_str(&format!("\n{:10} {:19} {:>14} {name}:{}", "", "", s.size, s.name));
    }
    line
}

pub fn ls(a: LsArgs, cancel: &Arc<AtomicBool>) -> Result<i32, Error> {
    let started = std::time::Instant::now();
    let b = Browse::open(&a.store, cancel)?;
    let vol = b.volume()?;
    let mut entries = Vec::new();
    let mut out = std::io::stdout().lock();
    let mut run = || -> Result<(), Error> {
        let (path, info) = resolve(&vol, &a.path)?;
        if !info.is_dir {
            let name = path.rsplit('\\').next().unwrap_or("").to_string();
            entries.push((path, name, info));
            return Ok(());
        }
        // Depth first, each entry followed by what is under it; a folder met twice (a
        // damaged index pointing back up) is not entered again.
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![(path, info.record)];
        seen.insert(info.record);
        while let Some((dir, record)) = stack.pop() {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let list = vol.entries(record, a.system).map_err(|e| match e {
                winbundle::ntfs::NtfsError::Path { path, problem } => Error::Ntfs {
                    offset: 0,
                    source: winbundle::ntfs::NtfsError::Path {
                        path: join(&dir, &path),
                        problem,
                    },
                },
                e => Error::ntfs_at(0)(e),
            })?;
            let mut subdirs = Vec::new();
            for e in list {
                let p = join(&dir, &e.name);
                if a.recursive && e.info.is_dir && seen.insert(e.info.record) {
                    subdirs.push((p.clone(), e.info.record));
                }
                entries.push((p, e.name, e.info));
            }
            if !a.recursive {
                break;
            }
            // Pre-order: the first subfolder's tree comes next.
            stack.extend(subdirs.into_iter().rev());
        }
        Ok(())
    };
    run().map_err(|e| b.explain(e))?;
    b.log_fetched(started);
    if a.json {
        let list: Vec<_> = entries
            .iter()
            .map(|(p, n, i)| entry_json(p, n, i, b.excluded(p).is_some()))
            .collect();
        let v = json!({
            "BundleId": b.view.bundle().manifest.bundle_id,
            "Path": normalise(&a.path),
            "Entries": list,
            "Fetched": b.fetched(),
        });
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(0);
    }
    for (p, n, i) in &entries {
        let shown = if a.recursive { p.as_str() } else { n.as_str() };
        let line = if a.long {
            long_line(shown, i)
        } else if i.is_dir {
            format!("{shown}\\")
        } else {
            shown.to_string()
        };
        if writeln!(out, "{line}").is_err() {
            break; // a closed pipe (`| head`)
        }
    }
    Ok(0)
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
    bytes: u64,
    /// Left out when the bundle was made: (path, why).
    skipped: Vec<(String, String)>,
    /// Could not be extracted: (path, why).
    failed: Vec<(String, String)>,
}

struct Extractor<'a, 'v> {
    b: &'a Browse,
    vol: &'a NtfsVolume<'v>,
    args: &'a ExtractArgs,
    cancel: &'a AtomicBool,
    done: Extracted,
    buf: Vec<u8>,
}

impl Extractor<'_, '_> {
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
        if info.is_dir && self.args.stream.is_none() {
            return self.folder(path, info, dest);
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
                dest.with_file_name(format!("{name}:{s}"))
            }
            None => dest.to_path_buf(),
        };
        self.file(path, info, &dest)
    }

    fn folder(&mut self, path: &str, info: &FileInfo, dest: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(dest).map_err(|e| io_err(dest, "make the folder", e))?;
        let list = self.vol.entries(info.record, false).map_err(Error::ntfs_at(0))?;
        for e in list {
            let p = join(path, &e.name);
            match local_name(&e.name) {
                Ok(n) => self.entry(&p, &e.info, &dest.join(n))?,
                Err(why) => self.done.failed.push((p, why)),
            }
        }
        self.done.folders += 1;
        set_times(dest, info, true);
        Ok(())
    }

    fn file(&mut self, path: &str, info: &FileInfo, dest: &Path) -> Result<(), Error> {
        let mut stream =
            FileStream::open(self.vol, info.record, self.args.stream.as_deref(), path).map_err(Error::ntfs_at(0))?;
        if dest.exists() && !self.args.force {
            return Err(Error::InvalidParameter {
                parameter: "--output",
                message: format!(
                    "{} already exists: pass --force to replace it, or extract into another folder",
                    dest.display()
                ),
            });
        }
        let f = File::create(dest).map_err(|e| io_err(dest, "create", e))?;
        let size = stream.size();
        let piece = self.b.view.read_ahead().clamp(1 << 20, 64 << 20);
        let mut at = 0u64;
        while at < size {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let n = (size - at).min(piece) as usize;
            self.buf.resize(n, 0);
            stream.read_at(at, &mut self.buf[..n]).map_err(Error::ntfs_at(0))?;
            write_sparse(&f, &self.buf[..n], at).map_err(|e| io_err(dest, "write", e))?;
            at += n as u64;
        }
        f.set_len(size).map_err(|e| io_err(dest, "write", e))?;
        drop(f);
        set_times(dest, info, false);
        self.done.files += 1;
        self.done.bytes += size;
        Ok(())
    }
}

fn io_err(path: &Path, what: &str, source: std::io::Error) -> Error {
    Error::Io {
        context: format!("cannot {what} {}", path.display()),
        source,
    }
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
    let started = std::time::Instant::now();
    let b = Browse::open(&a.store, cancel)?;
    let vol = b.volume()?;
    let mut x = Extractor {
        b: &b,
        vol: &vol,
        args: &a,
        cancel,
        done: Extracted::default(),
        buf: Vec::new(),
    };
    let run = |x: &mut Extractor<'_, '_>| -> Result<(), Error> {
        std::fs::create_dir_all(&a.output).map_err(|e| io_err(&a.output, "make the folder", e))?;
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
            if path == "\\" && a.stream.is_none() {
                // The whole tree, into OUTPUT itself.
                x.folder(&path, &info, &dest)?;
            } else {
                x.entry(&path, &info, &dest)?;
            }
        }
        Ok(())
    };
    run(&mut x).map_err(|e| b.explain(e))?;
    let done = x.done;
    b.log_fetched(started);
    let s = b.view.stats();
    let pairs = |v: &[(String, String)]| -> Vec<serde_json::Value> {
        v.iter().map(|(p, r)| json!({"Path": p, "Reason": r})).collect()
    };
    if a.json {
        let v = json!({
            "BundleId": b.view.bundle().manifest.bundle_id,
            "Output": a.output,
            "Files": done.files,
            "Folders": done.folders,
            "Bytes": done.bytes,
            "Skipped": pairs(&done.skipped),
            "Failed": pairs(&done.failed),
            "Fetched": b.fetched(),
            "Seconds": started.elapsed().as_secs_f64(),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    if !a.quiet && !a.json {
        for (p, r) in &done.skipped {
            eprintln!("skipped {p}: {r}");
        }
    }
    for (p, r) in &done.failed {
        eprintln!("winbundle: not extracted: {p}: {r}");
    }
    if !a.quiet && !a.json {
        eprintln!(
            "extracted {} files ({}) and {} folders to {}; fetched {} of the bundle's {} ({} frames, {} requests)",
            done.files,
            human(done.bytes),
            done.folders,
            a.output.display(),
            human(s.fetched_bytes),
            human(s.stream_bytes),
            s.frames,
            s.requests
        );
    }
    if !done.failed.is_empty() {
        eprintln!(
            "winbundle: {} entries could not be extracted (listed above); everything else was",
            done.failed.len()
        );
        return Ok(1);
    }
    Ok(0)
}

pub fn cat(a: CatArgs, cancel: &Arc<AtomicBool>) -> Result<i32, Error> {
    let started = std::time::Instant::now();
    let b = Browse::open(&a.store, cancel)?;
    let vol = b.volume()?;
    let run = || -> Result<(), Error> {
        let (path, info) = resolve(&vol, &a.path)?;
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
        let mut stream = FileStream::open(&vol, info.record, a.stream.as_deref(), &path).map_err(Error::ntfs_at(0))?;
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
            stream.read_at(at, &mut buf).map_err(Error::ntfs_at(0))?;
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
    use super::local_name;

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
