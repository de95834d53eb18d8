//! The controller's gRPC server: `mesh.destination.v1.Destination` and
//! `mesh.policy.v1.InboundPolicy`, both answering only from the index, never from a source.

pub mod destination;
pub mod inbound;

use std::future::Future;
use std::sync::Arc;

use mesh_proto::destination::destination_server::DestinationServer;
use mesh_proto::policy::inbound_policy_server::InboundPolicyServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::index::IndexReader;
use crate::metrics::Metrics;

pub use self::destination::DestinationService;
pub use self::inbound::{default_server_policy, InboundPolicyService};

/// Serves both services on `listener` until `shutdown` completes and the open streams end
/// (they end when the index writer is dropped or the clients leave). Streams, updates and
/// invalid targets are counted in `metrics`.
pub async fn serve(
    listener: TcpListener,
    index: IndexReader,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(DestinationServer::new(DestinationService::new(
            index.clone(),
            &metrics,
        )))
        .add_service(InboundPolicyServer::new(InboundPolicyService::new(
            index, &metrics,
        )))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
