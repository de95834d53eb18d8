//! The controller's gRPC server: `mesh.destination.v1.Destination` and
//! `mesh.policy.v1.InboundPolicy`, both answering only from the index, never from a source.
//! Served over mutual TLS only: every caller presents a workload certificate of the
//! mesh's trust domain (no anonymous reads of endpoints, identities or policy), with
//! connection, stream and idle limits (`mesh_proto::server`).

pub mod destination;
pub mod inbound;

use std::future::Future;
use std::sync::Arc;

use mesh_proto::destination::destination_server::DestinationServer;
use mesh_proto::policy::inbound_policy_server::InboundPolicyServer;
use tokio::net::TcpListener;

use crate::index::IndexReader;
use crate::metrics::Metrics;

pub use self::destination::DestinationService;
pub use self::inbound::{default_server_policy, InboundPolicyService};
pub use mesh_proto::server::Limits;

/// Serves both services on `listener` with `tls` (which must require client
/// certificates) until `shutdown` completes and the open streams end (they end when the
/// index writer is dropped or the clients leave). Callers outside `trust_domain` are
/// refused. Streams, updates and invalid targets are counted in `metrics`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    trust_domain: &str,
    index: IndexReader,
    metrics: Arc<Metrics>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let routes = tonic::service::Routes::new(DestinationServer::new(DestinationService::new(
        index.clone(),
        &metrics,
    )))
    .add_service(InboundPolicyServer::new(InboundPolicyService::new(
        index, &metrics,
    )));
    mesh_proto::server::serve(
        listener,
        tls,
        routes,
        limits,
        Some(trust_domain.to_string()),
        shutdown,
    )
    .await
}
