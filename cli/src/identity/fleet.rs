//! What the running mesh trusts and holds, read from the admin endpoints: every proxy's
//! and controller's `/trust-bundle` (the anchors in force) and `/certificate` (the chain
//! it presents), and mesh-identity's `/metrics` (the bundle it checks issuers against,
//! and its issuer's expiry). Locally the targets file lists them; in Kubernetes they are
//! the pods running the proxy and the control plane's pods, read through the API
//! server's pod proxy (re-listed at every read: pods come and go during a rotation).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;
use mesh_proto::workload::fingerprint;
use rustls::pki_types::{pem::PemObject, CertificateDer};

use crate::file_sd::{Target, JOB_CONTROLLER, JOB_IDENTITY, JOB_PROXY};
use crate::http::{client, HttpClient};
use crate::install::meta::{CONTROLLER, IDENTITY, NAME_LABEL};
use crate::kube_pods;

/// How long one admin read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// The controller's and identity's admin ports in Kubernetes.
const CONTROLLER_ADMIN_PORT: u16 = 9990;
const IDENTITY_ADMIN_PORT: u16 = 9991;

/// One workload's trust and certificate, or why it could not be read.
#[derive(Clone, Debug)]
pub struct Member {
    /// `namespace/pod` for proxies, `mesh-controller` (or its pod) for the controller.
    pub name: String,
    /// What was read.
    pub state: Result<Holding, String>,
}

/// What a workload trusts and presents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holding {
    /// Fingerprints of the anchors it trusts.
    pub anchors: BTreeSet<String>,
    /// Fingerprint of the certificate that issued its leaf.
    pub leaf_issuer: Option<String>,
}

/// What one mesh-identity replica reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityState {
    /// The id of the bundle its issuer was checked against.
    pub bundle: Option<String>,
    /// Its issuer's `notAfter`, Unix seconds.
    pub issuer_expiry: Option<u64>,
}

/// The workloads of a mesh and its mesh-identity replicas.
pub enum Fleet {
    /// From a targets file.
    Local {
        /// (name, admin address) of the proxies and the controller.
        members: Vec<(String, SocketAddr)>,
        /// mesh-identity's admin address.
        identity: Option<SocketAddr>,
        /// The HTTP client (boxed: it is much larger than the other variant).
        http: Box<HttpClient>,
    },
    /// From the Kubernetes API.
    Kube {
        /// The API client (no retries).
        client: kube::Client,
        /// The control-plane namespace.
        namespace: String,
    },
}

impl Fleet {
    /// The proxies and controller in `targets`, and mesh-identity.
    pub fn local(targets: &[Target]) -> Self {
        let mut members = Vec::new();
        let mut identity = None;
        for t in targets {
            match t.label("job") {
                JOB_PROXY => members.push((
                    format!("{}/{}", t.label("namespace"), t.label("pod")),
                    t.addr,
                )),
                JOB_CONTROLLER => members.push((JOB_CONTROLLER.to_string(), t.addr)),
                JOB_IDENTITY => identity = Some(t.addr),
                _ => {}
            }
        }
        Fleet::Local {
            members,
            identity,
            http: Box::new(client()),
        }
    }

    /// Every workload, read in parallel.
    pub async fn read(&self) -> Result<Vec<Member>, String> {
        match self {
            Fleet::Local { members, http, .. } => {
                Ok(join_all(members.iter().map(|(name, addr)| async move {
                    let get = |path: &'static str| {
                        let url = format!("http://{addr}{path}");
                        async move { http_get(http, &url).await }
                    };
                    Member {
                        name: name.clone(),
                        state: holding(get("/trust-bundle").await, get("/certificate").await),
                    }
                }))
                .await)
            }
            Fleet::Kube { client, namespace } => {
                let mut pods: Vec<(Pod, u16)> = kube_pods::injected(client, None)
                    .await
                    .map_err(|e| kube_pods::one_line(&e))?
                    .into_iter()
                    .map(|p| (p, kube_pods::ADMIN_PORT))
                    .collect();
                for p in component_pods(client, namespace, CONTROLLER).await? {
                    pods.push((p, CONTROLLER_ADMIN_PORT));
                }
                Ok(join_all(pods.iter().map(|(p, port)| async move {
                    let ns = p.metadata.namespace.clone().unwrap_or_default();
                    let name = p.metadata.name.clone().unwrap_or_default();
                    let get = |path: &'static str| {
                        let (ns, name) = (&ns, &name);
                        async move {
                            kube_pods::port_get(client, ns, name, *port, path, READ_TIMEOUT)
                                .await
                                .map_err(|e| e.to_string())
                        }
                    };
                    Member {
                        name: format!("{ns}/{name}"),
                        state: holding(get("/trust-bundle").await, get("/certificate").await),
                    }
                }))
                .await)
            }
        }
    }

    /// Every mesh-identity replica's report (locally: the one in the targets file, if
    /// any). `Err` entries name the replica that could not be read.
    pub async fn identity(&self) -> Vec<Result<IdentityState, String>> {
        match self {
            Fleet::Local { identity, http, .. } => match identity {
                None => Vec::new(),
                Some(addr) => vec![http_get(http, &format!("http://{addr}/metrics"))
                    .await
                    .map(|body| identity_state(&body))
                    .map_err(|e| format!("mesh-identity (unreachable: {e})"))],
            },
            Fleet::Kube { client, namespace } => {
                let pods = match component_pods(client, namespace, IDENTITY).await {
                    Ok(p) if p.is_empty() => {
                        return vec![Err(format!("mesh-identity (no pod in {namespace})"))]
                    }
                    Ok(p) => p,
                    Err(e) => return vec![Err(format!("mesh-identity ({e})"))],
                };
                join_all(pods.iter().map(|p| async move {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    kube_pods::port_get(
                        client,
                        namespace,
                        &name,
                        IDENTITY_ADMIN_PORT,
                        "/metrics",
                        READ_TIMEOUT,
                    )
                    .await
                    .map(|body| identity_state(&body))
                    .map_err(|e| format!("{namespace}/{name} (unreachable: {e})"))
                }))
                .await
            }
        }
    }
}

/// The running pods of control-plane component `name`.
async fn component_pods(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Vec<Pod>, String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().labels(&format!("{NAME_LABEL}={name}"));
    let list = api
        .list(&params)
        .await
        .map_err(|e| kube_pods::one_line(&e))?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_none_or(|phase| phase == "Running")
        })
        .collect())
}

async fn http_get(http: &HttpClient, url: &str) -> Result<String, String> {
    match tokio::time::timeout(READ_TIMEOUT, crate::http::get(http, url)).await {
        Ok(Ok((200, body))) => Ok(body),
        Ok(Ok((status, body))) => Err(format!("{url}: {status} {}", body.trim())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("{url}: no answer within {READ_TIMEOUT:?}")),
    }
}

fn holding(
    bundle: Result<String, String>,
    chain: Result<String, String>,
) -> Result<Holding, String> {
    Ok(Holding {
        anchors: pem_fingerprints(&bundle?).into_iter().collect(),
        leaf_issuer: pem_fingerprints(&chain?).into_iter().nth(1),
    })
}

/// Fingerprints of the certificates in `pem`, in order (unparseable blocks skipped).
pub fn pem_fingerprints(pem: &str) -> Vec<String> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|der| fingerprint(&der))
        .collect()
}

/// The bundle id and issuer expiry in mesh-identity's metrics text.
fn identity_state(metrics: &str) -> IdentityState {
    let mut state = IdentityState::default();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("mesh_identity_trust_bundle_info{bundle=\"") {
            state.bundle = rest.split('"').next().map(str::to_string);
        } else if let Some(rest) =
            line.strip_prefix("mesh_identity_issuer_expiry_timestamp_seconds ")
        {
            state.issuer_expiry = rest.trim().parse().ok();
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_metrics_are_read() {
        let text = "# HELP x\nmesh_identity_trust_bundle_info{bundle=\"0123abcd\"} 1\n\
                    mesh_identity_issuer_expiry_timestamp_seconds 1800000000\n";
        assert_eq!(
            identity_state(text),
            IdentityState {
                bundle: Some("0123abcd".into()),
                issuer_expiry: Some(1_800_000_000),
            }
        );
        assert_eq!(identity_state("junk"), IdentityState::default());
    }

    #[test]
    fn targets_split_into_members_and_identity() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let fleet = Fleet::local(&[
            Target::proxy(a, "demo", "api", "api-1"),
            Target::component(a, JOB_CONTROLLER),
            Target::component(a, JOB_IDENTITY),
            Target::component(a, "prometheus"),
        ]);
        let Fleet::Local {
            members, identity, ..
        } = &fleet
        else {
            unreachable!()
        };
        assert_eq!(members.len(), 2);
        assert!(identity.is_some());
        assert_eq!(members[0].0, "demo/api-1");
        assert_eq!(members[1].0, "mesh-controller");
    }

    #[test]
    fn a_member_that_cannot_be_read_says_why() {
        let h = holding(Err("refused".into()), Ok(String::new()));
        assert_eq!(h, Err("refused".to_string()));
    }
}
