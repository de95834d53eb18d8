//! The admin endpoint (`:9991`): a tiny HTTP/1.1 responder for liveness and
//! readiness probes. `GET /live` and `GET /ready` answer `200 ok`, anything
//! else `404`; one request per connection.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts probe connections on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(async move {
                    if let Err(e) = handle(stream).await {
                        debug!(%peer, error = %e, "admin connection failed");
                    }
                });
            }
            Err(e) => {
                debug!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Maps a request line to `(status line, body)`.
fn respond(request_line: &str) -> (&'static str, &'static str) {
    let mut parts = request_line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("GET"), Some("/live" | "/ready")) => ("200 OK", "ok\n"),
        _ => ("404 Not Found", "not found\n"),
    }
}

async fn handle(mut stream: TcpStream) -> std::io::Result<()> {
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
    let (status, body) = respond(head.lines().next().unwrap_or_default());
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
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
    async fn probes_answer_and_others_404() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve(listener));
        for path in ["/live", "/ready"] {
            let resp = get(addr, path).await;
            assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
            assert!(resp.ends_with("\r\n\r\nok\n"), "{resp}");
        }
        let resp = get(addr, "/metrics").await;
        assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
        task.abort();
    }
}
