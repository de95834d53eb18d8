//! The dashboard's numbers: per-workload golden signals (the same queries
//! as `mesh stat deploy`) and the edges (as `mesh edges deploy`), read every
//! few seconds, with a short history per workload for the sparklines.

use crate::stat::{self, compute, plan};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};

/// History points kept per workload.
pub const HISTORY: usize = 60;
/// Workloads whose history is kept at most.
const MAX_WORKLOADS: usize = 1_000;

/// The queries of one refresh: `mesh stat deploy`'s then `mesh edges deploy`'s.
pub fn queries(namespace: Option<&str>) -> anyhow::Result<(Vec<compute::Query>, usize)> {
    let sel = plan::Selection {
        namespace: namespace.map(String::from),
        ..plan::Selection::default()
    };
    let mut q = plan::queries(plan::Kind::Deploy, &sel, false)?;
    let n = q.len();
    q.extend(crate::edges::queries("deploy", namespace)?);
    Ok((q, n))
}

/// One point of a workload's history.
#[derive(Clone, Debug, serde::Serialize)]
struct Point {
    t: f64,
    rps: f64,
    success: Option<f64>,
    p99_ms: Option<f64>,
}

/// The history of every workload, and the latest summary.
#[derive(Debug, Default)]
pub struct Summaries {
    history: BTreeMap<String, VecDeque<Point>>,
}

impl Summaries {
    /// Builds the summary of one refresh (`stat_n` answers are stat's, the
    /// rest the edges'), adding a history point per workload.
    pub fn update(
        &mut self,
        answers: &[(compute::Query, compute::Answer)],
        stat_n: usize,
        namespace: Option<&str>,
        window_s: f64,
        now: f64,
    ) -> Value {
        let (stat_answers, edge_answers) = answers.split_at(stat_n.min(answers.len()));
        let rows = compute::rows(stat_answers, |k| plan::name_of(plan::Kind::Deploy, k));
        let edges = crate::edges::edges(edge_answers);
        let mut workloads = Vec::new();
        for r in &rows {
            let id = format!("{}/{}", r.namespace, r.name);
            if !self.history.contains_key(&id) && self.history.len() >= MAX_WORKLOADS {
                continue;
            }
            let h = self.history.entry(id).or_default();
            h.push_back(Point {
                t: now,
                rps: r.rps,
                success: r.success,
                p99_ms: r.latency_ms_p99,
            });
            while h.len() > HISTORY {
                h.pop_front();
            }
            workloads.push(json!({
                "namespace": r.namespace,
                "name": r.name,
                "meshed": r.meshed,
                "pods": r.meshed,
                "rps": r.rps,
                "success": r.success,
                "p50_ms": r.latency_ms_p50,
                "p95_ms": r.latency_ms_p95,
                "p99_ms": r.latency_ms_p99,
                "history": h.iter().collect::<Vec<_>>(),
            }));
        }
        json!({
            "generated_at": now,
            "namespace": namespace,
            "window_s": window_s,
            "workloads": workloads,
            "edges": edges,
        })
    }
}

/// Reads the answers of one refresh.
pub async fn read(
    data: &stat::Data,
    namespace: Option<&str>,
    window: std::time::Duration,
) -> anyhow::Result<(Vec<(compute::Query, compute::Answer)>, usize)> {
    let (queries, n) = queries(namespace)?;
    let (answers, _unreachable) = stat::answer(
        &queries,
        data,
        namespace,
        window,
        std::time::Duration::from_secs(2),
    )
    .await?;
    Ok((answers, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_bounded_and_edges_ride_along() {
        let (qs, n) = queries(Some("demo")).unwrap();
        let answers: Vec<(compute::Query, compute::Answer)> = qs
            .into_iter()
            .enumerate()
            .map(|(i, q)| {
                let mut a = compute::Answer::new();
                if i < n && q.field == compute::Field::Requests {
                    a.insert(vec!["demo".into(), "api".into()], 10.0);
                }
                if i >= n && q.field == compute::Field::Requests {
                    a.insert(
                        ["demo", "web", "demo", "api", "w", "a", "true"]
                            .map(String::from)
                            .to_vec(),
                        10.0,
                    );
                }
                (q, a)
            })
            .collect();
        let mut s = Summaries::default();
        let mut last = Value::Null;
        for t in 0..(HISTORY + 5) {
            last = s.update(&answers, n, Some("demo"), 5.0, t as f64);
        }
        let w = &last["workloads"][0];
        assert_eq!(w["name"], "api");
        assert_eq!(w["rps"], 10.0);
        assert_eq!(w["history"].as_array().unwrap().len(), HISTORY);
        assert_eq!(last["edges"][0]["src"], "demo/web");
        assert_eq!(last["edges"][0]["mtls"], true);
    }
}
