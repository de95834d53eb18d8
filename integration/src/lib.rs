//! Helpers for the end-to-end tests: start the real binaries (identity,
//! controller, proxies) on loopback ports, run small in-process applications
//! behind them, and drive HTTP/1.1, HTTP/2, gRPC and raw TCP through them;
//! run the real `prometheus` on them and read the Grafana dashboards.

pub mod apps;
pub mod client;
pub mod control_plane;
pub mod fixture;
pub mod grafana;
pub mod netns;
pub mod process;
pub mod prometheus;
pub mod tls;

pub use fixture::{Mesh, Proxy};
