//! The inbound policy of each application port: one `InboundPolicy.Watch`
//! stream per port, started when the port sees its first connection and
//! kept for the proxy's life (a workload has few ports). Each message is
//! compiled once ([`ServerAuthz::compile`]) and published through a watch,
//! so connections read the current policy per request and a change applies
//! to the next request on every open connection. The last policy stays in
//! force while the controller is away.

use super::authz::{DefaultPolicy, ServerAuthz};
use crate::{
    discovery::reconnect,
    metrics::{ControlLabels, Metrics},
};
use mesh_proto::policy::{inbound_policy_client::InboundPolicyClient, InboundTarget, ServerPolicy};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::watch;
use tonic::transport::Channel;

/// The current policy of one port.
pub type PortPolicy = watch::Receiver<Arc<ServerAuthz>>;

/// The policies of this workload's ports.
pub struct InboundPolicies {
    client: InboundPolicyClient<Channel>,
    /// `namespace/name` as the controller knows the workload.
    workload: String,
    default: DefaultPolicy,
    metrics: Arc<Metrics>,
    /// How long a port's first connection waits for the controller before
    /// the default policy is used.
    first_timeout: Duration,
    ports: Mutex<HashMap<u16, PortPolicy>>,
}

impl InboundPolicies {
    pub fn new(
        channel: Channel,
        workload: String,
        default: DefaultPolicy,
        metrics: Arc<Metrics>,
        first_timeout: Duration,
    ) -> Self {
        let _ = metrics.control_connected.get_or_create(&ControlLabels {
            component: "inbound_policy",
        });
        InboundPolicies {
            client: InboundPolicyClient::new(channel),
            workload,
            default,
            metrics,
            first_timeout,
            ports: Mutex::new(HashMap::new()),
        }
    }

    /// The policy of `port`, waiting (once per port, bounded) for the
    /// controller's first answer; without one the default policy applies
    /// until it arrives.
    pub async fn get(&self, port: u16) -> PortPolicy {
        let mut rx = self.watch(port);
        if !rx.borrow().received {
            let first = rx.wait_for(|p| p.received);
            if tokio::time::timeout(self.first_timeout, first)
                .await
                .is_err()
            {
                tracing::warn!(
                    port,
                    default = self.default.name(),
                    "no inbound policy from the controller in time; using the default"
                );
            }
        }
        rx
    }

    fn watch(&self, port: u16) -> PortPolicy {
        let mut ports = match self.ports.lock() {
            Ok(p) => p,
            Err(p) => p.into_inner(),
        };
        ports
            .entry(port)
            .or_insert_with(|| {
                let placeholder = ServerAuthz::compile(None, self.default, &self.metrics);
                let (tx, rx) = watch::channel(Arc::new(placeholder));
                tokio::spawn(run(
                    self.client.clone(),
                    InboundTarget {
                        workload: self.workload.clone(),
                        port: u32::from(port),
                    },
                    self.default,
                    tx,
                    self.metrics.clone(),
                ));
                rx
            })
            .clone()
    }
}

/// Keeps the watch of one port alive for the proxy's life.
async fn run(
    client: InboundPolicyClient<Channel>,
    target: InboundTarget,
    default: DefaultPolicy,
    tx: watch::Sender<Arc<ServerAuthz>>,
    metrics: Arc<Metrics>,
) {
    let gauge = metrics
        .control_connected
        .get_or_create_owned(&ControlLabels {
            component: "inbound_policy",
        });
    let name = format!("{}:{}", target.workload, target.port);
    let mut last: Option<ServerPolicy> = None;
    let open = || {
        let mut client = client.clone();
        let target = target.clone();
        async move { client.watch(target).await }
    };
    let on_message = |policy: ServerPolicy, _first: bool| {
        if last.as_ref() == Some(&policy) {
            return;
        }
        tracing::info!(
            target = %name,
            policies = policy.policies.len(),
            tls_mode = ?policy.tls_mode(),
            "inbound policy update"
        );
        let compiled = ServerAuthz::compile(Some(&policy), default, &metrics);
        last = Some(policy);
        tx.send_replace(Arc::new(compiled));
    };
    // The sender is never dropped by readers going away (ports are kept),
    // so this runs until the process ends.
    let never = std::future::pending::<()>();
    reconnect::run("inbound policy", &name, open, on_message, never, gauge).await;
}
