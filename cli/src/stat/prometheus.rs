//! The Prometheus data source: each [`Query`] as PromQL through
//! `/api/v1/query`.

use super::compute::{Agg, Answer, Matcher, Query};
use crate::http::{get, HttpClient};
use anyhow::Context;

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn selector(metric: &str, matchers: &[(&'static str, Matcher)]) -> String {
    let m: Vec<String> = matchers
        .iter()
        .map(|(l, m)| match m {
            Matcher::Eq(v) => format!("{l}=\"{}\"", escape(v)),
            Matcher::Re(r) => format!("{l}=~\"{}\"", escape(r)),
        })
        .collect();
    if m.is_empty() {
        return metric.to_string();
    }
    format!("{metric}{{{}}}", m.join(","))
}

/// The PromQL of `q` over `window` (e.g. `30s`).
pub fn promql(q: &Query, window: &str) -> String {
    let by = q.group.join(",");
    match q.agg {
        Agg::Rate => format!(
            "sum by ({by}) (rate({}[{window}]))",
            selector(q.metric, &q.matchers)
        ),
        Agg::Gauge => format!("sum by ({by}) ({})", selector(q.metric, &q.matchers)),
        Agg::Pods => {
            let mut inner = q.group.clone();
            if !inner.contains(&"pod") {
                inner.push("pod");
            }
            format!(
                "count by ({by}) (count by ({}) ({}))",
                inner.join(","),
                selector(q.metric, &q.matchers)
            )
        }
        Agg::Quantile(p) => format!(
            "histogram_quantile({p}, sum by ({by},le) (rate({}[{window}])))",
            selector(&format!("{}_bucket", q.metric), &q.matchers)
        ),
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Evaluates `q` on the Prometheus at `base` (e.g. `http://127.0.0.1:9090`).
pub async fn eval(c: &HttpClient, base: &str, q: &Query, window: &str) -> anyhow::Result<Answer> {
    let expr = promql(q, window);
    let url = format!(
        "{}/api/v1/query?query={}",
        base.trim_end_matches('/'),
        encode(&expr)
    );
    let (status, body) = get(c, &url).await.context("cannot query Prometheus")?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|_| {
        anyhow::anyhow!(
            "Prometheus answered {status} without JSON: {}",
            first_line(&body)
        )
    })?;
    if v["status"] != "success" {
        anyhow::bail!(
            "Prometheus refused the query ({}): {}",
            v["errorType"].as_str().unwrap_or("error"),
            v["error"].as_str().unwrap_or("?")
        );
    }
    let mut out = Answer::new();
    for r in v["data"]["result"].as_array().into_iter().flatten() {
        let key = q
            .group
            .iter()
            .map(|g| r["metric"][*g].as_str().unwrap_or("").to_string())
            .collect();
        let value = r["value"][1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        if value.is_finite() {
            out.insert(key, value);
        }
    }
    Ok(out)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stat::compute::Field;

    #[test]
    fn builds_promql() {
        let q = Query {
            field: Field::Requests,
            metric: "mesh_response_latency_seconds",
            matchers: vec![
                ("direction", Matcher::Eq("inbound".into())),
                ("dst_service", Matcher::Re(r"api\.demo\..*".into())),
            ],
            group: vec!["dst_namespace", "dst_workload"],
            agg: Agg::Quantile(0.95),
        };
        assert_eq!(
            promql(&q, "30s"),
            r#"histogram_quantile(0.95, sum by (dst_namespace,dst_workload,le) (rate(mesh_response_latency_seconds_bucket{direction="inbound",dst_service=~"api\\.demo\\..*"}[30s])))"#
        );
        let q = Query {
            agg: Agg::Pods,
            group: vec!["namespace", "pod"],
            matchers: vec![],
            ..q
        };
        assert_eq!(
            promql(&q, "30s"),
            "count by (namespace,pod) (count by (namespace,pod) (mesh_response_latency_seconds))"
        );
    }
}
