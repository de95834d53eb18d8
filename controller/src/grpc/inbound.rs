//! The `InboundPolicy` gRPC service: the server-side policy of a workload port. For now
//! every port gets the default policy (detect the protocol, strict mTLS, allow); the stream
//! stays open so later policy resources can push changes.

use std::pin::Pin;

use futures::Stream;
use mesh_proto::policy::{
    inbound_policy_server::InboundPolicy, Action, InboundTarget, Protocol, ServerPolicy, TlsMode,
};
use tonic::{Request, Response, Status};

use crate::index::{Index, IndexReader};

/// The `InboundPolicy` service, answering from the index.
#[derive(Clone, Debug)]
pub struct InboundPolicyService {
    index: IndexReader,
}

impl InboundPolicyService {
    /// A service reading `index`.
    pub fn new(index: IndexReader) -> Self {
        Self { index }
    }
}

/// The policy of a port no resource selects.
pub fn default_server_policy() -> ServerPolicy {
    ServerPolicy {
        protocol: Protocol::Detect.into(),
        tls_mode: TlsMode::Strict.into(),
        authorizations: Vec::new(),
        default_action: Action::Allow.into(),
        labels: Default::default(),
    }
}

/// The policy of `port` on `workload` (`namespace/name`).
fn server_policy(_index: &Index, _workload: &str, _port: u16) -> ServerPolicy {
    default_server_policy()
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
                Status::invalid_argument(format!("invalid port {port} for {workload:?}"))
            })?;
        tracing::debug!(%workload, port, "InboundPolicy.Watch");
        let state = (self.index.clone(), workload, None::<ServerPolicy>);
        let stream =
            futures::stream::unfold(state, move |(mut index, workload, last)| async move {
                let mut first = last.is_none();
                loop {
                    if !first {
                        index.changed().await.ok()?; // the source stopped: end the stream
                    }
                    first = false;
                    let policy = server_policy(&index.borrow_and_update(), &workload, port);
                    if last.as_ref() != Some(&policy) {
                        return Some((Ok(policy.clone()), (index, workload, Some(policy))));
                    }
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }
}
