//! `process_*` metrics, read from `/proc` when `/metrics` is scraped (Linux), under
//! the names Prometheus client libraries use: CPU seconds, resident and virtual memory,
//! open and maximum file descriptors, start time. Elsewhere they stay at zero.

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};
use std::sync::atomic::AtomicU64;

/// `/proc` reports CPU times in USER_HZ ticks, 100 per second on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

/// The process metrics and their registry (no `mesh_` prefix).
pub struct ProcessMetrics {
    pub(crate) registry: Registry,
    cpu: Counter<f64, AtomicU64>,
    resident: Gauge,
    virtual_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time: Gauge<f64, AtomicU64>,
}

impl Default for ProcessMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessMetrics {
    /// Creates and registers the families.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("process");
        let m = ProcessMetrics {
            cpu: Counter::default(),
            resident: Gauge::default(),
            virtual_bytes: Gauge::default(),
            open_fds: Gauge::default(),
            max_fds: Gauge::default(),
            start_time: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "cpu_seconds",
            "User and system CPU time spent",
            m.cpu.clone(),
        );
        registry.register(
            "resident_memory_bytes",
            "Resident memory size",
            m.resident.clone(),
        );
        registry.register(
            "virtual_memory_bytes",
            "Virtual memory size",
            m.virtual_bytes.clone(),
        );
        registry.register("open_fds", "Open file descriptors", m.open_fds.clone());
        registry.register(
            "max_fds",
            "Maximum open file descriptors",
            m.max_fds.clone(),
        );
        registry.register(
            "start_time_seconds",
            "Start time of the process since the Unix epoch",
            m.start_time.clone(),
        );
        ProcessMetrics { registry, ..m }
    }

    /// Reads `/proc` into the metrics; what cannot be read is left as it was.
    pub fn refresh(&self) {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the command name (which may contain spaces) in `(...)`.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        if let (Some(utime), Some(stime)) = (field(11), field(12)) {
            let cpu = (utime + stime) as f64 / TICKS_PER_SECOND;
            let delta = cpu - self.cpu.get();
            if delta > 0.0 {
                self.cpu.inc_by(delta);
            }
        }
        if let Some(vsize) = field(20) {
            self.virtual_bytes.set(vsize as i64);
        }
        if let (Some(start), Some(boot)) = (field(19), boot_time()) {
            self.start_time
                .set(boot as f64 + start as f64 / TICKS_PER_SECOND);
        }
        if let Some(kb) = status_kb("VmRSS:") {
            self.resident.set((kb * 1024) as i64);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(dir.count() as i64);
        }
        if let Some(max) = max_open_files() {
            self.max_fds.set(max as i64);
        }
    }
}

fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn status_kb(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn max_open_files() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let m = ProcessMetrics::new();
        m.refresh();
        let mut text = String::new();
        prometheus_client::encoding::text::encode_registry(&mut text, &m.registry).unwrap();
        assert!(text.contains("process_cpu_seconds_total"), "{text}");
        if cfg!(target_os = "linux") {
            assert!(m.resident.get() > 1024 * 1024, "{text}");
            assert!(m.open_fds.get() > 0);
            assert!(m.max_fds.get() >= m.open_fds.get());
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            let start = m.start_time.get();
            assert!(
                start > now - 86_400.0 * 30.0 && start <= now + 1.0,
                "{start}"
            );
        }
    }
}
