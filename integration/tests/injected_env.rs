//! The contract between the injector and the proxy: the environment the webhook (and
//! `mesh inject`) gives the `mesh-proxy` container, with the downward-API fields resolved
//! as the kubelet would, is a valid proxy configuration naming the pod's identity and
//! the control plane by its Service names.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use mesh_controller::inject::{inject_pod, InjectConfig, Outcome, PROXY_CONTAINER};
use mesh_proxy::config::{Config, TokenSource};

fn pod() -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "orders-7c9d-x2x", "namespace": "prod",
            "annotations": {"mesh.dev/inject": "enabled",
                "config.mesh.dev/opaque-ports": "5432,9000-9010"}},
        "spec": {"serviceAccountName": "orders",
            "containers": [{"name": "app", "image": "orders:1"}]},
        "status": {"podIP": "198.18.7.9"}
    }))
    .unwrap()
}

fn proxy_container(pod: &Pod, cfg: &InjectConfig) -> Container {
    let spec = pod.spec.as_ref().unwrap();
    let Outcome::Injected { spec, .. } =
        inject_pod(&pod.metadata, spec, &Default::default(), false, cfg)
    else {
        panic!("not injected");
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == PROXY_CONTAINER)
        .cloned()
        .expect("proxy container")
}

/// The container's env as the kubelet resolves it for `pod`.
fn resolved_env(c: &Container, pod: &Pod) -> HashMap<String, String> {
    let mut env = HashMap::new();
    for var in c.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => {
                let path = &from.field_ref.as_ref().expect("fieldRef").field_path;
                match path.as_str() {
                    "metadata.name" => pod.metadata.name.clone().unwrap(),
                    "metadata.namespace" => pod.metadata.namespace.clone().unwrap(),
                    "spec.serviceAccountName" => pod
                        .spec
                        .as_ref()
                        .unwrap()
                        .service_account_name
                        .clone()
                        .unwrap(),
                    "status.podIP" => pod.status.as_ref().unwrap().pod_ip.clone().unwrap(),
                    other => panic!("unexpected fieldRef {other}"),
                }
            }
            (None, None) => String::new(),
        };
        env.insert(var.name.clone(), value);
    }
    env
}

#[test]
fn the_injected_environment_configures_the_proxy() {
    let pod = pod();
    let cfg = InjectConfig::default();
    let container = proxy_container(&pod, &cfg);
    let mut env = resolved_env(&container, &pod);

    // The mounted files exist in the pod; here the anchors file is a temp copy at the
    // path the env names, re-rooted into a temp dir.
    let anchors_path = env["MESH_PROXY_TRUST_ANCHORS_FILE"].clone();
    let mounts: Vec<String> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.clone())
        .collect();
    assert!(
        mounts.iter().any(|m| anchors_path.starts_with(m.as_str())),
        "{anchors_path} is not under a mounted volume {mounts:?}"
    );
    let token_path = env["MESH_PROXY_IDENTITY_TOKEN_FILE"].clone();
    assert!(mounts.iter().any(|m| token_path.starts_with(m.as_str())));
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("anchors.pem");
    std::fs::write(&local, "-----BEGIN CERTIFICATE-----\n").unwrap();
    env.insert(
        "MESH_PROXY_TRUST_ANCHORS_FILE".into(),
        local.display().to_string(),
    );

    let config = Config::from_lookup(|k| env.get(k).cloned()).expect("valid proxy config");
    assert_eq!(config.identity, "spiffe://cluster.local/ns/prod/sa/orders");
    assert_eq!(config.namespace, "prod");
    assert_eq!(config.workload, "orders-7c9d-x2x");
    assert_eq!(
        config.destination_addr,
        "mesh-controller.mesh-system.svc.cluster.local:8086"
    );
    assert_eq!(
        config.identity_addr,
        "mesh-identity.mesh-system.svc.cluster.local:8080"
    );
    assert_eq!(
        config.identity_server_name,
        "identity.mesh-system.svc.cluster.local"
    );
    assert!(matches!(&config.token, TokenSource::File(p) if p.display().to_string() == token_path));
    assert_eq!(config.inbound_addr.to_string(), "0.0.0.0:4143");
    assert_eq!(config.outbound_addr.to_string(), "127.0.0.1:4140");
    assert_eq!(config.admin_addr.to_string(), "0.0.0.0:4191");
    // Inbound traffic goes to the pod IP: localhost-only sockets stay private.
    assert_eq!(config.app_ip.to_string(), "198.18.7.9");
    assert_eq!(config.opaque_ports.len(), 2, "{:?}", config.opaque_ports);

    // Another trust domain moves the identity and the identity server's name with it.
    let cfg = InjectConfig {
        trust_domain: "prod.example".into(),
        ..InjectConfig::default()
    };
    let mut env = resolved_env(&proxy_container(&pod, &cfg), &pod);
    env.insert(
        "MESH_PROXY_TRUST_ANCHORS_FILE".into(),
        local.display().to_string(),
    );
    let config = Config::from_lookup(|k| env.get(k).cloned()).expect("valid proxy config");
    assert_eq!(config.identity, "spiffe://prod.example/ns/prod/sa/orders");
    assert_eq!(
        config.identity_server_name,
        "identity.mesh-system.svc.prod.example"
    );
}
