//! `mesh edges`: who calls whom, from the clients' outbound metrics: one row
//! per client → server workload (or client pod → server workload), with both
//! SPIFFE identities, whether the hop was mutual TLS, success rate, RPS and p99.

use crate::stat::compute::{Agg, Answer, Field, Matcher, Query};
use std::collections::BTreeMap;

/// `mesh edges` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// deploy (workload to workload) or pod (client pod to server workload).
    pub kind: String,
    /// The clients' namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// The window rates are computed over.
    #[arg(short = 't', long = "time-window", default_value = "10s")]
    pub window: String,
    /// Output format.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
    pub output: String,
    /// Where the metrics are read from.
    #[command(flatten)]
    pub data: crate::stat::DataArgs,
}

/// One caller → callee edge.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Edge {
    /// `namespace/workload` (or `namespace/pod`) of the client.
    pub src: String,
    /// `namespace/workload` of the server.
    pub dst: String,
    /// The client's SPIFFE ID.
    pub src_identity: String,
    /// The server's SPIFFE ID.
    pub dst_identity: String,
    /// Every request of the edge went over mutual TLS between proxies.
    pub mtls: bool,
    /// Requests per second.
    pub rps: f64,
    /// 0..1, `null` without responses.
    pub success: Option<f64>,
    /// Latency p99 in milliseconds.
    pub p99_ms: Option<f64>,
}

/// The grouping of edge queries.
const GROUP_DEPLOY: [&str; 7] = [
    "src_namespace",
    "src_workload",
    "dst_namespace",
    "dst_workload",
    "src_identity",
    "dst_identity",
    "tls",
];
const GROUP_POD: [&str; 7] = [
    "namespace",
    "pod",
    "dst_namespace",
    "dst_workload",
    "src_identity",
    "dst_identity",
    "tls",
];

/// The queries for edges of `kind` (`deploy` or `pod`) from `namespace` (all if `None`).
pub fn queries(kind: &str, namespace: Option<&str>) -> anyhow::Result<Vec<Query>> {
    let (group, own_ns) = match kind {
        "deploy" | "deployment" | "deployments" | "sts" | "statefulset" => {
            (GROUP_DEPLOY.to_vec(), "src_namespace")
        }
        "po" | "pod" | "pods" => (GROUP_POD.to_vec(), "namespace"),
        _ => anyhow::bail!("mesh edges takes deploy or pod, not {kind:?}"),
    };
    let mut m = vec![
        ("direction", Matcher::Eq("outbound".into())),
        // Only meshed servers: their workload is known.
        ("dst_workload", Matcher::Re(".+".into())),
    ];
    if let Some(ns) = namespace {
        m.push((own_ns, Matcher::Eq(ns.to_string())));
    }
    let q = |field, metric, matchers: Vec<(&'static str, Matcher)>, agg| Query {
        field,
        metric,
        matchers,
        group: group.clone(),
        agg,
    };
    let mut ok = m.clone();
    ok.push(("classification", Matcher::Eq("success".into())));
    Ok(vec![
        q(Field::Requests, "mesh_requests_total", m.clone(), Agg::Rate),
        q(
            Field::Responses,
            "mesh_responses_total",
            m.clone(),
            Agg::Rate,
        ),
        q(Field::Successes, "mesh_responses_total", ok, Agg::Rate),
        q(
            Field::Latency(2),
            "mesh_response_latency_seconds",
            m,
            Agg::Quantile(0.99),
        ),
    ])
}

/// The edges in the answers: the series of one client → server pair are
/// summed; it is mTLS only when all of its requests were; its p99 is the
/// worst of its series'.
pub fn edges(answers: &[(Query, Answer)]) -> Vec<Edge> {
    let get = |f: Field| answers.iter().find(|(q, _)| q.field == f).map(|(_, a)| a);
    let value = |f: Field, key: &Vec<String>| get(f).and_then(|a| a.get(key)).copied();
    let Some(requests) = get(Field::Requests) else {
        return Vec::new();
    };
    let mut out: BTreeMap<(String, String), (Edge, f64, f64)> = BTreeMap::new();
    for (key, rps) in requests {
        let [sns, src, dns, dst, sid, did, tls] = &key[..] else {
            continue;
        };
        let pair = (format!("{sns}/{src}"), format!("{dns}/{dst}"));
        let (e, responses, ok) = out.entry(pair.clone()).or_insert_with(|| {
            (
                Edge {
                    src: pair.0.clone(),
                    dst: pair.1.clone(),
                    src_identity: String::new(),
                    dst_identity: String::new(),
                    mtls: true,
                    rps: 0.0,
                    success: None,
                    p99_ms: None,
                },
                0.0,
                0.0,
            )
        });
        e.rps += rps;
        e.mtls &= tls == "true";
        if e.src_identity.is_empty() {
            e.src_identity = sid.clone();
        }
        if e.dst_identity.is_empty() {
            e.dst_identity = did.clone();
        }
        let p99 = value(Field::Latency(2), key)
            .filter(|v| v.is_finite())
            .map(|s| s * 1000.0);
        e.p99_ms = match (e.p99_ms, p99) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        *responses += value(Field::Responses, key).unwrap_or(0.0);
        *ok += value(Field::Successes, key).unwrap_or(0.0);
    }
    out.into_values()
        .map(|(mut e, responses, ok)| {
            e.success = (responses > 0.0).then(|| (ok / responses).min(1.0));
            e
        })
        .collect()
}

/// The edges as a table.
pub fn render_table(edges: &[Edge]) -> String {
    let mut rows = vec![vec![
        "SRC".to_string(),
        "DST".to_string(),
        "CLIENT_ID".to_string(),
        "SERVER_ID".to_string(),
        "MTLS".to_string(),
        "SUCCESS".to_string(),
        "RPS".to_string(),
        "P99".to_string(),
    ]];
    for e in edges {
        rows.push(vec![
            e.src.clone(),
            e.dst.clone(),
            or_dash(&e.src_identity),
            or_dash(&e.dst_identity),
            if e.mtls { "yes" } else { "no" }.to_string(),
            e.success
                .map_or("-".into(), |s| format!("{:.2}%", s * 100.0)),
            format!("{:.1}rps", e.rps),
            e.p99_ms.map_or("-".into(), |v| format!("{v:.0}ms")),
        ]);
    }
    crate::stat::render::align(&rows)
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// Runs `mesh edges`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let ns = (!args.all_namespaces).then_some(args.namespace.as_str());
    let queries = queries(&args.kind, ns)?;
    let window = crate::stat::parse_window(&args.window)?;
    let (data, timeout) = args.data.source()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (answers, unreachable) =
        rt.block_on(crate::stat::answer(&queries, &data, ns, window, timeout))?;
    let edges = edges(&answers);
    match args.output.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&edges)?),
        _ if edges.is_empty() => println!("no edges (no meshed traffic in the window)"),
        _ => print!("{}", render_table(&edges)),
    }
    for u in &unreachable {
        eprintln!("unreachable: {}: {}", u.target, u.reason);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(parts: [&str; 7]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pairs_are_summed() {
        let qs = queries("deploy", Some("demo")).unwrap();
        let web_api = [
            "demo",
            "web",
            "demo",
            "api",
            "spiffe://td/ns/demo/sa/web",
            "spiffe://td/ns/demo/sa/api",
            "true",
        ];
        let web_api_plain = [
            "demo",
            "web",
            "demo",
            "api",
            "spiffe://td/ns/demo/sa/web",
            "",
            "false",
        ];
        let lg_web = [
            "demo",
            "loadgen",
            "demo",
            "web",
            "spiffe://td/ns/demo/sa/loadgen",
            "spiffe://td/ns/demo/sa/web",
            "true",
        ];
        let answer = |vals: &[([&str; 7], f64)]| -> Answer {
            vals.iter().map(|(k, v)| (key(*k), *v)).collect()
        };
        let answers: Vec<(Query, Answer)> = qs
            .into_iter()
            .map(|q| {
                let a = match q.field {
                    Field::Requests => {
                        answer(&[(web_api, 9.0), (web_api_plain, 1.0), (lg_web, 5.0)])
                    }
                    Field::Responses => {
                        answer(&[(web_api, 9.0), (web_api_plain, 1.0), (lg_web, 5.0)])
                    }
                    Field::Successes => {
                        answer(&[(web_api, 9.0), (web_api_plain, 0.0), (lg_web, 5.0)])
                    }
                    _ => answer(&[(web_api, 0.004), (web_api_plain, 0.010), (lg_web, f64::NAN)]),
                };
                (q, a)
            })
            .collect();
        let e = edges(&answers);
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].src.as_str(), e[0].dst.as_str()),
            ("demo/loadgen", "demo/web")
        );
        assert!(e[0].mtls && e[0].p99_ms.is_none());
        let w = &e[1];
        assert_eq!((w.rps, w.success, w.p99_ms), (10.0, Some(0.9), Some(10.0)));
        assert!(!w.mtls, "one plaintext series makes the edge not all-mTLS");
        assert_eq!(w.dst_identity, "spiffe://td/ns/demo/sa/api");
        let t = render_table(&e);
        assert!(t.lines().next().unwrap().starts_with("SRC"), "{t}");
        assert!(t.contains("demo/web") && t.contains("90.00%"), "{t}");
    }

    #[test]
    fn kinds() {
        assert!(queries("svc", None).is_err());
        let q = queries("pod", Some("demo")).unwrap();
        assert_eq!(q[0].group[..2], ["namespace", "pod"]);
        assert!(q[0]
            .matchers
            .contains(&("namespace", Matcher::Eq("demo".into()))));
    }
}
