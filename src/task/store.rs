//! Bundle tasks kept in a state folder, one JSON file per task (written to a temporary name and
//! renamed, so a reader never sees half a file), shared by every process: a bundle updates its
//! task as it goes, `describe-bundle-tasks` reads them from another terminal, and
//! `cancel-bundle-task` leaves a cancel request that the bundling process picks up.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{BundleTask, State, TaskError};

/// A task as stored: the EC2 fields plus the process that runs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredTask {
    pub task: BundleTask,
    /// Process id of the bundling process while it runs.
    pub pid: u32,
    /// When that process started (clock ticks since boot), so a reused pid is not mistaken
    /// for it.
    #[serde(default)]
    pub pid_started: Option<u64>,
    /// What runs the task: `cli`, or `serve` for the API server.
    #[serde(default)]
    pub origin: Option<String>,
    /// For `serve`: the access key id of the caller that created the task (never a secret).
    /// Only that caller (and admin callers) see and cancel it. None for tasks of the CLI and
    /// of servers before owners were recorded: those only admin callers see.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl StoredTask {
    /// Whether the caller with access key id `caller` may see (and cancel) this task.
    pub fn visible_to(&self, caller: &str, admin: bool) -> bool {
        admin || self.owner.as_deref() == Some(caller)
    }
}

/// Errors of the task folder.
#[derive(Debug, thiserror::Error)]
pub enum TaskStoreError {
    #[error("task folder {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("The bundle task ID '{0}' does not exist")]
    NotFound(String),
    #[error(
        "Instance {instance} is already being bundled by {bundle}: wait for it, or cancel it with cancel-bundle-task"
    )]
    InProgress { instance: String, bundle: String },
}

impl TaskStoreError {
    /// The EC2 error code.
    pub fn code(&self) -> &'static str {
        match self {
            TaskStoreError::Io { .. } => "InternalError",
            TaskStoreError::NotFound(_) => "InvalidBundleID.NotFound",
            TaskStoreError::InProgress { .. } => "BundlingInProgress",
        }
    }
}

/// The state folder.
#[derive(Debug, Clone)]
pub struct TaskStore {
    dir: PathBuf,
    origin: &'static str,
}

/// `$XDG_STATE_HOME/winbundle/tasks`, or `~/.local/state/winbundle/tasks`; on Windows
/// `%LOCALAPPDATA%\winbundle\tasks`.
pub fn default_dir() -> PathBuf {
    #[cfg(windows)]
    if let Some(local) = std::env::var_os("LOCALAPPDATA") {
        return PathBuf::from(local).join("winbundle").join("tasks");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("winbundle/tasks")
}

/// The server's default task folder: `%ProgramData%\winbundle\tasks` on Windows (a service
/// account's own profile is not where an administrator looks), else [`default_dir`].
pub fn default_server_dir() -> PathBuf {
    #[cfg(windows)]
    if let Some(data) = std::env::var_os("ProgramData") {
        return PathBuf::from(data).join("winbundle").join("tasks");
    }
    default_dir()
}

/// When process `pid` started, in clock ticks since boot (field 22 of /proc/PID/stat); None
/// when there is no such process.
#[cfg(not(windows))]
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// When process `pid` started (its creation FILETIME); None when it is not running.
#[cfg(windows)]
fn process_start(pid: u32) -> Option<u64> {
    use windows_sys::Win32::Foundation::{CloseHandle, FILETIME};
    use windows_sys::Win32::System::Threading::{
        GetExitCodeProcess, GetProcessTimes, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
    };
    const STILL_ACTIVE: u32 = 259;
    // SAFETY: plain handle queries with out-pointers to locals; the handle is closed.
    unsafe {
        let h = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
        if h.is_null() {
            return None;
        }
        let zero = FILETIME {
            dwLowDateTime: 0,
            dwHighDateTime: 0,
        };
        let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
        let mut code = 0u32;
        let ok = GetProcessTimes(h, &mut created, &mut exited, &mut kernel, &mut user) != 0
            && GetExitCodeProcess(h, &mut code) != 0
            && code == STILL_ACTIVE;
        CloseHandle(h);
        ok.then_some(((created.dwHighDateTime as u64) << 32) | created.dwLowDateTime as u64)
    }
}

/// Whether the process that saved a task still runs (and is the same process, not a new one
/// that got its pid: after a restart in a container the server can be pid 1 again).
fn alive(pid: u32, started: Option<u64>) -> bool {
    if cfg!(not(windows)) && !Path::new("/proc/self").exists() {
        return true; // no way to tell: assume it runs
    }
    match (started, process_start(pid)) {
        (_, None) => false,
        (Some(a), Some(b)) => a == b,
        (None, Some(_)) => true,
    }
}

/// Whether a task in `state` is still under way (not complete or failed).
pub fn running(state: State) -> bool {
    matches!(
        state,
        State::Pending | State::WaitingForShutdown | State::Bundling | State::Storing | State::Cancelling
    )
}

impl TaskStore {
    pub fn open(dir: &Path) -> Result<Self, TaskStoreError> {
        std::fs::create_dir_all(dir).map_err(|source| TaskStoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            origin: "cli",
        })
    }

    /// The folder of the task files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the POST store keeps its journals (resuming policy bundles).
    pub fn journal_dir(&self) -> PathBuf {
        self.dir.join("journals")
    }

    /// The same folder, with tasks saved from now on marked as run by `origin` (`serve`).
    pub fn with_origin(mut self, origin: &'static str) -> Self {
        self.origin = origin;
        self
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn cancel_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.cancel"))
    }

    /// Writes a task atomically, keeping the owner already recorded for it.
    pub fn save(&self, task: &BundleTask) -> Result<(), TaskStoreError> {
        let owner = std::fs::read(self.path(&task.bundle_id))
            .ok()
            .and_then(|b| serde_json::from_slice::<StoredTask>(&b).ok())
            .and_then(|s| s.owner);
        self.save_owned(task, owner)
    }

    /// Writes a new task with the access key id of the caller that created it.
    pub fn save_owned(&self, task: &BundleTask, owner: Option<String>) -> Result<(), TaskStoreError> {
        let path = self.path(&task.bundle_id);
        let io = |source| TaskStoreError::Io {
            path: path.clone(),
            source,
        };
        let pid = std::process::id();
        let stored = StoredTask {
            task: task.clone(),
            pid,
            pid_started: process_start(pid),
            origin: Some(self.origin.to_string()),
            owner,
        };
        let tmp = self.dir.join(format!(".{}.{}.tmp", task.bundle_id, std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&stored).unwrap_or_default()).map_err(io)?;
        replace(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })
    }

    /// Every task; tasks whose process is gone are reported (and saved) as failed.
    pub fn all(&self) -> Result<Vec<BundleTask>, TaskStoreError> {
        Ok(self.load()?.0.into_iter().map(|s| s.task).collect())
    }

    /// The tasks the caller with access key id `caller` may see: its own, or all for an admin.
    pub fn visible(&self, caller: &str, admin: bool) -> Result<Vec<BundleTask>, TaskStoreError> {
        Ok(self
            .load()?
            .0
            .into_iter()
            .filter(|s| s.visible_to(caller, admin))
            .map(|s| s.task)
            .collect())
    }

    /// Task `id` if `caller` may see it; another caller's task is [`TaskStoreError::NotFound`],
    /// exactly as one that does not exist.
    pub fn get_visible(&self, id: &str, caller: &str, admin: bool) -> Result<BundleTask, TaskStoreError> {
        self.visible(caller, admin)?
            .into_iter()
            .find(|t| t.bundle_id == id)
            .ok_or_else(|| TaskStoreError::NotFound(id.to_string()))
    }

    /// Marks the tasks whose process is gone failed; returns how many there were.
    pub fn sweep(&self) -> Result<usize, TaskStoreError> {
        Ok(self.load()?.1)
    }

    fn load(&self) -> Result<(Vec<StoredTask>, usize), TaskStoreError> {
        let mut swept = 0;
        let rd = std::fs::read_dir(&self.dir).map_err(|source| TaskStoreError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json")
                || p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            let Ok(bytes) = std::fs::read(&p) else { continue };
            let Ok(mut stored) = serde_json::from_slice::<StoredTask>(&bytes) else {
                continue;
            };
            if running(stored.task.state) && !alive(stored.pid, stored.pid_started) {
                let message = if stored.origin.as_deref() == Some("serve") {
                    "the winbundle server stopped (restarted, killed or crashed) while this task was pending or running; nothing was completed: call BundleInstance again"
                } else {
                    "the bundling process ended without finishing (killed or crashed); bundle again"
                };
                stored.task.state = State::Failed;
                stored.task.update_time = super::now_iso();
                stored.task.error = Some(TaskError {
                    code: "InternalError".into(),
                    message: message.into(),
                });
                let _ = self.save_owned(&stored.task, stored.owner.clone());
                swept += 1;
            }
            out.push(stored);
        }
        out.sort_by(|a, b| (a.task.start_time.cmp(&b.task.start_time)).then(a.task.bundle_id.cmp(&b.task.bundle_id)));
        Ok((out, swept))
    }

    pub fn get(&self, id: &str) -> Result<BundleTask, TaskStoreError> {
        self.all()?
            .into_iter()
            .find(|t| t.bundle_id == id)
            .ok_or_else(|| TaskStoreError::NotFound(id.to_string()))
    }

    /// Fails when `instance` already has a running task (other than `except`).
    pub fn check_not_running(&self, instance: &str, except: &str) -> Result<(), TaskStoreError> {
        match self
            .all()?
            .into_iter()
            .find(|t| t.instance_id == instance && t.bundle_id != except && running(t.state))
        {
            Some(t) => Err(TaskStoreError::InProgress {
                instance: instance.to_string(),
                bundle: t.bundle_id,
            }),
            None => Ok(()),
        }
    }

    /// Asks the process running `id` to stop; returns the task, now `cancelling` if it ran.
    pub fn request_cancel(&self, id: &str) -> Result<BundleTask, TaskStoreError> {
        let mut task = self.get(id)?;
        if running(task.state) {
            let p = self.cancel_path(id);
            std::fs::write(&p, b"cancel").map_err(|source| TaskStoreError::Io {
                path: p.clone(),
                source,
            })?;
            task.state = State::Cancelling;
            task.update_time = super::now_iso();
            self.save(&task)?;
        }
        Ok(task)
    }

    /// True once a cancel was requested for `id`.
    pub fn cancel_requested(&self, id: &str) -> bool {
        self.cancel_path(id).exists()
    }

    /// Removes the cancel request of a finished task.
    pub fn clear_cancel(&self, id: &str) {
        let _ = std::fs::remove_file(self.cancel_path(id));
    }
}

/// An EC2 DescribeBundleTasks filter: values of one filter are ORed, filters are ANDed.
#[derive(Debug, Clone)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

/// Most filters one request may give (EC2 knows ten names; a few repeats are harmless).
pub const MAX_FILTERS: usize = 50;
/// Most values one filter may give.
pub const MAX_FILTER_VALUES: usize = 200;
/// Longest filter value, in characters (an ISO time, a bucket or a prefix fit well inside).
pub const MAX_FILTER_VALUE_LEN: usize = 1024;
/// Most bundle ids one request may name.
pub const MAX_BUNDLE_IDS: usize = 200;
/// Longest bundle id (`bun-` and 8 or 17 hex digits are made here; room for other forms).
pub const MAX_BUNDLE_ID_LEN: usize = 64;

/// Names DescribeBundleTasks accepts.
pub const FILTER_NAMES: [&str; 10] = [
    "bundle-id",
    "error-code",
    "error-message",
    "instance-id",
    "progress",
    "s3-bucket",
    "s3-prefix",
    "start-time",
    "state",
    "update-time",
];

/// Parses `Name=state,Values=complete,failed`.
pub fn parse_filter(s: &str) -> Result<Filter, String> {
    let (n, v) = s
        .split_once(",Values=")
        .ok_or_else(|| format!("{s:?} is not Name=NAME,Values=V1,V2"))?;
    let name = n
        .strip_prefix("Name=")
        .ok_or_else(|| format!("{s:?} is not Name=NAME,Values=V1,V2"))?
        .to_string();
    if !FILTER_NAMES.contains(&name.as_str()) {
        return Err(format!(
            "unknown filter name {name:?} (one of {})",
            FILTER_NAMES.join(", ")
        ));
    }
    Ok(Filter {
        name,
        values: v.split(',').map(str::to_string).collect(),
    })
}

/// EC2 filter wildcards: `*` matches any run of characters, `?` exactly one. Iterative and
/// bounded: the pattern is cut at its `*`s; the first piece must start the text, the last must
/// end it, and each piece between is taken at its leftmost place after the one before (taking
/// it further right can only leave less text for the rest, so leftmost is never wrong). A
/// piece without `?` is found with `str::find` (linear); one with `?` is tried at each
/// character, so the work is at most text length × pattern length, which the request caps of
/// [`MAX_FILTER_VALUE_LEN`] keep small. No recursion: no pattern can overflow the stack.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut pieces = pattern.split('*');
    let first = pieces.next().unwrap_or("");
    let Some(after_first) = match_at(first, text) else {
        return false;
    };
    let rest: Vec<&str> = pieces.collect();
    let Some((last, middle)) = rest.split_last() else {
        // No `*` at all: the one piece must be the whole text.
        return after_first == text.len();
    };
    // The last piece is matched against the end of the text: as many characters as it has.
    let last_chars = last.chars().count();
    let text_chars = text.chars().count();
    let Some(tail_chars) = text_chars.checked_sub(last_chars) else {
        return false;
    };
    let tail = text.char_indices().nth(tail_chars).map_or(text.len(), |(i, _)| i);
    if tail < after_first || match_at(last, &text[tail..]) != Some(text.len() - tail) {
        return false;
    }
    let mut pos = after_first;
    for piece in middle.iter().filter(|p| !p.is_empty()) {
        match find(piece, &text[pos..tail]) {
            Some(end) => pos += end,
            None => return false,
        }
    }
    true
}

/// Matches `piece` (literal characters and `?`) at the start of `text`: the bytes it covers.
fn match_at(piece: &str, text: &str) -> Option<usize> {
    let mut t = text.char_indices();
    for pc in piece.chars() {
        let (_, tc) = t.next()?;
        if pc != '?' && pc != tc {
            return None;
        }
    }
    Some(t.next().map_or(text.len(), |(i, _)| i))
}

/// The end (in bytes) of the leftmost match of `piece` in `text`.
fn find(piece: &str, text: &str) -> Option<usize> {
    if !piece.contains('?') {
        return text.find(piece).map(|i| i + piece.len());
    }
    text.char_indices()
        .find_map(|(i, _)| match_at(piece, &text[i..]).map(|n| i + n))
}

/// True when `task` passes every filter.
pub fn matches(task: &BundleTask, filters: &[Filter]) -> bool {
    filters.iter().all(|f| {
        let field = match f.name.as_str() {
            "bundle-id" => task.bundle_id.clone(),
            "error-code" => task.error.as_ref().map(|e| e.code.clone()).unwrap_or_default(),
            "error-message" => task.error.as_ref().map(|e| e.message.clone()).unwrap_or_default(),
            "instance-id" => task.instance_id.clone(),
            "progress" => task.progress.clone(),
            "s3-bucket" => task.bucket.clone(),
            "s3-prefix" => task.prefix.clone(),
            "start-time" => task.start_time.clone(),
            "state" => task.state.as_str().to_string(),
            "update-time" => task.update_time.clone(),
            _ => return false,
        };
        f.values.iter().any(|v| glob(v, &field))
    })
}

/// Renames `tmp` over `path`. Windows refuses to replace a file another process has open at
/// that moment (a `describe-bundle-tasks` reading it): that is retried for up to a second.
fn replace(tmp: &Path, path: &Path) -> std::io::Result<()> {
    let mut tries = 0;
    loop {
        match std::fs::rename(tmp, path) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook dynamic-programming matcher, as the reference.
    fn reference(p: &str, t: &str) -> bool {
        let (p, t): (Vec<char>, Vec<char>) = (p.chars().collect(), t.chars().collect());
        let mut row = vec![false; t.len() + 1];
        row[0] = true;
        for pc in &p {
            let mut next = vec![false; t.len() + 1];
            if *pc == '*' {
                next[0] = row[0];
            }
            for j in 1..=t.len() {
                next[j] = match pc {
                    '*' => next[j - 1] || row[j],
                    '?' => row[j - 1],
                    c => row[j - 1] && *c == t[j - 1],
                };
            }
            row = next;
        }
        row[t.len()]
    }

    #[test]
    fn glob_agrees_with_the_reference_on_every_small_case() {
        let alphabet = ['a', 'b', 'é', '*', '?'];
        let mut patterns = vec![String::new()];
        for _ in 0..5 {
            let longer: Vec<String> = patterns
                .iter()
                .filter(|p| p.chars().count() == patterns.last().map_or(0, |l| l.chars().count()))
                .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}")))
                .collect();
            patterns.extend(longer);
        }
        let texts: Vec<String> = patterns.iter().filter(|p| !p.contains(['*', '?'])).cloned().collect();
        let mut checked = 0;
        for p in &patterns {
            for t in &texts {
                assert_eq!(glob(p, t), reference(p, t), "pattern {p:?} text {t:?}");
                checked += 1;
            }
        }
        assert!(checked > 100_000, "{checked}");
        assert!(glob("bun-*", "bun-1a2b3c4d") && !glob("bun-?", "bun-12"));
        assert!(glob("*", "") && !glob("?", "") && glob("", ""));
    }

    #[test]
    fn hostile_patterns_end_at_once_without_recursion() {
        // These overflowed the stack and ran for ever with the recursive matcher.
        let stars = "*".repeat(60_000);
        assert!(glob(&stars, "bun-1a2b3c4d"));
        let backtrack = format!("{}b", "*a".repeat(30));
        let text = "a".repeat(100_000);
        assert!(!glob(&backtrack, &text));
        assert!(glob(&backtrack, &format!("{text}b")));
        let questions = format!("{}b", "*a?".repeat(30));
        assert!(!glob(&questions, &"a".repeat(2_000)));
    }
}
