//! Log lines written off the request path. A request that logs (a refused or failed
//! one) formats its line into a buffer and hands it to a writer thread through a
//! bounded queue; the thread writes to stderr in batches. When the queue is full (the
//! reader of stderr is slower than the failures), lines are dropped and counted, never
//! waited for: a flood of bad requests or a stalled log pipe cannot stall the proxy.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Lines that may wait for the writer thread.
pub const QUEUE: usize = 4096;

enum Msg {
    Line(Vec<u8>),
    /// Write everything queued before, then answer.
    Flush(SyncSender<()>),
}

/// A handle on the writer thread; clones share it.
#[derive(Clone)]
pub struct LogWriter {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl LogWriter {
    /// Starts the thread writing to `out`, with a queue of `capacity` lines.
    pub fn spawn(out: Box<dyn Write + Send>, capacity: usize) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = dropped.clone();
        std::thread::Builder::new()
            .name("mesh-log".into())
            .spawn(move || write_lines(rx, out, &counted))?;
        Ok(LogWriter { tx, dropped })
    }

    /// Queues `line`; drops it (counted) if the queue is full.
    pub fn send(&self, line: Vec<u8>) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Msg::Line(line)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits (at most `timeout`) until every line queued so far is written: before the
    /// process exits.
    pub fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let (ack, done) = sync_channel(1);
        let mut msg = Msg::Flush(ack);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return,
            }
        }
        let _ = done.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

/// The thread: writes each line and whatever else is queued behind it in one go, and
/// reports dropped lines once the output keeps up again.
fn write_lines(rx: Receiver<Msg>, mut out: Box<dyn Write + Send>, dropped: &AtomicU64) {
    let mut reported = 0;
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Ok(first) = rx.recv() {
        let mut acks = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(line) => batch.extend_from_slice(&line),
                Msg::Flush(ack) => acks.push(ack),
            }
            if batch.len() < 60 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        let now = dropped.load(Ordering::Relaxed);
        if now != reported {
            let _ = writeln!(
                batch,
                "mesh-proxy: {} log lines dropped: the log output is slower than the proxy",
                now - reported
            );
            reported = now;
        }
        let _ = out.write_all(&batch);
        let _ = out.flush();
        batch.clear();
        for ack in acks {
            let _ = ack.try_send(());
        }
    }
}

/// One event's line, sent when the formatter drops it.
pub struct LineBuf<'a> {
    buf: Vec<u8>,
    to: &'a LogWriter,
}

impl Write for LineBuf<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuf<'_> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.to.send(std::mem::take(&mut self.buf));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LineBuf<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineBuf {
            buf: Vec::with_capacity(256),
            to: self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An output that blocks until released, then records.
    #[derive(Clone)]
    struct Stalled {
        gate: Arc<Mutex<()>>,
        seen: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stalled {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            self.seen.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_output_drops_lines_instead_of_blocking_the_caller() {
        let out = Stalled {
            gate: Arc::new(Mutex::new(())),
            seen: Arc::new(Mutex::new(Vec::new())),
        };
        let gate = out.gate.lock().unwrap();
        let w = LogWriter::spawn(Box::new(out.clone()), 8).unwrap();
        let start = Instant::now();
        for i in 0..1000 {
            w.send(format!("line {i}\n").into_bytes());
        }
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "sending blocked"
        );
        assert!(w.dropped() > 0, "nothing dropped");
        drop(gate);
        w.flush(Duration::from_secs(5));
        w.send(b"after\n".to_vec());
        w.flush(Duration::from_secs(5));
        let seen = String::from_utf8(out.seen.lock().unwrap().clone()).unwrap();
        let written = seen.lines().filter(|l| l.starts_with("line ")).count() as u64;
        assert_eq!(written + w.dropped(), 1000, "every line written or counted");
        assert!(seen.starts_with("line 0\n"), "{seen}");
        assert!(seen.contains("log lines dropped"), "{seen}");
        assert!(seen.ends_with("after\n"), "{seen}");
    }

    #[test]
    fn events_become_whole_lines() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let out = Stalled {
            gate: Arc::new(Mutex::new(())),
            seen: seen.clone(),
        };
        let w = LogWriter::spawn(Box::new(out), QUEUE).unwrap();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(w.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(status = 503, "outbound request failed");
            tracing::warn!("second");
        });
        w.flush(Duration::from_secs(5));
        let text = String::from_utf8(seen.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains("outbound request failed status=503"),
            "{text}"
        );
        assert!(
            lines[1].contains("WARN") && lines[1].contains("second"),
            "{text}"
        );
    }
}
