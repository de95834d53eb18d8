//! A plain HTTP GET with a deadline, for proxies' `/metrics` and the
//! Prometheus API.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use std::time::Duration;

/// A reusable client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A new client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// GETs `url`: (status, body), or why nothing came back within 10 s.
pub async fn get(c: &HttpClient, url: &str) -> anyhow::Result<(u16, String)> {
    let uri: http::Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
    let req = http::Request::get(uri).body(Full::new(Bytes::new()))?;
    let fut = async {
        let rsp = c.request(req).await?;
        let status = rsp.status().as_u16();
        let body = rsp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(anyhow::anyhow!("{url}: {}", root_cause(&e))),
        Err(_) => anyhow::bail!("{url}: no answer within 10 s"),
    }
}

fn root_cause(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    parts.dedup();
    parts.join(": ")
}
