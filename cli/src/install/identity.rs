//! The identity service's PKI: a trust anchor and issuer generated on the spot (the
//! functions `mesh identity init` uses) or read from the files the user supplies, checked
//! the way `mesh-identity` checks them; rendered as the issuer Secret and the trust-roots
//! ConfigMap.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use k8s_openapi::api::core::v1::{ConfigMap, ConfigMapVolumeSource, Secret, Volume, VolumeMount};
use k8s_openapi::ByteString;
use mesh_identity::ca::{self, CaError, Issuer};

use super::meta::{self, IDENTITY};

/// The `kubernetes.io/tls` Secret holding the issuer (`tls.crt`, `tls.key`) and the
/// trust anchors (`ca.crt`).
pub const ISSUER_SECRET: &str = "mesh-identity-issuer";
/// The ConfigMap publishing the trust anchors.
pub const TRUST_ROOTS_CONFIG_MAP: &str = "mesh-identity-trust-roots";
/// Key of the anchors in [`TRUST_ROOTS_CONFIG_MAP`].
pub const TRUST_ROOTS_KEY: &str = "ca-bundle.crt";

/// Where `mesh-identity` mounts [`TRUST_ROOTS_CONFIG_MAP`].
const MOUNT_DIR: &str = "/var/run/mesh/identity";
/// Name of that volume.
const VOLUME_NAME: &str = "trust-anchors";

/// Trust anchors and an issuer that chains to them, PEM.
#[derive(Clone)]
pub struct IdentityMaterial {
    /// The trust anchors (one or more certificates).
    pub anchors_pem: String,
    /// The issuer certificate.
    pub issuer_cert_pem: String,
    /// The issuer's private key.
    pub issuer_key_pem: String,
}

impl std::fmt::Debug for IdentityMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityMaterial").finish_non_exhaustive()
    }
}

// === impl IdentityMaterial ===

impl IdentityMaterial {
    /// A new trust anchor (whose key is dropped) and issuer for `trust_domain`.
    pub fn generate(trust_domain: &str) -> anyhow::Result<Self> {
        let (anchor, anchor_key) =
            ca::generate_trust_anchor(trust_domain).context("generating the trust anchor")?;
        let (issuer, issuer_key) = ca::generate_issuer(&anchor, &anchor_key, trust_domain)
            .context("generating the issuer")?;
        let material = Self {
            anchors_pem: anchor,
            issuer_cert_pem: issuer,
            issuer_key_pem: issuer_key,
        };
        material.check().context("the generated issuer")?;
        Ok(material)
    }

    /// Reads the supplied anchors, issuer certificate and key, and refuses them unless the
    /// issuer is a valid CA whose key matches and that is signed by one of the anchors.
    pub fn from_files(anchors: &Path, cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let read = |path: &Path, flag: &str| {
            std::fs::read_to_string(path)
                .map(|pem| pem.trim().to_string() + "\n")
                .with_context(|| format!("--{flag} {}: cannot read it", path.display()))
        };
        let material = Self {
            anchors_pem: read(anchors, "identity-trust-anchors-file")?,
            issuer_cert_pem: read(cert, "identity-issuer-certificate-file")?,
            issuer_key_pem: read(key, "identity-issuer-key-file")?,
        };
        material.check().map_err(|e| match e {
            CaError::Untrusted { .. } => anyhow::anyhow!(
                "--identity-issuer-certificate-file {}: the issuer does not chain to the trust \
                 anchors in {} ({e})",
                cert.display(),
                anchors.display()
            ),
            e => anyhow::anyhow!(
                "the supplied issuer ({}, key {}, anchors {}) cannot be used: {e}",
                cert.display(),
                key.display(),
                anchors.display()
            ),
        })?;
        Ok(material)
    }

    /// The checks `mesh-identity` makes when it loads an issuer.
    fn check(&self) -> Result<Issuer, CaError> {
        Issuer::load(
            &self.issuer_cert_pem,
            &self.issuer_key_pem,
            &self.anchors_pem,
        )
    }

    /// The issuer Secret `mesh-identity` watches.
    pub fn secret(&self) -> Secret {
        let data = BTreeMap::from([
            ("ca.crt".to_string(), bytes(&self.anchors_pem)),
            ("tls.crt".to_string(), bytes(&self.issuer_cert_pem)),
            ("tls.key".to_string(), bytes(&self.issuer_key_pem)),
        ]);
        Secret {
            metadata: meta::namespaced(ISSUER_SECRET, Some(IDENTITY)),
            type_: Some("kubernetes.io/tls".to_string()),
            data: Some(data),
            ..Secret::default()
        }
    }

    /// The trust anchors, public.
    pub fn config_map(&self) -> ConfigMap {
        ConfigMap {
            metadata: meta::namespaced(TRUST_ROOTS_CONFIG_MAP, Some(IDENTITY)),
            data: Some(BTreeMap::from([(
                TRUST_ROOTS_KEY.to_string(),
                self.anchors_pem.clone(),
            )])),
            ..ConfigMap::default()
        }
    }
}

fn bytes(pem: &str) -> ByteString {
    ByteString(pem.as_bytes().to_vec())
}

/// The trust-anchors volume and its read-only mount in `mesh-identity`: issuers must
/// chain to these anchors, and the service publishes them to the workloads.
pub fn volume() -> (Volume, VolumeMount) {
    let volume = Volume {
        name: VOLUME_NAME.to_string(),
        config_map: Some(ConfigMapVolumeSource {
            name: TRUST_ROOTS_CONFIG_MAP.to_string(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: VOLUME_NAME.to_string(),
        mount_path: MOUNT_DIR.to_string(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    (volume, mount)
}

/// The `mesh-identity` flag that points it at the mounted anchors.
pub fn identity_args() -> [String; 2] {
    [
        "--trust-anchors".to_string(),
        format!("{MOUNT_DIR}/{TRUST_ROOTS_KEY}"),
    ]
}

/// Where the controller's projected token is mounted.
const TOKEN_DIR: &str = "/var/run/secrets/mesh.dev/identity";
/// The token volume's name.
const TOKEN_VOLUME: &str = "identity-token";

/// The controller's projected ServiceAccount token for the identity service
/// (audience `identity.mesh.dev`, rotated by the kubelet): the controller gets
/// its gRPC server certificate like any workload.
pub fn token_volume() -> (Volume, VolumeMount) {
    let volume = mesh_controller::inject::identity_token_volume(TOKEN_VOLUME);
    let mount = VolumeMount {
        name: TOKEN_VOLUME.to_string(),
        mount_path: TOKEN_DIR.to_string(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    (volume, mount)
}

/// The `mesh-controller` flags that get it its certificate: the identity
/// Service, the mounted anchors and token.
pub fn controller_args(trust_domain: &str) -> [String; 6] {
    [
        "--identity-addr".to_string(),
        format!("{IDENTITY}.mesh-system.svc.{trust_domain}:8080"),
        "--trust-anchors".to_string(),
        format!("{MOUNT_DIR}/{TRUST_ROOTS_KEY}"),
        "--identity-token-file".to_string(),
        format!("{TOKEN_DIR}/token"),
    ]
}
