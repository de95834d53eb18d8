//! Test support shared by the controller's integration tests.

pub mod kube_api;
