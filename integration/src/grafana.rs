//! Reading the Grafana dashboards in `manifests/grafana/dashboards/`: their
//! panels' queries and template variables, Grafana's variable substitution,
//! and the metric and label names a PromQL expression uses.

use serde_json::Value;
use std::{collections::BTreeSet, path::Path};

/// Every dashboard (`*.json`) in `dir`, sorted: (file name, JSON).
pub fn dashboards(dir: &Path) -> Vec<(String, Value)> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|n| {
            let text = std::fs::read_to_string(dir.join(&n)).expect("read dashboard");
            let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{n}: {e}"));
            (n, v)
        })
        .collect()
}

/// The panels of a dashboard, rows' nested panels included.
pub fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// (panel title, refId, expression) of every query of a dashboard.
pub fn queries(d: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push((
                    p["title"].as_str().unwrap_or("").to_string(),
                    t["refId"].as_str().unwrap_or("").to_string(),
                    expr.to_string(),
                ));
            }
        }
    }
    out
}

/// (variable name, `label_values(...)` query) of a dashboard's query variables.
pub fn variable_queries(d: &Value) -> Vec<(String, String)> {
    d["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .or(v["definition"].as_str())
                .unwrap_or("");
            (v["name"].as_str().unwrap_or("").to_string(), q.to_string())
        })
        .collect()
}

/// Replaces `$name` and `${name}` by the values in `vars` (longer names
/// first, so `$namespace` is not read as `$name` + `space`).
pub fn substitute(expr: &str, vars: &[(&str, &str)]) -> String {
    let mut vars = vars.to_vec();
    vars.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    let mut s = expr.to_string();
    for (name, value) in vars {
        s = s.replace(&format!("${{{name}}}"), value);
        s = s.replace(&format!("${name}"), value);
    }
    s
}

/// `label_values(selector, label)` or `label_values(label)`: (label, selector).
pub fn parse_label_values(q: &str) -> Option<(String, Option<String>)> {
    let inner = q.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    match inner.rsplit_once(',') {
        Some((selector, label)) => {
            Some((label.trim().to_string(), Some(selector.trim().to_string())))
        }
        None => Some((inner.trim().to_string(), None)),
    }
}

// === names ===

/// The metric and label names an expression uses: (metrics, labels).
pub fn names(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut metrics, mut labels) = (BTreeSet::new(), BTreeSet::new());
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let ident = |i: usize| {
        let mut j = i;
        while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
            j += 1;
        }
        (chars[i..j].iter().collect::<String>(), j)
    };
    let mut last_word = String::new();
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            // A string: skip it.
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '{' {
            // Matchers: `name op "value"`, comma separated.
            i += 1;
            loop {
                while i < chars.len() && (chars[i] == ' ' || chars[i] == ',') {
                    i += 1;
                }
                if i >= chars.len() || chars[i] == '}' {
                    i += 1;
                    break;
                }
                let (name, j) = ident(i);
                labels.insert(name);
                i = j;
                while i < chars.len() && chars[i] != '"' {
                    i += 1;
                }
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
        } else if c == '(' && matches!(last_word.as_str(), "by" | "without" | "on" | "ignoring") {
            let end = chars[i..].iter().position(|&c| c == ')').map(|p| i + p);
            let end = end.expect("closing parenthesis");
            let list: String = chars[i + 1..end].iter().collect();
            labels.extend(
                list.split(',')
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty()),
            );
            i = end + 1;
            last_word.clear();
        } else if c.is_ascii_alphabetic() || c == '_' {
            let (word, j) = ident(i);
            if word.starts_with("mesh_") || word.starts_with("process_") {
                metrics.insert(word.clone());
            }
            last_word = word;
            i = j;
        } else {
            if c != ' ' {
                last_word.clear();
            }
            i += 1;
        }
    }
    (metrics, labels)
}

/// The family a sample name belongs to (histogram series → the histogram).
pub fn family(metric: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| metric.strip_suffix(s))
        .unwrap_or(metric)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_extraction() {
        let (m, l) = names(
            r#"histogram_quantile(0.99, sum by (dst_service, le) (rate(mesh_response_latency_seconds_bucket{direction="inbound", route=~"a|b"}[5s]))) / count(mesh_x)"#,
        );
        assert_eq!(
            m.into_iter().collect::<Vec<_>>(),
            ["mesh_response_latency_seconds_bucket", "mesh_x"]
        );
        assert_eq!(
            l.into_iter().collect::<Vec<_>>(),
            ["direction", "dst_service", "le", "route"]
        );
        assert_eq!(
            parse_label_values(
                r#"label_values(mesh_requests_total{namespace="$namespace"}, workload)"#
            ),
            Some((
                "workload".to_string(),
                Some(r#"mesh_requests_total{namespace="$namespace"}"#.to_string())
            ))
        );
    }

    #[test]
    fn substitutes_longer_names_first() {
        let vars = [
            ("name", "x"),
            ("namespace", "demo"),
            ("__rate_interval", "10s"),
        ];
        assert_eq!(
            substitute(
                r#"rate(m{a="$namespace", b="${name}"}[$__rate_interval])"#,
                &vars
            ),
            r#"rate(m{a="demo", b="x"}[10s])"#
        );
    }
}
