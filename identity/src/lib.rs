//! The mesh certificate authority (DESIGN §1, §5): authenticates workloads by
//! token, signs their SPIFFE certificates from CSRs, and serves `Certify` over
//! TLS. Two sources: local (files and `mesh token` tokens) and [`kubernetes`]
//! (TokenReview, an issuer Secret, a published trust bundle). The binary in
//! `main.rs` only parses flags, starts a source and calls [`server::serve`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod ca;
pub mod duration;
pub mod files;
pub mod issuer_files;
pub mod kubernetes;
pub mod metrics;
pub mod server;
pub mod spiffe;
pub mod token;

/// Installs rustls' `ring` crypto provider as the process default.
///
/// Idempotent: a provider that is already installed (ours or another) is kept.
pub fn install_crypto_provider() {
    // An Err only means a default provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
