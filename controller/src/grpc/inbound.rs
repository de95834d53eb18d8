//! The `InboundPolicy` gRPC service: the server-side policy of a workload port, compiled
//! from the AuthorizationPolicies that apply to it ([`Index::server_policy`]): their mTLS
//! mode and their rules. A port no policy selects gets [`default_server_policy`] (detect
//! the protocol; the proxy's default inbound policy decides the rest). The stream sends a
//! complete policy first and then again whenever an index change alters it.

use std::pin::Pin;

use futures::Stream;
use mesh_proto::policy::{inbound_policy_server::InboundPolicy, InboundTarget, ServerPolicy};
use tonic::{Request, Response, Status};

use crate::index::{Index, IndexReader, Interest};
use crate::metrics::{Api, ApiMetrics, Metrics, StreamMetrics};

pub use crate::index::default_server_policy;

/// The `InboundPolicy` service, answering from the index.
#[derive(Clone, Debug)]
pub struct InboundPolicyService {
    index: IndexReader,
    metrics: ApiMetrics,
}

impl InboundPolicyService {
    /// A service reading `index`, counting its streams in `metrics`.
    pub fn new(index: IndexReader, metrics: &Metrics) -> Self {
        Self {
            index,
            metrics: metrics.api(Api::Inbound),
        }
    }
}

/// The longest `namespace/name` a Watch may name.
const MAX_WORKLOAD_LEN: usize = 63 + 1 + 253;

/// The state of a `Watch` stream between messages.
struct WatchState {
    index: IndexReader,
    /// Woken by the changes that concern the workload.
    topic: tokio::sync::watch::Receiver<()>,
    /// `namespace/name` of the workload.
    workload: String,
    port: u16,
    last: Option<ServerPolicy>,
    metrics: StreamMetrics,
}

/// The policy of `port` on `workload` (`namespace/name`). A workload without a namespace
/// matches no resource: it gets the default policy.
fn server_policy(index: &Index, workload: &str, port: u16) -> ServerPolicy {
    match workload.split_once('/') {
        Some((namespace, name)) => index.server_policy(namespace, name, port),
        None => default_server_policy(),
    }
}

#[tonic::async_trait]
impl InboundPolicy for InboundPolicyService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<ServerPolicy, Status>> + Send>>;

    async fn watch(
        &self,
        req: Request<InboundTarget>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let InboundTarget { workload, port } = req.into_inner();
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                self.metrics.invalid_target();
                Status::invalid_argument(format!("invalid port {port} for {workload:?}"))
            })?;
        // `namespace/name`: at most a namespace (63) and a pod name (253); a longer one
        // names nothing and would only take memory.
        if workload.len() > MAX_WORKLOAD_LEN {
            self.metrics.invalid_target();
            return Err(Status::invalid_argument(format!(
                "workload name of {} bytes (at most {MAX_WORKLOAD_LEN})",
                workload.len()
            )));
        }
        tracing::debug!(%workload, port, "InboundPolicy.Watch");
        let known = workload
            .split_once('/')
            .is_some_and(|(ns, name)| self.index.borrow().workload_ports(ns, name).is_some());
        if !known {
            // Until the workload appears, only namespace-wide policies apply.
            tracing::warn!(
                %workload,
                port,
                "InboundPolicy.Watch for a workload the index does not know (yet)"
            );
        }
        let state = WatchState {
            topic: self.index.topic(Interest::of_workload(&workload)),
            index: self.index.clone(),
            workload,
            port,
            last: None,
            metrics: self.metrics.stream_opened(),
        };
        let stream = futures::stream::unfold(state, |mut st| async move {
            let mut changed_at = None;
            loop {
                if st.last.is_some() {
                    st.topic.changed().await.ok()?; // the source stopped: end the stream
                }
                let policy = {
                    let index = st.index.borrow();
                    if st.last.is_some() {
                        changed_at = st.metrics.index_changed_at();
                    }
                    server_policy(&index, &st.workload, st.port)
                };
                if st.last.as_ref() != Some(&policy) {
                    st.metrics.sent(changed_at);
                    st.last = Some(policy.clone());
                    return Some((Ok(policy), st));
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
