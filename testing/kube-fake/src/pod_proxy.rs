//! The pod proxy (`/api/v1/namespaces/<ns>/pods/<name>:<port>/proxy/...`): `GET`s
//! forwarded over HTTP/1.1 to the address a test registered for the pod's port.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::Response;

use super::{respond, status, KubeApi};

impl KubeApi {
    /// Answers a pod-proxy request (`to`: where the pod's port is, if anywhere).
    pub(super) async fn pod_proxy(
        &self,
        to: Option<SocketAddr>,
        key: String,
        rest: String,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        match to {
            Some(to) => forward(to, &rest).await,
            None => respond(
                503,
                &status(
                    503,
                    "ServiceUnavailable",
                    format!("error trying to reach service: no route to {key}"),
                ),
            ),
        }
    }
}

/// `/api/v1/namespaces/<ns>/pods/<name>:<port>/proxy<rest>` → (`ns/name:port`, rest).
pub(super) fn pod_proxy_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let (ns, rest) = rest.split_once("/pods/")?;
    let (pod, rest) = rest.split_once("/proxy")?;
    pod.contains(':').then(|| {
        let rest = if rest.is_empty() { "/" } else { rest };
        (format!("{ns}/{pod}"), rest.to_string())
    })
}

/// A `GET rest` to `to` over HTTP/1.1, its answer relayed (a `503` when unreachable).
async fn forward(to: SocketAddr, rest: &str) -> Response<BoxBody<Bytes, Infallible>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(to).await?;
        let req = format!("GET {rest} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        tcp.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = match tokio::time::timeout(std::time::Duration::from_secs(5), exchange).await {
        Ok(Ok(out)) => out,
        _ => {
            return respond(
                503,
                &status(
                    503,
                    "ServiceUnavailable",
                    format!("error trying to reach {to}"),
                ),
            )
        }
    };
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(502);
    Response::builder()
        .status(code)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}
