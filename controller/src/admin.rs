//! The admin endpoint (`:9990`): a deliberately tiny HTTP/1.1 server answering the
//! liveness and readiness probes, `GET /live` and `GET /ready`. It reads one request head,
//! writes one response and closes the connection.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves probes on `listener` until `shutdown` completes. The controller only starts
/// serving once its index is loaded, so `/ready` is answered `ok` whenever it is reachable.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => {
                    tokio::spawn(handle(conn));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn handle(mut conn: TcpStream) {
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut conn)).await;
    let response = match head {
        Ok(Ok(Some(head))) => respond(&head),
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

/// The response to a request head.
fn respond(head: &str) -> String {
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
        ("GET" | "HEAD", "/live" | "/ready") => status(200, "OK", head_only),
        ("GET" | "HEAD", _) => status(404, "Not Found", head_only),
        _ => status(405, "Method Not Allowed", false),
    }
}

fn status(code: u16, reason: &str, head_only: bool) -> String {
    let body = if code == 200 {
        "ok\n".to_string()
    } else {
        format!("{}\n", reason.to_lowercase())
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(&body);
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
    async fn answers_probes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, async {
            let _ = rx.await;
        }));
        let live = request(addr, "GET /live HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(live.starts_with("HTTP/1.1 200 OK\r\n"), "{live}");
        assert!(live.ends_with("\r\n\r\nok\n"), "{live}");
        let ready = request(addr, "GET /ready?verbose HTTP/1.0\r\n\r\n").await;
        assert!(ready.starts_with("HTTP/1.1 200 "), "{ready}");
        let missing = request(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        let post = request(addr, "POST /live HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        let junk = request(addr, "hello\r\n\r\n").await;
        assert!(junk.starts_with("HTTP/1.1 400 "), "{junk}");
        tx.send(()).unwrap();
        server.await.unwrap();
    }
}
