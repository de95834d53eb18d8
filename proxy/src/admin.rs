//! The admin server on 4191: `/live` (the process runs), `/ready` (200 only
//! once the first certificate is installed) and `/metrics`.

use crate::{body::ProxyBody, metrics::Metrics};
use http::{header::CONTENT_TYPE, HeaderValue, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::{convert::Infallible, sync::Arc};
use tokio::{net::TcpListener, sync::watch};

/// Brings scrape-time gauges up to date before `/metrics` is rendered.
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

/// Serves the admin endpoints forever.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
    refresh: Refresh,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        let refresh = refresh.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                if req.uri().path() == "/metrics" {
                    refresh();
                }
                let rsp = respond(&req, &metrics, *ready.borrow());
                async move { Ok::<_, Infallible>(rsp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn respond<B>(req: &Request<B>, metrics: &Metrics, ready: bool) -> Response<ProxyBody> {
    let text = |status: StatusCode, body: String| {
        let mut rsp = Response::new(ProxyBody::full(body));
        *rsp.status_mut() = status;
        rsp
    };
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n".into()),
        "/ready" if ready => text(StatusCode::OK, "ready\n".into()),
        "/ready" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no certificate yet\n".into(),
        ),
        "/metrics" => {
            let mut rsp = text(StatusCode::OK, metrics.encode());
            rsp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            rsp
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_follows_the_certificate() {
        let m = Metrics::new();
        let req = Request::get("/ready").body(()).unwrap();
        assert_eq!(
            respond(&req, &m, false).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(respond(&req, &m, true).status(), StatusCode::OK);
        let req = Request::get("/nope").body(()).unwrap();
        assert_eq!(respond(&req, &m, true).status(), StatusCode::NOT_FOUND);
    }
}
