//! Running against the Kubernetes API: the permissions the controller needs.

pub mod convert;
pub mod freshness;
pub mod rbac;
pub mod source;

/// The controller's Kubernetes clients (no built-in retry): `mesh_proto::kubernetes`.
pub use mesh_proto::kubernetes::{client, connect};
