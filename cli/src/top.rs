//! `mesh top`: the busiest paths through a resource's proxies, live, from
//! tap: a full-screen table redrawn every second (like `top`), sorted by
//! request count, with success rate and latency percentiles.

use crate::tap::{self, client::Source};
use mesh_proto::tap::TapEvent;
use std::{collections::HashMap, io::Write};

/// Rows kept at most (the busiest stay).
const MAX_ROWS: usize = 1_000;
/// Latencies kept per row for the percentiles (the latest).
const MAX_SAMPLES: usize = 1_000;

/// `mesh top` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The resource and filters.
    #[command(flatten)]
    pub target: tap::Target,
    /// Rows shown.
    #[arg(long, default_value_t = 20)]
    pub rows: usize,
    /// Redraw interval.
    #[arg(long, default_value = "1s")]
    pub interval: String,
    /// Stop after this many redraws (0: until Ctrl-C). Without a terminal the
    /// table is printed each time instead of redrawn.
    #[arg(long, default_value_t = 0)]
    pub iterations: u32,
    /// Events per second per proxy at most.
    #[arg(long, default_value_t = 200)]
    pub max_rps: u32,
    /// Where the proxies are, and the tap credential.
    #[command(flatten)]
    pub source: Source,
}

/// One (direction, source, destination, method, path).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// `inbound` or `outbound`.
    pub direction: String,
    /// The client workload.
    pub source: String,
    /// The server workload.
    pub destination: String,
    /// `--method`.
    pub method: String,
    /// `--path`.
    pub path: String,
}

/// Counts and latencies of one key.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Requests.
    pub count: u64,
    /// Successful responses.
    pub successes: u64,
    /// The latest latencies (ms), at most [`MAX_SAMPLES`].
    latencies: Vec<f64>,
    next: usize,
}

impl Stats {
    fn add(&mut self, latency_ms: f64, ok: bool) {
        self.count += 1;
        self.successes += u64::from(ok);
        if self.latencies.len() < MAX_SAMPLES {
            self.latencies.push(latency_ms);
        } else {
            self.latencies[self.next] = latency_ms;
            self.next = (self.next + 1) % MAX_SAMPLES;
        }
    }

    /// The `q` quantile (0..1) of the kept latencies.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut v = self.latencies.clone();
        v.sort_by(f64::total_cmp);
        let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        Some(v[i])
    }
}

/// What tap saw, by key.
#[derive(Debug, Default)]
pub struct Table {
    /// The rows by key.
    pub rows: HashMap<Key, Stats>,
    /// Events seen.
    pub events: u64,
    /// Events the proxies dropped (rate limits).
    pub dropped: u64,
}

/// Whether a response counts as a success: not 5xx, and for gRPC a status
/// that is not a server failure.
pub fn success(e: &TapEvent) -> bool {
    e.status < 500 && e.proxy_error.is_empty() && !matches!(e.grpc_status, 2 | 4 | 8 | 13 | 14 | 15)
}

impl Table {
    /// Counts `e`.
    pub fn add(&mut self, e: &TapEvent) {
        self.events += 1;
        self.dropped += e.dropped;
        let name = |ns: &str, w: &str, id: &str| match (ns, w) {
            (_, "") if !id.is_empty() => id.rsplit('/').next().unwrap_or(id).to_string(),
            (_, "") => "-".to_string(),
            (ns, w) => format!("{ns}/{w}"),
        };
        let p = crate::tap::render::printable;
        let key = Key {
            direction: p(&e.direction),
            source: p(&name(&e.src_namespace, &e.src_workload, &e.src_identity)),
            destination: p(&name(&e.dst_namespace, &e.dst_workload, "")),
            method: p(&e.method),
            path: p(&e.path),
        };
        if !self.rows.contains_key(&key) && self.rows.len() >= MAX_ROWS {
            // Make room: the quietest row goes.
            if let Some(k) = self
                .rows
                .iter()
                .min_by_key(|(_, s)| s.count)
                .map(|(k, _)| k.clone())
            {
                self.rows.remove(&k);
            }
        }
        self.rows
            .entry(key)
            .or_default()
            .add(e.latency_us as f64 / 1e3, success(e));
    }

    /// The busiest `n` rows.
    pub fn top(&self, n: usize) -> Vec<(&Key, &Stats)> {
        let mut v: Vec<_> = self.rows.iter().collect();
        v.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
        v.truncate(n);
        v
    }

    /// The busiest `n` rows as text.
    pub fn render(&self, n: usize, title: &str) -> String {
        let mut out = format!(
            "{title}   events {}   dropped by rate limits {}\n\n",
            self.events, self.dropped
        );
        out.push_str(&format!(
            "{:<4} {:<18} {:<18} {:<7} {:<32} {:>7} {:>8} {:>9} {:>9} {:>9}\n",
            "DIR",
            "SOURCE",
            "DESTINATION",
            "METHOD",
            "PATH",
            "COUNT",
            "SUCCESS",
            "P50",
            "P95",
            "P99"
        ));
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}ms"));
        for (k, s) in self.top(n) {
            out.push_str(&format!(
                "{:<4} {:<18} {:<18} {:<7} {:<32} {:>7} {:>7.2}% {:>9} {:>9} {:>9}\n",
                if k.direction == "inbound" {
                    "in"
                } else {
                    "out"
                },
                clip(&k.source, 18),
                clip(&k.destination, 18),
                clip(&k.method, 7),
                clip(&k.path, 32),
                s.count,
                100.0 * s.successes as f64 / s.count.max(1) as f64,
                ms(s.quantile(0.5)),
                ms(s.quantile(0.95)),
                ms(s.quantile(0.99)),
            ));
        }
        out
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut c: String = s.chars().take(n - 1).collect();
        c.push('…');
        c
    }
}

/// Runs `mesh top`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let plan = args.target.plan(None)?;
    let interval = crate::stat::parse_window(&args.interval)
        .map_err(|e| anyhow::anyhow!("--interval: {e}"))?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let title = format!(
        "mesh top {} -n {}",
        args.target.resource, args.target.namespace
    );
    let result = rt.block_on(async {
        let (mut events, mut ends, n) = tap::start(&plan, &args.source, args.max_rps, 0).await?;
        let mut table = Table::default();
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        let mut drawn = 0u32;
        let mut open = n;
        let mut failed = 0;
        if tty {
            // The alternate screen, cursor hidden: put back on the way out.
            print!("\x1b[?1049h\x1b[?25l");
        }
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        loop {
            tokio::select! {
                Some((_, e)) = events.recv() => table.add(&e),
                Some((proxy, r)) = ends.recv() => {
                    open -= 1;
                    if let Err(e) = r {
                        eprintln!("tap: {proxy}: {e}");
                        failed += 1;
                        if failed == n {
                            anyhow::bail!("no proxy could be tapped: {e}");
                        }
                    }
                    if open == 0 {
                        // Every stream ended: show the last table and stop.
                        print!("{}", table.render(args.rows, &title));
                        return Ok(());
                    }
                }
                _ = tick.tick() => {
                    let text = table.render(args.rows, &title);
                    let mut out = std::io::stdout().lock();
                    if tty {
                        let _ = write!(out, "\x1b[H\x1b[2J{}", text.replace('\n', "\r\n"));
                    } else {
                        let _ = writeln!(out, "{text}");
                    }
                    let _ = out.flush();
                    drawn += 1;
                    if args.iterations > 0 && drawn >= args.iterations {
                        return Ok(());
                    }
                }
                _ = &mut interrupted => return Ok(()),
            }
        }
    });
    if tty {
        print!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(path: &str, status: u32, latency_us: u64) -> TapEvent {
        TapEvent {
            direction: "inbound".into(),
            method: "GET".into(),
            path: path.into(),
            status,
            grpc_status: -1,
            latency_us,
            src_identity: "spiffe://td/ns/demo/sa/web".into(),
            dst_namespace: "demo".into(),
            dst_workload: "api".into(),
            ..TapEvent::default()
        }
    }

    #[test]
    fn aggregates_by_path() {
        let mut t = Table::default();
        for i in 0..100 {
            t.add(&event(
                "/items",
                if i < 10 { 503 } else { 200 },
                1_000 * (i + 1),
            ));
        }
        t.add(&event("/health", 200, 500));
        let top = t.top(10);
        assert_eq!(top.len(), 2);
        let (k, s) = top[0];
        assert_eq!(
            (k.path.as_str(), k.source.as_str(), k.destination.as_str()),
            ("/items", "web", "demo/api")
        );
        assert_eq!((s.count, s.successes), (100, 90));
        assert_eq!(s.quantile(0.5), Some(50.0));
        assert_eq!(s.quantile(0.99), Some(99.0));
        let text = t.render(10, "t");
        assert!(text.contains("/items") && text.contains("90.00%"), "{text}");
        let grpc = TapEvent {
            grpc_status: 14,
            status: 200,
            ..event("/x", 200, 1)
        };
        assert!(!success(&grpc));
        assert!(success(&TapEvent {
            grpc_status: 5,
            ..grpc
        }));
    }

    #[test]
    fn rows_are_bounded() {
        let mut t = Table::default();
        for i in 0..(MAX_ROWS + 50) {
            t.add(&event(&format!("/p{i}"), 200, 1));
        }
        assert_eq!(t.rows.len(), MAX_ROWS);
        let mut s = Stats::default();
        for i in 0..(MAX_SAMPLES * 2) {
            s.add(i as f64, true);
        }
        assert_eq!(s.latencies.len(), MAX_SAMPLES);
        assert!(s.quantile(0.0).unwrap() >= MAX_SAMPLES as f64);
    }
}
