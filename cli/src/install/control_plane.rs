//! The two control-plane components, `mesh-controller` and `mesh-identity`: for each, a
//! ServiceAccount, a Service, a Deployment (probes on the admin port, resource bounds,
//! a restrictive security context) and, with `--ha`, a PodDisruptionBudget.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext, Service,
    ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta::{self, CONTROLLER, IDENTITY};
use super::{identity, webhook, Settings};

/// The uid and gid the control plane runs as (distroless `nonroot`).
const RUN_AS: i64 = 65_532;
/// Name of the admin port (`/live`, `/ready`) in every control-plane pod.
const ADMIN_PORT_NAME: &str = "admin";

/// A port of a component: its name, the container port, and the Service port.
struct Port {
    name: &'static str,
    container: u16,
    service: u16,
}

/// CPU and memory requests and limits.
struct Resources {
    cpu_request: &'static str,
    memory_request: &'static str,
    cpu_limit: &'static str,
    memory_limit: &'static str,
}

/// One control-plane component and everything its objects are rendered from.
pub struct Component {
    /// Name of its Deployment, Service, ServiceAccount and container.
    name: &'static str,
    image: String,
    args: Vec<String>,
    ports: Vec<Port>,
    resources: Resources,
    volumes: Vec<(Volume, VolumeMount)>,
    /// Environment variables set from the pod's own fields (downward API):
    /// `(name, field path)`.
    pod_fields: &'static [(&'static str, &'static str)],
}

/// The pod's own namespace (`mesh-identity --namespace` defaults to it).
const POD_NAMESPACE: (&str, &str) = ("POD_NAMESPACE", "metadata.namespace");
/// The pod's name: `mesh-identity`'s holder identity in leader election.
const POD_NAME: (&str, &str) = ("POD_NAME", "metadata.name");

/// The components, identity first (the controller's injected proxies depend on it).
pub fn components(settings: &Settings) -> [Component; 2] {
    let mut identity_args = strings(&[
        "--source",
        "kubernetes",
        "--trust-domain",
        &settings.trust_domain,
    ]);
    identity_args.extend(identity::identity_args());
    let identity = Component {
        name: IDENTITY,
        image: settings.identity_image.clone(),
        args: identity_args,
        ports: vec![
            Port {
                name: "grpc",
                container: 8080,
                service: 8080,
            },
            Port {
                name: ADMIN_PORT_NAME,
                container: 9991,
                service: 9991,
            },
        ],
        resources: Resources {
            cpu_request: "50m",
            memory_request: "32Mi",
            cpu_limit: "500m",
            memory_limit: "128Mi",
        },
        volumes: vec![identity::volume()],
        pod_fields: &[POD_NAMESPACE, POD_NAME],
    };
    let mut controller_args = strings(&[
        "--source",
        "kubernetes",
        "--trust-domain",
        &settings.trust_domain,
        "--proxy-image",
        &settings.proxy_image,
    ]);
    controller_args.extend(webhook::controller_args());
    controller_args.extend(identity::controller_args(&settings.trust_domain));
    let controller = Component {
        name: CONTROLLER,
        image: settings.controller_image.clone(),
        args: controller_args,
        ports: vec![
            Port {
                name: "grpc",
                container: 8086,
                service: 8086,
            },
            Port {
                name: "webhook",
                container: 9443,
                service: 443,
            },
            Port {
                name: ADMIN_PORT_NAME,
                container: 9990,
                service: 9990,
            },
        ],
        resources: Resources {
            cpu_request: "100m",
            memory_request: "64Mi",
            cpu_limit: "1",
            memory_limit: "256Mi",
        },
        volumes: vec![
            webhook::volume(),
            identity::volume(),
            identity::token_volume(),
        ],
        pod_fields: &[POD_NAMESPACE],
    };
    [identity, controller]
}

// === impl Component ===

impl Component {
    /// The component's ServiceAccount (its RBAC bindings name it).
    pub fn service_account(&self) -> ServiceAccount {
        ServiceAccount {
            metadata: self.meta(),
            ..ServiceAccount::default()
        }
    }

    /// A ClusterIP Service over every port of the component.
    pub fn service(&self) -> Service {
        let ports = self
            .ports
            .iter()
            .map(|p| ServicePort {
                name: Some(p.name.to_string()),
                port: i32::from(p.service),
                target_port: Some(IntOrString::Int(i32::from(p.container))),
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            })
            .collect();
        Service {
            metadata: self.meta(),
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".to_string()),
                selector: Some(meta::selector(self.name)),
                ports: Some(ports),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    /// The component's Deployment.
    pub fn deployment(&self, settings: &Settings) -> Deployment {
        let (volumes, mounts): (Vec<_>, Vec<_>) = self.volumes.iter().cloned().unzip();
        let pod = PodSpec {
            service_account_name: Some(self.name.to_string()),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS),
                run_as_group: Some(RUN_AS),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_string(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            }),
            affinity: settings.ha.then(|| self.anti_affinity()),
            containers: vec![self.container(mounts)],
            volumes: (!volumes.is_empty()).then_some(volumes),
            ..PodSpec::default()
        };
        let pod_labels = meta::labels(Some(self.name));
        // One node at a time: with required anti-affinity a surge pod has nowhere to go.
        let strategy = settings.ha.then(|| DeploymentStrategy {
            type_: Some("RollingUpdate".to_string()),
            rolling_update: Some(RollingUpdateDeployment {
                max_unavailable: Some(IntOrString::Int(1)),
                max_surge: Some(IntOrString::Int(0)),
            }),
        });
        Deployment {
            metadata: self.meta(),
            spec: Some(DeploymentSpec {
                replicas: Some(settings.replicas()),
                selector: self.selector(),
                strategy,
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(pod_labels),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(pod),
                },
                ..DeploymentSpec::default()
            }),
            ..Deployment::default()
        }
    }

    /// Keeps one pod of the component up through voluntary disruptions (`--ha`).
    pub fn disruption_budget(&self) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: self.meta(),
            spec: Some(PodDisruptionBudgetSpec {
                min_available: Some(IntOrString::Int(1)),
                selector: Some(self.selector()),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        }
    }

    fn meta(&self) -> ObjectMeta {
        meta::namespaced(self.name, Some(self.name))
    }

    fn selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: Some(meta::selector(self.name)),
            ..LabelSelector::default()
        }
    }

    /// No two pods of the component on one node (`--ha`).
    fn anti_affinity(&self) -> Affinity {
        Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                    label_selector: Some(self.selector()),
                    topology_key: "kubernetes.io/hostname".to_string(),
                    ..PodAffinityTerm::default()
                }]),
                ..PodAntiAffinity::default()
            }),
            ..Affinity::default()
        }
    }

    fn container(&self, mounts: Vec<VolumeMount>) -> Container {
        let ports = self
            .ports
            .iter()
            .map(|p| ContainerPort {
                name: Some(p.name.to_string()),
                container_port: i32::from(p.container),
                protocol: Some("TCP".to_string()),
                ..ContainerPort::default()
            })
            .collect();
        let r = &self.resources;
        let quantities = |cpu: &str, memory: &str| {
            BTreeMap::from([
                ("cpu".to_string(), Quantity(cpu.to_string())),
                ("memory".to_string(), Quantity(memory.to_string())),
            ])
        };
        Container {
            name: self.name.to_string(),
            image: Some(self.image.clone()),
            args: Some(self.args.clone()),
            env: Some(
                self.pod_fields
                    .iter()
                    .map(|&(n, f)| pod_field(n, f))
                    .collect(),
            ),
            ports: Some(ports),
            liveness_probe: Some(admin_probe("/live", 10)),
            readiness_probe: Some(admin_probe("/ready", 2)),
            resources: Some(ResourceRequirements {
                requests: Some(quantities(r.cpu_request, r.memory_request)),
                limits: Some(quantities(r.cpu_limit, r.memory_limit)),
                ..ResourceRequirements::default()
            }),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(true),
                capabilities: Some(Capabilities {
                    add: None,
                    drop: Some(vec!["ALL".to_string()]),
                }),
                ..SecurityContext::default()
            }),
            volume_mounts: (!mounts.is_empty()).then_some(mounts),
            ..Container::default()
        }
    }
}

/// Environment variable `name` set to the pod's field `field_path` (downward API).
fn pod_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: field_path.to_string(),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// An HTTP probe of the admin server.
fn admin_probe(path: &str, initial_delay_seconds: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String(ADMIN_PORT_NAME.to_string()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay_seconds),
        period_seconds: Some(10),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}
