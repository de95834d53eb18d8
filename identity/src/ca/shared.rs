//! The issuer currently signing, swappable while the service runs: readers take an
//! `Arc<Issuer>` snapshot (a signing call finishes with the issuer it started with), a
//! reload replaces it for every later call.

use std::sync::{Arc, RwLock};

use super::Issuer;

/// A cheaply clonable handle to the current issuer.
#[derive(Debug, Clone)]
pub struct SharedIssuer(Arc<RwLock<Arc<Issuer>>>);

// === impl SharedIssuer ===

impl SharedIssuer {
    /// A handle whose current issuer is `issuer`.
    pub fn new(issuer: Arc<Issuer>) -> Self {
        Self(Arc::new(RwLock::new(issuer)))
    }

    /// The issuer signing now.
    pub fn current(&self) -> Arc<Issuer> {
        // A poisoned lock still holds a valid `Arc`: a panicking writer cannot leave
        // the pointer half-written.
        let guard = self.0.read().unwrap_or_else(|e| e.into_inner());
        Arc::clone(&guard)
    }

    /// Makes `issuer` sign every later request; returns the one it replaces.
    pub fn replace(&self, issuer: Arc<Issuer>) -> Arc<Issuer> {
        let mut guard = self.0.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *guard, issuer)
    }
}

impl From<Issuer> for SharedIssuer {
    fn from(issuer: Issuer) -> Self {
        Self::new(Arc::new(issuer))
    }
}
