//! The mesh controller: sources (a directory of manifests, or Kubernetes) feed one
//! index of resources, and gRPC servers stream endpoints and policies computed from it to
//! the proxies (DESIGN §1, §4, §5).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod crds;
pub mod grpc;
pub mod index;
pub mod inject;
pub mod kubernetes;
pub mod metrics;
pub mod resources;
pub mod source;
pub mod webhook;
