//! The webhook's HTTPS server (`:9443`, DESIGN §2): HTTP/1.1 over rustls. `POST /inject`
//! (any path is accepted) answers an AdmissionReview with [`review`]; other methods get
//! 405 and bodies over [`MAX_BODY`] get 413.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{namespace_of, review, NamespaceAnnotations};
use crate::inject::InjectConfig;

/// The DNS name of the webhook Service, the subject of the self-signed certificate.
pub const WEBHOOK_DNS_NAME: &str = "mesh-controller.mesh-system.svc";
/// Largest request body accepted (the API server caps objects well below this).
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Time a client has for the TLS handshake, and again for its headers and body.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Open webhook connections (the API server keeps a few).
const MAX_CONNECTIONS: usize = 1_024;

/// Why the webhook's TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no certificate.
    #[error("cannot read the certificate chain from {path}: {reason}")]
    Cert {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The key file could not be read or holds no private key.
    #[error("cannot read the private key from {path}: {source}")]
    Key {
        /// The file.
        path: String,
        /// The PEM error.
        source: rustls::pki_types::pem::Error,
    },
    /// A self-signed certificate could not be generated.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate and key.
    #[error("invalid certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A TLS configuration from PEM files: a certificate chain and its private key.
pub fn load_tls(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: cert.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE block".to_string()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.display().to_string(),
        source,
    })?;
    server_config(chain, key)
}

/// A TLS configuration with a freshly generated self-signed certificate for
/// [`WEBHOOK_DNS_NAME`]; also returns the certificate, for clients to trust.
pub fn self_signed_tls() -> Result<(Arc<ServerConfig>, CertificateDer<'static>), TlsError> {
    let certified = rcgen::generate_simple_self_signed(vec![WEBHOOK_DNS_NAME.to_string()])?;
    let cert = certified.cert.der().clone();
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    let config = server_config(vec![cert.clone()], key.into())?;
    Ok((config, cert))
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What each request needs: the namespace lookup and the injector's configuration.
struct State {
    namespaces: Arc<dyn NamespaceAnnotations>,
    cfg: InjectConfig,
}

/// Serves the webhook on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    namespaces: Arc<dyn NamespaceAnnotations>,
    cfg: InjectConfig,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let state = Arc::new(State { namespaces, cfg });
    // Capped; connections still in their handshake are shed first.
    let listener = mesh_proto::net::accept::Limited::new(listener, MAX_CONNECTIONS, b"");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            (conn, peer, mut slot) = listener.accept() => {
                    let acceptor = acceptor.clone();
                    let state = state.clone();
                    tokio::spawn(async move {
                        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn));
                        let tls = tokio::select! {
                            r = handshake => match r {
                                Ok(Ok(tls)) => tls,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "webhook TLS handshake timed out");
                                    return;
                                }
                            },
                            () = slot.shed() => return,
                        };
                        slot.activate();
                        let service = hyper::service::service_fn(move |req| {
                            handle(req, state.clone())
                        });
                        // A client that stalls mid-headers is dropped, not kept.
                        if let Err(e) = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(HANDSHAKE_TIMEOUT)
                            .serve_connection(TokioIo::new(tls), service)
                            .await
                        {
                            tracing::debug!(%peer, error = %e, "webhook connection failed");
                        }
                        drop(slot);
                    });
            }
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::POST {
        return Ok(plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only POST is allowed\n",
        ));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY as u64) {
        return Ok(too_large());
    }
    let collect = Limited::new(req.into_body(), MAX_BODY).collect();
    let Ok(collected) = tokio::time::timeout(HANDSHAKE_TIMEOUT, collect).await else {
        return Ok(plain(
            StatusCode::REQUEST_TIMEOUT,
            "body not received in time\n",
        ));
    };
    let body = match collected {
        Ok(body) => body.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Ok(too_large()),
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the webhook request body");
            return Ok(plain(StatusCode::BAD_REQUEST, "cannot read the body\n"));
        }
    };
    // A namespace the cache has not seen yet (created a moment ago, or while the API
    // was away) is asked for: never "no annotations, so no proxy" by default.
    let namespaces = state.namespaces.as_ref();
    let looked_up = match namespace_of(&body) {
        Some(ns) if namespaces.annotations(&ns).is_none() => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, namespaces.lookup(&ns)).await {
                Ok(Ok(found)) => Some((ns, found.unwrap_or_default())),
                Ok(Err(error)) => {
                    tracing::warn!(namespace = %ns, %error, "cannot look the namespace up; failing the request");
                    return Ok(plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "namespace annotations unknown\n",
                    ));
                }
                Err(_) => {
                    tracing::warn!(namespace = %ns, "namespace lookup timed out; failing the request");
                    return Ok(plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "namespace annotations unknown\n",
                    ));
                }
            }
        }
        _ => None,
    };
    let answer = match looked_up {
        Some((namespace, annotations)) => review(
            &body,
            &super::WithLookedUp {
                inner: namespaces,
                namespace,
                annotations,
            },
            &state.cfg,
        ),
        None => review(&body, namespaces, &state.cfg),
    };
    let mut response = Response::new(Full::new(Bytes::from(answer)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn too_large() -> Response<Full<Bytes>> {
    plain(StatusCode::PAYLOAD_TOO_LARGE, "body over 4 MiB\n")
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    response
}
