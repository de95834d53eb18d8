//! Which series answer `mesh stat <kind>`: the queries for a resource kind,
//! its name and namespace filters and `--from`/`--to`.

use super::compute::{Agg, Field, Matcher, Query, QUANTILES};

/// The resource kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Deployments (`dst_workload`).
    Deploy,
    /// StatefulSets (`dst_workload`).
    Sts,
    /// Pods (the `pod` target label).
    Pod,
    /// Services (`dst_service`, outbound).
    Svc,
    /// Namespaces (`dst_namespace`).
    Ns,
    /// Routes (`dst_service` + `route`, outbound).
    Route,
}

impl std::str::FromStr for Kind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Kind> {
        Ok(match s {
            "deploy" | "deployment" | "deployments" => Kind::Deploy,
            "sts" | "statefulset" | "statefulsets" => Kind::Sts,
            "po" | "pod" | "pods" => Kind::Pod,
            "svc" | "service" | "services" => Kind::Svc,
            "ns" | "namespace" | "namespaces" => Kind::Ns,
            "route" | "routes" => Kind::Route,
            _ => anyhow::bail!(
                "unknown resource kind {s:?} (expected deploy, sts, pod, svc, ns or route)"
            ),
        })
    }
}

/// What to show.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// The resource name, if one.
    pub name: Option<String>,
    /// The namespace; `None` is every namespace (`-A`).
    pub namespace: Option<String>,
    /// `--from`: a client service account (`NAME` or `NS/NAME`).
    pub from: Option<String>,
    /// `--to`: `deploy/NAME`, `svc/NAME` or a bare workload name.
    pub to: Option<String>,
}

fn eq(v: &str) -> Matcher {
    Matcher::Eq(v.to_string())
}

fn quote_re(s: &str) -> String {
    regex::escape(s)
}

/// `dst_service` values of Service `name` (any if `None`) in `ns` (any if `None`).
fn service_re(name: Option<&str>, ns: Option<&str>) -> Matcher {
    let name = name.map(quote_re).unwrap_or_else(|| "[^.]+".into());
    let ns = ns.map(quote_re).unwrap_or_else(|| "[^.]+".into());
    Matcher::Re(format!(r"{name}\.{ns}\.svc\..*"))
}

/// The queries answering `kind` for `sel` (`wide` adds the extra columns).
pub fn queries(kind: Kind, sel: &Selection, wide: bool) -> anyhow::Result<Vec<Query>> {
    let ns = sel.namespace.as_deref();
    let name = sel.name.as_deref();
    if sel.to.is_some() && !matches!(kind, Kind::Deploy | Kind::Sts | Kind::Pod) {
        anyhow::bail!("--to works with deploy, sts and pod only");
    }
    if sel.from.is_some() && matches!(kind, Kind::Svc | Kind::Route) {
        anyhow::bail!("--from works with deploy, sts, pod and ns only");
    }
    // HTTP series: matchers and grouping; proxy-level (target-labelled)
    // series: matchers and grouping.
    let mut http: Vec<(&'static str, Matcher)> = Vec::new();
    let mut proxy: Vec<(&'static str, Matcher)> = vec![("job", eq(super::JOB_PROXY))];
    let (http_group, proxy_group): (Vec<&'static str>, Vec<&'static str>) = match kind {
        Kind::Deploy | Kind::Sts | Kind::Pod => {
            let (g, own_ns, own) = match (kind, &sel.to) {
                (Kind::Pod, _) => (vec!["namespace", "pod"], "namespace", "pod"),
                (_, Some(_)) => (
                    vec!["src_namespace", "src_workload"],
                    "src_namespace",
                    "src_workload",
                ),
                _ => (
                    vec!["dst_namespace", "dst_workload"],
                    "dst_namespace",
                    "dst_workload",
                ),
            };
            let pg = if kind == Kind::Pod {
                vec!["namespace", "pod"]
            } else {
                vec!["namespace", "workload"]
            };
            if let Some(ns) = ns {
                http.push((own_ns, eq(ns)));
                proxy.push(("namespace", eq(ns)));
            }
            if let Some(n) = name {
                http.push((own, eq(n)));
                proxy.push((pg[1], eq(n)));
            }
            (g, pg)
        }
        Kind::Ns => {
            if let Some(n) = name {
                http.push(("dst_namespace", eq(n)));
                proxy.push(("namespace", eq(n)));
            }
            (vec!["dst_namespace"], vec!["namespace"])
        }
        Kind::Svc | Kind::Route => {
            http.push(("dst_service", service_re(name, ns)));
            proxy.push(("dst_service", service_re(name, ns)));
            let g = if kind == Kind::Route {
                vec!["dst_service", "route"]
            } else {
                vec!["dst_service"]
            };
            (g, vec!["dst_service"])
        }
    };
    match (&sel.to, kind) {
        (Some(to), _) => {
            http.push(("direction", eq("outbound")));
            match to.split_once('/') {
                Some(("svc" | "service", s)) => {
                    http.push(("dst_service", service_re(Some(s), None)))
                }
                Some(("deploy" | "sts" | "deployment" | "statefulset", w)) | Some(("", w)) => {
                    http.push(("dst_workload", eq(w)))
                }
                Some((k, _)) => anyhow::bail!("--to {to}: unknown kind {k:?} (deploy or svc)"),
                None => http.push(("dst_workload", eq(to))),
            }
        }
        (None, Kind::Svc | Kind::Route) => http.push(("direction", eq("outbound"))),
        (None, _) => http.push(("direction", eq("inbound"))),
    }
    if let Some(from) = &sel.from {
        let (fns, sa) = match from.split_once('/') {
            Some((n, sa)) => (quote_re(n), quote_re(sa)),
            None => ("[^/]+".to_string(), quote_re(from)),
        };
        http.push((
            "src_identity",
            Matcher::Re(format!("spiffe://[^/]+/ns/{fns}/sa/{sa}")),
        ));
    }
    let q =
        |field, metric, matchers: &[(&'static str, Matcher)], group: &[&'static str], agg| Query {
            field,
            metric,
            matchers: matchers.to_vec(),
            group: group.to_vec(),
            agg,
        };
    let mut out = vec![
        q(
            Field::Requests,
            "mesh_requests_total",
            &http,
            &http_group,
            Agg::Rate,
        ),
        q(
            Field::Responses,
            "mesh_responses_total",
            &http,
            &http_group,
            Agg::Rate,
        ),
    ];
    let mut ok = http.clone();
    ok.push(("classification", eq("success")));
    out.push(q(
        Field::Successes,
        "mesh_responses_total",
        &ok,
        &http_group,
        Agg::Rate,
    ));
    for (i, p) in QUANTILES.iter().enumerate() {
        out.push(q(
            Field::Latency(i),
            "mesh_response_latency_seconds",
            &http,
            &http_group,
            Agg::Quantile(*p),
        ));
    }
    // Proxy-level series: for svc/route the inbound series of the Service.
    let svc = matches!(kind, Kind::Svc | Kind::Route);
    let mut tcp = proxy.clone();
    tcp.push(("direction", eq("inbound")));
    if !svc {
        tcp.retain(|(l, _)| *l != "dst_service");
    }
    let meshed = if svc {
        q(
            Field::Meshed,
            "mesh_requests_total",
            &tcp,
            &proxy_group,
            Agg::Pods,
        )
    } else {
        let own: Vec<_> = proxy
            .iter()
            .filter(|(l, _)| *l != "dst_service")
            .cloned()
            .collect();
        q(
            Field::Meshed,
            "mesh_identity_cert_renewals_total",
            &own,
            &proxy_group,
            Agg::Pods,
        )
    };
    out.push(meshed);
    out.push(q(
        Field::TcpConn,
        "mesh_tcp_open_connections",
        &tcp,
        &proxy_group,
        Agg::Gauge,
    ));
    if wide {
        out.push(q(
            Field::ReadBytes,
            "mesh_tcp_read_bytes_total",
            &tcp,
            &proxy_group,
            Agg::Rate,
        ));
        out.push(q(
            Field::WriteBytes,
            "mesh_tcp_write_bytes_total",
            &tcp,
            &proxy_group,
            Agg::Rate,
        ));
        let retries: Vec<_> = if svc {
            http.iter()
                .filter(|(l, _)| matches!(*l, "dst_service" | "route"))
                .cloned()
                .collect()
        } else {
            proxy.clone()
        };
        let rg: &[&'static str] = if svc { &http_group } else { &proxy_group };
        out.push(q(
            Field::Retries,
            "mesh_retries_total",
            &retries,
            rg,
            Agg::Rate,
        ));
        if !svc {
            let mut t = proxy.clone();
            t.push((
                "reason",
                Matcher::Re("request timeout|backend request timeout".into()),
            ));
            out.push(q(
                Field::Timeouts,
                "mesh_proxy_errors_total",
                &t,
                &proxy_group,
                Agg::Rate,
            ));
        }
    }
    Ok(out)
}

/// (name, namespace, service) of a row's key.
pub fn name_of(kind: Kind, key: &[String]) -> (String, String, Option<String>) {
    let at = |i: usize| key.get(i).cloned().unwrap_or_default();
    match kind {
        Kind::Deploy | Kind::Sts | Kind::Pod => (at(1), at(0), None),
        Kind::Ns => (at(0), at(0), None),
        Kind::Svc | Kind::Route => {
            let svc = at(0);
            let mut parts = svc.split('.');
            let short = parts.next().unwrap_or_default().to_string();
            let ns = parts.next().unwrap_or_default().to_string();
            let port = svc.rsplit_once(':').map(|(_, p)| p.to_string());
            let name = match port {
                Some(p) if !p.contains('.') => format!("{short}:{p}"),
                _ => short,
            };
            if kind == Kind::Route {
                (at(1), ns, Some(name))
            } else {
                (name, ns, None)
            }
        }
    }
}
