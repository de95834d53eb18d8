//! The admin endpoint (`:9991`): a tiny HTTP/1.1 responder for liveness and
//! readiness probes and Prometheus. `GET /live` and `GET /ready` answer `200 ok`,
//! `GET /metrics` the text exposition, anything else `404`; one request per connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Renders the metrics text at scrape time.
pub type RenderMetrics = Arc<dyn Fn() -> String + Send + Sync>;

/// Content type of the Prometheus/OpenMetrics text prometheus-client writes.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Open admin connections; past it, the oldest still silent one is shed.
const MAX_CONNECTIONS: usize = 256;

/// Accepts admin connections on `listener` until the task is dropped; `/metrics`
/// answers what `metrics` renders.
pub async fn serve(
    listener: TcpListener,
    metrics: RenderMetrics,
    stopping: Arc<std::sync::atomic::AtomicBool>,
) {
    let listener = mesh_proto::net::accept::Limited::new(
        listener,
        MAX_CONNECTIONS,
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    loop {
        let (stream, peer, slot) = listener.accept().await;
        let metrics = Arc::clone(&metrics);
        let stopping = stopping.clone();
        tokio::spawn(async move {
            let ready = !stopping.load(std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = handle(stream, &metrics, ready).await {
                debug!(%peer, error = %e, "admin connection failed");
            }
            drop(slot);
        });
    }
}

/// Maps a request line to `(status line, content type, body)`; `/ready` fails
/// once the service is stopping.
fn respond(
    request_line: &str,
    metrics: &RenderMetrics,
    ready: bool,
) -> (&'static str, &'static str, String) {
    let mut parts = request_line.split_whitespace();
    let path = parts.nth(1).map(|p| p.split('?').next().unwrap_or(p));
    match (request_line.split_whitespace().next(), path) {
        (Some("GET"), Some("/live")) => ("200 OK", "text/plain", "ok\n".into()),
        (Some("GET"), Some("/ready")) if ready => ("200 OK", "text/plain", "ok\n".into()),
        (Some("GET"), Some("/ready")) => {
            ("503 Service Unavailable", "text/plain", "stopping\n".into())
        }
        (Some("GET"), Some("/metrics")) => ("200 OK", METRICS_CONTENT_TYPE, metrics()),
        _ => ("404 Not Found", "text/plain", "not found\n".into()),
    }
}

async fn handle(
    mut stream: TcpStream,
    metrics: &RenderMetrics,
    ready: bool,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    // Read the request head (until the blank line), bounded in size and time.
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_HEAD {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    match read {
        Ok(result) => result?,
        Err(_) => return Ok(()),
    }
    let head = String::from_utf8_lossy(&buf);
    let (status, content_type, body) =
        respond(head.lines().next().unwrap_or_default(), metrics, ready);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn probes_and_metrics_answer_and_others_404() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let render: RenderMetrics = Arc::new(|| "m_total 1\n# EOF\n".to_string());
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn(serve(listener, render, stopping.clone()));
        for path in ["/live", "/ready"] {
            let resp = get(addr, path).await;
            assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
            assert!(resp.ends_with("\r\n\r\nok\n"), "{resp}");
        }
        let resp = get(addr, "/metrics").await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(
            resp.contains("Content-Type: application/openmetrics-text"),
            "{resp}"
        );
        assert!(resp.ends_with("\r\n\r\nm_total 1\n# EOF\n"), "{resp}");
        let resp = get(addr, "/other").await;
        assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
        // Stopping: not ready any more, still live.
        stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(get(addr, "/ready").await.starts_with("HTTP/1.1 503"));
        assert!(get(addr, "/live").await.starts_with("HTTP/1.1 200"));
        task.abort();
    }
}
