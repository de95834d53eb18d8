//! `--source kubernetes` (DESIGN §5): workloads prove their service account with a
//! projected token checked by TokenReview ([`token_review`]), the issuer comes from a
//! Secret and is reloaded when it changes ([`issuer_secret`]), and the trust anchors are
//! published as a ConfigMap in every namespace ([`trust_bundle`]). Of several replicas
//! only the leader elected over a Lease ([`lease`]) writes the ConfigMaps and Events.
//! [`rbac`] lists the permissions all of this needs.

pub mod anchors_file;
pub mod events;
pub mod issuer_secret;
pub mod lease;
pub mod rbac;
pub mod token_review;
pub mod trust_bundle;

pub use lease::LeaseSettings;
pub use rbac::{ApiRule, CLUSTER_RULES, NAMESPACE_RULES};
pub use token_review::TokenReviewer;

/// The identity service's Kubernetes clients (no built-in retry): `mesh_proto::kubernetes`.
pub use mesh_proto::kubernetes::{client, connect};

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ca::SharedIssuer;
use crate::metrics::Metrics;
use crate::server::Authenticator;

/// Audience of the projected ServiceAccount token workloads present. The same value as
/// `TOKEN_AUDIENCE` in `controller/src/inject/sidecar.rs` (the injector requests it).
pub const TOKEN_AUDIENCE: &str = "identity.mesh.dev";
/// The ConfigMap the trust bundle is published as. The same value as
/// `TRUST_ROOTS_VOLUME` in `controller/src/inject/mod.rs` (the injected proxy mounts it).
pub const TRUST_ROOTS_CONFIG_MAP: &str = "mesh-trust-roots";
/// The key of the bundle in [`TRUST_ROOTS_CONFIG_MAP`]. The same value as
/// `TRUST_BUNDLE_KEY` in `controller/src/inject/sidecar.rs`.
pub const TRUST_ROOTS_KEY: &str = "ca-bundle.pem";
/// Label marking the objects the identity service owns.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`] on them.
pub const MANAGED_BY: &str = "mesh-identity";
/// Namespaces that never get the trust bundle.
pub const EXCLUDED_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];
/// Default name of the issuer Secret (`--issuer-secret`).
pub const DEFAULT_ISSUER_SECRET: &str = "mesh-identity-issuer";
/// Default control-plane namespace (`--namespace`, else `POD_NAMESPACE`).
pub const DEFAULT_NAMESPACE: &str = "mesh-system";
/// Key of the issuer certificate in the Secret.
pub const ISSUER_CERT_KEY: &str = "tls.crt";
/// Key of the issuer private key in the Secret.
pub const ISSUER_KEY_KEY: &str = "tls.key";
/// How long startup waits for a valid issuer by default.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why Kubernetes mode could not start.
#[derive(Debug, Error)]
pub enum KubeError {
    /// No valid issuer arrived from the Secret in time.
    #[error("no valid issuer in Secret {namespace}/{name} within {waited:?}: {reason}")]
    NoIssuer {
        /// The control-plane namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// How long startup waited.
        waited: Duration,
        /// The last problem seen.
        reason: String,
    },
}

/// What Kubernetes mode needs besides the client.
#[derive(Clone, Debug)]
pub struct KubeSettings {
    /// The control-plane namespace (the issuer Secret, the Lease and Events live there).
    pub namespace: String,
    /// The issuer Secret's name.
    pub issuer_secret: String,
    /// The trust anchors (PEM): issuers must chain to them; published as the bundle.
    pub trust_anchors_pem: String,
    /// The file they were read from (a ConfigMap volume), watched: a new bundle is
    /// checked against the issuer and published. `None`: fixed.
    pub trust_anchors_file: Option<std::path::PathBuf>,
    /// How long to wait for the first valid issuer.
    pub startup_timeout: Duration,
    /// Leader election: who this replica is, and the Lease timings.
    pub lease: LeaseSettings,
}

/// Kubernetes mode, running: the issuer handle and authenticator the service uses, and
/// the watch tasks (stopped when this is dropped).
#[derive(Debug)]
pub struct KubeMode {
    /// The issuer, swapped when the Secret changes.
    pub issuer: SharedIssuer,
    /// TokenReview authentication.
    pub authenticator: Arc<dyn Authenticator>,
    /// True while this replica is the leader (the only one writing); see
    /// [`lease::is_leader`].
    pub leader: watch::Receiver<bool>,
    tasks: Vec<JoinHandle<()>>,
    release: lease::Release,
}

impl KubeMode {
    /// Stepping down (the process is stopping): the leader hands its Lease back at
    /// once, so that another replica takes over the writes without waiting for the lease
    /// to expire. Waits for that (at most `within`).
    pub async fn step_down(&mut self, within: std::time::Duration) {
        self.release.release();
        if let Some(elect) = self.tasks.first_mut() {
            let _ = tokio::time::timeout(within, elect).await;
        }
    }

    /// The handle that steps down, for a shutdown path that cannot await.
    pub fn release_handle(&self) -> lease::Release {
        self.release.clone()
    }
}

impl Drop for KubeMode {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts Kubernetes mode: starts the leader election, waits for the first valid issuer
/// from the Secret, then keeps watching it, and starts the trust-bundle publisher.
/// Before returning it also waits (within the startup timeout) for the first election
/// round, so that a lone replica writes from the start; serving does not depend on it.
pub async fn start(
    client: Client,
    settings: KubeSettings,
    metrics: Arc<Metrics>,
) -> Result<KubeMode, KubeError> {
    let bundle = settings.trust_anchors_pem.trim().to_string() + "\n";
    let (anchors_tx, anchors) = watch::channel(bundle.clone());
    let anchors_watch = settings
        .trust_anchors_file
        .map(|path| tokio::spawn(anchors_file::watch(path, anchors_tx, anchors_file::POLL)));
    let (leader, elect, release) = lease::start_releasable(
        client.clone(),
        &settings.namespace,
        settings.lease,
        metrics.clone(),
    );
    let events = events::EventRecorder::new(client.clone(), leader.clone());
    let source = issuer_secret::IssuerSource {
        namespace: settings.namespace,
        name: settings.issuer_secret,
        anchors: anchors.clone(),
    };
    let started = issuer_secret::start(
        client.clone(),
        source,
        events,
        metrics,
        settings.startup_timeout,
    )
    .await;
    let (issuer, watch) = match started {
        Ok(started) => started,
        Err(e) => {
            elect.abort();
            if let Some(w) = anchors_watch {
                w.abort();
            }
            return Err(e);
        }
    };
    let mut first_round = leader.clone();
    // Either way (leader or not, or no answer in time), the replica serves.
    let _ = tokio::time::timeout(settings.startup_timeout, first_round.changed()).await;
    let publish = tokio::spawn(trust_bundle::run(client.clone(), anchors, leader.clone()));
    let mut tasks = vec![elect, watch, publish];
    tasks.extend(anchors_watch);
    Ok(KubeMode {
        issuer,
        authenticator: Arc::new(TokenReviewer::new(client)),
        leader,
        tasks,
        release,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The injector (`controller/src/inject/mod.rs`, `controller/src/inject/sidecar.rs`)
    /// mounts ConfigMap `mesh-trust-roots`, key `ca-bundle.pem`, and projects a token
    /// for audience `identity.mesh.dev`; the crates do not depend on each other, so the
    /// literals are pinned here.
    #[test]
    fn names_match_the_injector() {
        assert_eq!(TRUST_ROOTS_CONFIG_MAP, "mesh-trust-roots");
        assert_eq!(TRUST_ROOTS_KEY, "ca-bundle.pem");
        assert_eq!(TOKEN_AUDIENCE, "identity.mesh.dev");
    }
}
