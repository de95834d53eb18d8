//! Test support for the identity service's integration tests.

pub mod kube_api;
