//! The objects injection adds to a pod: the `mesh-init` init container, the `mesh-proxy`
//! container (its environment is the proxy's `MESH_PROXY_*` configuration, see
//! `proxy/README.md`) and the token and trust-roots volumes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, Probe, ProjectedVolumeSource,
    ResourceRequirements, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::annotations::Overrides;
use super::{
    InjectConfig, ADMIN_PORT, INBOUND_PORT, INIT_CONTAINER, OUTBOUND_PORT, PROXY_CONTAINER,
    PROXY_UID, TOKEN_VOLUME, TRUST_ROOTS_VOLUME, WORKLOAD_ANNOTATION,
};

/// Audience of the projected ServiceAccount token the identity service accepts.
pub const TOKEN_AUDIENCE: &str = "identity.mesh.dev";
/// Lifetime requested for the projected token; the kubelet refreshes it.
const TOKEN_EXPIRATION_SECONDS: i64 = 86_400;
/// Where the token volume is mounted in the proxy.
const TOKEN_DIR: &str = "/var/run/secrets/mesh.dev/identity";
/// Where the trust-roots volume is mounted in the proxy.
const TRUST_DIR: &str = "/var/run/secrets/mesh.dev/trust";
/// Key of the trust bundle in the `mesh-trust-roots` ConfigMap (and file name).
const TRUST_BUNDLE_KEY: &str = "ca-bundle.pem";

/// `mesh-init`: `mesh-proxy init` with the capture parameters, root with only the
/// capabilities iptables needs.
pub(super) fn init_container(cfg: &InjectConfig, o: &Overrides) -> Container {
    let mut args: Vec<String> = [
        "init",
        "--inbound-port",
        &INBOUND_PORT.to_string(),
        "--outbound-port",
        &OUTBOUND_PORT.to_string(),
        "--proxy-uid",
        &PROXY_UID.to_string(),
        "--skip-inbound-ports",
        &o.skip_inbound.join(","),
    ]
    .map(String::from)
    .to_vec();
    if !o.skip_outbound.is_empty() {
        args.extend([
            "--skip-outbound-ports".to_string(),
            o.skip_outbound.join(","),
        ]);
    }
    Container {
        name: INIT_CONTAINER.to_string(),
        image: Some(cfg.init_image.clone()),
        args: Some(args),
        security_context: Some(SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".to_string(), "NET_RAW".to_string()]),
                drop: None,
            }),
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// `mesh-proxy`: the sidecar, unprivileged, configured by environment variables.
pub(super) fn proxy_container(cfg: &InjectConfig, o: &Overrides) -> Container {
    let quantities = |m: &BTreeMap<String, String>| {
        (!m.is_empty()).then(|| {
            m.iter()
                .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                .collect()
        })
    };
    Container {
        name: PROXY_CONTAINER.to_string(),
        image: Some(cfg.proxy_image.clone()),
        env: Some(env(cfg, o)),
        ports: Some(vec![
            port("mesh-inbound", INBOUND_PORT),
            port("mesh-admin", ADMIN_PORT),
        ]),
        liveness_probe: Some(http_probe("/live", 10)),
        readiness_probe: Some(http_probe("/ready", 2)),
        resources: Some(ResourceRequirements {
            requests: quantities(&o.requests),
            limits: quantities(&o.limits),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(PROXY_UID),
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: None,
                drop: Some(vec!["ALL".to_string()]),
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            mount(TOKEN_VOLUME, TOKEN_DIR),
            mount(TRUST_ROOTS_VOLUME, TRUST_DIR),
        ]),
        ..Container::default()
    }
}

/// A projected ServiceAccount token for the identity service (audience
/// [`TOKEN_AUDIENCE`], file `token`, rotated by the kubelet), as volume `name`: what a
/// workload (a proxy, the controller) proves its identity with.
pub fn identity_token_volume(name: &str) -> Volume {
    Volume {
        name: name.to_string(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(TOKEN_AUDIENCE.to_string()),
                    expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                    path: "token".to_string(),
                }),
                ..VolumeProjection::default()
            }]),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The volumes the proxy mounts: a projected ServiceAccount token for the identity
/// service, and the trust bundle the identity service publishes.
pub(super) fn volumes() -> [Volume; 2] {
    let token = identity_token_volume(TOKEN_VOLUME);

    let trust = Volume {
        name: TRUST_ROOTS_VOLUME.to_string(),
        config_map: Some(ConfigMapVolumeSource {
            name: TRUST_ROOTS_VOLUME.to_string(),
            items: Some(vec![KeyToPath {
                key: TRUST_BUNDLE_KEY.to_string(),
                path: TRUST_BUNDLE_KEY.to_string(),
                mode: None,
            }]),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    };
    [token, trust]
}

/// The proxy's `MESH_PROXY_*` environment.
fn env(cfg: &InjectConfig, o: &Overrides) -> Vec<EnvVar> {
    let mut env = vec![
        value("MESH_PROXY_INBOUND_ADDR", format!("0.0.0.0:{INBOUND_PORT}")),
        value(
            "MESH_PROXY_OUTBOUND_ADDR",
            format!("127.0.0.1:{OUTBOUND_PORT}"),
        ),
        value("MESH_PROXY_ADMIN_ADDR", format!("0.0.0.0:{ADMIN_PORT}")),
        // Inbound traffic goes to the pod IP, not 127.0.0.1, so sockets the
        // app binds to localhost only stay private to the pod.
        field("MESH_PROXY_APP_IP", "status.podIP"),
        value("MESH_PROXY_DESTINATION_ADDR", cfg.destination_addr.clone()),
        value("MESH_PROXY_IDENTITY_ADDR", cfg.identity_addr.clone()),
        value("MESH_PROXY_TRUST_DOMAIN", cfg.trust_domain.clone()),
        field("MESH_PROXY_NAMESPACE", "metadata.namespace"),
        if o.workload_annotation {
            field(
                "MESH_PROXY_WORKLOAD",
                &format!("metadata.annotations['{WORKLOAD_ANNOTATION}']"),
            )
        } else {
            field("MESH_PROXY_WORKLOAD", "metadata.name")
        },
        // The name the controller knows the pod by, for inbound policies.
        field("MESH_PROXY_POD_NAME", "metadata.name"),
        field("MESH_PROXY_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        value(
            "MESH_PROXY_IDENTITY_TOKEN_FILE",
            format!("{TOKEN_DIR}/token"),
        ),
        value(
            "MESH_PROXY_TRUST_ANCHORS_FILE",
            format!("{TRUST_DIR}/{TRUST_BUNDLE_KEY}"),
        ),
        value("MESH_PROXY_LOG", o.log_level.clone()),
    ];
    if let Some(ports) = &o.opaque_ports {
        env.push(value("MESH_PROXY_OPAQUE_PORTS", ports.clone()));
    }
    if let Some(policy) = &o.default_inbound_policy {
        env.push(value("MESH_PROXY_DEFAULT_INBOUND_POLICY", policy.clone()));
    }
    if let Some(probes) = &o.probes {
        env.push(value("MESH_PROXY_INBOUND_PROBES", probes.clone()));
    }
    if let Some(ports) = &o.ports {
        env.push(value("MESH_PROXY_INBOUND_PORTS", ports.clone()));
    }
    // The kubelet kills the pod at terminationGracePeriodSeconds: the proxy's drain
    // must fit (a native sidecar is stopped after the app, within the same period).
    if let Some(grace) = o.shutdown_grace_seconds {
        env.push(value(
            "MESH_PROXY_SHUTDOWN_GRACE",
            format!("{}s", grace.max(0)),
        ));
    }
    env
}

/// A plain environment variable.
fn value(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value),
        value_from: None,
    }
}

/// An environment variable from the downward API.
fn field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: path.to_string(),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// A named TCP container port.
fn port(name: &str, number: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: i32::from(number),
        ..ContainerPort::default()
    }
}

/// An HTTP probe of the admin server.
fn http_probe(path: &str, initial_delay_seconds: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(i32::from(ADMIN_PORT)),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay_seconds),
        ..Probe::default()
    }
}

/// A read-only volume mount.
fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.to_string(),
        mount_path: path.to_string(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}
