//! Running against the Kubernetes API: the permissions the controller needs.

pub mod convert;
pub mod rbac;
pub mod source;
