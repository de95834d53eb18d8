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

/// A client of the current kubeconfig (or in-cluster config) that does not retry:
/// a proxy that refuses its admin port answers `503` through the API server, which
/// the default client retries for minutes; the CLI reports it at once instead.
pub async fn client() -> Result<Client, kube::Error> {
    let mut config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    config.default_retry = false;
    Client::try_from(config)
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

/// GETs `path` (e.g. `/metrics`) from a pod's proxy admin port through the API server,
/// giving up after `timeout` (the client's own retries on `503` would otherwise take
/// minutes for a pod that refuses). Errors are one line.
pub async fn admin_get(
    client: &Client,
    ns: &str,
    pod: &str,
    path: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<String> {
    port_get(client, ns, pod, ADMIN_PORT, path, timeout).await
}

/// GETs `path` from a pod's `port` through the API server (as [`admin_get`]).
pub async fn port_get(
    client: &Client,
    ns: &str,
    pod: &str,
    port: u16,
    path: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<String> {
    let url = format!("/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy{path}");
    let req = http::Request::get(url).body(Vec::new())?;
    match tokio::time::timeout(timeout, client.request_text(req)).await {
        Ok(Ok(text)) => Ok(text),
        Ok(Err(e)) => Err(anyhow::anyhow!("{}", one_line(&e))),
        Err(_) => Err(anyhow::anyhow!("no answer within {timeout:?}")),
    }
}

/// A Kubernetes client error in one line: an API status as `code reason: message`.
pub fn one_line(e: &kube::Error) -> String {
    let text = match e {
        kube::Error::Api(status) => {
            format!("{} {}: {}", status.code, status.reason, status.message)
        }
        other => other.to_string(),
    };
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line,
    }
}

/// The workload a pod reports itself as (the injector's annotation), else its name.
pub fn workload(p: &Pod) -> String {
    mesh_controller::inject::workload_name(&p.metadata)
        .or_else(|| p.metadata.name.clone())
        .unwrap_or_default()
}
