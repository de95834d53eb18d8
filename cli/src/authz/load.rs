//! Filling a controller index for `mesh authz`: from a manifest directory, or from the
//! Services, Pods and AuthorizationPolicies of one namespace in the Kubernetes API,
//! converted by the controller's own code.

use std::path::Path;

use anyhow::Context;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, Client};
use mesh_controller::index::{Index, IndexConfig};
use mesh_controller::kubernetes::convert;
use mesh_controller::resources::parse_documents;

/// An index and what could not go into it.
pub struct Loaded {
    pub index: Index,
    /// Files or objects that were skipped, with why.
    pub warnings: Vec<String>,
    /// The index name of the workload, when the argument named something else (a pod's
    /// owning workload).
    pub workload_name: Option<String>,
}

/// Every `*.yaml`/`*.yml` file of `dir`; an invalid file is a warning (the controller
/// would keep its last good version).
pub fn from_dir(dir: &Path) -> anyhow::Result<Loaded> {
    let mut index = Index::new(IndexConfig::default());
    let mut warnings = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        match parse_documents(&text) {
            Ok(parsed) => {
                index.apply_file(file, parsed.resources);
            }
            Err(e) => warnings.push(format!("{}: {e} (ignored)", file.display())),
        }
    }
    Ok(Loaded {
        index,
        warnings,
        workload_name: None,
    })
}

/// The Services, Pods and AuthorizationPolicies of `namespace`. `workload` may name a pod
/// or the workload pods report (`mesh.dev/workload`, else their owner).
pub async fn from_kubernetes(
    client: Client,
    namespace: &str,
    workload: &str,
) -> anyhow::Result<Loaded> {
    let lp = ListParams::default();
    let mut resources = Vec::new();
    let mut warnings = Vec::new();
    let services = Api::<Service>::namespaced(client.clone(), namespace)
        .list(&lp)
        .await
        .context("listing Services")?;
    for s in services.items {
        let json = serde_json::to_value(&s)?;
        match convert::object("v1", "Service", json) {
            Ok(r) => resources.extend(r),
            Err(e) => warnings.push(format!("Service: {e}")),
        }
    }
    let gvk = GroupVersionKind::gvk("policy.mesh.dev", "v1alpha1", "AuthorizationPolicy");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "authorizationpolicies");
    let policies = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &ar)
        .list(&lp)
        .await
        .context("listing AuthorizationPolicies (is the CRD installed? see `mesh check`)")?;
    for p in policies.items {
        let json = serde_json::to_value(&p)?;
        match convert::object("policy.mesh.dev/v1alpha1", "AuthorizationPolicy", json) {
            Ok(r) => resources.extend(r),
            Err(e) => warnings.push(format!("{e} (ignored by the controller too)")),
        }
    }
    let mut pods = Api::<Pod>::namespaced(client, namespace)
        .list(&lp)
        .await
        .context("listing Pods")?
        .items;
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let chosen = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(workload))
        .or_else(|| {
            pods.iter()
                .find(|p| crate::kube_pods::workload(p) == workload)
        })
        .and_then(|p| p.metadata.name.clone());
    for p in &pods {
        resources.extend(
            convert::pod_entries(p)
                .into_iter()
                .map(mesh_controller::resources::Resource::WorkloadEntry),
        );
    }
    let mut index = Index::new(IndexConfig::default());
    index.apply_file("kubernetes", resources);
    Ok(Loaded {
        index,
        warnings,
        workload_name: chosen.filter(|n| n != workload),
    })
}
