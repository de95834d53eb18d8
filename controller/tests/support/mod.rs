//! A test PKI for the controller's gRPC server, which serves only mutual TLS: a trust
//! anchor and issuer, the controller's certificate, and client channels with workload
//! certificates.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_controller::index::IndexReader;
use mesh_controller::metrics::Metrics;
use mesh_identity::ca::{generate_issuer, generate_trust_anchor, Issuer};
use mesh_proto::workload::{certified_key, mtls_channel, server_config, CertStore, TrustBundle};
use tonic::transport::Channel;

/// The controller's SPIFFE ID in tests.
pub const CONTROLLER_ID: &str = "spiffe://cluster.local/ns/mesh-system/sa/mesh-controller";

/// A trust anchor and an issuer of `cluster.local`.
pub struct Pki {
    pub issuer: Issuer,
    pub anchors: String,
}

impl Pki {
    pub fn new() -> Self {
        let (anchor, anchor_key) = generate_trust_anchor("cluster.local").unwrap();
        let (cert, key) = generate_issuer(&anchor, &anchor_key, "cluster.local").unwrap();
        Pki {
            issuer: Issuer::load(&cert, &key, &anchor).unwrap(),
            anchors: anchor,
        }
    }

    /// A certificate store holding a certificate for `identity`.
    pub fn certs(&self, identity: &str) -> Arc<CertStore> {
        let (chain, key) = self
            .issuer
            .issue_serving_cert(&[], &[], identity, Duration::from_secs(3600))
            .unwrap();
        let certs = Arc::new(CertStore::default());
        certs.set(certified_key(&chain, &key).unwrap());
        certs
    }

    /// The controller's server TLS: its certificate, client certificates required.
    pub fn server_tls(&self) -> Arc<rustls::ServerConfig> {
        server_config(
            self.certs(CONTROLLER_ID),
            TrustBundle::from_pem(&self.anchors).unwrap(),
        )
        .unwrap()
    }

    /// A channel to the controller at `addr` as workload `identity`.
    pub fn channel(&self, addr: SocketAddr, identity: &str) -> Channel {
        mtls_channel(
            &addr.to_string(),
            self.certs(identity),
            TrustBundle::from_pem(&self.anchors).unwrap(),
            CONTROLLER_ID,
            Duration::from_secs(2),
        )
        .unwrap()
    }
}

/// Serves the controller's gRPC API from `index` on a loopback port with `pki`'s
/// certificate until `shutdown` completes; returns its address and the server task.
pub async fn serve(
    pki: &Pki,
    index: IndexReader,
    metrics: Arc<Metrics>,
    limits: mesh_controller::grpc::Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = pki.server_tls();
    let task = tokio::spawn(async move {
        mesh_controller::grpc::serve(
            listener,
            tls,
            "cluster.local",
            index,
            metrics,
            limits,
            shutdown,
        )
        .await
    });
    (addr, task)
}
