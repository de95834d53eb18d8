//! Sources feed the index: each watches one place where resources live and applies what it
//! finds through the [`IndexWriter`]. Only the local directory source exists so far; the
//! Kubernetes source will sit beside it and make the same `apply_file`/`remove_file` calls.

pub mod dir;

use std::path::PathBuf;
use std::str::FromStr;

use crate::index::IndexWriter;

pub use self::dir::{DirOptions, DirWatch};

/// Where resources come from, as given by `--source`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    /// `dir:PATH`: a directory of YAML manifests, watched for changes.
    Dir(PathBuf),
}

/// Why a source could not be configured or started.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// `--source` names a source this build does not support.
    #[error("unsupported source {0:?} (supported: dir:PATH)")]
    Unsupported(String),
    /// The source directory could not be read.
    #[error("cannot read directory {}: {error}", path.display())]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file watcher could not be set up.
    #[error("cannot watch directory {}: {error}", path.display())]
    Watch {
        /// The directory.
        path: PathBuf,
        /// The watcher error.
        error: notify::Error,
    },
}

impl FromStr for SourceSpec {
    type Err = SourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("dir:") {
            Some(path) if !path.is_empty() => Ok(SourceSpec::Dir(PathBuf::from(path))),
            _ => Err(SourceError::Unsupported(s.to_string())),
        }
    }
}

/// A started source; dropping it stops it and drops its [`IndexWriter`].
#[derive(Debug)]
pub enum RunningSource {
    /// A watched directory.
    Dir(DirWatch),
}

/// Starts the source: the first full load is in the index when this returns.
pub async fn start(spec: SourceSpec, writer: IndexWriter) -> Result<RunningSource, SourceError> {
    match spec {
        SourceSpec::Dir(path) => {
            let watch = DirWatch::start(path, writer, DirOptions::default()).await?;
            Ok(RunningSource::Dir(watch))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_source_flag() {
        assert_eq!(
            "dir:/etc/mesh".parse::<SourceSpec>().ok(),
            Some(SourceSpec::Dir("/etc/mesh".into()))
        );
        for bad in ["dir:", "kubernetes", "/etc/mesh", "file:/x"] {
            let err = bad.parse::<SourceSpec>().unwrap_err().to_string();
            assert!(
                err.contains("unsupported source") && err.contains("dir:PATH"),
                "{err}"
            );
        }
    }
}
