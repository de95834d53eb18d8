//! Running against the Kubernetes API: the permissions the controller needs.

pub mod rbac;
