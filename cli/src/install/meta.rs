//! Names, labels and metadata shared by every rendered object, and the Namespace.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::NAMESPACE;

/// The destination controller and injector: its Deployment, Service, ServiceAccount and
/// RBAC objects all have this name.
pub const CONTROLLER: &str = "mesh-controller";
/// The certificate authority: its Deployment, Service, ServiceAccount and RBAC objects.
pub const IDENTITY: &str = "mesh-identity";

/// Label naming the component an object belongs to (also the pod selector).
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// Label marking every object of the mesh.
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
/// Value of [`PART_OF_LABEL`].
pub const PART_OF: &str = "mesh";

/// The labels of an object of `component` (`None`: not specific to one component).
pub fn labels(component: Option<&str>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([(PART_OF_LABEL.to_string(), PART_OF.to_string())]);
    if let Some(name) = component {
        labels.insert(NAME_LABEL.to_string(), name.to_string());
    }
    labels
}

/// The pod selector of `component`.
pub fn selector(component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(NAME_LABEL.to_string(), component.to_string())])
}

/// Metadata of an object in the control-plane namespace.
pub fn namespaced(name: &str, component: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(NAMESPACE.to_string()),
        labels: Some(labels(component)),
        ..ObjectMeta::default()
    }
}

/// Metadata of a cluster-scoped object.
pub fn cluster(name: &str, component: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        labels: Some(labels(component)),
        ..ObjectMeta::default()
    }
}

/// `mesh-system`, held to the `restricted` Pod Security Standard (the control plane
/// meets it) and never injected.
pub fn namespace() -> Namespace {
    let mut meta = cluster(NAMESPACE, None);
    if let Some(labels) = meta.labels.as_mut() {
        labels.insert(
            "pod-security.kubernetes.io/enforce".to_string(),
            "restricted".to_string(),
        );
    }
    meta.annotations = Some(BTreeMap::from([(
        mesh_controller::inject::INJECT_ANNOTATION.to_string(),
        "disabled".to_string(),
    )]));
    Namespace {
        metadata: meta,
        ..Namespace::default()
    }
}
