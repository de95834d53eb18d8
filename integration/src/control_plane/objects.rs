//! The Kubernetes objects of the control-plane load: namespaces, Services, meshed pods
//! and one EndpointSlice per Service, in the JSON the API server speaks. Addresses are in
//! 198.18.0.0/15 (never routed off this machine, and never dialled: only the index reads
//! them): Service cluster IPs in 198.18.0.0/17, markers (the addresses changes put into
//! slices) in 198.18.128.0/17, pod IPs in 198.19.0.0/16.

use serde_json::{json, Value};
use std::net::Ipv4Addr;

/// The collections the controller watches.
pub const SERVICES: &str = "/api/v1/services";
pub const PODS: &str = "/api/v1/pods";
pub const NAMESPACES: &str = "/api/v1/namespaces";
pub const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
pub use mesh_kube_fake::CONTROLLER_PATHS as PATHS;
/// The port every Service exposes and every pod serves.
pub const SERVICE_PORT: u16 = 80;
pub const POD_PORT: u16 = 8080;

/// The shape of the load.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub namespaces: usize,
    pub services: usize,
    pub pods_per_service: usize,
}

impl Shape {
    /// The namespace of Service `s`.
    pub fn namespace(&self, s: usize) -> String {
        format!("load-{}", s % self.namespaces.max(1))
    }

    /// The name of Service `s`.
    pub fn service(&self, s: usize) -> String {
        format!("svc-{s}")
    }

    /// The target string proxies ask about for Service `s`.
    pub fn target(&self, s: usize) -> String {
        format!(
            "{}.{}.svc.cluster.local:{SERVICE_PORT}",
            self.service(s),
            self.namespace(s)
        )
    }

    /// The name of pod `p` of Service `s`.
    pub fn pod(&self, s: usize, p: usize) -> String {
        format!("svc-{s}-{p}")
    }

    /// The IP of pod `p` of Service `s`.
    pub fn pod_ip(&self, s: usize, p: usize) -> Ipv4Addr {
        nth(
            Ipv4Addr::new(198, 19, 0, 0),
            (s * self.pods_per_service + p) as u32,
        )
    }
}

/// `base` plus `n`.
fn nth(base: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + n)
}

/// The marker address of change `n` (unique per change).
pub fn marker(n: usize) -> Ipv4Addr {
    nth(Ipv4Addr::new(198, 18, 128, 0), n as u32)
}

/// Whether `ip` is a marker, and which.
pub fn marker_index(ip: Ipv4Addr) -> Option<usize> {
    let base = u32::from(Ipv4Addr::new(198, 18, 128, 0));
    let n = u32::from(ip).checked_sub(base)?;
    (n < 1 << 15).then_some(n as usize)
}

pub fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

pub fn service(shape: &Shape, s: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": shape.service(s), "namespace": shape.namespace(s)},
        "spec": {"selector": {"app": shape.service(s)},
            "clusterIP": nth(Ipv4Addr::new(198, 18, 0, 0), s as u32).to_string(),
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": POD_PORT,
                "appProtocol": "http"}]}})
}

pub fn pod(shape: &Shape, s: usize, p: usize) -> Value {
    let ip = shape.pod_ip(s, p).to_string();
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": shape.pod(s, p), "namespace": shape.namespace(s),
            "labels": {"app": shape.service(s)}},
        "spec": {"serviceAccountName": shape.service(s),
            "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": POD_PORT}]},
                {"name": "mesh-proxy"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

/// The EndpointSlice of Service `s`: its pods, the first one at `first` (its own IP, or
/// a change's marker).
pub fn slice(shape: &Shape, s: usize, first: Ipv4Addr) -> Value {
    let ns = shape.namespace(s);
    let endpoints: Vec<Value> = (0..shape.pods_per_service)
        .map(|p| {
            let ip = if p == 0 { first } else { shape.pod_ip(s, p) };
            json!({"addresses": [ip.to_string()], "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "name": shape.pod(s, p), "namespace": ns}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{}-slice", shape.service(s)), "namespace": ns,
            "labels": {"kubernetes.io/service-name": shape.service(s)}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": POD_PORT, "protocol": "TCP"}],
        "endpoints": endpoints})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_pods_and_services_do_not_overlap() {
        let shape = Shape {
            namespaces: 10,
            services: 1000,
            pods_per_service: 10,
        };
        assert_eq!(marker_index(marker(0)), Some(0));
        assert_eq!(marker_index(marker(20_000)), Some(20_000));
        assert_eq!(marker_index(shape.pod_ip(999, 9)), None);
        assert_eq!(marker_index(Ipv4Addr::new(198, 18, 3, 231)), None);
        assert_eq!(shape.pod_ip(999, 9), Ipv4Addr::new(198, 19, 39, 15));
    }
}
