//! Hot rule reload: on SIGHUP ([`Reloader::reload`]) and when the rules directory changes
//! ([`Reloader::watch`], debounced), load and validate the whole directory; only a fully
//! valid set replaces the one in force, atomically ([`LiveRules::replace`] plus the forwarding
//! routes). A broken set changes nothing: each problem is logged as `file:line:col: message`,
//! kept for `/readyz` ([`Reloader::status`]) and counted in the metrics.
//!
//! A postback in flight keeps the `Arc<RuleSet>` it started with. A removed file makes its
//! source unknown to ingest (404) from the swap on; its stored records stay in the store.
//!
//! The watcher reacts to any change in the directory (editors' temporary files, renames,
//! Kubernetes' `..data` symlink swaps) but reloads only when the `*.toml` files' names or
//! contents differ from the last attempt, so noise never logs or counts a reload. It re-arms
//! itself when the directory is replaced (`mv rules old; cp -r new rules`): the old
//! directory's watch reports its move or removal, and the path is checked every
//! [`REARM_EVERY`]. The parent is not watched: a log file or a store beside the rules
//! directory changes with every postback, and the kernel would queue an event for each write
//! (3 % of the relay's CPU under load when the log sat there, and a debounce that never saw
//! quiet, so an edited rule never loaded while traffic flowed).
//!
//! Only settled writes load: the files are read until two reads agree (size, modification
//! time and content) and, for a reload started by a file change, every file is either
//! unchanged for [`SETTLE`] or was last modified at least [`SETTLE`] ago (a SIGHUP is the
//! operator saying the files are complete: two agreeing reads suffice). A file written in pieces with pauses longer than that can still
//! be caught half-written, which is why deploys should write rule files atomically (a
//! temporary file, then a rename).
//!
//! No lock is held across file I/O: files are read first, then the new set is swapped in
//! under a short lock, in the order the reloads started (a slower, older reload never
//! replaces a newer set). Non-regular files (a FIFO named `x.toml`) are skipped and
//! reported, and a reload that still does not finish within [`RELOAD_TIMEOUT`] is given up
//! (reported on `/readyz`) while everything else keeps working.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use jiff::Timestamp;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::rules::{Diagnostic, EnvMode, LiveRules, RuleFiles, RuleSet};

/// How long the directory must stay quiet after a change before it is reloaded.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// How long a changed file must stay unchanged (or have been last modified) before it loads.
pub const SETTLE: Duration = Duration::from_secs(1);

/// The longest a reload may take (files that keep changing, a hung file system).
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the watcher checks that it still watches the directory at the configured path.
pub const REARM_EVERY: Duration = Duration::from_secs(2);

/// Errors of the reload machinery itself (a refused rule set is not one: see
/// [`ReloadStatus::last_error`]).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The rules directory cannot be watched (inotify limits, missing directory, ...).
    #[error("cannot watch the rules directory {dir}: {source}")]
    Watch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// What started a reload (logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    FileChange,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::FileChange => "file change",
        }
    }
}

/// The last refused reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadFailure {
    pub at: Timestamp,
    /// Every problem, each printable as `file:line:col: message`.
    pub problems: Vec<Diagnostic>,
}

/// The state of the rules for `/readyz`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Sources in force.
    pub loaded: usize,
    /// When the set in force was loaded.
    pub loaded_at: Option<Timestamp>,
    /// Set while the directory holds a set that does not load; cleared by the next good load.
    pub last_error: Option<ReloadFailure>,
    /// `*.toml` entries skipped by the last reload because they are not regular files.
    pub skipped: Vec<String>,
}

struct State {
    status: ReloadStatus,
    /// Fingerprint of the files of the last attempt, good or bad.
    seen: u64,
    /// Sequence number of the last attempt whose outcome was applied.
    applied: u64,
}

/// Reloads one rules directory into the live rules.
pub struct Reloader {
    dir: PathBuf,
    rules: Arc<LiveRules>,
    on_swap: Box<dyn Fn(&RuleSet) + Send + Sync>,
    /// Held only for in-memory updates, never across I/O: `/readyz` reads it.
    state: Mutex<State>,
    /// Numbers reload attempts in the order they started.
    seq: AtomicU64,
}

impl Reloader {
    /// A reloader for `dir`, whose current contents are already in force in `rules`;
    /// `on_swap` runs with each new set just before it replaces the old one (the forwarding
    /// routes follow it there).
    pub fn new(
        dir: PathBuf,
        rules: Arc<LiveRules>,
        on_swap: impl Fn(&RuleSet) + Send + Sync + 'static,
    ) -> Arc<Reloader> {
        let loaded = rules.current().len();
        metrics::rules_loaded(loaded);
        let seen = RuleFiles::read(&dir).map_or(0, |f| fingerprint(&f));
        Arc::new(Reloader {
            dir,
            rules,
            on_swap: Box::new(on_swap),
            state: Mutex::new(State {
                status: ReloadStatus {
                    loaded,
                    loaded_at: Some(Timestamp::now()),
                    last_error: None,
                    skipped: Vec::new(),
                },
                seen,
                applied: 0,
            }),
            seq: AtomicU64::new(0),
        })
    }

    /// The rules directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current status, for `/readyz`.
    pub fn status(&self) -> ReloadStatus {
        self.lock().status.clone()
    }

    /// Loads and validates the whole directory now (once its files have settled); swaps it
    /// in only if all of it is valid. Returns the number of sources in force, or every
    /// problem (the old set stays). Blocks on file I/O: call it off the async runtime, or
    /// use [`Reloader::reload_bounded`].
    pub fn reload(&self, trigger: Trigger) -> Result<usize, Vec<Diagnostic>> {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        // A SIGHUP is the operator saying the files are complete: two agreeing reads
        // suffice. A file change may be a write still in progress: it must settle.
        let settle = match trigger {
            Trigger::Signal => Duration::ZERO,
            Trigger::FileChange => SETTLE,
        };
        let files = settled(&self.dir, settle, Instant::now() + RELOAD_TIMEOUT);
        self.apply(seq, files, trigger)
    }

    /// [`Reloader::reload`] on a blocking thread, given up after [`RELOAD_TIMEOUT`] (the
    /// failure is kept for `/readyz`); nothing waits on the stuck thread.
    pub async fn reload_bounded(
        self: &Arc<Self>,
        trigger: Trigger,
    ) -> Result<usize, Vec<Diagnostic>> {
        let me = self.clone();
        let task = tokio::task::spawn_blocking(move || me.reload(trigger));
        match tokio::time::timeout(RELOAD_TIMEOUT + Duration::from_secs(1), task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(vec![self.problem(format!("the reload task failed: {e}"))]),
            Err(_) => {
                let problems = vec![self.problem(format!(
                    "the reload did not finish within {RELOAD_TIMEOUT:?} (a file that blocks on read?); the previous rules stay in force"
                ))];
                tracing::error!(trigger = trigger.as_str(), problem = %problems[0], "rules reload timed out");
                self.lock().status.last_error = Some(ReloadFailure {
                    at: Timestamp::now(),
                    problems: problems.clone(),
                });
                metrics::reload(Err(()));
                Err(problems)
            }
        }
    }

    /// Like [`Reloader::reload`], but only when the files differ from the last attempt.
    pub fn reload_if_changed(&self) -> Option<Result<usize, Vec<Diagnostic>>> {
        let now = RuleFiles::read(&self.dir).map_or(0, |f| fingerprint(&f));
        if now == self.lock().seen {
            return None;
        }
        Some(self.reload(Trigger::FileChange))
    }

    fn problem(&self, message: String) -> Diagnostic {
        Diagnostic {
            file: self.dir.display().to_string(),
            line: 1,
            col: 1,
            message,
        }
    }

    /// Compiles what was read and, under the lock (memory only), swaps it in unless a newer
    /// attempt already applied its outcome.
    fn apply(
        &self,
        seq: u64,
        files: Result<RuleFiles, Vec<Diagnostic>>,
        trigger: Trigger,
    ) -> Result<usize, Vec<Diagnostic>> {
        let seen = files.as_ref().map_or(0, fingerprint);
        let skipped = files
            .as_ref()
            .map(|f| f.skipped.clone())
            .unwrap_or_default();
        for s in &skipped {
            tracing::warn!(trigger = trigger.as_str(), file = %s, "rules: skipped, not a regular file");
        }
        let compiled = files.and_then(|f| RuleSet::from_files(&self.dir, &f, EnvMode::Resolve));
        let mut state = self.lock();
        if seq < state.applied {
            tracing::info!(
                trigger = trigger.as_str(),
                "rules reload superseded by a newer one"
            );
            return compiled.map(|s| s.len());
        }
        state.applied = seq;
        state.seen = seen;
        state.status.skipped = skipped;
        match compiled {
            Ok(set) => {
                let n = set.len();
                (self.on_swap)(&set);
                self.rules.replace(set);
                state.status.loaded = n;
                state.status.loaded_at = Some(Timestamp::now());
                state.status.last_error = None;
                metrics::reload(Ok(n));
                tracing::info!(trigger = trigger.as_str(), rules = n, dir = %self.dir.display(), "rules reloaded");
                Ok(n)
            }
            Err(problems) => {
                for p in &problems {
                    tracing::error!(
                        trigger = trigger.as_str(),
                        problem = %p,
                        "rules reload refused; the previous rules stay in force"
                    );
                }
                state.status.last_error = Some(ReloadFailure {
                    at: Timestamp::now(),
                    problems: problems.clone(),
                });
                metrics::reload(Err(()));
                Err(problems)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Watches the directory until `shutdown`: after a change and [`DEBOUNCE`] of quiet,
    /// reloads if the rule files changed. The watcher is set up before this returns.
    pub fn watch(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, ReloadError> {
        // Capacity 1: a pending wake-up already means "look again", so extra events can drop.
        let (tx, rx) = mpsc::channel::<()>(1);
        let wake = tx.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(e) if matches!(e.kind, EventKind::Access(_)) => {}
                Ok(_) => {
                    let _ = tx.try_send(());
                }
                Err(e) => tracing::warn!(error = %e, "rules directory watch error"),
            })
            .map_err(|source| ReloadError::Watch {
                dir: self.dir.clone(),
                source,
            })?;
        watcher
            .watch(&self.dir, RecursiveMode::NonRecursive)
            .map_err(|source| ReloadError::Watch {
                dir: self.dir.clone(),
                source,
            })?;
        let armed = dir_identity(&self.dir);
        let me = self.clone();
        Ok(tokio::spawn(async move {
            me.debounce_loop(rx, wake, watcher, armed, shutdown).await;
        }))
    }

    async fn debounce_loop(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<()>,
        wake: mpsc::Sender<()>,
        mut watcher: notify::RecommendedWatcher,
        mut armed: Option<(u64, u64)>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(REARM_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                got = rx.recv() => if got.is_none() { return },
                _ = tick.tick() => {
                    if self.rearm(&mut watcher, &mut armed) {
                        let _ = wake.try_send(());
                    }
                    continue;
                }
                () = shutdown.cancelled() => return,
            }
            // Wait for DEBOUNCE of quiet: editors write a file in several steps.
            loop {
                tokio::select! {
                    got = tokio::time::timeout(DEBOUNCE, rx.recv()) => match got {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    },
                    () = shutdown.cancelled() => return,
                }
            }
            self.rearm(&mut watcher, &mut armed);
            let me = self.clone();
            let check = tokio::task::spawn_blocking(move || me.reload_if_changed());
            match tokio::time::timeout(RELOAD_TIMEOUT + Duration::from_secs(1), check).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "rules reload task failed"),
                Err(_) => {
                    let problem = self.problem(format!(
                        "the reload did not finish within {RELOAD_TIMEOUT:?} (a file that blocks on read?); the previous rules stay in force"
                    ));
                    tracing::error!(problem = %problem, "rules reload timed out");
                    self.lock().status.last_error = Some(ReloadFailure {
                        at: Timestamp::now(),
                        problems: vec![problem],
                    });
                    metrics::reload(Err(()));
                }
            }
        }
    }

    /// Watches the directory again when the path now names another directory (or names one
    /// again); true when it did.
    fn rearm(
        &self,
        watcher: &mut notify::RecommendedWatcher,
        armed: &mut Option<(u64, u64)>,
    ) -> bool {
        let now = dir_identity(&self.dir);
        if now == *armed {
            return false;
        }
        let _ = watcher.unwatch(&self.dir);
        if now.is_some() {
            match watcher.watch(&self.dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::info!(dir = %self.dir.display(), "rules directory replaced: watching the new one")
                }
                Err(e) => {
                    tracing::warn!(error = %e, dir = %self.dir.display(), "cannot watch the replaced rules directory; retrying");
                    *armed = None;
                    return true;
                }
            }
        }
        *armed = now;
        true
    }
}

/// The (device, inode) of the directory at `dir`, if there is one.
fn dir_identity(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

/// Reads the directory until the files have settled: two reads agree, and every file was
/// either last modified [`SETTLE`] ago or has been seen unchanged for [`SETTLE`]. Gives up
/// at `deadline` with a problem naming the files still changing.
fn settled(dir: &Path, settle: Duration, deadline: Instant) -> Result<RuleFiles, Vec<Diagnostic>> {
    let mut prev: Option<(RuleFiles, Instant)> = None;
    loop {
        let files = RuleFiles::read(dir)?;
        let now = Instant::now();
        let stable_since = match &prev {
            Some((p, since)) if *p == files => *since,
            _ => now,
        };
        let stable_for = now - stable_since;
        let wall = SystemTime::now();
        let youngest = files
            .files
            .iter()
            .map(|f| {
                f.modified
                    .and_then(|m| wall.duration_since(m).ok())
                    .unwrap_or(Duration::ZERO)
            })
            .min()
            .unwrap_or(settle);
        let unchanged_twice = stable_since < now;
        if unchanged_twice && (youngest >= settle || stable_for >= settle) {
            return Ok(files);
        }
        if now >= deadline {
            let changing: Vec<String> = files
                .files
                .iter()
                .map(|f| f.path.display().to_string())
                .collect();
            return Err(vec![Diagnostic {
                file: dir.display().to_string(),
                line: 1,
                col: 1,
                message: format!(
                    "the rule files did not stop changing within {RELOAD_TIMEOUT:?} ({}); write rule files atomically (a temporary file, then a rename)",
                    changing.join(", ")
                ),
            }]);
        }
        let wait = if unchanged_twice {
            settle.saturating_sub(youngest.max(stable_for))
        } else {
            Duration::from_millis(20)
        };
        let wait = wait.clamp(Duration::from_millis(20), SETTLE).min(
            deadline
                .saturating_duration_since(now)
                .max(Duration::from_millis(1)),
        );
        prev = Some((files, stable_since));
        std::thread::sleep(wait);
    }
}

/// A hash of the names and contents of the rule files (and the skipped entries).
fn fingerprint(files: &RuleFiles) -> u64 {
    let mut h = DefaultHasher::new();
    for f in &files.files {
        f.path.hash(&mut h);
        match &f.text {
            Ok(t) => t.hash(&mut h),
            Err(e) => e.hash(&mut h),
        }
    }
    files.files.len().hash(&mut h);
    files.skipped.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "[fields]\nclick_id = \"cid\"\n";

    fn setup(files: &[(&str, &str)]) -> (tempfile::TempDir, Arc<LiveRules>, Arc<Reloader>) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let set = RuleSet::load_dir(dir.path(), EnvMode::Resolve).unwrap();
        let live = Arc::new(LiveRules::new(set));
        let r = Reloader::new(dir.path().to_path_buf(), live.clone(), |_| {});
        (dir, live, r)
    }

    #[test]
    fn broken_file_keeps_the_working_set_and_records_file_and_line() {
        let (dir, live, r) = setup(&[("a.toml", GOOD)]);
        std::fs::write(dir.path().join("b.toml"), "[fields]\nclick_id = 5\n").unwrap();
        let problems = r.reload(Trigger::Signal).unwrap_err();
        assert!(problems[0].file.ends_with("b.toml"), "{problems:?}");
        assert_eq!(live.current().len(), 1);
        let status = r.status();
        assert_eq!(status.loaded, 1);
        assert_eq!(status.last_error.unwrap().problems, problems);

        std::fs::remove_file(dir.path().join("b.toml")).unwrap();
        assert_eq!(r.reload_if_changed(), Some(Ok(1)));
        assert_eq!(r.status().last_error, None);
    }

    #[test]
    fn unchanged_files_are_not_reloaded_by_the_watcher_path() {
        let (dir, live, r) = setup(&[("a.toml", GOOD)]);
        assert_eq!(r.reload_if_changed(), None);
        std::fs::write(dir.path().join("notes.txt"), "not a rule").unwrap();
        assert_eq!(r.reload_if_changed(), None);
        std::fs::write(dir.path().join("c.toml"), GOOD).unwrap();
        assert_eq!(r.reload_if_changed(), Some(Ok(2)));
        assert!(live.current().get("c").is_some());
    }
}
