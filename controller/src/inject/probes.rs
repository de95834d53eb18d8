//! What the proxy learns from the app containers: their HTTP probe endpoints, for
//! `MESH_PROXY_INBOUND_PROBES` (kubelet probes arrive as plaintext from the node, and
//! the proxy lets them through even on strict ports or under a `deny` default policy, as
//! kubelets cannot present a mesh identity), and their ports, for
//! `MESH_PROXY_INBOUND_PORTS` (whose inbound policies the proxy fetches at startup).

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// `port:/path` for every `httpGet` liveness, readiness and startup probe of the app
/// containers (named ports resolved through the container's ports), sorted and without
/// duplicates; `None` when there are none.
pub(super) fn probe_endpoints(containers: &[Container]) -> Option<String> {
    let mut out: Vec<String> = Vec::new();
    for c in containers {
        for probe in [&c.liveness_probe, &c.readiness_probe, &c.startup_probe]
            .into_iter()
            .flatten()
        {
            if let Some(e) = endpoint(c, probe) {
                out.push(e);
            }
        }
    }
    out.sort();
    out.dedup();
    (!out.is_empty()).then(|| out.join(","))
}

/// The TCP container ports of the app containers, sorted, comma-separated; `None` when
/// they declare none.
pub(super) fn container_ports(containers: &[Container]) -> Option<String> {
    let mut ports: Vec<u16> = containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .filter(|p| *p != 0)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    (!ports.is_empty()).then(|| {
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    })
}

fn endpoint(c: &Container, probe: &Probe) -> Option<String> {
    let get = probe.http_get.as_ref()?;
    // A probe to another host (or over HTTPS, which the proxy cannot read) is not ours.
    if get.host.is_some() || get.scheme.as_deref().is_some_and(|s| s != "HTTP") {
        return None;
    }
    let port = match &get.port {
        IntOrString::Int(p) => u16::try_from(*p).ok()?,
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())?,
    };
    let path = get
        .path
        .as_deref()
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    // The list is comma-separated: a path with a comma cannot be carried.
    (!path.contains(',') && port != 0).then(|| format!("{port}:{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction};

    fn http_probe(port: IntOrString, path: Option<&str>) -> Option<Probe> {
        Some(Probe {
            http_get: Some(HTTPGetAction {
                port,
                path: path.map(str::to_string),
                ..HTTPGetAction::default()
            }),
            ..Probe::default()
        })
    }

    #[test]
    fn http_probes_become_port_path_pairs() {
        let app = Container {
            name: "app".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..ContainerPort::default()
            }]),
            liveness_probe: http_probe(IntOrString::String("http".into()), Some("/live")),
            readiness_probe: http_probe(IntOrString::Int(8080), Some("/ready")),
            startup_probe: http_probe(IntOrString::Int(8080), Some("/live")),
            ..Container::default()
        };
        let side = Container {
            name: "side".into(),
            readiness_probe: http_probe(IntOrString::Int(9000), None),
            liveness_probe: Some(Probe::default()), // exec/tcp probes are not HTTP
            ..Container::default()
        };
        assert_eq!(
            probe_endpoints(&[app, side]).as_deref(),
            Some("8080:/live,8080:/ready,9000:/")
        );
        let unnamed = Container {
            name: "x".into(),
            readiness_probe: http_probe(IntOrString::String("nope".into()), Some("/r")),
            ..Container::default()
        };
        assert_eq!(probe_endpoints(&[unnamed]), None);
    }

    #[test]
    fn tcp_container_ports_are_listed() {
        let port = |p: i32, proto: Option<&str>| ContainerPort {
            container_port: p,
            protocol: proto.map(str::to_string),
            ..ContainerPort::default()
        };
        let a = Container {
            name: "a".into(),
            ports: Some(vec![
                port(9090, None),
                port(8080, Some("TCP")),
                port(53, Some("UDP")),
            ]),
            ..Container::default()
        };
        let b = Container {
            name: "b".into(),
            ports: Some(vec![port(8080, None)]),
            ..Container::default()
        };
        assert_eq!(container_ports(&[a, b]).as_deref(), Some("8080,9090"));
        assert_eq!(container_ports(&[]), None);
    }
}
