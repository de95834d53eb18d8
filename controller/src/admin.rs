//! The admin endpoint (`:9990`): a deliberately tiny HTTP/1.1 server answering the
//! liveness and readiness probes, `GET /live` and `GET /ready`, and Prometheus,
//! `GET /metrics` (OpenMetrics text, names in `docs/metrics.md`). It reads one request
//! head, writes one response and closes the connection.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::net::accept::Limited;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::index::IndexReader;
use crate::metrics::Metrics;

/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Content type of the text prometheus-client writes.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What `/metrics` renders: the controller's metrics, with the object gauges counted from
/// the index at scrape time.
#[derive(Clone, Debug)]
pub struct Scrape {
    /// The controller's metrics.
    pub metrics: Arc<Metrics>,
    /// The index whose objects are counted.
    pub index: IndexReader,
    /// The gRPC server's certificate: `/ready` fails until it is issued (no proxy could
    /// connect before). `None`: not waited for.
    pub certs: Option<Arc<mesh_proto::workload::CertStore>>,
    /// `true` once the controller is shutting down: `/ready` fails at once.
    pub stopping: Option<tokio::sync::watch::Receiver<bool>>,
    /// The trust bundle in force, served on `/trust-bundle`.
    pub bundle: Option<Arc<mesh_proto::workload::TrustBundle>>,
}

impl Scrape {
    fn render(&self) -> String {
        // Count under the snapshot, encode after releasing it.
        let objects = self.index.borrow().object_counts();
        self.metrics.render(&objects)
    }

    /// Ready: not stopping, and (when waited for) a certificate that has not expired.
    fn ready(&self) -> bool {
        let stopping = self.stopping.as_ref().is_some_and(|s| *s.borrow());
        let certified = self
            .certs
            .as_ref()
            .is_none_or(|c| c.valid_at(std::time::SystemTime::now()));
        !stopping && certified
    }

    /// The body of a GET of `path` other than the probes, if it exists.
    fn document(&self, path: &str) -> Option<(&'static str, String)> {
        let pem = |chain: &[rustls::pki_types::CertificateDer<'_>]| -> String {
            chain
                .iter()
                .map(|c| mesh_proto::workload::to_pem(c))
                .collect()
        };
        match path {
            "/metrics" => Some((METRICS_CONTENT_TYPE, self.render())),
            "/certificate" => {
                let key = self.certs.as_ref()?.current()?;
                Some((TEXT, pem(&key.cert)))
            }
            "/trust-bundle" => Some((TEXT, self.bundle.as_ref()?.current().pem().to_string())),
            _ => None,
        }
    }
}

/// Content type of the PEM documents.
const TEXT: &str = "text/plain; charset=utf-8";

/// Open admin connections; past it, the oldest still silent one is shed.
const MAX_CONNECTIONS: usize = 256;

/// Serves probes and metrics on `listener` until `shutdown` completes. The controller only
/// starts serving once its index is loaded; `/ready` also waits for the gRPC server's
/// certificate.
pub async fn serve(listener: TcpListener, scrape: Scrape, shutdown: impl Future<Output = ()>) {
    let listener = Limited::new(listener, MAX_CONNECTIONS, BUSY);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            (conn, _, slot) = listener.accept() => {
                let scrape = scrape.clone();
                tokio::spawn(async move {
                    handle(conn, scrape).await;
                    drop(slot);
                });
            }
        }
    }
}

/// What a full admin listener answers.
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

async fn handle(mut conn: TcpStream, scrape: Scrape) {
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut conn)).await;
    let response = match head {
        Ok(Ok(Some(head))) => respond(&head, scrape.ready(), |path| scrape.document(path)),
        Ok(Ok(None)) => return, // closed before sending anything
        Ok(Err(_)) | Err(_) => status(400, "Bad Request", false),
    };
    if let Err(e) = conn.write_all(response.as_bytes()).await {
        tracing::debug!(error = %e, "admin write failed");
    }
    let _ = conn.shutdown().await;
}

/// Reads up to the end of the request head (`\r\n\r\n`).
async fn read_head(conn: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// The response to a request head; `document` renders the body of any other path
/// (`/metrics`, `/certificate`, `/trust-bundle`) with its content type.
fn respond(
    head: &str,
    ready: bool,
    document: impl FnOnce(&str) -> Option<(&'static str, String)>,
) -> String {
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return status(400, "Bad Request", false);
    };
    if !version.starts_with("HTTP/1.") {
        return status(400, "Bad Request", false);
    }
    let path = target.split('?').next().unwrap_or_default();
    let head_only = method == "HEAD";
    match (method, path) {
        ("GET" | "HEAD", "/live") => status(200, "OK", head_only),
        ("GET" | "HEAD", "/ready") if ready => status(200, "OK", head_only),
        ("GET" | "HEAD", "/ready") => status(503, "Service Unavailable", head_only),
        ("GET" | "HEAD", _) => match document(path) {
            Some((content_type, body)) => ok(content_type, &body, head_only),
            None => status(404, "Not Found", head_only),
        },
        _ => status(405, "Method Not Allowed", false),
    }
}

/// A plain-text response: `ok` for 200, else the lower-cased reason.
fn status(code: u16, reason: &str, head_only: bool) -> String {
    let body = if code == 200 {
        "ok\n".to_string()
    } else {
        format!("{}\n", reason.to_lowercase())
    };
    response(code, reason, "text/plain", &body, head_only)
}

/// A `200 OK` with `body`.
fn ok(content_type: &str, body: &str, head_only: bool) -> String {
    response(200, "OK", content_type, body, head_only)
}

fn response(code: u16, reason: &str, content_type: &str, body: &str, head_only: bool) -> String {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn request(addr: std::net::SocketAddr, req: &str) -> String {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn answers_probes_and_metrics() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let writer = crate::index::IndexWriter::new(crate::index::IndexConfig::default());
        let resources = crate::resources::parse_documents(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: prod}\nspec: {ports: [{port: 80}]}\n",
        )
        .unwrap()
        .resources;
        writer.update(|index| index.apply_file("/svc.yaml", resources));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let bundle = mesh_proto::workload::TrustBundle::trusting_no_one();
        let scrape = Scrape {
            certs: None,
            stopping: Some(stop_rx),
            metrics: Arc::clone(writer.metrics()),
            index: writer.subscribe(),
            bundle: Some(bundle.clone()),
        };
        let server = tokio::spawn(serve(listener, scrape, async {
            let _ = rx.await;
        }));
        let live = request(addr, "GET /live HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(live.starts_with("HTTP/1.1 200 OK\r\n"), "{live}");
        assert!(live.ends_with("\r\n\r\nok\n"), "{live}");
        let ready = request(addr, "GET /ready?verbose HTTP/1.0\r\n\r\n").await;
        assert!(ready.starts_with("HTTP/1.1 200 "), "{ready}");
        let metrics = request(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(
            metrics.contains("\r\ncontent-type: application/openmetrics-text; version=1.0.0"),
            "{metrics}"
        );
        let (head, body) = metrics.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}\r\n", body.len())),
            "{head}"
        );
        // Counted from the index at scrape time, and the writer's change recorded.
        assert!(
            body.lines()
                .any(|l| l == "mesh_controller_index_objects{kind=\"Service\"} 1"),
            "{body}"
        );
        assert!(
            body.lines()
                .any(|l| l == "mesh_controller_index_updates_total 1"),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
        let head_only = request(addr, "HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head_only.ends_with("\r\n\r\n"), "{head_only}");
        let missing = request(addr, "GET /metricz HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        let post = request(addr, "POST /live HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        let junk = request(addr, "hello\r\n\r\n").await;
        assert!(junk.starts_with("HTTP/1.1 400 "), "{junk}");
        // The bundle in force; no certificate when none is waited for.
        let served = request(addr, "GET /trust-bundle HTTP/1.1\r\n\r\n").await;
        assert!(served.ends_with(bundle.current().pem()), "{served}");
        let cert = request(addr, "GET /certificate HTTP/1.1\r\n\r\n").await;
        assert!(cert.starts_with("HTTP/1.1 404 "), "{cert}");
        // Stopping: not ready at once, still live.
        stop_tx.send(true).unwrap();
        let ready = request(addr, "GET /ready HTTP/1.1\r\n\r\n").await;
        assert!(ready.starts_with("HTTP/1.1 503 "), "{ready}");
        let live = request(addr, "GET /live HTTP/1.1\r\n\r\n").await;
        assert!(live.starts_with("HTTP/1.1 200 "), "{live}");
        tx.send(()).unwrap();
        server.await.unwrap();
    }
}
