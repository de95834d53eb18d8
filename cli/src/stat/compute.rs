//! The pure half of `mesh stat`: the queries both data sources answer
//! ([`Query`]), their evaluation over two scrapes of every proxy (direct
//! mode), Prometheus' `histogram_quantile`, and the rows built from the
//! answers.

use super::scrape::Sample;
use std::collections::{BTreeMap, BTreeSet};

/// A label matcher: equality, or a fully anchored regular expression (as
/// PromQL's `=~`). A missing label matches as `""`.
#[derive(Clone, Debug, PartialEq)]
pub enum Matcher {
    /// `label="value"`.
    Eq(String),
    /// `label=~"regex"`.
    Re(String),
}

/// What a query's answer fills in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field {
    /// Requests per second.
    Requests,
    /// Responses per second.
    Responses,
    /// Successful (non-5xx) responses per second.
    Successes,
    /// A latency quantile (seconds), the index into [`QUANTILES`].
    Latency(usize),
    /// Open TCP connections.
    TcpConn,
    /// Proxies seen (distinct `pod` target labels).
    Meshed,
    /// Retries per second.
    Retries,
    /// Request timeouts per second.
    Timeouts,
    /// Bytes read per second.
    ReadBytes,
    /// Bytes written per second.
    WriteBytes,
}

/// The latency quantiles of the table.
pub const QUANTILES: [f64; 3] = [0.5, 0.95, 0.99];

/// How the selected series are aggregated per group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Agg {
    /// `sum by (group) (rate(metric[window]))`.
    Rate,
    /// `sum by (group) (metric)`.
    Gauge,
    /// The number of distinct `pod` labels per group.
    Pods,
    /// `histogram_quantile(q, sum by (group, le) (rate(metric_bucket[window])))`.
    Quantile(f64),
}

/// One question to a data source: select series, group, aggregate.
#[derive(Clone, Debug)]
pub struct Query {
    /// Which row field the answer fills.
    pub field: Field,
    /// The metric family (for a histogram, without `_bucket`).
    pub metric: &'static str,
    /// Label matchers; series labels and target labels alike.
    pub matchers: Vec<(&'static str, Matcher)>,
    /// The grouping labels, in key order.
    pub group: Vec<&'static str>,
    /// The aggregation.
    pub agg: Agg,
}

/// The values of the grouping labels, in order.
pub type Key = Vec<String>;

/// A query's answer: a value per group.
pub type Answer = BTreeMap<Key, f64>;

/// One proxy scraped twice: its target labels, both expositions, and the
/// seconds between the two scrapes.
#[derive(Clone, Debug)]
pub struct Scrapes {
    /// The target labels (`namespace`, `workload`, `pod`, `job`).
    pub target: BTreeMap<String, String>,
    /// The first scrape.
    pub before: Vec<Sample>,
    /// The second scrape.
    pub after: Vec<Sample>,
    /// Seconds between them.
    pub elapsed: f64,
}

fn label<'a>(s: &'a Sample, target: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    s.labels
        .get(name)
        .or_else(|| target.get(name))
        .map(String::as_str)
        .unwrap_or("")
}

/// Compiled matchers.
struct Compiled(Vec<(&'static str, Result<String, regex::Regex>)>);

impl Compiled {
    fn new(q: &Query) -> anyhow::Result<Compiled> {
        let mut out = Vec::new();
        for (l, m) in &q.matchers {
            out.push(match m {
                Matcher::Eq(v) => (*l, Ok(v.clone())),
                Matcher::Re(r) => (*l, Err(regex::Regex::new(&format!("^(?:{r})$"))?)),
            });
        }
        Ok(Compiled(out))
    }

    fn matches(&self, s: &Sample, target: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(l, m)| {
            let v = label(s, target, l);
            match m {
                Ok(want) => v == want,
                Err(re) => re.is_match(v),
            }
        })
    }
}

/// The increase of a counter between two values; a decrease is a reset (the
/// counter restarted from zero), as Prometheus' `rate` reads it.
pub fn increase(before: Option<f64>, after: f64) -> f64 {
    match before {
        Some(b) if after >= b => after - b,
        _ => after,
    }
}

/// Evaluates `q` over the scrapes of every proxy (direct mode).
pub fn eval(scrapes: &[Scrapes], q: &Query) -> anyhow::Result<Answer> {
    let m = Compiled::new(q)?;
    let name = match q.agg {
        Agg::Quantile(_) => format!("{}_bucket", q.metric),
        _ => q.metric.to_string(),
    };
    let mut sums = Answer::new();
    let mut buckets: BTreeMap<Key, BTreeMap<String, f64>> = BTreeMap::new();
    let mut pods: BTreeMap<Key, BTreeSet<String>> = BTreeMap::new();
    for sc in scrapes {
        let before: BTreeMap<&BTreeMap<String, String>, f64> = sc
            .before
            .iter()
            .filter(|s| s.name == name)
            .map(|s| (&s.labels, s.value))
            .collect();
        for s in sc.after.iter().filter(|s| s.name == name) {
            if !m.matches(s, &sc.target) {
                continue;
            }
            let key: Key = q
                .group
                .iter()
                .map(|g| label(s, &sc.target, g).to_string())
                .collect();
            let rate = || {
                let elapsed = sc.elapsed.max(1e-9);
                increase(before.get(&s.labels).copied(), s.value) / elapsed
            };
            match q.agg {
                Agg::Rate => *sums.entry(key).or_default() += rate(),
                Agg::Gauge => *sums.entry(key).or_default() += s.value,
                Agg::Pods => {
                    let pod = label(s, &sc.target, "pod").to_string();
                    pods.entry(key).or_default().insert(pod);
                }
                Agg::Quantile(_) => {
                    let le = label(s, &sc.target, "le").to_string();
                    *buckets.entry(key).or_default().entry(le).or_default() += rate();
                }
            }
        }
    }
    match q.agg {
        Agg::Pods => Ok(pods.into_iter().map(|(k, p)| (k, p.len() as f64)).collect()),
        Agg::Quantile(quantile) => Ok(buckets
            .into_iter()
            .filter_map(|(k, b)| {
                let b: Vec<(f64, f64)> = b
                    .into_iter()
                    .filter_map(|(le, v)| Some((parse_le(&le)?, v)))
                    .collect();
                Some((k, histogram_quantile(quantile, &b)?))
            })
            .collect()),
        _ => Ok(sums),
    }
}

fn parse_le(le: &str) -> Option<f64> {
    match le {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        _ => le.parse().ok(),
    }
}

/// Prometheus' `histogram_quantile`: cumulative `(upper bound, count)`
/// buckets, linear interpolation within the bucket the rank falls in (the
/// first bucket starting at 0), the highest finite bound when it falls in
/// `+Inf`. `None` without observations or without a `+Inf` bucket.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut b: Vec<(f64, f64)> = buckets.to_vec();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let &(last_le, total) = b.last()?;
    if last_le != f64::INFINITY || b.len() < 2 || total <= 0.0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    // Counts must not decrease (rates of separately scraped buckets may).
    for i in 1..b.len() {
        b[i].1 = b[i].1.max(b[i - 1].1);
    }
    let rank = q * total;
    let i = b.iter().position(|&(_, c)| c >= rank)?;
    if i == b.len() - 1 {
        return Some(b[b.len() - 2].0);
    }
    let (end, count_end) = b[i];
    let (start, count_start) = if i == 0 { (0.0, 0.0) } else { b[i - 1] };
    if i == 0 && end <= 0.0 {
        return Some(end);
    }
    if count_end == count_start {
        return Some(end);
    }
    Some(start + (end - start) * (rank - count_start) / (count_end - count_start))
}

/// One line of the output.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Row {
    /// The resource's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// For routes, the Service they belong to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Proxies seen.
    pub meshed: u64,
    /// Non-5xx responses / responses, 0..1; `null` without responses.
    pub success: Option<f64>,
    /// Requests per second.
    pub rps: f64,
    /// Latency p50 in milliseconds.
    pub latency_ms_p50: Option<f64>,
    /// Latency p95 in milliseconds.
    pub latency_ms_p95: Option<f64>,
    /// Latency p99 in milliseconds.
    pub latency_ms_p99: Option<f64>,
    /// Open TCP connections.
    pub tcp_conn: u64,
    /// Retries per second.
    pub retries_per_sec: f64,
    /// Request timeouts per second.
    pub timeouts_per_sec: f64,
    /// Bytes read per second.
    pub read_bytes_per_sec: f64,
    /// Bytes written per second.
    pub write_bytes_per_sec: f64,
}

/// Builds the rows from the answers: one row per key of the `Requests` and
/// full-length `Meshed` answers; shorter keys (a route's Service) fill the
/// rows they prefix. `name_of` turns a key into (name, namespace, service).
pub fn rows(
    answers: &[(Query, Answer)],
    name_of: impl Fn(&Key) -> (String, String, Option<String>),
) -> Vec<Row> {
    let width = answers
        .iter()
        .find(|(q, _)| q.field == Field::Requests)
        .map(|(q, _)| q.group.len())
        .unwrap_or(0);
    let mut keys: BTreeSet<Key> = BTreeSet::new();
    for (q, a) in answers {
        if matches!(q.field, Field::Requests | Field::Meshed) && q.group.len() == width {
            keys.extend(a.keys().cloned());
        }
    }
    keys.into_iter()
        .map(|key| {
            let get = |f: Field| -> Option<f64> {
                answers
                    .iter()
                    .filter(|(q, _)| q.field == f)
                    .find_map(|(q, a)| a.get(&key[..q.group.len().min(key.len())]).copied())
                    .filter(|v| v.is_finite())
            };
            let (name, namespace, service) = name_of(&key);
            let responses = get(Field::Responses).unwrap_or(0.0);
            let ms = |i| get(Field::Latency(i)).map(|s| s * 1000.0);
            Row {
                name,
                namespace,
                service,
                meshed: get(Field::Meshed).unwrap_or(0.0).round() as u64,
                success: (responses > 0.0)
                    .then(|| (get(Field::Successes).unwrap_or(0.0) / responses).min(1.0)),
                rps: get(Field::Requests).unwrap_or(0.0),
                latency_ms_p50: ms(0),
                latency_ms_p95: ms(1),
                latency_ms_p99: ms(2),
                tcp_conn: get(Field::TcpConn).unwrap_or(0.0).round() as u64,
                retries_per_sec: get(Field::Retries).unwrap_or(0.0),
                timeouts_per_sec: get(Field::Timeouts).unwrap_or(0.0),
                read_bytes_per_sec: get(Field::ReadBytes).unwrap_or(0.0),
                write_bytes_per_sec: get(Field::WriteBytes).unwrap_or(0.0),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
