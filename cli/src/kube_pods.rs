//! The pods that run an injected proxy, and reading a proxy's admin endpoints through
//! the API server's pod proxy (`mesh check --proxy`, `mesh stat` in Kubernetes).

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};

/// The proxy container's name (the injector's).
pub const PROXY: &str = "mesh-proxy";
/// The proxy's admin port.
pub const ADMIN_PORT: u16 = 4191;

/// Whether the pod runs the proxy (as a container or a native sidecar).
pub fn has_proxy(p: &Pod) -> bool {
    p.spec.as_ref().is_some_and(|s| {
        s.containers.iter().any(|c| c.name == PROXY)
            || s.init_containers.iter().flatten().any(|c| c.name == PROXY)
    })
}

/// Every pod with a proxy, in `namespace` or in all namespaces.
pub async fn injected(client: &Client, namespace: Option<&str>) -> kube::Result<Vec<Pod>> {
    let api: Api<Pod> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let list = api.list(&ListParams::default()).await?;
    Ok(list.items.into_iter().filter(has_proxy).collect())
}

/// GETs `path` (e.g. `/metrics`) from a pod's proxy admin port through the API server.
pub async fn admin_get(client: &Client, ns: &str, pod: &str, path: &str) -> anyhow::Result<String> {
    let url = format!("/api/v1/namespaces/{ns}/pods/{pod}:{ADMIN_PORT}/proxy{path}");
    let req = http::Request::get(url).body(Vec::new())?;
    Ok(client.request_text(req).await?)
}

/// The workload a pod reports itself as (the injector's annotation), else its name.
pub fn workload(p: &Pod) -> String {
    mesh_controller::inject::workload_name(&p.metadata)
        .or_else(|| p.metadata.name.clone())
        .unwrap_or_default()
}
