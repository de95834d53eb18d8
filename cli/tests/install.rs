//! Tests of `mesh install`, run as the real binary: golden files of its output (the
//! generated keys and certificates masked, see [`mask`]), every document read back into
//! its k8s-openapi type, the flags reaching the Deployments, and RBAC exactly as the
//! components declare it. The certificates are checked in `install_pki.rs`.
//! `UPDATE_GOLDEN=1 cargo test -p mesh-cli --test install` rewrites the golden files.

mod common;

use base64::Engine;
use common::{assert_golden, documents, install, kind, name, object, pem_certs};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_yaml::Value;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Fixed images, so that the goldens do not change with the crate version.
const GOLDEN_FLAGS: &[&str] = &["--image-tag", "golden"];

/// The output with every PEM blob (plain, or base64 as in Secrets and `caBundle`)
/// replaced by a placeholder naming what it held: keys and signatures are fresh on each
/// run, everything else must be byte-for-byte stable.
fn mask(output: &str) -> String {
    let header_end = output.find("---\n").expect("a document");
    let mut masked = output[..header_end].to_string();
    for mut doc in documents(output) {
        mask_value(&mut doc);
        masked.push_str("---\n");
        masked.push_str(&serde_yaml::to_string(&doc).expect("yaml"));
    }
    masked
}

fn mask_value(value: &mut Value) {
    match value {
        Value::String(s) => {
            if let Some(kinds) = pem_kinds(s) {
                *s = format!("<PEM: {kinds}>");
            } else if let Some(kinds) = base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .and_then(|text| pem_kinds(&text))
            {
                *s = format!("<base64 PEM: {kinds}>");
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(mask_value),
        Value::Mapping(map) => map.iter_mut().for_each(|(_, v)| mask_value(v)),
        _ => {}
    }
}

/// `CERTIFICATE`, `PRIVATE KEY`, ... for each PEM block of `text`; `None` if none.
fn pem_kinds(text: &str) -> Option<String> {
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .collect();
    (!kinds.is_empty()).then(|| kinds.join(", "))
}

// === goldens ===

#[test]
fn install_matches_golden() {
    let out = install(GOLDEN_FLAGS);
    assert_golden("install.yaml", &mask(&out));
}

#[test]
fn install_ha_matches_golden() {
    let out = install(&[GOLDEN_FLAGS, &["--ha"]].concat());
    assert_golden("install-ha.yaml", &mask(&out));
}

#[test]
fn install_crds_matches_golden() {
    // Nothing is generated: compared as it is.
    let out = install(&[GOLDEN_FLAGS, &["--crds"]].concat());
    assert_eq!(mask(&out), out);
    assert_golden("install-crds.yaml", &out);
    let kinds: Vec<_> = documents(&out)
        .iter()
        .map(|d| kind(d).to_string())
        .collect();
    assert_eq!(kinds, ["CustomResourceDefinition"; 4]);
}

#[test]
fn output_says_how_to_install_the_gateway_api() {
    for args in [&[][..], &["--crds"]] {
        let out = install(args);
        let header: Vec<_> = out.lines().take_while(|l| l.starts_with('#')).collect();
        let expected = format!(
            "kubectl apply --server-side -f https://github.com/kubernetes-sigs/gateway-api/releases/download/{}/experimental-install.yaml",
            mesh_cli::install::GATEWAY_API_VERSION
        );
        assert!(header.iter().any(|l| l.contains(&expected)), "{header:?}");
        assert!(
            !documents(&out)
                .iter()
                .any(|d| name(d).ends_with("gateway.networking.k8s.io")),
            "Gateway API CRDs are not ours to render"
        );
    }
}

// === types ===

/// Deserializes `doc` into `T` and serializes it back: any field `T` does not know would
/// be dropped, so equality means the document has no unknown (or misspelt) fields.
fn round_trip<T: DeserializeOwned + Serialize>(doc: &Value) {
    let json = serde_json::to_value(doc).expect("JSON");
    let typed: T = serde_json::from_value(json.clone())
        .unwrap_or_else(|e| panic!("{} {}: {e}", kind(doc), name(doc)));
    let back = serde_json::to_value(&typed).expect("serialize");
    assert_eq!(back, json, "{} {} has unknown fields", kind(doc), name(doc));
}

#[test]
fn every_document_is_its_kubernetes_type() {
    let mut kinds = std::collections::BTreeSet::new();
    for args in [&[][..], &["--ha"]] {
        for doc in documents(&install(args)) {
            match kind(&doc) {
                "Namespace" => round_trip::<Namespace>(&doc),
                "CustomResourceDefinition" => round_trip::<CustomResourceDefinition>(&doc),
                "ServiceAccount" => round_trip::<ServiceAccount>(&doc),
                "ClusterRole" => round_trip::<ClusterRole>(&doc),
                "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(&doc),
                "Role" => round_trip::<Role>(&doc),
                "RoleBinding" => round_trip::<RoleBinding>(&doc),
                "Deployment" => round_trip::<Deployment>(&doc),
                "Service" => round_trip::<Service>(&doc),
                "Secret" => round_trip::<Secret>(&doc),
                "ConfigMap" => round_trip::<ConfigMap>(&doc),
                "MutatingWebhookConfiguration" => round_trip::<MutatingWebhookConfiguration>(&doc),
                "PodDisruptionBudget" => round_trip::<PodDisruptionBudget>(&doc),
                other => panic!("unexpected kind {other}"),
            }
            kinds.insert(kind(&doc).to_string());
        }
    }
    assert_eq!(kinds.len(), 13, "{kinds:?}");
}

#[test]
#[should_panic(expected = "has unknown fields")]
fn round_trip_catches_unknown_fields() {
    let doc: Value = serde_yaml::from_str(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\nautomountToken: true\n",
    )
    .unwrap();
    round_trip::<ServiceAccount>(&doc);
}

#[test]
fn namespaced_objects_are_in_mesh_system() {
    let cluster_scoped = [
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
    ];
    for doc in documents(&install(&["--ha"])) {
        let namespace = doc["metadata"]["namespace"].as_str();
        if cluster_scoped.contains(&kind(&doc)) {
            assert_eq!(namespace, None, "{}", name(&doc));
        } else {
            assert_eq!(namespace, Some("mesh-system"), "{}", name(&doc));
        }
    }
}

// === control plane ===

#[test]
fn flags_reach_the_deployments() {
    let docs = documents(&install(&[
        "--trust-domain",
        "example.org",
        "--image-registry",
        "registry.example/mesh",
        "--image-tag",
        "t1",
    ]));
    let args = |name: &str| -> (Vec<String>, String) {
        let deployment: Deployment = object(&docs, "Deployment", name);
        let pod = deployment.spec.unwrap().template.spec.unwrap();
        let container = &pod.containers[0];
        (
            container.args.clone().unwrap(),
            container.image.clone().unwrap(),
        )
    };
    let (controller, image) = args("mesh-controller");
    assert_eq!(image, "registry.example/mesh/mesh-controller:t1");
    for pair in [
        ["--source", "kubernetes"],
        ["--trust-domain", "example.org"],
        ["--proxy-image", "registry.example/mesh/mesh-proxy:t1"],
        ["--webhook-cert", "/var/run/mesh/webhook/tls.crt"],
        ["--webhook-key", "/var/run/mesh/webhook/tls.key"],
    ] {
        assert!(controller.windows(2).any(|w| w == pair), "{controller:?}");
    }
    let (identity, image) = args("mesh-identity");
    assert_eq!(image, "registry.example/mesh/mesh-identity:t1");
    assert_eq!(
        identity,
        [
            "--source",
            "kubernetes",
            "--trust-domain",
            "example.org",
            "--trust-anchors",
            "/var/run/mesh/identity/ca-bundle.crt"
        ]
    );
    let anchors: ConfigMap = object(&docs, "ConfigMap", "mesh-identity-trust-roots");
    let pem = &anchors.data.unwrap()["ca-bundle.crt"];
    let der = pem_certs(pem).remove(0);
    let (_, anchor) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(anchor.subject().to_string(), "CN=root.example.org");
}

/// `(volume source name, mount path)` of each volume of the component's container.
fn mounts(docs: &[Value], component: &str) -> Vec<(String, String)> {
    let deployment: Deployment = object(docs, "Deployment", component);
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let volumes = pod.volumes.unwrap_or_default();
    let container = &pod.containers[0];
    container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            let volume = volumes.iter().find(|v| v.name == m.name).unwrap();
            let source = match (&volume.secret, &volume.config_map, &volume.projected) {
                (Some(secret), None, None) => {
                    format!("Secret/{}", secret.secret_name.clone().unwrap())
                }
                (None, Some(map), None) => format!("ConfigMap/{}", map.name),
                (None, None, Some(p)) => {
                    let token = p.sources.as_ref().unwrap()[0]
                        .service_account_token
                        .clone()
                        .unwrap();
                    format!("Token/{}/{}", token.audience.unwrap(), token.path)
                }
                _ => panic!("unexpected volume {volume:?}"),
            };
            assert_eq!(m.read_only, Some(true));
            (source, m.mount_path.clone())
        })
        .collect()
}

#[test]
fn certificate_files_are_mounted_where_the_flags_say() {
    let docs = documents(&install(&[]));
    assert_eq!(
        mounts(&docs, "mesh-controller"),
        [
            (
                "Secret/mesh-webhook-tls".to_string(),
                "/var/run/mesh/webhook".to_string()
            ),
            // Its own workload certificate: the anchors and a token for identity.
            (
                "ConfigMap/mesh-identity-trust-roots".to_string(),
                "/var/run/mesh/identity".to_string()
            ),
            (
                "Token/identity.mesh.dev/token".to_string(),
                "/var/run/secrets/mesh.dev/identity".to_string()
            ),
        ]
    );
    let controller: Deployment = object(&docs, "Deployment", "mesh-controller");
    let args = controller.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    let flag = |name: &str| {
        let i = args.iter().position(|a| a == name).unwrap();
        args[i + 1].clone()
    };
    assert_eq!(
        flag("--identity-addr"),
        "mesh-identity.mesh-system.svc.cluster.local:8080"
    );
    assert_eq!(
        flag("--trust-anchors"),
        "/var/run/mesh/identity/ca-bundle.crt"
    );
    assert_eq!(
        flag("--identity-token-file"),
        "/var/run/secrets/mesh.dev/identity/token"
    );
    assert_eq!(
        mounts(&docs, "mesh-identity"),
        [(
            "ConfigMap/mesh-identity-trust-roots".to_string(),
            "/var/run/mesh/identity".to_string()
        )]
    );
    // The keys the flags name exist in what is mounted.
    let secret: Secret = object(&docs, "Secret", "mesh-webhook-tls");
    let data = secret.data.unwrap();
    assert!(data.contains_key("tls.crt") && data.contains_key("tls.key"));
    let roots: ConfigMap = object(&docs, "ConfigMap", "mesh-identity-trust-roots");
    assert!(roots.data.unwrap().contains_key("ca-bundle.crt"));
}

#[test]
fn ha_spreads_and_protects_the_control_plane() {
    let docs = documents(&install(&["--ha"]));
    for component in ["mesh-controller", "mesh-identity"] {
        let deployment: Deployment = object(&docs, "Deployment", component);
        let spec = deployment.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let anti = spec.template.spec.unwrap().affinity.unwrap();
        let terms = anti
            .pod_anti_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap();
        assert_eq!(terms[0].topology_key, "kubernetes.io/hostname");
        let pdb: PodDisruptionBudget = object(&docs, "PodDisruptionBudget", component);
        let pdb = pdb.spec.unwrap();
        assert_eq!(
            pdb.min_available,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
        );
        assert_eq!(pdb.selector, Some(spec.selector));
    }
    let webhook: MutatingWebhookConfiguration =
        object(&docs, "MutatingWebhookConfiguration", "mesh-proxy-injector");
    assert_eq!(
        webhook.webhooks.unwrap()[0].failure_policy.as_deref(),
        Some("Fail")
    );

    let docs = documents(&install(&[]));
    assert!(!docs.iter().any(|d| kind(d) == "PodDisruptionBudget"));
    let webhook: MutatingWebhookConfiguration =
        object(&docs, "MutatingWebhookConfiguration", "mesh-proxy-injector");
    assert_eq!(
        webhook.webhooks.unwrap()[0].failure_policy.as_deref(),
        Some("Ignore")
    );
}

// === RBAC ===

fn expected_rules<'a>(
    rules: impl Iterator<Item = (&'a str, &'a [&'a str], &'a [&'a str])>,
) -> Vec<PolicyRule> {
    let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    rules
        .map(|(group, resources, verbs)| PolicyRule {
            api_groups: Some(vec![group.to_string()]),
            resources: Some(strings(resources)),
            verbs: strings(verbs),
            ..PolicyRule::default()
        })
        .collect()
}

fn subject(name: &str) -> Vec<Subject> {
    vec![Subject {
        api_group: None,
        kind: "ServiceAccount".to_string(),
        name: name.to_string(),
        namespace: Some("mesh-system".to_string()),
    }]
}

#[test]
fn rbac_is_exactly_what_the_components_declare() {
    use mesh_controller::kubernetes::rbac::CONTROLLER_RULES;
    use mesh_identity::kubernetes::{CLUSTER_RULES, NAMESPACE_RULES};

    let docs = documents(&install(&["--ha"]));
    let controller: ClusterRole = object(&docs, "ClusterRole", "mesh-controller");
    assert_eq!(
        controller.rules.unwrap(),
        expected_rules(
            CONTROLLER_RULES
                .iter()
                .map(|r| (r.group, r.resources, r.verbs))
        )
    );
    let identity: ClusterRole = object(&docs, "ClusterRole", "mesh-identity");
    assert_eq!(
        identity.rules.unwrap(),
        expected_rules(
            CLUSTER_RULES
                .iter()
                .map(|r| (r.group, r.resources, r.verbs))
        )
    );
    let identity_ns: Role = object(&docs, "Role", "mesh-identity");
    assert_eq!(
        identity_ns.rules.unwrap(),
        expected_rules(
            NAMESPACE_RULES
                .iter()
                .map(|r| (r.group, r.resources, r.verbs))
        )
    );
    assert!(controller.aggregation_rule.is_none() && identity.aggregation_rule.is_none());

    // No other roles, and each binding gives its role to its component only.
    let roles: Vec<_> = docs
        .iter()
        .filter(|d| ["ClusterRole", "Role"].contains(&kind(d)))
        .map(|d| format!("{}/{}", kind(d), name(d)))
        .collect();
    assert_eq!(
        roles,
        [
            "ClusterRole/mesh-controller",
            "ClusterRole/mesh-identity",
            "Role/mesh-identity"
        ]
    );
    for component in ["mesh-controller", "mesh-identity"] {
        let binding: ClusterRoleBinding = object(&docs, "ClusterRoleBinding", component);
        assert_eq!(binding.role_ref.kind, "ClusterRole");
        assert_eq!(binding.role_ref.name, component);
        assert_eq!(binding.subjects, Some(subject(component)));
        let deployment: Deployment = object(&docs, "Deployment", component);
        let pod = deployment.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some(component));
    }
    let binding: RoleBinding = object(&docs, "RoleBinding", "mesh-identity");
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(binding.role_ref.name, "mesh-identity");
    assert_eq!(binding.subjects, Some(subject("mesh-identity")));
    let bindings = docs
        .iter()
        .filter(|d| kind(d).ends_with("RoleBinding"))
        .count();
    assert_eq!(bindings, 3);
}
