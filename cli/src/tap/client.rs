//! Tapping proxies: the tap credential (a certificate for the tap identity
//! and the trust anchors), the proxies to reach, and one stream per proxy,
//! merged.

use crate::stat::read_targets;
use anyhow::Context;
use mesh_proto::{
    tap::{tap_client::TapClient, Match, ObserveRequest, TapEvent},
    workload::{certified_key, mtls_channel_any_workload, CertStore, TrustBundle},
};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};
use tokio::sync::mpsc;

/// Where the proxies are and how to prove the tap identity.
#[derive(Clone, Debug, clap::Args)]
pub struct Source {
    /// The file-SD targets file listing the proxies (the one `mesh demo` writes);
    /// without it, the injected pods of the current kubeconfig's cluster, dialled
    /// at their pod IPs.
    #[arg(long, env = "MESH_TARGETS")]
    pub targets: Option<PathBuf>,
    /// The tap certificate chain (PEM) for the tap identity
    /// (spiffe://<td>/ns/mesh-system/sa/mesh-tap); default: tap/tap.crt next to
    /// the targets file.
    #[arg(long, env = "MESH_TAP_CERT")]
    pub tap_cert: Option<PathBuf>,
    /// Its private key (PEM); default: tap/tap.key next to the targets file.
    #[arg(long, env = "MESH_TAP_KEY")]
    pub tap_key: Option<PathBuf>,
    /// The trust anchors proxies' certificates chain to; default:
    /// identity/trust-anchors.pem next to the targets file.
    #[arg(long, env = "MESH_TRUST_ANCHORS")]
    pub trust_anchors: Option<PathBuf>,
    /// The proxies' admin port, dialled at each pod's IP (Kubernetes).
    #[arg(long, default_value_t = crate::kube_pods::ADMIN_PORT)]
    pub admin_port: u16,
}

/// The tap identity's certificate and the anchors.
pub struct Credentials {
    certs: Arc<CertStore>,
    bundle: Arc<TrustBundle>,
}

impl Source {
    fn default_path(
        &self,
        given: &Option<PathBuf>,
        rel: &str,
        flag: &str,
    ) -> anyhow::Result<PathBuf> {
        if let Some(p) = given {
            return Ok(p.clone());
        }
        let dir = self
            .targets
            .as_deref()
            .and_then(Path::parent)
            .ok_or_else(|| anyhow::anyhow!("give {flag} (no --targets file to find it next to)"))?;
        Ok(dir.join(rel))
    }

    /// Loads the tap credential.
    pub fn credentials(&self) -> anyhow::Result<Credentials> {
        let cert = self.default_path(&self.tap_cert, "tap/tap.crt", "--tap-cert")?;
        let key = self.default_path(&self.tap_key, "tap/tap.key", "--tap-key")?;
        let anchors = self.default_path(
            &self.trust_anchors,
            "identity/trust-anchors.pem",
            "--trust-anchors",
        )?;
        let read = |p: &Path| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        let key = certified_key(&read(&cert)?, &read(&key)?)
            .with_context(|| format!("the tap certificate {}", cert.display()))?;
        let certs = Arc::new(CertStore::default());
        certs.set(key);
        let bundle = TrustBundle::from_pem(&read(&anchors)?)
            .with_context(|| format!("the trust anchors {}", anchors.display()))?;
        Ok(Credentials { certs, bundle })
    }

    /// Every proxy: admin `host:port` and target labels.
    pub async fn proxies(
        &self,
        namespace: Option<&str>,
    ) -> anyhow::Result<Vec<(String, BTreeMap<String, String>)>> {
        if let Some(file) = &self.targets {
            return Ok(read_targets(file)?
                .into_iter()
                .map(|t| (t.addr, t.labels))
                .collect());
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = crate::kube_pods::client().await.map_err(|e| {
            anyhow::anyhow!(
                "no proxies: give --targets FILE (or MESH_TARGETS), or a kubeconfig ({e})"
            )
        })?;
        let pods = crate::kube_pods::injected(&client, namespace)
            .await
            .map_err(|e| anyhow::anyhow!("cannot list pods: {}", crate::kube_pods::one_line(&e)))?;
        Ok(pods
            .iter()
            .filter_map(|p| {
                let ip = p.status.as_ref()?.pod_ip.clone()?;
                let labels = BTreeMap::from([
                    ("namespace".to_string(), p.metadata.namespace.clone()?),
                    ("pod".to_string(), p.metadata.name.clone()?),
                    ("workload".to_string(), crate::kube_pods::workload(p)),
                ]);
                let port = self.admin_port;
                let addr = if ip.contains(':') {
                    format!("[{ip}]:{port}")
                } else {
                    format!("{ip}:{port}")
                };
                Some((addr, labels))
            })
            .collect())
    }
}

/// The largest event accepted from a proxy.
const MAX_EVENT: usize = 64 * 1024;
/// How long a proxy may take to accept a tap.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// An event and the proxy (pod) that saw it.
pub type Seen = (Arc<str>, TapEvent);

/// What a proxy said when its tap ended or failed.
pub type Ended = (Arc<str>, Result<(), String>);

/// Opens a tap on every proxy at once; events arrive on the first channel as
/// they come, and each proxy's end (or failure) on the second.
pub fn open(
    creds: &Credentials,
    proxies: &[(String, BTreeMap<String, String>)],
    filter: &Match,
    max_rps: u32,
    limit: u32,
) -> anyhow::Result<(mpsc::Receiver<Seen>, mpsc::Receiver<Ended>)> {
    let (tx, rx) = mpsc::channel(1024);
    let (end_tx, end_rx) = mpsc::channel(proxies.len().max(1));
    for (addr, labels) in proxies {
        let name: Arc<str> = labels
            .get("pod")
            .cloned()
            .unwrap_or_else(|| addr.clone())
            .into();
        let channel = mtls_channel_any_workload(
            addr,
            creds.certs.clone(),
            creds.bundle.clone(),
            Duration::from_secs(3),
        )
        .with_context(|| format!("proxy {addr}"))?;
        let req = ObserveRequest {
            limit,
            max_rps,
            r#match: Some(filter.clone()),
        };
        let (tx, end_tx) = (tx.clone(), end_tx.clone());
        tokio::spawn(async move {
            let r = observe(channel, req, &name, &tx).await;
            let _ = end_tx.send((name, r)).await;
        });
    }
    Ok((rx, end_rx))
}

async fn observe(
    channel: tonic::transport::Channel,
    req: ObserveRequest,
    name: &Arc<str>,
    tx: &mpsc::Sender<Seen>,
) -> Result<(), String> {
    // Events are small: a proxy that sends more is not a proxy to trust.
    let mut client = TapClient::new(channel).max_decoding_message_size(MAX_EVENT);
    let opened = tokio::time::timeout(OPEN_TIMEOUT, client.observe(req));
    let mut stream = tokio::select! {
        r = opened => match r {
            Ok(r) => r.map_err(|s| status_line(&s))?.into_inner(),
            Err(_) => return Err(format!("no answer within {OPEN_TIMEOUT:?}")),
        },
        // Nobody listens any more.
        () = tx.closed() => return Ok(()),
    };
    loop {
        let next = tokio::select! {
            m = stream.message() => m,
            // The reader is gone: dropping the stream closes the tap.
            () = tx.closed() => return Ok(()),
        };
        match next {
            Ok(Some(e)) => {
                if tx.send((name.clone(), e)).await.is_err() {
                    return Ok(());
                }
            }
            Ok(None) => return Ok(()),
            Err(s) => return Err(status_line(&s)),
        }
    }
}

/// A gRPC status in one line.
fn status_line(s: &tonic::Status) -> String {
    let mut m = format!("{:?}: {}", s.code(), s.message());
    if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Unknown {
        if let Some(src) = std::error::Error::source(s) {
            m.push_str(&format!(" ({src})"));
        }
    }
    m
}
