//! Sources feed the index: each watches one place where resources live and applies what it
//! finds through the [`IndexWriter`]: a local directory of manifests, or the Kubernetes
//! API (`crate::kubernetes::source`), both making the same `apply_file`/`remove_file` calls.

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
    /// `kubernetes`: the cluster the in-cluster config or kubeconfig points at.
    Kubernetes,
}

/// Why a source could not be configured or started.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// `--source` names a source this build does not support.
    #[error("unsupported source {0:?} (supported: dir:PATH, kubernetes)")]
    Unsupported(String),
    /// No Kubernetes client configuration (in-cluster or kubeconfig) was found.
    #[error("cannot configure the Kubernetes client: {0}")]
    Kubernetes(String),
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
        if s == "kubernetes" {
            return Ok(SourceSpec::Kubernetes);
        }
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
    /// Watchers on the Kubernetes API.
    Kubernetes(crate::kubernetes::source::KubeSource),
}

impl RunningSource {
    /// The namespaces' annotations, when the source watches Namespaces (Kubernetes).
    pub fn namespaces(&self) -> Option<std::sync::Arc<dyn crate::webhook::NamespaceAnnotations>> {
        match self {
            RunningSource::Dir(_) => None,
            RunningSource::Kubernetes(k) => Some(k.namespaces()),
        }
    }
}

/// Starts the source: the first full load is in the index when this returns.
pub async fn start(spec: SourceSpec, writer: IndexWriter) -> Result<RunningSource, SourceError> {
    match spec {
        SourceSpec::Dir(path) => {
            let watch = DirWatch::start(path, writer, DirOptions::default()).await?;
            Ok(RunningSource::Dir(watch))
        }
        SourceSpec::Kubernetes => {
            let client = crate::kubernetes::connect()
                .await
                .map_err(|e| SourceError::Kubernetes(e.to_string()))?;
            let source = crate::kubernetes::source::KubeSource::start(
                client,
                writer,
                std::time::Duration::from_secs(30),
            )
            .await;
            Ok(RunningSource::Kubernetes(source))
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
        assert_eq!(
            "kubernetes".parse::<SourceSpec>().ok(),
            Some(SourceSpec::Kubernetes)
        );
        for bad in ["dir:", "kube", "/etc/mesh", "file:/x"] {
            let err = bad.parse::<SourceSpec>().unwrap_err().to_string();
            assert!(
                err.contains("unsupported source") && err.contains("dir:PATH"),
                "{err}"
            );
        }
    }
}
