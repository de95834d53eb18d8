//! Tests of [`inject_pod`], [`uninject_pod`], [`patch_for`] and the workload walker.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;

use super::workloads::{inject_object, uninject_object, Change};
use super::*;

fn pod(annotations: &[(&str, &str)]) -> (ObjectMeta, PodSpec) {
    let meta = ObjectMeta {
        name: Some("web-1".to_string()),
        annotations: (!annotations.is_empty()).then(|| {
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        }),
        ..ObjectMeta::default()
    };
    let spec = PodSpec {
        containers: vec![Container {
            name: "app".to_string(),
            image: Some("nginx".to_string()),
            ..Container::default()
        }],
        init_containers: Some(vec![Container {
            name: "migrate".to_string(),
            ..Container::default()
        }]),
        volumes: Some(vec![Volume {
            name: "data".to_string(),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    };
    (meta, spec)
}

fn ns(mode: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(INJECT_ANNOTATION.to_string(), mode.to_string())])
}

fn injected(outcome: Outcome) -> (ObjectMeta, PodSpec) {
    match outcome {
        Outcome::Injected { meta, spec } => (meta, spec),
        Outcome::Skipped(reason) => panic!("skipped: {reason}"),
    }
}

fn names(containers: &[Container]) -> Vec<&str> {
    containers.iter().map(|c| c.name.as_str()).collect()
}

fn container<'a>(spec: &'a PodSpec, name: &str) -> &'a Container {
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == name)
        .expect("container")
}

fn env(c: &Container, name: &str) -> Option<String> {
    let var = c.env.iter().flatten().find(|e| e.name == name)?;
    var.value.clone().or_else(|| {
        var.value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| format!("fieldRef:{}", f.field_path))
    })
}

#[test]
fn skip_reasons() {
    let cfg = InjectConfig::default();
    let none = BTreeMap::new();
    let (meta, spec) = pod(&[]);
    let skip = |o: Outcome| match o {
        Outcome::Skipped(r) => r,
        Outcome::Injected { .. } => panic!("injected"),
    };
    assert_eq!(
        skip(inject_pod(&meta, &spec, &none, false, &cfg)),
        SkipReason::NotEnabled
    );
    assert_eq!(
        skip(inject_pod(&meta, &spec, &ns("disabled"), false, &cfg)),
        SkipReason::NotEnabled
    );

    // Pod-level disabled beats the namespace, and force.
    let (dmeta, _) = pod(&[(INJECT_ANNOTATION, "disabled")]);
    assert_eq!(
        skip(inject_pod(&dmeta, &spec, &ns("enabled"), false, &cfg)),
        SkipReason::Disabled
    );
    assert_eq!(
        skip(inject_pod(&dmeta, &spec, &none, true, &cfg)),
        SkipReason::Disabled
    );

    let (imeta, ispec) = injected(inject_pod(&meta, &spec, &ns("enabled"), false, &cfg));
    assert_eq!(
        skip(inject_pod(&imeta, &ispec, &none, true, &cfg)),
        SkipReason::AlreadyInjected
    );
    let non_native = InjectConfig {
        native_sidecar: false,
        ..cfg.clone()
    };
    let (imeta, ispec) = injected(inject_pod(&meta, &spec, &none, true, &non_native));
    assert_eq!(
        skip(inject_pod(&imeta, &ispec, &none, true, &cfg)),
        SkipReason::AlreadyInjected
    );

    let host = PodSpec {
        host_network: Some(true),
        ..spec.clone()
    };
    assert_eq!(
        skip(inject_pod(&meta, &host, &none, true, &cfg)),
        SkipReason::HostNetwork
    );

    let (bad, _) = pod(&[(SKIP_INBOUND_PORTS, "80,http")]);
    assert!(matches!(
        skip(inject_pod(&bad, &spec, &none, true, &cfg)),
        SkipReason::InvalidAnnotation { .. }
    ));
    let (bad, _) = pod(&[(DEFAULT_INBOUND_POLICY, "allow-some")]);
    assert_eq!(
        skip(inject_pod(&bad, &spec, &none, true, &cfg)),
        SkipReason::InvalidAnnotation {
            name: DEFAULT_INBOUND_POLICY.to_string(),
            value: "allow-some".to_string()
        }
    );
    for reason in [
        SkipReason::Disabled,
        SkipReason::NotEnabled,
        SkipReason::HostNetwork,
    ] {
        assert!(!reason.to_string().is_empty());
    }
    assert_eq!(
        SkipReason::Disabled.to_string(),
        "mesh.dev/inject is disabled"
    );
}

#[test]
fn enabled_by_pod_or_namespace() {
    let cfg = InjectConfig::default();
    let (meta, spec) = pod(&[(INJECT_ANNOTATION, "enabled")]);
    injected(inject_pod(&meta, &spec, &ns("disabled"), false, &cfg));
    let (meta, spec) = pod(&[]);
    injected(inject_pod(&meta, &spec, &ns("enabled"), false, &cfg));
}

#[test]
fn native_sidecar_layout() {
    let cfg = InjectConfig::default();
    let (meta, spec) = pod(&[]);
    let (meta, spec) = injected(inject_pod(&meta, &spec, &BTreeMap::new(), true, &cfg));
    let inits = spec.init_containers.as_deref().unwrap_or_default();
    assert_eq!(names(inits), ["mesh-init", "mesh-proxy", "migrate"]);
    assert_eq!(names(&spec.containers), ["app"]);
    assert_eq!(inits[1].restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(INJECTED_ANNOTATION)),
        Some(&cfg.proxy_image)
    );
    let volumes: Vec<_> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(volumes, ["data", TOKEN_VOLUME, TRUST_ROOTS_VOLUME]);

    let proxy = container(&spec, PROXY_CONTAINER);
    let sc = proxy.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.run_as_user, Some(PROXY_UID));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        env(proxy, "MESH_PROXY_INBOUND_ADDR").as_deref(),
        Some("0.0.0.0:4143")
    );
    assert_eq!(
        env(proxy, "MESH_PROXY_NAMESPACE").as_deref(),
        Some("fieldRef:metadata.namespace")
    );
    assert_eq!(env(proxy, "MESH_PROXY_LOG").as_deref(), Some("info"));
    assert_eq!(env(proxy, "MESH_PROXY_OPAQUE_PORTS"), None);
    assert_eq!(
        env(proxy, "MESH_PROXY_POD_NAME").as_deref(),
        Some("fieldRef:metadata.name")
    );
    assert_eq!(env(proxy, "MESH_PROXY_DEFAULT_INBOUND_POLICY"), None);
    let requests = proxy
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .expect("requests");
    assert_eq!(requests.get("cpu").map(|q| q.0.as_str()), Some("100m"));
    assert_eq!(requests.get("memory").map(|q| q.0.as_str()), Some("20Mi"));
}

#[test]
fn non_native_layout() {
    let cfg = InjectConfig {
        native_sidecar: false,
        ..InjectConfig::default()
    };
    let (meta, spec) = pod(&[]);
    let (_, spec) = injected(inject_pod(&meta, &spec, &BTreeMap::new(), true, &cfg));
    assert_eq!(
        names(spec.init_containers.as_deref().unwrap_or_default()),
        ["migrate", "mesh-init"]
    );
    assert_eq!(names(&spec.containers), ["mesh-proxy", "app"]);
    assert_eq!(container(&spec, PROXY_CONTAINER).restart_policy, None);
}

#[test]
fn annotations_override_defaults() {
    let cfg = InjectConfig::default();
    let (meta, spec) = pod(&[
        (SKIP_INBOUND_PORTS, "8080, 9000-9010"),
        (SKIP_OUTBOUND_PORTS, "3306"),
        (OPAQUE_PORTS, "5432"),
        (PROXY_CPU_REQUEST, "250m"),
        (PROXY_MEMORY_LIMIT, "128Mi"),
    ]);
    let namespace = BTreeMap::from([
        (PROXY_LOG_LEVEL.to_string(), "debug".to_string()),
        (DEFAULT_INBOUND_POLICY.to_string(), "deny".to_string()),
    ]);
    let (_, spec) = injected(inject_pod(&meta, &spec, &namespace, true, &cfg));
    let init = container(&spec, INIT_CONTAINER);
    assert_eq!(
        init.args.as_deref().unwrap_or_default().join(" "),
        "init --inbound-port 4143 --outbound-port 4140 --proxy-uid 2102 \
         --skip-inbound-ports 4191,8080,9000-9010 --skip-outbound-ports 3306"
    );
    let caps = init
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref());
    assert_eq!(
        caps.and_then(|c| c.add.clone()),
        Some(vec!["NET_ADMIN".into(), "NET_RAW".into()])
    );
    let proxy = container(&spec, PROXY_CONTAINER);
    assert_eq!(
        env(proxy, "MESH_PROXY_OPAQUE_PORTS").as_deref(),
        Some("5432")
    );
    assert_eq!(env(proxy, "MESH_PROXY_LOG").as_deref(), Some("debug"));
    assert_eq!(
        env(proxy, "MESH_PROXY_DEFAULT_INBOUND_POLICY").as_deref(),
        Some("deny")
    );
    let resources = proxy.resources.as_ref().expect("resources");
    let get = |m: &Option<BTreeMap<String, _>>, k: &str| {
        m.as_ref()
            .and_then(|m| m.get(k))
            .map(|q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| q.0.clone())
    };
    assert_eq!(get(&resources.requests, "cpu").as_deref(), Some("250m"));
    assert_eq!(get(&resources.limits, "memory").as_deref(), Some("128Mi"));
    assert_eq!(get(&resources.limits, "cpu"), None);

    // Without annotations only the admin port is skipped inbound.
    let (meta, spec) = pod(&[]);
    let (_, spec) = injected(inject_pod(&meta, &spec, &BTreeMap::new(), true, &cfg));
    let args = container(&spec, INIT_CONTAINER)
        .args
        .clone()
        .unwrap_or_default();
    assert_eq!(args[args.len() - 2..], ["--skip-inbound-ports", "4191"]);
}

#[test]
fn uninject_restores_the_original() {
    for native_sidecar in [true, false] {
        let cfg = InjectConfig {
            native_sidecar,
            ..InjectConfig::default()
        };
        for (meta, spec) in [pod(&[]), pod(&[(INJECT_ANNOTATION, "enabled")])] {
            let bare = PodSpec {
                init_containers: None,
                volumes: None,
                ..spec.clone()
            };
            for spec in [spec, bare] {
                let (imeta, ispec) =
                    injected(inject_pod(&meta, &spec, &ns("enabled"), false, &cfg));
                assert_eq!(
                    uninject_pod(&imeta, &ispec),
                    Some((meta.clone(), spec.clone()))
                );
            }
        }
    }
    let (meta, spec) = pod(&[]);
    assert_eq!(uninject_pod(&meta, &spec), None);
}

#[test]
fn json_patch_turns_original_into_injected() {
    let (meta, spec) = pod(&[("team", "a")]);
    let original = Pod {
        metadata: meta.clone(),
        spec: Some(spec.clone()),
        status: None,
    };
    let (imeta, ispec) = injected(inject_pod(
        &meta,
        &spec,
        &BTreeMap::new(),
        true,
        &InjectConfig::default(),
    ));
    let injected = Pod {
        metadata: imeta,
        spec: Some(ispec),
        status: None,
    };
    let (original, injected) = (
        serde_json::to_value(&original).expect("json"),
        serde_json::to_value(&injected).expect("json"),
    );
    let ops = patch_for(&original, &injected);
    assert!(!ops.is_empty());
    assert!(ops
        .iter()
        .all(|op| op.get("op").is_some() && op.get("path").is_some()));
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).expect("patch");
    let mut patched = original.clone();
    json_patch::patch(&mut patched, &patch).expect("applies");
    assert_eq!(patched, injected);
}

#[test]
fn workloads_find_their_pod_templates() {
    let cfg = InjectConfig::default();
    let template =
        json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "app"}]}});
    let mut list = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"template": template}},
        {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
         "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "job"}]}}}}}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"hostNetwork": true, "containers": []}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}},
    ]});
    let original = list.clone();
    let reports = inject_object(&mut list, &BTreeMap::new(), true, &cfg);
    let lines: Vec<String> = reports.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "deployment/web injected",
            "cronjob/nightly injected",
            "pod/p skipped: hostNetwork pods cannot be meshed",
            "service/web skipped: not a workload",
        ]
    );
    assert_eq!(
        list["items"][0]["spec"]["template"]["metadata"]["labels"]["app"],
        "x"
    );
    let inits =
        &list["items"][1]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"];
    assert_eq!(inits[1]["name"], PROXY_CONTAINER);
    assert_eq!(inits[1]["restartPolicy"], "Always");

    let again = inject_object(&mut list.clone(), &BTreeMap::new(), true, &cfg);
    assert_eq!(
        again[0].change,
        Change::Skipped(SkipReason::AlreadyInjected)
    );

    let reports = uninject_object(&mut list);
    assert_eq!(reports[0].change, Change::Uninjected);
    assert_eq!(reports[2].change, Change::NotInjected);
    assert_eq!(list, original);
}

#[test]
fn the_workload_name_comes_from_the_owner_or_the_annotation() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    let owned = |kind: &str, name: &str| ObjectMeta {
        labels: Some(BTreeMap::from([(
            "pod-template-hash".to_string(),
            "5d9f".to_string(),
        )])),
        owner_references: Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: "u".into(),
            controller: Some(true),
            ..OwnerReference::default()
        }]),
        ..ObjectMeta::default()
    };
    assert_eq!(
        workload_name(&owned("ReplicaSet", "web-5d9f")).as_deref(),
        Some("web")
    );
    assert_eq!(
        workload_name(&owned("StatefulSet", "db")).as_deref(),
        Some("db")
    );
    assert_eq!(workload_name(&ObjectMeta::default()), None);
    let mut annotated = owned("ReplicaSet", "web-5d9f");
    annotated.annotations = Some(BTreeMap::from([(
        WORKLOAD_ANNOTATION.to_string(),
        "checkout".to_string(),
    )]));
    assert_eq!(workload_name(&annotated).as_deref(), Some("checkout"));

    // Injection records it and points the proxy at it; a bare pod uses its name.
    let cfg = InjectConfig::default();
    let spec = PodSpec::default();
    let mut meta = owned("ReplicaSet", "web-5d9f");
    meta.annotations = Some(BTreeMap::from([(
        INJECT_ANNOTATION.to_string(),
        "enabled".to_string(),
    )]));
    let Outcome::Injected { meta: m, spec: s } =
        inject_pod(&meta, &spec, &BTreeMap::new(), false, &cfg)
    else {
        panic!("not injected")
    };
    assert_eq!(m.annotations.as_ref().unwrap()[WORKLOAD_ANNOTATION], "web");
    let proxy = s
        .init_containers
        .iter()
        .flatten()
        .chain(&s.containers)
        .find(|c| c.name == PROXY_CONTAINER)
        .unwrap();
    let env = proxy.env.as_ref().unwrap();
    let workload = env
        .iter()
        .find(|e| e.name == "MESH_PROXY_WORKLOAD")
        .unwrap();
    let path = &workload
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap()
        .field_path;
    assert_eq!(path, "metadata.annotations['mesh.dev/workload']");
    let (back, _) = uninject_pod(&m, &s).unwrap();
    assert!(back
        .annotations
        .as_ref()
        .is_none_or(|a| !a.contains_key(WORKLOAD_ANNOTATION)));
}

#[test]
fn http_probes_of_the_app_reach_the_proxy() {
    use k8s_openapi::api::core::v1::{HTTPGetAction, Probe};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let (meta, mut spec) = pod(&[]);
    spec.containers[0].readiness_probe = Some(Probe {
        http_get: Some(HTTPGetAction {
            port: IntOrString::Int(8080),
            path: Some("/ready".into()),
            ..HTTPGetAction::default()
        }),
        ..Probe::default()
    });
    let cfg = InjectConfig::default();
    let (_, spec) = injected(inject_pod(&meta, &spec, &BTreeMap::new(), true, &cfg));
    let proxy = container(&spec, PROXY_CONTAINER);
    assert_eq!(
        env(proxy, "MESH_PROXY_INBOUND_PROBES").as_deref(),
        Some("8080:/ready")
    );
}

#[test]
fn the_proxy_drains_within_the_pods_grace_period() {
    let cfg = InjectConfig::default();
    let (meta, spec) = pod(&[]);
    let (_, injected_spec) = injected(inject_pod(&meta, &spec, &BTreeMap::new(), true, &cfg));
    assert_eq!(
        env(
            container(&injected_spec, PROXY_CONTAINER),
            "MESH_PROXY_SHUTDOWN_GRACE"
        ),
        None,
        "Kubernetes' default of 30 s is the proxy's too"
    );
    let mut spec = spec;
    spec.termination_grace_period_seconds = Some(75);
    let (_, injected_spec) = injected(inject_pod(&meta, &spec, &BTreeMap::new(), true, &cfg));
    assert_eq!(
        env(
            container(&injected_spec, PROXY_CONTAINER),
            "MESH_PROXY_SHUTDOWN_GRACE"
        )
        .as_deref(),
        Some("75s")
    );
}
