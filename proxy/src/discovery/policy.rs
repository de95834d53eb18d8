//! One `Destination.GetPolicy` stream per target. Each message is a full
//! snapshot; it is compiled once (regexes, backend watches) by the caller's
//! `compile` function and published to every request through a watch. The
//! last compiled policy stays in force while the controller is away.

use crate::metrics::{ControlLabels, Metrics};
use mesh_proto::destination::{
    destination_client::DestinationClient, GetDestination, ServicePolicy,
};
use std::sync::Arc;
use tokio::sync::watch;
use tonic::transport::Channel;

/// Turns a policy snapshot into the form requests use.
pub type Compile<P> = Arc<dyn Fn(&str, ServicePolicy) -> P + Send + Sync>;

/// Runs the policy watch for `target` until every reader is gone.
pub(super) async fn run<P: Send + Sync + 'static>(
    client: DestinationClient<Channel>,
    target: String,
    context: String,
    compile: Compile<P>,
    tx: watch::Sender<Option<Arc<P>>>,
    metrics: Arc<Metrics>,
) {
    let gauge = metrics
        .control_connected
        .get_or_create_owned(&ControlLabels {
            component: "policy",
        });
    let mut last: Option<ServicePolicy> = None;
    let open = || {
        let mut client = client.clone();
        let req = GetDestination {
            target: target.clone(),
            context: context.clone(),
        };
        async move { client.get_policy(req).await }
    };
    let on_message = |policy: ServicePolicy, _first: bool| {
        // Every message is a full snapshot; identical ones change nothing.
        if last.as_ref() == Some(&policy) {
            return;
        }
        tracing::debug!(%target, routes = policy.routes.len(), "policy update");
        let compiled = compile(&target, policy.clone());
        last = Some(policy);
        tx.send_replace(Some(Arc::new(compiled)));
    };
    super::reconnect::run("policy", &target, open, on_message, tx.closed(), gauge).await;
}
