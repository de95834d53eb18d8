//! The Prometheus text format (and OpenMetrics, which the proxies serve) read
//! into samples: comments, `# EOF`, timestamps and exemplars are ignored.

use std::collections::BTreeMap;

/// One sample: the series name, its labels and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The series name, e.g. `mesh_response_latency_seconds_bucket`.
    pub name: String,
    /// The labels, sorted by name.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// Parses an exposition: every sample line, in order; the first line that is
/// not a sample is an error naming it.
pub fn parse(text: &str) -> anyhow::Result<Vec<Sample>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample =
            parse_line(line).map_err(|what| anyhow::anyhow!("line {}: {what}: {raw}", i + 1))?;
        out.push(sample);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("no metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    // The value, then an optional timestamp and an optional `# exemplar`.
    let rest = rest.split(" # ").next().unwrap_or("");
    let value = rest.split_whitespace().next().ok_or("no value")?;
    let value = parse_value(value).ok_or("bad value")?;
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Reads `name="value",...}`; returns the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str), &'static str> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (key, after) = s.split_once('=').ok_or("label without =")?;
        let after = after.strip_prefix('"').ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value"),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value"),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.insert(key.trim().to_string(), value);
        s = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_escapes_comments_and_exemplars() {
        let text = "# HELP mesh_requests_total Requests.\n# TYPE mesh_requests_total counter\n\
mesh_requests_total{direction=\"inbound\",route=\"a \\\"q\\\" \\\\ b\\nc\"} 12\n\
mesh_response_latency_seconds_bucket{le=\"+Inf\"} 3 # {trace_id=\"x\"} 0.1 1.5\n\
up 1 1700000000000\n\
nan_metric NaN\n\
# EOF\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].name, "mesh_requests_total");
        assert_eq!(s[0].labels["direction"], "inbound");
        assert_eq!(s[0].labels["route"], "a \"q\" \\ b\nc");
        assert_eq!(s[0].value, 12.0);
        assert_eq!(s[1].labels["le"], "+Inf");
        assert_eq!(s[1].value, 3.0);
        assert_eq!((s[2].name.as_str(), s[2].value), ("up", 1.0));
        assert!(s[3].value.is_nan());
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("x{a=\"b} 1\n").is_err());
        assert!(parse("x{a=b} 1\n").is_err());
        assert!(parse("x\n").is_err());
        let e = parse("ok 1\nbad{\n").unwrap_err();
        assert!(e.to_string().starts_with("line 2: "), "{e}");
    }
}
