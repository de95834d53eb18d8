//! Output of `mesh stat`: an aligned table (`table`, `wide`) or a JSON array.

use super::compute::Row;

fn pct(v: Option<f64>) -> String {
    v.map(|s| format!("{:.2}%", s * 100.0))
        .unwrap_or_else(|| "-".into())
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(ms) if ms >= 100.0 => format!("{ms:.0}ms"),
        Some(ms) if ms >= 10.0 => format!("{ms:.1}ms"),
        Some(ms) => format!("{ms:.2}ms"),
    }
}

fn per_sec(v: f64, unit: &str) -> String {
    format!("{v:.1}{unit}")
}

/// The table: `NAMESPACE` first when `all_namespaces`, `SERVICE` when any row
/// is a route, the wide columns when `wide`. "No traffic" when empty.
pub fn render_table(rows: &[Row], wide: bool, all_namespaces: bool) -> String {
    if rows.is_empty() {
        return "No traffic found.\n".into();
    }
    let routes = rows.iter().any(|r| r.service.is_some());
    let mut head: Vec<&str> = Vec::new();
    if all_namespaces {
        head.push("NAMESPACE");
    }
    head.push("NAME");
    if routes {
        head.push("SERVICE");
    }
    head.extend([
        "MESHED",
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
        "TCP_CONN",
    ]);
    if wide {
        head.extend(["RETRIES/s", "TIMEOUTS/s", "READ_BYTES/s", "WRITE_BYTES/s"]);
    }
    let mut lines: Vec<Vec<String>> = vec![head.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        let mut l = Vec::new();
        if all_namespaces {
            l.push(r.namespace.clone());
        }
        l.push(r.name.clone());
        if routes {
            l.push(r.service.clone().unwrap_or_else(|| "-".into()));
        }
        l.extend([
            r.meshed.to_string(),
            pct(r.success),
            per_sec(r.rps, "rps"),
            ms(r.latency_ms_p50),
            ms(r.latency_ms_p95),
            ms(r.latency_ms_p99),
            r.tcp_conn.to_string(),
        ]);
        if wide {
            l.extend([
                per_sec(r.retries_per_sec, ""),
                per_sec(r.timeouts_per_sec, ""),
                per_sec(r.read_bytes_per_sec, "B"),
                per_sec(r.write_bytes_per_sec, "B"),
            ]);
        }
        lines.push(l);
    }
    align(&lines)
}

/// Rows of cells as text: columns left-aligned, three spaces apart.
pub fn align(lines: &[Vec<String>]) -> String {
    let n = lines.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            lines
                .iter()
                .map(|l| l.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// The JSON array of rows (numbers as numbers, `null` for no data).
pub fn render_json(rows: &[Row]) -> String {
    let mut s =
        serde_json::to_string_pretty(rows).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}
