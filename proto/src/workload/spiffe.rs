//! Reads the SPIFFE ID (the `spiffe://` URI SAN) out of a DER certificate.

use x509_parser::{extensions::GeneralName, prelude::FromDer};

/// Returns the certificate's single `spiffe://` URI SAN.
pub fn spiffe_id(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| format!("unparseable certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad SAN extension: {e}"))?
        .ok_or_else(|| "certificate has no SAN".to_string())?;
    let mut ids = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
        _ => None,
    });
    match (ids.next(), ids.next()) {
        (Some(id), None) => Ok(id.to_string()),
        (None, _) => Err("certificate has no spiffe:// URI SAN".into()),
        (Some(_), Some(_)) => Err("certificate has several spiffe:// URI SANs".into()),
    }
}
