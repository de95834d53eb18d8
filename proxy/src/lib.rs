//! mesh-proxy: the data plane. The tree follows the request path:
//! `outbound` (app → discovery → endpoint over mTLS) and `inbound`
//! (mTLS → transport header → app), with `tls`, `identity`, `discovery`,
//! `admin` and `metrics` as the shared pieces.

#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod body;
pub mod config;
pub mod connect;
pub mod detect;
pub mod discovery;
pub mod errors;
pub mod grpc_status;
pub mod identity;
pub mod inbound;
pub mod init;
pub mod log_writer;
pub mod metered;
pub mod metrics;
pub mod orig_dst;
pub mod outbound;
pub mod process;
pub mod request_check;
pub mod serve;
pub mod tap;
pub mod tls;
pub mod trace;
pub mod transport_header;
pub mod upgrade;
