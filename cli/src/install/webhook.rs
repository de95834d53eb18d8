//! The proxy injector's admission webhook: a serving certificate for
//! `mesh-controller.mesh-system.svc` signed by a CA made for it on the spot (ECDSA P-256),
//! the `kubernetes.io/tls` Secret the controller mounts, and the
//! MutatingWebhookConfiguration whose `caBundle` is that CA.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::api::core::v1::{Secret, SecretVolumeSource, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::ByteString;
use mesh_controller::webhook::WEBHOOK_DNS_NAME;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

use super::meta::{self, CONTROLLER};
use super::NAMESPACE;

/// Name of the MutatingWebhookConfiguration.
pub const CONFIGURATION_NAME: &str = "mesh-proxy-injector";
/// Name of the webhook inside it (a qualified name, as the API requires).
pub const WEBHOOK_NAME: &str = "proxy-injector.mesh.dev";
/// The Secret holding the serving certificate (`tls.crt`, `tls.key`, `ca.crt`).
pub const SECRET_NAME: &str = "mesh-webhook-tls";
/// Path the API server posts AdmissionReviews to.
pub const PATH: &str = "/inject";
/// Port of the `mesh-controller` Service that forwards to the webhook's 9443.
pub const SERVICE_PORT: i32 = 443;
/// Where the controller mounts [`SECRET_NAME`].
const MOUNT_DIR: &str = "/var/run/mesh/webhook";
/// Name of that volume.
const VOLUME_NAME: &str = "webhook-tls";
/// Validity of the webhook CA and serving certificate; `mesh install` again renews them.
const LIFETIME: Duration = Duration::from_secs(365 * 86_400);
/// Backdating of `notBefore`, for API servers whose clocks are slightly behind.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The webhook's serving certificate and the CA that signed it, PEM.
#[derive(Clone)]
pub struct WebhookTls {
    /// The CA certificate (the configuration's `caBundle`).
    pub ca_pem: String,
    /// The serving certificate, SAN `mesh-controller.mesh-system.svc`.
    pub cert_pem: String,
    /// The serving certificate's private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for WebhookTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTls").finish_non_exhaustive()
    }
}

// === impl WebhookTls ===

impl WebhookTls {
    /// A fresh CA and serving certificate, both ECDSA P-256.
    pub fn generate() -> anyhow::Result<Self> {
        let now = SystemTime::now();
        let mut ca = CertificateParams::default();
        ca.distinguished_name = common_name("mesh-webhook-ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca.not_before = (now - CLOCK_SKEW).into();
        ca.not_after = (now + LIFETIME).into();
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .context("generating the webhook CA key")?;
        let ca = CertifiedIssuer::self_signed(ca, ca_key)
            .context("generating the webhook CA certificate")?;

        let mut leaf = CertificateParams::new(vec![WEBHOOK_DNS_NAME.to_string()])
            .context("the webhook's DNS name")?;
        leaf.distinguished_name = common_name(WEBHOOK_DNS_NAME);
        leaf.is_ca = IsCa::ExplicitNoCa;
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.use_authority_key_identifier_extension = true;
        leaf.not_before = (now - CLOCK_SKEW).into();
        leaf.not_after = (now + LIFETIME).into();
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generating the webhook key")?;
        let cert = leaf
            .signed_by(&key, &ca)
            .context("signing the webhook certificate")?;
        Ok(Self {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The Secret the controller mounts.
    pub fn secret(&self) -> Secret {
        let data = BTreeMap::from([
            ("ca.crt".to_string(), bytes(&self.ca_pem)),
            ("tls.crt".to_string(), bytes(&self.cert_pem)),
            ("tls.key".to_string(), bytes(&self.key_pem)),
        ]);
        Secret {
            metadata: meta::namespaced(SECRET_NAME, Some(CONTROLLER)),
            type_: Some("kubernetes.io/tls".to_string()),
            data: Some(data),
            ..Secret::default()
        }
    }

    /// The MutatingWebhookConfiguration: pod creations outside `kube-system` and
    /// `mesh-system` go to the controller; when it cannot answer, pods are created
    /// unmeshed, or refused if `fail_closed` (`--ha`).
    pub fn configuration(&self, fail_closed: bool) -> MutatingWebhookConfiguration {
        let webhook = MutatingWebhook {
            name: WEBHOOK_NAME.to_string(),
            admission_review_versions: vec!["v1".to_string()],
            client_config: WebhookClientConfig {
                ca_bundle: Some(bytes(&self.ca_pem)),
                service: Some(ServiceReference {
                    name: CONTROLLER.to_string(),
                    namespace: NAMESPACE.to_string(),
                    path: Some(PATH.to_string()),
                    port: Some(SERVICE_PORT),
                }),
                url: None,
            },
            failure_policy: Some(if fail_closed { "Fail" } else { "Ignore" }.to_string()),
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "kubernetes.io/metadata.name".to_string(),
                    operator: "NotIn".to_string(),
                    values: Some(vec!["kube-system".to_string(), NAMESPACE.to_string()]),
                }]),
                match_labels: None,
            }),
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".to_string()]),
                operations: Some(vec!["CREATE".to_string()]),
                resources: Some(vec!["pods".to_string()]),
                scope: Some("Namespaced".to_string()),
            }]),
            side_effects: "None".to_string(),
            ..MutatingWebhook::default()
        };
        MutatingWebhookConfiguration {
            metadata: meta::cluster(CONFIGURATION_NAME, Some(CONTROLLER)),
            webhooks: Some(vec![webhook]),
        }
    }
}

/// The Secret volume and its read-only mount in the controller.
pub fn volume() -> (Volume, VolumeMount) {
    let volume = Volume {
        name: VOLUME_NAME.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(SECRET_NAME.to_string()),
            ..SecretVolumeSource::default()
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

/// The controller flags that point it at the mounted certificate.
pub fn controller_args() -> [String; 4] {
    [
        "--webhook-cert".to_string(),
        format!("{MOUNT_DIR}/tls.crt"),
        "--webhook-key".to_string(),
        format!("{MOUNT_DIR}/tls.key"),
    ]
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn bytes(pem: &str) -> ByteString {
    ByteString(pem.as_bytes().to_vec())
}
