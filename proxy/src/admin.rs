//! The admin server on 4191: `/live` (the process runs), `/ready` (200 only
//! once the first certificate is installed, and no more once shutting down), `/metrics`, and `/certificate`
//! (the current certificate chain as PEM, public data, so `mesh check` can
//! verify it chains to the trust anchors).

use crate::{body::ProxyBody, metrics::Metrics, tls::CertStore};
use http::{header::CONTENT_TYPE, HeaderValue, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::{convert::Infallible, sync::Arc, time::Duration};
use tokio::sync::watch;

/// Brings scrape-time gauges up to date before `/metrics` is rendered.
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

/// Serves the admin endpoints forever. Requests must arrive within
/// `header` of connecting (and of each other, on a kept-alive connection).
pub async fn serve(
    listener: crate::serve::Limited,
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
    refresh: Refresh,
    certs: Arc<CertStore>,
    header: Duration,
    drain: crate::serve::Drain,
) {
    let timeouts = crate::serve::ConnTimeouts {
        header,
        idle: header,
    };
    loop {
        let (tcp, _, mut slot) = listener.accept().await;
        let metrics = metrics.clone();
        let ready = ready.clone();
        let refresh = refresh.clone();
        let certs = certs.clone();
        let drain = drain.clone();
        tokio::spawn(async move {
            if !crate::serve::first_bytes(&tcp, &mut slot, header).await {
                return;
            }
            slot.activate();
            let activity = crate::serve::Activity::default();
            let counted = activity.clone();
            let svc = hyper::service::service_fn(move |req| {
                counted.request();
                if req.uri().path() == "/metrics" {
                    refresh();
                }
                let rsp = if req.uri().path() == "/certificate" {
                    certificate(&certs)
                } else {
                    // Shutting down: not ready any more, at once.
                    let ready = *ready.borrow() && !drain.is_draining();
                    respond(&req, &metrics, ready)
                };
                async move { Ok::<_, Infallible>(rsp) }
            });
            let conn = crate::serve::http1(header).serve_connection(TokioIo::new(tcp), svc);
            // Allocated only once the client has spoken.
            let _ = Box::pin(crate::serve::idle::watch(
                conn,
                &activity,
                timeouts.requests(),
                |c| c.graceful_shutdown(),
            ))
            .await;
            drop(slot);
        });
    }
}

/// The current chain (leaf first) as PEM, or 503 before the first certificate.
fn certificate(certs: &CertStore) -> Response<ProxyBody> {
    let Some(key) = certs.current() else {
        let mut rsp = Response::new(ProxyBody::full("no certificate yet\n"));
        *rsp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return rsp;
    };
    Response::new(ProxyBody::full(chain_pem(&key.cert)))
}

/// DER certificates as PEM blocks.
fn chain_pem(chain: &[rustls::pki_types::CertificateDer<'_>]) -> String {
    use base64::Engine;
    let mut out = String::new();
    for der in chain {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
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

    #[test]
    fn certificate_chains_are_pem() {
        let pem = chain_pem(&[
            rustls::pki_types::CertificateDer::from(vec![1u8; 100]),
            rustls::pki_types::CertificateDer::from(vec![2u8; 3]),
        ]);
        assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----").count(), 2);
        assert!(pem.lines().all(|l| l.len() <= 64 || l.starts_with("-----")));
        assert!(pem.contains("\nAgIC\n"));
        assert_eq!(
            certificate(&CertStore::default()).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
