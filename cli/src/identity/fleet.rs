//! What the running mesh trusts and holds, read from the admin endpoints the targets
//! file lists: every proxy's and the controller's `/trust-bundle` (the anchors in
//! force) and `/certificate` (the chain they present), and mesh-identity's `/metrics`
//! (the bundle it checks issuers against, and its issuer's expiry).

use std::collections::BTreeSet;
use std::time::Duration;

use futures::future::join_all;
use mesh_proto::workload::fingerprint;
use rustls::pki_types::{pem::PemObject, CertificateDer};

use crate::file_sd::{Target, JOB_CONTROLLER, JOB_IDENTITY, JOB_PROXY};
use crate::http::{client, HttpClient};

/// One workload's trust and certificate, or why it could not be read.
#[derive(Clone, Debug)]
pub struct Member {
    /// `namespace/pod` for proxies, `mesh-controller` for the controller.
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

/// What mesh-identity reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityState {
    /// The id of the bundle its issuer was checked against.
    pub bundle: Option<String>,
    /// Its issuer's `notAfter`, Unix seconds.
    pub issuer_expiry: Option<u64>,
}

/// The workloads to watch and mesh-identity's admin address.
#[derive(Clone, Debug)]
pub struct Fleet {
    members: Vec<(String, std::net::SocketAddr)>,
    identity: Option<std::net::SocketAddr>,
    http: HttpClient,
}

impl Fleet {
    /// The proxies and controller in `targets`, and mesh-identity.
    pub fn new(targets: &[Target]) -> Self {
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
        Self {
            members,
            identity,
            http: client(),
        }
    }

    /// How many workloads are watched.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether mesh-identity is in the targets.
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// Reads every workload, in parallel.
    pub async fn read(&self) -> Vec<Member> {
        join_all(self.members.iter().map(|(name, addr)| async move {
            Member {
                name: name.clone(),
                state: read_member(&self.http, *addr).await,
            }
        }))
        .await
    }

    /// Reads mesh-identity's metrics.
    pub async fn identity(&self) -> Result<IdentityState, String> {
        let Some(addr) = self.identity else {
            return Ok(IdentityState::default());
        };
        let body = get(&self.http, &format!("http://{addr}/metrics")).await?;
        Ok(identity_state(&body))
    }
}

async fn get(http: &HttpClient, url: &str) -> Result<String, String> {
    let fetch = crate::http::get(http, url);
    match tokio::time::timeout(Duration::from_secs(3), fetch).await {
        Ok(Ok((200, body))) => Ok(body),
        Ok(Ok((status, body))) => Err(format!("{url}: {status} {}", body.trim())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("{url}: no answer within 3 s")),
    }
}

async fn read_member(http: &HttpClient, addr: std::net::SocketAddr) -> Result<Holding, String> {
    let bundle = get(http, &format!("http://{addr}/trust-bundle")).await?;
    let chain = get(http, &format!("http://{addr}/certificate")).await?;
    Ok(Holding {
        anchors: pem_fingerprints(&bundle).into_iter().collect(),
        leaf_issuer: pem_fingerprints(&chain).into_iter().nth(1),
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
        let a: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let fleet = Fleet::new(&[
            Target::proxy(a, "demo", "api", "api-1"),
            Target::component(a, JOB_CONTROLLER),
            Target::component(a, JOB_IDENTITY),
            Target::component(a, "prometheus"),
        ]);
        assert_eq!(fleet.len(), 2);
        assert!(fleet.has_identity());
        assert_eq!(fleet.members[0].0, "demo/api-1");
        assert_eq!(fleet.members[1].0, "mesh-controller");
    }
}
