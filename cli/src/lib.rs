//! The library half of the `mesh` command line: the subcommands whose logic is tested
//! without spawning the binary (golden tests in `cli/tests/`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod authz;
pub mod check;
pub mod dashboard;
pub mod edges;
pub mod file_sd;
mod http;
pub mod identity;
pub mod inject;
pub mod install;
pub mod kube_pods;
pub mod stat;
pub mod tap;
pub mod top;
