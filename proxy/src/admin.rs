//! The admin server on 4191: `/live` (the process runs), `/ready` (200 only
//! once the first certificate is installed, not once it has expired, and no
//! more once shutting down), `/metrics`, `/certificate` (the current
//! certificate chain as PEM, public data, so `mesh check` can verify it chains
//! to the trust anchors) and `/trust-bundle` (the anchors in force, PEM).
//! A client that opens with a TLS handshake gets the Tap API instead
//! ([`crate::tap::server`]).

use crate::{
    body::ProxyBody,
    metrics::Metrics,
    tls::{CertStore, TrustBundle},
};
use http::{header::CONTENT_TYPE, HeaderValue, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::{convert::Infallible, sync::Arc, time::Duration};
use tokio::sync::watch;

/// The workload's certificate and trust bundle, which `/ready`, `/certificate` and
/// `/trust-bundle` report, and the Tap API served over TLS on the same port.
#[derive(Clone)]
pub struct Tls {
    /// The current certificate.
    pub certs: Arc<CertStore>,
    /// The trust bundle in force.
    pub bundle: Arc<TrustBundle>,
    /// `None`: tap is off (nobody may tap).
    pub tap: Option<TapListener>,
}

/// The Tap API on the admin port: connections that open with a TLS
/// handshake go to it.
#[derive(Clone)]
pub struct TapListener {
    pub tap: &'static crate::tap::Tap,
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// How long a tap connection may stay without an open tap.
    pub idle: Duration,
}

/// Brings scrape-time gauges up to date before `/metrics` is rendered.
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

/// Serves the admin endpoints forever. Requests must arrive within
/// `header` of connecting (and of each other, on a kept-alive connection).
pub async fn serve(
    listener: crate::serve::Limited,
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
    refresh: Refresh,
    tls: Tls,
    header: Duration,
    drain: crate::serve::Drain,
) {
    let Tls { certs, bundle, tap } = tls;
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
        let bundle = bundle.clone();
        let drain = drain.clone();
        let tap = tap.clone();
        tokio::spawn(async move {
            if !crate::serve::first_bytes(&tcp, &mut slot, header).await {
                return;
            }
            slot.activate();
            if let Some(t) = tap {
                if crate::tap::server::is_tls(&tcp).await {
                    crate::tap::server::serve_connection(tcp, t.acceptor, t.tap, header, t.idle)
                        .await;
                    drop(slot);
                    return;
                }
            }
            let activity = crate::serve::Activity::default();
            let counted = activity.clone();
            let svc = hyper::service::service_fn(move |req| {
                counted.request();
                if req.uri().path() == "/metrics" {
                    refresh();
                }
                let rsp = match req.uri().path() {
                    "/certificate" => certificate(&certs),
                    "/trust-bundle" => {
                        Response::new(ProxyBody::full(bundle.current().pem().to_string()))
                    }
                    _ => {
                        let ready = readiness(
                            *ready.borrow(),
                            drain.is_draining(),
                            &certs,
                            std::time::SystemTime::now(),
                        );
                        respond(&req, &metrics, ready)
                    }
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
    chain
        .iter()
        .map(|der| mesh_proto::workload::to_pem(der))
        .collect()
}

/// What `/ready` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Readiness {
    Ready,
    NoCertificate,
    Expired,
    Draining,
}

/// Shutting down: not ready any more, at once; an expired certificate: not
/// ready until a renewal succeeds.
fn readiness(
    issued: bool,
    draining: bool,
    certs: &CertStore,
    now: std::time::SystemTime,
) -> Readiness {
    if draining {
        Readiness::Draining
    } else if !issued {
        Readiness::NoCertificate
    } else if !certs.valid_at(now) {
        Readiness::Expired
    } else {
        Readiness::Ready
    }
}

fn respond<B>(req: &Request<B>, metrics: &Metrics, ready: Readiness) -> Response<ProxyBody> {
    let text = |status: StatusCode, body: String| {
        let mut rsp = Response::new(ProxyBody::full(body));
        *rsp.status_mut() = status;
        rsp
    };
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n".into()),
        "/ready" => match ready {
            Readiness::Ready => text(StatusCode::OK, "ready\n".into()),
            Readiness::NoCertificate => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no certificate yet\n".into(),
            ),
            Readiness::Expired => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the certificate has expired and could not be renewed\n".into(),
            ),
            Readiness::Draining => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: shutting down\n".into(),
            ),
        },
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

    /// A store holding a certificate valid until `not_after`.
    fn store_until(not_after: std::time::SystemTime) -> CertStore {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.not_after = not_after.into();
        let cert = params.self_signed(&key).unwrap();
        let store = CertStore::default();
        store.set(mesh_proto::workload::certified_key(&cert.pem(), &key.serialize_pem()).unwrap());
        store
    }

    #[test]
    fn ready_follows_the_certificate_and_its_expiry() {
        use std::time::{Duration, SystemTime};
        let m = Metrics::new();
        let req = Request::get("/ready").body(()).unwrap();
        let status = |r| respond(&req, &m, r).status();
        let now = SystemTime::now();
        let none = CertStore::default();
        assert_eq!(
            readiness(false, false, &none, now),
            Readiness::NoCertificate
        );
        assert_eq!(
            status(Readiness::NoCertificate),
            StatusCode::SERVICE_UNAVAILABLE
        );

        let store = store_until(now + Duration::from_secs(3600));
        assert_eq!(readiness(true, false, &store, now), Readiness::Ready);
        assert_eq!(status(Readiness::Ready), StatusCode::OK);
        // The same certificate once its notAfter has passed (X.509 times are whole seconds).
        let later = now + Duration::from_secs(3602);
        assert_eq!(readiness(true, false, &store, later), Readiness::Expired);
        assert_eq!(status(Readiness::Expired), StatusCode::SERVICE_UNAVAILABLE);
        let body = respond(&req, &m, Readiness::Expired);
        assert_eq!(body.status(), StatusCode::SERVICE_UNAVAILABLE);
        // Draining wins.
        assert_eq!(readiness(true, true, &store, now), Readiness::Draining);
        assert_eq!(status(Readiness::Draining), StatusCode::SERVICE_UNAVAILABLE);

        let req = Request::get("/nope").body(()).unwrap();
        assert_eq!(
            respond(&req, &m, Readiness::Ready).status(),
            StatusCode::NOT_FOUND
        );
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
