//! `mesh identity tap-credential`: a certificate for the tap identity
//! (`spiffe://<td>/ns/mesh-system/sa/mesh-tap`), issued by the local CA, for
//! `mesh tap`, `mesh top` and `mesh dashboard`. Whoever holds the CA's
//! directory may tap; the credential is short-lived.

use anyhow::{Context, Result};
use std::{path::Path, time::Duration};

/// The tap identity of trust domain `td`.
pub fn tap_identity(td: &str) -> String {
    format!("spiffe://{td}/ns/mesh-system/sa/mesh-tap")
}

/// Issues the tap certificate (valid `lifetime`) with the issuer in `id_dir`
/// and writes `out/tap.crt` and `out/tap.key` (mode 0600).
pub fn write(id_dir: &Path, out: &Path, td: &str, lifetime: Duration) -> Result<()> {
    let issuer = mesh_identity::files::load_issuer(id_dir)
        .with_context(|| format!("loading the issuer in {}", id_dir.display()))?;
    let (chain, key) = issuer
        .issue_serving_cert(&[], &[], &tap_identity(td), lifetime)
        .context("issuing the tap certificate")?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("tap.crt"), chain)?;
    let key_path = out.join("tap.key");
    // Created private, then written: the key is never readable by others.
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key_path)
        .with_context(|| format!("writing {}", key_path.display()))?;
    std::io::Write::write_all(&mut f, key.as_bytes())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_a_private_tap_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let id = dir.path().join("id");
        mesh_identity::files::init_dir(&id, "example.org", false).unwrap();
        let out = dir.path().join("tap");
        write(&id, &out, "example.org", Duration::from_secs(600)).unwrap();
        let chain = std::fs::read_to_string(out.join("tap.crt")).unwrap();
        let key = std::fs::read_to_string(out.join("tap.key")).unwrap();
        let certified = mesh_proto::workload::certified_key(&chain, &key).unwrap();
        let leaf = certified.cert.first().unwrap();
        assert_eq!(
            mesh_proto::workload::spiffe::spiffe_id(leaf).unwrap(),
            "spiffe://example.org/ns/mesh-system/sa/mesh-tap"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("tap.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
