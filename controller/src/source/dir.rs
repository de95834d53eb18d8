//! The local source (`--source dir:PATH`): loads every `*.yaml`/`*.yml` file of a directory
//! into the index, then keeps it in sync from file-system events (debounced, followed by a
//! full rescan) and a periodic safety rescan. A file that stops parsing keeps its last good
//! objects in the index; a deleted file's objects are removed. Every file change is counted
//! in `mesh_controller_source_events_total{source="dir",kind="file"}`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::SourceError;
use crate::index::IndexWriter;
use crate::metrics::{Source, SourceEvents};
use crate::resources::{parse_documents, Resource};

/// The `kind` label of the directory source's events.
const KIND: &str = "file";

/// The event counters of the directory source.
fn source_events(writer: &IndexWriter) -> SourceEvents {
    writer.metrics().source_events(Source::Dir, KIND)
}

/// Timing of the directory watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirOptions {
    /// How long to wait after an event for more events before rescanning.
    pub debounce: Duration,
    /// Interval of the safety rescan, in case an event was lost.
    pub resync: Duration,
}

impl Default for DirOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(100),
            resync: Duration::from_secs(5),
        }
    }
}

/// The scanner of one directory: remembers the content it last saw of every file, so that
/// a rescan only re-parses (and re-reports) files that changed.
#[derive(Debug)]
pub struct DirSource {
    dir: PathBuf,
    seen: HashMap<PathBuf, Vec<u8>>,
}

/// A file a scan refused: it keeps its last good objects in the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The refused file.
    pub path: PathBuf,
    /// Why it was refused.
    pub error: String,
}

/// A change a scan makes to the index.
enum Change {
    Apply(PathBuf, Vec<Resource>),
    Remove(PathBuf),
}

// === impl DirSource ===

impl DirSource {
    /// A scanner of `dir` that has seen nothing yet.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            seen: HashMap::new(),
        }
    }

    /// Reads the whole directory and applies new, changed and deleted files to the index in
    /// one update. Invalid files are logged (and counted), keep their last good objects and
    /// are returned.
    pub async fn scan(&mut self, writer: &IndexWriter) -> Result<Vec<Rejected>, SourceError> {
        let events = source_events(writer);
        let read_dir_err = |error| SourceError::ReadDir {
            path: self.dir.clone(),
            error,
        };
        let mut entries = tokio::fs::read_dir(&self.dir).await.map_err(read_dir_err)?;
        let mut present = BTreeSet::new();
        let mut changes = Vec::new();
        let mut rejected = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(read_dir_err)? {
            let path = entry.path();
            if !is_manifest(&path) {
                continue;
            }
            // `metadata` follows symlinks (ConfigMap mounts are symlinks).
            match tokio::fs::metadata(&path).await {
                Ok(m) if m.is_file() => {}
                _ => continue,
            }
            let bytes = match tokio::fs::read(&path).await {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "cannot read manifest");
                    events.watch_failed();
                    present.insert(path); // keep what we had
                    continue;
                }
            };
            present.insert(path.clone());
            if self.seen.get(&path) == Some(&bytes) {
                continue;
            }
            let parsed = std::str::from_utf8(&bytes)
                .map_err(|e| format!("not UTF-8: {e}"))
                .and_then(|text| parse_documents(text).map_err(|e| e.to_string()));
            self.seen.insert(path.clone(), bytes);
            match parsed {
                Ok(parsed) => {
                    for o in &parsed.ignored {
                        tracing::warn!(
                            file = %path.display(),
                            kind = %o.kind,
                            api_version = %o.api_version,
                            name = %o.name,
                            "ignoring object of unsupported kind"
                        );
                    }
                    tracing::info!(
                        file = %path.display(),
                        objects = parsed.resources.len(),
                        "loaded manifest"
                    );
                    events.applied();
                    changes.push(Change::Apply(path, parsed.resources));
                }
                Err(e) => {
                    tracing::error!(
                        file = %path.display(),
                        "invalid manifest, keeping its last good version: {e}"
                    );
                    events.invalid();
                    rejected.push(Rejected { path, error: e });
                }
            }
        }
        self.seen.retain(|path, _| {
            let keep = present.contains(path);
            if !keep {
                tracing::info!(file = %path.display(), "manifest removed");
                events.deleted();
                changes.push(Change::Remove(path.clone()));
            }
            keep
        });
        if !changes.is_empty() {
            writer.update(|index| {
                changes.into_iter().fold(false, |changed, c| {
                    let c = match c {
                        Change::Apply(path, resources) => index.apply_file(path, resources),
                        Change::Remove(path) => index.remove_file(&path),
                    };
                    changed | c
                })
            });
        }
        Ok(rejected)
    }
}

/// Whether `path` names a manifest: `*.yaml` or `*.yml`, not hidden (editor temp files).
fn is_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext = path.extension().and_then(|e| e.to_str());
    !hidden && matches!(ext, Some("yaml" | "yml"))
}

// === impl DirWatch ===

/// A running directory source. Dropping it stops the watch (and drops the index writer).
#[derive(Debug)]
pub struct DirWatch {
    task: JoinHandle<()>,
}

impl DirWatch {
    /// Watches `dir`, loads it fully into the index, then keeps it in sync in the
    /// background. Fails when the directory cannot be watched or read.
    pub async fn start(
        dir: impl Into<PathBuf>,
        writer: IndexWriter,
        opts: DirOptions,
    ) -> Result<Self, SourceError> {
        let dir = dir.into();
        // Checked first: the watcher's own error for a missing path is obscure.
        if let Err(error) = tokio::fs::read_dir(&dir).await {
            return Err(SourceError::ReadDir { path: dir, error });
        }
        let (tx, events) = mpsc::channel(1);
        let counters = source_events(&writer);
        let handler = move |res: notify::Result<Event>| {
            let relevant = match res {
                Ok(ev) => !matches!(ev.kind, EventKind::Access(a)
                    if a != AccessKind::Close(AccessMode::Write)),
                Err(e) => {
                    tracing::warn!(error = %e, "file watch error; rescanning");
                    counters.watch_failed();
                    true
                }
            };
            if relevant {
                // A full channel already holds a pending rescan.
                let _ = tx.try_send(());
            }
        };
        let watch_err = |error| SourceError::Watch {
            path: dir.clone(),
            error,
        };
        let mut watcher = notify::recommended_watcher(handler).map_err(watch_err)?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(watch_err)?;
        let mut source = DirSource::new(&dir);
        source.scan(&writer).await?;
        tracing::info!(dir = %dir.display(), "watching manifests");
        let task = tokio::spawn(run(source, writer, watcher, events, opts));
        Ok(Self { task })
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Rescans after each burst of events and every `opts.resync`.
async fn run(
    mut source: DirSource,
    writer: IndexWriter,
    _watcher: RecommendedWatcher,
    mut events: mpsc::Receiver<()>,
    opts: DirOptions,
) {
    let mut resync = tokio::time::interval(opts.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await; // the first tick is immediate; the initial scan is done
    loop {
        tokio::select! {
            ev = events.recv() => {
                if ev.is_none() {
                    return; // the watcher is gone
                }
                tokio::time::sleep(opts.debounce).await;
                while events.try_recv().is_ok() {}
            }
            _ = resync.tick() => {}
        }
        if let Err(e) = source.scan(&writer).await {
            tracing::error!(error = %e, "rescan failed; keeping the current index");
            source_events(&writer).watch_failed();
        }
    }
}

#[cfg(test)]
mod tests;
