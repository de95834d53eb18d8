//! One `Destination.GetPolicy` stream per target. Each message is a full
//! snapshot; it is compiled once (regexes, backend watches) by the caller's
//! `compile` function and published to every request through a watch. The
//! last compiled policy stays in force while the controller is away.

use crate::metrics::{ControlLabels, Metrics};
use mesh_proto::destination::{
    destination_client::DestinationClient, GetDestination, ServicePolicy,
};
use std::{sync::Arc, time::Duration};
use tokio::sync::watch;
use tonic::transport::Channel;

/// Turns a policy snapshot into the form requests use.
pub type Compile<P> = Arc<dyn Fn(&str, ServicePolicy) -> P + Send + Sync>;

/// Runs the policy watch for `target` until every reader is gone.
pub(super) async fn run<P: Send + Sync + 'static>(
    mut client: DestinationClient<Channel>,
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
    let mut failures = 0u32;
    loop {
        let req = GetDestination {
            target: target.clone(),
            context: context.clone(),
        };
        let stream = tokio::select! {
            r = client.get_policy(req) => r,
            _ = tx.closed() => return,
        };
        match stream {
            Ok(rsp) => {
                gauge.inc();
                let mut stream = rsp.into_inner();
                loop {
                    let msg = tokio::select! {
                        m = stream.message() => m,
                        _ = tx.closed() => { gauge.dec(); return; }
                    };
                    match msg {
                        Ok(Some(policy)) => {
                            failures = 0;
                            if last.as_ref() == Some(&policy) {
                                continue;
                            }
                            tracing::debug!(%target, routes = policy.routes.len(), "policy update");
                            let compiled = compile(&target, policy.clone());
                            last = Some(policy);
                            tx.send_replace(Some(Arc::new(compiled)));
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::warn!(%target, code = ?status.code(), message = status.message(), "policy stream failed; keeping the last policy");
                            break;
                        }
                    }
                }
                gauge.dec();
            }
            Err(status) => {
                tracing::warn!(%target, code = ?status.code(), message = status.message(), "policy unreachable; keeping the last policy");
            }
        }
        failures += 1;
        let wait = Duration::from_millis(100u64 << failures.min(5)).min(Duration::from_secs(3));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tx.closed() => return,
        }
    }
}
