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
//! contents differ from the last attempt, so noise never logs or counts a reload.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::rules::{Diagnostic, EnvMode, LiveRules, RuleSet};

/// How long the directory must stay quiet after a change before it is reloaded.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

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
}

struct State {
    status: ReloadStatus,
    /// Fingerprint of the files of the last attempt, good or bad.
    seen: u64,
}

/// Reloads one rules directory into the live rules.
pub struct Reloader {
    dir: PathBuf,
    rules: Arc<LiveRules>,
    on_swap: Box<dyn Fn(&RuleSet) + Send + Sync>,
    state: Mutex<State>,
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
        let seen = fingerprint(&dir);
        Arc::new(Reloader {
            dir,
            rules,
            on_swap: Box::new(on_swap),
            state: Mutex::new(State {
                status: ReloadStatus {
                    loaded,
                    loaded_at: Some(Timestamp::now()),
                    last_error: None,
                },
                seen,
            }),
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

    /// Loads and validates the whole directory now; swaps it in only if all of it is valid.
    /// Returns the number of sources in force, or every problem (the old set stays).
    pub fn reload(&self, trigger: Trigger) -> Result<usize, Vec<Diagnostic>> {
        let mut state = self.lock();
        state.seen = fingerprint(&self.dir);
        self.load_locked(&mut state, trigger)
    }

    /// Like [`Reloader::reload`], but only when the files differ from the last attempt.
    pub fn reload_if_changed(&self) -> Option<Result<usize, Vec<Diagnostic>>> {
        let mut state = self.lock();
        let now = fingerprint(&self.dir);
        if now == state.seen {
            return None;
        }
        state.seen = now;
        Some(self.load_locked(&mut state, Trigger::FileChange))
    }

    // Holding the lock across the load serialises reloads, so two triggers can never swap
    // in an older set after a newer one.
    fn load_locked(&self, state: &mut State, trigger: Trigger) -> Result<usize, Vec<Diagnostic>> {
        match RuleSet::load_dir(&self.dir, EnvMode::Resolve) {
            Ok(set) => {
                let n = set.len();
                (self.on_swap)(&set);
                self.rules.replace(set);
                state.status = ReloadStatus {
                    loaded: n,
                    loaded_at: Some(Timestamp::now()),
                    last_error: None,
                };
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
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Watches the directory until `shutdown`: after a change and [`DEBOUNCE`] of quiet,
    /// reloads if the rule files changed. The watcher is set up before this returns.
    pub fn watch(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, ReloadError> {
        // Capacity 1: a pending wake-up already means "look again", so extra events can drop.
        let (tx, rx) = mpsc::channel::<()>(1);
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
        let me = self.clone();
        Ok(tokio::spawn(async move {
            // The watcher lives as long as this task.
            let _watcher = watcher;
            me.debounce_loop(rx, shutdown).await;
        }))
    }

    async fn debounce_loop(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<()>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                got = rx.recv() => if got.is_none() { return },
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
            let me = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || me.reload_if_changed()).await {
                tracing::error!(error = %e, "rules reload task failed");
            }
        }
    }
}

/// A hash of the names and contents of the `*.toml` files in `dir` (0 if unreadable).
fn fingerprint(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let mut h = DefaultHasher::new();
    for p in &paths {
        p.hash(&mut h);
        match std::fs::read(p) {
            Ok(bytes) => bytes.hash(&mut h),
            Err(e) => e.kind().to_string().hash(&mut h),
        }
    }
    paths.len().hash(&mut h);
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
