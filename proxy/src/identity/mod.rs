//! The workload's certificate: a key generated in memory, a CSR for the
//! workload's SPIFFE ID, `Certify` calls to the identity service, and renewal
//! at 70 % of the lifetime while the old certificate keeps serving.

mod certify;
mod csr;

pub use certify::{run, IdentityClient, Issued};
pub use csr::LocalKey;
