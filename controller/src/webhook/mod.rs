//! The mutating admission webhook (DESIGN §6): the API server sends an AdmissionReview v1
//! for every Pod CREATE, and the answer carries the JSON patch that meshes the pod.
//!
//! [`review`] is the pure part (bytes of a review in, bytes of a response out, never a
//! panic); [`server`] serves it over HTTPS on `:9443` (DESIGN §2). The namespace's
//! annotations come from a [`NamespaceAnnotations`] lookup: a static map for now (the
//! `--namespace-annotations` file); a Kubernetes-backed lookup comes with the Kubernetes
//! source.

mod review;
pub mod server;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub use self::review::{
    namespace_of, review, AdmissionRequest, AdmissionResponse, AdmissionReview, GroupVersionKind,
    ResponseStatus, ADMISSION_API_VERSION, ADMISSION_KIND,
};
pub use self::server::{load_tls, self_signed_tls, serve, TlsError, MAX_BODY, WEBHOOK_DNS_NAME};

/// Looks up the annotations of a namespace.
pub trait NamespaceAnnotations: Send + Sync {
    /// The annotations of `namespace`; `None` when the namespace is unknown.
    fn annotations(&self, namespace: &str) -> Option<BTreeMap<String, String>>;

    /// The annotations of a namespace [`Self::annotations`] does not know (yet): a
    /// cache that may lag asks its source. `Err` when the source cannot answer (the
    /// webhook then fails the request, and the API server's `failurePolicy` decides,
    /// rather than admitting an unmeshed pod); `Ok(None)`: there is no such namespace.
    fn lookup<'a>(
        &'a self,
        namespace: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<BTreeMap<String, String>>, String>> {
        Box::pin(std::future::ready(Ok(self.annotations(namespace))))
    }
}

/// `inner`, with one namespace's annotations looked up ahead of a review.
pub(crate) struct WithLookedUp<'a> {
    pub inner: &'a dyn NamespaceAnnotations,
    pub namespace: String,
    pub annotations: BTreeMap<String, String>,
}

impl NamespaceAnnotations for WithLookedUp<'_> {
    fn annotations(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        if namespace == self.namespace {
            return Some(self.annotations.clone());
        }
        self.inner.annotations(namespace)
    }
}

/// A fixed, in-memory map from namespace name to its annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaticNamespaces(pub HashMap<String, BTreeMap<String, String>>);

impl NamespaceAnnotations for StaticNamespaces {
    fn annotations(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.0.get(namespace).cloned()
    }
}

/// Why the `--namespace-annotations` file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum NamespacesFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a YAML map `{namespace: {annotation: value}}`.
    #[error("{path} is not a map of namespace to annotations: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The YAML error.
        source: serde_yaml::Error,
    },
}

impl StaticNamespaces {
    /// Reads a YAML map `{namespace: {annotation: value}}`; an empty file is an empty map.
    pub fn from_file(path: &Path) -> Result<Self, NamespacesFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| NamespacesFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|source| NamespacesFileError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Parses a YAML map `{namespace: {annotation: value}}`.
    pub fn from_yaml(text: &str) -> Result<Self, serde_yaml::Error> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let map: Option<HashMap<String, Option<BTreeMap<String, String>>>> =
            serde_yaml::from_str(text)?;
        Ok(Self(
            map.unwrap_or_default()
                .into_iter()
                .map(|(ns, a)| (ns, a.unwrap_or_default()))
                .collect(),
        ))
    }
}
