//! The control-plane APIs shared by the proxy, the controller and the
//! identity service (DESIGN §4).

pub mod codec;

pub mod destination {
    tonic::include_proto!("mesh.destination.v1");
}

pub mod policy {
    tonic::include_proto!("mesh.policy.v1");
}

pub mod identity {
    tonic::include_proto!("mesh.identity.v1");
}

pub mod tap {
    tonic::include_proto!("mesh.tap.v1");
}

#[cfg(feature = "net")]
pub mod net;

#[cfg(feature = "workload")]
pub mod workload;

#[cfg(feature = "server")]
pub mod server;

#[cfg(feature = "kubernetes")]
pub mod kubernetes;
