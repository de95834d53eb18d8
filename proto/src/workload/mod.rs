//! A workload's identity (feature `workload`): a key generated in memory and
//! its CSR, `Certify` calls to the identity service with renewal, the current
//! certificate for rustls, and mutual-TLS configurations that check SPIFFE
//! IDs rather than DNS names. The proxy and the controller (itself a
//! workload of the mesh) share it.

mod bundle;
mod certify;
mod certs;
mod channel;
mod client;
mod csr;
mod server;
pub mod spiffe;

pub use bundle::{
    fingerprint, renewal_directive, to_pem, watch_file, Anchor, Bundle, Reload, Renewal,
    TrustBundle, MAX_ANCHORS,
};
pub use certify::{
    backoff, renew_after, renewal_loop, Certifier, CertifyError, IdentityClient, Issued,
    TokenSource,
};
pub use certs::{certified_key, provider, CertStore, TlsError};
pub use channel::mtls_channel;
pub use client::{client_config, server_auth_config, server_name};
pub use csr::LocalKey;
pub use server::server_config;
