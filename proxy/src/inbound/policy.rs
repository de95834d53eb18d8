//! The inbound policy of each application port: one `InboundPolicy.Watch`
//! stream per port, started when the port sees its first connection and
//! evicted a minute after its last connection closed (so connections to
//! many ports, say a port scan, do not pile up streams). Each message is
//! compiled once ([`ServerAuthz::compile`]) and published through a watch,
//! so connections read the current policy per request and a change applies
//! to the next request on every open connection. The last policy stays in
//! force while the controller is away.

use super::authz::{DefaultPolicy, ServerAuthz};
use crate::{
    discovery::{cache, reconnect},
    metrics::{ControlLabels, Metrics},
};
use mesh_proto::policy::{inbound_policy_client::InboundPolicyClient, InboundTarget, ServerPolicy};
use std::{sync::Arc, time::Duration};
use tokio::{sync::watch, time::Instant};
use tonic::transport::Channel;

/// The current policy of one port, held by each connection to it.
#[derive(Clone)]
pub struct PortPolicy {
    rx: watch::Receiver<Arc<ServerAuthz>>,
    /// When the watch started (its first answer is awaited once, from then).
    started: Instant,
    /// Shared by every holder: the cache keeps the watch while any is alive.
    users: Arc<()>,
}

impl cache::Handle for PortPolicy {
    fn users(&self) -> &Arc<()> {
        &self.users
    }
}

impl PortPolicy {
    /// The policy now.
    pub fn current(&self) -> Arc<ServerAuthz> {
        self.rx.borrow().clone()
    }

    /// The policy now, marking it seen for [`PortPolicy::changed`].
    pub fn current_and_update(&mut self) -> Arc<ServerAuthz> {
        self.rx.borrow_and_update().clone()
    }

    /// Waits for the next policy; never returns once the watch is gone.
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

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
    ports: cache::WatchCache<PortPolicy>,
    /// The watches of the declared ports, held so they are never evicted.
    declared: std::sync::Mutex<Vec<PortPolicy>>,
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
            ports: cache::WatchCache::new(cache::DEFAULT_IDLE, cache::DEFAULT_MAX),
            declared: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The policy of `port`. Until the controller first answers (waited
    /// for at most `first_timeout` after the watch started, so only the
    /// first connections wait) the default policy applies.
    pub async fn get(&self, port: u16) -> PortPolicy {
        let policy = self.watch(port);
        if !policy.rx.borrow().received {
            let mut rx = policy.rx.clone();
            let until = policy.started + self.first_timeout;
            let first = rx.wait_for(|p| p.received);
            if tokio::time::timeout_at(until, first).await.is_err()
                && Instant::now() < until + Duration::from_millis(100)
            {
                tracing::warn!(
                    port,
                    default = self.default.name(),
                    "no inbound policy from the controller in time; using the default"
                );
            }
        }
        policy
    }

    /// Starts (and keeps) the watches of the application's declared ports.
    pub fn prefetch(&self, ports: &[u16]) {
        let held: Vec<PortPolicy> = ports.iter().map(|p| self.watch(*p)).collect();
        match self.declared.lock() {
            Ok(mut d) => d.extend(held),
            Err(p) => p.into_inner().extend(held),
        }
    }

    fn watch(&self, port: u16) -> PortPolicy {
        self.ports.get_or_start(&port.to_string(), || {
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
            PortPolicy {
                rx,
                started: Instant::now(),
                users: Arc::new(()),
            }
        })
    }
}

/// Keeps the watch of one port alive until its last holder is gone.
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
    let closed = tx.closed();
    reconnect::run("inbound policy", &name, open, on_message, closed, gauge).await;
}
