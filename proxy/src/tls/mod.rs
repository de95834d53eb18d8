//! Mutual TLS between proxies, and to the controller: the workload's current
//! certificate, the trust bundle (reloaded live), and rustls configurations that check
//! SPIFFE IDs (URI SANs). The pieces live in `mesh_proto::workload`, shared
//! with the controller.

pub use mesh_proto::workload::{
    client_config, provider, server_config, server_name, spiffe, CertStore, TlsError, TrustBundle,
};
